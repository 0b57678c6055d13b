"""The scheduler of round trips and bytes (issue 12), against a real registry with a fault proxy
in front that delays chosen requests and records when each arrived and was answered:

- no barrier: an image's blobs are asked for while other images are still being resolved, and
  the bundle stays byte for byte what it is without the delay;
- sync --to: an image is pushed while others are still being resolved, and a no-op asks the
  destination while the source is still answering;
- two lanes per host: blobs over 1 MiB at most --jobs at once, largest first among those waiting;
  small blobs beside them on the metadata lane (4 x --jobs).
"""

from __future__ import annotations

import hashlib
import json

import pytest

from faultproxy import FaultProxy
from helpers import Bundle, run_cli, write_manifest
from imagegen import inspect_raw, make_image, make_layer, push

DELAY = 1.0


@pytest.fixture
def three(registry):
    """test/nb:a, :b and :slow, each one small image."""
    imgs = {t: make_image([make_layer(f"nb-{t}", 3000 + i)]) for i, t in enumerate(("a", "b", "slow"))}
    for t, img in imgs.items():
        push(img, registry.host, "test/nb", t)
    return imgs


def _manifest(tmp_path, host: str, name: str = "m.yaml"):
    return write_manifest(tmp_path / name, f"version: 1\nimages:\n  - source: {host}/test/nb\n"
                                           "    tags: [a, b, slow]\n")


def _slow(method: str):
    return lambda seen, n: (("delay", DELAY) if seen.method == method and seen.path.endswith("/manifests/slow")
                            else None)


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_blobs_are_asked_for_while_other_images_resolve(registry, three, tmp_path, capsys):
    front = FaultProxy(registry.url).start()
    front.rule = _slow("GET")
    try:
        code, _, err = run_cli("sync", _manifest(tmp_path, front.host), "-o", tmp_path / "b.tar",
                               "--cache", tmp_path / "c", capsys=capsys)
    finally:
        front.stop()
    assert code == 0, err
    slow = next(s for s in front.seen if s.path.endswith("/manifests/slow"))
    assert slow.t1 - slow.t0 >= DELAY
    early = [s for s in front.seen if "/blobs/" in s.path and s.t0 < slow.t1 - DELAY / 2]
    wanted = {d.digest for t in ("a", "b") for d in (three[t].config, *three[t].layers)}
    assert wanted <= {s.path.rsplit("/", 1)[1] for s in early}, "a and b's blobs waited for slow's manifest"
    # the same images without the delay, cold: the very same bundle, byte for byte
    code, _, err = run_cli("sync", _manifest(tmp_path, registry.host, "direct.yaml"), "-o", tmp_path / "d.tar",
                           "--cache", tmp_path / "c2", capsys=capsys)
    assert code == 0, err
    b, d = Bundle(tmp_path / "b.tar"), Bundle(tmp_path / "d.tar")
    assert sorted(b.blobs) == sorted(d.blobs)
    assert [e["digest"] for e in b.index["manifests"]] == [e["digest"] for e in d.index["manifests"]]


def test_sync_to_pushes_an_image_while_others_resolve(registry, make_registry, three, tmp_path, capsys):
    target = make_registry()
    src, dst = FaultProxy(registry.url).start(), FaultProxy(target.url).start()
    src.rule = _slow("GET")
    try:
        code, _, err = run_cli("sync", _manifest(tmp_path, src.host), "--to", f"{dst.host}/m",
                               "--cache", tmp_path / "c", capsys=capsys)
        assert code == 0, err
        slow = next(s for s in src.seen if s.path.endswith("/manifests/slow"))
        tagged = {s.path.rsplit("/", 1)[1]: s for s in dst.seen if s.method == "PUT" and "/manifests/" in s.path}
        assert set(tagged) == {"a", "b", "slow"}
        assert tagged["a"].t1 < slow.t1 and tagged["b"].t1 < slow.t1, "a and b were pushed only after slow resolved"
        # the no-op: the destination is asked about a and b while the source still answers slow
        src.rule, mark = _slow("HEAD"), len(dst.seen)
        code, _, err = run_cli("sync", _manifest(tmp_path, src.host), "--to", f"{dst.host}/m",
                               "--cache", tmp_path / "c", capsys=capsys)
        assert code == 0, err
        slow = next(s for s in src.seen if s.method == "HEAD" and s.path.endswith("/manifests/slow"))
        again = dst.seen[mark:]
        assert {s.method for s in again} == {"HEAD"} and len(again) == 3
        asked = {s.path.rsplit("/", 1)[1]: s for s in again}
        assert asked["a"].t1 < slow.t1 - DELAY / 2 and asked["b"].t1 < slow.t1 - DELAY / 2
    finally:
        src.stop()
        dst.stop()
    for t, img in three.items():
        assert inspect_raw(target.host, f"m/test/nb:{t}") == img.raw


