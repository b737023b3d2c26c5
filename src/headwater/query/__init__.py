"""Read-only SQL over the lake with DuckDB, sandboxed."""
