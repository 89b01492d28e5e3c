"""The gateway's cache of recent query vectors (pure unit tests)."""

from mxw_gateway.search.service import QueryVectorCache


def vec(x: float) -> list[float]:
    return [x, -x, 0.25]


def test_a_hit_returns_the_stored_vector_and_other_keys_miss():
    cache = QueryVectorCache(capacity=4)
    cache.put(("url", "m", "alice", "solar"), vec(0.5))
    assert cache.get(("url", "m", "alice", "solar")) == vec(0.5)
    # Another user, model or embedder never shares the entry.
    assert cache.get(("url", "m", "bob", "solar")) is None
    assert cache.get(("url", "other", "alice", "solar")) is None
    assert cache.get(("other-url", "m", "alice", "solar")) is None


def test_the_least_recently_used_entry_goes_first():
    cache = QueryVectorCache(capacity=2)
    cache.put(("a",), vec(1.0))
    cache.put(("b",), vec(2.0))
    assert cache.get(("a",)) == vec(1.0)  # a is now the most recent
    cache.put(("c",), vec(3.0))
    assert len(cache) == 2
    assert cache.get(("b",)) is None
    assert cache.get(("a",)) == vec(1.0)
    assert cache.get(("c",)) == vec(3.0)
