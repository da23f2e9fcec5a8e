"""What the AT Protocol allows: its syntaxes, its data model and the events Jetstream sends.

Pure functions and types: no database, no network, no settings.
"""
