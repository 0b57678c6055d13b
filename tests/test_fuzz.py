"""Fuzzing the parsers that read what others wrote: manifests (from registries and bundles),
references, mirror.yaml, platforms and version ranges.

The one property: any input gives a valid value or a MirrorError (for parse_range, the
documented ValueError) whose message is non-empty; never another exception. derandomize=True
keeps the examples the same on every run, so CI cannot turn red by chance.
"""

from __future__ import annotations

import json
import re

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mirror.errors import MirrorError
from mirror.core.oci import (DOCKER_LIST, DOCKER_MANIFEST, DOCKER_SCHEMA1, OCI_INDEX, OCI_MANIFEST, Descriptor,
                        Manifest, parse_manifest)
from mirror.core.platform import Platform, parse_platform
from mirror.core.reference import Reference, parse_reference
from mirror.core.selection import VersionRange, parse_range
from mirror.specfile import MirrorSpec, parse_spec

FUZZ = settings(max_examples=300, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


def _expect(call, *args, errors=(MirrorError,)):
    """Run the parser: a value, or one of `errors` with a message; anything else fails the test."""
    try:
        return call(*args)
    except errors as exc:
        assert str(exc).strip(), f"{type(exc).__name__} without a message for {args!r}"
        return None


# ---------------------------------------------------------------------------------------------
# Manifests
# ---------------------------------------------------------------------------------------------

HEX = "0123456789abcdef"
digests = st.one_of(
    st.text(HEX, min_size=64, max_size=64).map(lambda h: f"sha256:{h}"),
    st.sampled_from(["sha256:", "sha512:" + "a" * 128, "sha256:" + "A" * 64, "", "sha256:../../etc"]),
    st.text(max_size=20),
)
junk = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                 st.text(max_size=10), st.lists(st.integers(), max_size=3),
                 st.dictionaries(st.text(max_size=5), st.integers(), max_size=3))
media_types = st.one_of(st.sampled_from([OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST,
                                         *DOCKER_SCHEMA1, "application/vnd.oci.image.config.v1+json",
                                         "", "application/json"]), junk)
platforms = st.one_of(junk, st.fixed_dictionaries({}, optional={
    "os": st.one_of(st.sampled_from(["linux", "windows", ""]), junk),
    "architecture": st.one_of(st.sampled_from(["amd64", "arm64", "arm", "x86_64"]), junk),
    "variant": st.one_of(st.sampled_from(["v7", "8", ""]), junk)}))
# Wrongly typed `annotations` and `urls` are a known bug (test_parse_manifest_wrongly_typed_fields):
# here they are objects and lists, or absent, so the fuzzing covers everything else.
annotations = st.one_of(st.dictionaries(st.text(max_size=20), st.text(max_size=20), max_size=3), st.none())
descriptors = st.one_of(junk, st.fixed_dictionaries({}, optional={
    "mediaType": media_types,
    "digest": st.one_of(digests, junk),
    "size": st.one_of(st.integers(-5, 2**66), junk),
    "platform": platforms,
    "annotations": annotations,
    "urls": st.one_of(st.lists(st.text(max_size=20), max_size=2), st.none()),
}))
manifest_docs = st.fixed_dictionaries({}, optional={
    "schemaVersion": st.one_of(st.sampled_from([1, 2]), junk),
    "mediaType": media_types,
    "manifests": st.one_of(st.lists(descriptors, max_size=4), junk),
    "config": descriptors,
    "layers": st.one_of(st.lists(descriptors, max_size=4), junk),
    "annotations": annotations,
    "subject": descriptors,
    "artifactType": media_types,
})


def _check_manifest(raw: bytes, media_type) -> None:
    m = _expect(parse_manifest, raw, media_type, "fuzz")
    if m is None:
        return
    assert isinstance(m, Manifest) and m.raw == raw and m.digest.startswith("sha256:")
    for d in (*m.children, *m.layers, *((m.config,) if m.config else ())):
        assert isinstance(d, Descriptor) and re.fullmatch(r"sha256:[0-9a-f]{64}", d.digest)
        assert isinstance(d.size, int) and d.size >= 0


@FUZZ
@given(raw=st.binary(max_size=300), media_type=st.one_of(st.none(), media_types.filter(
    lambda t: isinstance(t, str))))
@example(raw=b"\xff\xfe{", media_type=None)
@example(raw=b"null", media_type=OCI_MANIFEST)
def test_parse_manifest_arbitrary_bytes(raw, media_type):
    _check_manifest(raw, media_type)


@FUZZ
@given(doc=manifest_docs, media_type=st.one_of(st.none(), st.sampled_from([OCI_INDEX, OCI_MANIFEST, ""])))
def test_parse_manifest_plausible_shapes(doc, media_type):
    _check_manifest(json.dumps(doc).encode(), media_type)


