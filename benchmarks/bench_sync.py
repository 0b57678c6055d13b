#!/usr/bin/env python3
"""Benchmark: `imgmirror sync` against a scripted `skopeo copy` loop, on one local registry.

    .venv/bin/python benchmarks/bench_sync.py [--scale 1.0] [--runs 3] [--out docs/benchmarks.md]

What it does, in one run:

1. Builds the image set (cached under benchmarks/work/sets/, keyed by scale and generator):
   three base images (a few layers each, 180 MiB in all at scale 1.0) and 24 images on top of
   them: 16 single-platform images and 8 multi-arch OCI indexes (linux/amd64 and linux/arm64,
   each child with its own layers on the same base); every app image (or index child) adds
   three layers of about 10 MiB in all.  About 500 MiB of unique layer bytes at scale 1.0.
   Layers come from tests/imagegen.py's make_layer (seeded random bytes in a gzip'd tar, so
   gzip cannot shrink them), built on all cores.
2. Starts a fresh `docker-registry` (tests/registries.py) on 127.0.0.1 and pushes the set with
   imagegen.push (skopeo, digests kept and checked).
3. Times, alternately and each from a cold client state (empty cache, no output):
   a. `imgmirror sync MANIFEST -o OUT.tar --cache EMPTY_DIR --no-progress --report R.json`;
   b. `skopeo copy --all --preserve-digests --src-tls-verify=false docker://HOST/REPO:TAG
      oci:LAYOUT:REF` for each image in turn into one shared layout, then `tar -cf OUT.tar -C
      LAYOUT .`.
   Wall time, peak RSS and CPU time of each process (GNU /usr/bin/time, i.e. wait4's rusage)
   are recorded; medians are reported.  Then one warm `imgmirror sync` (cache already full) for information.
4. Prints a markdown section, and with --out writes it into that file (between marker
   comments, so an intro written by hand above it is kept).

The registry's blob files are read once before timing, so both tools find them in the page
cache; everything the tools write goes to the same disk (benchmarks/work/run/).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime as dt
import hashlib
import inspect
import json
import os
import platform as pyplatform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import imagegen  # noqa: E402
from registries import missing_tools, start_registry  # noqa: E402

MiB = 1 << 20
SET_VERSION = 2  # bump when the set definition below changes

# (name, layer sizes in MiB at scale 1.0), bottom layer first: 180 MiB in all.
BASES = (("base-a", (32, 20, 8)), ("base-b", (40, 24, 8)), ("base-c", (24, 16, 8)))
N_SINGLE, N_MULTI = 16, 8
TAG = "1.0"
MULTI_PLATFORMS = ({"architecture": "amd64", "os": "linux"}, {"architecture": "arm64", "os": "linux"})
MIN_LAYER = 4096

MARK_BEGIN = "<!-- bench_sync:begin (written by benchmarks/bench_sync.py; do not edit by hand) -->"
MARK_END = "<!-- bench_sync:end -->"

DEFAULT_INTRO = """# Benchmarks

