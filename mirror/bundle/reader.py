"""Reading a bundle (an OCI image layout, as a tar or a directory) without extracting it.

`open_bundle` scans a tar's headers once, seeking past the data, and records where each blob's
bytes are; blobs are then read straight from the tar with `os.pread`, so any number of them can
be read at once from worker threads (pread has no shared file position). Only `oci-layout`,
`index.json` and `manifest.json` are read into memory, and only when their sizes are believable.

Nothing is ever written or extracted. Entries that could escape the layout if someone did
extract the tar (absolute paths, `..`, links, devices) are refused before anything is read.

    with open_bundle(path) as b:          # a tar or a layout directory
        b.index, b.images                 # index.json parsed; [(ref name or None, Descriptor)]
        b.digests(), b.has(d), b.size(d)  # the blobs present
        b.read(d)                         # a manifest or image config, whole and verified (<= 4 MiB)
        b.open_blob(d)                    # a seekable file object over one blob (not verified)
        b.walk(descriptor)                # everything reachable from an index.json entry

    BundleError            damaged or unsafe bundle (exit 1)
    └── NotABundleError    not a bundle at all: missing path, not a tar, no layout (exit 2)

A split bundle (`sync --split`: `NAME.tar.001`, `NAME.tar.002`, … and `NAME.tar.sha256sums`) is
opened by its first part or by its base name `NAME.tar` (when that file does not exist) and read
as the one tar its parts make (`PartsFile`). A missing part is named; so is a part whose size
cannot be right. Checking the parts' sha256 is verify's job (it reads every byte anyway).
"""

from __future__ import annotations

import json
import os
import stat
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

from ..core.oci import (ANN_REF_NAME, DOCKER_CONFIG, MANIFEST_TYPES, OCI_CONFIG, Descriptor, Manifest,
                        digest_hex, json_problem, parse_manifest, verify_bytes)
from ..core.plan import MAX_DEPTH
from ..errors import BundleError, MirrorError, NotABundleError
from .tarscan import (END_OF_ARCHIVE, META_LIMITS, blob_digest, end_problem, layout_files, members,
                      not_a_bundle, open_tar, pread, refuse_compressed, require_layout, stat_bundle)
from .volumes import PartsFile, PositionalFile, SplitBundle, find_split, part_path

MAX_READ = 4 << 20          # `read()` is for manifests and small image configs, never layers
# Only these configs are read (for a platform); an artifact's config is a blob of any size.
IMAGE_CONFIG_TYPES = frozenset({OCI_CONFIG, DOCKER_CONFIG})


class BlobFile(PositionalFile):
    """One blob's bytes inside a larger file, read with pread: seekable, `read(n)` semantics,
    independent of every other BlobFile on the same file."""

    def __init__(self, fh, offset: int, size: int, name: str, owns: bool = False):
        super().__init__()
        # The file object, not its descriptor number: once the reader is closed, fileno() fails
        # instead of reading whatever file reused that number.
        self._fh, self._offset, self.size, self.name, self._owns = fh, offset, size, name, owns
        self._pos = 0

    def pread(self, n: int, offset: int) -> bytes:
        n = min(n, self.size - offset)
        if n <= 0:
            return b""
        data = pread(self._fh, n, self._offset + offset)
        if not data:    # the file shrank under us, or the tar is truncated
            raise BundleError(f"{self.name}: ends {self.size - offset} bytes early (truncated bundle?)")
        return data

    def close(self) -> None:
        if self._owns:
            self._fh.close()
        super().close()


