"""Proof under stress: seeded fault mixes, kill -9, a full disk and a registry restart.

Every test is bounded in time (small images, short stalls, `retries: 3`, subprocess timeouts)
and nothing is skipped. docs/reliability.md describes what is injected and what held.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import aiohttp
import pytest

import mirror.registry.transport
from faultproxy import FaultProxy
from helpers import Bundle, run_cli, sha256, write_manifest
from imagegen import ACCEPT_ALL, inspect_raw, make_image, make_layer, push
from registries import _wait_until_up, registry_binary, start_registry

ROOT = Path(__file__).resolve().parent.parent
KiB, MiB = 1024, 1024 * 1024

SYNC_SEEDS = range(24)
PUSH_SEEDS = range(6)
KILL_SYNC_SEEDS = range(3)
KILL_PUSH_SEEDS = range(3)
# A read timeout short enough to let a stall outlast it (imgmirror's own is sock_read=60 s).
TEST_READ_TIMEOUT = 1.0


# --------------------------------------------------------------------------------------------
# The source: a small set (three images sharing layers) and a big one (a few MiB)
# --------------------------------------------------------------------------------------------

def _small_set() -> dict:
    base = make_layer("chaos-base", 200 * KiB)
    mid = make_layer("chaos-mid", 96 * KiB)
    return {
        "chaos/a:1.0": make_image([base, make_layer("chaos-a", 150 * KiB)], labels={"n": "a"}),
        "chaos/b:1.0": make_image([base, mid], labels={"n": "b"}),
        "chaos/c:1.0": make_image([base, mid, make_layer("chaos-c", 8 * KiB)], labels={"n": "c"}),
    }


def _big_set() -> dict:
    shared = make_layer("chaos-big-shared", 1536 * KiB)
    return {
        "chaos/big-a:1.0": make_image([shared, make_layer("chaos-big-a", 1 * MiB)], labels={"n": "big-a"}),
        "chaos/big-b:1.0": make_image([shared, make_layer("chaos-big-b", 1 * MiB)], labels={"n": "big-b"}),
    }


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    reg = start_registry(tmp_path_factory.mktemp("chaos-source"))
    try:
        small, big = _small_set(), _big_set()
        for ref, img in {**small, **big}.items():
            repo, tag = ref.rsplit(":", 1)
            push(img, reg.host, repo, tag)
        reg.small, reg.big = small, big
        reg.sizes = {b.digest: b.size for img in {**small, **big}.values() for b in img.blobs()}
        yield reg
    finally:
        reg.stop()


@pytest.fixture
def short_read_timeout(monkeypatch):
    """imgmirror's read timeout is hard-wired (sock_read=60 s, mirror/registry/transport.py); patch the
    default in this process so a stall can outlast it within a test's time."""
    orig = mirror.registry.transport.Transport.__init__

    def init(self, session, settings, credentials, timeout=None):
        orig(self, session, settings, credentials,
             timeout or aiohttp.ClientTimeout(total=None, connect=5, sock_read=TEST_READ_TIMEOUT))
    monkeypatch.setattr(mirror.registry.transport.Transport, "__init__", init)


def _note(line: str) -> None:
    """Figures for docs/reliability.md: appended to $CHAOS_LOG when it is set."""
    if os.environ.get("CHAOS_LOG"):
        with open(os.environ["CHAOS_LOG"], "a") as fh:
            fh.write(line + "\n")


def _manifest(path: Path, host: str, refs, retries_host: str | None = None) -> Path:
    reg = f"registries:\n  {retries_host}:\n    retries: 3\n" if retries_host else ""
    lines = "".join(f"  - {host}/{r}\n" for r in refs)
    return write_manifest(path, f"version: 1\n{reg}images:\n{lines}")


# --------------------------------------------------------------------------------------------
# Invariants
# --------------------------------------------------------------------------------------------

def assert_cache_clean(cache: Path) -> int:
    """Every cache entry hashes to its name; returns how many there are."""
    blobs = cache / "blobs" / "sha256"
    n = 0
    for f in blobs.iterdir() if blobs.exists() else []:
        assert "sha256:" + hashlib.sha256(f.read_bytes()).hexdigest() == "sha256:" + f.name, \
            f"corrupt cache entry {f}"
        n += 1
    return n