`benchmarks/bench_sync.py` times `imgmirror sync` of 24 images into an OCI tar against the
same job scripted with skopeo. Run it with `make bench` (prints the results) or
`.venv/bin/python benchmarks/bench_sync.py --out docs/benchmarks.md` (rewrites the section below).
"""


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# The image set
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerRef:
    """A layer already written into the layout: what make_image needs, without the bytes."""

    media_type: str
    digest: str
    size: int
    diff_id: str

    def descriptor(self, **extra) -> dict:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size, **extra}


def layer_plan(scale: float, n_single: int = N_SINGLE,
               n_multi: int = N_MULTI) -> tuple[dict[str, list[tuple[str, int]]], list[dict]]:
    """(layers of each base, images): every layer as (seed, size in bytes).

    n_single/n_multi change the image count (bench_scale.py uses 8 single-platform images)."""

    def size(mib: float) -> int:
        return max(MIN_LAYER, int(mib * MiB * scale))

    bases = {name: [(f"bench:{name}:{i}", size(s)) for i, s in enumerate(sizes)] for name, sizes in BASES}
    images = []
    names = [f"app-{i:02d}" for i in range(1, n_single + 1)] + [f"multi-{i:02d}" for i in range(1, n_multi + 1)]
    for n, name in enumerate(names):
        base = BASES[n % len(BASES)][0]
        plats = MULTI_PLATFORMS if name.startswith("multi-") else (None,)
        children = []
        for plat in plats:
            arch = plat["architecture"] if plat else "amd64"
            rng = random.Random(f"bench-sizes:{name}:{arch}")
            own = [rng.uniform(4, 8), rng.uniform(1, 5), rng.uniform(0.5, 2.0)]  # 10.25 MiB on average
            children.append({"platform": plat,
                             "layers": [(f"bench:{name}:{arch}:{j}", size(s)) for j, s in enumerate(own)]})
        images.append({"name": name, "repo": f"bench/{name}", "tag": TAG, "base": base, "children": children})
    return bases, images


def set_key(scale: float, n_single: int = N_SINGLE, n_multi: int = N_MULTI) -> str:
    """Changes whenever the bytes built for `scale` could change."""
    h = hashlib.sha256()
    h.update(json.dumps([SET_VERSION, scale, layer_plan(scale, n_single, n_multi)], sort_keys=True).encode())
    for fn in (imagegen.random_bytes, imagegen._tar, imagegen.make_layer, imagegen.make_image,
               imagegen.make_index, imagegen._json_bytes):
        h.update(inspect.getsource(fn).encode())
    return h.hexdigest()[:16]


def _build_layer(blob_dir: str, seed: str, size: int) -> dict:
    """In a worker process: build one layer with imagegen and write its blob into the layout."""
    layer = imagegen.make_layer(seed, size)
    path = Path(blob_dir) / layer.digest.split(":", 1)[1]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(layer.data)
    os.replace(tmp, path)
    return {"seed": seed, "media_type": layer.media_type, "digest": layer.digest, "size": layer.size,
            "diff_id": layer.diff_id}


def _write_blob(blob_dir: Path, blob: imagegen.Blob) -> None:
    path = blob_dir / blob.digest.split(":", 1)[1]
    if not path.exists():
        path.write_bytes(blob.data)


def build_set(scale: float, sets_dir: Path, n_single: int = N_SINGLE, n_multi: int = N_MULTI) -> tuple[Path, dict]:
    """The OCI layout holding the whole set (built now, or reused) and its description."""
    key = set_key(scale, n_single, n_multi)
    set_dir = sets_dir / f"scale-{scale:g}-{key}"
    desc_path = set_dir / "set.json"
    if desc_path.exists():
        desc = json.loads(desc_path.read_text())
        blob_dir = set_dir / "layout" / "blobs" / "sha256"
        if all((blob_dir / d.split(":", 1)[1]).is_file()
               and (blob_dir / d.split(":", 1)[1]).stat().st_size == s for d, s in desc["blobs"].items()):
            log(f"reusing the built set in {set_dir.relative_to(ROOT)}")
            desc["reused"] = True
            return set_dir / "layout", desc
        log("cached set is incomplete; building it again")
    # Only one set is kept: drop other scales/versions (each is up to half a GiB).
    if sets_dir.exists():
        for old in sets_dir.iterdir():
            shutil.rmtree(old, ignore_errors=True)
    layout = set_dir / "layout"
    blob_dir = layout / "blobs" / "sha256"
    blob_dir.mkdir(parents=True)
    bases, images = layer_plan(scale, n_single, n_multi)
    jobs = [job for layers in bases.values() for job in layers] + \
           [job for img in images for ch in img["children"] for job in ch["layers"]]
    log(f"building {len(jobs)} layers, {sum(s for _, s in jobs) / MiB:.1f} MiB of random data "
        f"(imagegen.make_layer, gzip level 1, {os.cpu_count()} processes)")
    t0 = time.perf_counter()
    with concurrent.futures.ProcessPoolExecutor(max_workers=os.cpu_count()) as pool:
        # Biggest first so the pool does not end on one long layer.
        futs = [pool.submit(_build_layer, str(blob_dir), seed, size)
                for seed, size in sorted(jobs, key=lambda j: -j[1])]
        built = {f.result()["seed"]: f.result() for f in futs}
    layer_seconds = time.perf_counter() - t0

    def ref(seed: str) -> LayerRef:
        b = built[seed]
        return LayerRef(b["media_type"], b["digest"], b["size"], b["diff_id"])

    entries, desc_images = [], []
    for img in images:
        base_layers = [ref(seed) for seed, _ in bases[img["base"]]]
        children = []
        for ch in img["children"]:
            layers = base_layers + [ref(seed) for seed, _ in ch["layers"]]
            children.append(imagegen.make_image(layers, platform=ch["platform"],
                                                labels={"org.opencontainers.image.title": img["name"]}))
        art = children[0] if len(children) == 1 else imagegen.make_index(children)
        for child in children:
            _write_blob(blob_dir, child.config)
            _write_blob(blob_dir, child.manifest)
        _write_blob(blob_dir, art.manifest)
        entries.append(art.manifest.descriptor(annotations={"org.opencontainers.image.ref.name": img["name"]}))
        desc_images.append({"name": img["name"], "repo": img["repo"], "tag": img["tag"], "base": img["base"],
                            "digest": art.digest, "media_type": art.media_type,
                            "platforms": [f"{c.platform['os']}/{c.platform['architecture']}" for c in children]})
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    (layout / "index.json").write_text(json.dumps(
        {"schemaVersion": 2, "mediaType": imagegen.OCI_INDEX, "manifests": entries}, indent=2))

    blobs = {"sha256:" + p.name: p.stat().st_size for p in blob_dir.iterdir()}
    layer_digests = {b["digest"] for b in built.values()}
    desc = {
        "key": key, "scale": scale, "images": desc_images,
        "blobs": blobs,
        "layers": len(layer_digests), "layer_bytes": sum(blobs[d] for d in layer_digests),
        "other_blobs": len(blobs) - len(layer_digests),
        "other_bytes": sum(s for d, s in blobs.items() if d not in layer_digests),
        "build_seconds": round(time.perf_counter() - t0, 2), "layer_seconds": round(layer_seconds, 2),
        "reused": False,
    }
    tmp = desc_path.with_name("set.json.tmp")
    tmp.write_text(json.dumps(desc, indent=1))
    os.replace(tmp, desc_path)   # set.json last: its presence means the layout is complete
    log(f"built in {desc['build_seconds']} s (layers {layer_seconds:.1f} s): {len(blobs)} blobs, "
        f"{desc['layer_bytes'] / MiB:.1f} MiB of layers")
    return layout, desc


def push_set(layout: Path, desc: dict, host: str) -> float:
    """Push every image of the layout to host (one thread per repository, as imagegen.seed does)."""
    t0 = time.perf_counter()

    def one(img: dict) -> None:
        got = imagegen.push(layout, host, img["repo"], img["tag"], ref_name=img["name"])
        if got != img["digest"]:
            raise RuntimeError(f"{img['repo']}: pushed {got}, built {img['digest']}")

    # Push one image of each base first, so the others can mount (skopeo's blob-info cache)
    # rather than upload the base layers again.
    first = {}
    for img in desc["images"]:
        first.setdefault(img["base"], img)
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        list(pool.map(one, first.values()))
        list(pool.map(one, [i for i in desc["images"] if i not in first.values()]))
    return time.perf_counter() - t0


def warm_page_cache(storage: Path) -> int:
    """Read every file of the registry's storage once, so no timed run pays for the disk."""
    n = 0
    for p in storage.rglob("*"):
        if p.is_file():
            with open(p, "rb") as fh:
                while chunk := fh.read(4 * MiB):
                    n += len(chunk)
    return n


