"""imgmirror serve: bundles served as a read-only registry, read back by skopeo and by imgmirror."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from helpers import run_cli, sha256, skopeo, write_manifest
from imagegen import TAGS, inspect_raw
from mirror.errors import UsageError
from mirror.core.oci import OCI_CONFIG, OCI_INDEX, OCI_MANIFEST
from mirror.cli.serve import parse_listen
from mirror.server import load_catalog, parse_byte_range, start_server

KINDS = ["test/base:1.0", "test/app-a:1.0", "test/app-b:1.0", "test/multi:1.0", "test/dockerv2:1.0",
         "test/dockerlist:1.0", "test/raw:1.0"]
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))   # no proxies from the env


class ServeThread:
    """`start_server` in its own thread and event loop, like a remote registry."""

    def __init__(self, *paths):
        self.paths, self.port = paths, 0

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> ServeThread:
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self._thread.start()
        assert ready.wait(10), "serve did not start"
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def _run(self, ready) -> None:
        self._loop = asyncio.new_event_loop()
        self._loop.run_until_complete(self._serve(ready))
        self._loop.close()

    async def _serve(self, ready) -> None:
        self._stop = asyncio.Event()
        runner, self.port = await start_server(self.paths, "127.0.0.1", 0)
        ready.set()
        await self._stop.wait()
        await runner.cleanup()

    def http(self, method: str, path: str, headers=None, data=None):
        """(status, headers, body) of one request."""
        req = urllib.request.Request(f"http://{self.host}{path}", method=method, headers=headers or {},
                                     data=data)
        try:
            with _OPENER.open(req, timeout=10) as r:
                return r.status, r.headers, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.headers, e.read()


@pytest.fixture(scope="module")
def source(seeded_registry):
    return seeded_registry


@pytest.fixture(scope="module")
def served(source, tmp_path_factory):
    """A bundle tar of every kind plus a layout directory of test/tags and test/base again (the
    same digest in two bundles), both served."""
    work, host = tmp_path_factory.mktemp("serve"), source.registry.host
    lines = "".join(f"  - source: {host}/{k}\n" for k in KINDS)
    m1 = write_manifest(work / "a.yaml", f"version: 1\nimages:\n{lines}")
    m2 = write_manifest(work / "b.yaml", f"version: 1\nimages:\n  - {host}/test/base:1.0\n"
                                         f"  - source: {host}/test/tags\n    tags: {json.dumps(list(TAGS))}\n")
    assert run_cli("sync", m1, "-o", work / "a.tar", "--cache", work / "c")[0] == 0
    assert run_cli("sync", m2, "-o", f"{work}/b/", "--cache", work / "c")[0] == 0
    srv = ServeThread(work / "a.tar", work / "b").start()
    yield srv
    srv.stop()


def _error_code(body: bytes) -> str:
    return json.loads(body)["errors"][0]["code"]


def test_skopeo_copies_every_kind_with_its_digest(source, served, registry, tmp_path):
    images = source.images
    for key in KINDS:
        assert sha256(inspect_raw(served.host, key)) == images[key]["digest"], key
        skopeo("copy", "--all", "--preserve-digests", "--src-tls-verify=false", "--dest-tls-verify=false",
               f"docker://{served.host}/{key}", f"docker://{registry.host}/copy/{key}")
        assert sha256(inspect_raw(registry.host, f"copy/{key}")) == images[key]["digest"], key
    skopeo("copy", "--all", "--preserve-digests", "--src-tls-verify=false",
           f"docker://{served.host}/test/multi:1.0", f"oci:{tmp_path / 'oci'}:x")
    index = json.loads((tmp_path / "oci" / "index.json").read_text())
    assert [e["digest"] for e in index["manifests"]] == [images["test/multi:1.0"]["digest"]]


def test_manifests_by_tag_and_digest(source, served):
    status, headers, body = served.http("GET", "/v2/")
    assert (status, json.loads(body)) == (200, {})
    assert headers["Docker-Distribution-API-Version"] == "registry/2.0"
    for key in KINDS:
        info, repo = source.images[key], key.split(":")[0]
        for ref in (info["tag"], info["digest"]):
            status, headers, body = served.http("GET", f"/v2/{repo}/manifests/{ref}")
            assert (status, body) == (200, info["raw"])
            assert headers["Content-Type"] == info["media_type"]
            assert headers["Docker-Content-Digest"] == info["digest"]
            status, headers, body = served.http("HEAD", f"/v2/{repo}/manifests/{ref}")
            assert (status, body, int(headers["Content-Length"])) == (200, b"", len(info["raw"]))
            assert headers["Docker-Content-Digest"] == info["digest"]


def test_blobs_whole_and_ranges(source, served):
    layer = source.images["test/base:1.0"]["layers"][0]
    url = f"/v2/test/base/blobs/{layer}"
    status, headers, whole = served.http("GET", url)
    assert status == 200 and sha256(whole) == layer and headers["Docker-Content-Digest"] == layer
    size = len(whole)
    status, headers, body = served.http("HEAD", url)
    assert (status, body, int(headers["Content-Length"])) == (200, b"", size)
    for rng, first, last in (("bytes=5-20", 5, 20), ("bytes=7-", 7, size - 1), ("bytes=-10", size - 10, size - 1),
                             (f"bytes=3-{size + 100}", 3, size - 1)):
        status, headers, body = served.http("GET", url, {"Range": rng})
        assert (status, body) == (206, whole[first:last + 1]), rng
        assert headers["Content-Range"] == f"bytes {first}-{last}/{size}"
    status, headers, body = served.http("GET", url, {"Range": f"bytes={size}-"})
    assert status == 416 and headers["Content-Range"] == f"bytes */{size}"
    assert served.http("GET", url, {"Range": "bytes=0-1,5-6"})[2] == whole      # several: ignored
    # a blob is served only in the repositories whose images reach it
    own = source.images["test/app-a:1.0"]["layers"][-1]
    status, _, body = served.http("GET", f"/v2/test/base/blobs/{own}")
    assert status == 404 and _error_code(body) == "BLOB_UNKNOWN"
    assert served.http("GET", f"/v2/test/app-a/blobs/{own}")[0] == 200


def test_tags_and_catalog_pagination(served):
    def follow(path: str) -> tuple[list[str], int]:
        got, pages = [], 0
        while path:
            status, headers, body = served.http("GET", path)
            assert status == 200
            obj, pages = json.loads(body), pages + 1
            got += obj.get("tags", obj.get("repositories"))
            link = headers.get("Link")
            path = link.split(">")[0].lstrip("<") if link else None
            assert not link or link.endswith('; rel="next"')
        return got, pages

    tags, pages = follow("/v2/test/tags/tags/list?n=2")
    assert tags == sorted(TAGS) and pages == 4
    repos, _ = follow("/v2/_catalog?n=3")
    assert repos == sorted({k.split(":")[0] for k in KINDS} | {"test/tags"})
    status, _, body = served.http("GET", "/v2/test/tags/tags/list?last=v1.5.0-rc1")
    assert json.loads(body) == {"name": "test/tags", "tags": ["v2.0.0"]}


def test_writes_are_405_and_unknowns_404(source, served):
    digest = source.images["test/base:1.0"]["digest"]
    for method, path in (("PUT", "/v2/test/base/manifests/2.0"), ("POST", "/v2/test/base/blobs/uploads/"),
                         ("PATCH", "/v2/test/base/blobs/uploads/x"), ("DELETE", f"/v2/test/base/manifests/{digest}")):
        status, headers, body = served.http(method, path, data=b"{}" if method != "DELETE" else None)
        assert (status, _error_code(body)) == (405, "UNSUPPORTED"), (method, path)
        assert headers["Allow"] == "GET, HEAD"
    for path, code in (("/v2/nope/manifests/1.0", "NAME_UNKNOWN"), ("/v2/test/base/manifests/9.9", "MANIFEST_UNKNOWN"),
                       (f"/v2/test/base/manifests/{source.images['test/raw:1.0']['digest']}", "MANIFEST_UNKNOWN"),
                       ("/v2/nope/tags/list", "NAME_UNKNOWN"), ("/v2/test/base/blobs/sha256:00", "BLOB_UNKNOWN"),
                       ("/v2/test/base/blobs/..%2F..%2Foci-layout", "NOT_FOUND"), ("/oci-layout", "NOT_FOUND"),
                       ("/v2/../index.json", "NOT_FOUND")):
        status, _, body = served.http("GET", path)
        assert (status, _error_code(body)) == (404, code), path


def test_sync_from_serve_then_push(source, served, registry, tmp_path):
    lines = "".join(f"  - source: {served.host}/{k}\n" for k in KINDS)
    manifest = write_manifest(tmp_path / "m.yaml", f"version: 1\nimages:\n{lines}")
    assert run_cli("sync", manifest, "-o", tmp_path / "b.tar", "--cache", tmp_path / "c")[0] == 0
    assert run_cli("push", tmp_path / "b.tar", "--to", f"{registry.host}/pushed")[0] == 0
    assert run_cli("sync", manifest, "--to", f"{registry.host}/direct", "--cache", tmp_path / "c")[0] == 0
    for key in KINDS:
        for prefix in ("pushed", "direct"):
            assert sha256(inspect_raw(registry.host, f"{prefix}/{key}")) == source.images[key]["digest"], key


def _blob(layout: Path, data: bytes, media_type: str) -> dict:
    digest = sha256(data)
    (layout / "blobs" / "sha256" / digest.split(":")[1]).write_bytes(data)
    return {"mediaType": media_type, "digest": digest, "size": len(data)}


def _layout(path: Path, tag: str = "3.19", with_signature: bool = True) -> dict:
    """A hand-made layout: an image, and a signature whose subject is that image."""
    (path / "blobs" / "sha256").mkdir(parents=True)
    (path / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    config = _blob(path, json.dumps({"architecture": "amd64", "os": tag}).encode(), OCI_CONFIG)
    image = _blob(path, json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config,
                                    "layers": []}).encode(), OCI_MANIFEST)
    empty = _blob(path, b"{}", "application/vnd.oci.empty.v1+json")
    sig = _blob(path, json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": empty, "layers": [],
                                  "artifactType": "application/vnd.example.sig", "subject": image,
                                  "annotations": {"who": "me"}}).encode(), OCI_MANIFEST)
    name = "org.opencontainers.image.ref.name"
    entries = [{**image, "annotations": {name: f"docker.io/library/alpine:{tag}"}},
               {**image, "annotations": {name: "latest"}}]                 # a bare tag: not served
    if with_signature:
        entries.append({**sig, "annotations": {name: f"alpine@{sig['digest']}"}})
    (path / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": entries}))
    return {"image": image, "sig": sig}


def test_referrers_names_and_conflicts(tmp_path):
    made = _layout(tmp_path / "one")
    catalog = load_catalog([tmp_path / "one"])
    assert sorted(catalog.repos) == ["library/alpine"] and catalog.images == 2
    assert len(catalog.warnings) == 1 and "'latest'" in catalog.warnings[0]
    catalog.close()
    srv = ServeThread(tmp_path / "one").start()
    try:
        status, headers, body = srv.http("GET", f"/v2/library/alpine/referrers/{made['image']['digest']}")
        assert status == 200 and headers["Content-Type"] == OCI_INDEX
        [ref] = json.loads(body)["manifests"]
        assert ref == {**made["sig"], "artifactType": "application/vnd.example.sig", "annotations": {"who": "me"}}
        query = "?artifactType=application/other"
        status, headers, body = srv.http("GET", f"/v2/library/alpine/referrers/{made['image']['digest']}{query}")
        assert json.loads(body)["manifests"] == [] and headers["OCI-Filters-Applied"] == "artifactType"
        status, _, body = srv.http("GET", f"/v2/library/alpine/referrers/{made['sig']['digest']}")
        assert (status, json.loads(body)) == (200, {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []})
        assert srv.http("GET", "/v2/library/alpine/referrers/sha256:zz")[0] == 400
        assert srv.http("GET", "/v2/library/alpine/manifests/3.19")[2] == (
            tmp_path / "one" / "blobs" / "sha256" / made["image"]["digest"].split(":")[1]).read_bytes()
    finally:
        srv.stop()
    # the same tag naming another digest in a second bundle is refused, naming both
    _layout(tmp_path / "two", with_signature=False)
    load_catalog([tmp_path / "one", tmp_path / "two"]).close()          # same digests: fine
    _layout(tmp_path / "four", tag="3.20")
    index4 = json.loads((tmp_path / "four" / "index.json").read_text())
    index4["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"] = "alpine:3.19"
    (tmp_path / "four" / "index.json").write_text(json.dumps(index4))
    with pytest.raises(UsageError, match="library/alpine:3.19 is sha256:.* in .*one but sha256:.* in .*four"):
        load_catalog([tmp_path / "one", tmp_path / "four"])


@pytest.mark.parametrize("value, expected", [
    ("bytes=0-0", (0, 0)), ("bytes=10-", (10, 99)), ("bytes=-5", (95, 99)), ("bytes=-500", (0, 99)),
    ("bytes=90-200", (90, 99)), ("bytes=5-4", None), ("bytes=0-1,3-4", None), ("items=0-1", None),
    ("bytes=-", None), ("bytes=100-", ValueError), ("bytes=-0", ValueError)])
def test_parse_byte_range(value, expected):
    if expected is ValueError:
        with pytest.raises(ValueError):
            parse_byte_range(value, 100)
    else:
        assert parse_byte_range(value, 100) == expected


@pytest.mark.parametrize("text, expected", [
    ("127.0.0.1:5000", ("127.0.0.1", 5000)), ("[::1]:5001", ("::1", 5001)), ("5002", ("127.0.0.1", 5002)),
    ("0.0.0.0:80", ("0.0.0.0", 80)), ("localhost:0", ("localhost", 0)),
    (":5000", UsageError), ("host", UsageError), ("1.2.3.4:70000", UsageError)])
def test_parse_listen(text, expected):
    if expected is UsageError:
        with pytest.raises(UsageError):
            parse_listen(text)
    else:
        assert parse_listen(text) == expected


def test_cmd_serve_runs_until_interrupted(tmp_path):
    _layout(tmp_path / "l")
    script = ("import argparse, sys; from mirror.cli.serve import add_parser; p = argparse.ArgumentParser(); "
              "add_parser(p.add_subparsers()); a = p.parse_args(sys.argv[1:]); sys.exit(a.handler(a))")
    proc = subprocess.Popen([sys.executable, "-c", script, "serve", str(tmp_path / "l"), "--listen", "127.0.0.1:0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parent.parent)
    try:
        line = proc.stdout.readline()
        assert line.startswith("serving 2 images on http://127.0.0.1:"), line + proc.stderr.read()
        srv = ServeThread()
        srv.port = int(line.rsplit(":", 1)[1])
        assert srv.http("GET", "/v2/library/alpine/tags/list")[2] == b'{"name": "library/alpine", "tags": ["3.19"]}'
        os.kill(proc.pid, signal.SIGINT)
        assert proc.wait(10) == 0
        assert "not a full reference" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
