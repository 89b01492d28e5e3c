"""One model, many callers: an in-process micro-batcher.

The stage handlers (one per Kafka consumer, so several jobs can wait at once) and the HTTP
API submit texts here; a single worker task runs the model on everything that queued up
while the previous call ran, up to `max_batch` texts. Nothing waits on a timer when the
model is idle, so a lone query costs one model call and no added latency; under load,
concurrent queries and the slices of several jobs share model calls. Queries
(interactive) are taken before pipeline work, so a large job cannot stall search.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from prometheus_client import Counter, Histogram

from mxw_embedder.models import Embedder, Vectors

BATCH_TEXTS = Histogram(
    "mxw_embedder_batch_texts",
    "Texts per model call of the micro-batcher.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
)
BATCH_REQUESTS = Histogram(
    "mxw_embedder_batch_requests",
    "Requests (API calls, job slices) served by one model call.",
    buckets=(1, 2, 3, 4, 6, 8, 16, 32, 64),
)
TEXTS_EMBEDDED = Counter("mxw_embedder_texts_total", "Texts embedded.", ["kind"])


@dataclass
class _Request:
    texts: Sequence[str]
    interactive: bool
    future: asyncio.Future[tuple[Vectors, list[int]]] = field(repr=False)


@dataclass
class BatcherStats:
    model_calls: int = 0
    requests: int = 0
    texts: int = 0


class BatcherClosed(RuntimeError):
    """Submitted after stop()."""


class MicroBatcher:
    def __init__(self, embedder: Embedder, *, max_batch: int, encode_batch_size: int) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.embedder = embedder
        self.max_batch = max_batch
        self.encode_batch_size = encode_batch_size
        self.stats = BatcherStats()
        self._interactive: deque[_Request] = deque()
        self._bulk: deque[_Request] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="embedder-micro-batcher")

    async def stop(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for queue in (self._interactive, self._bulk):
            while queue:
                request = queue.popleft()
                if not request.future.done():
                    request.future.set_exception(BatcherClosed("embedder is shutting down"))

    async def embed(self, texts: Sequence[str]) -> Vectors:
        """Unit vectors for `texts` (pipeline work), one row each, in order."""
        vectors, _ = await self._submit(texts, interactive=False)
        return vectors

    async def embed_query(self, texts: Sequence[str]) -> tuple[Vectors, list[int]]:
        """Vectors and token counts for an API request, ahead of pipeline work."""
        return await self._submit(texts, interactive=True)

    async def _submit(
        self, texts: Sequence[str], *, interactive: bool
    ) -> tuple[Vectors, list[int]]:
        if not texts:
            return np.zeros((0, self.embedder.dimensions), dtype=np.float32), []
        if self._closed or self._task is None:
            raise BatcherClosed("the micro-batcher is not running")
        request = _Request(texts, interactive, asyncio.get_running_loop().create_future())
        (self._interactive if interactive else self._bulk).append(request)
        self._wake.set()
        return await request.future

    def _infer(self, batch: list[_Request]) -> tuple[Vectors, list[int]]:
        texts = [t for r in batch for t in r.texts]
        vectors = self.embedder.embed(texts, self.encode_batch_size)
        # Token counts (OpenAI's `usage`) only for API requests; same thread as encode(),
        # since the fast tokenizer is not safe to share between threads.
        counted = [t for r in batch if r.interactive for t in r.texts]
        return vectors, self.embedder.count_tokens(counted) if counted else []

    def _take(self) -> list[_Request]:
        """Queued requests up to max_batch texts (always at least one), queries first."""
        taken: list[_Request] = []
        size = 0
        for queue in (self._interactive, self._bulk):
            while queue and (not taken or size + len(queue[0].texts) <= self.max_batch):
                request = queue.popleft()
                if request.future.cancelled():  # its caller went away (client disconnect)
                    continue
                taken.append(request)
                size += len(request.texts)
        return taken

    async def _run(self) -> None:
        while True:
            if not self._interactive and not self._bulk:
                self._wake.clear()
                await self._wake.wait()
            batch = self._take()
            if not batch:
                continue
            try:
                # In a thread: inference takes CPU-seconds and the event loop also serves
                # the consumers, the outbox relay and health checks.
                vectors, tokens = await asyncio.to_thread(self._infer, batch)
            except asyncio.CancelledError:
                for request in batch:
                    if not request.future.done():
                        request.future.set_exception(BatcherClosed("embedder is shutting down"))
                raise
            except Exception as exc:
                for request in batch:
                    if not request.future.done():
                        request.future.set_exception(exc)
                continue
            self.stats.model_calls += 1
            self.stats.requests += len(batch)
            self.stats.texts += len(vectors)
            BATCH_TEXTS.observe(len(vectors))
            BATCH_REQUESTS.observe(len(batch))
            start = token_start = 0
            for request in batch:
                stop = start + len(request.texts)
                counts: list[int] = []
                if request.interactive:
                    counts = tokens[token_start : token_start + len(request.texts)]
                    token_start += len(request.texts)
                TEXTS_EMBEDDED.labels("query" if request.interactive else "chunk").inc(
                    len(request.texts)
                )
                if not request.future.done():
                    request.future.set_result((vectors[start:stop], counts))
                start = stop
