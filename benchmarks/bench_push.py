#!/usr/bin/env python3
"""Benchmark: `imgmirror push` of a bundle against skopeo pushing each image from an OCI layout.

    .venv/bin/python benchmarks/bench_push.py [--scale 1.0] [--runs 3] [--out docs/benchmarks.md]

The image set is bench_sync.py's (24 images on 3 shared bases, 8 of them multi-arch indexes,
about 492 MiB at scale 1.0, cached in benchmarks/work/sets/); so are the helpers that build it,
push it, and measure a process.  In one invocation:

1. Builds (or reuses) the set, starts a source `docker-registry` on 127.0.0.1 and pushes the set
   into it.
2. Makes, once and untimed, what each tool pushes from: the bundle, with `imgmirror sync
   MANIFEST -o bundle.tar`; and one OCI layout holding every image, with `skopeo copy --all
   --preserve-digests docker://SRC/REPO:TAG oci:LAYOUT:REPO:TAG` per image.  Both are read once
   so that the timed runs find them in the page cache.
3. For each of --runs runs, and for each tool (which goes first alternates between runs), starts
   a fresh empty target registry, then times
   a. cold: `imgmirror push bundle.tar --to TARGET --no-progress --report R.json`, or
      `skopeo copy --all --preserve-digests --dest-tls-verify=false oci:LAYOUT:REPO:TAG
      docker://TARGET/REPO:TAG` for each image in turn;
   b. no-op: the same again into the now-full registry;
   and stops and deletes that registry.  Wall time, peak RSS and CPU time of every process come
   from GNU time (as in bench_sync.py), the target registry's CPU time from /proc/PID/stat, and
   its access log says which requests each case made.  After the first cold push of each tool,
   every image's manifest in the target is read back (skopeo inspect --raw) and its sha256
   compared with the source registry's.
4. Prints a markdown section, and with --out writes it into that file between its own marker
   comments (bench_sync.py's section is left as it is).

Everything is written under --work (benchmarks/work/push-run/), which is deleted at the end,
also after a failure.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import datetime as dt
import functools
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_sync as bs  # noqa: E402  (puts tests/ on sys.path too)
import imagegen  # noqa: E402
from bench_sync import GNU_TIME, ROOT, fmt_s, log, mib, process_cpu, run_measured  # noqa: E402
from registries import missing_tools, start_registry  # noqa: E402

MARK_BEGIN = "<!-- bench_push:begin (written by benchmarks/bench_push.py; do not edit by hand) -->"
MARK_END = "<!-- bench_push:end -->"

DEFAULT_INTRO = """## imgmirror push

`benchmarks/bench_push.py` times `imgmirror push` of the benchmark bundle into an empty registry,
and again into the now-full one (the no-op case), against `skopeo copy --all --preserve-digests`
of each image from one OCI layout, cold and no-op too. Run it with
`.venv/bin/python benchmarks/bench_push.py --out docs/benchmarks.md` (rewrites the section below).
"""

TOOLS = ("imgmirror", "skopeo")
CASES = ("cold", "noop")


# --------------------------------------------------------------------------------------------
# What the pushes should do
# --------------------------------------------------------------------------------------------


def image_blobs(layout: Path, digest: str) -> set[str]:
    """Configs and layers an image (an index: all its children) consists of, from the set's layout."""
    doc = json.loads((layout / "blobs" / "sha256" / digest.split(":", 1)[1]).read_bytes())
    if "manifests" in doc:
        return set().union(*(image_blobs(layout, m["digest"]) for m in doc["manifests"]))
    return {doc["config"]["digest"], *(layer["digest"] for layer in doc["layers"])}


