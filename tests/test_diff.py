"""Differential bundles: sync --since, verify --base, push BASE DIFF…, and a chain of two."""

from __future__ import annotations

import hashlib
import json

import pytest

from helpers import Bundle, run_cli, write_manifest
from imagegen import inspect_raw, make_image, make_layer, push

L1, L2, L3, L4 = (make_layer(f"diff-{i}", 8192) for i in range(1, 5))


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
def week(registry, tmp_path):
    """A registry that changes from week to week, and a function making each week's bundle."""
    images = {"test/app:1.0": make_image([L1, L2]), "test/other:1.0": make_image([L1])}
    for ref, img in images.items():
        push(img, registry.host, *ref.split(":"))
    manifest = write_manifest(tmp_path / "m.yaml", f"""version: 1
images:
  - source: {registry.host}/test/app
    tags: {{semver: ">=1.0"}}
  - source: {registry.host}/test/other:1.0
""")

    def bundle(name: str, *extra: str) -> tuple[int, str]:
        out = tmp_path / f"{name}.tar"
        code, _, err = run_cli("sync", manifest, "-o", out, "--cache", tmp_path / "c",
                               "--report", tmp_path / f"{name}.json", *extra, capsys=registry.capsys)
        return code, err

    registry.images, registry.bundle, registry.dir = images, bundle, tmp_path
    return registry


@pytest.fixture(autouse=True)
def _capsys(registry, capsys):
    registry.capsys = capsys


def test_differential_bundle_holds_manifests_and_new_blobs_only(week, make_registry, capsys):
    d = week.dir
    assert week.bundle("full")[0] == 0
    v2 = make_image([L1, L3])
    push(v2, week.host, "test/app", "2.0")
    assert week.bundle("diff1", "--since", d / "full.tar")[0] == 0
    full, diff = Bundle(d / "full.tar"), Bundle(d / "diff1.tar")
    assert diff.refs() == {f"{week.host}/test/app:1.0", f"{week.host}/test/app:2.0",
                           f"{week.host}/test/other:1.0"}
    # every manifest travels; of the other blobs only what the full bundle did not carry
    for ref in diff.refs():
        assert diff.entry(ref)["digest"] in diff.blobs
    new_blobs = {L3.digest, v2.config.digest}
    assert new_blobs <= set(diff.blobs)
    assert not ({L1.digest, L2.digest} & set(diff.blobs))
    ann = diff.index["annotations"]
    assert ann["io.imgmirror.bundle.base"] == _sha(full.files["index.json"])
    expected = json.loads(diff.blobs[ann["io.imgmirror.bundle.expected"]])
    assert {b["digest"] for b in expected["blobs"]} >= {L1.digest, L2.digest}
    # docker load needs every layer: a differential bundle names only complete images
    assert all(all(layer in diff.files for layer in e["Layers"]) for e in diff.docker_manifest)

    code, out, _ = run_cli("verify", d / "diff1.tar", capsys=capsys)
    assert code == 0 and "differential" in out
    assert run_cli("verify", d / "diff1.tar", "--base", d / "full.tar", capsys=capsys)[0] == 0
    # a base that never carried L2 (it holds test/other only) does not do
    small = write_manifest(d / "small.yaml", f"version: 1\nimages:\n  - {week.host}/test/other:1.0\n")
    assert run_cli("sync", small, "-o", d / "small.tar", "--cache", d / "c", capsys=capsys)[0] == 0
    code, out, _ = run_cli("verify", d / "diff1.tar", "--base", d / "small.tar", capsys=capsys)
    assert code == 1 and "none of the bases" in out and L2.digest in out

    # pushed alone into an empty registry it is refused before any manifest, naming what is missing
    empty = make_registry()
    mark = empty.mark()
    code, _, err = run_cli("push", d / "diff1.tar", "--to", empty.host, capsys=capsys)
    assert code == 1 and L2.digest in err and "test/app:1.0" in err and "push its base first" in err
    assert empty.count("PUT", "/manifests/", since=mark) == 0
    # with its base on the same command line it lands, digest for digest
    code, _, err = run_cli("push", d / "full.tar", d / "diff1.tar", "--to", empty.host, capsys=capsys)
    assert code == 0, err
    assert _sha(inspect_raw(empty.host, "test/app:2.0")) == v2.digest
    assert _sha(inspect_raw(empty.host, "test/app:1.0")) == week.images["test/app:1.0"].digest
    # and into a registry that already has the base, it lands on its own
    second = make_registry()
    assert run_cli("push", d / "full.tar", "--to", second.host, capsys=capsys)[0] == 0
    assert run_cli("push", d / "diff1.tar", "--to", second.host, capsys=capsys)[0] == 0
    assert _sha(inspect_raw(second.host, "test/app:2.0")) == v2.digest


def test_a_chain_of_two_and_since_a_report(week, make_registry, capsys):
    d = week.dir
    assert week.bundle("full")[0] == 0
    push(make_image([L1, L3]), week.host, "test/app", "2.0")
    assert week.bundle("diff1", "--since", d / "full.tar")[0] == 0
    v3 = make_image([L2, L4])
    push(v3, week.host, "test/app", "3.0")
    assert week.bundle("diff2", "--since", d / "diff1.tar")[0] == 0
    # the report of a run stands for its bundle: the same differential bundle, byte for byte
    assert week.bundle("diff2r", "--since", d / "diff1.json")[0] == 0
    assert (d / "diff2.tar").read_bytes() == (d / "diff2r.tar").read_bytes()
    diff2 = Bundle(d / "diff2.tar")
    assert L4.digest in diff2.blobs and not ({L1.digest, L2.digest, L3.digest} & set(diff2.blobs))
    assert run_cli("verify", d / "diff2.tar", "--base", d / "full.tar", "--base", d / "diff1.tar",
                   capsys=capsys)[0] == 0
    # diff1 alone only promises what it expects from full.tar (L2): verify says so and exits 1
    code, out, _ = run_cli("verify", d / "diff2.tar", "--base", d / "diff1.tar", capsys=capsys)
    assert code == 1
    line = next(x for x in (out + _).splitlines() if "which themselves expect them from their own bases" in x)
    assert L1.digest in line and L2.digest in line and L3.digest not in line
    assert "--base OLDER" in out + _
    target = make_registry()
    code, _, err = run_cli("push", d / "full.tar", d / "diff1.tar", d / "diff2.tar", "--to", target.host,
                           capsys=capsys)
    assert code == 0, err
    assert _sha(inspect_raw(target.host, "test/app:3.0")) == v3.digest


def test_since_needs_a_bundle_or_a_report(week, tmp_path, capsys):
    (tmp_path / "junk.json").write_text('{"images": []}')
    code, err = week.bundle("x", "--since", tmp_path / "junk.json")
    assert code == 2 and "not a report" in err
    code, _, err = run_cli("sync", week.dir / "m.yaml", "--to", week.host, "--since", tmp_path / "junk.json",
                           capsys=capsys)
    assert code == 2 and "--since" in err
