"""netguard.parse_target: one URL parser for every outbound target, its refusals worded for
what the URL is for (a download is fetched, a webhook endpoint is called)."""

from __future__ import annotations

import pytest
from mxw_shared.netguard import BadUrl, Purpose, parse_target

PURPOSES: tuple[Purpose, ...] = ("download", "webhook")


@pytest.mark.parametrize(
    ("purpose", "detail"),
    [
        ("download", "only http and https URLs can be fetched"),
        ("webhook", "only http and https URLs can be called"),
    ],
)
def test_another_scheme_is_refused_in_the_words_of_the_purpose(
    purpose: Purpose, detail: str
) -> None:
    for url in ("ftp://example.org/a.ogg", "file:///etc/passwd", "not a url"):
        with pytest.raises(BadUrl) as refused:
            parse_target(url, 2048, purpose=purpose)
        assert str(refused.value) == detail, url


@pytest.mark.parametrize(
    ("url", "detail"),
    [
        ("http://x/" + "a" * 100, "the URL is longer than 64 characters"),
        ("http:///nohost", "the URL has no host"),
        ("https://user:pw@example.org/", "URLs with credentials are not accepted"),
        ("http://example.org/a b", "the URL contains whitespace or control characters"),
    ],
)
def test_other_refusals_read_the_same_for_every_purpose(url: str, detail: str) -> None:
    for purpose in PURPOSES:
        with pytest.raises(BadUrl) as refused:
            parse_target(url, 64, purpose=purpose)
        assert str(refused.value) == detail, purpose


def test_a_target_is_the_same_whatever_it_is_for() -> None:
    download, webhook = (
        parse_target(" HTTPS://Example.org:8443/hook?x=1#f ", 2048, purpose=p) for p in PURPOSES
    )
    assert download == webhook
    assert (download.scheme, download.host, download.port) == ("https", "example.org", 8443)
    assert download.path_and_query == "/hook?x=1"
    assert download.url == "HTTPS://Example.org:8443/hook?x=1#f"
