"""The operators' web dashboard: server-rendered pages at /, mounted by platica.app."""
