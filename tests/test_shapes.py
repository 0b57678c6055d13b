"""Shapes the tool once refused (issue 8, part 4): end to end against a real registry, the real CLI.

(b) An artifact whose config is a big blob (a model, a dataset) is listed, verified and pushed:
    a config is a blob; only an image config is read, and only when small, to learn a platform.
(c) `platforms: all` switches a top-level `platforms:` default off for one image.
"""

from __future__ import annotations

import json
import shutil
import tarfile

import pytest

import imagegen
from helpers import Bundle, run_cli, skopeo, write_manifest
from imagegen import OCI_CONFIG, OCI_MANIFEST, Blob, Image, Layer, make_image, make_layer, push_raw

BIG = 5 << 20        # over the 4 MiB a manifest may have; nothing wrong for a blob
ARTIFACT_TYPE = "application/vnd.example.model.v1"
WEIGHTS_CONFIG = "application/vnd.example.model.config.v1+json"


def _artifact(config: Blob, seed: str) -> Image:
    """An OCI 1.1 artifact: artifactType set, `config` as given, one small layer."""
    payload = imagegen.random_bytes(f"shapes:{seed}", 1024)
    layer = Layer("application/vnd.example.model.layer.v1", payload, diff_id=imagegen.sha256_digest(payload))
    doc = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": ARTIFACT_TYPE,
           "config": config.descriptor(), "layers": [layer.descriptor()]}
    return Image(Blob(OCI_MANIFEST, json.dumps(doc, separators=(",", ":")).encode()), config, (layer,))


def _big_image_config() -> Image:
    """A real image (linux/arm64) whose config JSON is over 4 MiB: a label holds the padding."""
    img = make_image([make_layer("shapes-fat")], platform={"architecture": "arm64", "os": "linux"},
                     labels={"pad": "x" * BIG})
    assert img.config.size > BIG and img.config.media_type == OCI_CONFIG
    return img


@pytest.fixture
def big_configs(registry, tmp_path):
    """A bundle synced by the CLI from the real registry: a normal image, an artifact with a
    5 MiB binary config, and an image with a 5 MiB image config."""
    host = registry.host
    normal = make_image([make_layer("shapes-normal")])
    artifact = _artifact(Blob(WEIGHTS_CONFIG, imagegen.random_bytes("shapes:weights", BIG)), "weights")
    fat = _big_image_config()
    push_raw(normal, host, "shapes/normal", "1.0")
    push_raw(artifact, host, "shapes/model", "1.0")
    push_raw(fat, host, "shapes/fat", "1.0")
    manifest = write_manifest(tmp_path / "mirror.yaml", f"""version: 1
images:
  - {host}/shapes/normal:1.0
  - {host}/shapes/model:1.0
  - {host}/shapes/fat:1.0
""")
    bundle = tmp_path / "bundle.tar"
    code, out, err = run_cli("sync", manifest, "-o", bundle, "--cache", tmp_path / "cache", "--no-progress")
    assert code == 0, (out, err)
    return {"host": host, "bundle": bundle, "normal": normal, "artifact": artifact, "fat": fat,
            "tmp": tmp_path}


def test_big_configs_are_listed_not_refused(big_configs, capsys):
    host, bundle, artifact = big_configs["host"], big_configs["bundle"], big_configs["artifact"]
    assert len(Bundle(bundle).blobs[artifact.config.digest]) == BIG    # the 5 MiB blob is in it

    code, out, err = run_cli("list", bundle, "--json", capsys=capsys)
    assert code == 0, (out, err)
    listed = {i["reference"]: i for i in json.loads(out)}
    assert set(listed) == {f"{host}/shapes/normal:1.0", f"{host}/shapes/model:1.0", f"{host}/shapes/fat:1.0"}
    normal, model, fat = (listed[f"{host}/shapes/{n}:1.0"] for n in ("normal", "model", "fat"))
    assert normal["platforms"] == ["linux/amd64"] and "notes" not in normal and "problem" not in normal
    assert model["digest"] == artifact.digest and "problem" not in model
    assert model["platforms"] == []
    assert model["size"] == artifact.manifest.size + BIG + artifact.layers[0].size
    assert any(WEIGHTS_CONFIG in n and "not an image" in n for n in model["notes"]), model
    assert fat["platforms"] == [] and "problem" not in fat
    assert any(big_configs["fat"].config.digest in n and "4 MiB" in n for n in fat["notes"]), fat

    code, out, err = run_cli("list", bundle, capsys=capsys)
    assert code == 0, (out, err)
    assert f"{host}/shapes/normal:1.0\n" in out and "platforms: linux/amd64" in out
    model_text = out.split(f"{host}/shapes/model:1.0\n", 1)[1].split(f"{host}/shapes/fat:1.0", 1)[0]
    assert "platforms: unknown" in model_text and f"note: config is {WEIGHTS_CONFIG}" in model_text
    assert out.rstrip().endswith("3 images")

    code, out, err = run_cli("verify", bundle, capsys=capsys)
    assert code == 0, (out, err)
    assert "problem" not in out and ": ok: 3 images" in out


