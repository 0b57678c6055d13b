#!/usr/bin/env python3
"""WAN benchmark: `imgmirror sync` against the skopeo loop through a pacing proxy.

    .venv/bin/python benchmarks/bench_wan.py [--scale 0.25] [--runs 3] [--meta-skopeo-runs 1]
        [--rtt 0.04] [--conn-rate 10] [--link-rate 60] [--before EXE | --before-rev REV]
        [--skip-skopeo] [--out docs/benchmarks.md]

Users do not sync from a registry on 127.0.0.1: between them and Docker Hub or GHCR there is a
link with a round-trip time and a bandwidth, and there the tool is measured against the link
floor (unique bytes / link rate), not against CPU.  This benchmark puts benchmarks/wanproxy.py
(a separate process; what it models is in its docstring: one RTT per request/response, two per
new connection for TCP and TLS, each connection paced to --conn-rate, all of them together to
--link-rate) in front of one local `docker-registry`, and points both tools at the proxy's
port, in one invocation, on two sets:

a. bench_sync.py's set (24 images, 8 of them two-platform indexes, on 3 base images) at
   --scale (0.25: about 125 MiB of unique layers): the bandwidth-bound case;
b. a metadata-bound set: 150 small images in 10 repositories (15 tags each; every image one
   256 KiB base layer shared within its repository and one small layer of its own, 4-32 KiB):
   a few MiB in all, so round trips, not bytes, set the pace.

Each set: --runs alternating runs (imgmirror, skopeo, ...), each cold (empty cache, no
output): `imgmirror sync MANIFEST -o OUT.tar --cache EMPTY` with its defaults, and
`skopeo copy --all --preserve-digests` of each image in turn into one OCI layout, then
`tar -cf` (bench_sync.run_skopeo).  skopeo on set b takes 150 processes, so it runs
--meta-skopeo-runs times (default 1).  Then `imgmirror --version` 5 times (no proxy).

The link's reference, after the sets' runs (same proxy process): what it delivers to a plain
HTTP client.  One `curl -sS --fail --parallel --parallel-immediate --parallel-max 8` (keep-alive
connections, 8 at once) over every blob of set a, largest first, through the proxy: layers and
configs as /v2/REPO/blobs/DIGEST, manifests and indexes as /v2/REPO/manifests/DIGEST
(distribution serves no manifest under /blobs/), REPO an image of the set whose manifest reaches
the blob in the set's layout; --runs times, and as many with --parallel-max 16; every answer
checked (200, the blob's size).  --parallel-immediate: without it curl (7.88) opens one
connection and holds every other transfer until that connection's first one has ended (here the
largest blob, ~1 s alone at --conn-rate), which is curl's doing, not the link's.  curl 7.68 or
later is required.  The report sets imgmirror against it: its wall / curl's, its transfer-phase
MB/s against curl's.

With --before EXE (an imgmirror of earlier code) each round runs before, imgmirror, skopeo in
turn, before the same cold way as imgmirror; --before-rev REV makes that EXE: `git archive REV
mirror` under benchmarks/work/wan/before-REV/, compiled (PYTHONDONTWRITEBYTECODE=1 here), and a
wrapper running its mirror.cli:console (the console script; mirror.cli:main where REV has no
console) with this Python; the commit is named in the report.
--skip-skopeo leaves skopeo out (quick trials).

`sync --to` (set b): a second, empty `docker-registry` (the destination) behind a second proxy
(same link, its own log).  For each run (and tool: before too): cold, `imgmirror sync
mirror-b.yaml --to DESTPROXY/run-I-after --cache EMPTY --no-progress --report R.json` (before:
run-I-before; every image ok; after imgmirror's first, every image's manifest in the
destination, asked directly, at the set's digest), then the no-op: the same command again.  From
both proxies' logs: requests by kind, destination requests per image, and for the no-op its
HEADs' own time (the larger over the two sides of ceil(HEADs / peak connections) x RTT) and what
the wall adds to it beyond start-up (process start to its first connection at either proxy), in
RTTs.

Reported: wall time of each (median), the link floor (unique bytes / link rate), tool / floor,
imgmirror / skopeo; from the proxy's log, the requests and connections each tool used, and for
set b the estimate requests x RTT / connections (connections: the most the tool had open at
once).  For imgmirror's first run of each set, where its time goes: start-up (process start to
its first connection), metadata (to the first layer byte), transfer (to the last byte),
tail (to the process's exit), and the requests in flight and MB/s delivered over time.

Sets are built and pushed once, then reused: the layouts under benchmarks/work/wan/sets-*/,
the registry's storage under benchmarks/work/wan/registry/ (rebuilt when a set changes).
The script imports nothing from mirror/: the tools run as subprocesses.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import datetime as dt
import hashlib
import inspect
import json
import math
import os
import random
import shlex
import shutil
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_sync as bs  # noqa: E402  (puts tests/ on sys.path too)
from bench_sync import MiB, ROOT, log, process_cpu  # noqa: E402
import imagegen  # noqa: E402
from registries import missing_tools, start_registry  # noqa: E402

MARK_BEGIN = "<!-- bench_wan:begin (written by benchmarks/bench_wan.py; do not edit by hand) -->"
MARK_END = "<!-- bench_wan:end -->"

META_VERSION = 1
META_REPOS, META_TAGS = 10, 15
META_BASE = 256 * 1024
META_OWN = (4 * 1024, 32 * 1024)

BUCKET = 0.5   # seconds per step of the timelines


# --------------------------------------------------------------------------------------------
# Set b: many small images
# --------------------------------------------------------------------------------------------


def meta_key() -> str:
    h = hashlib.sha256()
    h.update(json.dumps([META_VERSION, META_REPOS, META_TAGS, META_BASE, META_OWN]).encode())
    for fn in (imagegen.random_bytes, imagegen._tar, imagegen.make_layer, imagegen.make_image,
               imagegen._json_bytes, build_meta_set):
        h.update(inspect.getsource(fn).encode())
    return h.hexdigest()[:16]


def build_meta_set(sets_dir: Path) -> tuple[Path, dict]:
    """One OCI layout holding the 150 small images (reused when already built)."""
    key = meta_key()
    set_dir = sets_dir / f"meta-{key}"
    desc_path = set_dir / "set.json"
    if desc_path.exists():
        log(f"reusing the metadata-bound set in {set_dir.relative_to(ROOT)}")
        return set_dir / "layout", json.loads(desc_path.read_text())
    shutil.rmtree(sets_dir, ignore_errors=True)
    layout = set_dir / "layout"
    blob_dir = layout / "blobs" / "sha256"
    blob_dir.mkdir(parents=True)
    t0 = time.perf_counter()
    entries, images, layer_digests = [], [], set()
    for r in range(META_REPOS):
        repo = f"meta/repo-{r:02d}"
        base = imagegen.make_layer(f"meta:{repo}:base", META_BASE)
        for t in range(META_TAGS):
            tag = f"t{t:02d}"
            size = random.Random(f"meta-size:{repo}:{tag}").randint(*META_OWN)
            own = imagegen.make_layer(f"meta:{repo}:{tag}", size)
            img = imagegen.make_image([base, own], labels={"org.opencontainers.image.title": f"{repo}:{tag}"})
            for blob in (*img.blobs(), img.manifest):
                bs._write_blob(blob_dir, blob)
            layer_digests.update((base.digest, own.digest))
            name = f"repo-{r:02d}-{tag}"
            entries.append(img.manifest.descriptor(annotations={"org.opencontainers.image.ref.name": name}))
            images.append({"name": name, "repo": repo, "tag": tag, "digest": img.digest})
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    (layout / "index.json").write_text(json.dumps(
        {"schemaVersion": 2, "mediaType": imagegen.OCI_INDEX, "manifests": entries}, indent=1))
    blobs = {"sha256:" + p.name: p.stat().st_size for p in blob_dir.iterdir()}
    desc = {"key": key, "images": images, "blobs": blobs, "layers": len(layer_digests),
            "layer_digests": sorted(layer_digests),
            "layer_bytes": sum(blobs[d] for d in layer_digests),
            "other_blobs": len(blobs) - len(layer_digests),
            "other_bytes": sum(s for d, s in blobs.items() if d not in layer_digests),
            "build_seconds": round(time.perf_counter() - t0, 2)}
    tmp = desc_path.with_name("set.json.tmp")
    tmp.write_text(json.dumps(desc, indent=1))
    os.replace(tmp, desc_path)
    log(f"built the metadata-bound set in {desc['build_seconds']} s: {len(blobs)} blobs, "
        f"{(desc['layer_bytes'] + desc['other_bytes']) / MiB:.1f} MiB")
    return layout, desc


def push_meta_set(layout: Path, desc: dict, host: str) -> None:
    def one(img: dict) -> None:
        got = imagegen.push(layout, host, img["repo"], img["tag"], ref_name=img["name"])
        if got != img["digest"]:
            raise RuntimeError(f"{img['repo']}:{img['tag']}: pushed {got}, built {img['digest']}")

    firsts = [i for i in desc["images"] if i["tag"] == "t00"]   # the repository's base layer first
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(one, firsts))
        list(pool.map(one, [i for i in desc["images"] if i["tag"] != "t00"]))


def registry_with_sets(wan_dir: Path, sets: list[tuple[Path, dict, str]]):
    """A registry holding both sets: its storage is kept between invocations and pushed to
    only when a set changed.  Returns (registry, seconds spent pushing or None)."""
    reg_dir = wan_dir / "registry"
    marker = reg_dir / "pushed.json"
    keys = [d["key"] for _, d, _ in sets]
    if marker.exists() and json.loads(marker.read_text()) == keys:
        (reg_dir / "registry.log").unlink(missing_ok=True)
        reg = start_registry(reg_dir)
        log(f"registry on {reg.host}, reusing its storage (both sets already pushed)")
        return reg, None
    shutil.rmtree(reg_dir, ignore_errors=True)
    reg = start_registry(reg_dir)
    try:
        t0 = time.perf_counter()
        for layout, desc, kind in sets:
            log(f"registry on {reg.host}; pushing set {kind} ({len(desc['images'])} images)")
            if kind == "a":
                bs.push_set(layout, desc, reg.host)
            else:
                push_meta_set(layout, desc, reg.host)
        seconds = time.perf_counter() - t0
    except BaseException:
        reg.stop()
        raise
    marker.write_text(json.dumps(keys))
    log(f"pushed in {seconds:.1f} s")
    return reg, seconds


# --------------------------------------------------------------------------------------------
# The proxy and its log
# --------------------------------------------------------------------------------------------


class ProxyProcess:
    def __init__(self, upstream: str, log_path: Path, args) -> None:
        self.log_path = log_path
        log_path.unlink(missing_ok=True)
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("wanproxy.py")), "--upstream", upstream,
             "--rtt", str(args.rtt), "--conn-rate", str(args.conn_rate), "--link-rate", str(args.link_rate),
             "--handshake-rtts", str(args.handshake_rtts), "--log", str(log_path)],
            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("listening on "):
            self.stop()
            raise RuntimeError(f"wanproxy did not start: {line!r}")
        self.host = line.split()[-1]
        self.offset = 0

    def take(self, timeout: float = 10) -> list[dict]:
        """The connection records logged since the last call, once every connection opened
        since then has closed (the tool has exited; the proxy may lag a moment)."""
        deadline = time.monotonic() + timeout
        while True:
            with open(self.log_path) as fh:
                fh.seek(self.offset)
                text = fh.read()
            complete = text[:text.rfind("\n") + 1]
            docs = [json.loads(line) for line in complete.splitlines()]
            opened = {d["open"] for d in docs if "open" in d}
            closed = [d for d in docs if "id" in d]
            if opened <= {d["id"] for d in closed} or time.monotonic() > deadline:
                if time.monotonic() > deadline:
                    log(f"note: {len(opened - {d['id'] for d in closed})} connections still open in the proxy")
                self.offset += len(complete.encode())
                return closed
            time.sleep(0.05)

    def cpu(self) -> float:
        return process_cpu(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def kind_of(method: str, path: str) -> str:
    p = path.split("?", 1)[0]
    if p.rstrip("/") == "/v2":
        return "GET /v2/ (ping)" if method == "GET" else f"{method} /v2/"
    for part, name in (("/manifests/", "manifest"), ("/blobs/uploads", "upload"), ("/blobs/", "blob"),
                       ("/tags/list", "tags list"), ("/referrers/", "referrers")):
        if part in p:
            return f"{method} {name}"
    return f"{method} other"


def analyse(conns: list[dict], t_start: float, t_end: float, layers: set[str], rtt: float) -> dict:
    """What the proxy saw of one run of one tool."""
    real = [c for c in conns if not c["tls_probe"]]
    reqs = sorted((r for c in real for r in c["requests"]), key=lambda r: r[0])
    kinds = collections.Counter(kind_of(r[3], r[4]) for r in reqs)
    statuses = collections.Counter((kind_of(r[3], r[4]), r[5]) for r in reqs if r[5] and not 200 <= r[5] < 300)
    events = sorted([(c["accept"], 1) for c in real] + [(c["close"], -1) for c in real])
    peak = cur = 0
    for _, d in events:
        cur += d
        peak = max(peak, cur)
    out = {"requests": len(reqs), "kinds": kinds, "statuses": statuses, "connections": len(real),
           "tls_probes": len(conns) - len(real), "peak_connections": peak,
           "down_bytes": sum(c["down"] for c in real)}
    out["estimate"] = len(reqs) * rtt / peak if peak else None
    if not reqs:
        return out
    first_conn = min(c["accept"] for c in real)

    def blob_of(r) -> str | None:
        return r[4].split("?", 1)[0].rsplit("/", 1)[-1] if r[3] == "GET" and "/blobs/sha256:" in r[4] else None

    blob_reqs = [r for r in reqs if blob_of(r)]
    layer_reqs = [r for r in blob_reqs if blob_of(r) in layers and r[1]]
    last = max(r[2] or r[0] for r in reqs)
    out.update(t_first_conn=first_conn - t_start, t_last_byte=last - t_start,
               tail=t_end - last, wall=t_end - t_start)
    if blob_reqs:
        first_blob_sent = min(r[0] for r in blob_reqs)
        out.update(t_first_blob_sent=first_blob_sent - t_start,
                   before_first_blob=sum(1 for r in reqs if r[0] < first_blob_sent))
    if layer_reqs:
        first_layer_byte = min(r[1] for r in layer_reqs)
        out.update(t_first_layer_byte=first_layer_byte - t_start, transfer=last - first_layer_byte)
    # Latency: request sent -> first byte of its answer (RTT + server + pacing; a connection's
    # first request also waits for its handshake).  Gap: a connection idle between the end of
    # one answer and the next request (the client's own time).
    later = [r for c in real for r in c["requests"][1:] if r[1]]
    out["latency_ms"] = statistics.median(r[1] - r[0] for r in later) * 1000 if later else None
    gaps = [b[0] - a[2] for c in real for a, b in zip(c["requests"], c["requests"][1:], strict=False)
            if a[2]]
    out["gap_ms"] = statistics.median(gaps) * 1000 if gaps else None
    out["idle_per_conn"] = sum(gaps) / len(real) if gaps else 0.0
    # Configs (the blobs that are not layers) asked for after the last layer was: each costs a
    # round trip whatever its size, and at the end nothing else hides it.
    configs = [r for r in blob_reqs if blob_of(r) not in layers]
    if layer_reqs and configs:
        last_layer_sent = max(r[0] for r in layer_reqs)
        late = [r for r in configs if r[0] > last_layer_sent]
        out["configs"] = len(configs)
        out["configs_late"] = len(late)
        out["configs_tail"] = max(0.0, max((r[2] or r[0]) for r in late) - max(r[2] for r in layer_reqs)) if late else 0.0
    # Timelines from the process start, in BUCKET steps: requests in flight (time-weighted
    # mean) and MB/s handed to the client (each response's bytes spread over its duration).
    n = int((t_end - t_start) / BUCKET) + 1
    inflight, rate = [0.0] * n, [0.0] * n
    for r in reqs:
        a, b = r[0] - t_start, (r[2] or r[0]) - t_start
        for i in range(max(0, int(a / BUCKET)), min(n, int(b / BUCKET) + 1)):
            lo, hi = max(a, i * BUCKET), min(b, (i + 1) * BUCKET)
            if hi > lo:
                inflight[i] += (hi - lo) / BUCKET
        if r[1] and r[6]:
            f, b2 = r[1] - t_start, r[2] - t_start
            span = max(b2 - f, 1e-6)
            for i in range(max(0, int(f / BUCKET)), min(n, int(b2 / BUCKET) + 1)):
                lo, hi = max(f, i * BUCKET), min(b2, (i + 1) * BUCKET)
                if b2 - f < 1e-6 and i == int(f / BUCKET):
                    rate[i] += r[6] / BUCKET / 1e6
                elif hi > lo:
                    rate[i] += r[6] * (hi - lo) / span / BUCKET / 1e6
    out.update(inflight=inflight, rate=rate)
    out["mean_inflight"] = sum((r[2] or r[0]) - r[0] for r in reqs) / max(last - first_conn, 1e-6)
    return out


# --------------------------------------------------------------------------------------------
# Runs
# --------------------------------------------------------------------------------------------


def time_version(imgmirror: str, n: int = 5) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        subprocess.run([imgmirror, "--version"], capture_output=True, check=True, env=bs.child_env())
        out.append(time.perf_counter() - t0)
    return out


def write_manifest(kind: str, desc: dict, host: str, run_dir: Path) -> Path:
    images = desc["images"]
    manifest = run_dir / f"mirror-{kind}.yaml"
    if kind == "a":
        manifest.write_text("version: 1\nimages:\n" + "".join(
            f"  - source: {host}/{i['repo']}:{i['tag']}\n" for i in images))
    else:
        by_repo: dict[str, list[str]] = {}
        for i in images:
            by_repo.setdefault(i["repo"], []).append(i["tag"])
        manifest.write_text("version: 1\nimages:\n" + "".join(
            f"  - source: {host}/{repo}\n    tags: [{', '.join(tags)}]\n" for repo, tags in by_repo.items()))
    return manifest


def run_set(kind: str, desc: dict, tools: dict[str, str], proxy: ProxyProcess, reg, run_dir: Path,
            args) -> dict:
    """--runs rounds of cold runs of each tool in turn: "before" (when given), "imgmirror",
    then skopeo (unless --skip-skopeo; on set b only --meta-skopeo-runs times)."""
    images = desc["images"]
    manifest = write_manifest(kind, desc, proxy.host, run_dir)
    layer_set = layer_digests(desc)
    expected = desc["blobs"]
    res: dict[str, list] = {"imgmirror": [], "skopeo": [], "before": []}
    sk_runs = 0 if args.skip_skopeo else args.runs if kind == "a" else min(args.runs, args.meta_skopeo_runs)
    for i in range(1, args.runs + 1):
        for name, exe in tools.items():
            proxy.take(timeout=2)
            cpu0, pcpu0 = process_cpu(reg.process.pid), proxy.cpu()
            r = bs.run_imgmirror(exe, manifest, run_dir / f"{kind}-{name}-{i}", args.timeout)
            t1 = time.time()
            t0 = t1 - r["proc"].wall   # the process's own start (run_imgmirror first empties its directory)
            r["registry_cpu"], r["proxy_cpu"] = process_cpu(reg.process.pid) - cpu0, proxy.cpu() - pcpu0
            r["wan"] = analyse(proxy.take(), t0, t1, layer_set, args.rtt)
            if i == 1 and bs.tar_blobs(r["tar"]) != expected:
                raise RuntimeError(f"set {kind}: {name}'s bundle does not hold exactly the blobs of the set")
            shutil.rmtree(r["tar"].parent, ignore_errors=True)
            log(f"set {kind} run {i}: {name:9} {r['proc'].wall:.2f} s, {r['wan']['requests']} requests, "
                f"{r['wan']['connections']} connections (peak {r['wan']['peak_connections']})")
            res[name].append(r)
        if i > sk_runs:
            continue
        cpu0, pcpu0 = process_cpu(reg.process.pid), proxy.cpu()
        s = bs.run_skopeo(images, proxy.host, run_dir / f"{kind}-skopeo-{i}", args.timeout)
        t1 = time.time()
        t0 = t1 - s["wall"]
        s["registry_cpu"], s["proxy_cpu"] = process_cpu(reg.process.pid) - cpu0, proxy.cpu() - pcpu0
        s["wan"] = analyse(proxy.take(), t0, t1, layer_set, args.rtt)
        if i == 1 and bs.tar_blobs(s["tar"]) != expected:
            raise RuntimeError(f"set {kind}: skopeo's layout does not hold exactly the blobs of the set")
        shutil.rmtree(s["tar"].parent, ignore_errors=True)
        log(f"set {kind} run {i}: skopeo    {s['wall']:.2f} s, {s['wan']['requests']} requests, "
            f"{s['wan']['connections']} connections (+{s['wan']['tls_probes']} TLS probes)")
        res["skopeo"].append(s)
    return res


# --------------------------------------------------------------------------------------------
# sync --to: set b pushed into a second registry behind a second proxy
# --------------------------------------------------------------------------------------------

ACCEPT_MANIFESTS = "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json"


def heads(w: dict) -> int:
    return sum(n for k, n in w["kinds"].items() if k.startswith("HEAD "))


def sync_to_once(exe: str, manifest: Path, dest: str, work: Path, n_images: int, proxies: dict,
                 layer_set: set[str], case: str, args) -> dict:
    """One `imgmirror sync MANIFEST --to DEST --cache WORK/cache`: wall time, and what each proxy
    (source, destination) saw of it.  The cache is whatever WORK holds (empty for a cold run)."""
    for px in proxies.values():
        px.take(timeout=2)
    os.sync()
    report = work / f"report-{case}.json"
    p = bs.run_measured([exe, "sync", str(manifest), "--to", dest, "--cache", str(work / "cache"),
                         "--no-progress", "--report", str(report)], work / "imgmirror.log", args.timeout)
    t1 = time.time()
    t0 = t1 - p.wall
    rep = json.loads(report.read_text())
    t, pt = rep["totals"], (rep.get("push") or {}).get("totals", {})
    if (t["failed"] or t["ok"] != n_images or t.get("failed_pushes") or pt.get("failed")
            or pt.get("ok", n_images) != n_images):
        raise RuntimeError(f"sync --to {dest} ({case}): not every image ok: totals {t}, push {pt}; "
                           f"see {work}/imgmirror.log")
    out = {"proc": p, "wall": p.wall}
    for side, px in proxies.items():
        out[side] = analyse(px.take(), t0, t1, layer_set, args.rtt)
    firsts = [out[side]["t_first_conn"] for side in proxies if "t_first_conn" in out[side]]
    out["startup"] = min(firsts) if firsts else None
    # The HEADs' own time: each side's HEADs spread over that side's connections, one RTT each.
    own = [math.ceil(heads(out[side]) / out[side]["peak_connections"]) * args.rtt
           for side in proxies if out[side]["peak_connections"]]
    out["heads_own"] = max(own, default=0.0)
    if out["startup"] is not None:
        out["excess_rtts"] = (p.wall - out["startup"] - out["heads_own"]) / args.rtt
    return out


def verify_destination(desc: dict, registry: str, prefix: str) -> None:
    """Every image of the set in the destination registry (asked directly, not through the
    proxy) at the set's digest."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def one(img: dict) -> str | None:
        url = f"http://{registry}/v2/{prefix}/{img['repo']}/manifests/{img['tag']}"
        req = urllib.request.Request(url, method="HEAD", headers={"Accept": ACCEPT_MANIFESTS})
        try:
            with opener.open(req, timeout=30) as resp:
                got = resp.headers.get("Docker-Content-Digest")
        except urllib.error.HTTPError as exc:
            return f"{prefix}/{img['repo']}:{img['tag']}: HTTP {exc.code}"
        return None if got == img["digest"] else f"{prefix}/{img['repo']}:{img['tag']}: {got}, not {img['digest']}"

    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        bad = [e for e in pool.map(one, desc["images"]) if e]
    if bad:
        raise RuntimeError(f"sync --to: {len(bad)} of {len(desc['images'])} images not in the destination at the "
                           f"set's digest, e.g. {'; '.join(bad[:3])}")
    log(f"sync --to: all {len(desc['images'])} images in the destination under {prefix}/ at the set's digests")


