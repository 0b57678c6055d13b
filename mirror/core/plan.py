"""Pure decisions between resolving and downloading: which index children to keep, the rewritten
index, and which blobs an image needs. No I/O here; tested with tables."""

from __future__ import annotations

import json

from ..errors import PlatformError
from .oci import ANN_SOURCE_DIGEST, ATTESTATION_DIGEST, Descriptor, Manifest
from .platform import Platform, from_oci, matches


def describe_platforms(children) -> str:
    """`linux/amd64, linux/arm64` for a message, attestations left out."""
    names = sorted({str(p) for c in children if not c.is_attestation and (p := from_oci(c.platform))})
    return ", ".join(names) or "none declared"


MAX_DEPTH = 8          # index -> index -> … -> image; OCI allows nesting, not without end


def keep_children(children, wanted: tuple[Platform, ...] | None) -> list[Descriptor]:
    """The image children to keep for the wanted platforms, in their original order (maybe none).

    Attestation manifests are kept when the manifest they describe is kept. With no platform
    filter every child is kept."""
    children = list(children)
    if wanted is None:
        return children
    kept = {c.digest for c in children if not c.is_attestation
            and (p := from_oci(c.platform)) is not None and any(matches(w, p) for w in wanted)}
    return [c for c in children
            if c.digest in kept or (c.is_attestation and c.annotations.get(ATTESTATION_DIGEST) in kept)]


def no_match(wanted: tuple[Platform, ...], children, where: str) -> PlatformError:
    """The error for an index none of whose images has a wanted platform."""
    return PlatformError(f"{where}: none of the wanted platforms ({', '.join(map(str, wanted))}) "
                         f"is in this image; it has: {describe_platforms(children)}")


def select_children(index: Manifest, wanted: tuple[Platform, ...] | None, where: str) -> list[Descriptor]:
    """keep_children of a flat index; no match at all is an error listing what the index has."""
    kept = keep_children(index.children, wanted)
    if not kept:
        raise no_match(wanted, index.children, where)
    return kept


def rewrite_index(index: Manifest, kept: list[Descriptor], replaced: dict[str, bytes] | None = None) -> bytes:
    """A new index holding only the kept children, each descriptor's bytes exactly as received.

    The original bytes are cut, never re-serialised: what was between the children, the order of
    keys, escapes and spacing all stay. `replaced` gives new descriptor bytes for a child whose own
    index was rewritten (nested indexes). The original digest is recorded in the new index's
    annotations (`io.imgmirror.source.digest`), so it survives a push."""
    raw, replaced = index.raw, replaced or {}
    top = object_members(raw, _skip_ws(raw, 0))
    members = {key: (k0, v0, v1) for key, k0, v0, v1 in top.members}
    _, arr_start, arr_end = members["manifests"]
    items = array_items(raw, arr_start)
    keep = {c.digest for c in kept}
    chosen = [replaced.get(d, raw[start:end]) for d, (start, end) in zip(_digests(raw, items), items, strict=True)
              if d in keep]
    # the separator the original used between two children (",\n    " when pretty-printed)
    sep = raw[items[0][1]:items[1][0]] if len(items) > 1 else b","
    head = raw[arr_start + 1:items[0][0]] if items else b""
    tail = raw[items[-1][1]:arr_end - 1] if items else b""
    array = b"[" + head + sep.join(chosen) + tail + b"]"
    ann = json.dumps({ANN_SOURCE_DIGEST: index.digest}, separators=(",", ":")).encode()
    edits = [(arr_start, arr_end, array)]
    if "annotations" in members and raw[members["annotations"][1]:members["annotations"][1] + 1] == b"{":
        _, a_start, _ = members["annotations"]
        a = object_members(raw, a_start)
        old = [m for m in a.members if m[0] == ANN_SOURCE_DIGEST]
        if old:       # an index imgmirror rewrote before: record this one's digest instead
            edits.append((old[0][2], old[0][3], json.dumps(index.digest).encode()))
        else:
            edits.append((a.end - 1, a.end - 1, (b"," if a.members else b"") + ann[1:-1]))
    elif "annotations" in members:        # null: give it a value
        _, a_start, a_end = members["annotations"]
        edits.append((a_start, a_end, ann))
    else:
        edits.append((top.end - 1, top.end - 1, (b"," if top.members else b"") + b'"annotations":' + ann))
    out = raw
    for start, end, text in sorted(edits, reverse=True):
        out = out[:start] + text + out[end:]
    return out


