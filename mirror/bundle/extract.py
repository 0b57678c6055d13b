"""`imgmirror extract`: one image of a bundle as a single-image OCI archive.

Why: `podman load` of a bundle with more than one image gives up on `index.json` ("more than one
image in oci, choose an image"), falls back to `manifest.json` and stores manifests of its own
making, so pulls by the registry's digest fail. An archive holding one image goes through
podman's OCI path and keeps every digest.

The archive is a bundle tar of one image, written by the bundle's own `TarWriter` (the same
deterministic format, under a temporary name beside the target, renamed at the end):
`oci-layout`; exactly the blobs the image references (its index and manifests, configs, layers),
byte for byte, each hashed while it is copied; `index.json` with the bundle's entry for the image
copied unchanged (descriptor and annotations, `io.containerd.image.name` and
`org.opencontainers.image.ref.name` included); and `manifest.json` for classic `docker load`
when the image has a Linux platform to offer it.

Several bundles are read as one, as `push` reads them (`BASE DIFF1 DIFF2 …`), so an image of a
differential bundle can be extracted whole with its base given first.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .writer import BundleContent, BundleImage, LoadEntry, TarWriter, _json, blob_order
from .reader import IMAGE_CONFIG_TYPES, MAX_READ, iter_tree, open_bundle, open_bundles
from ..core.diff import read_expected
from ..errors import BundleError, DigestMismatchError, MirrorError, UsageError
from ..core.oci import (ANN_REF_NAME, ANN_SOURCE_DIGEST, IMAGE_TYPES, INDEX_TYPES, MANIFEST_TYPES, OCI_INDEX,
                  Descriptor, image_platform, parse_manifest)
from ..core.platform import Platform, from_oci, matches, parse_platform
from ..core.reference import parse_reference

DEFAULT_LOAD_PLATFORM = "linux/amd64"      # as sync's load_platform default


class _OneImage(BundleContent):
    """A bundle's content with one image whose index.json entry is copied as the bundle has it
    (BundleContent.index_json would rebuild it, dropping annotations it does not know)."""

    def __init__(self, entry: dict, image: BundleImage, blobs: dict[str, int]):
        super().__init__(images=[image], blobs=blobs)
        self.entry = entry

    def index_json(self) -> bytes:
        return _json({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [self.entry]})


def _add_from(writer: TarWriter, source, digest: str, size: int) -> None:
    """Append one blob read from `source`, hashed on the way; DigestMismatchError (and the caller
    aborts the archive) if its bytes are not what its name says."""
    where = getattr(source, "path", "the bundle")
    try:
        with source.open_blob(digest) as src:
            got = writer.add_stream(src, digest, size)
    except OSError as exc:
        raise writer.error(exc) from None
    except BundleError as exc:
        raise BundleError(f"{where}: {exc} (truncated bundle?); run `imgmirror verify {where}`") from None
    if got != digest:
        raise DigestMismatchError(f"{where}: blob {digest} is damaged (its bytes hash to {got}); "
                                  f"nothing was written; run `imgmirror verify {where}` for details")


def find_image(images: list[tuple[str | None, Descriptor]], wanted: str) -> tuple[str, Descriptor]:
    """The index.json image `wanted` names: its exact ref name, or a short form that normalises
    to one (`alpine:3.19`, `alpine` = `…:latest`), or `NAME@DIGEST` of a tagged image.
    UsageError listing the names there are if none matches, or if several do."""
    named = {ref: desc for ref, desc in images if ref}
    if wanted in named:
        return wanted, named[wanted]
    candidates: list[str] = []
    try:
        r = parse_reference(wanted)
    except MirrorError:
        r = None
    if r is not None:
        full = str(r) if (r.tag or r.digest) else f"{r}:latest"
        if full in named:
            return full, named[full]
        if r.digest:     # an image kept under a tag, asked for by its digest (or the registry's)
            candidates = sorted(ref for ref, desc in named.items()
                                if _repo(ref) == r.name and r.digest in
                                (desc.digest, desc.annotations.get(ANN_SOURCE_DIGEST)))
    if len(candidates) == 1:
        return candidates[0], named[candidates[0]]
    listing = "\n  ".join(sorted(named)) or "(none: no index.json entry has a ref name)"
    if candidates:
        raise UsageError(f"{wanted} is more than one image of the bundle: {', '.join(candidates)}; "
                         "name one of them")
    raise UsageError(f"no image {wanted!r} in the bundle; it holds:\n  {listing}")


def _repo(ref: str) -> str | None:
    try:
        return parse_reference(ref).name
    except MirrorError:
        return None


def _raw_entry(reader, ref: str) -> dict:
    """The index.json entry (as a JSON object, unchanged) of the image named `ref`: from the last
    bundle naming it, as MultiBundle chooses."""
    for r in reversed(getattr(reader, "readers", [reader])):
        for entry in r.index["manifests"]:
            if (entry.get("annotations") or {}).get(ANN_REF_NAME) == ref:
                return entry
    raise BundleError(f"{reader.path}: index.json has no entry named {ref}")   # find_image found it


def _collect(reader, root: Descriptor) -> tuple[dict[str, int], list[str]]:
    """(digest -> size of every blob of the image the bundles hold, notes). Blobs absent on
    purpose (a foreign layer, a sparse index's child) are noted; any other absent blob is an
    error naming it, and saying to give the base bundle when a differential bundle expected it."""
    blobs: dict[str, int] = {}
    notes: list[str] = []
    missing: list[str] = []
    for parent, d in iter_tree(reader, root):
        if reader.has(d.digest):
            blobs[d.digest] = reader.size(d.digest)
        elif d.urls:
            notes.append(f"foreign layer {d.digest} is not in the bundle (its registry serves it from "
                         f"{d.urls[0]}); the archive leaves it out too")
        elif d.media_type in MANIFEST_TYPES and parent is not None:
            notes.append(f"child manifest {d.digest} ({_platform_text(d)}) is not in the bundle (a "
                         "filtered index that keeps its digest); the archive is as sparse")
        else:
            missing.append(d.digest)
    if missing:
        expected = set()
        for r in getattr(reader, "readers", [reader]):
            expected |= set(read_expected(r))
        names = ", ".join(missing)
        if set(missing) <= expected:
            paths = " ".join(str(r.path) for r in getattr(reader, "readers", [reader]))
            raise BundleError(f"{reader.path} is a differential bundle: blob{'s' * (len(missing) > 1)} "
                              f"{names} of this image {'are' if len(missing) > 1 else 'is'} in its base "
                              f"bundle; extract from the base, or give the base first: "
                              f"`imgmirror extract BASE.tar {paths} REF -o OUT.tar`")
        raise BundleError(f"{reader.path}: blob{'s' * (len(missing) > 1)} {names} of this image "
                          f"{'are' if len(missing) > 1 else 'is'} not in the bundle; run "
                          f"`imgmirror verify {reader.path}` for details")
    return blobs, notes


def _platform_text(d: Descriptor) -> str:
    p = from_oci(d.platform)
    return str(p) if p else "no platform"


def _bundle_load_entry(reader, ref: str, blobs: dict[str, int]) -> LoadEntry | None:
    """The bundle's own manifest.json entry for `ref` (what sync chose with mirror.yaml's
    load_platform), if there is one and it points at blobs of this image."""
    for r in reversed(getattr(reader, "readers", [reader])):
        try:
            entries = json.loads(r.manifest_json_raw or b"[]")
        except ValueError:
            continue
        for e in entries if isinstance(entries, list) else ():
            if not isinstance(e, dict) or ref not in (e.get("RepoTags") or ()):
                continue
            try:
                config = "sha256:" + str(e["Config"]).removeprefix("blobs/sha256/")
                layers = tuple("sha256:" + str(x).removeprefix("blobs/sha256/") for x in e["Layers"])
            except (KeyError, TypeError):
                continue
            if all(d in blobs for d in (config, *layers)):
                return LoadEntry(config=config, layers=layers)
    return None


def _load_entry(reader, root: Descriptor, blobs: dict[str, int], wanted: Platform) -> LoadEntry | None:
    """The docker-load view of the image for one Linux platform, as sync makes it: the index
    child (or the single image) for `wanted`, if its config and every layer are in the archive."""
    choices: list[tuple[Platform | None, Descriptor]] = []
    if root.media_type in IMAGE_TYPES:
        choices.append((None, root))
    elif root.media_type in INDEX_TYPES:
        index = parse_manifest(reader.read(root.digest), root.media_type, f"manifest {root.digest}")
        choices += [(from_oci(c.platform), c) for c in index.children
                    if c.media_type in IMAGE_TYPES and not c.is_attestation and c.digest in blobs]
    for platform, d in choices:
        m = parse_manifest(reader.read(d.digest), d.media_type, f"manifest {d.digest}")
        if m.config is None or not all(x.digest in blobs for x in m.blobs):
            continue
        if platform is None:      # a single image names its platform only in its config
            if m.config.media_type not in IMAGE_CONFIG_TYPES or blobs[m.config.digest] > MAX_READ:
                continue
            platform = from_oci(image_platform(reader.read(m.config.digest)))
        if platform is not None and platform.os == "linux" and matches(wanted, platform):
            return LoadEntry(config=m.config.digest, layers=tuple(x.digest for x in m.layers))
    return None


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def extract(bundles: list, ref: str, output, load_platform: str | None = None) -> dict:
    """Write the image `ref` of `bundles` (one, or a base and its differential bundles) as a
    single-image OCI archive at `output`. Returns what was written: path, reference, digest,
    blobs, size, sha256 of the archive, whether manifest.json has an entry, and notes."""
    if not bundles:
        raise UsageError("give a bundle to extract from")
    try:
        wanted = parse_platform(load_platform) if load_platform else None
    except MirrorError as exc:
        raise UsageError(f"--load-platform: {exc}") from None
    target = Path(output)
    if target.is_dir() or str(output).endswith("/"):
        raise UsageError(f"-o {output}: give the archive's file name (e.g. image.tar), not a directory")
    reader = open_bundles(bundles) if len(bundles) > 1 else open_bundle(bundles[0])
    try:
        for r in getattr(reader, "readers", [reader]):
            for p in [r.path, *r.parts]:
                if _same_file(p, target):
                    raise UsageError(f"-o {output} is the bundle {p} being read; choose another name")
        name, root = find_image(reader.images, ref)
        entry = _raw_entry(reader, name)
        blobs, notes = _collect(reader, root)
        load = None
        tag = None
        try:
            tag = parse_reference(name).tag
        except MirrorError:
            notes.append(f"{name!r} is not a full image reference: no manifest.json entry for docker load")
        if tag:
            load = None if wanted else _bundle_load_entry(reader, name, blobs)
            load = load or _load_entry(reader, root, blobs, wanted or parse_platform(DEFAULT_LOAD_PLATFORM))
            if load is None:
                notes.append(f"no {wanted or DEFAULT_LOAD_PLATFORM} image with all its layers: manifest.json "
                             "is empty, so classic `docker load` cannot read the archive (podman load, "
                             "ctr import and skopeo can)")
        content = _OneImage(entry, BundleImage(ref_name=name, descriptor=root, load=load, tag=tag), blobs)
        writer = TarWriter(target)
        try:
            for digest in blob_order(blobs):
                _add_from(writer, reader, digest, blobs[digest])
            size, sha = writer.finish(content)
        finally:
            writer.abort()       # after finish() there is nothing left to drop
    finally:
        reader.close()
    return {"path": str(target), "reference": name, "digest": root.digest, "media_type": root.media_type,
            "blobs": len(blobs), "bytes": sum(blobs.values()), "size": size, "sha256": sha,
            "docker_load": load is not None, "notes": notes}
