#!/usr/bin/env python3
"""Scaling benchmark: `imgmirror sync` against the skopeo loop as unique bytes and image count grow.

    .venv/bin/python benchmarks/bench_scale.py [--runs 2] [--out docs/benchmarks.md] [--plot docs/scaling.png]

Not part of CI (a few minutes, up to ~3 GiB of scratch space under benchmarks/work/scale/, which is
deleted at the end whatever happens).

Two axes, every point measured in the same invocation, each tool `--runs` times (median reported),
alternating, each run from an empty cache and no output (bench_sync.run_imgmirror / run_skopeo):

* unique bytes: bench_sync.py's generator with 8 single-platform images on its 3 base images
  (bench_sync.layer_plan with n_single=8, n_multi=0), every layer scaled so the set holds about
  1x, 2x and 4x `--base-mib` (125 MiB) of unique layer bytes; 8 images at every point;
* image count: the 1x set (same 8 manifests, same ~125 MiB of layers), each image also tagged
  under 3 or 15 more tags, so 8, 32 and 128 references.  The extra tags name the *same*
  manifests (identical digests): the many-tags-on-one-image case, not distinct images sharing
  layers.  They are added with a raw HTTP PUT of the manifest under the new tag (no blob moves).
  The 8-image point is the 1x point of the bytes axis (measured once, shown on both axes).

Writes a markdown section between bench_scale markers (--out) and a two-panel PNG (--plot,
needs matplotlib: `.venv/bin/pip install -e '.[bench]'`).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime as dt
import shutil
import signal
import statistics
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_sync as bs  # noqa: E402  (puts tests/ on sys.path too)
from bench_sync import GNU_TIME, MiB, ROOT, log, process_cpu  # noqa: E402
from registries import missing_tools, start_registry  # noqa: E402

N_IMAGES = 8
BYTES_FACTORS = (1, 2, 4)
TAG_FACTORS = (1, 4, 16)

MARK_BEGIN = "<!-- bench_scale:begin (written by benchmarks/bench_scale.py; do not edit by hand) -->"
MARK_END = "<!-- bench_scale:end -->"


def scale_for(target_mib: float) -> float:
    """The layer_plan scale at which 8 single-platform images hold about target_mib of layers."""
    bases, images = bs.layer_plan(1.0, N_IMAGES, 0)
    at_one = sum(s for layers in bases.values() for _, s in layers) + \
        sum(s for img in images for ch in img["children"] for _, s in ch["layers"])
    return round(target_mib * MiB / at_one, 4)


def put_tag(host: str, layout: Path, img: dict, tag: str) -> None:
    """PUT the image's manifest (read from the built layout) under another tag."""
    data = (layout / "blobs" / "sha256" / img["digest"].split(":", 1)[1]).read_bytes()
    req = urllib.request.Request(f"http://{host}/v2/{img['repo']}/manifests/{tag}", data=data, method="PUT",
                                 headers={"Content-Type": img["media_type"]})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))   # loopback: never a proxy
    with opener.open(req, timeout=30) as resp:
        got = resp.headers.get("Docker-Content-Digest")
    if got != img["digest"]:
        raise RuntimeError(f"{img['repo']}:{tag}: registry answered {got}, expected {img['digest']}")


