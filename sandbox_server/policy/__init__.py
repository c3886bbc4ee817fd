"""Tenant policies: pydantic models (frozen, unknown keys rejected) and the loader with atomic hot reload."""
