"""Lepton services: ingest, governance, trainer, serving. They share only `shared/` and the wire."""
