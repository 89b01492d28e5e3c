"""The pipeline as one table: every stage, the event it consumes and the one it produces, the
service that runs it, its share of a job's progress and the stages it needs done first.

Everything that depends on the pipeline's shape is derived from `PIPELINE`: the stage order,
each stage's input topic and consumer group, the stages whose end is the job's end, the
progress spans, the admin views' stage of a topic and lag per group, the AsyncAPI
producer/consumer lists, and the Kafka access plan. Adding a stage is
one row here (and its handler in the service that runs it).
"""

from __future__ import annotations

from dataclasses import dataclass

from mxw_shared.contracts import (
    AudioUploaded,
    ChunksReady,
    EmbeddingsReady,
    EventData,
    JobOptions,
    SpeakersReady,
    Stage,
    TranscriptEdited,
    TranscriptReady,
)


@dataclass(frozen=True)
class StageSpec:
    stage: Stage
    consumes: type[EventData]
    produces: type[EventData] | None
    service: str  # the service that runs it; its consumer group has the service's name
    span: tuple[float, float]  # the share of overall progress the stage covers
    after: tuple[Stage, ...] = ()  # prerequisites: stages of the same run done before it
    # The JobOptions switch (a bool field) that asks for the stage; None: every job runs
    # it. A stage not asked for is done from the start of the job's run (transitions.start
    # marks it), so stages after it never wait. One declaration for Python and SQL
    # (`requested`, the sweeper's `requested_sql`).
    requested_by: str | None = None
    # Events that run the stage again within a job besides its input (a person's edit of
    # the transcript re-cuts chunks): consumed in the same group, handled by the same work.
    also_consumes: tuple[type[EventData], ...] = ()

    def requested(self, options: JobOptions) -> bool:
        return self.requested_by is None or bool(getattr(options, self.requested_by))

    @property
    def topic(self) -> str:
        """The stage's input topic."""
        return self.consumes.topic

    @property
    def topics(self) -> tuple[str, ...]:
        """Every topic the stage consumes: its input first."""
        return (self.topic, *(e.topic for e in self.also_consumes))


class Pipeline:
    """A validated stage table (a DAG in declaration order) and what follows from it."""

    def __init__(self, specs: tuple[StageSpec, ...]) -> None:
        seen: set[Stage] = set()
        for spec in specs:
            if spec.stage in seen:
                raise ValueError(f"stage {spec.stage} declared twice")
            if missing := [s for s in spec.after if s not in seen]:
                raise ValueError(f"stage {spec.stage} needs {missing}, not declared before it")
            lo, hi = spec.span
            if not 0.0 <= lo <= hi <= 1.0:
                raise ValueError(f"stage {spec.stage}: span {spec.span} is not within [0, 1]")
            switch = JobOptions.model_fields.get(spec.requested_by or "")
            if spec.requested_by is not None and (switch is None or switch.annotation is not bool):
                raise ValueError(f"stage {spec.stage}: {spec.requested_by!r} is no bool option")
            seen.add(spec.stage)
        self.specs = specs
        self._by_stage = {s.stage: s for s in specs}

    def __getitem__(self, stage: Stage) -> StageSpec:
        return self._by_stage[stage]

    @property
    def order(self) -> tuple[Stage, ...]:
        """Every stage, each after its prerequisites."""
        return tuple(s.stage for s in self.specs)

    @property
    def final(self) -> tuple[Stage, ...]:
        """The stages no other stage waits for: a job is done when all of them are."""
        needed = {p for s in self.specs for p in s.after}
        return tuple(s.stage for s in self.specs if s.stage not in needed)

    def is_final(self, stage: Stage) -> bool:
        return stage in self.final

    def not_requested(self, options: JobOptions) -> tuple[Stage, ...]:
        """The stages a job with `options` does not ask for."""
        return tuple(s.stage for s in self.specs if not s.requested(options))

    def later(self, stage: Stage) -> tuple[Stage, ...]:
        """`stage` and every stage that depends on it, directly or through others: what a
        rerun from `stage` does again."""
        out = [stage]
        for spec in self.specs:
            if any(p in out for p in spec.after):
                out.append(spec.stage)
        return tuple(s for s in self.order if s in out)

    def waits_for(self, stage: Stage) -> tuple[Stage, ...]:
        """The prerequisites of `stage` whose completion its input event does not prove:
        all but the one that produces that event. Empty for a stage of a chain."""
        spec = self[stage]
        return tuple(p for p in spec.after if self[p].produces is not spec.consumes)

    def joins_completed_by(self, stage: Stage) -> tuple[StageSpec, ...]:
        """The stages whose input the completion of `stage` must send itself (when all
        their prerequisites are done): those that wait for it and do not consume what it
        produces."""
        return tuple(s for s in self.specs if stage in self.waits_for(s.stage))

    def consuming(self, topic: str) -> tuple[StageSpec, ...]:
        """The stages whose input is `topic` (two stages may start from one event)."""
        return tuple(s for s in self.specs if topic in s.topics)

    def stage_of_dead_letter(self, topic: str, consumer: str | None) -> Stage | None:
        """The stage a dead letter of `topic` (the original topic) belongs to: the one its
        consumer runs, or the only stage that consumes the topic."""
        stages = self.consuming(topic)
        named = [s.stage for s in stages if s.service == consumer]
        if named:
            return named[0]
        return stages[0].stage if len(stages) == 1 else None

    @property
    def stage_groups(self) -> tuple[tuple[str, str], ...]:
        """(topic, consumer group) of every stage's inputs: where the pipeline's lag is."""
        return tuple((t, s.service) for s in self.specs for t in s.topics)

    @property
    def service_inputs(self) -> dict[str, tuple[str, ...]]:
        """The topics each stage service consumes."""
        out: dict[str, tuple[str, ...]] = {}
        for s in self.specs:
            out[s.service] = (*out.get(s.service, ()), *s.topics)
        return out


PIPELINE = Pipeline(
    (
        StageSpec(Stage.transcribe, AudioUploaded, TranscriptReady, "transcriber", (0.0, 0.8)),
        # Beside transcription: both start from the upload, and the chunker joins them.
        StageSpec(
            Stage.diarize,
            AudioUploaded,
            SpeakersReady,
            "diarizer",
            (0.0, 0.8),
            requested_by="speakers",
        ),
        StageSpec(
            Stage.chunk,
            TranscriptReady,
            ChunksReady,
            "chunker",
            (0.8, 0.9),
            (Stage.transcribe, Stage.diarize),
            also_consumes=(TranscriptEdited,),
        ),
        StageSpec(
            Stage.embed, ChunksReady, EmbeddingsReady, "embedder", (0.9, 1.0), (Stage.chunk,)
        ),
    )
)
