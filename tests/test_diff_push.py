"""A differential bundle pushed on its own, when a new image shares layers with an image of
another repository that its base carried (issue 8.1). Real registries; the registry's own request
log shows what push sent."""

from __future__ import annotations

import json

import pytest

from faultproxy import FaultProxy
from helpers import Bundle, run_cli, write_manifest
from imagegen import inspect_raw, make_image, make_layer, push, sha256_digest

BASE1, BASE2 = make_layer("dp-base-1", 16384), make_layer("dp-base-2", 8192)
WEB, WORKER, JOB = (make_layer(f"dp-{n}", 4096) for n in ("web", "worker", "job"))


@pytest.fixture
def upstream(registry, tmp_path, capsys):
    """library/base:1.0 and team/web:v1 upstream; week(n) writes week n's manifest and bundle."""
    imgs = {"library/base:1.0": make_image([BASE1, BASE2]),
            "team/web:v1": make_image([BASE1, BASE2, WEB]),
            "team/worker:v1": make_image([BASE1, BASE2, WORKER]),
            "team/job:v1": make_image([BASE1, WORKER, JOB])}
    for ref, img in imgs.items():
        push(img, registry.host, *ref.split(":"))
    weeks = {1: ["library/base:1.0", "team/web:v1"],
             2: ["library/base:1.0", "team/web:v1", "team/worker:v1"],
             3: ["library/base:1.0", "team/web:v1", "team/worker:v1", "team/job:v1"]}

    def week(n: int, *extra) -> str:
        lines = "".join(f"  - source: {registry.host}/{r}\n" + ("    target: tools/base\n" if "base" in r else "")
                        for r in weeks[n])
        manifest = write_manifest(tmp_path / f"w{n}.yaml", f"version: 1\nimages:\n{lines}")
        code, _, err = run_cli("sync", manifest, "-o", tmp_path / f"w{n}.tar", "--cache", tmp_path / "c",
                               "--report", tmp_path / f"w{n}.json", *extra, capsys=capsys)
        assert code == 0, err
        return str(tmp_path / f"w{n}.tar")

    registry.imgs, registry.week, registry.dir, registry.capsys = imgs, week, tmp_path, capsys
    return registry


def _push(capsys, *args):
    code, _, err = run_cli("push", *map(str, args), capsys=capsys)
    return code, err


def _digest(host: str, ref: str) -> str:
    return sha256_digest(inspect_raw(host, ref))


def test_week2_differential_pushed_alone_mounts_base_layers_from_another_repository(upstream, make_registry, capsys):
    target = make_registry()
    w1 = upstream.week(1)
    assert _push(capsys, w1, "--to", f"{target.host}/m")[0] == 0
    w2 = upstream.week(2, "--since", w1)
    # the base layers are not in week 2: they came with library/base (target tools/base) in week 1
    assert BASE1.digest not in Bundle(w2).blobs and WORKER.digest in Bundle(w2).blobs
    mark = target.mark()
    code, err = _push(capsys, w2, "--to", f"{target.host}/m", "--report", upstream.dir / "p2.json")
    assert code == 0, err
    assert _digest(target.host, "m/team/worker:v1") == upstream.imgs["team/worker:v1"].digest
    mounts = [r for r in target.requests("POST", since=mark) if "mount=" in r.uri]
    assert sorted(r.query["mount"][0] for r in mounts) == sorted([BASE1.digest, BASE2.digest])
    # mapped through --to and target:, as the base's images were pushed
    assert {r.query["from"][0] for r in mounts} == {"m/tools/base"}
    assert all("/v2/m/team/worker/" in r.uri for r in mounts)
    worker = next(i for i in json.loads((upstream.dir / "p2.json").read_text())["images"]
                  if i["reference"].endswith("team/worker:v1"))
    assert worker["mounted"] == 2 and worker["status"] == "ok"


def test_a_chain_pushed_week_by_week_and_from_a_report(upstream, make_registry, capsys):
    target = make_registry()
    w1 = upstream.week(1)
    w2 = upstream.week(2, "--since", upstream.dir / "w1.json")     # the report keeps where blobs were
    w3 = upstream.week(3, "--since", w2)
    # week 3's job shares BASE1 with week 1's base and WORKER with week 2's worker
    assert {BASE1.digest, WORKER.digest}.isdisjoint(Bundle(w3).blobs)
    for w in (w1, w2, w3):
        code, err = _push(capsys, w, "--to", f"{target.host}/m")
        assert code == 0, err
    for ref, img in upstream.imgs.items():
        path = ref.replace("library/base", "tools/base")
        assert _digest(target.host, f"m/{path}") == img.digest
    # and the whole chain in one command into an empty registry
    fresh = make_registry()
    code, err = _push(capsys, w1, w2, w3, "--to", f"{fresh.host}/m")
    assert code == 0, err
    assert _digest(fresh.host, "m/team/job:v1") == upstream.imgs["team/job:v1"].digest


