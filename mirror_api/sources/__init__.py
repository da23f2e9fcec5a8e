"""Where the API's reader reads: the file under its lock, or the lake's snapshots."""

from mirror_assets.store.lake import CATALOG

SCHEMA = CATALOG  # the name every source attaches the store under; queries say `mirror.<table>`