def run_sync_to(desc: dict, tools: dict[str, str], src_proxy: ProxyProcess, dst_proxy: ProxyProcess,
                dst_reg, run_dir: Path, args) -> dict:
    """Set b with `sync --to`: for each run and tool, cold (empty cache, new destination prefix
    run-I-TOOL) then no-op (the same command again)."""
    manifest = run_dir / "mirror-b.yaml"
    layer_set = layer_digests(desc)
    proxies = {"src": src_proxy, "dst": dst_proxy}
    n = len(desc["images"])
    res: dict[str, dict[str, list]] = {name: {"cold": [], "noop": []} for name in tools}
    for i in range(1, args.runs + 1):
        for name, exe in tools.items():
            label = "after" if name == "imgmirror" else name
            prefix = f"run-{i}-{label}"
            dest = f"{dst_proxy.host}/{prefix}"
            work = bs.fresh(run_dir / f"to-{name}-{i}")
            for case in ("cold", "noop"):
                r = sync_to_once(exe, manifest, dest, work, n, proxies, layer_set, case, args)
                if case == "cold" and i == 1 and name == "imgmirror":
                    verify_destination(desc, dst_reg.host, prefix)
                excess = f"{r['excess_rtts']:.1f}" if "excess_rtts" in r else "–"
                log(f"sync --to run {i}: {name:9} {case:4} {r['wall']:.2f} s, source {r['src']['requests']} / "
                    f"destination {r['dst']['requests']} requests, HEADs {heads(r['src'])} / {heads(r['dst'])}, "
                    f"start-up {r['startup'] or 0:.2f} s, excess {excess} RTTs")
                res[name][case].append(r)
            shutil.rmtree(work, ignore_errors=True)
    return res