def test_two_lanes_large_blobs_by_jobs_largest_first_small_ones_beside(registry, tmp_path, capsys):
    big = [make_image([make_layer(f"lane-big-{i}", (1 << 20) + (i + 1) * 150_000)]) for i in range(4)]
    small = [make_image([make_layer(f"lane-small-{i}", 2000 + i)]) for i in range(12)]
    for i, img in enumerate(big):
        push(img, registry.host, "test/big", f"t{i}")
    for i, img in enumerate(small):
        push(img, registry.host, "test/small", f"t{i}")
    sizes = {d.digest: d.size for img in big + small for d in (img.config, *img.layers)}
    front = FaultProxy(registry.url).start()
    front.rule = lambda seen, n: ("delay", 0.3) if seen.method == "GET" and "/blobs/" in seen.path else None
    manifest = write_manifest(tmp_path / "m.yaml", f"""version: 1
images:
  - source: {front.host}/test/big
    tags: [t0, t1, t2, t3]
  - source: {front.host}/test/small
    tags: [{", ".join(f"t{i}" for i in range(12))}]
""")
    try:
        code, _, err = run_cli("sync", manifest, "-o", tmp_path / "b.tar", "--cache", tmp_path / "c",
                               "--jobs", "2", capsys=capsys)
    finally:
        front.stop()
    assert code == 0, err
    gets = [s for s in front.seen if s.method == "GET" and "/blobs/" in s.path]

    def peak(reqs) -> int:
        events = sorted([(s.t0, 1) for s in reqs] + [(s.t1, -1) for s in reqs])
        cur = top = 0
        for _, step in events:
            cur += step
            top = max(top, cur)
        return top
    large = sorted((s for s in gets if sizes[s.path.rsplit("/", 1)[1]] > 1 << 20), key=lambda s: s.t0)
    little = [s for s in gets if sizes[s.path.rsplit("/", 1)[1]] <= 1 << 20]
    assert len(large) == 4 and len(little) == 4 + 24
    assert peak(large) == 2                      # the transfer lane: --jobs
    assert 2 < peak(little) <= 8                 # the metadata lane: 4 x --jobs, beside it
    waited = [sizes[s.path.rsplit("/", 1)[1]] for s in large[2:]]
    assert waited == sorted(waited, reverse=True)     # those that waited: largest first
    assert set(sizes) <= set(Bundle(tmp_path / "b.tar").blobs)


def test_first_request_goes_alone_until_the_cache_knows_the_host(registry, three, tmp_path, capsys):
    """Cold: the first request to a host goes alone (its answer may be a token challenge);
    the cache then remembers that this host asked for none, and a warm run sends at once."""
    front = FaultProxy(registry.url).start()
    delayed = [0]          # the index of the request to delay: each run's first
    front.rule = lambda seen, n: ("delay", DELAY) if n == delayed[0] else None
    try:
        for run in ("cold", "warm"):
            mark = len(front.seen)
            code, _, err = run_cli("sync", _manifest(tmp_path, front.host), "-o", tmp_path / f"{run}.tar",
                                   "--cache", tmp_path / "c", capsys=capsys)
            assert code == 0, err
            first, *others = front.seen[mark:]
            before_answer = [s for s in others if s.t0 < first.t1 - DELAY / 2]
            if run == "cold":
                assert others and before_answer == []
                hosts = json.loads((tmp_path / "c" / "tags.json").read_text())["hosts"]
                assert hosts == {front.host: "none"}
                delayed[0] = len(front.seen)
            else:
                assert len(before_answer) >= 2
    finally:
        front.stop()


def test_basic_auth_remembered_sends_credentials_at_once(registry_basic, tmp_path, capsys):
    img = make_image([make_layer("basic-remembered", 1500)])
    push(img, registry_basic.host, "test/b", "1.0", registry_basic.creds)
    manifest = write_manifest(tmp_path / "m.yaml", f"""version: 1
registries:
  {registry_basic.host}:
    username: {registry_basic.username}
    password: {registry_basic.password}
images:
  - {registry_basic.host}/test/b:1.0
""")
    statuses = []
    for run in ("cold", "warm"):
        mark = registry_basic.mark()
        code, _, err = run_cli("sync", manifest, "-o", tmp_path / f"{run}.tar", "--cache", tmp_path / "c",
                               capsys=capsys)
        assert code == 0, err
        statuses.append([r.status for r in registry_basic.requests(since=mark)].count(401))
    assert statuses == [1, 0]
