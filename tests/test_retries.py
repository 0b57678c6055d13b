"""One retry policy: `retries: N` means at most N+1 attempts of a request, whatever layer asks.

Each test puts a fault proxy in front of a real registry that fails one kind of request every
time, and counts what the proxy received: exactly N+1, never N+1 squared."""

from __future__ import annotations

import json

import pytest

from faultproxy import FaultProxy
from helpers import run_cli, write_manifest
from imagegen import make_image, make_layer, push

RETRIES = 2
ATTEMPTS = RETRIES + 1
LAYER = 200 * 1024


@pytest.fixture
def image(registry):
    img = make_image([make_layer("retry-layer", LAYER)])
    push(img, registry.host, "test/retry", "1.0")
    registry.image = img
    return registry


@pytest.fixture
def proxy(image):
    p = FaultProxy(image.url).start()
    yield p
    p.stop()


def _sync(tmp_path, proxy, capsys, *extra):
    manifest = write_manifest(tmp_path / "m.yaml", f"""version: 1
registries:
  {proxy.host}:
    retries: {RETRIES}
images:
  - source: {proxy.host}/test/retry:1.0
""")
    return run_cli("sync", manifest, "-o", tmp_path / "b.tar", "--cache", tmp_path / "c", *extra, capsys=capsys)


def _bundle(tmp_path, registry, capsys):
    manifest = write_manifest(tmp_path / "src.yaml", f"version: 1\nimages:\n  - {registry.host}/test/retry:1.0\n")
    code, _, err = run_cli("sync", manifest, "-o", tmp_path / "b.tar", "--cache", tmp_path / "c", capsys=capsys)
    assert code == 0, err
    return tmp_path / "b.tar", None


def _push(tmp_path, bundle, proxy, capsys, *extra):
    config = write_manifest(tmp_path / "target.yaml", f"""version: 1
registries:
  {proxy.host}:
    retries: {RETRIES}
images: [example.com/unused:1]
""")
    return run_cli("push", bundle, "--to", f"{proxy.host}/m", "--config", config,
                   "--report", tmp_path / "push.json", *extra, capsys=capsys)


def test_blob_get_failing_every_time_is_sent_n_plus_1_times(image, proxy, tmp_path, capsys):
    layer = image.image.layers[0].digest
    proxy.rule = lambda s, n: ("status", 503, {}) if s.method == "GET" and layer in s.path else None
    code, _, err = _sync(tmp_path, proxy, capsys)
    assert code == 1 and "503" in err
    assert len(proxy.requests("GET", layer)) == ATTEMPTS


def test_a_resumed_download_counts_as_an_attempt(image, proxy, tmp_path, capsys):
    layer = image.image.layers[0].digest
    # every GET of the layer is cut after 10 KiB: the first from 0, the others resume with Range
    proxy.rule = lambda s, n: ("cut", 10 * 1024) if s.method == "GET" and layer in s.path else None
    code, _, err = _sync(tmp_path, proxy, capsys)
    assert code == 1
    gets = proxy.requests("GET", layer)
    assert len(gets) == ATTEMPTS
    assert "Range" not in gets[0].headers
    assert [g.headers.get("Range") for g in gets[1:]] == [f"bytes={10 * 1024 * i}-" for i in range(1, ATTEMPTS)]


def test_manifest_head_failing_every_time_is_sent_n_plus_1_times(image, proxy, tmp_path, capsys):
    # a tag never seen is fetched by GET at once: no HEAD on the first run
    assert _sync(tmp_path, proxy, capsys)[0] == 0
    assert proxy.requests("HEAD", "/manifests/") == []
    # the second run HEADs the tag it knows; that HEAD fails every time
    proxy.rule = lambda s, n: ("status", 503, {}) if s.method == "HEAD" and "/manifests/" in s.path else None
    code, _, err = _sync(tmp_path, proxy, capsys)
    assert code == 1
    assert len(proxy.requests("HEAD", "/manifests/1.0")) == ATTEMPTS


