"""Pure helpers of the transport: Retry-After parsing, URL redaction, the retry wait policy."""

from __future__ import annotations

import email.utils

import pytest

from mirror.errors import TransientError
from mirror.registry.transport import MAX_RETRY_AFTER, _wait_policy, parse_retry_after, redact_url


@pytest.mark.parametrize("value, expected", [
    ("7", 7.0), (" 0 ", 0.0), (None, None), ("", None), ("soon", None), ("-3", None),
])
def test_retry_after_seconds(value, expected):
    assert parse_retry_after(value) == expected


def test_retry_after_http_date():
    now = 1_800_000_000.0
    assert parse_retry_after(email.utils.formatdate(now + 30, usegmt=True), now=now) == pytest.approx(30)
    assert parse_retry_after(email.utils.formatdate(now - 30, usegmt=True), now=now) == 0.0


@pytest.mark.parametrize("url, expected", [
    ("https://s3.example.com/bucket/blob?X-Amz-Signature=secret&X-Amz-Credential=AKIA",
     "https://s3.example.com/bucket/blob"),
    ("https://user:pass@reg.example:5000/v2/x/blobs/sha256:abc", "https://reg.example:5000/v2/x/blobs/sha256:abc"),
])
def test_redact_url_drops_secrets(url, expected):
    assert redact_url(url) == expected


class _State:
    def __init__(self, exc, attempt=1):
        self.attempt_number = attempt
        self.outcome = type("O", (), {"exception": lambda _self: exc})()
        self.idle_for = 0.0
        self.upcoming_sleep = 0.0


def test_wait_policy_honours_retry_after_within_bounds():
    # at least what the server asked, plus jitter of at most 10 % (and 50 ms)
    waits = {_wait_policy(_State(TransientError("x", retry_after=3.0))) for _ in range(50)}
    assert all(3.0 <= w <= 3.0 * 1.1 + 0.05 for w in waits) and len(waits) > 1
    capped = _wait_policy(_State(TransientError("x", retry_after=3600.0)))
    assert MAX_RETRY_AFTER <= capped <= MAX_RETRY_AFTER * 1.1 + 0.05
    assert 0 <= _wait_policy(_State(TransientError("x"), attempt=3)) <= 10


def test_proxy_from_environment(monkeypatch):
    from mirror.registry.transport import proxy_for
    for var in ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY"):
        monkeypatch.delenv(var, raising=False)
    assert proxy_for("https://ghcr.io/v2/") is None
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.corp:3128")
    monkeypatch.setenv("NO_PROXY", "internal.example,.lan")
    assert proxy_for("https://ghcr.io/v2/") == "http://proxy.corp:3128"
    assert proxy_for("https://registry.internal.example/v2/") is None
    assert proxy_for("http://127.0.0.1:5000/v2/") is None          # loopback: never proxied
    assert proxy_for("http://plain.example/v2/") is None            # no HTTP_PROXY set
