"""Split bundles (`sync --split SIZE`): NAME.tar.001, .002, … and NAME.tar.sha256sums.

The parts are the bytes of the one tar cut into pieces: the writer is checked against the
unsplit tar byte for byte (also after rolling back across part boundaries), `sha256sum -c`
accepts the sums file, and verify, list and push read the parts as one bundle, naming a missing
or damaged part.
"""

from __future__ import annotations

import json

import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from helpers import run_cli, sha256, write_manifest
from imagegen import inspect_raw
from mirror.bundle.writer import BundleContent, TarWriter, write_tar
from mirror.bundle.reader import open_bundle
from mirror.errors import BundleError, DigestMismatchError
from mirror.cache import Store
from mirror.bundle.listing import list_bundle
from mirror.bundle.verify import verify_bundle

BLOB = bytes(range(256)) * 4099          # ~1 MiB, not a multiple of 512
OTHER = b"other blob" * 1000


def _parts(directory: Path, name: str) -> list[Path]:
    return sorted(directory.glob(f"{name}.[0-9][0-9][0-9]"))


def _joined(directory: Path, name: str) -> bytes:
    return b"".join(p.read_bytes() for p in _parts(directory, name))


def _sha256sum_ok(directory: Path, name: str) -> None:
    proc = subprocess.run(["sha256sum", "-c", f"{name}.sha256sums"], cwd=directory,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count(": OK") == len(_parts(directory, name))


def _store(tmp_path: Path) -> tuple[Store, BundleContent]:
    store = Store(tmp_path / "cache")
    store.put(sha256(BLOB), BLOB)
    store.put(sha256(OTHER), OTHER)
    return store, BundleContent(blobs={sha256(BLOB): len(BLOB), sha256(OTHER): len(OTHER)})


@pytest.mark.parametrize("split", [5000, 2048, 64 << 10, 10 << 20])
def test_split_parts_are_the_tar_cut_into_pieces(tmp_path, split):
    store, content = _store(tmp_path)
    whole = write_tar(tmp_path / "whole.tar", store, content)
    out = tmp_path / "out"
    writer = TarWriter(out / "b.tar", split=split)
    try:
        for digest in (sha256(BLOB), sha256(OTHER)):
            writer.add_blob(store, digest, verify=True)
        assert writer.finish(content) == whole          # (size, sha256) of the whole tar
    finally:
        writer.abort()                                   # after finish: removes nothing
    data = (tmp_path / "whole.tar").read_bytes()
    parts = _parts(out, "b.tar")
    assert _joined(out, "b.tar") == data
    assert len(parts) == -(-len(data) // split)
    assert all(p.stat().st_size == split for p in parts[:-1]) and parts[-1].stat().st_size <= split
    assert sorted(p.name for p in out.iterdir()) == sorted([p.name for p in parts] + ["b.tar.sha256sums"])
    assert writer.parts == [{"path": str(p), "size": p.stat().st_size, "sha256": sha256(p.read_bytes())}
                            for p in parts]
    _sha256sum_ok(out, "b.tar")


def test_without_split_nothing_changes(tmp_path):
    store, content = _store(tmp_path)
    write_tar(tmp_path / "a.tar", store, content)
    writer = TarWriter(tmp_path / "out" / "b.tar")
    for digest in (sha256(BLOB), sha256(OTHER)):
        writer.add_blob(store, digest, verify=True)
    writer.finish(content)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["b.tar"]
    assert (tmp_path / "out" / "b.tar").read_bytes() == (tmp_path / "a.tar").read_bytes()
    assert writer.parts == []


def test_a_new_split_set_replaces_a_longer_older_one(tmp_path):
    store, content = _store(tmp_path)
    out = tmp_path / "out"
    for split in (5000, 400_000):
        w = TarWriter(out / "b.tar", split=split)
        for digest in (sha256(BLOB), sha256(OTHER)):
            w.add_blob(store, digest, verify=True)
        w.finish(content)
    assert len(_parts(out, "b.tar")) == 3           # not the 200-odd of the first set
    _sha256sum_ok(out, "b.tar")
    assert verify_bundle(out / "b.tar").ok


def test_abort_removes_every_part(tmp_path):
    store, _ = _store(tmp_path)
    writer = TarWriter(tmp_path / "out" / "b.tar", split=5000)
    writer.add_blob(store, sha256(BLOB), verify=True)
    assert len(list((tmp_path / "out").iterdir())) > 100
    writer.abort()
    assert list((tmp_path / "out").iterdir()) == []


def _feed(blob_writer, chunks, *, reset_after=None, fail=False):
    """Drive a BlobWriter from another thread, as a download would (see test_bundle_writer)."""
    def run():
        try:
            for i, chunk in enumerate(chunks):
                time.sleep(0.003)
                blob_writer.write(chunk)
                if reset_after is not None and i == reset_after:
                    blob_writer.reset()
                    for again in chunks:
                        time.sleep(0.003)
                        blob_writer.write(again)
                    break
            if fail:
                raise DigestMismatchError("injected")
            blob_writer.commit()
        except DigestMismatchError:
            pass
        finally:
            blob_writer.abort()
    t = threading.Thread(target=run)
    t.start()
    return t


def _following(tmp_path: Path, name: str, split: int | None, **follow) -> tuple[bytes, bool]:
    """A tar where BLOB arrives through a followed download, then OTHER from the store."""
    store = Store(tmp_path / name / "cache")
    store.put(sha256(OTHER), OTHER)
    content = BundleContent(blobs={sha256(BLOB): len(BLOB), sha256(OTHER): len(OTHER)})
    out = tmp_path / name / "out"
    writer = TarWriter(out / "b.tar", split=split)
    bw = store.begin(sha256(BLOB), len(BLOB))
    thread = _feed(bw, [BLOB[i:i + 100_000] for i in range(0, len(BLOB), 100_000)], **follow)
    ok = writer.add_following(bw.follow())
    thread.join()
    writer.add_blob(store, sha256(OTHER), verify=True)
    size, sha = writer.finish(content)
    data = _joined(out, "b.tar") if split else (out / "b.tar").read_bytes()
    assert (size, sha) == (len(data), sha256(data))
    if split:
        _sha256sum_ok(out, "b.tar")
        assert not list(out.glob(".*"))                 # no temporary part left behind
    return data, ok


@pytest.mark.parametrize("split", [2048, 5000, 300_000])
@pytest.mark.parametrize("follow", [{"fail": True}, {"reset_after": 4}], ids=["failed", "restarted"])
def test_rollback_across_part_boundaries(tmp_path, split, follow):
    """A download that fails (or starts over) after its bytes filled many parts: the tar is cut
    back into an earlier part (2048 is exactly where the blob begins), and the parts written
    afterwards are still exactly the unsplit tar's bytes, with right sums."""
    plain, ok_plain = _following(tmp_path, "plain", None, **follow)
    parts, ok = _following(tmp_path, "split", split, **follow)
    assert ok == ok_plain == ("fail" not in follow)
    assert parts == plain
    assert (sha256(BLOB)[7:] in plain.decode("latin-1")) == ok


def test_following_a_blob_caught_between_rename_and_commit(tmp_path):
    """commit() renames the temp file, then announces "committed": a writer that looks in
    between must wait for the announcement, not leave the blob out (seen as a flaky sync)."""
    store = Store(tmp_path / "cache")
    bw = store.begin(sha256(BLOB), len(BLOB))
    bw.write(BLOB)
    bw._fh.close()
    os.replace(bw.tmp, bw.final)                       # the first half of commit()
    later = threading.Timer(0.2, lambda: bw._announce(state="committed"))
    later.start()
    writer = TarWriter(tmp_path / "out" / "b.tar", split=5000)
    try:
        assert writer.add_following(bw.follow())
        writer.finish(BundleContent(blobs={sha256(BLOB): len(BLOB)}))
    finally:
        writer.abort()
        later.join()
    assert sha256(BLOB)[7:].encode() in _joined(tmp_path / "out", "b.tar")


# ---------------------------------------------------------------------------------------------
# End to end: a real registry, sync with a split writer, then verify, list and push
# ---------------------------------------------------------------------------------------------

KINDS = ["test/base:1.0", "test/app-a:1.0", "test/multi:1.0", "test/dockerv2:1.0"]


@pytest.fixture(scope="module")
def made(seeded_registry, tmp_path_factory):
    """The same images synced into one tar and into a split one (in six parts)."""
    host = seeded_registry.registry.host
    work = tmp_path_factory.mktemp("split")
    lines = "".join(f"  - source: {host}/{k}\n" for k in KINDS)
    manifest = write_manifest(work / "mirror.yaml", f"version: 1\nimages:\n{lines}")
    whole = work / "whole.tar"
    assert run_cli("sync", manifest, "-o", whole, "--cache", work / "cache")[0] == 0
    split = whole.stat().st_size // 6 + 1    # six parts, the last short
    out = work / "out"
    report = work / "report.json"
    assert run_cli("sync", manifest, "-o", out / "b.tar", "--cache", work / "cache",
                   "--split", str(split), "--report", report)[0] == 0
    bundle = json.loads(report.read_text())["bundle"]
    assert [p["path"] for p in bundle["parts"]] == [str(out / f"b.tar.{i:03d}") for i in range(1, 7)]
    assert bundle["sha256sums"] == str(out / "b.tar.sha256sums")
    return {"host": host, "images": seeded_registry.images, "whole": whole, "dir": out,
            "base": out / "b.tar", "first": out / "b.tar.001", "split": split}


def _copy(made, tmp_path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(made["dir"], target)
    return target


def test_sync_split_is_the_same_tar(made):
    assert not made["base"].exists()
    assert len(_parts(made["dir"], "b.tar")) == 6
    assert _joined(made["dir"], "b.tar") == made["whole"].read_bytes()
    _sha256sum_ok(made["dir"], "b.tar")


@pytest.mark.parametrize("which", ["first", "base"])
def test_verify_and_list_read_the_parts_as_one(made, which, capsys):
    code, out, err = run_cli("verify", made[which], capsys=capsys)
    assert code == 0, out + err
    assert ": ok: 4 images" in out and "; 6 parts" in out
    assert sha256(made["whole"].read_bytes()) in out
    res = verify_bundle(made[which])
    assert res.ok and res.warnings == [] and len(res.parts) == 6
    assert list_bundle(made[which]) == list_bundle(made["whole"])
    assert run_cli("list", made[which], capsys=capsys)[0] == 0


def test_reader_reads_blobs_across_part_boundaries(made):
    with open_bundle(made["first"]) as split, open_bundle(made["whole"]) as whole:
        assert split.path == made["base"] and len(split.parts) == 6
        assert split.digests() == whole.digests()
        for d in whole.digests():
            with split.open_blob(d) as a, whole.open_blob(d) as b:
                data = a.read(split.size(d))
                assert data == b.read(whole.size(d)) and sha256(data) == d


def test_push_the_first_part(made, registry):
    assert run_cli("push", made["first"], "--to", registry.host)[0] == 0
    for key in KINDS:
        assert sha256(inspect_raw(registry.host, key)) == made["images"][key]["digest"], key


def test_a_missing_part_is_named(made, tmp_path, capsys):
    d = _copy(made, tmp_path)
    (d / "b.tar.003").unlink()
    code, out, err = run_cli("verify", d / "b.tar.001", capsys=capsys)
    assert code == 1
    assert f"problem: {d / 'b.tar.003'} is missing" in out
    for args in (("list", d / "b.tar"), ("push", d / "b.tar.001", "--to", "127.0.0.1:1")):
        code, out, err = run_cli(*args, capsys=capsys)
        assert code == 1 and f"{d / 'b.tar.003'} is missing" in err, (args, out, err)


def test_a_missing_last_part_without_sums(made, tmp_path):
    d = _copy(made, tmp_path)
    (d / "b.tar.sha256sums").unlink()
    assert verify_bundle(d / "b.tar").ok
    (d / "b.tar.006").unlink()
    with pytest.raises(BundleError, match=r"is a last part, b\.tar\.006, missing"):
        open_bundle(d / "b.tar.001")
    assert not verify_bundle(d / "b.tar.001").ok


def test_a_damaged_part_is_named(made, tmp_path, capsys):
    d = _copy(made, tmp_path)
    part = d / "b.tar.004"
    data = bytearray(part.read_bytes())
    data[len(data) // 2] ^= 0xFF
    part.write_bytes(bytes(data))
    code, out, err = run_cli("verify", d / "b.tar", capsys=capsys)
    assert code == 1
    problems = [line for line in out.splitlines() if line.startswith("problem:")]
    assert problems[0].startswith(f"problem: {part}: damaged: its sha256 is"), out
    # A part cut short is named by open_bundle already, by its size.
    part.write_bytes(bytes(data[:-100]))
    with pytest.raises(BundleError, match="b.tar.004: .* bytes, but every part before the last"):
        open_bundle(d / "b.tar")
    assert any(str(part) in p for p in verify_bundle(d / "b.tar").problems)


def test_serve_reads_a_split_bundle(made):
    """serve takes the first part and serves blobs whose bytes span two parts."""
    from test_serve import ServeThread
    srv = ServeThread(made["first"]).start()
    try:
        for key in ("test/multi:1.0", "test/app-a:1.0", "test/dockerv2:1.0"):
            raw = inspect_raw(srv.host, key)
            assert sha256(raw) == made["images"][key]["digest"], key
        layer = made["images"]["test/app-a:1.0"]["layers"][-1]
        status, _, body = srv.http("GET", f"/v2/test/app-a/blobs/{layer}")
        assert status == 200 and sha256(body) == layer
    finally:
        srv.stop()
