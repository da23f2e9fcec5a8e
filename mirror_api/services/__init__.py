"""What the routes call beyond a single query: a page of records with the `?did=` flow, the
backfill trigger, and the Dagster GraphQL client.
"""
