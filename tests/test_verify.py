"""`imgmirror verify` and `list`, and the bundle reader `push` uses.

Real bundles come from `imgmirror sync` against a real registry; damaged copies are made here,
one kind of damage each, and every one must be reported by name. Small synthetic tars (built
with tarfile and imagegen, no registry) cover the reader's refusals and its pread-based reads.
"""

from __future__ import annotations

import concurrent.futures
import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

import imagegen
from helpers import Bundle, run_cli, sha256, write_manifest
from mirror.bundle import reader as bundle_read
from mirror.bundle.reader import BundleReader, iter_tree, open_bundle
from mirror.errors import BundleError, DigestMismatchError, NotABundleError
from mirror.core.oci import Descriptor
from mirror.bundle.listing import list_bundle
from mirror.bundle.verify import verify_bundle

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"


# ---------------------------------------------------------------------------------------------
# Real bundles, made by sync
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def made(seeded_registry, tmp_path_factory):
    """The mixed set synced once into a tar and once into a layout directory; read-only."""
    host = seeded_registry.registry.host
    work = tmp_path_factory.mktemp("verify")
    manifest = write_manifest(work / "mirror.yaml", f"""version: 1
platforms: [linux/amd64, linux/arm64]
images:
  - source: {host}/test/base:1.0
  - source: {host}/test/app-a:1.0
  - source: {host}/test/multi:1.0
  - source: {host}/test/dockerv2:1.0
  - source: {host}/test/dockerlist:1.0
  - source: {host}/test/raw:1.0
""")
    tar, layout = work / "bundle.tar", work / "layout"
    assert run_cli("sync", manifest, "-o", tar, "--cache", work / "cache")[0] == 0
    assert run_cli("sync", manifest, "-o", f"{layout}/", "--cache", work / "cache")[0] == 0
    return {"host": host, "seeded": seeded_registry.images, "tar": tar, "dir": layout,
            "bundle": Bundle(tar)}


def _verify(path, capsys) -> tuple[int, str]:
    code, out, err = run_cli("verify", path, capsys=capsys)
    return code, out + err


def test_good_tar_verifies_and_prints_its_sha256(made, capsys):
    code, out = _verify(made["tar"], capsys)
    assert code == 0, out
    b = made["bundle"]
    assert "problem" not in out and ": ok: 6 images" in out
    assert f"{len(b.blobs)} blobs" in out
    assert sha256(made["tar"].read_bytes()) in out


def test_good_directory_verifies(made, capsys):
    code, out = _verify(made["dir"], capsys)
    assert code == 0, out
    assert ": ok: 6 images" in out and "sha256:" not in out.split("blobs")[-1]


def test_verify_from_stdin(made, capsys, monkeypatch):
    with open(made["tar"], "rb") as fh:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(fh))
        code, out = _verify("-", capsys)
    assert code == 0, out
    assert "<stdin>: ok" in out and sha256(made["tar"].read_bytes()) in out


def test_verify_from_a_pipe(made):
    """A tar that is still arriving (`cat b.tar | imgmirror verify -`): one pass, no seeking."""
    code = ("import sys; from mirror.bundle.verify import verify_bundle; "
            "r = verify_bundle('<stdin>', stream=sys.stdin.buffer); print(r.ok, r.sha256, r.problems)")
    out = subprocess.run([sys.executable, "-c", code], input=made["tar"].read_bytes(),
                         capture_output=True, timeout=60, check=True).stdout.decode()
    assert out.split()[:2] == ["True", sha256(made["tar"].read_bytes())], out


def test_result_object(made):
    res = verify_bundle(made["tar"])
    b = made["bundle"]
    assert res.ok and res.kind == "tar" and res.images == 6
    assert res.blobs == len(b.blobs) and res.bytes == sum(len(v) for v in b.blobs.values())
    assert res.size == made["tar"].stat().st_size
    assert res.sha256 == sha256(made["tar"].read_bytes())
    # docker load's manifest.json is there; the filtered indexes are complete, so no warnings
    assert res.warnings == []


# --- damage, one kind at a time -----------------------------------------------------------------

