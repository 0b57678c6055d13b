"""imgmirror push and sync --to against real registries; skopeo reads every image back."""

from __future__ import annotations

import hashlib
import json

import pytest

from faultproxy import FaultProxy
from helpers import run_cli, write_manifest
from imagegen import inspect_raw, make_image, make_layer, push

KINDS = ["test/base:1.0", "test/app-a:1.0", "test/app-b:1.0", "test/multi:1.0", "test/dockerv2:1.0",
         "test/dockerlist:1.0", "test/raw:1.0"]


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _manifest(tmp_path, host: str, extra: str = "", keys=KINDS) -> str:
    lines = "".join(f"  - source: {host}/{k}\n" for k in keys)
    return write_manifest(tmp_path / "m.yaml", f"version: 1\n{extra}\nimages:\n{lines}")


@pytest.fixture(scope="module")
def source(seeded_registry):
    return seeded_registry


def _report(tmp_path) -> dict:
    return json.loads((tmp_path / "r.json").read_text())


def test_sync_to_registry_keeps_every_digest_and_mounts(source, registry, tmp_path):
    host, images = source.registry.host, source.images
    manifest = _manifest(tmp_path, host)
    mark = registry.mark()
    code = run_cli("sync", manifest, "--to", f"{registry.host}/mirror", "--cache", tmp_path / "c",
                   "--report", tmp_path / "r.json")[0]
    assert code == 0
    assert not list(tmp_path.glob("*.tar"))          # --to without -o writes no bundle
    for key in KINDS:
        raw = inspect_raw(registry.host, f"mirror/{key}")
        assert _sha(raw) == images[key]["digest"], key
    # app-a and app-b share the base layers with test/base: uploaded once, mounted elsewhere
    mounts = registry.requests("POST", "mount=", since=mark)
    assert len(mounts) >= 2 * len(images["test/app-a:1.0"]["base_layers"])
    assert all(r.status == 201 for r in mounts)
    push = _report(tmp_path)["push"]
    assert push["totals"]["failed"] == 0 and push["totals"]["blobs_mounted"] == len(mounts)


def test_second_push_uploads_nothing(source, registry, tmp_path):
    manifest = _manifest(tmp_path, source.registry.host)
    args = ["sync", manifest, "--to", registry.host, "--cache", tmp_path / "c", "--report", tmp_path / "r.json"]
    assert run_cli(*args)[0] == 0
    mark = registry.mark()
    assert run_cli(*args)[0] == 0
    assert _report(tmp_path)["push"]["totals"]["uploaded_bytes"] == 0
    writes = [r for r in registry.requests(since=mark) if r.method in ("POST", "PUT", "PATCH")]
    assert writes == []
    assert {r.method for r in registry.requests(since=mark)} == {"HEAD"}


def test_push_bundle_basic_and_token_auth(source, make_registry, tmp_path, capsys, monkeypatch):
    host = source.registry.host
    bundle = tmp_path / "b.tar"
    assert run_cli("sync", _manifest(tmp_path, host), "-o", bundle, "--cache", tmp_path / "c")[0] == 0
    for auth in ("basic", "token"):
        target = make_registry(auth=auth)
        monkeypatch.setenv("T_USER", target.username)
        monkeypatch.setenv("T_PASS", target.password)
        config = write_manifest(tmp_path / f"{auth}.yaml", f"""version: 1
registries:
  {target.host}:
    username: ${{T_USER}}
    password: ${{T_PASS}}
images: [alpine]
""")
        code, _, err = run_cli("push", bundle, "--to", f"{target.host}/m", "--config", config,
                               "--report", tmp_path / f"{auth}.json", capsys=capsys)
        assert code == 0, err
        assert target.password not in err
        for key in KINDS:
            raw = inspect_raw(target.host, f"m/{key}", target.creds)
            assert _sha(raw) == source.images[key]["digest"], (auth, key)
        if auth == "token":
            scopes = {s for r in target.token_server.requests for s in r["scopes"]}
            assert "repository:m/test/app-a:pull,push" in scopes
            assert any(s.endswith(":pull") and "m/test/base" in s for s in scopes)   # for the mounts


def test_push_filtered_index_digest_only_and_target(source, registry, tmp_path):
    host, images = source.registry.host, source.images
    digest = images["test/app-b:1.0"]["digest"]
    manifest = write_manifest(tmp_path / "m.yaml", f"""version: 1
platforms: [linux/arm64]
images:
  - source: {host}/test/multi:1.0
  - source: {host}/test/app-b
    digests: ["{digest}"]
  - source: {host}/test/base:1.0
    target: tools/base
""")
    bundle = tmp_path / "b.tar"
    assert run_cli("sync", manifest, "-o", bundle, "--cache", tmp_path / "c", "--report", tmp_path / "s.json")[0] == 0
    code = run_cli("push", bundle, "--to", registry.host, "--report", tmp_path / "r.json")[0]
    assert code == 0
    sync_report = json.loads((tmp_path / "s.json").read_text())
    multi = next(i for i in sync_report["images"] if i["reference"].endswith("test/multi:1.0"))
    assert _sha(inspect_raw(registry.host, "test/multi:1.0")) == multi["digest"] != images["test/multi:1.0"]["digest"]
    assert _sha(inspect_raw(registry.host, f"test/app-b@{digest}")) == digest
    assert _sha(inspect_raw(registry.host, "tools/base:1.0")) == images["test/base:1.0"]["digest"]


