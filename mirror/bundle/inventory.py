"""verify's one pass over a bundle: every byte read once, front to back, and hashed.

A tar is read as a stream (so `imgmirror verify -` can check a tar while it is being copied): each
blob is hashed as it passes, and the whole tar as well; only the small JSON blobs (manifests,
configs) are kept in memory, for the reference checks done afterwards (`verify.py`). A split
bundle's parts are read as the one stream they make, each part hashed on the way. A layout
directory's files are hashed one by one. Problems are listed, never raised, except that a path
that is not a bundle at all raises NotABundleError.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import os
import tarfile
from pathlib import Path
from typing import TYPE_CHECKING

from ..core.oci import digest_hex, sha256_digest
from ..errors import BundleError, NotABundleError
from .reader import MAX_READ
from .tarscan import (END_OF_ARCHIVE, META_LIMITS, blob_digest, end_problem, layout_files, members,
                      not_a_bundle, pread, refuse_compressed, require_layout)
from .volumes import PartsFile, SplitBundle

if TYPE_CHECKING:
    from .verify import VerifyResult

CHUNK = 1 << 20
KEEP_LIMIT = 256 << 20      # JSON blobs held for the reference checks; past this, re-read them


class Inventory:
    """The blobs one pass saw: sizes, the corrupt ones, and the small JSON ones kept to walk.
    It answers `has` and `read` as a BundleReader does, so `iter_tree` walks it the same way."""

    def __init__(self, res: VerifyResult):
        self.res = res
        self.sizes: dict[str, int] = {}
        self.bad: dict[str, int] = {}      # damaged blob -> its problem's index, to name users
        self.small: dict[str, bytes] = {}
        self.offsets: dict[str, int] = {}
        self.kept = 0
        self.meta: dict[str, bytes] = {}
        self.reread = None            # digest -> bytes, where the source can be read again

    def consume(self, name: str, digest: str, fh, size: int, offset: int = 0) -> None:
        """Hash one blob as it streams by; keep it if it may be a manifest or config."""
        h, parts, got = hashlib.sha256(), [], 0
        keep = size <= MAX_READ and self.kept + size <= KEEP_LIMIT
        while chunk := fh.read(CHUNK):
            h.update(chunk)
            if keep and got == 0 and chunk.lstrip()[:1] != b"{":    # a layer, not JSON
                keep = False
            got += len(chunk)
            if keep:
                parts.append(chunk)
        self.sizes[digest], self.offsets[digest] = got, offset
        if "sha256:" + h.hexdigest() != digest:
            self.bad[digest] = len(self.res.problems)
            self.res.problems.append(f"{name}: content has digest sha256:{h.hexdigest()}, not the "
                                     "digest its name says (damaged bytes)")
        elif keep:
            self.small[digest] = b"".join(parts)
            self.kept += got

    def has(self, digest: str) -> bool:
        return digest in self.sizes

    def read(self, digest: str) -> bytes:
        if digest in self.bad:
            raise BundleError(f"blob {digest} is damaged")
        if digest in self.small:
            return self.small[digest]
        if self.reread is None or self.sizes[digest] > MAX_READ:
            raise BundleError(f"blob {digest}: not checked (too large for a manifest, or too many "
                              "manifests to hold while reading a stream)")
        data = self.reread(digest)
        if sha256_digest(data) != digest:
            raise BundleError(f"blob {digest} changed while it was being verified")
        return data


class _HashingSource:
    """The tar as tarfile reads it, hashed on the way; remembers the last chunks so the bytes
    after the last entry (where the end-of-archive marker must be) can be looked at."""

    def __init__(self, src):
        self.src, self.hash, self.total = src, hashlib.sha256(), 0
        self.recent: collections.deque = collections.deque()     # (offset, bytes), last 4 MiB
        self.pending = self._raw(CHUNK)

    def _raw(self, n: int) -> bytes:
        data = self.src.read(n)
        self.recent.append((self.total, data))
        self.hash.update(data)
        self.total += len(data)
        # tarfile reads at most one buffer (CHUNK) ahead of the entry it is at: keep more.
        while self.total - self.recent[0][0] > 4 * CHUNK:
            self.recent.popleft()
        return data

    def read(self, n: int = -1) -> bytes:
        n = CHUNK if n is None or n < 0 else n
        if self.pending:
            out, self.pending = self.pending[:n], self.pending[n:]
            return out
        return self._raw(n)

    def tail_from(self, offset: int, want: int) -> bytes | None:
        """Up to `want` bytes from `offset` on, reading further if needed; None if forgotten."""
        if not self.recent or self.recent[0][0] > offset:
            return None
        out = b"".join(d for _, d in self.recent)[offset - self.recent[0][0]:]
        while len(out) < want and (more := self._raw(CHUNK)):
            out += more
        return out[:want]

    def drain(self) -> None:
        while self._raw(CHUNK):
            pass


class _PartStream:
    """A split bundle's parts read front to back as one stream, each part hashed on the way."""

    def __init__(self, fh: PartsFile):
        self.fh, self.pos = fh, 0
        self.hashes = [hashlib.sha256() for _ in fh.paths]

    def read(self, n: int = -1) -> bytes:
        data = self.fh.pread(CHUNK if n is None or n < 0 else n, self.pos)
        view, at = memoryview(data), self.pos
        while view:
            i = self.fh.part_at(at)
            take = min(len(view), self.fh.ends[i] - at)
            self.hashes[i].update(view[:take])
            view, at = view[take:], at + take
        self.pos += len(data)
        return data

    def drain(self) -> None:
        while self.read(CHUNK):
            pass