# --------------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------------


@dataclass
class Proc:
    wall: float
    maxrss_kib: int
    cpu: float  # user + system seconds
    rc: int


def child_env() -> dict:
    env = dict(os.environ)
    # Loopback must never go through a proxy, whatever the environment says.
    for k in ("no_proxy", "NO_PROXY"):
        env[k] = ",".join(x for x in (env.get(k), "127.0.0.1", "localhost") if x)
    return env


GNU_TIME = "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else None


def run_measured(cmd: list[str], log_path: Path, timeout: float) -> Proc:
    """Run cmd with output to log_path: wall time, peak RSS and CPU time of that process.

    RSS and CPU come from GNU time (apt package `time`), which reads them from wait4().  Not
    from our own wait4(): Python starts children with vfork, and Linux carries the high-water
    RSS of the vforked address space (this ~50 MiB Python process) over the exec, so every
    direct child would report at least our own size.  Without /usr/bin/time we fall back to
    that, and say so.
    """
    stats = log_path.with_name(log_path.name + ".time")
    full = [GNU_TIME, "-f", "%M %U %S", "-o", str(stats), *cmd] if GNU_TIME else cmd
    with open(log_path, "ab") as logf:
        logf.write(("$ " + " ".join(cmd) + "\n").encode())
        logf.flush()
        t0 = time.perf_counter()
        # Own process group, so a timeout kills the measured command too, not just GNU time.
        proc = subprocess.Popen(full, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=child_env(), start_new_session=True)
        timer = threading.Timer(timeout, lambda: os.killpg(proc.pid, signal.SIGKILL))
        timer.start()
        try:
            _, status, ru = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode} (after {wall:.1f} s); see {log_path}")
    if GNU_TIME:
        rss, user, sys_ = stats.read_text().strip().splitlines()[-1].split()
        stats.unlink()
        return Proc(wall, int(rss), float(user) + float(sys_), proc.returncode)
    return Proc(wall, ru.ru_maxrss, ru.ru_utime + ru.ru_stime, proc.returncode)


