"""The mirror's query API: a Litestar app over the DuckDB file, read-only."""