def expected_counts(layout: Path, desc: dict) -> dict:
    """What a push that uploads each blob once and mounts it everywhere else must report."""
    per_image = [image_blobs(layout, img["digest"]) for img in desc["images"]]   # one repository each
    unique = set().union(*per_image)
    pairs = sum(len(b) for b in per_image)
    return {"blobs_uploaded": len(unique), "uploaded_bytes": sum(desc["blobs"][d] for d in unique),
            "blobs_mounted": pairs - len(unique), "repo_blob_pairs": pairs}


def classify(req) -> str:
    """The kind of a registry request, from the access log."""
    p = req.path
    if p.rstrip("/") == "/v2":
        return "GET /v2/ (ping)"
    if "/blobs/uploads/" in p:
        if req.method == "POST":
            return "POST mount" if "mount" in req.query else "POST upload"
        return f"{req.method} upload"
    if "/blobs/" in p:
        return f"{req.method} blob"
    if "/manifests/" in p:
        return f"{req.method} manifest"
    return f"{req.method} other"


def request_counts(reg, since: int) -> dict[str, collections.Counter]:
    """{kind: Counter(status)} of the target's requests after the mark `since`."""
    out: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for r in reg.requests(since=since, settle=0.2):
        out[classify(r)][r.status] += 1
    return dict(out)


# --------------------------------------------------------------------------------------------
# Timed pushes
# --------------------------------------------------------------------------------------------


def measure(reg, fn) -> dict:
    """Run fn() (one push) with the registry's CPU time and requests around it."""
    os.sync()   # earlier writes (the registry's, the previous push's) must not land in this one
    mark = reg.mark(settle=0.2)
    before = process_cpu(reg.process.pid)
    r = fn()
    r["registry_cpu"] = process_cpu(reg.process.pid) - before
    r["requests"] = request_counts(reg, mark)
    return r


def push_imgmirror(imgmirror: str, bundle: Path, host: str, work: Path, name: str, timeout: float) -> dict:
    report = work / f"{name}.json"
    p = run_measured([imgmirror, "push", str(bundle), "--to", host, "--no-progress", "--report", str(report)],
                     work / f"{name}.log", timeout)
    rep = json.loads(report.read_text())
    t = rep["totals"]
    if t["failed"] or t["ok"] != t["images"]:
        raise RuntimeError(f"imgmirror push: {t['failed']} images failed; see {work / name}.log")
    return {"wall": p.wall, "maxrss_kib": p.maxrss_kib, "cpu": p.cpu, "totals": t,
            "existing": sum(i["existing"] for i in rep["images"]),
            "slowest_image": max((i["seconds"] for i in rep["images"]), default=0.0)}


def push_skopeo(images: list[dict], layout: Path, host: str, work: Path, name: str, timeout: float) -> dict:
    procs = []
    t0 = time.perf_counter()
    for img in images:
        ref = f"{img['repo']}:{img['tag']}"
        procs.append(run_measured(
            ["skopeo", "copy", "--all", "--preserve-digests", "--dest-tls-verify=false",
             f"oci:{layout}:{ref}", f"docker://{host}/{ref}"], work / f"{name}.log", timeout))
    return {"wall": time.perf_counter() - t0, "maxrss_kib": max(p.maxrss_kib for p in procs),
            "cpu": sum(p.cpu for p in procs), "procs": len(procs)}


def verify_target(images: list[dict], source: str, target: str, src_digests: dict[str, str]) -> None:
    """Every image's manifest in the target has the source's digest (sha256 of the raw bytes)."""
    def one(img: dict) -> tuple[str, str]:
        ref = f"{img['repo']}:{img['tag']}"
        return ref, imagegen.sha256_digest(imagegen.inspect_raw(target, ref))

    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        got = dict(pool.map(one, images))
    bad = [f"{ref}: {got[ref]} != {src_digests[ref]}" for ref in src_digests if got.get(ref) != src_digests[ref]]
    if bad:
        raise RuntimeError(f"target {target} does not serve the source's manifests: " + "; ".join(bad))