def scan_split(split: SplitBundle, where: str, inv: Inventory, res: VerifyResult,
               stack: contextlib.ExitStack) -> bool:
    """Verify a split bundle's parts and, as one stream, the tar they make. False when there
    is no tar to check the references of (a part is missing at the start, or so damaged that
    the stream is not a tar at all)."""
    res.parts = [str(p) for p in split.parts]
    missing = split.missing()
    if missing:
        res.problems.append(split.missing_message(missing))
    present = split.parts[:split.parts.index(missing[0])] if missing else split.parts
    if not present:
        return False
    if split.sums is None:
        res.warnings.append(f"no {split.sums_path.name}: the parts' own sha256 were not checked")
        if not missing:
            res.problems += split.size_problems()
    fh = stack.enter_context(PartsFile(present))
    inv.reread = lambda d: pread(fh, inv.sizes[d], inv.offsets[d])
    stream = _PartStream(fh)
    problems_before = len(res.problems)

    def check_parts() -> list[str]:
        stream.drain()
        out = []
        for part, h in zip(present, stream.hashes, strict=False):
            want = (split.sums or {}).get(part)
            if want is not None and h.hexdigest() != want:
                out.append(f"{part}: damaged: its sha256 is {h.hexdigest()}, {split.sums_path.name} "
                           f"says {want}")
        return out

    try:
        scan_tar(stream, where, inv, res)
    except NotABundleError:
        damaged = check_parts()
        if not damaged and len(res.problems) == problems_before and not missing:
            raise
        res.problems[problems_before:problems_before] = damaged
        return False
    # The parts first: they say where to look; the tar's own problems follow.
    res.problems[problems_before:problems_before] = check_parts()
    return True


def scan_tar(src, where: str, inv: Inventory, res: VerifyResult) -> None:
    """Hash every byte of a tar stream and every blob in it; list each problem, stop at none.
    Unlike the reader's scan, it cannot seek: blobs are hashed as they pass."""
    hs = _HashingSource(src)
    refuse_compressed(hs.pending[:8], where)
    try:
        tf = tarfile.open(fileobj=hs, mode="r|", bufsize=CHUNK)
    except tarfile.ReadError as exc:
        raise not_a_bundle(where, f"not a tar archive ({exc})") from None
    last, current = None, None
    try:
        for e in members(tf):
            current = e.info.name
            if e.unsafe:
                res.problems.append(f"{e.info.name}: unsafe entry ({e.unsafe}); a bundle never holds one")
            elif e.twice:
                res.problems.append(f"{e.name}: appears twice in the tar (readers disagree on which counts)")
            elif digest := e.digest:
                inv.consume(e.name, digest, tf.extractfile(e.info), e.info.size, e.info.offset_data)
            elif e.is_meta and e.info.size > META_LIMITS[e.name]:
                res.problems.append(f"{e.name}: {e.info.size} bytes, more than a real one could need")
            elif e.is_meta:
                inv.meta[e.name] = tf.extractfile(e.info).read()
            elif e.info.isreg():
                res.warnings.append(f"{e.name}: unexpected entry (ignored)")
            last, current = e.name, None
    except tarfile.ReadError as exc:
        res.problems.append(f"{current or last}: the tar ends inside this entry, at byte {hs.total} "
                            f"(truncated: {exc})")
    else:
        if problem := end_problem(hs.tail_from(tf.offset, len(END_OF_ARCHIVE)), last, tf.offset):
            res.problems.append(problem)
    hs.drain()
    res.size, res.sha256 = hs.total, "sha256:" + hs.hash.hexdigest()
    require_layout(where, inv.meta, damaged=bool(res.problems))


def scan_dir(p: Path, inv: Inventory, res: VerifyResult) -> None:
    """Hash every blob of a layout directory. Every file under blobs/ is looked at (the reader
    looks only at blobs/sha256/), so a leftover or unsafe one anywhere is named."""
    for name, size in layout_files(p):
        if size is None:
            res.problems.append(f"{name}: unsafe entry (not a regular file; a symlink?)")
        elif size > META_LIMITS[name]:
            res.problems.append(f"{name}: {size} bytes, more than a real one could need")
        else:
            inv.meta[name] = (p / name).read_bytes()
    require_layout(p, inv.meta, damaged=bool(res.problems))
    inv.reread = lambda d: (p / "blobs" / "sha256" / digest_hex(d)).read_bytes()
    if os.path.lexists(p / "blobs"):
        _scan_tree(p, "blobs", inv, res)


def _scan_tree(root: Path, rel: str, inv: Inventory, res: VerifyResult) -> None:
    if os.path.islink(root / rel):
        res.problems.append(f"{rel}: unsafe entry (symbolic link)")
        return
    with os.scandir(root / rel) as it:
        entries = sorted(it, key=lambda e: e.name)
    for e in entries:
        name = f"{rel}/{e.name}"
        if e.is_symlink():
            res.problems.append(f"{name}: unsafe entry (symbolic link to {os.readlink(e.path)!r})")
        elif e.is_dir(follow_symlinks=False):
            _scan_tree(root, name, inv, res)
        elif not e.is_file(follow_symlinks=False):
            res.problems.append(f"{name}: unsafe entry (device or fifo)")
        elif digest := blob_digest(name):
            with open(e.path, "rb") as fh:
                inv.consume(name, digest, fh, e.stat(follow_symlinks=False).st_size)
        else:
            res.warnings.append(f"{name}: unexpected file (ignored; a leftover temporary file?)")
