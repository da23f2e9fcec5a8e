"""The mirror's work as plain functions that return typed reports: an ingest cycle, a
backfill run, a discovery pass, a round of identity checks. Dagster calls them; tests and
benchmarks too.
"""