def test_push_dry_run_writes_nothing(source, registry, tmp_path, capsys):
    bundle = tmp_path / "b.tar"
    assert run_cli("sync", _manifest(tmp_path, source.registry.host), "-o", bundle, "--cache", tmp_path / "c")[0] == 0
    mark = registry.mark()
    code, _, err = run_cli("push", bundle, "--to", registry.host, "--dry-run", capsys=capsys)
    assert code == 0 and "would push" in err
    assert [r for r in registry.requests(since=mark) if r.method != "HEAD" and r.path != "/v2/"] == []


def test_413_proxy_forces_chunked_upload(registry, tmp_path, capsys):
    big = make_image([make_layer("chunky", 600 * 1024)])
    src_reg = registry
    push(big, src_reg.host, "test/chunky", "1.0")
    limit = 256 * 1024
    proxy = FaultProxy(registry.url).start()
    proxy.rule = lambda seen, n: (("status", 413, {}) if seen.method in ("PUT", "PATCH")
                                  and int(seen.headers.get("Content-Length", 0)) > limit else None)
    try:
        manifest = write_manifest(tmp_path / "m.yaml", f"version: 1\nimages:\n  - {src_reg.host}/test/chunky:1.0\n")
        code, _, err = run_cli("sync", manifest, "--to", f"{proxy.host}/via-proxy", "--cache", tmp_path / "c",
                               capsys=capsys)
    finally:
        proxy.stop()
    assert code == 0, err
    assert any(s.action and s.action[1] == 413 for s in proxy.seen)
    patches = [s for s in proxy.seen if s.method == "PATCH" and not s.action]
    assert patches and all(int(s.headers["Content-Length"]) <= limit for s in patches)
    assert all("bytes=" not in s.headers.get("Content-Range", "") for s in patches)
    assert _sha(inspect_raw(registry.host, "via-proxy/test/chunky:1.0")) == big.digest


def test_interrupted_push_completes_on_rerun(registry, make_registry, tmp_path, capsys):
    target = make_registry()
    a = make_image([make_layer("int-a", 200 * 1024)])
    b = make_image([make_layer("int-b", 200 * 1024)])
    push(a, registry.host, "test/int-a", "1.0")
    push(b, registry.host, "test/int-b", "1.0")
    victim = b.layers[0].digest
    proxy = FaultProxy(target.url).start()
    # every upload of b's layer dies after 64 KiB: that image fails, the other one lands
    proxy.rule = lambda seen, n: (("cut_request", 64 * 1024)
                                  if seen.method in ("PUT", "PATCH") and victim in seen.query else None)
    try:
        manifest = write_manifest(tmp_path / "m.yaml", f"""version: 1
registries:
  {proxy.host}:
    retries: 1
images:
  - {registry.host}/test/int-a:1.0
  - {registry.host}/test/int-b:1.0
""")
        bundle = tmp_path / "b.tar"
        assert run_cli("sync", manifest, "-o", bundle, "--cache", tmp_path / "c")[0] == 0
        code, _, err = run_cli("push", bundle, "--to", proxy.host, "--config", manifest, capsys=capsys)
        assert code == 1 and "test/int-b" in err
        proxy.rule = None
        before = len(proxy.seen)
        code, _, err = run_cli("push", bundle, "--to", proxy.host, "--config", manifest, capsys=capsys)
        assert code == 0, err
        again = proxy.seen[before:]
    finally:
        proxy.stop()
    uploads = sorted({s.query.split("digest=")[1].split("&")[0].replace("%3A", ":")
                      for s in again if s.method in ("PUT", "POST") and "digest=" in s.query})
    # only the missing layer is sent again, with its image's config: a config is sent without
    # asking first (new with its image nearly always; a re-sent one is a few hundred bytes)
    assert uploads == sorted([victim, b.config.digest])
    assert _sha(inspect_raw(target.host, "test/int-b:1.0")) == b.digest


