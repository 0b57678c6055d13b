"""`imgmirror verify` and `imgmirror list`: check and describe a bundle without writing anything.

verify reads a tar once, front to back, as a stream (so `imgmirror verify -` can check a tar
while it is being copied): it hashes every blob as it passes and the whole tar as well, and
keeps in memory only the small JSON blobs (manifests, configs) it needs for the reference
checks done at the end. It never stops at the first problem: every one is listed.

A problem means the bundle is damaged or unsafe (exit 1). Things that are legal but worth
knowing (a sparse index, a foreign layer, no manifest.json) are warnings (exit 0). A path that
is not a bundle at all raises NotABundleError (exit 2).

A split bundle (`NAME.tar.001`, … or the base name `NAME.tar`) is read as the one stream its
parts make; each part is hashed on the way too and checked against `NAME.tar.sha256sums`, and a
missing or damaged part is a problem that names it.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import os
import stat
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from .reader import (END_OF_ARCHIVE, MAX_READ, META_LIMITS, blob_digest, check_member, compression_of,
                          iter_tree, not_a_bundle, open_bundle, open_tar, parse_index, stat_bundle)
from ..errors import BundleError, MirrorError, NotABundleError
from .volumes import PartsFile, SplitBundle, find_split
from ..core.diff import ANN_EXPECTED
from ..core.oci import ANN_SOURCE_DIGEST, MANIFEST_TYPES, Descriptor, json_problem, sha256_digest
from ..core.plan import FOREIGN_LAYER_TYPES
from ..core.units import human

CHUNK = 1 << 20
KEEP_LIMIT = 256 << 20      # JSON blobs held for the reference checks; past this, re-read them


@dataclass
class VerifyResult:
    """What verify found; `problems` empty means the bundle is sound."""

    path: str
    kind: str = "tar"
    images: int = 0
    blobs: int = 0
    bytes: int = 0
    size: int | None = None          # the tar's size
    sha256: str | None = None        # the tar's sha256 (None for a directory)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    parts: list[str] = field(default_factory=list)     # a split bundle's parts, in order
    expected: dict[str, int] = field(default_factory=dict)   # a differential bundle's, from its base
    base_carried: set[str] | None = None   # verify --base: what the bases given hold
    base_promised: set[str] = field(default_factory=set)   # …and only expect from theirs

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        """One line: verdict, counts and the tar's digest."""
        verdict = "ok" if self.ok else f"{len(self.problems)} problem{'s' * (len(self.problems) != 1)}"
        tail = f"; tar {human(self.size or 0)}, {self.sha256}" if self.sha256 else ""
        if self.parts:
            tail += f"; {len(self.parts)} parts"
        if self.expected:
            tail += f"; differential: {len(self.expected)} blobs expected from its base"
        return (f"{self.path}: {verdict}: {self.images} images, {self.blobs} blobs, "
                f"{human(self.bytes)}{tail}")


class _Inventory:
    """The blobs one pass saw: sizes, the corrupt ones, and the small JSON ones kept to walk."""

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


