"""Behaviour around the main path: one fetch per blob under concurrency, the cache lock,
--fail-fast, a corrupted cache, interruption, redirects, tag pagination, progress output."""

from __future__ import annotations

import io
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import base64

import aiohttp
import pytest
from aiohttp import web

from faultproxy import FaultProxy
from helpers import Bundle, run_cli, write_manifest
from imagegen import make_image, make_layer, push
from mirror.progress import BarProgress, make_progress
from mirror.registry.client import Registry
from mirror.cache import Store
from mirror.registry.transport import HostSettings, Transport

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def shared(registry):
    """Six images in six repositories, all on the same two base layers."""
    base = [make_layer("shared-1", 64 * 1024), make_layer("shared-2", 32 * 1024)]
    images = {}
    for i in range(6):
        img = make_image(base + [make_layer(f"own-{i}", 4096)])
        push(img, registry.host, f"test/s{i}", "1.0")
        images[f"test/s{i}"] = img
    registry.images = images
    return registry


def _manifest(tmp_path, host, repos, extra="") -> Path:
    lines = "\n".join(f"  - source: {host}/{r}:1.0" for r in repos)
    return write_manifest(tmp_path / "m.yaml", f"version: 1\n{extra}\nimages:\n{lines}\n")


def test_each_blob_fetched_once_under_concurrency(shared, tmp_path):
    mark = shared.mark()
    manifest = _manifest(tmp_path, shared.host, shared.images, "concurrency: 16")
    assert run_cli("sync", manifest, "-o", tmp_path / "b.tar", "--cache", tmp_path / "c")[0] == 0
    unique = {b.digest for img in shared.images.values() for b in img.blobs()}
    gets = [r.path for r in shared.requests("GET", "/blobs/", since=mark)]
    assert len(gets) == len(unique) == 2 + 6 + 6      # two shared layers, six own layers, six configs
    assert len(Bundle(tmp_path / "b.tar").blobs) == len(unique) + 6   # + the six manifests


def test_wait_lock_waits_for_the_holder(shared, tmp_path):
    manifest = _manifest(tmp_path, shared.host, ["test/s0"])
    store = Store(tmp_path / "c")
    held = threading.Event()

    def hold():
        with store.lock():
            held.set()
            time.sleep(1.0)
    t = threading.Thread(target=hold)
    t.start()
    held.wait(5)
    code = run_cli("sync", manifest, "-o", tmp_path / "b.tar", "--cache", tmp_path / "c", "--wait-lock", "20")[0]
    t.join()
    assert code == 0


def test_fail_fast_writes_no_bundle(shared, tmp_path, capsys):
    manifest = write_manifest(tmp_path / "m.yaml", f"""version: 1
images:
  - source: {shared.host}/test/missing:1.0
  - source: {shared.host}/test/s0:1.0
""")
    code, _, err = run_cli("sync", manifest, "-o", tmp_path / "b.tar", "--cache", tmp_path / "c",
                           "--fail-fast", capsys=capsys)
    assert code == 1
    assert "test/missing" in err and "--fail-fast" in err
    assert not (tmp_path / "b.tar").exists()


def test_corrupt_cache_entry_is_caught_and_evicted(shared, tmp_path, capsys):
    manifest = _manifest(tmp_path, shared.host, ["test/s0"])
    args = ["sync", manifest, "--cache", tmp_path / "c"]
    assert run_cli(*args, "-o", tmp_path / "one.tar")[0] == 0
    layer = shared.images["test/s0"].layers[0].digest
    cached = tmp_path / "c" / "blobs" / "sha256" / layer.split(":")[1]
    data = bytearray(cached.read_bytes())
    data[100] ^= 0xFF
    cached.write_bytes(bytes(data))          # the disk (or someone) changed a cached layer
    code, _, err = run_cli(*args, "-o", tmp_path / "two.tar", capsys=capsys)
    assert code == 1 and "corrupt" in err and layer in err
    assert not (tmp_path / "two.tar").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".two.tar")] == []
    assert not cached.exists()
    # the next run fetches the layer again and produces the same bundle as the first
    assert run_cli(*args, "-o", tmp_path / "three.tar")[0] == 0
    assert (tmp_path / "three.tar").read_bytes() == (tmp_path / "one.tar").read_bytes()


