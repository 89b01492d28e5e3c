"""structlog configuration: one line per event, key=value on a console, JSON in clusters."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

from mxw_shared.redaction import REDACTED, is_secret_name, scrub_secrets
from mxw_shared.telemetry import add_trace_ids


def configure_logging(
    level: str = "INFO", fmt: str = "console", service: str = "", stream: TextIO | None = None
) -> None:
    stream = stream or sys.stderr
    if fmt == "json":
        _quiet_progress_bars()
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            add_trace_ids,  # trace_id/span_id of the active span: logs join their trace
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redact_secrets,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=True,
    )
    if service:
        structlog.contextvars.bind_contextvars(service=service)
    # Library logs (aiokafka, uvicorn…) take the same processors and the same renderer, so
    # every line of a JSON-logging service is JSON.
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.contextvars.merge_contextvars,
                structlog.stdlib.add_logger_name,
                structlog.processors.add_log_level,
                add_trace_ids,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
                redact_secrets,
            ],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("aiokafka", "httpx", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _quiet_progress_bars() -> None:
    """Model-loading progress bars (Hugging Face, tqdm) are not log lines: in JSON mode they
    would be the only lines a log pipeline cannot parse."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # libraries imported later
    for module, disable in (
        ("huggingface_hub.utils", "disable_progress_bars"),
        ("transformers.utils.logging", "disable_progress_bar"),
    ):
        loaded = sys.modules.get(module)
        if loaded is not None:
            getattr(loaded, disable)()


def redact_secrets(_: object, __: str, event_dict: MutableMapping[str, Any]) -> Any:
    """Last line of defence: values under secret-looking keys, bearer credentials and JWTs
    inside any string are replaced before a line is written."""
    for key in list(event_dict):
        if is_secret_name(key):
            event_dict[key] = REDACTED
        else:
            event_dict[key] = scrub_secrets(event_dict[key])
    return event_dict


def get_logger(name: str | None = None) -> structlog.stdlib.BoundLogger:
    return structlog.get_logger(name)  # type: ignore[no-any-return]