def _scan_split(split: SplitBundle, where: str, inv: _Inventory, res: VerifyResult,
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
    inv.reread = lambda d: fh.pread(inv.sizes[d], inv.offsets[d])
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
        _scan_tar(stream, where, inv, res)
    except NotABundleError:
        damaged = check_parts()
        if not damaged and len(res.problems) == problems_before and not missing:
            raise
        res.problems[problems_before:problems_before] = damaged
        return False
    # The parts first: they say where to look; the tar's own problems follow.
    res.problems[problems_before:problems_before] = check_parts()
    return True


def _scan_tar(src, where: str, inv: _Inventory, res: VerifyResult) -> None:
    hs = _HashingSource(src)
    if kind := compression_of(hs.pending[:8]):
        raise not_a_bundle(where, f"it is {kind}-compressed; decompress it first")
    try:
        tf = tarfile.open(fileobj=hs, mode="r|", bufsize=CHUNK)
    except tarfile.ReadError as exc:
        raise not_a_bundle(where, f"not a tar archive ({exc})") from None
    seen, last, current = set(), None, None
    try:
        for m in tf:
            current = m.name
            name, unsafe = check_member(m)
            if unsafe:
                res.problems.append(f"{m.name}: unsafe entry ({unsafe}); a bundle never holds one")
            elif name in seen and not m.isdir():
                res.problems.append(f"{name}: appears twice in the tar (readers disagree on which counts)")
            elif m.isreg():
                seen.add(name)
                if digest := blob_digest(name):
                    inv.consume(name, digest, tf.extractfile(m), m.size, m.offset_data)
                elif name in META_LIMITS and m.size > META_LIMITS[name]:
                    res.problems.append(f"{name}: {m.size} bytes, more than a real one could need")
                elif name in META_LIMITS:
                    inv.meta[name] = tf.extractfile(m).read()
                else:
                    res.warnings.append(f"{name}: unexpected entry (ignored)")
            last, current = name, None
    except tarfile.ReadError as exc:
        res.problems.append(f"{current or last}: the tar ends inside this entry, at byte {hs.total} "
                            f"(truncated: {exc})")
    else:
        tail = hs.tail_from(tf.offset, len(END_OF_ARCHIVE))
        if tail is None or tail != END_OF_ARCHIVE:
            res.problems.append(
                f"the tar has no end-of-archive marker after {last!r}: truncated after that entry"
                if tail is not None and len(tail) < len(END_OF_ARCHIVE) and not tail.strip(b"\0")
                else f"invalid tar header at byte {tf.offset}, after {last!r}: nothing after it can "
                     "be read (damaged tar)")
    hs.drain()
    res.size, res.sha256 = hs.total, "sha256:" + hs.hash.hexdigest()
    _require_layout(where, inv, res)


def _require_layout(where: str, inv: _Inventory, res: VerifyResult) -> None:
    """A sound tar or directory without the layout files is not a bundle (exit 2); a damaged
    one whose index.json was lost is a bundle with problems (exit 1)."""
    missing = [n for n in ("oci-layout", "index.json") if n not in inv.meta]
    if missing and not res.problems:
        raise not_a_bundle(where, f"no {' or '.join(missing)}")


def _scan_dir(p: Path, inv: _Inventory, res: VerifyResult) -> None:
    for name in META_LIMITS:
        try:
            st = os.lstat(p / name)
        except FileNotFoundError:
            continue
        if not stat.S_ISREG(st.st_mode):
            res.problems.append(f"{name}: unsafe entry (not a regular file; a symlink?)")
        elif st.st_size > META_LIMITS[name]:
            res.problems.append(f"{name}: {st.st_size} bytes, more than a real one could need")
        else:
            inv.meta[name] = (p / name).read_bytes()
    _require_layout(str(p), inv, res)
    inv.reread = lambda d: (p / "blobs" / "sha256" / d.split(":", 1)[1]).read_bytes()
    if os.path.lexists(p / "blobs"):
        _scan_tree(p, "blobs", inv, res)


def _scan_tree(root: Path, rel: str, inv: _Inventory, res: VerifyResult) -> None:
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


def verify_bundle(path, stream=None, bases=()) -> VerifyResult:
    """Check a bundle tar or layout directory; `stream` reads a tar from that binary file object
    instead (`path` then only names it). NotABundleError if it is not a bundle at all. For a
    differential bundle, `bases` (earlier bundles) must between them carry what it expects."""
    res, p = VerifyResult(str(path)), Path(path)
    if bases:
        from .base import load_base
        loaded = [load_base(str(b)) for b in bases]
        # what the bases hold themselves; a blob a base only expects from its own base is not there
        res.base_carried = set().union(*(b.held if b.held is not None else b.carried for b in loaded))
        res.base_promised = set().union(*(b.carried for b in loaded)) - res.base_carried
    inv = _Inventory(res)
    with contextlib.ExitStack() as stack:
        split = find_split(p) if stream is None else None
        if split is not None:
            if not _scan_split(split, str(path), inv, res, stack):
                return res
        elif stream is None and stat.S_ISDIR(stat_bundle(p).st_mode):
            res.kind = "dir"
            _scan_dir(p, inv, res)
        else:
            if stream is None:
                stream = stack.enter_context(open_tar(p))
                # A JSON blob not kept while streaming (past KEEP_LIMIT) is read again in place.
                inv.reread = lambda d: os.pread(stream.fileno(), inv.sizes[d], inv.offsets[d])
            _scan_tar(stream, str(path), inv, res)
        _check(inv, res)
    return res


def _check(inv: _Inventory, res: VerifyResult) -> None:
    """The layout files, then every reference from index.json and manifest.json."""
    res.blobs, res.bytes = len(inv.sizes), sum(inv.sizes.values())
    _check_layout(inv.meta.get("oci-layout"), res)
    images: list[tuple[str | None, Descriptor]] = []
    if "index.json" not in inv.meta:
        res.problems.append("index.json: missing")
    else:
        try:
            images = parse_index(inv.meta["index.json"])[1]
        except MirrorError as exc:
            res.problems.append(str(exc))
    res.images = len(images)
    _check_differential(inv, res)
    refs = collections.Counter(ref for ref, _ in images if ref)
    res.problems += [f"index.json: {ref} appears {n} times" for ref, n in refs.items() if n > 1]
    checked: set[str] = set()
    sparse: dict[str, tuple] = {}
    reported: set[tuple[str, str]] = set()
    for i, (ref, root) in enumerate(images):
        label = ref or f"index.json manifests[{i}]"
        if root.media_type not in MANIFEST_TYPES:
            res.warnings.append(f"{label}: media type {root.media_type!r} is not an image or index; "
                                "not checked")
            continue

        def on_error(digest: str, message: str, label=label) -> None:
            if digest not in inv.bad and (digest, message) not in reported:  # bad: said already
                reported.add((digest, message))
                res.problems.append(f"{label}: {message}")

        for parent, d in iter_tree(inv, root, on_error):
            if d.digest not in checked:
                checked.add(d.digest)
                _check_present(inv, res, label, parent, d, sparse)
    for label, index, missing in sparse.values():
        if not any(inv.has(c.digest) for c in index.children if not c.is_attestation):
            res.problems.append(f"{label}: none of the manifests of index {index.digest} is in the bundle")
        else:
            res.warnings.append(
                f"{label}: index {index.digest} is sparse: {missing} of its {len(index.children)} "
                "manifests are not in the bundle (as keep_index_digest: true writes it); some "
                "registries refuse to store such an index")
    _check_docker_manifest(inv, res)


def _check_differential(inv, res: VerifyResult) -> None:
    """A differential bundle lists the blobs it expects from its base: those may be absent."""
    try:
        annotations = json.loads(inv.meta["index.json"]).get("annotations") or {}
    except (KeyError, ValueError, AttributeError, RecursionError):
        return
    digest = annotations.get(ANN_EXPECTED)
    if not digest:
        return
    if not inv.has(digest):
        res.problems.append(f"index.json: the list of blobs expected from the base ({digest}) is not "
                            "in the bundle")
        return
    try:
        res.expected = {b["digest"]: int(b["size"]) for b in json.loads(inv.read(digest))["blobs"]}
    except (ValueError, KeyError, TypeError, MirrorError, RecursionError):
        res.problems.append(f"index.json: the list of blobs expected from the base ({digest}) is damaged")
        return
    if res.base_carried is not None:
        absent = sorted(set(res.expected) - res.base_carried)
        promised = [d for d in absent if d in res.base_promised]
        missing = [d for d in absent if d not in res.base_promised]
        if missing:
            res.problems.append(f"{len(missing)} blobs this differential bundle expects are in none of "
                                f"the bases given: {', '.join(missing)}")
        if promised:
            res.problems.append(f"{len(promised)} blobs this differential bundle expects are not in the "
                                "bases given, which themselves expect them from their own bases: "
                                f"{', '.join(promised)}; give those too (--base OLDER, repeated for a chain)")


def _check_present(inv, res: VerifyResult, label: str, parent, d: Descriptor, sparse: dict) -> None:
    """One reachable descriptor: present with the size it states, or legitimately absent."""
    if parent is None:
        role = "manifest"
    elif parent.is_index:
        role = "child manifest"
    else:
        role = "config" if d == parent.config else "layer"
    if d.digest in inv.bad:
        res.problems[inv.bad[d.digest]] += f"; it is a {role} of {label}"
    if inv.has(d.digest):
        if inv.sizes[d.digest] != d.size:
            res.problems.append(f"{label}: {role} {d.digest} has {inv.sizes[d.digest]} bytes, its "
                                f"descriptor says {d.size}")
    elif role == "child manifest" and ANN_SOURCE_DIGEST not in parent.annotations:
        # Only an index kept byte for byte may lack children: sync's rewritten ones never do.
        entry = sparse.setdefault(parent.digest, (label, parent, 0))
        sparse[parent.digest] = (entry[0], entry[1], entry[2] + 1)
    elif d.digest in res.expected:
        if res.expected[d.digest] != d.size:
            res.problems.append(f"{label}: {role} {d.digest} is expected from the base with "
                                f"{res.expected[d.digest]} bytes, its descriptor says {d.size}")
    elif role == "layer" and (d.urls or d.media_type in FOREIGN_LAYER_TYPES):
        res.warnings.append(f"{label}: foreign layer {d.digest} is not in the bundle (whoever pulls "
                            "the image fetches it from its own URLs)")
    else:
        res.problems.append(f"{label}: {role} {d.digest} is not in the bundle")


def _check_layout(raw: bytes | None, res: VerifyResult) -> None:
    if raw is None:
        res.problems.append("oci-layout: missing")
        return
    try:
        version = json.loads(raw).get("imageLayoutVersion")
    except (ValueError, AttributeError, RecursionError):
        res.problems.append("oci-layout: not a JSON object")
        return
    if not (isinstance(version, str) and version.startswith("1.")):
        res.problems.append(f"oci-layout: imageLayoutVersion is {version!r}, expected \"1.0.0\"")


def _check_docker_manifest(inv: _Inventory, res: VerifyResult) -> None:
    """manifest.json (classic docker load): every Config and Layers path names a present blob."""
    raw = inv.meta.get("manifest.json")
    if raw is None and "index.json" in inv.meta:      # else the tar is broken: said already
        res.warnings.append("no manifest.json: classic `docker load` cannot read this bundle")
    if raw is None:
        return
    try:
        entries = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        res.problems.append(f"manifest.json: not valid JSON ({json_problem(exc)})")
        return
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        res.problems.append("manifest.json: not a list of objects")
        return
    for i, e in enumerate(entries):
        tags = e.get("RepoTags")
        label = f"manifest.json[{i}]" + (f" ({tags[0]})" if isinstance(tags, list) and tags else "")
        layers = e.get("Layers")
        if not isinstance(layers, list):
            res.problems.append(f"{label}: no Layers list")
            layers = []
        for key, path in [("Config", e.get("Config")), *(("Layers", x) for x in layers)]:
            digest = blob_digest(path) if isinstance(path, str) else None
            if digest is None:
                res.problems.append(f"{label}: {key} {path!r} is not a blobs/sha256/ path")
            elif not inv.has(digest):
                res.problems.append(f"{label}: {key} {path} is not in the bundle")


def list_bundle(path) -> list[dict]:
    """Each index.json image: reference, digest, media type, platforms, size (its manifests,
    configs and layers in the bundle, each counted once), and "notes" if any. A damaged image
    gets "problem" (and size None) instead of failing the whole listing."""
    with open_bundle(path) as b:
        return [b.describe(ref, desc) for ref, desc in b.images]