def test_big_configs_push_and_serve(big_configs, make_registry, capsys):
    """push and serve treat a config as a blob: the 5 MiB config arrives byte for byte."""
    target = make_registry()
    code, out, err = run_cli("push", big_configs["bundle"], "--to", f"{target.host}/copy", "--no-progress",
                             capsys=capsys)
    assert code == 0, (out, err)
    artifact = big_configs["artifact"]
    raw = skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{target.host}/copy/shapes/model:1.0")
    assert raw == artifact.raw
    from mirror.server import load_catalog
    catalog = load_catalog([big_configs["bundle"]])
    try:
        assert catalog.images == 3
    finally:
        catalog.close()


def test_one_damaged_image_does_not_empty_the_listing(big_configs, capsys):
    """A damaged image is shown as a problem on its own line; the others are still listed."""
    host, artifact = big_configs["host"], big_configs["artifact"]
    damaged = big_configs["tmp"] / "damaged.tar"
    shutil.copy(big_configs["bundle"], damaged)
    with tarfile.open(damaged) as tf:
        m = tf.getmember(f"blobs/sha256/{artifact.digest[7:]}")
    with open(damaged, "r+b") as fh:           # one byte of the artifact's manifest
        fh.seek(m.offset_data + 3)
        fh.write(b"X")

    code, out, err = run_cli("list", damaged, capsys=capsys)
    assert code == 1, (out, err)
    model_text = out.split(f"{host}/shapes/model:1.0\n", 1)[1].split(f"{host}/shapes/fat:1.0", 1)[0]
    assert "problem:" in model_text and "content has digest" in model_text
    assert f"{host}/shapes/normal:1.0\n" in out and "platforms: linux/amd64" in out
    assert f"{host}/shapes/fat:1.0\n" in out
    assert "3 images, 1 with a problem" in out and f"imgmirror verify {damaged}" in out

    code, out, err = run_cli("list", damaged, "--json", capsys=capsys)
    assert code == 1, (out, err)
    listed = {i["reference"]: i for i in json.loads(out)}
    assert len(listed) == 3 and "content has digest" in listed[f"{host}/shapes/model:1.0"]["problem"]
    assert "problem" not in listed[f"{host}/shapes/normal:1.0"]


# --- (c) platforms: all ------------------------------------------------------------------------

EVERY = ["linux/amd64", "linux/arm/v7", "linux/arm64"]


