"""Helpers of the transcriber's integration tests (test_integration, test_long_work): the
audio fixtures, storing bytes the way the gateway does, the event that announces them and
waiting for the stage's outcome."""

import hashlib
import io
import wave
from pathlib import Path

from mxw_shared.contracts import AudioUploaded, JobOptions

FIXTURES = Path(__file__).resolve().parents[3] / "tests" / "fixtures" / "audio"


def store(infra, data: bytes) -> tuple[str, str]:
    """Put bytes into the blob root the way the gateway does; returns (file:// URI, sha256)."""
    sha = hashlib.sha256(data).hexdigest()
    path = infra.root / "blobs" / sha[:2] / sha
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path.as_uri(), sha


def uploaded(job_id, uri, sha, owner="alice", *, wav=False, **options) -> AudioUploaded:
    return AudioUploaded(
        job_id=job_id,
        owner_id=owner,
        audio_uri=uri,
        sha256=sha,
        filename="clip.wav" if wav else "clip.ogg",
        content_type="audio/wav" if wav else "audio/ogg",
        options=JobOptions(**options),
    )


async def stage_state(wait_for, job_id, states=("done", "failed")):
    return await wait_for(
        "SELECT state FROM job_stages WHERE job_id = $1 AND stage = 'transcribe'",
        job_id,
        predicate=lambda s: s in states,
        timeout_s=120,
    )


def long_wav(repeats: int) -> bytes:
    """The solar fixture repeated as 16 kHz mono WAV: long enough that a cancel lands
    mid-transcription, or that a job outlasts the consumer's poll interval."""
    import numpy as np
    from mxw_shared.audio_decode import decode_audio

    samples = decode_audio(FIXTURES / "solar_and_bread.ogg", 3600)
    pcm = (np.tile(samples, repeats) * 32767).clip(-32768, 32767).astype("<i2").tobytes()
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16000)
        out.writeframes(pcm)
    return buffer.getvalue()
