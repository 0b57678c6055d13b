"""sync --shard I/N and --shards N (JOB_COMPLETION_INDEX): N runs that never talk to each other
take whole repositories each, balanced by bytes, and together do exactly what one run does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import imagegen as g
from helpers import run_cli, write_manifest
from mirror.engine.shard import Shard, partition
from mirror.errors import UsageError

ROOT = Path(__file__).resolve().parents[1]


def test_the_partition_is_deterministic_balanced_and_whole():
    weights = {"a": 100, "b": 90, "c": 50, "d": 50, "e": 10, "f": 0}
    parts = partition(weights, 3)
    assert parts == partition(dict(reversed(list(weights.items()))), 3)     # order of input: no matter
    assert sorted(r for p in parts for r in p) == sorted(weights)           # each once
    assert parts == [["a", "f"], ["b", "e"], ["c", "d"]]                    # largest first, lightest, ties by name
    assert partition({"x": 5}, 4) == [["x"], [], [], []]


@pytest.mark.parametrize("text, shards, env, want", [
    ("0/4", None, {}, (0, 4)), ("3/4", None, {}, (3, 4)), (None, 4, {"JOB_COMPLETION_INDEX": "2"}, (2, 4)),
])
def test_shard_arguments(text, shards, env, want):
    s = Shard.parse(text, shards, env)
    assert (s.index, s.count) == want and s.label == f"{want[0] + 1}of{want[1]}"


@pytest.mark.parametrize("text, shards, env, message", [
    ("4/4", None, {}, "0 <= I < N"), ("a/b", None, {}, "write I/N"), (None, 4, {}, "JOB_COMPLETION_INDEX"),
    ("0/2", 2, {}, "not both"), (None, 2, {"JOB_COMPLETION_INDEX": "2"}, "0 <= I < N"),
])
def test_bad_shard_arguments_are_named(text, shards, env, message):
    with pytest.raises(UsageError, match=message):
        Shard.parse(text, shards, env)


@pytest.fixture
def source(registry, tmp_path):
    """Six repositories of different sizes, one with two tags sharing a layer, one multi-arch."""
    host = registry.host
    for i, size in enumerate((40_000, 30_000, 20_000, 12_000, 8_000)):
        img = g.make_image([g.make_layer(f"shard-{i}", size)])
        g.push(img, host, f"shard/r{i}", "1")
    shared = g.make_layer("shard-shared", 16_000)
    for t in ("1", "2"):
        g.push(g.make_image([shared, g.make_layer(f"shard-two-{t}", 1000)]), host, "shard/two", t)
    g.push(g.make_multiarch("shard-multi", attestations=False), host, "shard/multi", "1")
    images = "".join(f"  - {host}/shard/r{i}:1\n" for i in range(5))
    return write_manifest(tmp_path / "mirror.yaml", f"version: 1\nimages:\n{images}"
                          f"  - source: {host}/shard/two\n    tags: ['1', '2']\n  - {host}/shard/multi:1\n"), host


def _run(args, env_extra=None, cwd=ROOT):
    env = {**os.environ, **(env_extra or {})}
    return subprocess.Popen([sys.executable, "-m", "mirror", *map(str, args)], env=env, cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_three_shards_as_an_indexed_job_do_what_one_run_does(source, tmp_path, make_registry):
    manifest, host = source
    one, sharded = make_registry(), make_registry()
    p = _run(["sync", manifest, "--to", f"{one.host}/m", "--cache", tmp_path / "c-one",
              "--report", tmp_path / "one.json", "--no-progress"])
    assert p.wait(120) == 0, p.communicate()[1]
    procs = [_run(["sync", manifest, "--shards", 3, "--to", f"{sharded.host}/m", "--cache", tmp_path / f"c{i}",
                   "--report", tmp_path / f"s{i}.json", "-o", tmp_path / "b-{shard}.tar", "--no-progress"],
                  {"JOB_COMPLETION_INDEX": str(i)}) for i in range(3)]        # all three at once
    for proc in procs:
        assert proc.wait(120) == 0, proc.communicate()[1]
    single = json.loads((tmp_path / "one.json").read_text())
    shards = [json.loads((tmp_path / f"s{i}.json").read_text()) for i in range(3)]
    want = sorted((r["reference"], r["digest"]) for r in single["images"])
    got = sorted((r["reference"], r["digest"]) for s in shards for r in s["images"])
    assert got == want                                     # same images, same digests, each once
    repos = [{r["source"] for r in s["images"]} for s in shards]
    assert all(not (a & b) for i, a in enumerate(repos) for b in repos[i + 1:])   # no repository twice
    assert all(s["shard"]["partition"] == shards[0]["shard"]["partition"] for s in shards)
    for ref, digest in want:                               # the shared target holds what one run pushes
        path = ref.split("/", 1)[1]
        assert g.sha256_digest(g.inspect_raw(sharded.host, f"m/{path}")) == digest
    # each shard wrote its own bundle; list and push take them together
    bundles = [tmp_path / f"b-{i + 1}of3.tar" for i in range(3)]
    assert all(b.exists() for b in bundles)
    code = run_cli("list", *bundles)[0]
    assert code == 0
    inside = make_registry()
    assert run_cli("push", *bundles, "--to", f"{inside.host}/m", "--no-progress")[0] == 0
    for ref, digest in want:
        assert g.sha256_digest(g.inspect_raw(inside.host, f"m/{ref.split('/', 1)[1]}")) == digest


def test_dry_run_prints_the_partition(source, tmp_path, capsys):
    manifest, host = source
    code, out, _ = run_cli("sync", manifest, "--dry-run", "--shard", "1/2", "--cache", tmp_path / "c", capsys=capsys)
    assert code == 0
    lines = [x for x in out.splitlines() if x.startswith("shard ")]
    assert lines[0].startswith("shard 1of2: ") and lines[1].startswith("shard 2of2 (this shard): ")
    assert sum(x.count(f"{host}/shard/") for x in lines) == 7        # every repository, once
