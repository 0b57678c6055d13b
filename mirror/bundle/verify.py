"""`imgmirror verify`: check a bundle without writing anything, and list every problem found.

One pass (`inventory.py`) reads every byte once and hashes it; the checks here follow: the
layout files, then every reference from index.json and manifest.json. verify never stops at the
first problem: every one is listed.

A problem means the bundle is damaged or unsafe (exit 1). Things that are legal but worth
knowing (a sparse index, a foreign layer, no manifest.json) are warnings (exit 0). A path that
is not a bundle at all raises NotABundleError (exit 2).

A split bundle (`NAME.tar.001`, … or the base name `NAME.tar`) is read as the one stream its
parts make; each part is checked against `NAME.tar.sha256sums`, and a missing or damaged part is
a problem that names it.
"""

from __future__ import annotations

import collections
import contextlib
import json
import stat
from dataclasses import dataclass, field
from pathlib import Path

from ..core.diff import ANN_EXPECTED
from ..core.oci import ANN_SOURCE_DIGEST, MANIFEST_TYPES, Descriptor, json_problem
from ..core.units import human
from ..errors import MirrorError
from .inventory import Inventory, scan_dir, scan_split, scan_tar
from .reader import iter_tree, parse_index
from .tarscan import blob_digest, open_tar, pread, stat_bundle
from .volumes import find_split


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
    trust: list | None = None        # verify --policy/--key: bundle.trustcheck.Judged per image

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
    inv = Inventory(res)
    with contextlib.ExitStack() as stack:
        split = find_split(p) if stream is None else None
        if split is not None:
            if not scan_split(split, str(path), inv, res, stack):
                return res
        elif stream is None and stat.S_ISDIR(stat_bundle(p).st_mode):
            res.kind = "dir"
            scan_dir(p, inv, res)
        else:
            if stream is None:
                stream = stack.enter_context(open_tar(p))
                # A JSON blob not kept while streaming (past KEEP_LIMIT) is read again in place.
                inv.reread = lambda d: pread(stream, inv.sizes[d], inv.offsets[d])
            scan_tar(stream, str(path), inv, res)
        _check(inv, res)
    return res


def _check(inv: Inventory, res: VerifyResult) -> None:
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
    """A differential bundle lists the blobs it expects from its base: those may be absent.
    Not core.diff.read_expected: that raises at the first fault, this names each one."""
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
    elif role == "layer" and d.is_foreign:
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


def _check_docker_manifest(inv: Inventory, res: VerifyResult) -> None:
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