def source_digests(images: list[dict], source: str) -> dict[str, str]:
    def one(img: dict) -> tuple[str, str]:
        ref = f"{img['repo']}:{img['tag']}"
        got = imagegen.sha256_digest(imagegen.inspect_raw(source, ref))
        if got != img["digest"]:
            raise RuntimeError(f"source {source}/{ref} serves {got}, the set has {img['digest']}")
        return ref, got

    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        return dict(pool.map(one, images))


def layout_blobs(layout: Path) -> dict[str, int]:
    return {"sha256:" + p.name: p.stat().st_size for p in (layout / "blobs" / "sha256").iterdir()}


def read_through(path: Path) -> int:
    """Read a file (or every file under a directory) once, into the page cache."""
    if path.is_dir():
        return bs.warm_page_cache(path)
    n = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(4 * bs.MiB):
            n += len(chunk)
    return n


def profile(out: Path, imgmirror: str, bundle: Path, work: Path, timeout: float) -> None:
    """One more cold push into a fresh registry, under py-spy (not timed)."""
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if not spy:
        log("--profile: py-spy not found (.venv/bin/pip install py-spy); skipped")
        return
    fmt = {".svg": "flamegraph", ".json": "speedscope"}.get(out.suffix, "raw")
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    reg = start_registry(work / "target-profile")
    try:
        run_measured([spy, "record", "-r", "250", "-f", fmt, "-o", str(out), "--threads", "--",
                      imgmirror, "push", str(bundle), "--to", reg.host, "--no-progress"],
                     work / "py-spy.log", timeout)
    finally:
        reg.stop()
        shutil.rmtree(work / "target-profile", ignore_errors=True)
    log(f"profile of a cold imgmirror push written to {out}")


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def fmt_requests(c: dict[str, collections.Counter] | None, kind: str) -> str:
    counts = (c or {}).get(kind)
    if not counts:
        return "–"
    total = sum(counts.values())
    odd = [f"{n}× {s}" for s, n in sorted(counts.items()) if s not in (200, 201, 202, 204)]
    return f"{total}" + (f" ({', '.join(odd)})" if odd else "")


