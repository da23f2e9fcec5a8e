"""The AT Protocol record mirror: the store, the network clients, and their Dagster wiring.

This package's top level imports no framework, so the API can use the store without
loading Dagster; `mirror_assets.defs.definitions` builds the Dagster `defs`.
"""
