"""The lake benchmarks: the mirror in a DuckLake (catalog in Postgres, Parquet in a folder).

    .venv-lake/bin/python -m bench.lake ingest   [--events N] [--flush-events N] [--repeat R]
    .venv-lake/bin/python -m bench.lake backfill [--dids N] [--records N] [--latency-ms 30]
    .venv-lake/bin/python -m bench.lake api      [--records N] [--seconds S]
    .venv-lake/bin/python -m bench.lake day      [--batches 1440] [--events-per-batch 300]

Each part starts a throwaway Postgres (tests/support/postgres.py) for its catalogs, makes
its lakes in it with data folders under bench/out/lake/, and removes both at the end (the
folders stay with `--keep`, given before the part).
The lake needs DuckDB 1.5.5 and its extension wheels: run it with `.venv-lake/bin/python`.

* ingest: catch-up ingest of bench/ingest.py's synthetic stream into a fresh lake and into
  a fresh file, same process, same DuckDB; end to end events/s and lake / file
  (bench/lake_ingest.py).
* backfill: a PDS stand-in with latency; one writer process over every DID against two
  over disjoint halves of them; records/s, the ratio, and the lake's conflicts and
  retries (bench/lake_backfill.py).
* api: a lake of N records built with bulk Arrow inserts, `mirror api` over it with a
  writer committing every 5 s; latency of pages at one client and throughput of one
  process against two replicas (bench/lake_api.py).
* day: 1,440 minute batches through the real apply path, with the hourly housekeeping
  every 60 batches or without it; files, snapshots and catalog rows after, and what a
  first page costs then (bench/lake_day.py).

Numbers and ratios are printed; bench/README.md ("Lake") has the results.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb

from bench import lake_api, lake_backfill, lake_day, lake_ingest
from bench.lake_common import MADE, catalog_server

PARTS = {
    "ingest": lake_ingest,
    "backfill": lake_backfill,
    "api": lake_api,
    "day": lake_day,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.lake", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the lakes' data folders in bench/out/lake/"
    )
    parts = parser.add_subparsers(dest="part", required=True)
    for name, module in PARTS.items():
        module.add_arguments(parts.add_parser(name, help=(module.__doc__ or "").split("\n")[0]))
    args = parser.parse_args(argv)
    print(
        f"bench.lake {args.part}: duckdb {duckdb.__version__}, python {sys.version.split()[0]}, "
        f"{os.cpu_count()} cores, load average {_load()}, code {_code()}",
        flush=True,
    )
    try:
        with catalog_server() as server:
            PARTS[args.part].run(args, server)
    finally:
        if not args.keep:
            for folder in MADE:
                shutil.rmtree(folder, ignore_errors=True)
    print(f"load average at the end {_load()}")
    return 0


def _code() -> str:
    """The commit the mirror's code is at, and whether its own folders differ from it."""
    import mirror_assets

    root = Path(mirror_assets.__file__).resolve().parents[1]

    def git(*command: str) -> str:
        done = subprocess.run(["git", "-C", str(root), *command], capture_output=True, text=True)
        return done.stdout.strip()

    changed = git("status", "--porcelain", "--", "mirror_assets", "mirror_api")
    return f"{git('rev-parse', '--short', 'HEAD') or 'unknown'} ({root})" + (
        " with uncommitted changes to mirror_assets/ or mirror_api/" if changed else ""
    )


def _load() -> str:
    """The machine's load average (1, 5, 15 minutes): other work on it makes numbers noisy."""
    return " / ".join(f"{load:.1f}" for load in os.getloadavg())


if __name__ == "__main__":
    sys.exit(main())