def render(m: dict, desc: dict, res: dict, args) -> str:
    rows = res["runs"]

    def col(tool: str, case: str, key: str) -> list[float]:
        return [r[tool][case][key] for r in rows]

    def med(tool: str, case: str, key: str) -> float:
        return statistics.median(col(tool, case, key))

    n_img = len(desc["images"])
    n_multi = sum(1 for i in desc["images"] if len(i["platforms"]) > 1)
    exp = res["expected"]
    ratio = {case: med("imgmirror", case, "wall") / med("skopeo", case, "wall") for case in CASES}

    def verdict(x: float) -> str:
        return "target (at most 0.5) met" if x <= 0.5 else "target (at most 0.5) not met"

    label = {("imgmirror", "cold"): "`imgmirror push`, empty registry",
             ("skopeo", "cold"): f"`skopeo copy` x{n_img}, empty registry",
             ("imgmirror", "noop"): "`imgmirror push`, full registry (no-op)",
             ("skopeo", "noop"): f"`skopeo copy` x{n_img}, full registry (no-op)"}
    table = ["| tool, case | median wall (s) | each run (s) | peak RSS (median) | CPU user+sys (median) "
             "| registry CPU (median) |",
             "|---|---:|---|---:|---:|---:|"]
    for case in CASES:
        for tool in TOOLS:
            rss = med(tool, case, "maxrss_kib") / 1024
            table.append(
                f"| {label[tool, case]} | {med(tool, case, 'wall'):.2f} | {fmt_s(col(tool, case, 'wall'))} | "
                f"{rss:.1f} MiB{' (largest skopeo)' if tool == 'skopeo' else ''} | "
                f"{med(tool, case, 'cpu'):.2f} s | {med(tool, case, 'registry_cpu'):.2f} s |")

    first = rows[0]
    kinds = sorted({k for tool in TOOLS for case in CASES for k in first[tool][case]["requests"]},
                   key=lambda k: (k.split()[1:], k))
    req = ["| requests to the target (run 1) | imgmirror cold | skopeo cold | imgmirror no-op | skopeo no-op |",
           "|---|---:|---:|---:|---:|"]
    for k in kinds:
        req.append(f"| {k} | " + " | ".join(fmt_requests(first[tool][case]["requests"], k)
                                             for case in CASES for tool in TOOLS) + " |")
    req.append("| all | " + " | ".join(str(sum(sum(c.values()) for c in first[tool][case]["requests"].values()))
                                        for case in CASES for tool in TOOLS) + " |")

    im_cold = [r["imgmirror"]["cold"]["totals"] for r in rows]
    im_noop = [r["imgmirror"]["noop"]["totals"] for r in rows]
    lines = [
        f"## imgmirror push vs. skopeo, scale {args.scale:g} ({res['date']})",
        "",
        f"- Machine: {m['nproc']} CPUs ({m['cpu']}), {m['mem_gib']:.1f} GiB RAM, Linux {m['kernel']}; "
        f"Python {m['python']}, imgmirror {m['imgmirror']}, skopeo {m['skopeo']}, "
        f"docker-registry (distribution) {m['registry']}.",
        f"- Set: bench_sync.py's, {n_img} images ({n_img - n_multi} single-platform, {n_multi} two-platform "
        f"OCI indexes) on 3 base images, {len(desc['blobs'])} unique blobs, "
        f"{mib(desc['layer_bytes'] + desc['other_bytes'])}; {exp['blobs_uploaded']} of the blobs are "
        f"configs and layers, {exp['repo_blob_pairs']} (repository, blob) pairs in all, so a push that "
        f"uploads each blob once must mount {exp['blobs_mounted']}. Pushed from: the `imgmirror sync` bundle "
        f"({mib(res['bundle_size'])}, made in {res['bundle_seconds']:.1f} s) and one skopeo OCI layout "
        f"({mib(res['layout_size'])}, made in {res['layout_seconds']:.1f} s), both read into the page "
        f"cache before timing.",
        f"- {args.runs} run{'s' if args.runs != 1 else ''}; in each, each tool gets a fresh empty `docker-registry` on 127.0.0.1 (deleted "
        f"after), pushes into it (cold), then pushes again into the now-full registry (no-op); which tool "
        f"goes first alternates. imgmirror with its defaults (8 parallel transfers), skopeo one image after "
        f"another. Peak RSS and CPU time per process from "
        f"{'GNU time (%M, %U + %S)' if GNU_TIME else 'wait4 (includes the benchmark process forked; GNU time was missing)'}"
        f"; skopeo's CPU is the sum over its {n_img} processes. The registry's CPU time (same 2 cores) "
        f"from /proc/PID/stat around each case.",
        "",
        *table,
        "",
        f"**imgmirror / skopeo (median wall): cold {ratio['cold']:.2f}, no-op {ratio['noop']:.2f}** "
        f"(cold: {verdict(ratio['cold'])}; no-op: {verdict(ratio['noop'])}). imgmirror's reports, cold: "
        f"{fmt_s([t['seconds'] for t in im_cold])} s inside the push (the rest of the wall time is "
        f"start-up, {res['startup']:.2f} s for `imgmirror --version` alone, and reading the bundle's index), "
        f"{'/'.join(str(t['blobs_uploaded']) for t in im_cold)} blobs uploaded "
        f"({'/'.join(mib(t['uploaded_bytes']) for t in im_cold)}), "
        f"{'/'.join(str(t['blobs_mounted']) for t in im_cold)} mounted; no-op: "
        f"{'/'.join(str(t['blobs_uploaded']) for t in im_noop)} uploaded, "
        f"{'/'.join(str(t['blobs_mounted']) for t in im_noop)} mounted, "
        f"{'/'.join(str(r['imgmirror']['noop']['existing']) for r in rows)} found present, "
        f"{fmt_s([t['seconds'] for t in im_noop])} s inside the push.",
        "",
        *req,
        "",
        "Counts are requests as the registry's access log has them; a status in brackets is one other "
        "than 2xx (404 is the answer to a HEAD for something absent).",
        "",
        f"Checked: after the first cold push of each tool, all {n_img} images in the target have the "
        f"source's manifest digest (`skopeo inspect --raw`, sha256). "
        + ("".join(f"Note: {n} " for n in res["notes"]) if res["notes"] else "")
        + f"Set {'reused from benchmarks/work' if desc['reused'] else 'built in ' + str(desc['build_seconds']) + ' s'}, "
        f"pushed to the source in {res['push_seconds']:.1f} s; the whole benchmark took "
        f"{res['total_seconds']:.0f} s. Command: `{res['command']}`.",
    ]
    return "\n".join(lines) + "\n"


