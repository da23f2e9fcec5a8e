"""The running interop network as the scenarios see it, and how a new mirror joins it."""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from typing import Any

from tests.interop.jetstream_bridge import JetstreamBridge
from tests.interop.pds_client import Account, PdsClient
from tests.interop.pipeline import Pipeline

BEAT_SECONDS = 10.0


@dataclass(frozen=True)
class Network:
    """The PDS's API, the PLC, the Jetstream bridge, the relay, and an account that only
    ever changes its handle: the busy network's stand-in for any event at all."""

    pds: PdsClient
    plc_url: str
    bridge: JetstreamBridge
    relay_url: str
    heartbeat: Account

    def first_ingest(self, pipeline: Pipeline) -> dict[str, Any]:
        """A new mirror's first ingest cycle, with an event arriving while it is connected.

        A new mirror starts at the live edge, and its cursor is the time of the last event
        it read: on the real network events never stop, so its first cycle sets it. On
        this quiet network the heartbeat's identity event plays that part (identity events
        pass any collection filter); without it, writes made between two idle cycles would
        never be read (see docs/interop.md). The cycle waits for it longer than usual: a
        busy machine may take a second to sequence it."""
        connected = self.bridge.connections
        beat = threading.Thread(target=self._beat_once_connected, args=(connected,))
        beat.start()
        settings = pipeline.settings
        patient = replace(
            settings,
            ingest=settings.ingest.model_copy(update={"idle_seconds": BEAT_SECONDS}),
        )
        try:
            metadata = Pipeline(pipeline.instance, patient).ingest()
        finally:
            beat.join()
        assert metadata.get("cursor_after") is not None, metadata
        return metadata

    def _beat_once_connected(self, connected: int) -> None:
        self.bridge.wait_for_connection(connected)
        self.pds.update_handle(self.heartbeat, "heartbeat")
