"""The tar writer on its own: following a download as it lands gives the same bytes as copying
the finished blob, and a failed or restarted download leaves no trace in the tar."""

from __future__ import annotations

import hashlib
import tarfile
import threading
import time

import pytest

from mirror.bundle.writer import BundleContent, TarWriter, blob_order, write_tar
from mirror.errors import DigestMismatchError
from mirror.cache import Store


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


BLOB = bytes(range(256)) * 4099          # not a multiple of 512: exercises the padding
OTHER = b"other blob" * 100


def _feed(writer_blob, parts, *, reset_after=None, fail=False, delay=0.005):
    """Drive a BlobWriter from another thread, as a download would."""
    def run():
        try:
            for i, part in enumerate(parts):
                time.sleep(delay)
                writer_blob.write(part)
                if reset_after is not None and i == reset_after:
                    writer_blob.reset()
                    for again in parts:     # the server ignored Range: the whole body again
                        time.sleep(delay)
                        writer_blob.write(again)
                    break
            if fail:
                raise DigestMismatchError("injected")
            writer_blob.commit()
        except DigestMismatchError:
            pass
        finally:
            writer_blob.abort()
    t = threading.Thread(target=run)
    t.start()
    return t


def _write(tmp_path, name, follow: dict) -> tuple[bytes, str]:
    """A tar of BLOB and OTHER where BLOB arrives through a followed BlobWriter."""
    store = Store(tmp_path / "cache")
    store.put(_digest(OTHER), OTHER)
    content = BundleContent(blobs={_digest(BLOB): len(BLOB), _digest(OTHER): len(OTHER)})
    tar = TarWriter(tmp_path / name)
    bw = store.begin(_digest(BLOB), len(BLOB))
    parts = [BLOB[i:i + 100_000] for i in range(0, len(BLOB), 100_000)]
    thread = _feed(bw, parts, **follow)
    ok = tar.add_following(bw.follow())
    thread.join()
    tar.add_blob(store, _digest(OTHER), verify=True)
    size, sha = tar.finish(content)
    data = (tmp_path / name).read_bytes()
    assert size == len(data) and sha == _digest(data)
    return data, ok


def test_following_equals_copying(tmp_path):
    followed, ok = _write(tmp_path, "followed.tar", {})
    assert ok
    store = Store(tmp_path / "cache")        # BLOB is now in the cache: copy it the plain way
    content = BundleContent(blobs={_digest(BLOB): len(BLOB), _digest(OTHER): len(OTHER)})
    assert blob_order(content.blobs) == [_digest(BLOB), _digest(OTHER)]
    write_tar(tmp_path / "copied.tar", store, content)
    assert followed == (tmp_path / "copied.tar").read_bytes()
    with tarfile.open(tmp_path / "copied.tar") as tf:
        assert tf.extractfile(f"blobs/sha256/{_digest(BLOB)[7:]}").read() == BLOB


def test_restarted_download_is_followed_from_the_start(tmp_path):
    restarted, ok = _write(tmp_path, "restarted.tar", {"reset_after": 2})
    (tmp_path / "again").mkdir()
    plain, _ = _write(tmp_path / "again", "plain.tar", {})
    assert ok and restarted == plain


def test_failed_download_leaves_the_tar_as_it_was(tmp_path):
    data, ok = _write(tmp_path, "failed.tar", {"fail": True})
    assert not ok
    with tarfile.open(tmp_path / "failed.tar") as tf:
        names = tf.getnames()
    assert f"blobs/sha256/{_digest(BLOB)[7:]}" not in names
    assert f"blobs/sha256/{_digest(OTHER)[7:]}" in names


def test_abort_leaves_nothing(tmp_path):
    tar = TarWriter(tmp_path / "x.tar")
    tar.abort()
    assert list(tmp_path.iterdir()) == []


def test_corrupt_cache_entry_is_refused(tmp_path):
    store = Store(tmp_path / "cache")
    store.put(_digest(OTHER), OTHER)
    store.blob_path(_digest(OTHER)).write_bytes(b"x" + OTHER[1:])
    tar = TarWriter(tmp_path / "x.tar")
    with pytest.raises(DigestMismatchError):
        tar.add_blob(store, _digest(OTHER), verify=True)
    tar.abort()
    assert not store.has(_digest(OTHER))
