"""sync --lock / --locked against the real registry: the lock records what a run resolved (YAML,
sorted, for review); a locked run mirrors exactly those digests, reports a tag that moved
instead of following it, gives the same bundle bytes, and refuses an image the lock lacks."""

from __future__ import annotations

import hashlib
import json

import pytest
import yaml

import imagegen as g
from helpers import run_cli, write_manifest


@pytest.fixture
def cli(capsys):
    return lambda *args: run_cli(*args, capsys=capsys)


def sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def upstream(registry):
    host = registry.host
    multi = g.make_multiarch("lock-multi", attestations=False)
    g.push(multi, host, "lock/multi", "1.0")
    app = {t: g.make_image([g.make_layer(f"lock-app-{t}", 2048)]) for t in ("1.0", "1.1", "2.0")}
    for t, img in app.items():
        g.push(img, host, "lock/app", t)
    sig = g.make_cosign_signature(app["1.0"])
    g.push_raw(sig, host, "lock/app", g.cosign_tag(app["1.0"].digest))
    return {"host": host, "multi": multi, "app": app, "sig": sig}


def manifest(tmp_path, host, extra=""):
    return write_manifest(tmp_path / "mirror.yaml", f"""version: 1
platforms: [linux/amd64]
images:
  - {host}/lock/multi:1.0
  - source: {host}/lock/app
    tags: {{include: ['^1\\.']}}
    referrers: true
{extra}""")


def test_lock_records_what_the_run_resolved_and_locked_runs_repeat_it(upstream, tmp_path, cli):
    host, app = upstream["host"], upstream["app"]
    m = manifest(tmp_path, host)
    code, _, err = cli("sync", str(m), "--cache", str(tmp_path / "c1"), "-o", str(tmp_path / "first.tar"),
                       "--lock", str(tmp_path / "mirror.lock"), "--no-progress")
    assert code == 0, err
    text = (tmp_path / "mirror.lock").read_text()
    assert text.startswith("# imgmirror lock")
    entries = yaml.safe_load(text)["images"]
    assert [e["reference"] for e in entries] == sorted(e["reference"] for e in entries)
    by = {e["reference"]: e for e in entries}
    assert by[f"{host}/lock/app:1.0"]["digest"] == app["1.0"].digest
    assert by[f"{host}/lock/app:1.1"]["digest"] == app["1.1"].digest
    assert f"{host}/lock/app:2.0" not in by
    multi = by[f"{host}/lock/multi:1.0"]
    assert multi["source_digest"] == upstream["multi"].digest and multi["digest"] != multi["source_digest"]
    sig = by[f"{host}/lock/app:{g.cosign_tag(app['1.0'].digest)}"]
    assert sig["referrer_of"] == f"{host}/lock/app:1.0" and sig["digest"] == upstream["sig"].digest

    # upstream moves: 1.1 retagged to another image, and a new 1.2 matches the filter
    moved = g.make_image([g.make_layer("lock-app-moved", 2048)])
    g.push(moved, host, "lock/app", "1.1")
    g.push(g.make_image([g.make_layer("lock-app-1.2", 2048)]), host, "lock/app", "1.2")
    for n in (2, 3):
        code, _, err = cli("sync", str(m), "--cache", str(tmp_path / f"c{n}"), "-o", str(tmp_path / f"locked{n}.tar"),
                           "--locked", str(tmp_path / "mirror.lock"), "--report", str(tmp_path / f"r{n}.json"),
                           "--no-progress")
        assert code == 0, err
        assert f"{host}/lock/app:1.1: the tag now points at {moved.digest}; mirroring the locked {app['1.1'].digest}" \
            in err
    assert sha(tmp_path / "locked2.tar") == sha(tmp_path / "locked3.tar") == sha(tmp_path / "first.tar")
    report = json.loads((tmp_path / "r2.json").read_text())
    assert not any("1.2" in r["reference"] for r in report["images"])    # the filter took what the lock has


def test_an_image_the_lock_lacks_is_refused_before_any_request(upstream, tmp_path, cli, registry):
    host = upstream["host"]
    m = manifest(tmp_path, host)
    assert cli("sync", str(m), "--dry-run", "--cache", str(tmp_path / "c"), "--lock", str(tmp_path / "l"))[0] == 0
    m = manifest(tmp_path, host, f"  - {host}/lock/app:2.0\n")
    mark = len(registry.requests())
    code, _, err = cli("sync", str(m), "--dry-run", "--cache", str(tmp_path / "c"), "--locked", str(tmp_path / "l"))
    assert code == 2
    assert f"mirror.yaml:8 images[2]: {host}/lock/app:2.0" in err and "--lock" in err
    assert len(registry.requests()) == mark


def test_a_platform_change_against_the_lock_fails_the_image(upstream, tmp_path, cli):
    host = upstream["host"]
    m = manifest(tmp_path, host)
    assert cli("sync", str(m), "--dry-run", "--cache", str(tmp_path / "c"), "--lock", str(tmp_path / "l"))[0] == 0
    m.write_text(m.read_text().replace("platforms: [linux/amd64]", "platforms: [linux/arm64]"))
    code, _, err = cli("sync", str(m), "--dry-run", "--cache", str(tmp_path / "c"), "--locked", str(tmp_path / "l"))
    assert code == 1 and "did platforms: change?" in err


def test_a_broken_lock_is_named(tmp_path, cli):
    m = write_manifest(tmp_path / "m.yaml", "version: 1\nimages: [alpine]\n")
    (tmp_path / "l").write_text("version: 1\nimages:\n  - reference: x\n")
    code, _, err = cli("sync", str(m), "--dry-run", "--locked", str(tmp_path / "l"))
    assert code == 2 and "images[0] is not an entry" in err