def iter_tree(source, root: Descriptor, on_error: Callable[[str, str], None] | None = None
              ) -> Iterator[tuple[Manifest | None, Descriptor]]:
    """(parent manifest, descriptor) for everything reachable from `root`, parents first, each
    digest once. `source` needs `has(digest)` and `read(digest)`. Absent manifests are yielded but
    not descended into (the caller decides whether that is a problem). Unreadable manifests,
    loops and absurd nesting raise BundleError, or go to `on_error(digest, message)` if given."""
    seen: set[str] = set()

    def fail(digest: str, message: str) -> None:
        if on_error is None:
            raise BundleError(message)
        on_error(digest, message)

    def visit(parent, desc: Descriptor, path: tuple[str, ...]):
        if desc.digest in path:
            return fail(desc.digest, f"manifest {desc.digest} refers to itself through its children")
        if desc.digest in seen:       # a layer shared by two children, say
            return
        seen.add(desc.digest)
        if on_error is None and source.has(desc.digest) and source.size(desc.digest) != desc.size:
            # verify (on_error given) reports sizes itself; list and serve must not take a lie
            return fail(desc.digest, f"{desc.digest} has {source.size(desc.digest)} bytes in the "
                                     f"bundle, its descriptor says {desc.size}")
        yield parent, desc
        if desc.media_type not in MANIFEST_TYPES or not source.has(desc.digest):
            return
        if len(path) >= MAX_DEPTH:
            return fail(desc.digest, f"manifest {desc.digest}: indexes nested more than {MAX_DEPTH} deep")
        try:
            m = parse_manifest(source.read(desc.digest), desc.media_type, f"manifest {desc.digest}")
        except MirrorError as exc:
            return fail(desc.digest, str(exc))
        if m.media_type != desc.media_type:
            # A registry would be sent the wrong Content-Type, or refuse the parent.
            fail(desc.digest, f"manifest {desc.digest} is a {m.media_type}, but its descriptor says "
                              f"{desc.media_type}")
        for child in (m.children if m.is_index else m.blobs):
            yield from visit(m, child, path + (desc.digest,))

    yield from visit(None, root, ())


def parse_index(raw: bytes) -> tuple[dict, list[tuple[str | None, Descriptor]]]:
    """index.json -> (the object, [(ref name, descriptor)]); MirrorError if it is malformed."""
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:   # [[[[… nests too deep
        raise BundleError(f"index.json is not valid JSON ({json_problem(exc)})") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("manifests"), list):
        raise BundleError("index.json is not an image index (no 'manifests' list)")
    images = []
    for i, entry in enumerate(obj["manifests"]):
        desc = Descriptor.from_json(entry, f"index.json manifests[{i}]")
        ref = desc.annotations.get(ANN_REF_NAME)
        images.append((ref if isinstance(ref, str) else None, desc))
    return obj, images


class BundleReader:
    """A bundle opened for reading. Safe to read blobs from several threads at once."""

    def __init__(self, path: Path, kind: str, blobs: dict[str, tuple[int, int]], meta: dict[str, bytes],
                 fh=None):
        self.path, self.kind, self._blobs, self._fh = path, kind, blobs, fh
        self.parts: list[Path] = []      # a split bundle's parts, in order
        self.index_raw = meta["index.json"]
        self.manifest_json_raw = meta.get("manifest.json")     # optional: classic docker load
        try:
            self.index, self.images = parse_index(self.index_raw)
        except MirrorError as exc:
            self.close()
            raise BundleError(f"{path}: {exc}; run `imgmirror verify {path}` for details") from None

    def __enter__(self) -> BundleReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Close the tar; BlobFiles still open on it stop working."""
        if self._fh is not None:
            self._fh.close()

    def digests(self) -> list[str]:
        """Every blob in the bundle, manifests included, sorted."""
        return sorted(self._blobs)

    def has(self, digest: str) -> bool:
        return digest in self._blobs

    def size(self, digest: str) -> int:
        """The blob's size in the bundle; BundleError if it is not there."""
        return self._entry(digest)[1]

    def _entry(self, digest: str) -> tuple[int, int]:
        try:
            return self._blobs[digest]
        except KeyError:
            raise BundleError(f"{self.path}: blob {digest} is not in the bundle") from None

    def open_blob(self, digest: str) -> BlobFile:
        """A binary file object over exactly that blob's bytes (not verified: hash as you read)."""
        offset, size = self._entry(digest)
        name = f"{self.path}: blob {digest}"
        if self._fh is not None:
            return BlobFile(self._fh, offset, size, name)
        try:
            fh = open(self.path / "blobs" / "sha256" / digest_hex(digest), "rb", buffering=0)
        except OSError as exc:
            raise BundleError(f"{name}: cannot open ({exc.strerror})") from None
        return BlobFile(fh, 0, size, name, owns=True)

    def read(self, digest: str) -> bytes:
        """A small blob (manifest, image config) whole, verified against its digest. Not for an
        artifact's config: that is a blob of any size (stream it with `open_blob`)."""
        size = self.size(digest)
        if size > MAX_READ:
            raise BundleError(f"{self.path}: blob {digest} is {size} bytes; a manifest "
                              f"is never over {MAX_READ >> 20} MiB")
        with self.open_blob(digest) as f:
            data = f.read(size)
            while len(data) < size and (more := f.read(size - len(data))):
                data += more
        verify_bytes(data, digest, f"{self.path}: blob {digest}")
        return data

    def walk(self, root: Descriptor) -> Iterator[Descriptor]:
        """Every descriptor reachable from an index.json entry (itself first, then index children,
        configs and layers), each digest once; absent ones (a sparse index's children, foreign
        layers) are yielded too: check `has()`."""
        for _, desc in iter_tree(self, root):
            yield desc


