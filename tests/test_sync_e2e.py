"""End to end against a real distribution registry, with skopeo as the independent reader."""

from __future__ import annotations

import json

import pytest

from helpers import Bundle, run_cli, sha256, skopeo, write_manifest
from imagegen import seed
from registries import missing_tools, start_registry
from mirror.cache import Store

OCI_TYPES = ("application/vnd.oci.image.manifest.v1+json", "application/vnd.oci.image.index.v1+json")


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """One seeded registry for the whole module (seeding takes a few seconds)."""
    if missing_tools():
        pytest.fail(f"missing {missing_tools()}: apt-get install docker-registry skopeo")
    reg = start_registry(tmp_path_factory.mktemp("source"))
    try:
        reg.seeded = seed(reg.host)
        yield reg
    finally:
        reg.stop()


def mixed_manifest(host: str, extra: str = "", platforms: str = "[linux/amd64, linux/arm64]") -> str:
    return f"""version: 1
platforms: {platforms}
{extra}
images:
  - source: {host}/test/base
    tags: ["1.0"]
  - source: {host}/test/app-a:1.0
  - source: {host}/test/app-b:1.0
  - source: {host}/test/multi:1.0
  - source: {host}/test/dockerv2:1.0
  - source: {host}/test/dockerlist:1.0
  - source: {host}/test/raw:1.0
  - source: {host}/test/tags
    tags:
      semver: ">=1.2.0, <2.0.0"
"""


@pytest.fixture(scope="module")
def mixed(source, tmp_path_factory):
    """The mixed manifest synced once into a fresh cache; shared by the read-only checks below."""
    work = tmp_path_factory.mktemp("mixed")
    manifest = write_manifest(work / "mirror.yaml", mixed_manifest(source.host))
    bundle, report = work / "bundle.tar", work / "report.json"
    code = run_cli("sync", manifest, "-o", bundle, "--cache", work / "cache", "--report", report)[0]
    assert code == 0
    return {"work": work, "manifest": manifest, "bundle": Bundle(bundle), "path": bundle,
            "report": json.loads(report.read_text()), "cache": work / "cache"}


def test_every_blob_once_and_verified(mixed):
    b = mixed["bundle"]
    blob_names = [n for n in b.names if n.startswith("blobs/sha256/")]
    assert len(blob_names) == len(set(blob_names)), "a blob appears twice in the tar"
    for digest, data in b.blobs.items():
        assert sha256(data) == digest
    assert b.files["oci-layout"] == b'{"imageLayoutVersion":"1.0.0"}'
    # every blob referenced by every manifest in the bundle is present
    for entry in b.index["manifests"]:
        todo = [entry["digest"]]
        while todo:
            m = b.manifest(todo.pop())
            for child in m.get("manifests", []):
                assert child["digest"] in b.blobs
                todo.append(child["digest"])
            for d in ([m["config"]] if "config" in m else []) + m.get("layers", []):
                assert d["digest"] in b.blobs and len(b.blobs[d["digest"]]) == d["size"]


def test_digests_equal_the_registry(source, mixed):
    b, seeded, host = mixed["bundle"], source.seeded, source.host
    for key in ("test/base:1.0", "test/app-a:1.0", "test/app-b:1.0", "test/dockerv2:1.0", "test/raw:1.0",
                "test/tags:v1.2.0", "test/tags:v1.4.1"):
        assert b.entry(f"{host}/{key}")["digest"] == seeded[key]["digest"], key
    # semver ">=1.2.0, <2.0.0" keeps v1.2.0 and v1.4.1, drops v1.0.0, v2.0.0, the prerelease and non-versions
    assert {r for r in b.refs() if "/test/tags:" in r} == {f"{host}/test/tags:v1.2.0", f"{host}/test/tags:v1.4.1"}
    # shared base layers are stored once although three images use them
    base = seeded["test/app-a:1.0"]["base_layers"]
    assert all(d in b.blobs for d in base)


def test_platform_filter_rewrites_index(source, mixed):
    b, host = mixed["bundle"], source.host
    for key in ("test/multi:1.0", "test/dockerlist:1.0"):
        original = source.seeded[key]
        entry = b.entry(f"{host}/{key}")
        assert entry["digest"] != original["digest"]
        assert entry["annotations"]["io.imgmirror.source.digest"] == original["digest"]
        index = b.manifest(entry["digest"])
        assert index["annotations"]["io.imgmirror.source.digest"] == original["digest"]
        kept = {c["digest"] for c in index["manifests"]}
        for child in original["children"]:
            plat = child["platform"] or {}
            wanted = plat.get("architecture") in ("amd64", "arm64")
            if child["attestation"]:
                wanted = child["annotations"]["vnd.docker.reference.digest"] in {
                    c["digest"] for c in original["children"]
                    if (c["platform"] or {}).get("architecture") in ("amd64", "arm64")}
            assert (child["digest"] in kept) == wanted, child
            assert (child["digest"] in b.blobs) == wanted
        # the kept children's descriptors are copied exactly
        orig_children = {c["digest"]: c for c in json.loads(original["raw"])["manifests"]}
        for c in index["manifests"]:
            assert c == orig_children[c["digest"]]
    report = {i["reference"]: i for i in mixed["report"]["images"]}
    assert report[f"{host}/test/multi:1.0"]["platforms"] == ["linux/amd64", "linux/arm64"]


