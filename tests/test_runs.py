"""A run owns its threads (issue 9): no thread pool lives at module level, two syncs at once in
one process share nothing and both finish right, and a finished run leaves no thread behind."""

from __future__ import annotations

import concurrent.futures
import importlib
import pkgutil
import threading

import mirror
from helpers import Bundle, run_cli, write_manifest
from imagegen import make_image, make_layer, push


def test_no_module_holds_a_thread_pool():
    pools = []
    for info in pkgutil.walk_packages(mirror.__path__, "mirror."):
        if info.name == "mirror.__main__":          # importing it runs the CLI
            continue
        module = importlib.import_module(info.name)
        pools += [f"{info.name}.{k}" for k, v in vars(module).items()
                  if isinstance(v, concurrent.futures.Executor)]
    assert pools == []


def _imgmirror_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("imgmirror-")]


def test_two_syncs_at_once_share_nothing_and_leave_no_thread(registry, tmp_path):
    images = {f"test/run{i}:1.0": make_image([make_layer(f"runs-{i}", 300_000), make_layer("runs-shared", 200_000)])
              for i in range(2)}
    for ref, img in images.items():
        push(img, registry.host, *ref.split(":"))
    before = _imgmirror_threads()
    results = {}

    def sync(i: int) -> None:
        manifest = write_manifest(tmp_path / f"m{i}.yaml",
                                  f"version: 1\nimages:\n  - {registry.host}/test/run{i}:1.0\n")
        results[i] = run_cli("sync", manifest, "-o", tmp_path / f"b{i}.tar", "--cache", tmp_path / f"c{i}", "-q")

    threads = [threading.Thread(target=sync, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == {0: (0, "", ""), 1: (0, "", "")}
    for i in range(2):
        b = Bundle(tmp_path / f"b{i}.tar")
        assert b.entry(f"{registry.host}/test/run{i}:1.0")["digest"] == images[f"test/run{i}:1.0"].digest
    assert _imgmirror_threads() == before


def test_the_output_name_is_fixed_at_the_start_of_a_run(tmp_path, monkeypatch):
    """`output: …-{date}-{time}.tar` names one file for the whole run, even across a second."""
    import time

    from mirror.cache import Store
    from mirror.engine.sync import Syncer, SyncOptions
    from mirror.progress import Progress
    from mirror.specfile import load_spec

    manifest = write_manifest(tmp_path / "m.yaml", "version: 1\noutput: out/b-{date}-{time}.tar\n"
                                                   "images: [example.com/a:1]\n")
    ticks = iter([time.struct_time((2026, 12, 3, 23, 59, 59, 3, 337, 0)),
                  time.struct_time((2026, 12, 4, 0, 0, 0, 4, 338, 0))])
    monkeypatch.setattr(time, "gmtime", lambda *a: next(ticks))
    syncer = Syncer(load_spec(manifest), Store(tmp_path / "c"), SyncOptions(), Progress())
    try:
        assert syncer.out.path() == syncer.out.path() == str(tmp_path / "out" / "b-20261203-235959.tar")
    finally:
        syncer.ctx.close()
