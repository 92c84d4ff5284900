"""The governance service: consent and forget policy, differential privacy with a budget ledger,
and a verifiable Merkle audit log (see README.md)."""