def test_skopeo_reads_every_oci_image(source, mixed):
    b = mixed["bundle"]
    for entry in b.index["manifests"]:
        ref = entry["annotations"]["org.opencontainers.image.ref.name"]
        assert entry["annotations"]["io.containerd.image.name"] == ref
        if entry["mediaType"] not in OCI_TYPES:
            # skopeo 1.x's OCI layout reader skips index.json entries with Docker media types
            # (containers/image oci/layout); those images are checked through manifest.json below.
            continue
        raw = skopeo("inspect", "--raw", f"oci-archive:{mixed['path']}:{ref}")
        assert sha256(raw) == entry["digest"], ref


def test_docker_load_manifest(source, mixed):
    b, host = mixed["bundle"], source.host
    by_tag = {e["RepoTags"][0]: e for e in b.docker_manifest}
    # every tagged image with linux/amd64 is there, once; docker load needs every layer present
    assert set(by_tag) == b.refs()
    for e in by_tag.values():
        assert e["Config"][len("blobs/sha256/"):] and e["Config"] in b.files
        assert all(layer in b.files for layer in e["Layers"])
    # skopeo's docker-archive reader (what `docker load` reads) agrees on config and layers
    dv2 = source.seeded["test/dockerv2:1.0"]
    out = json.loads(skopeo("inspect", "--raw", f"docker-archive:{mixed['path']}:{host}/test/dockerv2:1.0"))
    assert out["config"]["digest"] == dv2["config"]
    # the amd64 child of the multi-arch image is the one described
    multi = source.seeded["test/multi:1.0"]
    amd64 = [c for c in multi["children"] if (c["platform"] or {}).get("architecture") == "amd64"][0]
    assert by_tag[f"{host}/test/multi:1.0"]["Config"].endswith(amd64["config"].split(":")[1])


def test_deterministic_tar(mixed):
    b = mixed["bundle"]
    blob_names = [n for n in b.names if n.startswith("blobs/sha256/")]
    # largest first, ties by digest: the order the downloads start in
    expected = sorted(blob_names, key=lambda n: (-len(b.files[n]), n))
    assert b.names == ["oci-layout", "blobs", "blobs/sha256", *expected, "index.json", "manifest.json"]
    for m in b.members:
        assert (m.mtime, m.uid, m.gid, m.uname, m.gname) == (0, 0, 0, "", "")


def test_second_sync_downloads_nothing_and_is_identical(source, mixed, tmp_path):
    second, report = tmp_path / "again.tar", tmp_path / "report.json"
    mark = source.mark()
    code = run_cli("sync", mixed["manifest"], "-o", second, "--cache", mixed["cache"], "--report", report)[0]
    assert code == 0
    data = json.loads(report.read_text())
    assert data["totals"]["downloaded_bytes"] == 0
    assert all(i["new_bytes"] == 0 for i in data["images"])
    assert second.read_bytes() == mixed["path"].read_bytes()
    assert data["bundle"]["sha256"] == mixed["report"]["bundle"]["sha256"]
    # HEADs and the tag list only: no blob GET, no GET of a manifest already cached
    assert source.count("GET", "/blobs/", since=mark) == 0
    assert source.count("GET", "/manifests/", since=mark) == 0
    assert source.count("HEAD", "/manifests/", since=mark) == len(data["images"])


def test_keep_index_digest(source, tmp_path):
    host = source.host
    manifest = write_manifest(tmp_path / "m.yaml", f"""version: 1
keep_index_digest: true
platforms: [linux/arm64]
images:
  - source: {host}/test/multi:1.0
""")
    code = run_cli("sync", manifest, "-o", tmp_path / "b.tar", "--cache", tmp_path / "c")[0]
    assert code == 0
    b = Bundle(tmp_path / "b.tar")
    entry = b.entry(f"{host}/test/multi:1.0")
    original = source.seeded["test/multi:1.0"]
    assert entry["digest"] == original["digest"]
    assert b.blobs[entry["digest"]] == original["raw"]          # the original bytes, sparse
    assert "io.imgmirror.source.digest" not in entry["annotations"]
    present = {c["digest"] for c in original["children"] if c["digest"] in b.blobs}
    assert len(present) == 2    # arm64 and its attestation


def test_no_filter_keeps_index_bytes(source, tmp_path):
    host = source.host
    manifest = write_manifest(tmp_path / "m.yaml", f"""version: 1
images:
  - source: {host}/test/multi:1.0
  - source: {host}/test/dockerlist:1.0
""")
    assert run_cli("sync", manifest, "-o", tmp_path / "b.tar", "--cache", tmp_path / "c")[0] == 0
    b = Bundle(tmp_path / "b.tar")
    for key in ("test/multi:1.0", "test/dockerlist:1.0"):
        entry = b.entry(f"{host}/{key}")
        assert entry["digest"] == source.seeded[key]["digest"]
        assert all(c["digest"] in b.blobs for c in source.seeded[key]["children"])
    raw = skopeo("inspect", "--raw", f"oci-archive:{tmp_path / 'b.tar'}:{host}/test/multi:1.0")
    assert raw == source.seeded["test/multi:1.0"]["raw"]


