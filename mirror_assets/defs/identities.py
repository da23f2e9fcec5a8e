"""The `identities` asset: DIDs whose identity changed, their DID documents read again and the
handles they claim verified both ways (identities.py). The identity sensor launches its job
whenever ingest has marked DIDs for a check."""

from typing import Any

import dagster as dg

from mirror_assets.defs.ingest import records
from mirror_assets.defs.resources import MirrorResource
from mirror_assets.runs.identities import ERRORS_SHOWN, run_identity_checks

identity_sources = dg.AssetSpec(
    "identity_sources",
    description=(
        "Where identities are checked: DID documents (PLC_URL, or the did:web host) and each "
        "handle's own domain (DNS TXT `_atproto`, or HTTPS `/.well-known/atproto-did`; "
        "HANDLE_RESOLVER_URL if set)."
    ),
    group_name="sources",
    kinds={"http", "dns"},
)


@dg.asset(
    name="account_identities",
    deps=[identity_sources, records],
    group_name="mirror",
    kinds={"duckdb"},
    description=(
        "Each account's PDS and its handle, kept only when the handle resolves back to the "
        "DID (`accounts.pds`, `accounts.handle`), checked again after every identity event."
    ),
)
def account_identities(
    context: dg.AssetExecutionContext, mirror: MirrorResource
) -> dg.MaterializeResult[None]:
    report = run_identity_checks(mirror.settings())
    for did, error in report.errors.items():
        context.log.warning(f"{did}: {error}")
    metadata: dict[str, Any] = dict(report.summary())
    metadata["errors_sample"] = dg.MetadataValue.json(
        dict(list(report.errors.items())[:ERRORS_SHOWN])
    )
    return dg.MaterializeResult(metadata=metadata)
