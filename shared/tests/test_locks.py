"""The advisory-lock registry: every namespace distinct, every lock in the code from it."""

import re
from pathlib import Path

import pytest
from mxw_shared import jobs, locks, migrate, outbox, sweeper

ROOT = Path(__file__).resolve().parents[2]


def test_info_advisory_lock_namespaces_are_distinct():
    pairs = list(locks.PAIR_NAMESPACES.values())
    assert len(set(pairs)) == len(pairs)
    assert all(-(2**31) <= n < 2**31 for n in pairs)  # the first int4 of a key pair
    prefixes = list(locks.TEXT_KEY_PREFIXES.values())
    assert len(set(prefixes)) == len(prefixes)
    assert all(p and ":" not in p for p in prefixes)  # `<prefix>:` can never be ambiguous
    # The registry's tables list every constant it defines.
    defined = {
        name: value
        for name, value in vars(locks).items()
        if name.isupper() and isinstance(value, int | str)
    }
    assert defined == {**locks.PAIR_NAMESPACES, **locks.TEXT_KEY_PREFIXES, "MIGRATIONS": 0x6D7877}
    # The collision the review found: a sweep round contended with a job's status numbering.
    assert sweeper._SWEEP_LOCK != jobs._STATUS_SEQ_LOCK
    assert len({sweeper._SWEEP_LOCK, jobs._STATUS_SEQ_LOCK, outbox._RELAY_LOCK}) == 3
    assert migrate._LOCK_ID == locks.MIGRATIONS


def test_info_text_keys_need_a_registered_prefix():
    assert locks.text_key(locks.BLOB_CONTENT, "ab") == "blob:ab"
    with pytest.raises(ValueError, match="unregistered"):
        locks.text_key("blobs", "ab")


def test_info_every_advisory_lock_in_the_code_comes_from_the_registry():
    sources = [*ROOT.glob("shared/src/**/*.py"), *ROOT.glob("services/*/src/**/*.py")]
    users = []
    for path in sources:
        text = path.read_text()
        if path.name == "locks.py" or "advisory" not in text:
            continue
        if not re.search(r"pg_(try_)?advisory", text):
            continue
        users.append(path.name)
        assert "mxw_shared.locks import" in text, path
        assert not re.search(r"\b0x[0-9A-Fa-f]{6,}\b", text), path  # no namespace of its own
        # Text keys are built with the registry's prefixes, never spelled out.
        assert not re.search(r"f\"(upload|webhooks|blob):", text), path
    assert len(users) >= 6
