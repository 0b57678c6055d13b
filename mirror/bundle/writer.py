"""Writing an OCI image layout (tar or directory) from the store.

The tar is deterministic: the same content gives the same bytes, whatever the cache held before.
Entries: `oci-layout`, `blobs/`, `blobs/sha256/`, then `blobs/sha256/<hex>` largest first (ties
by digest: `blob_order`), then `index.json` and `manifest.json` (for classic `docker load`);
mtime 0, uid/gid 0, no user names, mode 0644/0755. Blobs come before the metadata so that
`TarWriter` can write each blob while the others are still downloading; largest first because
the downloads start in the same order, so the last to arrive are the small ones and the tar is
finished moments after the last download.
It is written under a temporary name beside the target and renamed at the end, so an interrupted
run leaves nothing at the final path.

With `split=SIZE` the same bytes are cut into `NAME.tar.001`, `NAME.tar.002`, … of at most SIZE
bytes each (`cat NAME.tar.0* > NAME.tar` gives the unsplit tar), and `NAME.tar.sha256sums`
lists every part's sha256 in the format `sha256sum -c` reads. The parts are renamed into place
only by `finish()`, the sums file last.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import BundleError, DigestMismatchError
from ..core.oci import ANN_CONTAINERD_NAME, ANN_REF_NAME, ANN_SOURCE_DIGEST, ANN_TARGET, Descriptor, digest_hex
from .volumes import PartsWriter, sums_path, tmp_beside
from ..cache import Store
from ..core.content import Abandoned, Follower, Restarted

OCI_LAYOUT = b'{"imageLayoutVersion":"1.0.0"}'


def blob_order(sizes: dict[str, int]) -> list[str]:
    """The order of blobs in a bundle tar: largest first, ties by digest. Deterministic."""
    return sorted(sizes, key=lambda d: (-sizes[d], d))


@dataclass(frozen=True)
class LoadEntry:
    """What classic `docker load` needs for one tag: config and layers of one platform."""

    config: str
    layers: tuple[str, ...]


@dataclass(frozen=True)
class BundleImage:
    """One entry of index.json."""

    ref_name: str                    # full normalised reference: registry/repo:tag or …@sha256:…
    descriptor: Descriptor           # the top manifest or index as stored in the bundle
    source_digest: str | None = None # the registry's digest when imgmirror rewrote the index
    load: LoadEntry | None = None    # for manifest.json, when the image has load_platform
    tag: str | None = None
    target: str | None = None        # mirror.yaml's target: path, used by push


@dataclass
class BundleContent:
    """Everything a bundle holds: index entries and the set of blobs (manifests included)."""

    images: list[BundleImage] = field(default_factory=list)
    blobs: dict[str, int] = field(default_factory=dict)    # digest -> size
    annotations: dict[str, str] = field(default_factory=dict)   # of index.json itself

    def index_json(self) -> bytes:
        manifests = []
        for img in sorted(self.images, key=lambda i: i.ref_name):
            d = img.descriptor.to_json()
            ann = {ANN_CONTAINERD_NAME: img.ref_name, ANN_REF_NAME: img.ref_name}
            if img.source_digest:
                ann[ANN_SOURCE_DIGEST] = img.source_digest
            if img.target:
                ann[ANN_TARGET] = img.target
            d["annotations"] = ann
            d.pop("platform", None)
            manifests.append(d)
        index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                 "manifests": manifests}
        if self.annotations:
            index["annotations"] = dict(self.annotations)
        return _json(index)

    def manifest_json(self) -> bytes:
        entries = [{"Config": f"blobs/sha256/{digest_hex(i.load.config)}",
                    "RepoTags": [i.ref_name],
                    "Layers": [f"blobs/sha256/{digest_hex(d)}" for d in i.load.layers]}
                   for i in sorted(self.images, key=lambda i: i.ref_name) if i.load and i.tag]
        return _json(entries)


def _json(obj) -> bytes:
    return json.dumps(obj, indent=2, sort_keys=True).encode() + b"\n"


def _info(name: str, size: int = 0, directory: bool = False) -> bytes:
    """A tar header with no trace of who wrote it or when."""
    ti = tarfile.TarInfo(name)
    ti.size, ti.mtime, ti.uid, ti.gid, ti.uname, ti.gname = size, 0, 0, 0, "", ""
    ti.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    ti.mode = 0o755 if directory else 0o644
    return ti.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def remove_stale_temps(target: Path) -> None:
    """Delete `.NAME….PID.tmp` files beside `target` left by a run that was killed (its pid is
    gone); a live run's are left alone."""
    try:
        candidates = list(target.parent.glob(f".{target.name}*.tmp"))
    except OSError:
        return
    for tmp in candidates:
        pid = tmp.name.rsplit(".", 2)[-2]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            tmp.unlink(missing_ok=True)
        except PermissionError:      # someone else's live process
            pass