# --------------------------------------------------------------------------------------------
# Reference: what the link delivers to a plain HTTP client (curl --parallel, keep-alive)
# --------------------------------------------------------------------------------------------

CURL_PARALLEL = (8, 16)
MANIFEST_TYPES = ("application/vnd.oci.image.index.v1+json", "application/vnd.oci.image.manifest.v1+json",
                  "application/vnd.docker.distribution.manifest.list.v2+json",
                  "application/vnd.docker.distribution.manifest.v2+json")


def curl_problem() -> str | None:
    """None when curl is here and can do --parallel, else what is wrong (checked before any run)."""
    curl = shutil.which("curl")
    if not curl:
        return "curl is not installed (apt-get install curl); the link's reference measurement runs it"
    help_all = subprocess.run([curl, "--help", "all"], capture_output=True, text=True, timeout=30).stdout
    if "--parallel-max" not in help_all or "--parallel-immediate" not in help_all:
        version = subprocess.run([curl, "--version"], capture_output=True, text=True, timeout=30).stdout
        first = version.splitlines()[0] if version else curl
        return (f"{first}: no `--parallel` / `--parallel-immediate` / `--parallel-max` (curl 7.68 or later has "
                f"them); the link's reference measurement runs `curl --parallel --parallel-immediate --parallel-max 8`")
    return None


