"""What every writer of a transcript (the transcriber, a person's edit at the gateway) agrees
on: the transcript's full text is its segments' texts in order, one space apart."""

from __future__ import annotations

from collections.abc import Iterable


def full_text(texts: Iterable[str]) -> str:
    return " ".join(t for t in texts if t)
