"""The registry's own words reach the user (issue 8.3): every entry of its `errors` array, and what
to do where they alone do not say it. Real registries; their request logs are counted."""

from __future__ import annotations

import json

from faultproxy import FaultProxy
from helpers import run_cli, write_manifest
from imagegen import DOCKER_CONFIG, DOCKER_MANIFEST, Blob, Image, Layer, make_image, make_layer, push_raw

FOREIGN_TYPE = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"


def _windows_like_image() -> tuple[Image, Layer]:
    """A Docker schema2 image whose base layer is foreign (urls), as Windows base images are."""
    base = Layer(FOREIGN_TYPE, b"foreign base layer bytes" * 100, diff_id="sha256:" + "0" * 64)
    own = make_layer("errors-own", 2048, docker=True)
    cfg = Blob(DOCKER_CONFIG, json.dumps({"architecture": "amd64", "os": "windows",
                                          "rootfs": {"type": "layers", "diff_ids": [base.diff_id, own.diff_id]}}
                                         ).encode())
    doc = {"schemaVersion": 2, "mediaType": DOCKER_MANIFEST, "config": cfg.descriptor(),
           "layers": [base.descriptor(urls=["https://example.com/base-layer.tar.gz"]), own.descriptor()]}
    return Image(Blob(DOCKER_MANIFEST, json.dumps(doc).encode()), cfg, (base, own)), base


def test_foreign_layer_refusal_shows_every_error_and_what_the_registry_needs(make_registry, tmp_path, capsys):
    source, target = make_registry(allow_urls=True), make_registry()
    image, foreign = _windows_like_image()
    push_raw(image, source.host, "win/app", "1.0")
    manifest = write_manifest(tmp_path / "m.yaml", f"version: 1\nimages:\n  - {source.host}/win/app:1.0\n")
    code, _, err = run_cli("sync", manifest, "-o", tmp_path / "b.tar", "--cache", tmp_path / "c", capsys=capsys)
    assert code == 0, err
    assert f"foreign layer {foreign.digest} is not mirrored" in err
    mark = target.mark()
    code, _, err = run_cli("push", tmp_path / "b.tar", "--to", target.host, "--report", tmp_path / "p.json",
                           capsys=capsys)
    assert code == 1
    error = json.loads((tmp_path / "p.json").read_text())["images"][0]["error"]
    # distribution answers 500 UNKNOWN, then MANIFEST_BLOB_UNKNOWN naming the foreign layer
    assert "UNKNOWN: unknown error" in error
    assert f"MANIFEST_BLOB_UNKNOWN: blob unknown to registry ({foreign.digest})" in error
    assert "validation.manifests.urls.allow" in error
    assert "keep_index_digest" not in error
    assert error in err
    # a manifest the registry calls invalid is not sent again: one PUT, no retries
    puts = [r for r in target.requests("PUT", since=mark) if "/manifests/" in r.path]
    assert len(puts) == 1


def test_references_by_digest_are_printed_with_an_at(registry, make_registry, tmp_path, capsys):
    img = make_image([make_layer("errors-at", 1024)])
    push_raw(img, registry.host, "test/at", "1.0")
    # an image by digest: its manifest goes by digest (a tagged top goes under its tag alone)
    manifest = write_manifest(tmp_path / "m.yaml", f"version: 1\nimages:\n  - {registry.host}/test/at@{img.digest}\n")
    assert run_cli("sync", manifest, "-o", tmp_path / "b.tar", "--cache", tmp_path / "c", capsys=capsys)[0] == 0
    proxy = FaultProxy(make_registry().url).start()
    # the HEAD of the manifest by digest (before its PUT) is refused
    proxy.rule = lambda s, n: ("status", 400, {}) if s.method == "HEAD" and "/manifests/sha256:" in s.path else None
    try:
        code, _, err = run_cli("push", tmp_path / "b.tar", "--to", proxy.host, capsys=capsys)
    finally:
        proxy.stop()
    assert code == 1
    assert f"manifest {proxy.host}/test/at@{img.digest}" in err
    assert f"test/at:{img.digest}" not in err


def test_usage_error_names_the_program_once(capsys):
    code, _, err = run_cli("bogus", capsys=capsys)
    assert code == 2 and "(see `imgmirror --help`)" in err and "imgmirror imgmirror" not in err
    code, _, err = run_cli("sync", capsys=capsys)
    assert code == 2 and "(see `imgmirror sync --help`)" in err