def set_urls(layout: Path, desc: dict, host: str) -> list[tuple[str, int]]:
    """Every blob of the set (all of desc["blobs"]) as (URL through host, size), largest first.

    A layer or config is /v2/REPO/blobs/DIGEST, a manifest or index /v2/REPO/manifests/DIGEST:
    distribution serves a blob only from a repository it is linked to, and a manifest not under
    /blobs/ at all (404).  REPO is the first image of the set whose manifest reaches the blob,
    walked in the set's layout (image manifest or index -> its manifests -> config and layers)."""
    blob_dir = layout / "blobs" / "sha256"
    where: dict[str, tuple[str, str]] = {}

    def walk(digest: str, repo: str) -> None:
        if digest in where:
            return
        where[digest] = (repo, "manifests")
        doc = json.loads((blob_dir / digest.split(":", 1)[1]).read_bytes())
        for m in doc.get("manifests", []):
            walk(m["digest"], repo)
        if "config" in doc:
            for b in (doc["config"], *doc.get("layers", [])):
                where.setdefault(b["digest"], (repo, "blobs"))

    for img in desc["images"]:
        walk(img["digest"], img["repo"])
    if set(where) != set(desc["blobs"]):
        raise RuntimeError(f"the set's layout: {len(set(desc['blobs']) - set(where))} blobs reached by no image, "
                           f"{len(set(where) - set(desc['blobs']))} reached but not in the set")
    order = sorted(desc["blobs"], key=lambda d: (-desc["blobs"][d], d))
    return [(f"http://{host}/v2/{where[d][0]}/{where[d][1]}/{d}", desc["blobs"][d]) for d in order]


def run_curl(urls: list[tuple[str, int]], parallel: int, proxy: ProxyProcess, layer_set: set[str],
             args) -> dict:
    """One `curl --parallel --parallel-immediate --parallel-max PARALLEL` over urls through the
    proxy: wall time, and what the proxy saw of it.  Every transfer must answer 200 with the
    blob's size.  --parallel-immediate: PARALLEL connections from the start (without it curl
    opens one, and the other transfers wait until its first transfer has ended)."""
    cmd = ["curl", "-sS", "--fail", "--noproxy", "*", "--parallel", "--parallel-immediate",
           "--parallel-max", str(parallel),
           "-H", "Accept: " + ", ".join(MANIFEST_TYPES),
           "-w", "%{http_code} %{size_download} %{url_effective}\\n"]
    for url, _ in urls:
        cmd += ["-o", "/dev/null", url]
    proxy.take(timeout=2)
    t0 = time.time()
    c0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, env=bs.child_env(),
                       timeout=args.timeout)
    wall = time.perf_counter() - c0
    t1 = time.time()
    if p.returncode != 0:
        # curl's error lines, not its parallel progress meter (printed despite -s, on the same lines)
        errors = [line[line.index("curl: ("):].strip() for line in p.stderr.replace("\r", "\n").splitlines()
                  if "curl: (" in line]
        raise RuntimeError(f"curl --parallel-max {parallel} over {len(urls)} URLs exited {p.returncode}: "
                           f"{'; '.join(errors[:3]) or p.stderr.strip()[-500:]}")
    got = {}
    for line in p.stdout.splitlines():
        code, size, url = line.split(" ", 2)
        got[url] = (code, int(size))
    bad = [url for url, size in urls if got.get(url) != ("200", size)]
    if bad:
        raise RuntimeError(f"curl --parallel-max {parallel}: {len(bad)} of {len(urls)} transfers not 200 with "
                           f"the blob's size, e.g. {bad[0]}: {got.get(bad[0])}")
    return {"wall": wall, "wan": analyse(proxy.take(), t0, t1, layer_set, args.rtt)}


