"""The rules of each table, as set-based statements run inside the caller's transaction:
records, accounts, backfills, the stream's cursor, and how a batch or a backfill page
changes them.
"""
