"""The operators' REST API (SPEC §5)."""
