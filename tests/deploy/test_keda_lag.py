"""KEDA scales each worker on the lag the gateway's admin system view shows, which
services/gateway/tests/test_admin_lag_kafka.py compares with Kafka's consumer-groups tool:
the same consumer group on the same topic (mxw_shared.stages.PIPELINE.stage_groups, checked
against each worker's StageRunner and consumer group), and the same reading of partitions
without a committed offset."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest
from mxw_shared.stages import PIPELINE

ROOT = Path(__file__).resolve().parents[2]
OVERLAYS = ("dev", "prod", "gpu", "s3")


def stage_consumer_offset_reset() -> set[str]:
    """The auto_offset_reset values the stage consumers (mxw_shared.service) are built with."""
    tree = ast.parse((ROOT / "shared" / "src" / "mxw_shared" / "service.py").read_text())
    return {
        str(kw.value.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        for kw in node.keywords
        if kw.arg == "auto_offset_reset" and isinstance(kw.value, ast.Constant)
    }


def test_the_admin_view_reads_each_worker_s_own_group_on_its_own_topic(
    services: dict[str, Any],
) -> None:
    workers = [c for c in services.values() if c.consumes]
    assert {(t, c.service_name) for c in workers for t in c.consumes} == set(PIPELINE.stage_groups)
    for code in workers:
        assert code.group_is_service_name, code.name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_scaled_objects_scale_on_the_numbers_of_the_admin_view(
    overlay: str, rendered: dict[str, list[dict[str, Any]]]
) -> None:
    scaled = [d for d in rendered[overlay] if d["kind"] == "ScaledObject"]
    triggers = [t["metadata"] for d in scaled for t in d["spec"]["triggers"]]
    assert {(t["topic"], t["consumerGroup"]) for t in triggers} == set(PIPELINE.stage_groups)
    assert len(triggers) == len(PIPELINE.stage_groups)  # one per stage input, none twice
    # A partition the group never committed on: the stage consumer starts from its earliest
    # record, so all of it waits (the view's `waiting`); KEDA counts it so with earliest
    # (its log-end offset: the same while retention has removed nothing).
    assert stage_consumer_offset_reset() == {"earliest"}
    for meta in triggers:
        assert meta["offsetResetPolicy"] == "earliest", meta
        assert meta["scaleToZeroOnInvalidOffset"] == "false", meta