def open_bundle(path) -> BundleReader:
    """Open a bundle tar or layout directory for reading; BundleError/NotABundleError if it is not one."""
    p = Path(path)
    if (split := find_split(p)) is not None:
        return _open_split(split)
    if stat.S_ISDIR(stat_bundle(p).st_mode):
        return _open_dir(p)
    fh = open_tar(p)
    try:
        blobs, meta = _scan_tar(fh, p)
        return BundleReader(p, "tar", blobs, meta, fh)
    except BaseException:
        fh.close()
        raise


def _open_split(split: SplitBundle) -> BundleReader:
    if missing := split.missing():
        raise BundleError(split.missing_message(missing))
    if problems := split.size_problems():
        raise BundleError(f"{'; '.join(problems)}; run `imgmirror verify {split.base}` for details")
    fh = PartsFile(split.parts)
    try:
        try:
            blobs, meta = _scan_tar(fh, split.base)
        except BundleError as exc:
            if split.sums is None and not isinstance(exc, NotABundleError):
                raise BundleError(f"{exc} (no {split.sums_path.name}: is a last part, "
                                  f"{part_path(split.base, len(split.parts) + 1).name}, missing?)") from None
            raise
        reader = BundleReader(split.base, "tar", blobs, meta, fh)
        reader.parts = list(split.parts)
        return reader
    except BaseException:
        fh.close()
        raise


def _scan_tar(fh, p: Path) -> tuple[dict[str, tuple[int, int]], dict[str, bytes]]:
    """Where each blob's bytes are, and the layout files' contents. Unlike verify's stream, this
    seeks past the data: the headers are read, and only the small layout files."""
    refuse_compressed(pread(fh, 8, 0), p)
    try:
        # "r:" = uncompressed with random access: next() seeks past each member's data.
        tf = tarfile.open(fileobj=fh, mode="r:")
        entries = list(members(tf))
    except tarfile.ReadError as exc:
        if "unexpected end of data" in str(exc):
            raise BundleError(f"{p}: the tar is truncated; run `imgmirror verify {p}` for details") from None
        raise not_a_bundle(p, f"not a tar archive ({exc})") from None
    for e in entries:     # refuse unsafe entries before reading any content
        if e.unsafe:
            raise BundleError(f"{p}: unsafe entry {e.info.name!r} ({e.unsafe}); refusing the whole bundle")
    end, last = tf.offset, entries[-1].name if entries else None
    if problem := end_problem(pread(fh, len(END_OF_ARCHIVE), end), last, end):
        raise BundleError(f"{p}: {problem}; run `imgmirror verify {p}` for details")
    blobs: dict[str, tuple[int, int]] = {}
    meta: dict[str, bytes] = {}
    for e in entries:
        if e.twice:
            raise BundleError(f"{p}: entry {e.name!r} appears twice; the bundle is ambiguous")
        if digest := e.digest:
            blobs[digest] = (e.info.offset_data, e.info.size)
        elif e.is_meta:
            meta[e.name] = _bounded(p, e.name, e.info.size, lambda m=e.info: pread(fh, m.size, m.offset_data))
    require_layout(p, meta)
    return blobs, meta


