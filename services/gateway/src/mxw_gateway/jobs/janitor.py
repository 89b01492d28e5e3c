"""Clean-up of uploads that never became jobs: a gateway killed mid-upload leaves a part
file (its lock died with it), one killed between storing the file and committing the job
leaves a stored file nothing references. Runs at start-up and then periodically; several
replicas may run it at once (deleting twice is harmless)."""

from __future__ import annotations

import asyncio
import contextlib

from mxw_shared.blobs import BlobStore
from mxw_shared.db import Pool
from mxw_shared.logging import get_logger

from mxw_gateway.jobs import repository
from mxw_gateway.jobs.admission import delete_unreferenced

log = get_logger(__name__)


class BlobJanitor:
    def __init__(
        self,
        pool: Pool,
        store: BlobStore,
        interval_s: float,
        orphan_after_s: float,
        part_after_s: float = 30.0,
    ) -> None:
        self.pool = pool
        self.part_after_s = part_after_s
        self.store = store
        self.interval_s = interval_s
        # A file younger than this may belong to an upload whose job is being committed.
        self.orphan_after_s = orphan_after_s
        self._stopping = asyncio.Event()

    async def run(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.sweep_once()
            except Exception as exc:  # database down: next round
                log.warning("blob clean-up failed", error=repr(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.interval_s)

    def stop(self) -> None:
        self._stopping.set()

    async def sweep_once(self) -> tuple[int, int]:
        """Returns (abandoned part files removed, unreferenced stored files removed)."""
        parts = await asyncio.to_thread(self.store.remove_abandoned_parts, self.part_after_s)
        candidates = await asyncio.to_thread(self.store.stored_uris, self.orphan_after_s)
        orphans: list[str] = []
        for start in range(0, len(candidates), 1000):
            orphans += await repository.unreferenced_blobs(
                self.pool, candidates[start : start + 1000]
            )
        for uri in orphans:  # checked again under the blob's lock: an upload may commit now
            await delete_unreferenced(self.pool, self.store, uri)
        pins = await asyncio.to_thread(self.store.remove_stale_pins, self.orphan_after_s)
        if parts or orphans or pins:
            log.info(
                "abandoned uploads removed",
                part_files=parts,
                stored_files=len(orphans),
                pins=pins,
            )
        return parts, len(orphans)