def assert_registry_clean(reg) -> None:
    """Every blob in the registry's storage hashes to the digest it is stored under."""
    root = reg.storage_dir / "docker/registry/v2/blobs/sha256"
    for data in root.glob("*/*/data") if root.exists() else []:
        got = hashlib.sha256(data.read_bytes()).hexdigest()
        assert got == data.parent.name, f"registry stores bytes of sha256:{got} as sha256:{data.parent.name}"


def assert_bundle_good(path: Path, expected: dict, proxy_host: str) -> Bundle:
    """The bundle verifies and holds exactly the `expected` {ref: digest} (refs under proxy_host)."""
    assert run_cli("verify", path)[0] == 0, f"imgmirror verify rejects {path}"
    b = Bundle(path)
    for digest, data in b.blobs.items():
        assert sha256(data) == digest
    assert b.refs() == {f"{proxy_host}/{r}" for r in expected}
    for ref, digest in expected.items():
        assert b.entry(f"{proxy_host}/{ref}")["digest"] == digest, ref
    return b


def tag_digest(reg, repo: str, tag: str) -> str | None:
    """The digest the registry (asked directly) has under repo:tag, or None."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    req = urllib.request.Request(f"{reg.url}/v2/{repo}/manifests/{tag}", method="HEAD",
                                 headers={"Accept": ACCEPT_ALL})
    try:
        with opener.open(req, timeout=10) as resp:
            return resp.headers["Docker-Content-Digest"]
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise


def assert_pushed(reg, images: dict, prefix: str = "") -> None:
    for ref, img in images.items():
        raw = inspect_raw(reg.host, f"{prefix}{ref}")
        assert sha256(raw) == img.digest, ref


# --------------------------------------------------------------------------------------------
# 1. A seeded random fault mix: sync
# --------------------------------------------------------------------------------------------

def sync_fault_rule(rng: random.Random, sizes: dict, log: list):
    """Per request: 5xx, 429 (Retry-After 0 or 1), and on blob GETs a cut mid-body, a flipped
    byte, a trickle (a short pause per 64 KiB) or a stall longer than the read timeout."""
    def rule(seen, n):
        r = rng.random()
        action = None
        digest = seen.path.rsplit("/", 1)[-1]
        blob_get = seen.method == "GET" and "/blobs/" in seen.path and digest in sizes
        if r < 0.07:
            action = ("status", rng.choice([500, 502, 503]), {})
        elif r < 0.12:
            action = ("status", 429, {"Retry-After": "1" if rng.random() < 0.2 else "0"})
        elif blob_get:
            size = sizes[digest]
            if r < 0.24:
                action = ("cut", rng.randrange(1, size))
            elif r < 0.30:
                action = ("flip", rng.randrange(size))
            elif r < 0.38:
                action = ("stall", 0.03)                     # a trickle
            elif r < 0.42 and size > 64 * KiB:
                action = ("stall", TEST_READ_TIMEOUT + 0.5)  # past the read timeout
        if action:
            log.append((action[0], action[1], seen.method, seen.path))
        return action
    return rule


@pytest.mark.parametrize("seed", SYNC_SEEDS)
def test_sync_under_fault_mix(seed, source, tmp_path, capsys, short_read_timeout):
    rng = random.Random(f"sync-chaos-{seed}")
    log: list = []
    proxy = FaultProxy(source.url, rule=sync_fault_rule(rng, source.sizes, log)).start()
    try:
        manifest = _manifest(tmp_path / "m.yaml", proxy.host, source.small, retries_host=proxy.host)
        started = time.monotonic()
        code, _, err = run_cli("sync", manifest, "-o", tmp_path / "b.tar", "--cache", tmp_path / "c",
                               "--report", tmp_path / "r.json", "--no-progress", capsys=capsys)
        seconds = time.monotonic() - started
    finally:
        proxy.stop()
    assert code in (0, 1), err
    report = json.loads((tmp_path / "r.json").read_text())
    status = {i["reference"]: i for i in report["images"]}
    ok = {r: img.digest for r, img in source.small.items() if status[f"{proxy.host}/{r}"]["status"] == "ok"}
    failed = [ref for ref, i in status.items() if i["status"] != "ok"]
    # flipped bytes never reach the cache; a killed/failed download leaves no temp file
    assert_cache_clean(tmp_path / "c")
    assert list((tmp_path / "c" / "tmp").iterdir()) == []
    if code == 0:
        assert not failed
        assert_bundle_good(tmp_path / "b.tar", ok, proxy.host)
    else:
        assert failed, "exit 1 without a failed image in the report"
        for ref in failed:
            assert status[ref]["error"], ref
            assert f"failed: {ref}:" in err, f"{ref} is not named in the summary:\n{err}"
        if ok:
            assert_bundle_good(tmp_path / "b.tar", ok, proxy.host)
        else:
            assert not (tmp_path / "b.tar").exists()
    assert [p.name for p in tmp_path.glob(".b.tar*")] == []
    kinds = {}
    for a in log:
        key = {"status": str(a[1]), "stall": "stall>timeout" if a[1] > TEST_READ_TIMEOUT else "trickle"}.get(a[0], a[0])
        kinds[key] = kinds.get(key, 0) + 1
    _note(f"sync seed={seed} exit={code} failed={len(failed)} faults={kinds} {seconds:.1f}s")


# --------------------------------------------------------------------------------------------
# 1b. A seeded random fault mix: push
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_bundle(source, tmp_path_factory):
    d = tmp_path_factory.mktemp("small-bundle")
    manifest = _manifest(d / "m.yaml", source.host, source.small)
    assert run_cli("sync", manifest, "-o", d / "b.tar", "--cache", d / "c", "--no-progress")[0] == 0
    return d / "b.tar"


def push_fault_rule(rng: random.Random, log: list):
    """Per request: 5xx, 429; on blob uploads (PUT …?digest=, PATCH) a cut request body, a
    flipped byte in it, or a delay."""
    def rule(seen, n):
        r = rng.random()
        action = None
        upload = seen.method in ("PUT", "PATCH") and "/blobs/uploads/" in seen.path
        length = int(seen.headers.get("Content-Length", 0) or 0)
        if r < 0.06:
            action = ("status", rng.choice([500, 502, 503]), {})
        elif r < 0.10:
            action = ("status", 429, {"Retry-After": "0"})
        elif upload and length > 1:
            if r < 0.20:
                action = ("cut_request", rng.randrange(1, length))
            elif r < 0.30:
                action = ("flip_request", rng.randrange(length))
            elif r < 0.38:
                action = ("delay", 0.1)
        if action:
            log.append(action[0] if action[0] != "status" else str(action[1]))
        return action
    return rule


@pytest.mark.parametrize("seed", PUSH_SEEDS)
def test_push_under_fault_mix(seed, source, small_bundle, make_registry, tmp_path, capsys):
    target = make_registry()
    rng = random.Random(f"push-chaos-{seed}")
    log: list = []
    proxy = FaultProxy(target.url, rule=push_fault_rule(rng, log)).start()
    try:
        config = _manifest(tmp_path / "cfg.yaml", source.host, source.small, retries_host=proxy.host)
        code, _, err = run_cli("push", small_bundle, "--to", proxy.host, "--config", config,
                               "--report", tmp_path / "r.json", "--no-progress", capsys=capsys)
    finally:
        proxy.stop()
    assert code in (0, 1), err
    report = json.loads((tmp_path / "r.json").read_text())
    failed = [i["reference"] for i in report["images"] if i["status"] != "ok"]
    # the registry checks digests itself: nothing flipped is stored under the digest it claims
    assert_registry_clean(target)
    for ref, img in source.small.items():
        repo, tag = ref.rsplit(":", 1)
        got = tag_digest(target, repo, tag)
        assert got in (None, img.digest), f"{ref} is tagged {got}, the bundle has {img.digest}"
    if code == 0:
        assert not failed
        assert_pushed(target, source.small)
    else:
        assert failed
        for ref in failed:
            assert f"failed: {ref} ->" in err, f"{ref} is not named:\n{err}"
    # and a re-run without faults completes it
    code2, _, err2 = run_cli("push", small_bundle, "--to", target.host, "--no-progress", capsys=capsys)
    assert code2 == 0, err2
    assert_pushed(target, source.small)
    assert_registry_clean(target)
    _note(f"push seed={seed} exit={code} failed={len(failed)} faults={sorted(log)}")


# --------------------------------------------------------------------------------------------
# 2. kill -9 at random moments, then a re-run
# --------------------------------------------------------------------------------------------

TMP_BUNDLE = re.compile(r"^\.b\.tar\.\d+\.tmp$")


def _kill_after(cmd: list, delay: float) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "mirror", *map(str, cmd)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        proc.wait(delay)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    return proc


@pytest.mark.parametrize("seed", KILL_SYNC_SEEDS)
def test_kill_9_during_sync_then_rerun(seed, source, tmp_path, capsys):
    rng = random.Random(f"kill-sync-{seed}")
    # trickle every blob (a pause per 64 KiB): the download takes a couple of seconds
    proxy = FaultProxy(source.url, rule=lambda s, n: ("stall", 0.12) if "/blobs/" in s.path else None).start()
    out, cache = tmp_path / "out", tmp_path / "c"
    out.mkdir()
    try:
        manifest = _manifest(tmp_path / "m.yaml", proxy.host, source.big)
        delay = rng.uniform(0.6, 2.6)      # the trickled download takes more than 3 s
        proc = _kill_after(["sync", manifest, "-o", out / "b.tar", "--cache", cache, "--no-progress"], delay)
        killed = proc.returncode == -signal.SIGKILL
        assert killed, f"sync ended before the kill ({proc.returncode}): {proc.stderr.read().decode()}"
        # after the kill: no corrupt cache entry, nothing partial at the final path
        entries = assert_cache_clean(cache) if cache.exists() else 0
        leftovers = sorted(p.name for p in out.iterdir())
        for name in leftovers:
            assert name == "b.tar" or TMP_BUNDLE.match(name), f"unexpected file {name} after kill -9"
        if (out / "b.tar").exists():
            assert run_cli("verify", out / "b.tar")[0] == 0
        parts = sorted(p.name for p in (cache / "tmp").iterdir()) if (cache / "tmp").exists() else []
        assert all(p.endswith(".part") for p in parts), parts
        # the re-run (faults gone) completes and cleans cache/tmp
        proxy.rule = None
        code, _, err = run_cli("sync", manifest, "-o", out / "b.tar", "--cache", cache, "--no-progress",
                               capsys=capsys)
    finally:
        proxy.stop()
    assert code == 0, err
    assert_bundle_good(out / "b.tar", {r: i.digest for r, i in source.big.items()}, proxy.host)
    assert_cache_clean(cache)
    assert list((cache / "tmp").iterdir()) == []
    stale = [n for n in os.listdir(out) if TMP_BUNDLE.match(n)]
    _note(f"kill-sync seed={seed} at={delay:.2f}s killed={killed} cache_entries={entries} "
          f"partials={len(parts)} leftovers={leftovers} stale_after_rerun={stale}")


@pytest.fixture(scope="module")
def big_bundle(source, tmp_path_factory):
    d = tmp_path_factory.mktemp("big-bundle")
    manifest = _manifest(d / "m.yaml", source.host, source.big)
    assert run_cli("sync", manifest, "-o", d / "b.tar", "--cache", d / "c", "--no-progress")[0] == 0
    return d / "b.tar"


@pytest.mark.parametrize("seed", KILL_PUSH_SEEDS)
def test_kill_9_during_push_then_rerun(seed, source, big_bundle, make_registry, tmp_path, capsys):
    rng = random.Random(f"kill-push-{seed}")
    target = make_registry()
    # every write waits a moment before it reaches the registry: uploads are under way for a while
    proxy = FaultProxy(target.url, rule=lambda s, n: ("delay", 0.3) if s.method in ("POST", "PUT", "PATCH")
                       else None).start()
    try:
        delay = rng.uniform(0.7, 2.2)
        proc = _kill_after(["push", big_bundle, "--to", proxy.host, "--jobs", "2", "--no-progress"], delay)
        killed = proc.returncode == -signal.SIGKILL
        assert proc.returncode in (-signal.SIGKILL, 0), proc.stderr.read().decode()
    finally:
        proxy.stop()
    time.sleep(0.4)          # requests the proxy was still delaying land (or not) now
    assert_registry_clean(target)
    for ref, img in source.big.items():
        assert tag_digest(target, *ref.rsplit(":", 1)) in (None, img.digest)
    code, _, err = run_cli("push", big_bundle, "--to", target.host, "--no-progress", capsys=capsys)
    assert code == 0, err
    assert_pushed(target, source.big)
    assert_registry_clean(target)
    _note(f"kill-push seed={seed} at={delay:.2f}s killed={killed}")


# --------------------------------------------------------------------------------------------
# 3. The disk fills up
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("where", ["output", "cache"])
def test_disk_full_during_sync(where, source, tmp_path, capsys):
    small = tmp_path / "small"
    small.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(small)],
                          capture_output=True, text=True, timeout=20)
    if proc.returncode != 0:
        pytest.fail(f"cannot mount a 2 MiB tmpfs at {small} (the disk-full test needs root and "
                    f"CAP_SYS_ADMIN): {proc.stderr.strip()}", pytrace=False)
    try:
        manifest = _manifest(tmp_path / "m.yaml", source.host, source.big)
        bundle = small / "b.tar" if where == "output" else tmp_path / "b.tar"
        cache = tmp_path / "c" if where == "output" else small / "c"
        code, _, err = run_cli("sync", manifest, "-o", bundle, "--cache", cache, "--no-progress",
                               "--report", tmp_path / "r.json", capsys=capsys)
        assert code == 1, err
        assert "space" in err.lower() or str(small) in err, f"the message names neither space nor path:\n{err}"
        # a bundle that cannot be written ends the run before --report is written (see
        # docs/reliability.md); a full cache fails images one by one and the report lists them
        rpath = tmp_path / "r.json"
        report = json.loads(rpath.read_text()) if rpath.exists() else {"images": []}
        if where == "cache":
            assert report["images"], "no --report after the cache filled up"
        ok = {r: i.digest for r, i in source.big.items()
              if any(x["reference"] == f"{source.host}/{r}" and x["status"] == "ok" for x in report["images"])}
        if where == "output":
            assert not bundle.exists(), "a partial bundle was left at the final path"
        elif bundle.exists():          # the images that made it are in a good bundle
            assert ok
            assert_bundle_good(bundle, ok, source.host)
        assert_cache_clean(cache)
        leftovers = sorted(p.name for p in small.rglob("*") if p.is_file() and p.name not in ("lock",)
                           and "blobs" not in p.parts
                           and not (p.parent.name == "uses" and re.fullmatch(r"(run-.*|merged)\.json", p.name))
                           and not (p.parent == small / "c" and p.name == "tags.json"))
        assert leftovers == [], f"temporary files left on the full disk: {leftovers}"
        _note(f"disk-full {where}: exit={code} report={rpath.exists()} message={err.strip()!r}")
    finally:
        subprocess.run(["umount", "-l", str(small)], capture_output=True, timeout=20)
    # with space again (a normal directory) the next run succeeds
    code, _, err = run_cli("sync", manifest, "-o", tmp_path / "ok" / "b.tar", "--cache", tmp_path / "c2",
                           "--no-progress", capsys=capsys)
    assert code == 0, err
    assert_bundle_good(tmp_path / "ok" / "b.tar", {r: i.digest for r, i in source.big.items()}, source.host)


# --------------------------------------------------------------------------------------------
# 4. The target registry restarts mid-push
# --------------------------------------------------------------------------------------------

def _restart(reg, down: float, done: threading.Event) -> None:
    """Stop the registry process, wait, start it again on the same port, storage and config."""
    try:
        reg.process.kill()
        reg.process.wait(5)
        time.sleep(down)
        with open(reg.log_path, "ab") as log:
            proc = subprocess.Popen([registry_binary(), "serve", str(reg.config_path)], stdout=log,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=reg.root)
        reg.process = proc          # the fixture stops this one at teardown
        assert _wait_until_up(reg.url, proc, 10), "the registry did not come back"
    finally:
        done.set()


def test_registry_restart_mid_push(source, big_bundle, make_registry, tmp_path, capsys):
    target = make_registry()
    old_pid = target.process.pid
    uploads = []
    restarted = threading.Event()

    def rule(seen, n):
        if seen.method in ("PUT", "PATCH") and "/blobs/uploads/" in seen.path:
            uploads.append(seen.path)
            if len(uploads) == 2:
                threading.Thread(target=_restart, args=(target, 0.5, restarted), daemon=True).start()
            return ("delay", 0.2)
        return None
    proxy = FaultProxy(target.url, rule=rule).start()
    try:
        config = _manifest(tmp_path / "cfg.yaml", source.host, source.big, retries_host=proxy.host)
        code, _, err = run_cli("push", big_bundle, "--to", proxy.host, "--config", config, "--no-progress",
                               capsys=capsys)
        assert restarted.wait(15), "the restart did not happen"
    finally:
        proxy.stop()
    assert target.process.pid != old_pid and target.alive()
    assert code in (0, 1), err
    first = code
    code, _, err = run_cli("push", big_bundle, "--to", target.host, "--no-progress", capsys=capsys)
    assert code == 0, err
    assert_pushed(target, source.big)
    assert_registry_clean(target)
    _note(f"restart: first push exit={first}, {len(uploads)} uploads through the proxy")
