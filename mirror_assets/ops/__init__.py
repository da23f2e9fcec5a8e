"""The operator's `mirror` command: running the services, one-off runs, status, SQL and the
store's maintenance commands.
"""