def _digests(raw: bytes, items) -> list:
    return [json.loads(raw[start:end]).get("digest") for start, end in items]


def child_spans(raw: bytes) -> dict[str, tuple[int, int]]:
    """Where each child's descriptor stands in an index's bytes: digest -> (start, end)."""
    top = object_members(raw, _skip_ws(raw, 0))
    start = next(v0 for key, _, v0, _ in top.members if key == "manifests")
    items = array_items(raw, start)
    return dict(zip(_digests(raw, items), items, strict=True))


def replace_members(raw: bytes, values: dict[str, object]) -> bytes:
    """A JSON object's bytes with the values of some members replaced, all else as it was."""
    obj = object_members(raw, _skip_ws(raw, 0))
    out = raw
    for key, _, v0, v1 in sorted(obj.members, key=lambda m: m[2], reverse=True):
        if key in values:
            out = out[:v0] + json.dumps(values[key]).encode() + out[v1:]
    return out


# --- where things are in JSON bytes -------------------------------------------------------------
class _Object:
    def __init__(self, members, end):
        self.members, self.end = members, end    # [(key, key_start, value_start, value_end)], past '}'


_WS = b" \t\r\n"


def _skip_ws(raw: bytes, i: int) -> int:
    while i < len(raw) and raw[i] in _WS:
        i += 1
    return i


def _skip_string(raw: bytes, i: int) -> int:
    """Past the closing quote of the string starting at raw[i] == '"'."""
    i += 1
    while True:
        c = raw[i]
        if c == 0x5C:          # backslash: the next byte is escaped
            i += 2
        elif c == 0x22:
            return i + 1
        else:
            i += 1


def _skip_value(raw: bytes, i: int) -> int:
    c = raw[i:i + 1]
    if c == b'"':
        return _skip_string(raw, i)
    if c == b"{":
        return object_members(raw, i).end
    if c == b"[":
        items = array_items(raw, i)
        return _skip_ws(raw, items[-1][1] if items else i + 1) + 1
    while i < len(raw) and raw[i:i + 1] not in (b",", b"}", b"]") and raw[i] not in _WS:
        i += 1
    return i


def object_members(raw: bytes, i: int) -> _Object:
    """The members of the JSON object starting at raw[i] == '{' (valid JSON assumed)."""
    members = []
    i = _skip_ws(raw, i + 1)
    if raw[i:i + 1] == b"}":
        return _Object(members, i + 1)
    while True:
        k0 = i
        k1 = _skip_string(raw, i)
        v0 = _skip_ws(raw, _skip_ws(raw, k1) + 1)       # past the ':'
        v1 = _skip_value(raw, v0)
        members.append((json.loads(raw[k0:k1]), k0, v0, v1))
        i = _skip_ws(raw, v1)
        if raw[i:i + 1] == b"}":
            return _Object(members, i + 1)
        i = _skip_ws(raw, i + 1)                        # past the ','


def array_items(raw: bytes, i: int) -> list[tuple[int, int]]:
    """(start, end) of each item of the JSON array starting at raw[i] == '['."""
    items = []
    i = _skip_ws(raw, i + 1)
    if raw[i:i + 1] == b"]":
        return items
    while True:
        end = _skip_value(raw, i)
        items.append((i, end))
        i = _skip_ws(raw, end)
        if raw[i:i + 1] == b"]":
            return items
        i = _skip_ws(raw, i + 1)


def blobs_of(image: Manifest) -> tuple[list[Descriptor], list[Descriptor]]:
    """An image manifest's blobs to fetch, and its foreign layers (not fetched, reported)."""
    fetch, foreign = [], []
    for d in image.blobs:
        (foreign if d.is_foreign else fetch).append(d)
    return fetch, foreign
