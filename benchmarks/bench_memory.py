"""Peak memory with one 1 GiB layer: imgmirror sync, verify and push, each under GNU time.

    .venv/bin/python benchmarks/bench_memory.py [--gib 1]

Builds one image whose single (uncompressed) layer is GIB GiB of random bytes, pushes it into a
throwaway docker-registry, then runs `imgmirror sync` into a bundle, `imgmirror verify` on it and
`imgmirror push` into a second registry, printing each one's wall time and peak RSS. Everything
lives under benchmarks/work/ and is deleted at the end. Needs about 3x GIB of free disk.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from imagegen import OCI_LAYER, Layer, _tar, make_image, push, sha256_digest  # noqa: E402
from registries import start_registry  # noqa: E402

PIECE = 256 << 20       # random.randbytes cannot make more at once; os.urandom is as fast


def measured(*cmd: str) -> str:
    out = subprocess.run(["/usr/bin/time", "-f", "%e s wall, peak RSS %M KiB", *cmd],
                         capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stdout}\n{out.stderr}")
    return out.stderr.strip().splitlines()[-1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gib", type=float, default=1.0, help="size of the one layer in GiB")
    args = ap.parse_args()
    imgmirror = str(Path(sys.executable).parent / "imgmirror")
    (ROOT / "benchmarks" / "work").mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=ROOT / "benchmarks" / "work", prefix="memory-"))
    regs = []
    try:
        regs.append(start_registry(work / "source"))
        started = time.perf_counter()
        total = int(args.gib * (1 << 30))
        files = {f"data/part{i}.bin": os.urandom(min(PIECE, total - i * PIECE))
                 for i in range((total + PIECE - 1) // PIECE)}
        tar = _tar(files)
        del files
        image = make_image([Layer(OCI_LAYER, tar, diff_id=sha256_digest(tar))])
        del tar
        push(image, regs[0].host, "big/layer", "1.0")
        print(f"one {args.gib:g} GiB layer built and pushed in {time.perf_counter() - started:.1f} s")
        del image
        (work / "m.yaml").write_text(f"version: 1\nimages:\n  - {regs[0].host}/big/layer:1.0\n")
        print("imgmirror sync:  ", measured(imgmirror, "sync", str(work / "m.yaml"), "-o", str(work / "b.tar"),
                                           "--cache", str(work / "cache"), "-q"))
        print("imgmirror verify:", measured(imgmirror, "verify", str(work / "b.tar")))
        regs.append(start_registry(work / "target"))
        print("imgmirror push:  ", measured(imgmirror, "push", str(work / "b.tar"), "--to", regs[1].host, "-q"))
    finally:
        for r in regs:
            r.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