def write_out(path: Path, section: str) -> None:
    if path.exists() and MARK_BEGIN not in path.read_text():
        # First time in this file: a short heading and introduction go in front of the section.
        path.write_text(path.read_text().rstrip("\n") + "\n\n" + DEFAULT_INTRO)
    bs.write_out(path, section, MARK_BEGIN, MARK_END, intro=DEFAULT_INTRO)


# --------------------------------------------------------------------------------------------


def check(notes: list[str], what: str, got, want) -> None:
    if got != want:
        notes.append(f"{what}: {got}, expected {want}.")
        log(f"NOTE {what}: {got}, expected {want}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", type=float, default=1.0, help="size factor of every layer (1.0: ~500 MiB)")
    ap.add_argument("--runs", type=int, default=3, help="timed runs of each tool (median reported)")
    ap.add_argument("--out", type=Path, help="markdown file to write the results into (default: print only)")
    ap.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "work", help="scratch directory")
    ap.add_argument("--timeout", type=float, default=600, help="seconds allowed to any one process")
    ap.add_argument("--profile", type=Path, metavar="FILE",
                    help="after the timed runs, one more cold imgmirror push into a fresh registry (not "
                         "timed) under py-spy record --threads, written to FILE (.svg, .json speedscope, else raw)")
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
    set_layout, desc = bs.build_set(args.scale, args.work / "sets")
    images = desc["images"]
    run_dir = args.work / "push-run"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    registries = []    # every registry started, so the finally can stop them all
    res: dict = {"runs": [], "notes": [], "date": dt.date.today().isoformat(),
                 "command": " ".join([".venv/bin/python benchmarks/bench_push.py", *(argv or sys.argv[1:])])}
    try:
        source = start_registry(run_dir / "source")
        registries.append(source)
        log(f"source registry on {source.host}; pushing {len(images)} images")
        res["push_seconds"] = bs.push_set(set_layout, desc, source.host)
        log(f"pushed in {res['push_seconds']:.1f} s")
        src_digests = source_digests(images, source.host)

        # What each tool pushes from (not timed).
        manifest = run_dir / "mirror.yaml"
        manifest.write_text("version: 1\nimages:\n" + "".join(
            f"  - source: {source.host}/{i['repo']}:{i['tag']}\n" for i in images))
        bundle = run_dir / "bundle.tar"
        t0 = time.perf_counter()
        run_measured([imgmirror, "sync", str(manifest), "-o", str(bundle), "--cache", str(run_dir / "sync-cache"),
                      "--no-progress"], run_dir / "sync.log", args.timeout)
        res["bundle_seconds"] = time.perf_counter() - t0
        shutil.rmtree(run_dir / "sync-cache", ignore_errors=True)
        if bs.tar_blobs(bundle) != desc["blobs"]:
            raise RuntimeError("the bundle does not hold exactly the blobs of the set")
        layout = run_dir / "layout"
        t0 = time.perf_counter()
        for img in images:
            ref = f"{img['repo']}:{img['tag']}"
            run_measured(["skopeo", "copy", "--all", "--preserve-digests", "--src-tls-verify=false",
                          f"docker://{source.host}/{ref}", f"oci:{layout}:{ref}"], run_dir / "layout.log",
                         args.timeout)
        res["layout_seconds"] = time.perf_counter() - t0
        if layout_blobs(layout) != desc["blobs"]:
            raise RuntimeError("the skopeo layout does not hold exactly the blobs of the set")
        res["bundle_size"] = bundle.stat().st_size
        res["layout_size"] = sum(layout_blobs(layout).values())
        log(f"bundle made in {res['bundle_seconds']:.1f} s, layout in {res['layout_seconds']:.1f} s")
        read_through(bundle)
        read_through(layout)
        res["expected"] = exp = expected_counts(set_layout, desc)

        for i in range(1, args.runs + 1):
            row: dict = {}
            for tool in (TOOLS if i % 2 else TOOLS[::-1]):
                target_dir = run_dir / f"target-{i}-{tool}"
                reg = start_registry(target_dir)
                registries.append(reg)
                try:
                    row[tool] = {}
                    for case in CASES:
                        name = f"{tool}-{i}-{case}"
                        if tool == "imgmirror":
                            push = functools.partial(push_imgmirror, imgmirror, bundle, reg.host, run_dir, name,
                                                     args.timeout)
                        else:
                            push = functools.partial(push_skopeo, images, layout, reg.host, run_dir, name,
                                                     args.timeout)
                        r = measure(reg, push)
                        row[tool][case] = r
                        extra = ""
                        if tool == "imgmirror":
                            t = r["totals"]
                            extra = (f", {t['blobs_uploaded']} uploaded ({mib(t['uploaded_bytes'])}), "
                                     f"{t['blobs_mounted']} mounted")
                        log(f"run {i}: {tool:9} {case:4} {r['wall']:6.2f} s, peak RSS {r['maxrss_kib'] / 1024:.1f} "
                            f"MiB, CPU {r['cpu']:.2f} s, registry CPU {r['registry_cpu']:.2f} s{extra}")
                        if case == "cold" and i == 1:
                            verify_target(images, source.host, reg.host, src_digests)
                            log(f"run {i}: {tool}: all {len(images)} digests in the target match the source")
                    if tool == "imgmirror":
                        cold, noop = row[tool]["cold"]["totals"], row[tool]["noop"]["totals"]
                        for key in ("blobs_uploaded", "uploaded_bytes", "blobs_mounted"):
                            check(res["notes"], f"run {i}: imgmirror cold push reported {key}", cold[key], exp[key])
                            check(res["notes"], f"run {i}: imgmirror no-op push reported {key}", noop[key], 0)
                        writes = {k: c for k, c in row[tool]["noop"]["requests"].items()
                                  if not k.startswith(("HEAD", "GET"))}
                        check(res["notes"], f"run {i}: imgmirror no-op push made requests other than HEAD/GET",
                              {k: dict(c) for k, c in writes.items()}, {})
                finally:
                    reg.stop()
                    registries.remove(reg)
                    shutil.rmtree(target_dir, ignore_errors=True)
            res["runs"].append(row)
        res["startup"] = statistics.median(
            run_measured([imgmirror, "--version"], run_dir / "version.log", args.timeout).wall for _ in range(3))
        if args.profile:
            profile(args.profile, imgmirror, bundle, run_dir, args.timeout)
    finally:
        for reg in registries:
            reg.stop()
        shutil.rmtree(run_dir, ignore_errors=True)
    res["total_seconds"] = time.perf_counter() - started
    section = render(bs.machine_info(imgmirror), desc, res, args)
    print(section)
    if args.out:
        write_out(args.out, section)
        log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
