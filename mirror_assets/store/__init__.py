"""Where the mirror keeps its data: the DuckDB file, its cross-process lock, its schema and
migrations, and the committer that writes to it off the event loop.
"""
