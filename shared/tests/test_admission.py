"""Which event a stage runs, skips or dead-letters: pipeline.admit, table-driven (pure)."""

import uuid

import pytest
from mxw_shared.contracts import TranscriptReady
from mxw_shared.jobs import JobRow
from mxw_shared.pipeline import Admission, StageRowState, Verdict, admit

ME = "chunker-1-aaaa"
JOB = JobRow(uuid.UUID(int=7), "alice", cancelled=False, options={}, generation=1)


def event(owner: str = "alice", generation: int = 1) -> TranscriptReady:
    return TranscriptReady(
        job_id=JOB.id,
        owner_id=owner,
        generation=generation,
        segment_count=1,
        duration_s=1.0,
        model="tiny.en",
    )


def row(
    state: str, generation: int = 1, owner: str | None = "other-1", leased: bool = True
) -> StageRowState:
    return StageRowState(state, generation, owner, leased)


CASES = [
    # (why, job, event, stage row, extra, verdict, outcome)
    ("a new job's first event", JOB, event(), None, {}, Verdict.run, "run"),
    ("unknown job", None, event(), None, {}, Verdict.dead_letter, "rejected"),
    ("deleted job", None, event(), None, {"job_deleted": True}, Verdict.skip, "deleted"),
    (
        "adoption refused",
        None,
        event(),
        None,
        {"refused": "job not adopted: bad uri"},
        Verdict.dead_letter,
        "rejected",
    ),
    ("another owner's job", JOB, event(owner="mallory"), None, {}, Verdict.dead_letter, "rejected"),
    (
        "cancelled job",
        JobRow(JOB.id, "alice", cancelled=True, options={}, generation=1),
        event(),
        None,
        {},
        Verdict.skip,
        "cancelled",
    ),
    ("older run", JOB, event(generation=0), None, {}, Verdict.skip, "stale-generation"),
    ("stage done", JOB, event(), row("done"), {}, Verdict.skip, "already-finished"),
    ("stage failed", JOB, event(), row("failed"), {}, Verdict.skip, "already-finished"),
    ("stage cancelled", JOB, event(), row("cancelled"), {}, Verdict.skip, "already-finished"),
    (
        "stage done in an older run: this is the rerun",
        JOB,
        event(),
        row("done", generation=0),
        {},
        Verdict.run,
        "run",
    ),
    (
        "another worker's live lease",
        JOB,
        event(),
        row("running"),
        {},
        Verdict.skip,
        "running-elsewhere",
    ),
    (
        "another worker's lapsed lease: taken over",
        JOB,
        event(),
        row("running", leased=False),
        {},
        Verdict.run,
        "run",
    ),
    (
        "a released lease (no owner)",
        JOB,
        event(),
        row("running", owner=None),
        {},
        Verdict.run,
        "run",
    ),
    (
        "its own lease: redelivered to it",
        JOB,
        event(),
        row("running", owner=ME),
        {},
        Verdict.run,
        "run",
    ),
    (
        "another worker's lease of an older run",
        JOB,
        event(),
        row("running", generation=0),
        {},
        Verdict.run,
        "run",
    ),
]


@pytest.mark.parametrize(
    ("job", "data", "stage_row", "extra", "verdict", "outcome"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_admission(job, data, stage_row, extra, verdict, outcome) -> None:
    decision = admit(job, data, stage_row, ME, **extra)
    assert (decision.verdict, decision.outcome) == (verdict, outcome)
    if verdict == Verdict.dead_letter:
        assert decision.reason  # a dead letter always says why


def test_an_unknown_job_and_a_foreign_owner_say_why() -> None:
    assert admit(None, event(), None, ME) == Admission(
        Verdict.dead_letter, "rejected", f"unknown job {JOB.id}"
    )
    assert admit(JOB, event(owner="mallory"), None, ME).reason == (
        "event owner does not match the job's owner"
    )
