"""Re-cutting only the chunks an edit of the transcript touched: pure functions, no I/O.

After a person corrects the transcript (transcript.edited), the chunks over audio that the
revisions since the last cut touched are cut again from the current segments; every other
chunk keeps its row, so its id and its vector. The rule:

1. Affected: a chunk whose span overlaps a touched span; a touched span that overlaps no
   chunk (a gap, or before the first or after the last) joins its nearest chunk. With the
   fixed method also the chunk after each affected one: its text begins with the end of its
   predecessor (`overlap_prefix`).
2. Kept chunks are checked against the current segments: a chunk is kept only when the
   segments within its span still make exactly its text (with the fixed method's prefix);
   one that does not is affected too. So a kept chunk is always what a full cut would have
   made of those segments, whatever the spans said.
3. The segments no kept chunk claims form contiguous runs (the affected chunks, and any
   segment in a gap next to them); each run is cut again on its own by the job's method
   (the caller runs `Chunker.run` on `Run.segments`); the fixed method's first new chunk of
   a run is prefixed with the end of the segments before it (`Run.prefix`).
4. `apply_recut` turns the new chunks into the change: the rows to delete, the kept rows to
   renumber (idx stays 0..n-1 in time order) and the chunks to insert.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from mxw_chunker.domain import Chunk, Segment, overlap_prefix, usable_segments

Span = tuple[float, float]  # the audio a revision touched, in seconds


@dataclass(frozen=True)
class StoredChunk:
    """A chunk row as the re-cut needs it."""

    id: int
    idx: int
    start_s: float
    end_s: float
    text: str
    revision: int = 0


@dataclass(frozen=True)
class Run:
    """Contiguous usable segments to cut again, between two kept chunks (or an end)."""

    first: int  # position of its first segment among the usable segments
    segments: tuple[Segment, ...]
    prefix: str = ""  # fixed method: the text its first new chunk begins with


@dataclass(frozen=True)
class RecutPlan:
    """The job's chunks in time order: each item a kept chunk or a run to cut again."""

    items: tuple[StoredChunk | Run, ...]
    deleted: tuple[StoredChunk, ...]  # the affected chunks, re-cut

    @property
    def runs(self) -> tuple[Run, ...]:
        return tuple(i for i in self.items if isinstance(i, Run))

    @property
    def kept(self) -> tuple[StoredChunk, ...]:
        return tuple(i for i in self.items if isinstance(i, StoredChunk))


@dataclass(frozen=True)
class RecutChange:
    delete_ids: tuple[int, ...]
    renumber: tuple[tuple[int, int], ...]  # (chunk id, new idx) of kept chunks that move
    insert: tuple[Chunk, ...]  # with their final idx
    kept: int
    replaced: int  # old chunks cut again (their rows deleted)
    chunk_count: int  # all chunks of the job afterwards: kept + recut

    @property
    def recut(self) -> int:
        """The chunks the re-cut wrote (new rows)."""
        return len(self.insert)

    @property
    def changed(self) -> bool:
        return bool(self.delete_ids or self.renumber or self.insert)


def chunks_revision(chunks: Sequence[StoredChunk]) -> int | None:
    """The revision the chunk set was cut at (None: no chunks)."""
    return max((c.revision for c in chunks), default=None)


def overlaps(span: Span, start_s: float, end_s: float) -> bool:
    return span[0] <= end_s and span[1] >= start_s


def distance(span: Span, chunk: StoredChunk) -> float:
    return max(chunk.start_s - span[1], span[0] - chunk.end_s, 0.0)


def affected_chunks(
    chunks: Sequence[StoredChunk], spans: Sequence[Span], *, fixed: bool = False
) -> set[int]:
    """Positions (in `chunks`, time order) of the chunks the touched `spans` affect."""
    hit: set[int] = set()
    if not chunks:
        return hit
    for span in spans:
        over = {p for p, c in enumerate(chunks) if overlaps(span, c.start_s, c.end_s)}
        if not over:  # a gap: the nearest chunk (the earlier on a tie)
            over = {min(range(len(chunks)), key=lambda p: (distance(span, chunks[p]), p))}
        hit |= over
    if fixed:
        hit |= {p + 1 for p in hit if p + 1 < len(chunks)}
    return hit


