"""imgmirror cache info / cache prune, and the use record behind them, against a real registry.

Two manifests are synced into one cache: a.yaml (test/a:1.0) and b.yaml (test/b:1.0), two images
over one shared base layer. Use times are faked by writing the use record (uses/merged.json),
never by sleeping. docs/cache.md is run as written at the end (hosts substituted only).

Until `cache` is registered in mirror/cli/__init__.py, the tests add it to the real parser
(mirror.cli.cache.add_parser), so `main` maps errors to exit codes exactly as it will then.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import mirror.cli as cli
from helpers import run_cli, write_manifest
from imagegen import make_image, make_layer, push
from mirror.cache import COMPACT_AFTER, Store
from mirror.cli.cache import add_parser

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "cache.md"
DAY = 86400


def _with_cache_command(build):
    def build_parser():
        p = build()
        sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
        if "cache" not in sub.choices:        # not registered yet: add it as the lead will
            add_parser(sub)
        return p
    return build_parser


@pytest.fixture(autouse=True)
def cache_command(monkeypatch):
    monkeypatch.setattr(cli, "build_parser", _with_cache_command(cli.build_parser))


class Two:
    """The registry, the two images, their manifests and the cache they were synced into."""

    def __init__(self, registry, tmp_path):
        self.registry, self.tmp = registry, tmp_path
        self.base = make_layer("prune-base", 48 * 1024)
        self.a = make_image([self.base, make_layer("prune-a", 16 * 1024)])
        self.b = make_image([self.base, make_layer("prune-b", 24 * 1024)])
        push(self.a, registry.host, "test/a", "1.0")
        push(self.b, registry.host, "test/b", "1.0")
        self.cache = tmp_path / "c"
        self.a_yaml = write_manifest(tmp_path / "a.yaml", f"version: 1\nimages: [{registry.host}/test/a:1.0]\n")
        self.b_yaml = write_manifest(tmp_path / "b.yaml", f"version: 1\nimages: [{registry.host}/test/b:1.0]\n")

    @staticmethod
    def digests(img) -> set[str]:
        return {img.digest} | {b.digest for b in img.blobs()}

    @staticmethod
    def sizes(img) -> dict[str, int]:
        return {img.digest: len(img.raw), **{b.digest: b.size for b in img.blobs()}}

    def sync(self, manifest: Path, name: str = "bundle") -> int:
        return run_cli("sync", manifest, "-o", self.tmp / f"{name}.tar", "--cache", self.cache, "-q")[0]

    def files(self) -> dict[str, int]:
        d = self.cache / "blobs" / "sha256"
        return {"sha256:" + p.name: p.stat().st_size for p in d.iterdir()}

    def set_uses(self, times: dict[str, float]) -> None:
        """Fake the use record: every run file gone, merged.json says exactly `times`."""
        uses = self.cache / "uses"
        for p in uses.glob("*.json"):
            p.unlink()
        (uses / "merged.json").write_text(json.dumps({"version": 1, "used": times}))

    def prune(self, *args, capsys) -> tuple[int, str, str]:
        return run_cli("cache", "prune", "--cache", self.cache, *args, capsys=capsys)


@pytest.fixture
def two(registry, tmp_path):
    t = Two(registry, tmp_path)
    assert t.sync(t.a_yaml, "a") == 0
    assert t.sync(t.b_yaml, "b") == 0
    assert set(t.files()) == t.digests(t.a) | t.digests(t.b)
    return t


def _removed(out: str, verb: str = "removed") -> list[str]:
    return re.findall(rf"^{verb} (sha256:[0-9a-f]{{64}}) ", out, re.M)


# -- the use record ------------------------------------------------------------------------------


def test_every_run_records_what_it_used_when_it_releases_the_lock(two):
    run_files = sorted((two.cache / "uses").glob("run-*.json"))
    assert len(run_files) == 2                          # one per sync
    docs = [json.loads(p.read_text()) for p in run_files]
    assert all(d["version"] == 1 and abs(d["time"] - time.time()) < 120 for d in docs)
    # each run used (downloaded, or found and copied into its bundle) everything its image needs
    assert set(docs[0]["digests"]) == two.digests(two.a)
    assert set(docs[1]["digests"]) == two.digests(two.b)
    # a run that downloads nothing still uses what it finds in the cache
    assert two.sync(two.a_yaml, "a2") == 0
    (third,) = set((two.cache / "uses").glob("run-*.json")) - set(run_files)
    assert set(json.loads(third.read_text())["digests"]) == two.digests(two.a)


def test_has_records_in_memory_and_writes_once_at_release(tmp_path):
    store = Store(tmp_path / "c")
    data = b'{"x": 1}'
    from mirror.core.oci import sha256_digest
    digest = sha256_digest(data)
    with store.lock():
        store.put(digest, data)
        for _ in range(1000):
            assert store.has(digest)
        assert not (tmp_path / "c" / "uses").exists()     # nothing written while the run goes
    (f,) = (tmp_path / "c" / "uses").glob("run-*.json")
    assert json.loads(f.read_text())["digests"] == [digest]
    with store.lock():          # nothing used: no file
        pass
    assert len(list((tmp_path / "c" / "uses").glob("*.json"))) == 1


def test_run_files_are_folded_into_one_and_unreadable_ones_are_ignored(tmp_path):
    from mirror.core.oci import sha256_digest
    blobs = [f"blob {i}".encode() for i in range(3)]
    digests = [sha256_digest(b) for b in blobs]
    for b, d in zip(blobs, digests, strict=True):
        Store(tmp_path / "c").put(d, b)         # outside a lock: never recorded
    store = Store(tmp_path / "c")
    uses = tmp_path / "c" / "uses"
    uses.mkdir(exist_ok=True)
    for i in range(COMPACT_AFTER - 1):
        (uses / f"run-{i:04d}-1.json").write_text(json.dumps({"version": 1, "time": 1000 + i, "digests": digests[:2]}))
    (uses / "run-9999-1.json").write_text("{not json")
    times, problems = store.use_times()
    assert times == {digests[0]: 1000 + COMPACT_AFTER - 2, digests[1]: 1000 + COMPACT_AFTER - 2}
    assert len(problems) == 1 and "run-9999-1.json" in problems[0]
    with store.lock():          # this release writes the 65th file: they are folded into merged.json
        store.has(digests[2])
    assert [p.name for p in uses.glob("*.json")] == ["merged.json"]
    merged = json.loads((uses / "merged.json").read_text())["used"]
    assert merged[digests[0]] == 1000 + COMPACT_AFTER - 2 and merged[digests[2]] >= time.time() - 60
    entries, problems = store.entries()
    assert problems == [] and {e.digest for e in entries if e.recorded} == set(digests)


# -- prune ---------------------------------------------------------------------------------------


def test_keep_one_manifest_removes_exactly_the_others_own_blobs(two, capsys):
    only_b = two.digests(two.b) - two.digests(two.a)
    assert len(only_b) == 3 and two.base.digest not in only_b      # manifest, config, own layer
    code, out, err = two.prune("--keep", two.a_yaml, capsys=capsys)
    assert code == 0, err
    assert set(_removed(out)) == only_b
    assert set(two.files()) == two.digests(two.a)                  # the shared base layer stays
    freed = sum(two.sizes(two.b)[d] for d in only_b)
    assert f"prune: freed {human(freed)} (3 blobs)" in out
    assert "4 needed by the kept manifests" in out
    # the record forgets what is gone
    merged = json.loads((two.cache / "uses" / "merged.json").read_text())["used"]
    assert set(merged) == two.digests(two.a)
    # both kept: nothing more to remove
    code, out, _ = two.prune("--keep", two.a_yaml, two.b_yaml, "--dry-run", capsys=capsys)
    assert code == 0 and _removed(out, "would remove") == []


def test_unused_for_protects_what_was_used_recently(two, capsys):
    now = time.time()
    b_manifest, b_config, b_layer = two.b.digest, two.b.config.digest, two.b.layers[1].digest
    times = {d: now - 60 for d in two.digests(two.a)}
    times.update({b_manifest: now - 40 * DAY, b_config: now - 31 * DAY, b_layer: now - 1 * DAY})
    two.set_uses(times)
    # a blob with no record counts as used at its file's mtime
    del times[two.a.layers[1].digest]
    two.set_uses(times)
    os.utime(two.cache / "blobs" / "sha256" / two.a.layers[1].digest.split(":")[1], (now - 60 * DAY,) * 2)
    code, out, err = two.prune("--unused-for", "30d", capsys=capsys)
    assert code == 0, err
    assert _removed(out) == [two.a.layers[1].digest, b_manifest, b_config]     # oldest use first
    assert "4 used within 30d" in out
    assert set(two.files()) == (two.digests(two.a) | two.digests(two.b)) - {two.a.layers[1].digest, b_manifest,
                                                                             b_config}


def test_keep_and_unused_for_together(two, capsys):
    now = time.time()
    times = {d: now - 90 * DAY for d in two.digests(two.a) | two.digests(two.b)}
    times[two.b.layers[1].digest] = now - 2 * DAY
    two.set_uses(times)
    code, out, _ = two.prune("--keep", two.a_yaml, "--unused-for", "1w", capsys=capsys)
    assert code == 0
    # a's blobs are old but needed; b's own layer is not needed but recent
    assert set(_removed(out)) == {two.b.digest, two.b.config.digest}
    assert "(4 needed by the kept manifests, 1 used within 1w)" in out


def test_max_size_removes_the_least_recently_used_first(two, capsys):
    now = time.time()
    files = two.files()
    order = sorted(files)                          # any order, as long as every time differs
    two.set_uses({d: now - (len(order) - i) * DAY for i, d in enumerate(order)})
    total = sum(files.values())
    # room for all but the two oldest, and a byte less: the third oldest goes too
    limit = total - files[order[0]] - files[order[1]] - 1
    code, out, err = two.prune("--max-size", str(limit), capsys=capsys)
    assert code == 0, err
    assert _removed(out) == order[:3]
    assert set(two.files()) == set(order[3:])
    assert sum(two.files().values()) <= limit
    assert f"{len(order) - 3} blobs" in out


def test_max_size_never_removes_what_a_kept_manifest_needs(two, capsys):
    now = time.time()
    times = {d: now - 100 * DAY for d in two.digests(two.a)}       # a's blobs are the oldest
    times.update({d: now - i * DAY for i, d in enumerate(sorted(two.digests(two.b) - two.digests(two.a)))})
    two.set_uses(times)
    code, out, err = two.prune("--keep", two.a_yaml, "--max-size", "0", capsys=capsys)
    assert code == 0
    only_b = sorted(two.digests(two.b) - two.digests(two.a), key=lambda d: times[d])
    assert _removed(out) == only_b
    assert set(two.files()) == two.digests(two.a)
    assert "over --max-size 0: the rest is needed by the kept manifests" in err


def test_dry_run_removes_nothing(two, capsys):
    before = two.files()
    uses_before = {p.name: p.read_bytes() for p in (two.cache / "uses").iterdir()}
    code, out, _ = two.prune("--keep", two.a_yaml, "--dry-run", capsys=capsys)
    assert code == 0
    assert set(_removed(out, "would remove")) == two.digests(two.b) - two.digests(two.a)
    assert "nothing was removed" in out and _removed(out) == []
    assert two.files() == before
    # prune's own resolution is not a use, and a dry run writes no record
    assert {p.name: p.read_bytes() for p in (two.cache / "uses").iterdir()} == uses_before


def test_a_held_lock_refuses_with_exit_3(two, capsys):
    before = two.files()
    held, release = threading.Event(), threading.Event()

    def hold():
        with Store(two.cache).lock():
            held.set()
            release.wait(30)
    t = threading.Thread(target=hold)
    t.start()
    try:
        assert held.wait(10)
        for extra in ([], ["--dry-run"]):
            code, _, err = two.prune("--keep", two.a_yaml, *extra, capsys=capsys)
            assert code == 3, err
            assert "is in use by pid" in err
        # info does not take the lock: it runs beside a sync, and says who holds the cache
        code, out, _ = run_cli("cache", "info", "--cache", two.cache, "--json", capsys=capsys)
        assert code == 0 and json.loads(out)["in_use"].startswith(f"pid {os.getpid()} on ")
    finally:
        release.set()
        t.join()
    assert two.files() == before


def test_an_image_that_does_not_resolve_removes_nothing(two, capsys):
    before = two.files()
    broken = write_manifest(two.tmp / "broken.yaml", f"version: 1\nimages:\n  - {two.registry.host}/test/a:1.0\n"
                            f"  - {two.registry.host}/test/gone:1.0\n")
    code, out, err = two.prune("--keep", broken, capsys=capsys)
    assert code == 1
    assert "did not resolve" in err and "nothing was removed" in err and "test/gone:1.0" in err
    assert out == "" and two.files() == before


def test_a_later_sync_downloads_only_what_was_pruned(two, capsys):
    assert two.prune("--keep", two.a_yaml, capsys=capsys)[0] == 0
    mark = two.registry.mark()
    assert two.sync(two.b_yaml, "b-again") == 0
    blob_gets = {r.path.rsplit("/", 1)[1] for r in two.registry.requests("GET", "/blobs/", since=mark)}
    assert blob_gets == {two.b.config.digest, two.b.layers[1].digest}          # not the shared base
    manifest_gets = [r.path for r in two.registry.requests("GET", "/manifests/", since=mark)]
    # its manifest was pruned too: one GET by tag, no HEAD first (the cached digest is gone)
    assert manifest_gets == ["/v2/test/b/manifests/1.0"]
    assert two.registry.count("HEAD", "/manifests/", since=mark) == 0
    mark = two.registry.mark()
    assert two.sync(two.a_yaml, "a-again") == 0
    assert two.registry.count("GET", "/blobs/", since=mark) == 0


def test_usage_errors(two, capsys):
    code, _, err = two.prune(capsys=capsys)
    assert code == 2 and "--keep MANIFEST, --unused-for AGE and/or --max-size SIZE" in err
    code, _, err = two.prune("--unused-for", "30", capsys=capsys)
    assert code == 2 and "30d" in err
    code, _, err = two.prune("--max-size", "lots", capsys=capsys)
    assert code == 2
    code, _, err = run_cli("cache", "prune", "--cache", two.tmp / "nowhere", "--max-size", "1G", capsys=capsys)
    assert code == 1 and "no such directory" in err and not (two.tmp / "nowhere").exists()
    code, _, err = run_cli("cache", capsys=capsys)
    assert code == 2


def test_a_kept_manifest_naming_another_cache_is_warned_about(two, capsys):
    other = write_manifest(two.tmp / "other.yaml", f"version: 1\ncache: elsewhere\nimages: [{two.registry.host}/test/a:1.0]\n")
    code, _, err = two.prune("--keep", other, "--dry-run", capsys=capsys)
    assert code == 0 and f"says cache: {two.tmp / 'elsewhere'}" in err


# -- info ----------------------------------------------------------------------------------------


def test_info_numbers_match_the_files(two, capsys):
    now = int(time.time())
    files = two.files()
    times = {d: now - i * 3600 for i, d in enumerate(sorted(files))}
    unrecorded = sorted(files)[0]
    del times[unrecorded]
    two.set_uses(times)
    mtime = now - 100 * DAY
    os.utime(two.cache / "blobs" / "sha256" / unrecorded.split(":")[1], (mtime, mtime))
    code, out, err = run_cli("cache", "info", "--cache", two.cache, "--json", capsys=capsys)
    assert code == 0, err
    info = json.loads(out)
    assert info == {"cache": str(two.cache), "blobs": len(files), "bytes": sum(files.values()),
                    "oldest_use": iso(mtime), "newest_use": iso(max(times.values())),
                    "recorded": len(files) - 1, "in_use": None}
    code, out, _ = run_cli("cache", "info", "--cache", two.cache, capsys=capsys)
    assert code == 0
    assert out.splitlines() == [
        f"cache {two.cache}",
        f"  {len(files)} blobs, {human(sum(files.values()))} ({sum(files.values())} bytes)",
        f"  oldest use {iso(mtime)} (100 days ago)",
        f"  newest use {iso(max(times.values()))} (1 hour ago)",
        f"  use times: {len(files) - 1} blobs recorded, 1 from file times",
    ]
    # info writes nothing, not even a record of its own
    assert [p.name for p in (two.cache / "uses").iterdir()] == ["merged.json"]


def test_info_of_an_empty_and_of_a_missing_cache(tmp_path, capsys):
    Store(tmp_path / "c")
    code, out, _ = run_cli("cache", "info", "--cache", tmp_path / "c", "--json", capsys=capsys)
    assert code == 0 and json.loads(out)["blobs"] == 0 and json.loads(out)["oldest_use"] is None
    code, _, err = run_cli("cache", "info", "--cache", tmp_path / "none", capsys=capsys)
    assert code == 1 and "no such directory" in err and not (tmp_path / "none").exists()


def human(n):
    from mirror.core.units import human as h
    return h(n)


def iso(t):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


# -- docs/cache.md, run as written -----------------------------------------------------------------

SHIM = """import argparse, sys
sys.path.insert(0, {tests!r})
import mirror.cli as cli
from test_cache_prune import _with_cache_command
cli.build_parser = _with_cache_command(cli.build_parser)
sys.exit(cli.main(sys.argv[1:]))
"""

CRON = re.compile(r"^(?:[\d*/,-]+\s+){5}(.+)$")


def doc_blocks() -> list[tuple[str, str]]:
    text = DOC.read_text()
    blocks = []
    for m in re.finditer(r"^```(\w*)\n(.*?)^```$", text, re.M | re.S):
        assert m.group(1) in ("sh", "yaml"), f"docs/cache.md: a ```{m.group(1)} block; only sh and yaml are run"
        blocks.append((m.group(1), m.group(2)))
    return blocks


def test_the_doc_runs_as_written(registry, tmp_path):
    """The doc's yaml blocks are written where their first line says (~/mirror/mirror.yaml), with
    ghcr.io the test registry; each command of its sh blocks (a crontab line: its command) runs
    with bash in $HOME, with `imgmirror` on PATH, and must exit 0."""
    base = make_layer("doc-base", 32 * 1024)
    app = make_image([base, make_layer("doc-app", 8 * 1024)])
    worker = make_image([base, make_layer("doc-worker", 8 * 1024)])
    push(app, registry.host, "org/app", "1.0")
    push(worker, registry.host, "org/worker", "1.0")
    home = tmp_path / "home"
    (home / "mirror").mkdir(parents=True)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "imgmirror"
    shim.write_text(f"#!{sys.executable}\n" + SHIM.format(tests=str(Path(__file__).parent)))
    shim.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("XDG_CACHE_HOME", "DOCKER_CONFIG", "REGISTRY_AUTH_FILE")}
    env.update(HOME=str(home), PATH=f"{bin_dir}:{env['PATH']}", PYTHONPATH=str(ROOT))
    blobs = home / ".cache" / "imgmirror" / "blobs" / "sha256"

    def cached() -> set[str]:
        return {"sha256:" + p.name for p in blobs.iterdir()}

    def digests(img) -> set[str]:
        return {img.digest} | {b.digest for b in img.blobs()}

    Store(home / ".cache" / "imgmirror")       # the info section comes first: an empty cache is there
    ran = []
    for lang, body in doc_blocks():
        first = body.splitlines()[0].strip()
        if lang == "yaml":
            assert first == "# ~/mirror/mirror.yaml", first
            (home / "mirror" / "mirror.yaml").write_text(body.replace("ghcr.io", registry.host))
            continue
        for line in body.splitlines():
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            m = CRON.match(line)
            cmd = m.group(1) if m else line
            assert cmd.startswith("imgmirror "), cmd
            before = cached()
            proc = subprocess.run(["bash", "-c", cmd], cwd=home, env=env, capture_output=True, text=True,
                                  timeout=300)
            assert proc.returncode == 0, f"{cmd}\n{proc.stdout}\n{proc.stderr}"
            ran.append(cmd.split("#")[0].split())
            step = " ".join(ran[-1][1:4])
            # what each step should have done to the cache
            if step.startswith("sync") and len(ran) == 3:
                assert cached() == digests(app) | digests(worker)
            elif "--dry-run" in cmd:
                assert cached() == before
                assert set(re.findall(r"^would remove (\S+)", proc.stdout, re.M)) == digests(worker) - digests(app)
            elif step.startswith("cache prune --keep") and len(ran) == 6:
                assert cached() == digests(app)               # the shared base layer stayed
                assert set(re.findall(r"^removed (\S+)", proc.stdout, re.M)) == digests(worker) - digests(app)
            elif step.startswith("cache info") and "--json" not in cmd:
                assert proc.stdout.startswith(f"cache {home / '.cache' / 'imgmirror'}\n")
            elif step.startswith("cache info"):
                assert json.loads(proc.stdout)["blobs"] == len(cached())
            else:
                assert cached() == before            # nothing else removes anything here
    assert [" ".join(c[1:3]) for c in ran] == ["cache info", "cache info", "sync ~/mirror/mirror.yaml", "cache info",
                                              "cache prune", "cache prune", "cache prune", "cache prune",
                                              "sync ~/mirror/mirror.yaml", "cache prune"]
    assert cached() == digests(app)