def test_manifest_get_failing_every_time_is_sent_n_plus_1_times(image, proxy, tmp_path, capsys):
    proxy.rule = lambda s, n: ("status", 502, {}) if s.method == "GET" and "/manifests/" in s.path else None
    code, _, err = _sync(tmp_path, proxy, capsys)
    assert code == 1
    assert len(proxy.requests("GET", "/manifests/")) == ATTEMPTS


@pytest.mark.parametrize("method", ["POST", "PUT"])
def test_upload_request_failing_every_time_is_sent_n_plus_1_times_per_blob(image, registry, tmp_path,
                                                                           capsys, method):
    bundle, _ = _bundle(tmp_path, image, capsys)
    proxy = FaultProxy(registry.url).start()
    proxy.rule = lambda s, n: (("status", 503, {}) if s.method == method and "/blobs/uploads/" in s.path
                               else None)
    try:
        code, _, err = _push(tmp_path, bundle, proxy, capsys)
    finally:
        proxy.stop()
    assert code == 1
    blobs = [image.image.config.digest, image.image.layers[0].digest]
    posts = proxy.requests("POST", "/blobs/uploads/")
    puts = proxy.requests("PUT", "/blobs/uploads/")
    # each attempt of an upload is a new session: one POST, then one PUT
    assert len(posts) == ATTEMPTS * len(blobs)
    assert len(puts) == (0 if method == "POST" else ATTEMPTS * len(blobs))
    if method == "PUT":
        assert sorted({p.query.split("digest=")[-1].replace("%3A", ":") for p in puts}) == sorted(blobs)


def test_chunk_patch_failing_every_time_is_sent_n_plus_1_times(image, registry, tmp_path, capsys):
    bundle, _ = _bundle(tmp_path, image, capsys)
    proxy = FaultProxy(registry.url).start()
    proxy.rule = lambda s, n: ("status", 503, {}) if s.method == "PATCH" else None
    try:
        code, _, err = _push(tmp_path, bundle, proxy, capsys, "--chunk-size", "64K")
    finally:
        proxy.stop()
    assert code == 1
    # only the layer is over 64K: its first PATCH fails, every attempt
    assert len(proxy.requests("PATCH")) == ATTEMPTS
    layer_posts = len(proxy.requests("POST", "/blobs/uploads/")) - 1      # minus the config's
    assert layer_posts == ATTEMPTS


def test_manifest_put_refused_as_invalid_is_not_retried_and_every_error_is_shown(image, registry, tmp_path,
                                                                                 capsys):
    bundle, _ = _bundle(tmp_path, image, capsys)
    proxy = FaultProxy(registry.url).start()
    body = {"errors": [{"code": "UNKNOWN", "message": "unknown error"},
                       {"code": "MANIFEST_BLOB_UNKNOWN", "message": "blob unknown to registry",
                        "detail": "sha256:" + "ab" * 32}]}
    proxy.rule = lambda s, n: ("status", 500, {}, body) if s.method == "PUT" and "/manifests/" in s.path else None
    try:
        code, _, err = _push(tmp_path, bundle, proxy, capsys)
    finally:
        proxy.stop()
    assert code == 1
    assert len(proxy.requests("PUT", "/manifests/")) == 1
    assert "UNKNOWN: unknown error" in err
    assert "MANIFEST_BLOB_UNKNOWN: blob unknown to registry (sha256:" + "ab" * 32 + ")" in err
    report = json.loads((tmp_path / "push.json").read_text())
    assert "keep_index_digest" not in report["images"][0]["error"]


def test_a_transient_500_is_still_retried(image, registry, tmp_path, capsys):
    bundle, _ = _bundle(tmp_path, image, capsys)
    proxy = FaultProxy(registry.url).start()
    proxy.rule = lambda s, n: ("status", 500, {}) if s.method == "PUT" and "/manifests/" in s.path else None
    try:
        code, _, err = _push(tmp_path, bundle, proxy, capsys)
    finally:
        proxy.stop()
    assert code == 1, err
    assert len(proxy.requests("PUT", "/manifests/")) == ATTEMPTS
