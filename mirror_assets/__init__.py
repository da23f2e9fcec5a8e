"""The AT Protocol record mirror, one folder per part (docs/architecture.md):

- `atproto/`: the protocol's rules and wire formats, pure;
- `network/`: the clients that read Jetstream, PLC, PDSes and relays;
- `store/`: the DuckDB file, its lock and schema, and the thread that commits to it;
- `model/`: the set-based rules each table follows, inside the caller's transaction;
- `runs/`: ingest, backfill, discovery and identity checks as plain functions;
- `analytics/`: summaries, activity, integrity checks, exports and clustering;
- `defs/`: the Dagster definitions, thin, over `runs/` and `analytics/`;
- `ops/`: the operator's `mirror` command.

Each part imports only the parts listed before it (`config.py` and `names.py` sit between
`network/` and `atproto/`); `make lint` checks it. Nothing below `defs/` imports Dagster, so
the API (`mirror_api`) uses the store and the rules without loading it.
"""