def _bounded(p: Path, name: str, size: int, read: Callable[[], bytes]) -> bytes:
    if size > META_LIMITS[name]:
        raise BundleError(f"{p}: {name} is {size} bytes, over the {META_LIMITS[name] >> 10} KiB "
                          "a real one could need; refusing it")
    data = read()
    if len(data) != size:
        raise BundleError(f"{p}: {name} is truncated")
    return data


def _open_dir(p: Path) -> BundleReader:
    """Only the layout files and blobs/sha256/ are looked at (verify walks every file under blobs/).
    Everything is lstat-ed first: a symlink could point anywhere, so it is refused, not followed."""
    sizes = dict(layout_files(p))
    for name, size in sizes.items():
        if size is None:
            raise BundleError(f"{p}: unsafe entry {name!r} (not a regular file; a symlink?)")
    blobs: dict[str, tuple[int, int]] = {}
    blob_dir = p / "blobs" / "sha256"
    for d in (p / "blobs", blob_dir):
        if d.is_symlink():
            raise BundleError(f"{p}: unsafe entry {str(d.relative_to(p))!r} (symbolic link)")
    if blob_dir.is_dir():
        with os.scandir(blob_dir) as it:
            for e in it:
                if e.is_symlink():
                    raise BundleError(f"{p}: unsafe entry 'blobs/sha256/{e.name}' (symbolic link)")
                if (digest := blob_digest(f"blobs/sha256/{e.name}")) and e.is_file(follow_symlinks=False):
                    blobs[digest] = (0, e.stat(follow_symlinks=False).st_size)
    meta = {name: _bounded(p, name, size, lambda name=name: (p / name).read_bytes())
            for name, size in sizes.items()}
    require_layout(p, meta)
    return BundleReader(p, "dir", blobs, meta)


class MultiBundle:
    """Several bundles read as one source (push BASE DIFF1 DIFF2 …): blobs come from whichever
    holds them; an image named in a later bundle replaces the same name in an earlier one."""

    def __init__(self, readers: list[BundleReader]):
        self.readers = readers
        self.path = readers[-1].path
        named: dict[str, tuple[str | None, Descriptor]] = {}
        unnamed = []
        for r in readers:
            for ref, desc in r.images:
                if ref:
                    named[ref] = (ref, desc)
                else:
                    unnamed.append((ref, desc))
        self.images = list(named.values()) + unnamed

    def _holder(self, digest: str) -> BundleReader:
        for r in reversed(self.readers):
            if r.has(digest):
                return r
        raise BundleError(f"blob {digest} is in none of the bundles given")

    def has(self, digest: str) -> bool:
        return any(r.has(digest) for r in self.readers)

    def size(self, digest: str) -> int:
        return self._holder(digest).size(digest)

    def read(self, digest: str) -> bytes:
        return self._holder(digest).read(digest)

    def open_blob(self, digest: str):
        return self._holder(digest).open_blob(digest)

    def close(self) -> None:
        for r in self.readers:
            r.close()


def open_bundles(paths) -> MultiBundle:
    """Open several bundles as one source; all are closed if one cannot be opened."""
    readers: list[BundleReader] = []
    try:
        for p in paths:
            readers.append(open_bundle(p))
    except BaseException:
        for r in readers:
            r.close()
        raise
    return MultiBundle(readers)
