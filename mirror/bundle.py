"""Writing an OCI image layout (tar or directory) from the store.

The tar is deterministic: the same content gives the same bytes, whatever the cache held before.
Entries: `oci-layout`, `index.json`, `manifest.json` (for classic `docker load`), then
`blobs/sha256/<hex>` sorted by digest; mtime 0, uid/gid 0, no user names, mode 0644/0755.
Metadata comes first so that a reader streaming the tar knows what it holds before the blobs.
It is written under a temporary name beside the target and renamed at the end, so an interrupted
run leaves nothing at the final path. Every blob is hashed again as it is copied from the cache.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from .errors import BundleError, DigestMismatchError
from .oci import ANN_CONTAINERD_NAME, ANN_REF_NAME, ANN_SOURCE_DIGEST, Descriptor, digest_hex
from .store import Store

OCI_LAYOUT = b'{"imageLayoutVersion":"1.0.0"}'


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


@dataclass
class BundleContent:
    """Everything a bundle holds: index entries and the set of blobs (manifests included)."""

    images: list[BundleImage] = field(default_factory=list)
    blobs: dict[str, int] = field(default_factory=dict)    # digest -> size

    def index_json(self) -> bytes:
        manifests = []
        for img in sorted(self.images, key=lambda i: i.ref_name):
            d = img.descriptor.to_json()
            ann = {ANN_CONTAINERD_NAME: img.ref_name, ANN_REF_NAME: img.ref_name}
            if img.source_digest:
                ann[ANN_SOURCE_DIGEST] = img.source_digest
            d["annotations"] = ann
            d.pop("platform", None)
            manifests.append(d)
        return _json({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                      "manifests": manifests})

    def manifest_json(self) -> bytes:
        entries = [{"Config": f"blobs/sha256/{digest_hex(i.load.config)}",
                    "RepoTags": [i.ref_name],
                    "Layers": [f"blobs/sha256/{digest_hex(d)}" for d in i.load.layers]}
                   for i in sorted(self.images, key=lambda i: i.ref_name) if i.load and i.tag]
        return _json(entries)


def _json(obj) -> bytes:
    return json.dumps(obj, indent=2, sort_keys=True).encode() + b"\n"


class _HashingWriter(io.RawIOBase):
    """A write-only file that hashes and counts what passes through it."""

    def __init__(self, fh):
        self.fh, self.hash, self.size = fh, hashlib.sha256(), 0

    def writable(self) -> bool:
        return True

    def tell(self) -> int:   # tarfile asks where it starts
        return self.size

    def write(self, b) -> int:
        self.hash.update(b)
        self.size += len(b)
        return self.fh.write(b)


class _VerifyingReader:
    """Reads a cached blob for the tar and checks, at the end, that it is still what its name says."""

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


def _info(name: str, size: int = 0, directory: bool = False) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.size, ti.mtime, ti.uid, ti.gid, ti.uname, ti.gname = size, 0, 0, 0, "", ""
    ti.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    ti.mode = 0o755 if directory else 0o644
    return ti


def _tmp_beside(target: Path) -> Path:
    return target.with_name(f".{target.name}.{os.getpid()}.tmp")


def write_tar(target: Path, store: Store, content: BundleContent) -> tuple[int, str]:
    """Write the bundle as a tar at `target`; returns (size, sha256 of the tar)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_beside(target)
    try:
        with open(tmp, "wb") as raw:
            hw = _HashingWriter(raw)
            with tarfile.open(fileobj=hw, mode="w", format=tarfile.PAX_FORMAT) as tar:
                for name, data in (("oci-layout", OCI_LAYOUT), ("index.json", content.index_json()),
                                   ("manifest.json", content.manifest_json())):
                    tar.addfile(_info(name, len(data)), io.BytesIO(data))
                tar.addfile(_info("blobs", directory=True))
                tar.addfile(_info("blobs/sha256", directory=True))
                for digest in sorted(content.blobs):
                    path = store.blob_path(digest)
                    with open(path, "rb") as fh:
                        size = os.fstat(fh.fileno()).st_size
                        reader = _VerifyingReader(fh, digest)
                        tar.addfile(_info(f"blobs/sha256/{digest_hex(digest)}", size), reader)
                        reader.check(store)
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, target)
    except OSError as exc:
        raise BundleError(f"{target}: cannot write the bundle ({exc.strerror or exc}); "
                          "check free space and permissions (the cache is intact)") from None
    finally:
        tmp.unlink(missing_ok=True)
    return hw.size, "sha256:" + hw.hash.hexdigest()


def write_dir(target: Path, store: Store, content: BundleContent) -> None:
    """Write the bundle as a layout directory: blobs first, each atomic; index.json last."""
    blob_dir = target / "blobs" / "sha256"
    try:
        blob_dir.mkdir(parents=True, exist_ok=True)
        for digest in sorted(content.blobs):
            dest = blob_dir / digest_hex(digest)
            if dest.is_file() and dest.stat().st_size == content.blobs[digest]:
                continue
            tmp = _tmp_beside(dest)
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
            tmp = _tmp_beside(target / name)
            tmp.write_bytes(data)
            os.replace(tmp, target / name)
    except OSError as exc:
        raise BundleError(f"{target}: cannot write the layout ({exc.strerror or exc}); "
                          "check free space and permissions") from None