def test_interrupt_exits_130_and_leaves_nothing_partial(registry, tmp_path):
    big = make_image([make_layer("interrupt-big", 2 * 1024 * 1024)])
    push(big, registry.host, "test/big", "1.0")
    proxy = FaultProxy(registry.url).start()
    proxy.rule = lambda seen, n: ("stall", 30) if "/blobs/" in seen.path and seen.method == "GET" else None
    try:
        manifest = write_manifest(tmp_path / "m.yaml", f"version: 1\nimages:\n  - {proxy.host}/test/big:1.0\n")
        proc = subprocess.Popen([sys.executable, "-m", "mirror", "sync", str(manifest), "-o",
                                 str(tmp_path / "b.tar"), "--cache", str(tmp_path / "c")],
                                stderr=subprocess.PIPE, cwd=ROOT)
        deadline = time.time() + 20
        while not any(s.method == "GET" and "/blobs/" in s.path for s in proxy.seen) and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    finally:
        proxy.stop()
    assert proc.returncode == 130, err.decode()
    assert b"interrupted" in err
    assert not (tmp_path / "b.tar").exists()
    assert list((tmp_path / "c" / "tmp").iterdir()) == []
    assert list((tmp_path / "c" / "blobs" / "sha256").glob("*")) == [] or all(
        p.name != big.layers[0].digest.split(":")[1] for p in (tmp_path / "c" / "blobs" / "sha256").iterdir())


def test_redirect_to_another_host_drops_authorization(registry_basic, tmp_path):
    """A blob GET answered with 307 to another origin: the credentials stay behind."""
    img = make_image([make_layer("redirect", 8192)])
    push(img, registry_basic.host, "test/r", "1.0", registry_basic.creds)
    layer = img.layers[0].digest
    # The other origin stands for object storage with a presigned URL: it authenticates to the
    # registry by itself, so the blob arrives although imgmirror sends it no credentials.
    basic = "Basic " + base64.b64encode(f"{registry_basic.username}:{registry_basic.password}".encode()).decode()
    other = FaultProxy(registry_basic.url, upstream_headers={"Authorization": basic}).start()
    front = FaultProxy(registry_basic.url).start()
    front.rule = lambda seen, n: (("redirect", f"http://{other.host}{seen.path}")
                                  if seen.path.endswith(layer) and seen.method == "GET" else None)
    try:
        manifest = write_manifest(tmp_path / "m.yaml", f"""version: 1
registries:
  {front.host}:
    username: {registry_basic.username}
    password: {registry_basic.password}
images:
  - {front.host}/test/r:1.0
""")
        code = run_cli("sync", manifest, "-o", tmp_path / "b.tar", "--cache", tmp_path / "c")[0]
    finally:
        front.stop()
        other.stop()
    assert code == 0
    assert layer in Bundle(tmp_path / "b.tar").blobs
    assert [s.path for s in other.seen] == [f"/v2/test/r/blobs/{layer}"]
    assert "Authorization" not in other.seen[0].headers
    blob_gets = [s for s in front.seen if s.path.endswith(layer)]
    assert blob_gets and all("Authorization" in s.headers for s in blob_gets)


async def test_tag_list_follows_link_pagination():
    """Relative and absolute `Link: <…>; rel="next"` are followed; a short page is not the end.

    A fake server, because distribution 2.8 ignores `n` on tag lists and never pages them.
    """
    pages = {None: (["a", "b"], '</v2/app/tags/list?n=2&last=b>; rel="next"'),
             "b": (["c"], None),      # short page, but a next link: not the end
             "c": (["d", "e"], None)}
    seen = []

    async def tags(request):
        last = request.query.get("last")
        seen.append(last)
        names, link = pages[last]
        if last == "b":
            link = f'<http://{request.host}/v2/app/tags/list?n=2&last=c>; rel="next"'
        return web.json_response({"name": "app", "tags": names}, headers={"Link": link} if link else {})
    app = web.Application()
    app.router.add_get("/v2/app/tags/list", tags)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host = f"127.0.0.1:{runner.addresses[0][1]}"
    try:
        async with aiohttp.ClientSession() as session:
            reg = Registry(Transport(session, HostSettings(host=host, api_host=host, retries=0), None))
            assert await reg.list_tags("app", page_size=2) == ["a", "b", "c", "d", "e"]
    finally:
        await runner.cleanup()
    assert seen == [None, "b", "c"]


def test_progress_bars_on_a_terminal_and_lines_without():
    class Tty(io.StringIO):
        def isatty(self):
            return True
    tty = Tty()
    bars = make_progress(None, 0, tty)
    assert isinstance(bars, BarProgress)
    bars.images_total(2)
    bars.bytes_total(2048)
    bars.advance(1024)
    bars.image_done("reg/x:1", True, "ok")
    bars.image_done("reg/y:1", False, "boom")
    bars.close()
    assert "images" in tty.getvalue() and "FAILED reg/y:1 boom" in tty.getvalue()
    plain = io.StringIO()
    lines = make_progress(None, 0, plain)
    assert not isinstance(lines, BarProgress)
    lines.image_done("reg/x:1", True, "sha256:abc 1 KiB 0.1s")
    assert plain.getvalue() == "imgmirror: ok reg/x:1 sha256:abc 1 KiB 0.1s\n"