def measure(point: dict, imgmirror: str, reg, refs: list[dict], expected: dict, run_dir: Path,
            runs: int, timeout: float) -> None:
    """Time both tools on refs (dicts with repo and tag); results go into point."""
    manifest = run_dir / f"mirror-{point['id']}.yaml"
    manifest.write_text("version: 1\nimages:\n" + "".join(
        f"  - source: {reg.host}/{r['repo']}:{r['tag']}\n" for r in refs))
    point.update(im=[], sk=[])
    for i in range(1, runs + 1):
        before = process_cpu(reg.process.pid)
        r = bs.run_imgmirror(imgmirror, manifest, run_dir / "imgmirror", timeout)
        r["registry_cpu"] = process_cpu(reg.process.pid) - before
        if i == 1 and bs.tar_blobs(r["tar"]) != expected:
            raise RuntimeError(f"{point['id']}: imgmirror's bundle does not hold exactly the set's blobs")
        point["im"].append({"wall": r["proc"].wall, "rss": r["proc"].maxrss_kib, "cpu": r["proc"].cpu,
                            "registry_cpu": r["registry_cpu"], "tar_size": r["tar_size"]})
        shutil.rmtree(r["tar"].parent, ignore_errors=True)
        before = process_cpu(reg.process.pid)
        s = bs.run_skopeo(refs, reg.host, run_dir / "skopeo", timeout)
        s["registry_cpu"] = process_cpu(reg.process.pid) - before
        if i == 1 and bs.tar_blobs(s["tar"]) != expected:
            raise RuntimeError(f"{point['id']}: skopeo's layout does not hold exactly the set's blobs")
        point["sk"].append({"wall": s["wall"], "rss": s["maxrss_kib"], "cpu": s["cpu"],
                            "tar_wall": s["tar_proc"].wall, "registry_cpu": s["registry_cpu"]})
        shutil.rmtree(s["tar"].parent, ignore_errors=True)
        log(f"{point['id']} run {i}: imgmirror {r['proc'].wall:.2f} s ({r['proc'].maxrss_kib / 1024:.0f} MiB), "
            f"skopeo {s['wall']:.2f} s ({s['maxrss_kib'] / 1024:.0f} MiB)")
    for k in ("im", "sk"):
        point[k + "_wall"] = statistics.median(x["wall"] for x in point[k])
        point[k + "_rss"] = statistics.median(x["rss"] for x in point[k]) / 1024
        point[k + "_cpu"] = statistics.median(x["cpu"] for x in point[k])