def test_unmatched_platform_fails_that_image_only(source, tmp_path, capsys):
    host = source.host
    manifest = write_manifest(tmp_path / "m.yaml", f"""version: 1
images:
  - source: {host}/test/multi:1.0
    platforms: [linux/s390x]
  - source: {host}/test/base:1.0
""")
    code, _, err = run_cli("sync", manifest, "-o", tmp_path / "b.tar", "--cache", tmp_path / "c",
                           "--report", tmp_path / "r.json", capsys=capsys)
    assert code == 1
    assert "linux/s390x" in err and "linux/amd64, linux/arm/v7, linux/arm64" in err
    b = Bundle(tmp_path / "b.tar")
    assert b.refs() == {f"{host}/test/base:1.0"}
    report = json.loads((tmp_path / "r.json").read_text())
    failed = [i for i in report["images"] if i["status"] == "failed"]
    assert [i["reference"] for i in failed] == [f"{host}/test/multi:1.0"]
    assert report["totals"]["failed"] == 1


def test_dry_run_downloads_no_blob(source, tmp_path, capsys):
    manifest = write_manifest(tmp_path / "m.yaml", mixed_manifest(source.host))
    cache = tmp_path / "c"
    code, out, _ = run_cli("sync", manifest, "-o", tmp_path / "b.tar", "--cache", cache, "--dry-run",
                           capsys=capsys)
    assert code == 0
    assert not (tmp_path / "b.tar").exists()
    assert f"{source.host}/test/multi:1.0" in out and "to fetch" in out
    cached = {f"sha256:{p.name}" for p in (cache / "blobs" / "sha256").iterdir()}
    layers = set(source.seeded["test/base:1.0"]["layers"])
    assert not cached & layers          # manifests may be cached, layers never


def test_digest_and_pinned_sources(source, tmp_path):
    host, seeded = source.host, source.seeded
    d = seeded["test/base:1.0"]["digest"]
    manifest = write_manifest(tmp_path / "m.yaml", f"""version: 1
images:
  - source: {host}/test/app-a
    digests: ["{seeded['test/app-a:1.0']['digest']}"]
  - source: {host}/test/base:1.0@{d}
""")
    assert run_cli("sync", manifest, "-o", tmp_path / "b.tar", "--cache", tmp_path / "c")[0] == 0
    b = Bundle(tmp_path / "b.tar")
    by_digest = f"{host}/test/app-a@{seeded['test/app-a:1.0']['digest']}"
    assert b.refs() == {by_digest, f"{host}/test/base:1.0"}
    assert b.entry(f"{host}/test/base:1.0")["digest"] == d
    # by digest only: no tag, so not in docker load's manifest.json
    assert [e["RepoTags"] for e in b.docker_manifest] == [[f"{host}/test/base:1.0"]]
    raw = skopeo("inspect", "--raw", f"oci-archive:{tmp_path / 'b.tar'}:{by_digest}")
    assert sha256(raw) == seeded["test/app-a:1.0"]["digest"]


def test_directory_output(source, tmp_path):
    manifest = write_manifest(tmp_path / "m.yaml", f"""version: 1
images:
  - source: {source.host}/test/base:1.0
""")
    out = tmp_path / "layout"
    assert run_cli("sync", manifest, "-o", f"{out}/", "--cache", tmp_path / "c")[0] == 0
    assert (out / "oci-layout").is_file() and (out / "index.json").is_file()
    raw = skopeo("inspect", "--raw", f"oci:{out}:{source.host}/test/base:1.0")
    assert sha256(raw) == source.seeded["test/base:1.0"]["digest"]


def test_cache_lock_exit_3(source, tmp_path, capsys):
    manifest = write_manifest(tmp_path / "m.yaml", f"""version: 1
images:
  - source: {source.host}/test/base:1.0
""")
    store = Store(tmp_path / "c")
    with store.lock():
        code, _, err = run_cli("sync", manifest, "-o", tmp_path / "b.tar", "--cache", tmp_path / "c",
                               capsys=capsys)
    assert code == 3
    assert "in use by pid" in err and "--wait-lock" in err
    assert not (tmp_path / "b.tar").exists()
    # once released, the same run succeeds
    assert run_cli("sync", manifest, "-o", tmp_path / "b.tar", "--cache", tmp_path / "c")[0] == 0


def test_output_template_relative_to_manifest(source, tmp_path):
    manifest = write_manifest(tmp_path / "m.yaml", f"""version: 1
output: out/mirror-{{date}}.tar
cache: cache
images:
  - source: {source.host}/test/base:1.0
""")
    assert run_cli("sync", manifest)[0] == 0
    made = list((tmp_path / "out").iterdir())
    assert len(made) == 1 and made[0].name.startswith("mirror-2") and made[0].suffix == ".tar"
    assert (tmp_path / "cache" / "blobs" / "sha256").is_dir()