def test_platforms_all_switches_the_default_off_for_one_image(registry, tmp_path, capsys):
    """Top level `platforms: [linux/amd64]`; one image `platforms: all` keeps the index byte for
    byte with every child; the other inherits the default and is filtered (a rewritten index)."""
    host = registry.host
    multi = imagegen.make_multiarch("shapes-all")
    for repo in ("shapes/every", "shapes/default"):
        assert imagegen.push(multi, host, repo, "1.0") == multi.digest
    source_raw = skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{host}/shapes/every:1.0")
    assert imagegen.sha256_digest(source_raw) == multi.digest
    manifest = write_manifest(tmp_path / "mirror.yaml", f"""version: 1
platforms: [linux/amd64]
images:
  - source: {host}/shapes/every:1.0
    platforms: all
  - source: {host}/shapes/default:1.0
""")
    every, default = f"{host}/shapes/every:1.0", f"{host}/shapes/default:1.0"

    code, out, err = run_cli("sync", manifest, "--dry-run", "--cache", tmp_path / "cache", capsys=capsys)
    assert code == 0, (out, err)
    plan = {block.split("\n", 1)[0]: block for block in out.split(f"{host}/shapes/")[1:]}
    assert f"{multi.digest} " in plan["every:1.0"] and f"platforms: {', '.join(EVERY)}" in plan["every:1.0"]
    assert f"{multi.digest} " not in plan["default:1.0"] and "platforms: linux/amd64\n" in plan["default:1.0"]

    bundle, report = tmp_path / "bundle.tar", tmp_path / "report.json"
    code, out, err = run_cli("sync", manifest, "-o", bundle, "--cache", tmp_path / "cache", "--report", report,
                             "--no-progress", capsys=capsys)
    assert code == 0, (out, err)
    reported = {r["reference"]: r for r in json.loads(report.read_text())["images"]}
    assert reported[every]["platforms"] == EVERY and reported[every]["digest"] == multi.digest
    assert reported[every]["source_digest"] is None
    assert reported[default]["platforms"] == ["linux/amd64"]
    assert reported[default]["source_digest"] == multi.digest != reported[default]["digest"]

    b = Bundle(bundle)
    assert b.entry(every)["digest"] == multi.digest
    assert b.blobs[multi.digest] == source_raw              # the index, byte for byte
    for child in multi.children:                            # every platform and attestation
        assert b.blobs[child.digest] == child.raw
        assert all(blob.digest in b.blobs for blob in child.blobs())
    kept = b.manifest(b.entry(default)["digest"])["manifests"]
    amd64 = multi.children[0]
    assert amd64.platform == {"architecture": "amd64", "os": "linux"}
    assert [c["digest"] for c in kept] == [amd64.digest, *(c["digest"] for c in kept[1:])]
    assert [c.get("platform", {}).get("architecture") for c in kept] == ["amd64", "unknown"]  # + its attestation

    code, out, err = run_cli("list", bundle, "--json", capsys=capsys)
    assert code == 0, (out, err)
    listed = {i["reference"]: i for i in json.loads(out)}
    assert listed[every]["platforms"] == EVERY and listed[default]["platforms"] == ["linux/amd64"]


def test_sync_reads_no_config_but_small_image_configs(registry, tmp_path, monkeypatch):
    """To learn a single-platform image's platform, sync reads its config from the cache: never
    an artifact's config (any size) nor an image config over 4 MiB, which are blobs like layers."""
    from mirror.cache import Store
    reads: list[str] = []
    real_read = Store.read
    monkeypatch.setattr(Store, "read", lambda self, d: reads.append(d) or real_read(self, d))
    host = registry.host
    normal = make_image([make_layer("shapes-read-normal")])
    artifact = _artifact(Blob(WEIGHTS_CONFIG, imagegen.random_bytes("shapes:read-weights", BIG)), "read-weights")
    fat = _big_image_config()
    for img, repo in ((normal, "read/normal"), (artifact, "read/model"), (fat, "read/fat")):
        push_raw(img, host, repo, "1.0")
    manifest = write_manifest(tmp_path / "m.yaml", f"version: 1\nimages:\n  - {host}/read/normal:1.0\n"
                                                   f"  - {host}/read/model:1.0\n  - {host}/read/fat:1.0\n")
    code, out, err = run_cli("sync", manifest, "-o", tmp_path / "b.tar", "--cache", tmp_path / "c", "--no-progress",
                             "--report", tmp_path / "r.json")
    assert code == 0, (out, err)
    assert normal.config.digest in reads
    assert artifact.config.digest not in reads and fat.config.digest not in reads
    platforms = {i["reference"].rsplit("/", 1)[-1]: i["platforms"]
                 for i in json.loads((tmp_path / "r.json").read_text())["images"]}
    assert platforms["normal:1.0"] == ["linux/amd64"] and platforms["model:1.0"] == []