def plot(points: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_bytes = [p for p in points if p["axis"] == "bytes"]
    by_count = [p for p in points if p["axis"] == "images"]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4.2))   # own y scales: skopeo grows far more on the right
    for ax, pts, xkey, xlabel, title in (
            (a1, by_bytes, "unique_mib", "unique layer bytes (MiB)", f"{N_IMAGES} images, unique bytes 1x/2x/4x"),
            (a2, by_count, "refs", "images (references to sync)",
             f"~{by_bytes[0]['unique_mib']:.0f} MiB unique, 1x/4x/16x tags")):
        xs = [p[xkey] for p in pts]
        ax.plot(xs, [p["im_wall"] for p in pts], "o-", label="imgmirror sync (empty cache)")
        ax.plot(xs, [p["sk_wall"] for p in pts], "s--", label="skopeo copy xN + tar -cf")
        for p in pts:
            ax.annotate(f"{p['im_wall']:.2f}", (p[xkey], p["im_wall"]), textcoords="offset points",
                        xytext=(0, -13), ha="center", fontsize=8, color="C0")
            ax.annotate(f"{p['sk_wall']:.2f}", (p[xkey], p["sk_wall"]), textcoords="offset points",
                        xytext=(0, 6), ha="center", fontsize=8, color="C1")
        if xkey == "refs":
            ax.set_xscale("log", base=2)
        ax.set_xticks(xs)
        ax.set_xticklabels([f"{x:.0f}" for x in xs])
        ax.set_xlabel(xlabel)
        ax.set_title(title, fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.set_ylim(0, 1.12 * max(max(p["im_wall"], p["sk_wall"]) for p in pts))
        ax.set_ylabel("wall time, median (s)")
    a1.legend(fontsize=8, loc="upper left")
    fig.suptitle("imgmirror sync vs. skopeo, local docker-registry (bench_scale.py)", fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def render(m: dict, points: list[dict], res: dict, args, plot_rel: str | None) -> str:
    def row(p: dict) -> str:
        each = lambda k: ", ".join(f"{x['wall']:.2f}" for x in p[k])  # noqa: E731
        return (f"| {p['label']} | {p['refs']} | {p['unique_mib']:.1f} | {p['im_wall']:.2f} ({each('im')}) | "
                f"{p['sk_wall']:.2f} ({each('sk')}) | **{p['im_wall'] / p['sk_wall']:.2f}** | "
                f"{p['im_rss']:.1f} MiB | {p['sk_rss']:.1f} MiB | {p['im_cpu']:.2f} / {p['sk_cpu']:.2f} |")

    b = [p for p in points if p["axis"] == "bytes"]
    c = [p for p in points if p["axis"] == "images"]
    g = lambda pts, k: pts[-1][k] / pts[0][k]  # noqa: E731
    scales_s = ", ".join(f"{p['scale']:g}" for p in b)
    mibs_s = ", ".join(f"{p['unique_mib']:.1f}" for p in b)
    blobs_s = ", ".join(str(p["blobs"]) for p in b)
    tars_s = ", ".join(f"{statistics.median(x['tar_wall'] for x in p['sk']):.2f}" for p in b)
    lines = [
        f"## Scaling: unique bytes and image count ({res['date']})",
        "",
        f"- Machine: {m['nproc']} CPUs ({m['cpu']}), {m['mem_gib']:.1f} GiB RAM, Linux {m['kernel']}; "
        f"Python {m['python']}, imgmirror {m['imgmirror']}, skopeo {m['skopeo']}, "
        f"docker-registry (distribution) {m['registry']}.",
        f"- Sets: bench_sync.py's generator with {N_IMAGES} single-platform images on its 3 base images, "
        f"every layer scaled (scale {scales_s}) to "
        f"{mibs_s} MiB of unique layer bytes "
        f"({b[0]['layers']} layers; {blobs_s} unique blobs with configs and manifests). "
        f"Image-count axis: the {b[0]['unique_mib']:.1f} MiB set with each of its {N_IMAGES} images also "
        f"tagged under 3 or 15 more tags (raw manifest PUT), so {', '.join(str(p['refs']) for p in c)} "
        f"references to the same {N_IMAGES} manifests: many tags of one image, not distinct images sharing "
        f"layers. The {N_IMAGES}-image point is the 1x point of the bytes axis, measured once.",
        f"- Per point {args.runs} run(s) of each tool, alternating, each from an empty cache and no output, "
        f"against a local `docker-registry` on 127.0.0.1 whose blob files were read into the page cache. "
        f"imgmirror with its defaults; skopeo one `copy --all --preserve-digests` per reference into one "
        f"shared OCI layout, then `tar -cf`. Both bundles checked to hold exactly the set's blobs. Peak RSS "
        f"and CPU from {'GNU time' if GNU_TIME else 'wait4 (GNU time missing)'}; for skopeo the largest "
        f"single process and the CPU summed over all processes.",
        "",
        "| point | images | unique MiB | imgmirror s, median (runs) | skopeo s, median (runs) | ratio | "
        "imgmirror peak RSS | skopeo peak RSS | CPU s imgmirror / skopeo |",
        "|---|---:|---:|---|---|---:|---:|---:|---:|",
        *[row(p) for p in points],
        "",
        f"Growth from the first to the last point of each axis (median wall): unique bytes x"
        f"{g(b, 'unique_mib'):.1f} -> imgmirror x{g(b, 'im_wall'):.2f}, skopeo x{g(b, 'sk_wall'):.2f}; "
        f"images x{g(c, 'refs'):.0f} over the same bytes -> imgmirror x{g(c, 'im_wall'):.2f}, "
        f"skopeo x{g(c, 'sk_wall'):.2f}. Peak RSS of imgmirror: "
        f"{min(p['im_rss'] for p in points):.1f} to {max(p['im_rss'] for p in points):.1f} MiB over all points. "
        f"skopeo's `tar -cf` took {tars_s} s "
        f"on the bytes axis. Registry CPU (median, same cores) serving imgmirror / skopeo at the last point of "
        f"each axis: {statistics.median(x['registry_cpu'] for x in b[-1]['im']):.2f} / "
        f"{statistics.median(x['registry_cpu'] for x in b[-1]['sk']):.2f} s (bytes 4x), "
        f"{statistics.median(x['registry_cpu'] for x in c[-1]['im']):.2f} / "
        f"{statistics.median(x['registry_cpu'] for x in c[-1]['sk']):.2f} s (images 16x).",
        "",
    ]
    if plot_rel:
        lines += [f"![time against unique bytes and against image count]({plot_rel})", ""]
    lines.append(f"Sets built in {res['build_seconds']:.0f} s, pushed in {res['push_seconds']:.0f} s (extra tags "
                 f"{res['tag_seconds']:.1f} s); the whole benchmark took {res['total_seconds']:.0f} s. "
                 f"Command: `{res['command']}`.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base-mib", type=float, default=125, help="unique layer MiB of the 1x set")
    ap.add_argument("--runs", type=int, default=2, help="timed runs of each tool per point (median reported)")
    ap.add_argument("--out", type=Path, help="markdown file to write the section into (default: print only)")
    ap.add_argument("--plot", type=Path, default=ROOT / "docs" / "scaling.png", help="PNG to write")
    ap.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "work" / "scale",
                    help="scratch directory (deleted at the end)")
    ap.add_argument("--timeout", type=float, default=600, help="seconds allowed to any one process")
    args = ap.parse_args(argv)
    if args.base_mib <= 0 or args.runs < 1:
        ap.error("--base-mib must be > 0 and --runs >= 1")
    if missing_tools():
        print(f"missing {', '.join(missing_tools())}: apt-get install docker-registry skopeo", file=sys.stderr)
        return 2
    imgmirror = shutil.which("imgmirror", path=str(Path(sys.executable).parent)) or shutil.which("imgmirror")
    if not imgmirror:
        print("imgmirror is not installed in this environment (pip install -e .)", file=sys.stderr)
        return 2

    # A kill (SIGTERM) must still run the finally below: the scratch space is up to ~3 GiB.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.perf_counter()
    res = {"date": dt.date.today().isoformat(), "build_seconds": 0.0, "push_seconds": 0.0, "tag_seconds": 0.0,
           "command": " ".join([".venv/bin/python benchmarks/bench_scale.py", *(argv or sys.argv[1:])])}
    points: list[dict] = []
    reg = None
    try:
        for k in BYTES_FACTORS:
            shutil.rmtree(args.work, ignore_errors=True)   # one set and one registry at a time on disk
            scale = scale_for(args.base_mib * k)
            t0 = time.perf_counter()
            layout, desc = bs.build_set(scale, args.work / "sets", N_IMAGES, 0)
            res["build_seconds"] += time.perf_counter() - t0
            reg = start_registry(args.work / "registry")
            log(f"bytes {k}x (scale {scale:g}, {desc['layer_bytes'] / MiB:.1f} MiB): registry on {reg.host}")
            res["push_seconds"] += bs.push_set(layout, desc, reg.host)
            extra = []
            if k == 1:
                t0 = time.perf_counter()
                extra = [(img, f"{bs.TAG}-t{j:02d}") for j in range(2, max(TAG_FACTORS) + 1) for img in desc["images"]]
                with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
                    list(pool.map(lambda a, h=reg.host, lo=layout: put_tag(h, lo, *a), extra))
                res["tag_seconds"] = time.perf_counter() - t0
                log(f"added {len(extra)} tags in {res['tag_seconds']:.1f} s")
            bs.warm_page_cache(reg.storage_dir)
            run_dir = args.work / "run"
            run_dir.mkdir(parents=True, exist_ok=True)
            base = {"scale": scale, "unique_mib": desc["layer_bytes"] / MiB, "layers": desc["layers"],
                    "blobs": len(desc["blobs"])}
            refs = [{"repo": i["repo"], "tag": i["tag"]} for i in desc["images"]]
            p = {**base, "axis": "bytes", "id": f"bytes-{k}x", "label": f"bytes {k}x", "refs": len(refs)}
            measure(p, imgmirror, reg, refs, desc["blobs"], run_dir, args.runs, args.timeout)
            points.append(p)
            if k == 1:
                points.append({**p, "axis": "images", "label": "images 1x (same run)"})
                for f in TAG_FACTORS[1:]:
                    tags = {f"{bs.TAG}-t{j:02d}" for j in range(2, f + 1)}
                    more = refs + [{"repo": img["repo"], "tag": t} for img, t in extra if t in tags]
                    q = {**base, "axis": "images", "id": f"images-{f}x", "label": f"images {f}x",
                         "refs": len(more)}
                    measure(q, imgmirror, reg, more, desc["blobs"], run_dir, args.runs, args.timeout)
                    points.append(q)
            reg.stop()
            reg = None
        # Table order: the bytes axis, then the image axis.
        points.sort(key=lambda p: (p["axis"] != "bytes", p["refs"], p["unique_mib"]))
        plot_rel = None
        if args.plot:
            try:
                plot(points, args.plot)
                log(f"wrote {args.plot}")
                out_dir = (args.out or ROOT / "docs" / "x").resolve().parent
                plot_rel = str(args.plot.resolve().relative_to(out_dir)) \
                    if args.plot.resolve().is_relative_to(out_dir) else str(args.plot)
            except ImportError:
                log("matplotlib is missing (.venv/bin/pip install -e '.[bench]'); no plot")
    finally:
        if reg is not None:
            reg.stop()
        shutil.rmtree(args.work, ignore_errors=True)
    res["total_seconds"] = time.perf_counter() - started
    section = render(bs.machine_info(imgmirror), points, res, args, plot_rel)
    print(section)
    if args.out:
        bs.write_out(args.out, section, MARK_BEGIN, MARK_END)
        log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