def test_a_blob_no_repository_holds_is_refused_naming_where_it_looked(upstream, make_registry, capsys):
    target = make_registry()
    w1 = upstream.week(1)
    w2 = upstream.week(2, "--since", w1)
    mark = target.mark()
    code, err = _push(capsys, w2, "--to", f"{target.host}/m")       # week 1 never pushed here
    assert code == 1
    assert "5 blobs are in no bundle given" in err and BASE1.digest in err   # base, web and worker's
    looked = err.split(BASE1.digest, 1)[1].split(")", 1)[0]
    assert looked.endswith(f"looked in {target.host}/m/team/web, {target.host}/m/team/worker, "
                           f"{target.host}/m/tools/base")
    assert "nothing was pushed" in err
    assert [r for r in target.requests(since=mark) if r.method in ("PUT", "PATCH", "POST")] == []


def test_a_bundle_written_before_holders_were_recorded(upstream, make_registry, capsys, tmp_path):
    """A week-2 layout directory whose expected list has no `from` (as written before this change)."""
    target = make_registry()
    w1 = upstream.week(1)
    manifest = tmp_path / "w2.yaml"
    upstream.week(2, "--since", w1)
    code, _, err = run_cli("sync", manifest, "-o", f"{tmp_path}/old/", "--cache", tmp_path / "c",
                           "--since", w1, capsys=capsys)
    assert code == 0, err
    index_path = tmp_path / "old" / "index.json"
    index = json.loads(index_path.read_text())
    doc_digest = index["annotations"]["io.imgmirror.bundle.expected"]
    doc = json.loads((tmp_path / "old/blobs/sha256" / doc_digest.split(":")[1]).read_bytes())
    assert all(b["from"] for b in doc["blobs"])
    old = json.dumps({"base": doc["base"], "blobs": [{"digest": b["digest"], "size": b["size"]}
                                                     for b in doc["blobs"]]},
                     sort_keys=True, separators=(",", ":")).encode()
    (tmp_path / "old/blobs/sha256" / sha256_digest(old).split(":")[1]).write_bytes(old)
    index["annotations"]["io.imgmirror.bundle.expected"] = sha256_digest(old)
    index_path.write_text(json.dumps(index))
    # with its base on the command line it pushes as before
    code, err = _push(capsys, w1, tmp_path / "old", "--to", f"{target.host}/m")
    assert code == 0, err
    assert _digest(target.host, "m/team/worker:v1") == upstream.imgs["team/worker:v1"].digest
    # alone, into a registry holding week 1: no holder is recorded, but push also looks in the
    # other repositories of the push that need the blob (tools/base is in week 2 too)
    other = make_registry()
    assert _push(capsys, w1, "--to", f"{other.host}/m")[0] == 0
    code, err = _push(capsys, tmp_path / "old", "--to", f"{other.host}/m")
    assert code == 0, err
    assert _digest(other.host, "m/team/worker:v1") == upstream.imgs["team/worker:v1"].digest


def test_a_registry_answering_202_to_a_mount_gets_the_session_cancelled(upstream, make_registry, capsys):
    target = make_registry()
    w1 = upstream.week(1)
    assert _push(capsys, w1, "--to", f"{target.host}/m")[0] == 0
    w2 = upstream.week(2, "--since", w1)
    proxy = FaultProxy(target.url).start()
    loc = "/v2/m/team/worker/blobs/uploads/not-mounted"
    proxy.rule = lambda s, n: (("status", 202, {"Location": loc}, {}) if s.method == "POST" and "mount=" in s.query
                               else None)
    try:
        code, err = _push(capsys, w2, "--to", f"{proxy.host}/m")
    finally:
        proxy.stop()
    assert code == 1
    assert "did not mount" in err and "202" in err and "give the base bundles" in err
    mounts = [s for s in proxy.seen if s.method == "POST" and "mount=" in s.query]
    deletes = [s for s in proxy.seen if s.method == "DELETE"]
    assert len(mounts) == 2 and len(deletes) == 2 and all(d.path == loc for d in deletes)
    assert not [s for s in proxy.seen if s.method == "PUT" and "/manifests/" in s.path and "worker" in s.path]


def test_dry_run_reports_the_mounts_and_sends_none(upstream, make_registry, capsys):
    target = make_registry()
    w1 = upstream.week(1)
    assert _push(capsys, w1, "--to", f"{target.host}/m")[0] == 0
    w2 = upstream.week(2, "--since", w1)
    mark = target.mark()
    code, err = _push(capsys, w2, "--to", f"{target.host}/m", "--dry-run")
    assert code == 0, err
    assert "2 mounted" in err
    assert [r for r in target.requests(since=mark) if r.method != "HEAD" and r.uri != "/v2/"] == []