def run_curl_reference(layout: Path, desc: dict, proxy: ProxyProcess, args) -> dict:
    """--runs runs of each CURL_PARALLEL over every blob of the set, through the proxy."""
    urls = set_urls(layout, desc, proxy.host)
    layer_set = layer_digests(desc)
    res: dict = {"urls": len(urls), "bytes": sum(s for _, s in urls),
                 "manifest_urls": sum(1 for u, _ in urls if "/manifests/" in u), "runs": {}}
    for i in range(1, args.runs + 1):
        for n in CURL_PARALLEL:
            r = run_curl(urls, n, proxy, layer_set, args)
            w = r["wan"]
            log(f"curl run {i}: --parallel-max {n:2} {r['wall']:.2f} s = {res['bytes'] / r['wall'] / 1e6:.1f} MB/s, "
                f"{w['requests']} requests, {w['connections']} connections (peak {w['peak_connections']})")
            res["runs"].setdefault(n, []).append(r)
    return res


def curl_figures(cr: dict, n: int) -> dict:
    """One CURL_PARALLEL's runs: median wall and MB/s; requests, connections and the transfer
    phase (imgmirror's measure) of its median run."""
    rs = sorted(cr["runs"][n], key=lambda r: r["wall"])
    w = rs[(len(rs) - 1) // 2]["wan"]
    wall = statistics.median(r["wall"] for r in rs)
    return {"wall": wall, "walls": [r["wall"] for r in cr["runs"][n]], "mbps": cr["bytes"] / wall / 1e6, "wan": w}


def make_before(rev: str, wan_dir: Path) -> tuple[str, str]:
    """--before-rev: `git archive REV mirror` under wan_dir/before-REV/, compiled, and a wrapper
    that runs its mirror.cli:console (else :main) with this Python.  Returns (executable, short commit)."""
    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", f"{rev}^{{commit}}"],
                                capture_output=True, text=True, check=True).stdout.strip()
    except subprocess.CalledProcessError as exc:
        raise SystemExit(f"--before-rev {rev}: {exc.stderr.strip()}") from None
    safe = "".join(c if c.isalnum() or c in "-_.~^" else "_" for c in rev)
    tree = wan_dir / f"before-{safe}"
    shutil.rmtree(tree, ignore_errors=True)
    tree.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit, "mirror"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
    # Bytecode as an install has it (PYTHONDONTWRITEBYTECODE=1 here would leave start-up inflated).
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(tree / "mirror")], check=True,
                   stdout=subprocess.DEVNULL)
    # The revision's console script: mirror.cli:console where it has one (main, then no last
    # garbage collection at exit), else mirror.cli:main.  Either returns the exit code; argparse's
    # own exits raise SystemExit, which passes through sys.exit() unchanged.
    cli = subprocess.run(["git", "-C", str(ROOT), "show", f"{commit}:mirror/cli/__init__.py"],
                         capture_output=True, text=True, check=True).stdout
    entry = "console" if "def console" in cli else "main"
    code = f"import sys; sys.path.insert(0, {str(tree)!r}); from mirror.cli import {entry}; sys.exit({entry}())"
    exe = tree / "imgmirror"
    exe.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -c {shlex.quote(code)} "$@"\n')
    exe.chmod(0o755)
    log(f"--before-rev {rev}: commit {commit}, extracted and compiled in {tree}; runs mirror.cli:{entry}")
    return str(exe), commit


def layer_digests(desc: dict) -> set[str]:
    """The layer blobs of a set (the rest are configs and manifests)."""
    if "layer_digests" in desc:
        return set(desc["layer_digests"])
    # bench_sync's set.json lists the layer count, not the digests: layers are its large blobs,
    # the smallest of which is MIN_LAYER-sized data in a tar, larger than any JSON we write.
    others = sorted(desc["blobs"].items(), key=lambda kv: kv[1])[:desc["other_blobs"]]
    return set(desc["blobs"]) - {d for d, _ in others}


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def fmt_s(xs: list[float]) -> str:
    return ", ".join(f"{x:.2f}" for x in xs)


def series(xs: list[float], digits: int = 0) -> str:
    while xs and xs[-1] == 0:
        xs = xs[:-1]
    return " ".join(f"{x:.{digits}f}" for x in xs)


def wall_of(r: dict) -> float:
    return r["proc"].wall if "proc" in r else r["wall"]


def kinds_cell(w: dict | None, k: str) -> str:
    """A request kind's count in one run, non-2xx statuses in brackets."""
    if w is None:
        return "–"
    n = w["kinds"].get(k, 0)
    bad = {s: c for (kk, s), c in w["statuses"].items() if kk == k}
    extra = "".join(f" ({c}x {s})" for s, c in sorted(bad.items()))
    return f"{n}{extra}" if n else "–"