# Were bugs (fixed): annotations/urls of any type crashed parse_manifest with TypeError.
@pytest.mark.parametrize("doc", [
    {"mediaType": OCI_MANIFEST, "config": {"digest": "sha256:" + "a" * 64, "size": 1}, "layers": [],
     "annotations": [1]},
    {"mediaType": OCI_MANIFEST, "config": {"digest": "sha256:" + "a" * 64, "size": 1}, "layers": [],
     "annotations": "ab"},
    {"mediaType": OCI_MANIFEST, "layers": [],
     "config": {"digest": "sha256:" + "a" * 64, "size": 1, "annotations": [1, 2]}},
    {"mediaType": OCI_MANIFEST, "layers": [],
     "config": {"digest": "sha256:" + "a" * 64, "size": 1, "urls": 5}},
], ids=["manifest-annotations-list", "manifest-annotations-str", "descriptor-annotations-list",
        "descriptor-urls-int"])
def test_parse_manifest_wrongly_typed_fields(doc):
    _check_manifest(json.dumps(doc).encode(), None)


# Was a bug (fixed): deeply nested JSON raised RecursionError.
def test_parse_manifest_deeply_nested_json():
    _check_manifest(b"[" * 100_000 + b"]" * 100_000, None)


# ---------------------------------------------------------------------------------------------
# References
# ---------------------------------------------------------------------------------------------

REF_ALPHABET = "abcxyz019._-/:@ABZ"
references = st.one_of(
    st.text(max_size=60),
    st.text(REF_ALPHABET, max_size=60),
    st.builds(lambda host, path, tag, digest: f"{host}{path}{tag}{digest}",
              st.sampled_from(["", "localhost/", "localhost:5000/", "reg.io/", "[::1]:5000/", "index.docker.io/",
                               "Reg.IO:99999/", "a..b/"]),
              st.text("abz09._-/", min_size=1, max_size=30),
              st.sampled_from(["", ":1.0", ":", ":.x", ":" + "t" * 129, ":v1_-."]),
              st.one_of(st.just(""), digests.map(lambda d: "@" + d))),
)


@FUZZ
@given(text=references)
@example(text="a" * 64)
@example(text="x@sha256:" + "A" * 64)
@example(text="https://reg.io/a")
def test_parse_reference(text):
    r = _expect(parse_reference, text)
    if r is not None:
        assert isinstance(r, Reference)
        assert parse_reference(str(r)) == r        # a valid reference prints back as itself


# ---------------------------------------------------------------------------------------------
# mirror.yaml
# ---------------------------------------------------------------------------------------------

scalars = st.one_of(st.none(), st.booleans(), st.integers(-3, 2**40), st.text(max_size=15),
                    st.sampled_from(["linux/amd64", "alpine:3.19", "reg.io:5000/a/b", "^v1", ">=1.0",
                                     "${HOME}", "[", "(?P<", "*"]))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                      st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                      max_leaves=8)
filters = st.fixed_dictionaries({}, optional={"include": values, "exclude": values, "semver": values,
                                              "latest": values})
images = st.one_of(scalars, st.fixed_dictionaries({}, optional={
    "source": st.one_of(references, scalars), "tags": st.one_of(values, filters), "digests": values,
    "platforms": values, "target": values, "referrers": values, "extra": values}))
specs = st.fixed_dictionaries({}, optional={
    "version": st.one_of(st.just(1), scalars), "output": scalars, "cache": scalars,
    "concurrency": scalars, "platforms": values, "keep_index_digest": scalars, "load_platform": scalars,
    "referrers": scalars, "registries": st.one_of(values, st.dictionaries(
        st.sampled_from(["reg.io", "localhost:5000", "Bad Host", ""]), st.fixed_dictionaries({}, optional={
            "username": scalars, "password": scalars, "insecure": scalars, "ca_file": scalars,
            "max_concurrency": scalars, "retries": scalars}), max_size=2)),
    "images": st.one_of(values, st.lists(images, max_size=3)),
})


@FUZZ
@given(text=st.text(max_size=200))
@example(text="version: 1\nimages: &a [*a]\n")
@example(text="\x00")
@example(text="version: 1\nimages:\n  - source: alpine\n    tags: {semver: '>=1.0 <'}\n")
def test_parse_spec_arbitrary_text(text):
    s = _expect(parse_spec, text, "m.yaml", {})
    assert s is None or isinstance(s, MirrorSpec)


@FUZZ
@given(doc=specs)
def test_parse_spec_plausible_shapes(doc):
    s = _expect(parse_spec, yaml.safe_dump(doc), "m.yaml", {})
    assert s is None or isinstance(s, MirrorSpec)


# ---------------------------------------------------------------------------------------------
# Platforms and version ranges
# ---------------------------------------------------------------------------------------------


@FUZZ
@given(text=st.one_of(st.text(max_size=30), st.text("linuxamd64/v7x_.- ", max_size=30)))
@example(text="linux/arm/7.0")
def test_parse_platform(text):
    p = _expect(parse_platform, text)
    if p is not None:
        assert isinstance(p, Platform) and parse_platform(str(p)) == p


RANGE_ALPHABET = "0123456789.xX*vV^~<>=!|, -+abrc"


@FUZZ
@given(text=st.one_of(st.text(max_size=30), st.text(RANGE_ALPHABET, max_size=30)))
@example(text="1.2 - ")
@example(text="99999999999999999999999")
@example(text=">=1.0.0-" + "a." * 20 + "b")
def test_parse_range(text):
    r = _expect(parse_range, text, errors=(ValueError,))
    assert r is None or isinstance(r, VersionRange)