def _members(path: Path) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    with tarfile.open(path) as tf:
        return [(m, tf.extractfile(m).read() if m.isfile() else None) for m in tf]


def _write(path: Path, members) -> None:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        for m, data in members:
            tf.addfile(m, io.BytesIO(data) if data is not None else None)


def _info(name: str, data: bytes = b"", **kw) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.size = len(data)
    for k, v in kw.items():
        setattr(ti, k, v)
    return ti


def _base_layer(made) -> str:
    return made["seeded"]["test/base:1.0"]["layers"][0]


def _flip_layer(made, dst):
    digest = _base_layer(made)
    shutil.copy(made["tar"], dst)
    with tarfile.open(dst) as tf:
        m = tf.getmember(f"blobs/sha256/{digest[7:]}")
    with open(dst, "r+b") as fh:
        fh.seek(m.offset_data + m.size // 2)
        byte = fh.read(1)
        fh.seek(-1, os.SEEK_CUR)
        fh.write(bytes([byte[0] ^ 0x01]))
    return 1, [f"blobs/sha256/{digest[7:]}: content has digest",
               f"it is a layer of {made['host']}/test/"]


def _delete_layer(made, dst):
    digest = _base_layer(made)
    _write(dst, [(m, d) for m, d in _members(made["tar"]) if m.name != f"blobs/sha256/{digest[7:]}"])
    return 1, [f"layer {digest} is not in the bundle", f"Layers blobs/sha256/{digest[7:]} is not in the bundle"]


def _truncate(made, dst):
    with tarfile.open(made["tar"]) as tf:
        first = next(m for m in tf if m.name.startswith("blobs/sha256/"))   # the largest blob
    data = made["tar"].read_bytes()
    dst.write_bytes(data[:first.offset_data + first.size // 2])
    return 1, [f"{first.name}: the tar ends inside this entry", "index.json: missing"]


def _cut_between_entries(made, dst):
    with tarfile.open(made["tar"]) as tf:
        index = tf.getmember("index.json")
    dst.write_bytes(made["tar"].read_bytes()[:index.offset])
    return 1, ["the tar has no end-of-archive marker after 'blobs/sha256/", "index.json: missing"]


def _duplicate_entry(made, dst):
    members = _members(made["tar"])
    _write(dst, [*members, members[3]])
    return 1, [f"{members[3][0].name}: appears twice in the tar"]


def _evil_entry(made, dst):
    members = _members(made["tar"])
    _write(dst, [*members[:3], (_info("../evil", b"owned"), b"owned"), *members[3:]])
    return 1, ["../evil: unsafe entry (path leaves the layout with ..)"]


def _symlink(made, dst):
    link = _info("blobs/sha256/innocent", type=tarfile.SYMTYPE, linkname="/etc/passwd")
    _write(dst, [*_members(made["tar"]), (link, None)])
    return 1, ["blobs/sha256/innocent: unsafe entry (symbolic link to '/etc/passwd')"]


def _bad_index_json(made, dst):
    _write(dst, [(_info("index.json", b"{not json"), b"{not json") if m.name == "index.json" else (m, d)
                 for m, d in _members(made["tar"])])
    return 1, ["index.json is not valid JSON"]


def _missing_config(made, dst):
    """A manifest for base:1.0 whose config is not in the bundle, put in index.json."""
    ref = f"{made['host']}/test/base:1.0"
    old = made["bundle"].entry(ref)
    manifest = json.loads(made["bundle"].blobs[old["digest"]])
    ghost = sha256(b"a config nobody wrote")
    manifest["config"]["digest"] = ghost
    raw = json.dumps(manifest).encode()
    index = json.loads(made["bundle"].files["index.json"])     # a copy: the fixture is shared
    for e in index["manifests"]:
        if e["digest"] == old["digest"]:
            e["digest"], e["size"] = sha256(raw), len(raw)
    index_raw = json.dumps(index).encode()
    out = []
    for m, d in _members(made["tar"]):
        if m.name == "index.json":
            out.append((_info(f"blobs/sha256/{sha256(raw)[7:]}", raw), raw))
            m, d = _info("index.json", index_raw), index_raw
        out.append((m, d))
    _write(dst, out)
    return 1, [f"{ref}: config {ghost} is not in the bundle"]


def _wrong_size(made, dst):
    index = json.loads(made["bundle"].files["index.json"])
    entry = index["manifests"][0]
    entry["size"] += 1
    raw = json.dumps(index).encode()
    _write(dst, [(_info("index.json", raw), raw) if m.name == "index.json" else (m, d)
                 for m, d in _members(made["tar"])])
    ref = entry["annotations"]["org.opencontainers.image.ref.name"]
    return 1, [f"{ref}: manifest {entry['digest']} has {entry['size'] - 1} bytes, its descriptor says "
               f"{entry['size']}"]


def _damaged_header(made, dst):
    """A flipped byte in index.json's header: tar readers silently stop there."""
    shutil.copy(made["tar"], dst)
    with tarfile.open(dst) as tf:
        m = tf.getmember("index.json")
    with open(dst, "r+b") as fh:
        fh.seek(m.offset + 1)
        fh.write(b"\xff")
    return 1, [f"invalid tar header at byte {m.offset}", "index.json: missing"]


DAMAGE = [_flip_layer, _delete_layer, _truncate, _cut_between_entries, _duplicate_entry, _evil_entry, _symlink, _bad_index_json,
          _missing_config, _wrong_size, _damaged_header]


def _snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns,
                                       hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "")
            for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("damage", DAMAGE, ids=lambda f: f.__name__.strip("_"))
def test_damage_is_reported_by_name(made, damage, tmp_path, capsys, monkeypatch):
    dst = tmp_path / "damaged.tar"
    expected_code, needles = damage(made, dst)
    monkeypatch.chdir(tmp_path)         # anything verify wrote would show up in the snapshot
    before = _snapshot(tmp_path)
    code, out = _verify(dst, capsys)
    assert code == expected_code, out
    for needle in needles:
        assert needle in out, f"{needle!r} not in:\n{out}"
    assert "problem" in out and ": ok:" not in out
    assert _snapshot(tmp_path) == before, "verify wrote something"


def test_damaged_directory(made, tmp_path, capsys):
    layout = tmp_path / "layout"
    shutil.copytree(made["dir"], layout)
    digest = _base_layer(made)
    (layout / "blobs" / "sha256" / digest[7:]).unlink()
    (layout / "blobs" / "sha256" / "link").symlink_to("/etc/passwd")
    before = _snapshot(layout)
    code, out = _verify(layout, capsys)
    assert code == 1
    assert f"layer {digest} is not in the bundle" in out
    assert "blobs/sha256/link: unsafe entry (symbolic link to '/etc/passwd')" in out
    assert _snapshot(layout) == before
    with pytest.raises(BundleError, match="unsafe entry 'blobs/sha256/link'"):
        open_bundle(layout)


def test_sparse_index_is_a_warning(seeded_registry, tmp_path, capsys):
    """keep_index_digest keeps the registry's index with children left out: legal, and said."""
    host = seeded_registry.registry.host
    manifest = write_manifest(tmp_path / "m.yaml", f"""version: 1
keep_index_digest: true
platforms: [linux/arm64]
images:
  - source: {host}/test/multi:1.0
""")
    assert run_cli("sync", manifest, "-o", tmp_path / "b.tar", "--cache", tmp_path / "c")[0] == 0
    code, out = _verify(tmp_path / "b.tar", capsys)
    assert code == 0, out
    assert "is sparse: 4 of its 6 manifests are not in the bundle" in out


@pytest.mark.parametrize("command", ["verify", "list"])
def test_not_a_bundle_exit_2(command, tmp_path, capsys):
    text = write_manifest(tmp_path / "m.yaml", "version: 1\n")
    other = tmp_path / "other.tar"
    with tarfile.open(other, "w") as tf:
        tf.addfile(_info("hello.txt", b"hi"), io.BytesIO(b"hi"))
    gz = tmp_path / "b.tar.gz"
    gz.write_bytes(gzip.compress(other.read_bytes()))
    no_index = tmp_path / "no-index.tar"
    _write(no_index, [(_info("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'), b'{"imageLayoutVersion":"1.0.0"}')])
    cases = {text: "not a tar archive", other: "no oci-layout or index.json", gz: "gzip-compressed",
             no_index: "no index.json",
             tmp_path / "missing.tar": "no such file or directory", tmp_path: "no oci-layout or index.json"}
    for path, needle in cases.items():
        code, out, err = run_cli(command, path, capsys=capsys)
        assert code == 2, (path, out, err)
        assert needle in err, (path, err)
        if "missing" not in str(path):
            assert "not an imgmirror/OCI bundle" in err and "make one with `imgmirror sync`" in err


# --- list -------------------------------------------------------------------------------------

def test_list(made, capsys):
    host, seeded, b = made["host"], made["seeded"], made["bundle"]
    images = {i["reference"]: i for i in list_bundle(made["tar"])}
    assert set(images) == b.refs()
    assert images == {i["reference"]: i for i in list_bundle(made["dir"])}
    for ref, i in images.items():
        assert i["digest"] == b.entry(ref)["digest"] and i["media_type"] == b.entry(ref)["mediaType"]
    assert images[f"{host}/test/base:1.0"]["platforms"] == ["linux/amd64"]
    assert images[f"{host}/test/dockerv2:1.0"]["platforms"] == ["linux/amd64"]
    for key in ("test/multi:1.0", "test/dockerlist:1.0"):
        i = images[f"{host}/{key}"]
        assert i["platforms"] == ["linux/amd64", "linux/arm64"]
        assert i["source_digest"] == seeded[key]["digest"]
    # size: the manifest, config and layers, each once
    base = seeded["test/base:1.0"]
    expected = sum(len(b.blobs[d]) for d in {base["digest"], base["config"], *base["layers"]})
    assert images[f"{host}/test/base:1.0"]["size"] == expected

    code, out, _ = run_cli("list", made["tar"], "--json", capsys=capsys)
    assert code == 0 and json.loads(out) == list_bundle(made["tar"])
    code, out, _ = run_cli("list", made["tar"], capsys=capsys)
    assert code == 0 and f"{host}/test/multi:1.0\n" in out and "platforms: linux/amd64, linux/arm64" in out


# ---------------------------------------------------------------------------------------------
# BundleReader on its own
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["tar", "dir"])
def test_reader_blobs_equal_the_bundle(made, kind):
    b = made["bundle"]
    with open_bundle(made[kind]) as r:
        assert r.kind == kind
        assert r.digests() == sorted(b.blobs)
        assert [ref for ref, _ in r.images] == [e["annotations"]["org.opencontainers.image.ref.name"]
                                                 for e in b.index["manifests"]]
        for digest, data in b.blobs.items():
            assert r.has(digest) and r.size(digest) == len(data)
            with r.open_blob(digest) as f:
                assert f.read() == data
                f.seek(len(data) // 3)
                assert f.read(10) == data[len(data) // 3:][:10]
        manifest = b.entry(f"{made['host']}/test/base:1.0")["digest"]
        assert r.read(manifest) == b.blobs[manifest]
        assert not r.has(sha256(b"nothing")) and r.manifest_json_raw == b.files["manifest.json"]
        with pytest.raises(BundleError, match="not in the bundle"):
            r.size(sha256(b"nothing"))


def test_reader_offsets_point_into_the_tar(made):
    data = made["tar"].read_bytes()
    with open_bundle(made["tar"]) as r:
        for digest in r.digests():
            offset, size = r._blobs[digest]
            assert sha256(data[offset:offset + size]) == digest


def test_concurrent_reads_from_threads(made):
    b = made["bundle"]

    def read_in_small_pieces(digest):
        h = hashlib.sha256()
        with r.open_blob(digest) as f:
            while chunk := f.read(333):     # many interleaved preads on one descriptor
                h.update(chunk)
        return "sha256:" + h.hexdigest()

    with open_bundle(made["tar"]) as r, concurrent.futures.ThreadPoolExecutor(8) as pool:
        work = sorted(b.blobs) * 4
        assert list(pool.map(read_in_small_pieces, work)) == work


def test_walk_multi_arch(made):
    host, b = made["host"], made["bundle"]
    with open_bundle(made["tar"]) as r:
        root = dict((ref, d) for ref, d in r.images)[f"{host}/test/multi:1.0"]
        walked = [d.digest for d in r.walk(root)]
    assert walked[0] == root.digest and len(walked) == len(set(walked))
    index = b.manifest(root.digest)
    expected = {root.digest}
    for child in index["manifests"]:
        m = b.manifest(child["digest"])
        expected |= {child["digest"], m["config"]["digest"], *(x["digest"] for x in m["layers"])}
    assert set(walked) == expected
    assert all(d in b.blobs for d in walked)


def test_read_verifies_and_is_bounded(made, tmp_path, monkeypatch):
    b = made["bundle"]
    digest = b.entry(f"{made['host']}/test/base:1.0")["digest"]
    damaged = tmp_path / "d.tar"
    shutil.copy(made["tar"], damaged)
    with tarfile.open(damaged) as tf:
        m = tf.getmember(f"blobs/sha256/{digest[7:]}")
    with open(damaged, "r+b") as fh:
        fh.seek(m.offset_data + 5)
        fh.write(b"X")
    with open_bundle(damaged) as r, pytest.raises(DigestMismatchError):
        r.read(digest)
    monkeypatch.setattr(bundle_read, "MAX_READ", 100)
    with open_bundle(made["tar"]) as r, pytest.raises(BundleError, match="never over"):
        r.read(digest)


# --- synthetic tars: refusals ---------------------------------------------------------------

def _synthetic(path: Path, extra=()) -> Path:
    """A real little bundle from imagegen (no registry), tarred, with `extra` entries added."""
    layout = imagegen.write_layout(path.with_suffix(".d"), imagegen.standard_set()["test/multi:1.0"],
                                   ref_name="example.org/multi:1.0")
    members = [(_info("oci-layout", (layout / "oci-layout").read_bytes()), (layout / "oci-layout").read_bytes())]
    for f in sorted((layout / "blobs" / "sha256").iterdir()):
        members.append((_info(f"blobs/sha256/{f.name}", f.read_bytes()), f.read_bytes()))
    members += list(extra)
    members.append((_info("index.json", (layout / "index.json").read_bytes()), (layout / "index.json").read_bytes()))
    _write(path, members)
    return path


def test_synthetic_bundle_reads_and_verifies(tmp_path):
    path = _synthetic(tmp_path / "s.tar")
    res = verify_bundle(path)
    assert res.ok, res.problems
    assert res.warnings == ["no manifest.json: classic `docker load` cannot read this bundle"]
    with open_bundle(path) as r:
        (ref, root), = r.images
        assert ref == "example.org/multi:1.0"
        assert all(r.has(d.digest) for d in r.walk(root))
    (listed,) = list_bundle(path)
    assert listed["platforms"] == ["linux/amd64", "linux/arm/v7", "linux/arm64"]


@pytest.mark.parametrize("entry, why", [
    (_info("../evil", b"x"), "path leaves the layout"),
    (_info("/etc/cron.d/evil", b"x"), "absolute path"),
    (_info("blobs/sha256/../../../evil", b"x"), "path leaves the layout"),
    (_info("blobs/link", type=tarfile.SYMTYPE, linkname="/etc/passwd"), "symbolic link"),
    (_info("blobs/hard", type=tarfile.LNKTYPE, linkname="oci-layout"), "hard link"),
    (_info("dev/sda", type=tarfile.BLKTYPE), "device or fifo"),
    (_info("pipe", type=tarfile.FIFOTYPE), "device or fifo"),
])
def test_reader_refuses_unsafe_entries(tmp_path, entry, why):
    data = b"x" if entry.size else None
    path = _synthetic(tmp_path / "u.tar", [(entry, data)])
    with pytest.raises(BundleError, match="unsafe entry") as info:
        open_bundle(path)
    assert entry.name in str(info.value) and why in str(info.value)
    assert info.value.exit_code == 1
    problems = verify_bundle(path).problems
    assert len(problems) == 1 and problems[0].startswith(f"{entry.name}: unsafe entry")


@pytest.mark.parametrize("first", [
    _info("oci-layout", b"{}"),                                   # a file, then the same file
    _info("oci-layout", type=tarfile.DIRTYPE),                    # a directory, then a file
])
def test_reader_and_verify_agree_on_a_name_twice(tmp_path, first):
    """Both judge entries with tarscan.members: what the reader refuses, verify names."""
    path = _synthetic(tmp_path / "twice.tar")
    _write(path, [(first, b"{}" if first.isreg() else None), *_members(path)])
    with pytest.raises(BundleError, match="entry 'oci-layout' appears twice"):
        open_bundle(path)
    problems = verify_bundle(path).problems
    assert "oci-layout: appears twice in the tar (readers disagree on which counts)" in problems


def test_reader_and_verify_name_a_cut_between_entries_alike(tmp_path):
    path = _synthetic(tmp_path / "c.tar")
    with tarfile.open(path) as tf:
        index = tf.getmember("index.json")
    cut = tmp_path / "cut.tar"
    cut.write_bytes(path.read_bytes()[:index.offset])
    with pytest.raises(BundleError, match="no end-of-archive marker after 'blobs/sha256/.*': truncated"):
        open_bundle(cut)
    assert any(p.startswith("the tar has no end-of-archive marker after 'blobs/sha256/")
               and p.endswith("truncated after that entry") for p in verify_bundle(cut).problems)


def test_reader_refuses_truncated_and_oversized(tmp_path, monkeypatch):
    path = _synthetic(tmp_path / "t.tar")
    data = path.read_bytes()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[:len(data) // 2])
    with pytest.raises(BundleError, match="truncated"):
        open_bundle(cut)
    monkeypatch.setitem(bundle_read.META_LIMITS, "index.json", 100)
    with pytest.raises(BundleError, match="index.json is .* bytes, over"):
        open_bundle(path)


@pytest.mark.parametrize("content, needle", [
    (b"", "not a tar archive"),
    (bytes(10240), "no oci-layout or index.json"),    # an empty tar
    (b"version: 1\n", "not a tar archive"),
    (gzip.compress(b"x" * 100), "gzip-compressed"),
])
def test_reader_not_a_bundle(tmp_path, content, needle):
    path = tmp_path / "x"
    path.write_bytes(content)
    with pytest.raises(NotABundleError, match=needle) as info:
        open_bundle(path)
    assert info.value.exit_code == 2 and "make one with `imgmirror sync`" in str(info.value)


class _Fake:
    """A source whose read() does not verify digests, so loops can be built."""

    def __init__(self, docs: dict):
        self.docs = docs

    def has(self, digest):
        return digest in self.docs

    def read(self, digest):
        return self.docs[digest]

    def size(self, digest):
        return 1          # what the descriptors below say: only loops and depth are under test


def _index(children) -> bytes:
    return json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_INDEX, "digest": c, "size": 1} for c in children]}).encode()


def test_walk_guards_loops_and_depth():
    a, b = sha256(b"a"), sha256(b"b")
    loop = _Fake({a: _index([b]), b: _index([a])})
    with pytest.raises(BundleError, match="refers to itself"):
        list(iter_tree(loop, Descriptor(OCI_INDEX, a, 1)))
    chain = [sha256(str(i).encode()) for i in range(20)]
    deep = _Fake({d: _index([chain[i + 1]]) for i, d in enumerate(chain[:-1])})
    with pytest.raises(BundleError, match="nested more than"):
        list(iter_tree(deep, Descriptor(OCI_INDEX, chain[0], 1)))
    errors = []
    list(iter_tree(deep, Descriptor(OCI_INDEX, chain[0], 1), lambda d, m: errors.append(m)))
    assert len(errors) == 1


def test_reader_is_a_bundle_reader_for_push(made):
    """What a Source (mirror/core/content.py) offers: has, size, open_blob (seekable), read."""
    with open_bundle(made["tar"]) as r:
        assert isinstance(r, BundleReader)
        digest = _base_layer(made)
        f = r.open_blob(digest)
        f.seek(100)
        assert f.tell() == 100 and f.read(r.size(digest)) == made["bundle"].blobs[digest][100:]
        f.close()
        open_again = r.open_blob(digest)
    with pytest.raises(ValueError):     # the reader is closed: no read from a reused descriptor
        open_again.read(10)