def _claim(
    usable: Sequence[Segment], starts: Sequence[float], chunk: StoredChunk
) -> tuple[int, int] | None:
    """The positions [first, last] of the usable segments within `chunk`'s span, when the
    span starts exactly at a segment and ends exactly at the end of the last one."""
    first = bisect.bisect_left(starts, chunk.start_s)
    if first >= len(usable) or usable[first].start_s != chunk.start_s:
        return None
    last = first
    while last + 1 < len(usable) and usable[last + 1].end_s <= chunk.end_s:
        last += 1
    if max(s.end_s for s in usable[first : last + 1]) != chunk.end_s:
        return None
    return first, last


def _expected_text(
    usable: Sequence[Segment], first: int, last: int, overlap_s: float | None
) -> str:
    own = " ".join(s.text.strip() for s in usable[first : last + 1])
    if overlap_s is None:
        return own
    prefix = overlap_prefix(usable, first, overlap_s)
    return f"{prefix} {own}" if prefix else own


def plan_recut(
    segments: Sequence[Segment],
    chunks: Sequence[StoredChunk],
    spans: Sequence[Span],
    *,
    fixed_overlap_s: float | None = None,
) -> RecutPlan:
    """Which chunks to cut again and from which segments. `fixed_overlap_s`: the fixed
    method's overlap (None for the other methods, whose chunks repeat nothing)."""
    usable = usable_segments(segments)
    starts = [s.start_s for s in usable]
    ordered = sorted(chunks, key=lambda c: (c.start_s, c.idx))
    affected = affected_chunks(ordered, spans, fixed=fixed_overlap_s is not None)
    claims: dict[int, tuple[int, int]] = {}
    changed = True
    while changed:  # a chunk found stale is affected, and may affect the one after it
        changed = False
        claims = {}
        taken_to = -1
        for p, chunk in enumerate(ordered):
            if p in affected:
                continue
            claim = _claim(usable, starts, chunk)
            if (
                claim is None
                or claim[0] <= taken_to
                or _expected_text(usable, *claim, fixed_overlap_s) != chunk.text
            ):
                affected.add(p)
                if fixed_overlap_s is not None and p + 1 < len(ordered):
                    affected.add(p + 1)
                changed = True
                break
            claims[p] = claim
            taken_to = claim[1]
    items: list[StoredChunk | Run] = []
    pos = 0
    for p, chunk in enumerate(ordered):
        if p not in claims:
            continue
        first, last = claims[p]
        if first > pos:
            items.append(_run(usable, pos, first - 1, fixed_overlap_s))
        items.append(chunk)
        pos = last + 1
    if pos < len(usable):
        items.append(_run(usable, pos, len(usable) - 1, fixed_overlap_s))
    deleted = tuple(c for p, c in enumerate(ordered) if p not in claims)
    return RecutPlan(tuple(items), deleted)


def _run(usable: Sequence[Segment], first: int, last: int, overlap_s: float | None) -> Run:
    prefix = overlap_prefix(usable, first, overlap_s) if overlap_s is not None else ""
    return Run(first, tuple(usable[first : last + 1]), prefix)


def with_prefix(chunks: Sequence[Chunk], prefix: str) -> list[Chunk]:
    """A run's new chunks, the first beginning with `prefix` (the fixed method's overlap)."""
    out = list(chunks)
    if out and prefix:
        out[0] = replace(out[0], text=f"{prefix} {out[0].text}")
    return out


@dataclass
class _Numbering:
    next_idx: int = 0
    renumber: list[tuple[int, int]] = field(default_factory=list)
    insert: list[Chunk] = field(default_factory=list)


def apply_recut(plan: RecutPlan, cuts: Sequence[Sequence[Chunk]]) -> RecutChange:
    """The change for `plan` given the new chunks of each of its runs (in order, each
    already prefixed: `with_prefix`)."""
    runs = plan.runs
    if len(cuts) != len(runs):
        raise ValueError(f"{len(runs)} runs but {len(cuts)} cuts")
    by_run = dict(zip((id(r) for r in runs), cuts, strict=True))
    n = _Numbering()
    for item in plan.items:
        if isinstance(item, StoredChunk):
            if item.idx != n.next_idx:
                n.renumber.append((item.id, n.next_idx))
            n.next_idx += 1
        else:
            for chunk in by_run[id(item)]:
                n.insert.append(replace(chunk, idx=n.next_idx))
                n.next_idx += 1
    return RecutChange(
        delete_ids=tuple(c.id for c in plan.deleted),
        renumber=tuple(n.renumber),
        insert=tuple(n.insert),
        kept=len(plan.kept),
        replaced=len(plan.deleted),
        chunk_count=n.next_idx,
    )
