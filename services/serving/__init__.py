"""The serving service."""
