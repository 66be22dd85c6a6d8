"""Audit: hash chains and the RFC 9162 Merkle log (docs/audit.md)."""
