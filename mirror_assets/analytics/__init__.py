"""What is derived from the records: summaries, daily activity, integrity checks, Parquet
exports, and keeping the records table in time order.
"""
