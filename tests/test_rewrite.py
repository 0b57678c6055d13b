"""The rewritten index keeps each kept descriptor's bytes exactly as received (issue 8.4):
tables over the pure core, no I/O."""

from __future__ import annotations

import json

import pytest

from mirror.core.oci import ANN_SOURCE_DIGEST, OCI_INDEX, parse_manifest, sha256_digest
from mirror.core.plan import child_spans, object_members, replace_members, rewrite_index

D = ["sha256:" + c * 64 for c in "abcdef"]


def _desc(i: int, arch: str, **extra) -> dict:
    return {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": D[i], "size": 100 + i,
            "platform": {"architecture": arch, "os": "linux"}, **extra}


NON_ASCII = {"org.opencontainers.image.title": "café – naïve ✓", "quote": 'a "b" \\ } ] , {'}

INDEXES = {
    "compact, non-ASCII kept as UTF-8": json.dumps(
        {"schemaVersion": 2, "mediaType": OCI_INDEX,
         "manifests": [_desc(0, "amd64", annotations=NON_ASCII), _desc(1, "arm64"), _desc(2, "s390x")]},
        ensure_ascii=False, separators=(",", ":")).encode(),
    "escaped \\u sequences stay escaped": json.dumps(
        {"schemaVersion": 2, "mediaType": OCI_INDEX,
         "manifests": [_desc(0, "amd64", annotations=NON_ASCII), _desc(1, "arm64")]}).encode(),
    "pretty-printed, with annotations": json.dumps(
        {"schemaVersion": 2, "mediaType": OCI_INDEX,
         "manifests": [_desc(1, "arm64"), _desc(0, "amd64", annotations=NON_ASCII), _desc(2, "ppc64le")],
         "annotations": {"org.example": "x"}}, indent=3, ensure_ascii=False).encode(),
    "annotations null, keys out of the usual order": (
        b'{"manifests" :[ ' + json.dumps(_desc(0, "amd64"), sort_keys=True).encode() + b' , '
        + json.dumps(_desc(3, "arm64")).encode() + b' ], "annotations": null ,"schemaVersion":2}'),
    "empty annotations, already rewritten once": json.dumps(
        {"schemaVersion": 2, "manifests": [_desc(0, "amd64"), _desc(4, "arm64")],
         "annotations": {ANN_SOURCE_DIGEST: D[5]}}).encode(),
    "empty annotations object": json.dumps(
        {"schemaVersion": 2, "manifests": [_desc(0, "amd64"), _desc(4, "arm64")], "annotations": {}}).encode(),
}


def _spans(raw: bytes) -> dict[str, bytes]:
    return {d: raw[s:e] for d, (s, e) in child_spans(raw).items()}


@pytest.mark.parametrize("name", INDEXES)
def test_kept_descriptors_are_byte_for_byte_the_originals(name):
    raw = INDEXES[name]
    index = parse_manifest(raw, OCI_INDEX, name)
    kept = [c for c in index.children if c.digest == D[0]]
    out = rewrite_index(index, kept)
    doc, orig = json.loads(out), json.loads(raw)
    # the kept child, and nothing else, with its bytes as received
    assert [c["digest"] for c in doc["manifests"]] == [D[0]]
    assert _spans(out)[D[0]] == _spans(raw)[D[0]]
    # every other member unchanged; the source digest recorded
    assert {k: v for k, v in doc.items() if k not in ("manifests", "annotations")} == \
           {k: v for k, v in orig.items() if k not in ("manifests", "annotations")}
    assert doc["annotations"] == {**(orig.get("annotations") or {}), ANN_SOURCE_DIGEST: index.digest}
    assert b"\\u" not in out or b"\\u" in raw
    keys = [m[0] for m in object_members(out, out.index(b"{")).members]
    assert keys.count("annotations") == 1


def test_two_kept_children_keep_the_original_separator():
    raw = INDEXES["pretty-printed, with annotations"]
    index = parse_manifest(raw, OCI_INDEX, "x")
    out = rewrite_index(index, [c for c in index.children if c.digest in (D[0], D[1])])
    spans = _spans(raw)
    assert spans[D[1]] + b",\n" + b" " * 6 + spans[D[0]] in out


def test_a_replaced_child_gets_its_new_digest_and_size_and_nothing_else_changes():
    raw = INDEXES["compact, non-ASCII kept as UTF-8"]
    index = parse_manifest(raw, OCI_INDEX, "x")
    new = replace_members(_spans(raw)[D[0]], {"digest": D[5], "size": 7})
    out = rewrite_index(index, [index.children[0]], {D[0]: new})
    child = json.loads(out)["manifests"][0]
    assert child == {**json.loads(_spans(raw)[D[0]]), "digest": D[5], "size": 7}
    assert NON_ASCII["org.opencontainers.image.title"].encode() in out


@pytest.mark.parametrize("text, values, expected", [
    (b'{"a": 1, "b" :"x"}', {"b": "y"}, b'{"a": 1, "b" :"y"}'),
    (b'{ "size":10,"digest":"sha256:1"}', {"size": 22, "digest": "sha256:2"}, b'{ "size":22,"digest":"sha256:2"}'),
    (b'{"n":{"size":1},"size":3}', {"size": 4}, b'{"n":{"size":1},"size":4}'),
])
def test_replace_members(text, values, expected):
    assert replace_members(text, values) == expected


def test_rewritten_digest_is_of_the_bytes_written():
    raw = INDEXES["escaped \\u sequences stay escaped"]
    index = parse_manifest(raw, OCI_INDEX, "x")
    out = rewrite_index(index, [index.children[1]])
    assert parse_manifest(out, OCI_INDEX, "x").digest == sha256_digest(out)