# The bundle is fsynced before it is renamed into place. On a virtual disk each fsync also
# flushes the host's cache, about 0.5 s for a 500 MB tar; flushing in the background every
# _FLUSH_STEP bytes while the tar grows leaves the final fsync almost nothing to do.
_FLUSH_STEP = 16 << 20
COPY_CHUNK = 4 << 20


class TarWriter:
    """A bundle tar written front to back: blobs in digest order as they become available, then
    the metadata. Hashes the tar as it goes; `finish()` renames it into place, `abort()` drops it.
    Its methods block (file I/O): call them from a worker thread in async code."""

    def __init__(self, target: Path, split: int | None = None):
        if split is not None and split < 1:
            raise ValueError(f"split size must be positive, not {split}")
        self.target, self.tmp = Path(target), tmp_beside(Path(target))
        remove_stale_temps(self.target)     # a killed run's partial tar (or parts)
        self.split = split
        self.parts: list[dict] = []      # after finish(), with split: [{path, size, sha256}]
        self.sums_path = sums_path(self.target) if split else None
        self.size, self._flushed, self._flush = 0, 0, None
        # Its own thread fdatasyncs the tar in the background as it grows (and closes finished
        # parts): shut down by finish() or abort(), shared with no other writer or run.
        self._flusher = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="imgmirror-flush")
        self._buf = bytearray(COPY_CHUNK)
        self._view = memoryview(self._buf)
        self._hash = hashlib.sha256()
        try:
            self.target.parent.mkdir(parents=True, exist_ok=True)
            self._fh = PartsWriter(self.target, split, self._flusher)
            self._write(_info("oci-layout", len(OCI_LAYOUT)) + _pad(OCI_LAYOUT))
            self._write(_info("blobs", directory=True) + _info("blobs/sha256", directory=True))
        except OSError as exc:
            self.abort()
            raise self.error(exc) from None

    def error(self, exc: OSError) -> BundleError:
        """An OSError while writing, as a message naming the bundle and what to check."""
        return BundleError(f"{self.target}: cannot write the bundle ({exc.strerror or exc}); "
                           "check free space and permissions (the cache is intact)")

    def _write(self, data) -> None:
        view = memoryview(data)
        while view:               # an unbuffered write may take less than it was given
            view = view[self._fh.write(view):]
        self._hash.update(data)
        self.size += len(data)
        if self.size - self._flushed >= _FLUSH_STEP and (self._flush is None or self._flush.done()):
            self._flushed = self.size
            self._flush = self._flusher.submit(os.fdatasync, self._fh.fileno())

    def add_blob(self, store: Store, digest: str, verify: bool) -> None:
        """Append one blob from the store (in `blob_order`); `verify` hashes it again on the way."""
        try:
            with open(store.blob_path(digest), "rb", buffering=0) as src:
                got = self.add_stream(src, digest, os.fstat(src.fileno()).st_size, verify)
        except OSError as exc:
            raise self.error(exc) from None
        if verify and got != digest:
            store.evict(digest)
            raise DigestMismatchError(f"cache entry {digest} was corrupt and has been removed; "
                                      "run sync again to fetch it afresh")

    def add_stream(self, src, digest: str, size: int, verify: bool = True) -> str | None:
        """Append blob `digest` of `size` bytes read from `src` (a binary file with readinto);
        returns the digest of what was copied when `verify`, for the caller to compare. A source
        that ends early is a BundleError (the tar would be corrupt); OSError is the caller's."""
        check = hashlib.sha256() if verify else None
        self._write(_info(f"blobs/sha256/{digest_hex(digest)}", size))
        copied = 0
        # One buffer for every read: no allocation (and no page faults) per chunk.
        # (Hashing straight from an mmap measured slower: the page faults cost more.)
        while copied < size and (n := src.readinto(self._view[:min(len(self._buf), size - copied)])):
            chunk = self._view[:n]
            self._write(chunk)
            copied += n
            if check:
                check.update(chunk)
        if copied != size:
            raise BundleError(f"blob {digest} ends after {copied} of {size} bytes while it was being "
                              "written into the bundle")
        self._write(bytes(-copied % BLOCK))
        return "sha256:" + check.hexdigest() if check else None

    def add_following(self, blob: Follower) -> bool:
        """Append a blob while it is still being written, through a Follower (cache.BlobWriter.
        follow()): its bytes go into the tar as they arrive.

        Returns False, with the tar as it was before, if the write is abandoned (a failed
        download). One that starts over (a server ignoring Range) is copied again from its first
        byte, what was copied of it cut back out first."""
        start, hash_at_start = self.size, self._mark()
        try:
            with blob:
                self._write(_info(f"blobs/sha256/{digest_hex(blob.digest)}", blob.size))
                body, hash_at_body = self.size, self._mark()
                copied = 0
                while True:
                    try:
                        n = blob.readinto(self._view[:COPY_CHUNK])
                    except Restarted:
                        self._rollback(body, hash_at_body)
                        copied = 0
                        continue
                    except Abandoned:
                        self._rollback(start, hash_at_start)
                        return False
                    if not n:
                        break
                    self._write(self._view[:n])
                    copied += n
                self._write(bytes(-copied % BLOCK))
                return True
        except OSError as exc:
            raise self.error(exc) from None

    def _mark(self):
        """The hash states at the current offset, for `_rollback`."""
        return self._hash.copy(), self._fh.mark()

    def _rollback(self, offset: int, mark) -> None:
        """Cut the tar back to `offset`, where `_mark()` returned `mark`."""
        if self.split:
            self._settle()    # no background flush on a part that may be closed now
        hash_state, parts_mark = mark
        self._fh.rollback(parts_mark)
        self.size, self._hash = offset, hash_state
        self._flushed = min(self._flushed, offset)

    def finish(self, content: BundleContent) -> tuple[int, str]:
        """Write index.json and manifest.json, close, fsync, rename; returns (size, sha256) of
        the whole tar. With split, `self.parts` then lists each part's path, size and sha256."""
        try:
            for name, data in (("index.json", content.index_json()),
                               ("manifest.json", content.manifest_json())):
                self._write(_info(name, len(data)) + _pad(data))
            self._write(bytes(2 * BLOCK))                      # end-of-archive marker
            self._write(bytes(-self.size % tarfile.RECORDSIZE))  # as tar(1) and tarfile pad
            self._settle()
            parts = self._fh.close()
            self._fh.publish(parts)
            self.parts = parts
        except OSError as exc:
            self.abort()
            raise self.error(exc) from None
        self._flusher.shutdown()
        return self.size, "sha256:" + self._hash.hexdigest()

    def _settle(self) -> None:
        """Wait for a background flush in flight (it must not outlive the file)."""
        if self._flush is not None:
            self._flush.result()
            self._flush = None

    def abort(self) -> None:
        """Drop the partial tar."""
        try:
            self._settle()
        except OSError:
            pass
        parts = getattr(self, "_fh", None)
        if parts is not None:
            parts.discard()
        self._flusher.shutdown()