def test_two_images_on_one_name_is_refused(source, registry, tmp_path, capsys):
    host = source.registry.host
    manifest = write_manifest(tmp_path / "m.yaml", f"""version: 1
images:
  - source: {host}/test/app-a:1.0
    target: same/name
  - source: {host}/test/app-b:1.0
    target: same/name
""")
    bundle = tmp_path / "b.tar"
    assert run_cli("sync", manifest, "-o", bundle, "--cache", tmp_path / "c")[0] == 0
    mark = registry.mark()
    code, _, err = run_cli("push", bundle, "--to", registry.host, capsys=capsys)
    assert code == 2 and "same/name:1.0" in err
    assert registry.requests(since=mark) == []


def test_sparse_index_is_refused_with_an_explanation(source, registry, tmp_path, capsys):
    manifest = write_manifest(tmp_path / "m.yaml", f"""version: 1
keep_index_digest: true
platforms: [linux/amd64]
images:
  - {source.registry.host}/test/multi:1.0
""")
    code, _, err = run_cli("sync", manifest, "--to", registry.host, "--cache", tmp_path / "c", capsys=capsys)
    assert code == 1
    assert "keep_index_digest" in err and "sparse" in err


@pytest.mark.parametrize("layer_size, expected", [(2048, 6), (200 * 1024, 7)])
def test_a_new_small_image_costs_at_most_seven_requests_at_the_destination(
        registry, make_registry, tmp_path, capsys, layer_size, expected):
    """HEAD the tag; the config sent without asking (a single-request POST ?digest=, which
    distribution 2.8 answers with a session: the PUT follows); the layer asked for with a HEAD
    only when it is over 64 KiB (a smaller one is sent as the config is); the manifest once,
    under its tag, its answered digest checked. 11 before issue 12 (a HEAD per blob, a HEAD by
    digest, a PUT by digest and a HEAD of the tag after its PUT)."""
    img = make_image([make_layer(f"small-{layer_size}", layer_size)])
    push(img, registry.host, "test/small", "1.0")
    manifest = write_manifest(tmp_path / "m.yaml", f"version: 1\nimages:\n  - {registry.host}/test/small:1.0\n")
    assert run_cli("sync", manifest, "-o", tmp_path / "b.tar", "--cache", tmp_path / "c", capsys=capsys)[0] == 0
    target = make_registry()
    mark = target.mark()
    assert run_cli("push", tmp_path / "b.tar", "--to", target.host, capsys=capsys)[0] == 0
    reqs = [r for r in target.requests(since=mark) if r.path != "/v2/"]
    seen = [(r.method, r.path.split("/")[-2] if "/blobs/uploads/" not in r.path else "uploads") for r in reqs]
    assert len(seen) == expected, seen
    assert seen[0] == ("HEAD", "manifests") and seen[-1] == ("PUT", "manifests")
    heads = [r.path for r in reqs if r.method == "HEAD" and "/blobs/" in r.path]
    assert heads == ([f"/v2/test/small/blobs/{img.layers[0].digest}"] if layer_size > 64 * 1024 else [])
    assert sorted(m for m, _ in seen[1:-1] if m != "HEAD") == ["POST", "POST", "PUT", "PUT"]
    probe = [r for r in reqs if r.method == "POST" and "digest=" in r.uri]
    assert probe and all(r.status == 202 for r in probe)      # a session instead: fallen back
    assert inspect_raw(target.host, "test/small:1.0") == img.raw


def test_single_request_uploads_where_the_registry_takes_them(registry, make_registry, tmp_path, capsys):
    """A registry that answers 201 to POST ?digest= with the body (emulated in front of a real
    one): each small blob then costs that one request, and a new small image four in all."""
    imgs = [make_image([make_layer(f"mono-{i}", 3000 + i)]) for i in range(3)]
    for i, img in enumerate(imgs):
        push(img, registry.host, "test/mono", f"{i}")
    manifest = write_manifest(tmp_path / "m.yaml", f"version: 1\nimages:\n  - source: {registry.host}/test/mono\n"
                              "    tags: ['0', '1', '2']\n")
    assert run_cli("sync", manifest, "-o", tmp_path / "b.tar", "--cache", tmp_path / "c", capsys=capsys)[0] == 0
    target = make_registry()
    proxy = FaultProxy(target.url).start()
    proxy.rule = lambda seen, n: ("monolithic",)
    try:
        code, _, err = run_cli("push", tmp_path / "b.tar", "--to", proxy.host, capsys=capsys)
    finally:
        proxy.stop()
    assert code == 0, err
    seen = [s for s in proxy.seen if s.path != "/v2/"]
    kinds = sorted((s.method, "uploads" if "/uploads/" in s.path else s.path.split("/")[-2]) for s in seen)
    # per image: HEAD tag, POST config, POST layer (small: not asked for first), PUT tag
    assert kinds == sorted([("HEAD", "manifests"), ("POST", "uploads"), ("POST", "uploads"),
                            ("PUT", "manifests")] * 3), kinds
    assert all("digest=" in s.query for s in seen if s.method == "POST")
    for i, img in enumerate(imgs):
        assert inspect_raw(target.host, f"test/mono:{i}") == img.raw
