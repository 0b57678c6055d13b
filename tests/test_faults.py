"""Faults a real registry will not produce on demand, injected by a proxy in front of one."""

from __future__ import annotations

import json

import pytest

from faultproxy import FaultProxy
from helpers import Bundle, run_cli, sha256, write_manifest
from imagegen import make_image, make_layer, push

BIG = 512 * 1024


@pytest.fixture
def upstream(registry):
    """A registry holding two images; `big` has a 512 KiB layer to cut in the middle of."""
    big_layer = make_layer("fault-big", BIG)
    big = make_image([make_layer("fault-base", 4096), big_layer])
    small = make_image([make_layer("fault-small", 2048)])
    push(big, registry.host, "test/big", "1.0")
    push(small, registry.host, "test/small", "1.0")
    registry.big, registry.small, registry.big_layer = big, small, big_layer.digest
    return registry


@pytest.fixture
def proxy(upstream):
    p = FaultProxy(upstream.url).start()
    yield p
    p.stop()


def _sync(tmp_path, proxy, capsys):
    manifest = write_manifest(tmp_path / "m.yaml", f"""version: 1
images:
  - source: {proxy.host}/test/big:1.0
  - source: {proxy.host}/test/small:1.0
""")
    code, out, err = run_cli("sync", manifest, "-o", tmp_path / "b.tar", "--cache", tmp_path / "c",
                             "--report", tmp_path / "r.json", capsys=capsys)
    return code, err, json.loads((tmp_path / "r.json").read_text())


def _check_bundle(tmp_path, upstream, proxy):
    b = Bundle(tmp_path / "b.tar")
    assert b.entry(f"{proxy.host}/test/big:1.0")["digest"] == upstream.big.digest
    assert b.entry(f"{proxy.host}/test/small:1.0")["digest"] == upstream.small.digest
    for digest, data in b.blobs.items():
        assert sha256(data) == digest
    return b


def test_429_with_retry_after_then_success(upstream, proxy, tmp_path, capsys):
    def rule(seen, n):
        if "/manifests/" in seen.path and len(proxy.requests(contains="/manifests/")) <= 2:
            return ("status", 429, {"Retry-After": "1"})
    proxy.rule = rule
    code, err, report = _sync(tmp_path, proxy, capsys)
    assert code == 0, err
    assert sum(1 for s in proxy.seen if s.action and s.action[1] == 429) == 2
    _check_bundle(tmp_path, upstream, proxy)


def test_503s_on_blobs_are_retried(upstream, proxy, tmp_path, capsys):
    failed: dict[str, int] = {}

    def rule(seen, n):
        if "/blobs/" in seen.path and failed.get(seen.path, 0) < 2:
            failed[seen.path] = failed.get(seen.path, 0) + 1
            return ("status", 503, {})
    proxy.rule = rule
    code, err, _ = _sync(tmp_path, proxy, capsys)
    assert code == 0, err
    assert failed and all(v == 2 for v in failed.values())
    _check_bundle(tmp_path, upstream, proxy)


def test_connection_dropped_mid_blob_resumes_with_range(upstream, proxy, tmp_path, capsys):
    cut_at = BIG // 2

    def rule(seen, n):
        if seen.path.endswith(upstream.big_layer) and seen.method == "GET" \
                and len(proxy.requests("GET", upstream.big_layer)) == 1:
            return ("cut", cut_at)
    proxy.rule = rule
    code, err, report = _sync(tmp_path, proxy, capsys)
    assert code == 0, err
    gets = proxy.requests("GET", upstream.big_layer)
    assert len(gets) == 2
    assert "Range" not in gets[0].headers
    resumed_from = int(gets[1].headers["Range"].removeprefix("bytes=").rstrip("-"))
    assert 0 < resumed_from <= cut_at       # only the missing tail was fetched again
    _check_bundle(tmp_path, upstream, proxy)
    # bytes downloaded = each blob once, not the cut part twice
    assert report["totals"]["downloaded_bytes"] == sum(d.size for d in upstream.big.blobs() + upstream.small.blobs())


def test_corrupted_bytes_never_reach_cache_or_bundle(upstream, proxy, tmp_path, capsys):
    def rule(seen, n):
        if seen.path.endswith(upstream.big_layer) and seen.method == "GET":
            return ("flip", 1000)
    proxy.rule = rule
    code, err, report = _sync(tmp_path, proxy, capsys)
    assert code == 1
    status = {i["reference"]: i for i in report["images"]}
    big = status[f"{proxy.host}/test/big:1.0"]
    assert big["status"] == "failed" and "hash to" in big["error"] and upstream.big_layer in big["error"]
    assert status[f"{proxy.host}/test/small:1.0"]["status"] == "ok"
    cache = tmp_path / "c"
    assert not (cache / "blobs" / "sha256" / upstream.big_layer.split(":")[1]).exists()
    assert list((cache / "tmp").iterdir()) == []
    b = Bundle(tmp_path / "b.tar")
    assert b.refs() == {f"{proxy.host}/test/small:1.0"}
    assert upstream.big_layer not in b.blobs
    assert f"FAILED {proxy.host}/test/big:1.0" in err or "failed:" in err
    # with the fault gone, the next run completes and the earlier good blobs are not fetched again
    proxy.rule = None
    before = len(proxy.requests("GET", "/blobs/"))
    code, err, report = _sync(tmp_path, proxy, capsys)
    assert code == 0, err
    assert len(proxy.requests("GET", "/blobs/")) - before == 1
    _check_bundle(tmp_path, upstream, proxy)


def test_no_retry_on_404(upstream, proxy, tmp_path, capsys):
    manifest = write_manifest(tmp_path / "m.yaml", f"""version: 1
images:
  - source: {proxy.host}/test/nothere:1.0
""")
    code, _, err = run_cli("sync", manifest, "-o", tmp_path / "b.tar", "--cache", tmp_path / "c",
                           capsys=capsys)
    assert code == 1
    assert "not found" in err and "test/nothere" in err
    assert len(proxy.requests(contains="/manifests/")) == 1
    assert not (tmp_path / "b.tar").exists()
