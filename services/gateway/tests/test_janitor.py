"""The blob janitor removes what a killed upload left behind and nothing a job uses."""

import os
import time

from mxw_gateway.jobs.janitor import BlobJanitor
from mxw_shared.blobs import LocalBlobStore, local_path


def age(path, seconds: float) -> None:
    past = time.time() - seconds
    os.utime(path, (past, past))


async def test_janitor_removes_orphans_and_keeps_referenced_files(db, make_job, tmp_path):
    store = LocalBlobStore(tmp_path)
    orphan = await store.put_bytes(b"stored, but the job was never committed")
    used = await store.put_bytes(b"audio of a real job")
    fresh = await store.put_bytes(b"stored a moment ago; its job may be committing")
    job_id = await make_job()
    await db.execute("UPDATE jobs SET audio_uri = $1 WHERE id = $2", used.uri, job_id)
    part = tmp_path / "tmp" / "killed-mid-upload.part"
    part.write_bytes(b"x" * 1024)
    for path in (orphan.path, used.path, part):
        age(path, 7200)

    janitor = BlobJanitor(db, store, interval_s=3600, orphan_after_s=3600)
    assert await janitor.sweep_once() == (1, 1)
    assert not local_path(orphan.uri).exists()
    assert not part.exists()
    assert used.path.exists()
    assert fresh.path.exists()
    assert await janitor.sweep_once() == (0, 0)
