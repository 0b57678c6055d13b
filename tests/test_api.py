"""The public Python API (`import mirror`): each function against real registries, the error
tree, the README's example run as written, and lazy imports (verify, list and --version never
load aiohttp)."""

from __future__ import annotations

import importlib

import io
import json
import re
import subprocess
import sys
import tarfile
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

import mirror
from helpers import Bundle, run_cli, sha256, skopeo, write_manifest
from imagegen import inspect_raw, make_image, make_layer, make_multiarch, push

ROOT = Path(__file__).resolve().parent.parent
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))   # no proxies from the env


def _seed(registry, tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """Two images in `registry` (one multi-arch) and a mirror.yaml naming them: (manifest,
    {reference: digest})."""
    base = make_layer("api-base", 200_000)
    images = {"test/base:1.0": make_image([base]),
              "test/multi:1.0": make_multiarch("api-multi", attestations=False)}
    digests = {}
    for ref, img in images.items():
        push(img, registry.host, *ref.split(":"))
        digests[f"{registry.host}/{ref}"] = img.digest
    manifest = write_manifest(tmp_path / "mirror.yaml", "version: 1\nimages:\n" +
                              "".join(f"  - {registry.host}/{ref}\n" for ref in images))
    return manifest, digests


@pytest.fixture
def bundle(registry, tmp_path):
    """(bundle path, {reference: digest}) of a bundle synced from a real registry."""
    manifest, digests = _seed(registry, tmp_path)
    out = tmp_path / "b.tar"
    mirror.sync(manifest, output=out, cache=tmp_path / "c")
    return out, digests


# -- the functions ---------------------------------------------------------------------------------

def test_sync_to_a_bundle_returns_the_result_and_prints_nothing(registry, tmp_path, capsys):
    manifest, digests = _seed(registry, tmp_path)
    result = mirror.sync(manifest, output=tmp_path / "b.tar", cache=tmp_path / "c")
    assert isinstance(result, mirror.SyncResult)
    assert {i.reference: (i.status, i.digest) for i in result.images} == \
        {ref: ("ok", d) for ref, d in digests.items()}
    assert result.totals.failed == 0 and result.push is None
    assert result.bundle.path == str(tmp_path / "b.tar")
    b = Bundle(tmp_path / "b.tar")
    assert {ref: b.entry(ref)["digest"] for ref in digests} == digests
    assert capsys.readouterr() == ("", "")          # progress=None: a library call is silent


def test_sync_with_a_progress_reports_through_it(registry, tmp_path, capsys):
    manifest, _ = _seed(registry, tmp_path)
    lines = io.StringIO()
    mirror.sync(manifest, output=tmp_path / "b.tar", cache=tmp_path / "c",
                progress=mirror.Progress(lines))
    assert re.search(r"imgmirror: ok \S+/test/base:1.0 sha256:", lines.getvalue())
    assert capsys.readouterr() == ("", "")


def test_sync_dry_run_writes_nothing(registry, tmp_path):
    manifest, digests = _seed(registry, tmp_path)
    result = mirror.sync(str(manifest), output=tmp_path / "b.tar", cache=tmp_path / "c", dry_run=True)
    assert [i.status for i in result.images] == ["ok", "ok"] and result.totals.blobs > 0
    assert result.bundle is None and not (tmp_path / "b.tar").exists()


def test_sync_to_a_registry_and_a_bundle_at_once(registry, make_registry, tmp_path):
    manifest, digests = _seed(registry, tmp_path)
    target = make_registry()
    result = mirror.sync(manifest, to=f"{target.host}/mirror", output=tmp_path / "b.tar",
                         cache=tmp_path / "c", jobs=2)
    assert isinstance(result.push, mirror.PushResult)
    assert result.push.totals.failed == 0 and result.push.destination == f"{target.host}/mirror"
    for ref, digest in digests.items():
        assert sha256(inspect_raw(target.host, "mirror/" + ref.split("/", 1)[1])) == digest
    assert mirror.verify(tmp_path / "b.tar").ok


def test_sync_takes_a_loaded_spec(registry, tmp_path):
    from mirror.specfile import load_spec
    manifest, digests = _seed(registry, tmp_path)
    spec = load_spec(manifest)
    result = mirror.sync(spec, output=f"{tmp_path}/layout/", cache=tmp_path / "c")
    assert result.totals.ok == 2 and (tmp_path / "layout" / "index.json").is_file()


def test_push_a_bundle_and_a_chain(bundle, make_registry, tmp_path):
    path, digests = bundle
    target = make_registry()
    result = mirror.push(path, target.host, chunk_size=64 * 1024, jobs=2)
    assert isinstance(result, mirror.PushResult) and isinstance(result.images[0], mirror.PushReport)
    assert result.totals.ok == 2 and result.totals.blobs_uploaded > 0
    for ref, digest in digests.items():
        assert sha256(inspect_raw(target.host, ref.split("/", 1)[1])) == digest
    again = mirror.push([path], target.host, dry_run=True)      # a list of bundles; nothing new
    assert again.totals.ok == 2 and again.totals.blobs_uploaded == 0


def test_verify_a_path_and_a_stream(bundle):
    path, _ = bundle
    res = mirror.verify(path)
    assert isinstance(res, mirror.VerifyResult)
    assert res.ok and res.images == 2 and res.sha256 == sha256(path.read_bytes())
    with open(path, "rb") as fh:
        streamed = mirror.verify(fh)
    assert streamed.ok and streamed.sha256 == res.sha256 and streamed.path == str(path)
    assert mirror.verify(io.BytesIO(path.read_bytes())).path == "<stream>"


def test_verify_reports_damage_in_the_result(bundle, tmp_path):
    path, digests = bundle
    with tarfile.open(path) as tar:
        blob = next(m for m in tar if m.name.startswith("blobs/sha256/"))
    data = bytearray(path.read_bytes())
    data[blob.offset_data + blob.size // 2] ^= 0xFF
    bad = tmp_path / "bad.tar"
    bad.write_bytes(bytes(data))
    res = mirror.verify(bad)
    assert not res.ok and any(blob.name.rsplit("/", 1)[1] in p for p in res.problems)


def test_list_images_is_typed_and_list_json_is_unchanged(bundle, capsys):
    from mirror.bundle.listing import list_bundle
    path, digests = bundle
    images = mirror.list_images(path)
    assert all(isinstance(i, mirror.ImageInfo) for i in images)
    assert {i.reference: i.digest for i in images} == digests
    multi = next(i for i in images if i.reference.endswith("test/multi:1.0"))
    assert len(multi.platforms) > 1 and multi.size > 0 and multi.problem is None
    with pytest.raises(AttributeError):
        multi.size = 0                                   # frozen
    assert run_cli("list", path, "--json", capsys=capsys)[:2] == \
        (0, json.dumps(list_bundle(path), indent=2) + "\n")
    assert [i.to_json() for i in images] == list_bundle(path)


def test_extract_one_image(bundle, tmp_path):
    path, digests = bundle
    out = tmp_path / "one.tar"
    res = mirror.extract(path, next(iter(digests)), out)
    assert isinstance(res, mirror.ExtractResult)
    assert res.digest == next(iter(digests.values())) and res.path == str(out) and res.docker_load
    assert mirror.verify(out).ok and mirror.verify(out).images == 1


def test_serve_starts_answers_and_stops(bundle):
    path, digests = bundle
    before = {t.name for t in threading.enumerate()}
    with mirror.serve([path], listen="127.0.0.1:0") as server:
        assert isinstance(server, mirror.Server) and server.images == 2 and server.warnings == []
        assert server.url == f"http://{server.address}" and server.port > 0
        with _OPENER.open(f"{server.url}/v2/", timeout=10) as r:
            assert r.status == 200 and r.headers["Docker-Distribution-API-Version"] == "registry/2.0"
        for ref, digest in digests.items():
            raw = skopeo("inspect", "--raw", "--tls-verify=false",
                         f"docker://{server.address}/{ref.split('/', 1)[1]}")
            assert sha256(raw) == digest
    with pytest.raises(urllib.error.URLError):
        _OPENER.open(f"{server.url}/v2/", timeout=5)
    assert {t.name for t in threading.enumerate()} <= before
    server.close()                                   # idempotent


def test_serve_close_without_with(bundle):
    server = mirror.serve(bundle[0], listen="127.0.0.1:0")
    try:
        with _OPENER.open(f"{server.url}/v2/_catalog", timeout=10) as r:
            assert json.loads(r.read())["repositories"] == ["test/base", "test/multi"]
    finally:
        server.close()


# -- errors: one tree ------------------------------------------------------------------------------

def test_a_bad_manifest_raises_spec_error_before_any_request(tmp_path):
    manifest = write_manifest(tmp_path / "m.yaml", "version: 1\nimages: []\n")
    with pytest.raises(mirror.SpecError) as info:
        mirror.sync(manifest, output=tmp_path / "b.tar", cache=tmp_path / "c")
    assert info.value.file == str(manifest) and info.value.path == "images"
    assert isinstance(info.value, mirror.MirrorError)
    assert not (tmp_path / "b.tar").exists()


def test_not_a_bundle_raises_not_a_bundle_error(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello\n")
    for call in (mirror.verify, mirror.list_images, lambda p: mirror.push(p, "127.0.0.1:1"),
                 lambda p: mirror.serve([p], listen="127.0.0.1:0"),
                 lambda p: mirror.extract(p, "alpine", tmp_path / "o.tar")):
        with pytest.raises(mirror.NotABundleError):
            call(text)
    assert issubclass(mirror.NotABundleError, mirror.BundleError)


@pytest.mark.parametrize("call", [
    lambda t: mirror.sync(t / "m.yaml", jobs=0),
    lambda t: mirror.sync(t / "m.yaml", split="lots"),
    lambda t: mirror.sync(t / "m.yaml", to="nohost"),
    lambda t: mirror.sync(t / "m.yaml", since=t / "b.tar", to="127.0.0.1:5000"),
    lambda t: mirror.push(t / "b.tar", "nohost"),
    lambda t: mirror.push(t / "b.tar", "127.0.0.1:5000", jobs=0),
    lambda t: mirror.push(t / "b.tar", "127.0.0.1:5000", chunk_size="1K"),
    lambda t: mirror.push([], "127.0.0.1:5000"),
    lambda t: mirror.serve([t / "b.tar"], listen="here"),
], ids=["jobs", "split", "to", "since-to", "push-to", "push-jobs", "chunk", "no-bundle", "listen"])
def test_bad_arguments_raise_usage_error(call, tmp_path):
    write_manifest(tmp_path / "m.yaml", "version: 1\nimages: [127.0.0.1:1/a:1]\n")
    with pytest.raises(mirror.UsageError):
        call(tmp_path)


def test_a_held_cache_lock_raises_lock_held_error(tmp_path):
    from mirror.cache import Store
    manifest = write_manifest(tmp_path / "m.yaml", "version: 1\nimages: [127.0.0.1:1/a:1]\n")
    with Store(tmp_path / "c").lock():
        with pytest.raises(mirror.LockHeldError):
            mirror.sync(manifest, output=tmp_path / "b.tar", cache=tmp_path / "c")


def test_a_failed_image_is_in_the_result_not_raised(registry, tmp_path):
    manifest = write_manifest(tmp_path / "m.yaml", f"version: 1\nimages: [{registry.host}/test/none:1]\n")
    result = mirror.sync(manifest, output=tmp_path / "b.tar", cache=tmp_path / "c")
    assert result.images[0].status == "failed" and "not found" in result.images[0].error.lower()
    with pytest.raises(mirror.MirrorError):
        mirror.sync(manifest, output=tmp_path / "b.tar", cache=tmp_path / "c", fail_fast=True)


# -- the package surface ---------------------------------------------------------------------------

def test_all_names_resolve():
    assert {"sync", "push", "verify", "list_images", "extract", "serve", "MirrorError", "SyncResult",
            "PushResult", "VerifyResult", "ImageInfo", "Server", "__version__"} <= set(mirror.__all__)
    for name in mirror.__all__:
        assert getattr(mirror, name) is not None, name
    ns: dict = {}
    exec("from mirror import *", ns)
    assert set(mirror.__all__) <= set(ns)
    with pytest.raises(AttributeError):
        mirror.no_such_thing        # noqa: B018
    importlib.import_module("mirror.server")   # the registry app's module (mirror/server.py) …
    assert callable(mirror.serve) and mirror.serve.__module__ == "mirror.api"   # … shadows no function


def _modules_after(code: str) -> dict:
    """Run `code` in a fresh interpreter; which heavy modules it loaded, and what it printed."""
    script = (f"import sys, json\n{code}\n"
              "print(json.dumps({m: m in sys.modules for m in ('aiohttp', 'yarl', 'tenacity')}))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.splitlines()[-1])


NONE_LOADED = {"aiohttp": False, "yarl": False, "tenacity": False}


def test_import_mirror_and_version_load_no_network_stack():
    assert _modules_after("import mirror; mirror.__version__; mirror.ImageInfo") == NONE_LOADED
    assert _modules_after("from mirror.cli import main\ntry:\n    main(['--version'])\n"
                          "except SystemExit as e:\n    assert e.code == 0") == NONE_LOADED


def test_verify_list_and_extract_load_no_network_stack(bundle, tmp_path):
    path = str(bundle[0])
    for argv in (["verify", path], ["list", path], ["list", path, "--json"],
                 ["extract", path, next(iter(bundle[1])), "-o", str(tmp_path / "x.tar")]):
        assert _modules_after(f"from mirror.cli import main\nassert main({argv!r}) == 0") == NONE_LOADED, argv
    assert _modules_after(f"import mirror\nassert mirror.verify({path!r}).ok\n"
                          f"assert len(mirror.list_images({path!r})) == 2") == NONE_LOADED
    assert _modules_after("import mirror; mirror.SyncResult")["aiohttp"]    # the lazy export works


# -- the README's example, run as written ----------------------------------------------------------

def _readme_python() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Python API"):text.index("## The bundle")]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 1
    return blocks[0]


def test_readme_example_runs_as_written(registry, make_registry, tmp_path, monkeypatch, capsys):
    _seed(registry, tmp_path)                 # writes tmp_path/mirror.yaml
    target = make_registry()
    code = _readme_python()
    assert code.count("registry.internal:5000") == 1
    monkeypatch.chdir(tmp_path)
    exec(compile(code.replace("registry.internal:5000", target.host), "README.md", "exec"), {})
    out, err = capsys.readouterr()
    assert err == ""
    assert "bundle.tar: ok: 2 images" in out and "images on http://127.0.0.1:" in out
    assert "not a bundle:" in out and "blobs uploaded to" in out
    assert sha256(inspect_raw(target.host, "mirror/test/base:1.0")) == \
        Bundle(tmp_path / "bundle.tar").entry(f"{registry.host}/test/base:1.0")["digest"]