BLOCK = tarfile.BLOCKSIZE


def _pad(data: bytes) -> bytes:
    return data + bytes(-len(data) % BLOCK)


def write_tar(target: Path, store: Store, content: BundleContent) -> tuple[int, str]:
    """Write a whole bundle tar at once from the store; returns (size, sha256 of the tar)."""
    writer = TarWriter(target)
    try:
        for digest in blob_order(content.blobs):
            writer.add_blob(store, digest, verify=True)
        return writer.finish(content)
    finally:
        writer.abort()


class _VerifyingReader:
    """Reads a cached blob and checks, at the end, that it is still what its name says."""

    def __init__(self, fh, digest: str):
        self.fh, self.digest, self.hash = fh, digest, hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        b = self.fh.read(n)
        self.hash.update(b)
        return b

    def check(self, store: Store) -> None:
        if "sha256:" + self.hash.hexdigest() != self.digest:
            store.evict(self.digest)
            raise DigestMismatchError(f"cache entry {self.digest} was corrupt and has been removed; "
                                      "run sync again to fetch it afresh")


def write_dir(target: Path, store: Store, content: BundleContent) -> None:
    """Write the bundle as a layout directory: blobs first, each atomic; index.json last."""
    blob_dir = target / "blobs" / "sha256"
    try:
        blob_dir.mkdir(parents=True, exist_ok=True)
        for digest in sorted(content.blobs):
            dest = blob_dir / digest_hex(digest)
            if dest.is_file() and dest.stat().st_size == content.blobs[digest]:
                continue
            tmp = tmp_beside(dest)
            try:
                with open(store.blob_path(digest), "rb") as src, open(tmp, "wb") as out:
                    reader = _VerifyingReader(src, digest)
                    while chunk := reader.read(1 << 20):
                        out.write(chunk)
                    reader.check(store)
                os.replace(tmp, dest)
            finally:
                tmp.unlink(missing_ok=True)
        for name, data in (("oci-layout", OCI_LAYOUT), ("manifest.json", content.manifest_json()),
                           ("index.json", content.index_json())):
            tmp = tmp_beside(target / name)
            tmp.write_bytes(data)
            os.replace(tmp, target / name)
    except OSError as exc:
        raise BundleError(f"{target}: cannot write the layout ({exc.strerror or exc}); "
                          "check free space and permissions") from None