def fresh(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    os.sync()   # earlier runs' writeback must not land in this run's time
    return path


def tar_blobs(path: Path) -> dict[str, int]:
    out = {}
    with tarfile.open(path) as tar:
        for m in tar:
            name = m.name.removeprefix("./")
            if m.isfile() and name.startswith("blobs/sha256/"):
                out["sha256:" + name.rsplit("/", 1)[1]] = m.size
    return out


def run_imgmirror(imgmirror: str, manifest: Path, work: Path, timeout: float, cache: Path | None = None) -> dict:
    work = fresh(work)
    cache = cache or work / "cache"
    out, report = work / "bundle.tar", work / "report.json"
    p = run_measured([imgmirror, "sync", str(manifest), "-o", str(out), "--cache", str(cache),
                      "--no-progress", "--report", str(report)], work / "imgmirror.log", timeout)
    rep = json.loads(report.read_text())
    t = rep["totals"]
    if t["failed"] or t["ok"] != t["images"]:
        raise RuntimeError(f"imgmirror: {t['failed']} images failed; see {work}/imgmirror.log")
    # Images are resolved and downloaded concurrently, the tar is written after the last one:
    # the slowest image's own time is (about) when the download phase ended.
    last_image = max((i["seconds"] for i in rep["images"]), default=0.0)
    return {"proc": p, "totals": t, "tar": out, "tar_size": out.stat().st_size, "cache": cache,
            "last_image": last_image}


def run_skopeo(images: list[dict], host: str, work: Path, timeout: float) -> dict:
    work = fresh(work)
    layout, out = work / "layout", work / "bundle.tar"
    procs = []
    t0 = time.perf_counter()
    for img in images:
        procs.append(run_measured(
            ["skopeo", "copy", "--all", "--preserve-digests", "--src-tls-verify=false",
             f"docker://{host}/{img['repo']}:{img['tag']}", f"oci:{layout}:{img['repo']}:{img['tag']}"],
            work / "skopeo.log", timeout))
    copy_wall = time.perf_counter() - t0
    tar = run_measured(["tar", "-cf", str(out), "-C", str(layout), "."], work / "tar.log", timeout)
    wall = time.perf_counter() - t0
    n_entries = len(json.loads((layout / "index.json").read_text())["manifests"])
    if n_entries != len(images):
        raise RuntimeError(f"skopeo layout lists {n_entries} images, expected {len(images)}")
    return {"wall": wall, "copy_wall": copy_wall, "procs": procs, "tar_proc": tar,
            "maxrss_kib": max(p.maxrss_kib for p in procs), "cpu": sum(p.cpu for p in procs) + tar.cpu,
            "tar": out, "tar_size": out.stat().st_size, "layout": layout}


def profile(out: Path, imgmirror: str, manifest: Path, work: Path, timeout: float) -> None:
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if not spy:
        log("--profile: py-spy not found (.venv/bin/pip install py-spy); skipped")
        return
    work = fresh(work)
    fmt = {".svg": "flamegraph", ".json": "speedscope"}.get(out.suffix, "raw")
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    run_measured([spy, "record", "--idle", "-r", "250", "-f", fmt, "-o", str(out), "--",
                  imgmirror, "sync", str(manifest), "-o", str(work / "bundle.tar"), "--cache", str(work / "cache"),
                  "--no-progress"], work / "py-spy.log", timeout)
    shutil.rmtree(work, ignore_errors=True)
    log(f"profile of a cold imgmirror run written to {out}")


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def version(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.strip().splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        return "unknown"


def machine_info(imgmirror: str) -> dict:
    mem_kib = 0
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "nproc": os.cpu_count(), "cpu": cpu, "mem_gib": mem_kib / (1 << 20),
        "kernel": pyplatform.release(), "python": pyplatform.python_version(),
        "skopeo": version(["skopeo", "--version"]).removeprefix("skopeo version "),
        "registry": version(["docker-registry", "--version"]).split()[-1],
        "imgmirror": version([imgmirror, "--version"]).removeprefix("imgmirror "),
        "tar": version(["tar", "--version"]),
    }


def mib(n: float) -> str:
    return f"{n / MiB:.1f} MiB"


def fmt_s(xs: list[float]) -> str:
    return ", ".join(f"{x:.2f}" for x in xs)


def render(m: dict, desc: dict, res: dict, args) -> str:
    im, sk, warm = res["imgmirror"], res["skopeo"], res["warm"]
    im_wall = [r["proc"].wall for r in im]
    sk_wall = [r["wall"] for r in sk]
    im_med, sk_med = statistics.median(im_wall), statistics.median(sk_wall)
    n_multi = sum(1 for i in desc["images"] if len(i["platforms"]) > 1)
    n_img = len(desc["images"])
    all_bytes = desc["layer_bytes"] + desc["other_bytes"]
    lines = [
        f"## imgmirror sync vs. skopeo, scale {args.scale:g} ({res['date']})",
        "",
        f"- Machine: {m['nproc']} CPUs ({m['cpu']}), {m['mem_gib']:.1f} GiB RAM, Linux {m['kernel']}; "
        f"Python {m['python']}, imgmirror {m['imgmirror']}, skopeo {m['skopeo']}, "
        f"docker-registry (distribution) {m['registry']}, {m['tar']}.",
        f"- Set: {n_img} images ({n_img - n_multi} single-platform, {n_multi} OCI indexes with linux/amd64 "
        f"and linux/arm64) on 3 base images; {len(desc['blobs'])} unique blobs: {desc['layers']} layers "
        f"({mib(desc['layer_bytes'])} of gzip'd random data), {desc['other_blobs']} configs and "
        f"manifests ({desc['other_bytes'] / 1024:.1f} KiB); {mib(all_bytes)} in all. "
        f"Bundle tar: {mib(im[0]['tar_size'])} (imgmirror), {mib(sk[0]['tar_size'])} (skopeo + tar); "
        f"both hold the same {res['blob_check']} blobs.",
        f"- Registry on 127.0.0.1, its blob files read into the page cache before timing. "
        f"Runs alternate (imgmirror, skopeo, ...), {args.runs} each, every one with an empty cache "
        f"and no output; imgmirror with its defaults (8 parallel transfers), skopeo one image after "
        f"another into one OCI layout, then `tar -cf`. Peak RSS and CPU time per process from "
        f"{'GNU time (%M, %U + %S)' if GNU_TIME else 'wait4 (includes the benchmark process forked; GNU time was missing)'}; "
        f"skopeo's CPU time is the sum over its {n_img} processes and tar. Wall time around the whole job.",
        "",
        "| tool | median wall (s) | each run (s) | peak RSS (median) | CPU user+sys (median) |",
        "|---|---:|---|---:|---:|",
        f"| `imgmirror sync`, empty cache | {im_med:.2f} | {fmt_s(im_wall)} | "
        f"{statistics.median(r['proc'].maxrss_kib for r in im) / 1024:.1f} MiB | "
        f"{statistics.median(r['proc'].cpu for r in im):.2f} s |",
        f"| `skopeo copy` x{n_img} + `tar -cf` | {sk_med:.2f} | {fmt_s(sk_wall)} | "
        f"{statistics.median(r['maxrss_kib'] for r in sk) / 1024:.1f} MiB (largest skopeo) | "
        f"{statistics.median(r['cpu'] for r in sk):.2f} s |",
        f"| `imgmirror sync`, warm cache (1 run) | {warm['proc'].wall:.2f} | {warm['proc'].wall:.2f} | "
        f"{warm['proc'].maxrss_kib / 1024:.1f} MiB | {warm['proc'].cpu:.2f} s |",
        "",
        f"**imgmirror / skopeo (median wall): {im_med / sk_med:.2f}**; imgmirror peak RSS "
        f"{max(r['proc'].maxrss_kib for r in im) / 1024:.1f} MiB (highest of {args.runs} runs). "
        f"Of the skopeo figure, `tar -cf` took {fmt_s([r['tar_proc'].wall for r in sk])} s. "
        f"In imgmirror's reports the slowest image (resolve and download; all images run concurrently) "
        f"took {fmt_s([r['last_image'] for r in im])} s; the tar is written while the blobs download, "
        f"and the rest of each run is start-up (about 0.3 s of imports) and the writer catching up "
        f"(warm run: slowest image {warm['last_image']:.2f} s). The registry, on the same 2 cores, used "
        f"{fmt_s([r['registry_cpu'] for r in im])} s of CPU serving imgmirror and "
        f"{fmt_s([r['registry_cpu'] for r in sk])} s serving skopeo.",
        "",
        f"Set {'reused from benchmarks/work' if desc['reused'] else 'built in ' + str(desc['build_seconds']) + ' s'}, "
        f"pushed in {res['push_seconds']:.1f} s; the whole benchmark took {res['total_seconds']:.0f} s. "
        f"Command: `{res['command']}`.",
    ]
    return "\n".join(lines) + "\n"


def write_out(path: Path, section: str, begin: str = MARK_BEGIN, end: str = MARK_END,
              intro: str = DEFAULT_INTRO) -> None:
    """Put `section` between the markers `begin` and `end` in `path` (appended if they are not
    there yet), keeping everything else; bench_push.py writes its own section with this too."""
    block = f"{begin}\n{section}{end}\n"
    if path.exists():
        text = path.read_text()
        if begin in text and end in text:
            head, rest = text.split(begin, 1)
            tail = rest.split(end, 1)[1].lstrip("\n")
            text = head + block + ("\n" + tail if tail else "")   # a blank line before what follows
        else:
            text = text.rstrip("\n") + "\n\n" + block
    else:
        text = intro + "\n" + block
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


# --------------------------------------------------------------------------------------------


def process_cpu(pid: int) -> float:
    """User + system CPU seconds a process has used so far (the registry shares the 2 cores)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", type=float, default=1.0, help="size factor of every layer (1.0: ~500 MiB)")
    ap.add_argument("--runs", type=int, default=3, help="timed runs of each tool (median reported)")
    ap.add_argument("--out", type=Path, help="markdown file to write the results into (default: print only)")
    ap.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "work", help="scratch directory")
    ap.add_argument("--timeout", type=float, default=600, help="seconds allowed to any one process")
    ap.add_argument("--profile", type=Path, metavar="FILE",
                    help="after the timed runs, one more cold imgmirror run (not timed) under py-spy "
                         "record --idle, written to FILE (.svg flamegraph, .json speedscope, else raw)")
    args = ap.parse_args(argv)
    if args.scale <= 0 or args.runs < 1:
        ap.error("--scale must be > 0 and --runs >= 1")
    if missing_tools():
        print(f"missing {', '.join(missing_tools())}: apt-get install docker-registry skopeo", file=sys.stderr)
        return 2
    imgmirror = shutil.which("imgmirror", path=str(Path(sys.executable).parent)) or shutil.which("imgmirror")
    if not imgmirror:
        print("imgmirror is not installed in this environment (pip install -e .)", file=sys.stderr)
        return 2

    started = time.perf_counter()
    layout, desc = build_set(args.scale, args.work / "sets")
    run_dir = args.work / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    reg = start_registry(run_dir / "registry")
    try:
        log(f"registry on {reg.host}; pushing {len(desc['images'])} images")
        push_seconds = push_set(layout, desc, reg.host)
        log(f"pushed in {push_seconds:.1f} s")
        manifest = run_dir / "mirror.yaml"
        manifest.write_text("version: 1\nimages:\n" + "".join(
            f"  - source: {reg.host}/{i['repo']}:{i['tag']}\n" for i in desc["images"]))
        warm_page_cache(reg.storage_dir)

        res: dict = {"imgmirror": [], "skopeo": [], "date": dt.date.today().isoformat(),
                     "command": " ".join([".venv/bin/python benchmarks/bench_sync.py", *(argv or sys.argv[1:])]),
                     "push_seconds": push_seconds}
        expected = desc["blobs"]
        for i in range(1, args.runs + 1):
            before = process_cpu(reg.process.pid)
            r = run_imgmirror(imgmirror, manifest, run_dir / f"imgmirror-{i}", args.timeout)
            r["registry_cpu"] = process_cpu(reg.process.pid) - before
            log(f"run {i}: imgmirror {r['proc'].wall:.2f} s, peak RSS {r['proc'].maxrss_kib / 1024:.1f} MiB, "
                f"CPU {r['proc'].cpu:.2f} s")
            if i == 1 and tar_blobs(r["tar"]) != expected:
                raise RuntimeError("imgmirror's bundle does not hold exactly the blobs of the set")
            res["imgmirror"].append(r)
            before = process_cpu(reg.process.pid)
            s = run_skopeo(desc["images"], reg.host, run_dir / f"skopeo-{i}", args.timeout)
            s["registry_cpu"] = process_cpu(reg.process.pid) - before
            log(f"run {i}: skopeo   {s['wall']:.2f} s (tar {s['tar_proc'].wall:.2f} s), largest skopeo RSS "
                f"{s['maxrss_kib'] / 1024:.1f} MiB, CPU {s['cpu']:.2f} s")
            if i == 1 and tar_blobs(s["tar"]) != expected:
                raise RuntimeError("skopeo's layout does not hold exactly the blobs of the set")
            res["skopeo"].append(s)
            # Keep the last imgmirror cache for the warm run; drop the rest (each is GiB-sized).
            shutil.rmtree(s["tar"].parent, ignore_errors=True)
            if i < args.runs:
                shutil.rmtree(r["tar"].parent, ignore_errors=True)
            else:
                r["tar"].unlink()
        res["blob_check"] = len(expected)
        warm = run_imgmirror(imgmirror, manifest, run_dir / "imgmirror-warm", args.timeout,
                             cache=res["imgmirror"][-1]["cache"])
        if warm["totals"]["downloaded_bytes"]:
            log(f"note: the warm run downloaded {warm['totals']['downloaded_bytes']} bytes")
        log(f"warm:  imgmirror {warm['proc'].wall:.2f} s, peak RSS {warm['proc'].maxrss_kib / 1024:.1f} MiB")
        res["warm"] = warm
        if args.profile:
            profile(args.profile, imgmirror, manifest, run_dir / "imgmirror-profile", args.timeout)
    finally:
        reg.stop()
    shutil.rmtree(run_dir, ignore_errors=True)
    res["total_seconds"] = time.perf_counter() - started
    section = render(machine_info(imgmirror), desc, res, args)
    print(section)
    if args.out:
        write_out(args.out, section)
        log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
