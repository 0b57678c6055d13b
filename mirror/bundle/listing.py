"""`imgmirror list`: each image of a bundle described for people, read in place."""

from __future__ import annotations

from ..core.oci import ANN_SOURCE_DIGEST, IMAGE_TYPES, Descriptor, image_platform
from ..core.platform import Platform, from_oci
from ..errors import MirrorError
from .reader import IMAGE_CONFIG_TYPES, MAX_READ, BundleReader, iter_tree, open_bundle


def list_bundle(path) -> list[dict]:
    """Each index.json image: reference, digest, media type, platforms, size (its manifests,
    configs and layers in the bundle, each counted once), and "notes" if any. A damaged image
    gets "problem" (and size None) instead of failing the whole listing."""
    with open_bundle(path) as b:
        return [describe(b, ref, desc) for ref, desc in b.images]


def describe(reader: BundleReader, ref: str | None, root: Descriptor) -> dict:
    """An index.json image for people: reference, digest, media type, platforms, and size
    (the manifests, configs and layers of it in the bundle, each counted once).

    Things worth knowing (an artifact's config, a config too big to read) go in "notes".
    A damaged or unsafe image is not raised: its message goes in "problem" (size None), so
    one bad image never hides the others."""
    size, platforms, ask_config, notes = 0, set(), set(), []
    out: dict = {"reference": ref, "digest": root.digest, "media_type": root.media_type}
    try:
        for parent, d in iter_tree(reader, root):
            if not reader.has(d.digest):
                continue
            size += reader.size(d.digest)
            if d.media_type in IMAGE_TYPES and not d.is_attestation:
                # An index child states its platform; a single image only in its config.
                if p := from_oci(d.platform):
                    platforms.add(str(p))
                else:
                    ask_config.add(d.digest)
            elif parent is not None and parent.digest in ask_config and d == parent.config:
                if p := _config_platform(reader, d, notes):
                    platforms.add(str(p))
    except MirrorError as exc:
        out.update(platforms=sorted(platforms), size=None, problem=str(exc))
    else:
        out.update(platforms=sorted(platforms), size=size)
    if source := root.annotations.get(ANN_SOURCE_DIGEST):
        out["source_digest"] = source
    if notes:
        out["notes"] = notes
    return out


def _config_platform(reader: BundleReader, d: Descriptor, notes: list[str]) -> Platform | None:
    """The platform an image config declares. A config is a blob like any other: only an
    image config is read, and only when small; otherwise the platform is unknown, noted."""
    if d.media_type not in IMAGE_CONFIG_TYPES:
        notes.append(f"config is {d.media_type}, not an image config (an artifact): it names "
                     "no platform and is not read")
        return None
    if (size := reader.size(d.digest)) > MAX_READ:
        notes.append(f"config {d.digest} is {size} bytes, over the {MAX_READ >> 20} MiB read to "
                     "learn a platform: platform unknown")
        return None
    try:
        p = from_oci(image_platform(reader.read(d.digest)))
    except (MirrorError, RecursionError) as exc:    # RecursionError: JSON nested [[[[… deep
        why = "JSON nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        notes.append(f"config {d.digest} cannot be read ({why}): platform unknown; "
                     f"run `imgmirror verify {reader.path}`")
        return None
    if p is None:
        notes.append(f"config {d.digest} names no os and architecture: platform unknown")
    return p