def render(m: dict, sets: dict, res: dict, args) -> str:
    link = args.link_rate * 1e6
    has_before = bool(res.get("before"))
    before_what = ""
    if has_before:
        rev = f", commit {res['before_commit']} (`--before-rev {args.before_rev}`)" if res.get("before_commit") else ""
        before_what = f"; \"before\" is earlier code: `{res['before']}`{rev}"
    lines = [
        f"## imgmirror and skopeo over a WAN, RTT {args.rtt * 1000:g} ms, {args.conn_rate:g} MB/s per connection, "
        f"{args.link_rate:g} MB/s link ({res['date']})",
        "",
        f"- Machine: {m['nproc']} CPUs ({m['cpu']}), {m['mem_gib']:.1f} GiB RAM, Linux {m['kernel']}; "
        f"Python {m['python']}, imgmirror {m['imgmirror']}, skopeo {m['skopeo']}, "
        f"docker-registry (distribution) {m['registry']}{before_what}.",
        f"- Link: benchmarks/wanproxy.py between the tools and a local `docker-registry`: {args.rtt * 1000:g} ms "
        f"per request/response, {args.handshake_rtts:g} RTTs more per new connection (TCP + TLS), each "
        f"connection paced to {args.conn_rate:g} MB/s and all together to {args.link_rate:g} MB/s "
        f"(MB = 10^6 bytes); no slow start, no loss. Proxy, registry and tool share the {m['nproc']} cores.",
    ]
    for kind in ("a", "b"):
        d = sets[kind]
        unique = sum(d["blobs"].values())
        n_img = len(d["images"])
        if kind == "a":
            n_multi = sum(1 for i in d["images"] if len(i["platforms"]) > 1)
            what = (f"(a) bench_sync.py's set at scale {args.scale:g}: {n_img} images ({n_multi} two-platform "
                    f"OCI indexes) on 3 base images, {len(d['blobs'])} unique blobs ({d['layers']} layers), "
                    f"{bs.mib(unique)}")
        else:
            what = (f"(b) metadata-bound: {n_img} images in {META_REPOS} repositories ({META_TAGS} tags each; "
                    f"a {META_BASE // 1024} KiB base layer per repository and a {META_OWN[0] // 1024}-"
                    f"{META_OWN[1] // 1024} KiB layer per image), {len(d['blobs'])} unique blobs, {bs.mib(unique)}")
        lines.append(f"- Set {what}; link floor {unique / link:.2f} s.")
    order = "imgmirror (before), imgmirror, skopeo" if has_before else "imgmirror, skopeo"
    skopeo_what = ("skopeo left out (`--skip-skopeo`)" if args.skip_skopeo else
                   f"skopeo `copy --all --preserve-digests` one image after another into one OCI layout, then "
                   f"`tar -cf`; skopeo on set b {min(args.runs, args.meta_skopeo_runs)} run(s) (150 processes)")
    lines += [
        f"- Runs alternate ({order}, ...), every one cold (empty cache, no output): imgmirror with its "
        f"defaults (8 parallel transfers), {args.runs} runs of each; {skopeo_what}. Wall time around the whole job.",
        "",
        "| set | tool | median wall (s) | each run (s) | link floor (s) | wall / floor | requests | "
        "connections (peak at once) | requests x RTT / peak connections (s) |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    tools = ("imgmirror", "before", "skopeo") if has_before else ("imgmirror", "skopeo")
    summary: dict = {}
    for kind in ("a", "b"):
        d = sets[kind]
        floor = sum(d["blobs"].values()) / link
        for tool in tools:
            rs = res[kind][tool]
            label = {"imgmirror": "`imgmirror sync`", "before": "`imgmirror sync` (before)",
                     "skopeo": f"`skopeo copy` x{len(d['images'])} + `tar -cf`"}[tool]
            if not rs:
                lines.append(f"| {kind} | {label} | – | – | {floor:.2f} | – | – | – | – |")
                continue
            walls = [wall_of(r) for r in rs]
            med = statistics.median(walls)
            w = rs[0]["wan"]
            summary[(kind, tool)] = med
            est = f"{w['estimate']:.2f}" if w["estimate"] else "–"
            lines.append(f"| {kind} | {label} | {med:.2f} | {fmt_s(walls)} | {floor:.2f} | {med / floor:.2f} | "
                         f"{w['requests']} | {w['connections']} ({w['peak_connections']}) | {est} |")
    def median_run(kind: str) -> dict:
        rs = sorted(res[kind]["imgmirror"], key=lambda r: r["proc"].wall)
        return rs[(len(rs) - 1) // 2]["wan"]

    def transfer_mbps(kind: str, w: dict) -> float | None:
        """Layer bytes / (last byte - first layer byte), MB/s."""
        return sets[kind]["layer_bytes"] / w["transfer"] / 1e6 if w.get("transfer") else None

    fa = sum(sets["a"]["blobs"].values()) / link
    # The reference: what the same proxy delivers to curl --parallel over set a's blobs.
    cr = res["curl"]
    cf = {n: curl_figures(cr, n) for n in CURL_PARALLEL}
    n_blob_urls = cr["urls"] - cr["manifest_urls"]
    delivered = []
    for n in CURL_PARALLEL:
        f = cf[n]
        thr = transfer_mbps("a", f["wan"])
        delivered.append(
            f"{n} at once: {f['wall']:.2f} s = {f['mbps']:.1f} MB/s (each run {fmt_s(f['walls'])}; wall / floor "
            f"{f['wall'] / fa:.2f}; {f['wan']['requests']} requests on {f['wan']['connections']} connections, "
            f"peak {f['wan']['peak_connections']}; layer bytes / (last byte - first layer byte) "
            f"{f'{thr:.1f} MB/s' if thr else '–'})")
    lines += [
        "",
        f"**What the link delivers to `curl --parallel` (keep-alive), set a's {cr['urls']} blobs, "
        f"{cr['bytes'] / 1e6:.1f} MB: " + "; ".join(delivered) + ".** "
        f"One `curl -sS --fail --parallel --parallel-immediate --parallel-max N` process through the same proxy, "
        f"after the sets' runs, "
        f"median of {args.runs} run(s) of each N; every blob of the set once, largest first: its {n_blob_urls} layers "
        f"and configs as `/v2/REPO/blobs/DIGEST`, its {cr['manifest_urls']} manifests and indexes as "
        f"`/v2/REPO/manifests/DIGEST` (distribution serves no manifest under /blobs/), REPO a repository of the set "
        f"holding it; every answer checked (200, the blob's size). `--parallel-immediate`: without it curl opens one "
        f"connection and holds the other transfers until its first transfer (the largest blob) has ended. MB/s: all "
        f"bytes / wall. Against the link floor "
        f"({fa:.2f} s): what this machine's proxy and registry can deliver at all, over keep-alive connections and "
        f"no registry protocol beyond the GETs.",
    ]
    ia, ib = summary[("a", "imgmirror")], summary[("b", "imgmirror")]
    est_b = statistics.median(r["wan"]["estimate"] for r in res["b"]["imgmirror"])
    # The same run less its start-up (process start to its first connection): the part the estimate models.
    net_b = statistics.median(r["proc"].wall - r["wan"]["t_first_conn"] for r in res["b"]["imgmirror"])
    min_req_b = len(sets["b"]["blobs"])
    v = statistics.median(res["version"])

    def verdict(ok: bool) -> str:
        return "met" if ok else "not met"

    if args.skip_skopeo:
        vs_skopeo = "**imgmirror / skopeo: skipped (`--skip-skopeo`).**"
    else:
        vs_skopeo = (f"**imgmirror / skopeo (median wall): set a {ia / summary[('a', 'skopeo')]:.2f}, set b "
                     f"{ib / summary[('b', 'skopeo')]:.2f}.**")
    vs_before = ""
    if has_before:
        def ratio(kind: str, key: str) -> str:
            a, b = res[kind]["imgmirror"][0]["wan"][key], res[kind]["before"][0]["wan"][key]
            return f"{a / b:.2f}" if b else "–"
        vs_before = (f" **imgmirror / before (median wall): set a {ia / summary[('a', 'before')]:.2f}, set b "
                     f"{ib / summary[('b', 'before')]:.2f}**; requests {ratio('a', 'requests')} and "
                     f"{ratio('b', 'requests')}, connections {ratio('a', 'connections')} and "
                     f"{ratio('b', 'connections')} (first runs, a and b).")
    version_before = (f"; before's {statistics.median(res['version_before']):.2f} s"
                      if res.get("version_before") else "")
    to_summary = render_to_summary(sets["b"], res, args) if "to" in res else ""
    thr_i, thr_c8 = transfer_mbps("a", median_run("a")), transfer_mbps("a", cf[8]["wan"])
    vs_curl = (f"against what curl gets through the same proxy: imgmirror's wall / curl's (8 at once) wall = "
               f"{ia / cf[8]['wall']:.2f} ({ia:.2f} s against {cf[8]['wall']:.2f} s; 16 at once "
               f"{cf[16]['wall']:.2f} s, {ia / cf[16]['wall']:.2f}); imgmirror's transfer phase, layer bytes / (last "
               f"byte - first layer byte) of its median run, "
               f"{f'{thr_i:.1f} MB/s' if thr_i else '–'} against curl's {cf[8]['mbps']:.1f} MB/s (8 at once, all "
               f"bytes / wall; {cf[16]['mbps']:.1f} MB/s 16 at once; curl's own by imgmirror's measure "
               f"{f'{thr_c8:.1f} MB/s' if thr_c8 else '–'})")
    lines += [
        "",
        f"{vs_skopeo}{vs_before} Targets: cold sync within 1.05x of the link floor: "
        f"{ia / fa:.2f}x on set a ({verdict(ia <= 1.05 * fa)}); {vs_curl}; cold metadata-bound run within 1.2x of "
        f"requests x RTT / connections: wall {ib:.2f} s against {est_b:.2f} s ({ib / est_b:.2f}x, "
        f"{verdict(ib <= 1.2 * est_b)}), wall minus start-up (process start to its first connection) "
        f"{net_b:.2f} s against the same {est_b:.2f} s ({net_b / est_b:.2f}x, {verdict(net_b <= 1.2 * est_b)}); "
        f"with the {min_req_b} requests the set needs at least, one per manifest "
        f"and blob, over 8 connections: {min_req_b * args.rtt / 8:.2f} s; `imgmirror --version` "
        f"{v:.2f} s, median of 5 ({fmt_s(res['version'])}; {verdict(v < 0.2)}, target under 0.2 s{version_before})."
        f"{to_summary}",
        "",
        "Where imgmirror's time goes (its median run on each set; seconds from the process start, from the proxy's log):",
        "",
        "| set | wall | first connection | first blob request (requests before it) | first layer byte | "
        "last byte | exit after last byte | mean requests in flight | latency, median | gap, median | "
        "configs asked for after the last layer (time they add) | layer bytes / (last byte - first layer byte) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for kind in ("a", "b"):
        w = median_run(kind)
        thr = f"{sets[kind]['layer_bytes'] / w['transfer'] / 1e6:.1f} MB/s" if w.get("transfer") else "–"
        small = f"{w['configs_late']} of {w['configs']} ({w['configs_tail']:.2f} s)" if "configs" in w else "–"
        lines.append(
            f"| {kind} | {w['wall']:.2f} | {w['t_first_conn']:.2f} | {w.get('t_first_blob_sent', 0):.2f} "
            f"({w.get('before_first_blob', '–')}) | {w.get('t_first_layer_byte', 0):.2f} | {w['t_last_byte']:.2f} | "
            f"{w['tail']:.2f} | {w['mean_inflight']:.1f} | {w['latency_ms']:.0f} ms | {w['gap_ms']:.1f} ms | "
            f"{small} | {thr} |")
    lines += [
        "",
        f"Latency: a request's first byte at the proxy to the first byte of its answer handed back (one RTT, "
        f"{args.rtt * 1000:g} ms, plus the registry's time and pacing; a connection's first request left out). Gap: a "
        f"connection idle between the end of one answer and the next request (the client's own time). Configs: "
        f"image configs requested after the last layer request, and the time from the last layer byte to their last "
        f"byte.",
    ]
    lines += ["", f"Timelines of those runs, one figure per {BUCKET:g} s from the process start:", ""]
    for kind in ("a", "b"):
        w = median_run(kind)
        lines.append(f"- set {kind}, requests in flight: {series(w['inflight'])}")
        lines.append(f"- set {kind}, MB/s delivered: {series(w['rate'])}")
    # Request mix, first run of each tool.
    mix_tools = ("imgmirror", "before", "skopeo") if has_before else ("imgmirror", "skopeo")
    first = {(kind, tool): (res[kind][tool][0]["wan"] if res[kind][tool] else None)
             for kind in ("a", "b") for tool in mix_tools}
    heads_ = [f"{'imgmirror (before)' if tool == 'before' else tool} {kind}" for kind in ("a", "b") for tool in mix_tools]
    all_kinds = sorted({k for w in first.values() if w for k in w["kinds"]})
    lines += ["", "| requests through the proxy (first run) | " + " | ".join(heads_) + " |",
              "|---|" + "---:|" * len(heads_)]
    for k in all_kinds:
        lines.append(f"| {k} | " + " | ".join(kinds_cell(first[(kind, tool)], k)
                                             for kind in ("a", "b") for tool in mix_tools) + " |")
    cells = []
    for kind in ("a", "b"):
        for tool in mix_tools:
            w = first[(kind, tool)]
            cells.append(f"{w['requests']} / {w['connections']} / {w['tls_probes']}" if w else "–")
    lines.append("| all / connections / TLS probes | " + " | ".join(cells) + " |")
    cpu = []
    for kind in ("a", "b"):
        for tool in mix_tools:
            rs = res[kind][tool]
            if not rs:
                continue
            tool_cpu = statistics.median(r["proc"].cpu if "proc" in r else r["cpu"] for r in rs)
            name = "imgmirror (before)" if tool == "before" else tool
            cpu.append(f"{kind} {name} {tool_cpu:.2f} / {statistics.median(r['registry_cpu'] for r in rs):.2f} / "
                       f"{statistics.median(r['proxy_cpu'] for r in rs):.2f}")
    lines += [
        "",
        "A status in brackets is one other than 2xx. A TLS probe is skopeo trying HTTPS first (the proxy closes it at "
        "once, free). CPU seconds, median, tool / registry / proxy: " + "; ".join(cpu) + ".",
    ]
    if "to" in res:
        lines += render_to(sets["b"], res, args)
    push_s = res["push_seconds"]
    sets_how = "reused from benchmarks/work/wan" if push_s is None else f"pushed in {push_s:.0f} s"
    lines += [
        "",
        f"Sets {sets_how}; "
        f"the whole benchmark took {res['total_seconds']:.0f} s. Command: `{res['command']}`.",
    ]
    return "\n".join(lines) + "\n"


def to_figures(rs: list[dict], n_images: int) -> dict:
    """A tool's sync --to runs of one case (cold or no-op): median wall; request counts of its first
    run; start-up, HEADs' own time and excess of its median run by excess (so that they add up)."""
    w0 = rs[0]
    with_ex = sorted((r for r in rs if "excess_rtts" in r), key=lambda r: r["excess_rtts"])
    mid = with_ex[(len(with_ex) - 1) // 2] if with_ex else None
    return {"walls": [r["wall"] for r in rs], "wall": statistics.median(r["wall"] for r in rs),
            "src": w0["src"]["requests"], "dst": w0["dst"]["requests"], "per_image": w0["dst"]["requests"] / n_images,
            "heads": (heads(w0["src"]), heads(w0["dst"])),
            "peaks": (w0["src"]["peak_connections"], w0["dst"]["peak_connections"]),
            "mid_wall": mid["wall"] if mid else None, "startup": mid["startup"] if mid else None,
            "heads_own": mid["heads_own"] if mid else None, "excess": mid["excess_rtts"] if mid else None}


def render_to_summary(desc: dict, res: dict, args) -> str:
    n = len(desc["images"])
    to = res["to"]
    cold = to_figures(to["imgmirror"]["cold"], n)
    noop = to_figures(to["imgmirror"]["noop"], n)

    def verdict(ok: bool) -> str:
        return "met" if ok else "not met"

    parts = []
    if "before" in to:
        bc = to_figures(to["before"]["cold"], n)
        bn = to_figures(to["before"]["noop"], n)
        parts.append(f"`sync --to` on set b, imgmirror / before (median wall): cold {cold['wall'] / bc['wall']:.2f}, "
                     f"no-op {noop['wall'] / bn['wall']:.2f}; cold under half of before's: {cold['wall']:.2f} s against "
                     f"{bc['wall']:.2f} s ({verdict(cold['wall'] < 0.5 * bc['wall'])})")
    if noop["excess"] is not None:
        parts.append(f"`sync --to` no-op within 2 round trips of its HEADs' own time (its median run): wall "
                     f"{noop['mid_wall']:.2f} s less "
                     f"start-up {noop['startup']:.2f} s less the HEADs' own {noop['heads_own']:.2f} s = {noop['excess']:.1f} RTTs "
                     f"({verdict(noop['excess'] <= 2)})")
    parts.append(f"destination requests per new small image 7 or fewer: {cold['per_image']:.2f} "
                 f"({cold['dst']} for {n}; {verdict(cold['per_image'] <= 7)})")
    return " " + "; ".join(parts) + "."


def render_to(desc: dict, res: dict, args) -> list[str]:
    n = len(desc["images"])
    to = res["to"]
    tools = ("before", "imgmirror") if "before" in to else ("imgmirror",)
    lines = [
        "",
        f"`sync --to`, set b: `imgmirror sync mirror-b.yaml --to DEST/run-I-TOOL --cache EMPTY --no-progress "
        f"--report R.json` into a second, empty `docker-registry` behind a second wanproxy (same link), then the "
        f"same command again (no-op: same cache, same destination); {args.runs} run(s) of each, alternating "
        f"({', '.join('before' if t == 'before' else 'imgmirror' for t in tools)}). Requests: the first run's, "
        f"at the source's proxy and the destination's. HEADs' own time: the larger over the two sides of "
        f"ceil(HEADs / peak connections) x RTT. Excess: wall minus start-up (process start to its first "
        f"connection at either proxy) minus the HEADs' own time, in RTTs; start-up, HEADs' own time and excess "
        f"are those of the run with the median excess.",
        "",
        "| sync --to, set b | tool | median wall (s) | each run (s) | source requests | destination requests | "
        "destination requests per image | HEADs, source / destination (peak connections) | start-up (s) | "
        "HEADs' own time (s) | excess (RTTs) |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for case, label in (("cold", "cold"), ("noop", "no-op")):
        for tool in tools:
            f = to_figures(to[tool][case], n)
            name = "imgmirror (before)" if tool == "before" else "imgmirror"
            own = f"{f['heads_own']:.2f}" if case == "noop" and f["heads_own"] is not None else "–"
            ex = f"{f['excess']:.1f}" if case == "noop" and f["excess"] is not None else "–"
            st = f"{f['startup']:.2f}" if f["startup"] is not None else "–"
            lines.append(f"| {label} | {name} | {f['wall']:.2f} | {fmt_s(f['walls'])} | {f['src']} | {f['dst']} | "
                         f"{f['per_image']:.2f} | {f['heads'][0]} / {f['heads'][1]} ({f['peaks'][0]} / {f['peaks'][1]}) | "
                         f"{st} | {own} | {ex} |")
    cols = [(tool, case, side) for tool in tools for case in ("cold", "noop") for side in ("dst", "src")]
    heads_ = [f"{'before' if tool == 'before' else 'imgmirror'} {'cold' if case == 'cold' else 'no-op'}, "
              f"{'destination' if side == 'dst' else 'source'}" for tool, case, side in cols]
    first = {c: to[c[0]][c[1]][0][c[2]] for c in cols}
    all_kinds = sorted({k for w in first.values() for k in w["kinds"]})
    lines += ["", "| requests of `sync --to` (first run) | " + " | ".join(heads_) + " |",
              "|---|" + "---:|" * len(cols)]
    for k in all_kinds:
        lines.append(f"| {k} | " + " | ".join(kinds_cell(first[c], k) for c in cols) + " |")
    lines.append("| all / connections | " + " | ".join(f"{first[c]['requests']} / {first[c]['connections']}"
                                                      for c in cols) + " |")
    phases = []
    for tool in tools:
        for case in ("cold", "noop"):
            r = to[tool][case][0]
            sides = [f"{'source' if side == 'src' else 'destination'} {r[side]['t_first_conn']:.2f}-"
                     f"{r[side]['t_last_byte']:.2f}" for side in ("src", "dst") if "t_first_conn" in r[side]]
            phases.append(f"{'before' if tool == 'before' else 'imgmirror'} {'cold' if case == 'cold' else 'no-op'}: "
                          f"{', '.join(sides)}, exit {r['wall']:.2f}")
    lines += ["", "Phases of the first runs, seconds from the process start (first connection to last answer "
              "byte at each proxy): " + "; ".join(phases) + "."]
    return lines


# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", type=float, default=0.25, help="bench_sync set's layer size factor (0.25: ~125 MiB)")
    ap.add_argument("--runs", type=int, default=3, help="timed runs of each tool on each set (median reported)")
    ap.add_argument("--meta-skopeo-runs", type=int, default=1,
                    help="runs of skopeo on the metadata-bound set (150 processes each; at most --runs)")
    ap.add_argument("--rtt", type=float, default=0.040, help="round-trip time in seconds (0.040)")
    ap.add_argument("--conn-rate", type=float, default=10.0, help="MB/s per connection (10)")
    ap.add_argument("--link-rate", type=float, default=60.0, help="MB/s of the link, all connections (60)")
    ap.add_argument("--handshake-rtts", type=float, default=2.0, help="RTTs per new connection, TCP + TLS (2)")
    ap.add_argument("--imgmirror", help="the imgmirror executable (default: the one next to this Python)")
    ap.add_argument("--before", metavar="EXE",
                    help="an imgmirror executable of earlier code, run in turn with --imgmirror and reported beside it")
    ap.add_argument("--before-rev", metavar="REV",
                    help="make --before from a git revision: `git archive REV mirror` under WORK/wan/before-REV/")
    ap.add_argument("--skip-skopeo", action="store_true", help="leave skopeo out (quick trials)")
    ap.add_argument("--out", type=Path, help="markdown file to write the results into (default: print only)")
    ap.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "work", help="scratch directory")
    ap.add_argument("--timeout", type=float, default=600, help="seconds allowed to any one process")
    args = ap.parse_args(argv)
    if args.scale <= 0 or args.runs < 1 or args.meta_skopeo_runs < 1:
        ap.error("--scale must be > 0, --runs and --meta-skopeo-runs >= 1")
    if args.before and args.before_rev:
        ap.error("--before and --before-rev: give one")
    if missing_tools():
        print(f"missing {', '.join(missing_tools())}: apt-get install docker-registry skopeo", file=sys.stderr)
        return 2
    imgmirror = args.imgmirror or shutil.which("imgmirror", path=str(Path(sys.executable).parent)) \
        or shutil.which("imgmirror")
    if not imgmirror:
        print("imgmirror is not installed in this environment (pip install -e .)", file=sys.stderr)
        return 2
    problem = curl_problem()
    if problem:
        print(f"bench_wan: {problem}", file=sys.stderr)
        return 2
    if args.before and not (shutil.which(args.before) or os.access(args.before, os.X_OK)):
        print(f"--before {args.before}: not an executable", file=sys.stderr)
        return 2

    started = time.perf_counter()
    wan_dir = args.work / "wan"
    before, before_commit = args.before, None
    if args.before_rev:
        before, before_commit = make_before(args.before_rev, wan_dir)
    tools = {"before": before, "imgmirror": imgmirror} if before else {"imgmirror": imgmirror}
    layout_a, desc_a = bs.build_set(args.scale, wan_dir / "sets-a")
    layout_b, desc_b = build_meta_set(wan_dir / "sets-b")
    reg, push_seconds = registry_with_sets(wan_dir, [(layout_a, desc_a, "a"), (layout_b, desc_b, "b")])
    run_dir = wan_dir / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    proxy = dst_proxy = dst_reg = None
    try:
        bs.warm_page_cache(reg.storage_dir)
        proxy = ProxyProcess(reg.host, run_dir / "proxy.jsonl", args)
        log(f"proxy on {proxy.host} -> registry {reg.host}")
        res: dict = {"date": dt.date.today().isoformat(), "push_seconds": push_seconds,
                     "command": " ".join([".venv/bin/python benchmarks/bench_wan.py", *(argv or sys.argv[1:])]),
                     "before": before, "before_commit": before_commit}
        res["a"] = run_set("a", desc_a, tools, proxy, reg, run_dir, args)
        res["b"] = run_set("b", desc_b, tools, proxy, reg, run_dir, args)
        # The reference: the same proxy's delivery of set a's blobs to curl --parallel.
        res["curl"] = run_curl_reference(layout_a, desc_a, proxy, args)
        # sync --to: a second, empty registry (the destination) behind its own proxy.
        dst_reg = start_registry(run_dir / "dest-registry")
        dst_proxy = ProxyProcess(dst_reg.host, run_dir / "proxy-dest.jsonl", args)
        log(f"destination proxy on {dst_proxy.host} -> registry {dst_reg.host}")
        res["to"] = run_sync_to(desc_b, tools, proxy, dst_proxy, dst_reg, run_dir, args)
        res["version"] = time_version(imgmirror)
        log(f"imgmirror --version: {fmt_s(res['version'])} s")
        if before:
            res["version_before"] = time_version(before)
            log(f"before --version:    {fmt_s(res['version_before'])} s")
    finally:
        for px in (proxy, dst_proxy):
            if px:
                px.stop()
        if dst_reg:
            dst_reg.stop()
        reg.stop()
    res["total_seconds"] = time.perf_counter() - started
    section = render(bs.machine_info(imgmirror), {"a": desc_a, "b": desc_b}, res, args)
    print(section)
    if args.out:
        bs.write_out(args.out, section, MARK_BEGIN, MARK_END)
        log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
