"""An index whose child is an index (OCI allows it; regctl and oras make them) is synced like any
other (issue 8.4): the platform filter applies to the images at the leaves, every level that
loses children is rewritten with its source digest recorded. Real registry, skopeo to read back."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from helpers import Bundle, run_cli, write_manifest
from imagegen import OCI_INDEX, Blob, inspect_raw, make_image, make_index, make_layer, push_raw, sha256_digest

AMD64 = {"architecture": "amd64", "os": "linux"}
ARM64 = {"architecture": "arm64", "os": "linux", "variant": "v8"}
PPC = {"architecture": "ppc64le", "os": "linux"}


@dataclass
class Nested:
    """outer index -> [inner index -> [amd64, arm64], ppc64le image]"""

    outer: Blob
    inner: object
    images: dict

    @property
    def digest(self):
        return self.outer.digest

    def blobs(self):
        return [b for img in self.images.values() for b in img.blobs()]

    def manifests(self):
        return [*(i.manifest for i in self.images.values()), self.inner.manifest, self.outer]


@pytest.fixture
def nested(registry):
    images = {name: make_image([make_layer(f"nested-{name}", 2048)], platform=p)
              for name, p in (("amd64", AMD64), ("arm64", ARM64), ("ppc64le", PPC))}
    inner = make_index([images["amd64"], images["arm64"]])
    doc = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        inner.manifest.descriptor(annotations={"org.opencontainers.image.title": "the äöü inner index"}),
        images["ppc64le"].manifest.descriptor(platform=PPC)]}
    art = Nested(Blob(OCI_INDEX, json.dumps(doc, ensure_ascii=False, indent=2).encode()), inner, images)
    push_raw(art, registry.host, "test/nested", "1.0")
    registry.nested = art
    return registry


def _sync(tmp_path, registry, capsys, platforms: str, name="b"):
    manifest = write_manifest(tmp_path / f"{name}.yaml", f"""version: 1
platforms: {platforms}
images:
  - {registry.host}/test/nested:1.0
""")
    code, _, err = run_cli("sync", manifest, "-o", tmp_path / f"{name}.tar", "--cache", tmp_path / "c",
                           "--report", tmp_path / f"{name}.json", capsys=capsys)
    return code, err, Bundle(tmp_path / f"{name}.tar") if code == 0 else None


def test_a_filter_reaching_into_a_nested_index_rewrites_both_levels(nested, make_registry, tmp_path, capsys):
    art = nested.nested
    code, err, b = _sync(tmp_path, nested, capsys, "[linux/arm64]")
    assert code == 0, err
    ref = f"{nested.host}/test/nested:1.0"
    top = json.loads(b.blobs[b.entry(ref)["digest"]])
    assert b.entry(ref)["annotations"]["io.imgmirror.source.digest"] == art.digest
    assert top["annotations"]["io.imgmirror.source.digest"] == art.digest
    (child,) = top["manifests"]                   # ppc64le gone, the inner index kept, rewritten
    assert child["annotations"] == {"org.opencontainers.image.title": "the äöü inner index"}
    inner = json.loads(b.blobs[child["digest"]])
    assert sha256_digest(b.blobs[child["digest"]]) == child["digest"] and len(b.blobs[child["digest"]]) == child["size"]
    assert inner["annotations"]["io.imgmirror.source.digest"] == art.inner.digest
    assert [m["digest"] for m in inner["manifests"]] == [art.images["arm64"].digest]
    assert art.images["arm64"].layers[0].digest in b.blobs
    assert art.images["amd64"].layers[0].digest not in b.blobs
    assert art.images["ppc64le"].layers[0].digest not in b.blobs
    report = json.loads((tmp_path / "b.json").read_text())["images"][0]
    assert report["platforms"] == ["linux/arm64"] and report["source_digest"] == art.digest
    assert run_cli("verify", tmp_path / "b.tar", capsys=capsys)[0] == 0
    # and it goes into another registry with the bundle's digests
    target = make_registry()
    code, _, err = run_cli("push", tmp_path / "b.tar", "--to", target.host, capsys=capsys)
    assert code == 0, err
    assert sha256_digest(inspect_raw(target.host, "test/nested:1.0")) == b.entry(ref)["digest"]


def test_a_nested_index_none_of_whose_images_match_is_left_out(nested, tmp_path, capsys):
    art = nested.nested
    code, err, b = _sync(tmp_path, nested, capsys, "[linux/ppc64le]")
    assert code == 0, err
    top = json.loads(b.blobs[b.entry(f"{nested.host}/test/nested:1.0")["digest"]])
    assert [m["digest"] for m in top["manifests"]] == [art.images["ppc64le"].digest]
    assert art.inner.digest not in b.blobs


def test_no_filter_keeps_every_level_byte_for_byte(nested, tmp_path, capsys):
    art = nested.nested
    code, err, b = _sync(tmp_path, nested, capsys, "[linux/amd64, linux/arm64, linux/ppc64le]")
    assert code == 0, err
    assert b.entry(f"{nested.host}/test/nested:1.0")["digest"] == art.digest
    assert b.blobs[art.digest] == art.outer.data and b.blobs[art.inner.digest] == art.inner.raw
    assert all(img.layers[0].digest in b.blobs for img in art.images.values())


def test_no_match_anywhere_names_the_platforms_of_every_level(nested, tmp_path, capsys):
    code, err, _ = _sync(tmp_path, nested, capsys, "[linux/s390x]")
    assert code == 1
    assert "linux/amd64, linux/arm64, linux/ppc64le" in err
