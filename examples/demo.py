"""`make demo`: the main job end to end on this machine, with nothing from the internet.

Starts a throwaway CNCF distribution registry on a free loopback port, seeds it with small
generated images (pushed with skopeo), runs `imgmirror sync examples/demo.yaml`, then shows what
the bundle holds, has skopeo read one image back from it, verifies the bundle and pushes it into
a second throwaway registry (the inside of the air gap), where skopeo finds the same digest.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))   # the registry fixture and image generator of the tests

from imagegen import seed  # noqa: E402
from registries import missing_tools, start_registry  # noqa: E402


def main() -> int:
    sys.stdout.reconfigure(line_buffering=True)   # keep our lines in order with imgmirror's
    if missing_tools():
        print(f"demo: missing {', '.join(missing_tools())}; run `make demo` (it installs them with apt)")
        return 1
    demo = ROOT / ".demo"
    shutil.rmtree(demo / "bundles", ignore_errors=True)
    reg = start_registry(tempfile.mkdtemp(prefix="imgmirror-demo-registry-"))
    try:
        print(f"demo: registry (docker-registry) on {reg.host}; seeding it with generated images")
        seeded = seed(reg.host)
        print(f"demo: pushed {len(seeded)} tags with skopeo\n")
        env = dict(os.environ, DEMO_REGISTRY=reg.host)
        imgmirror = str(Path(sys.executable).parent / "imgmirror")
        cmd = [imgmirror, "sync", str(ROOT / "examples" / "demo.yaml"), "--report", str(demo / "report.json")]
        print("demo: $ DEMO_REGISTRY=" + reg.host + " imgmirror sync examples/demo.yaml")
        code = subprocess.call(cmd, env=env)
        if code != 0:
            print(f"demo: imgmirror exited {code}")
            return code
        print("\ndemo: a second run finds everything in the cache:")
        subprocess.check_call(cmd + ["-q"], env=env)
        report = json.loads((demo / "report.json").read_text())
        bundle = Path(report["bundle"]["path"])
        show(bundle, report)
        ref = f"{reg.host}/test/multi:1.0"
        raw = subprocess.check_output(["skopeo", "inspect", "--raw", f"oci-archive:{bundle}:{ref}"])
        children = json.loads(raw)["manifests"]
        platforms = sorted("/".join(filter(None, (c["platform"]["os"], c["platform"]["architecture"],
                                                  c["platform"].get("variant"))))
                           for c in children if "vnd.docker.reference.type" not in c.get("annotations", {}))
        print(f"\ndemo: skopeo reads {ref} from the bundle: an index of {', '.join(platforms)} "
              f"(+{len(children) - len(platforms)} attestations); linux/arm/v7 was filtered out")
        # The other side of the air gap: check the bundle, then replay it into an empty registry.
        inside = start_registry(tempfile.mkdtemp(prefix="imgmirror-demo-inside-"))
        try:
            print(f"\ndemo: $ imgmirror verify {bundle.relative_to(ROOT)}")
            subprocess.check_call([imgmirror, "verify", str(bundle)])
            print(f"\ndemo: $ imgmirror push {bundle.relative_to(ROOT)} --to {inside.host}/mirror")
            subprocess.check_call([imgmirror, "push", str(bundle), "--to", f"{inside.host}/mirror", "-q"])
            pushed = f"{inside.host}/mirror/test/multi:1.0"
            raw_inside = subprocess.check_output(["skopeo", "inspect", "--raw", "--tls-verify=false",
                                                  f"docker://{pushed}"])
            same = raw_inside == raw
            print(f"demo: skopeo reads {pushed}: {'the same bytes, the same digest' if same else 'DIFFERENT'}")
            if not same:
                return 1
        finally:
            inside.stop()
        # Before any registry exists inside, the bundle itself can be served read-only.
        served = subprocess.Popen([imgmirror, "serve", str(bundle), "--listen", "127.0.0.1:0"],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            banner = served.stdout.readline().strip()
            address = banner.rsplit("http://", 1)[-1]
            print(f"\ndemo: $ imgmirror serve {bundle.relative_to(ROOT)}   ({banner})")
            raw_served = subprocess.check_output(["skopeo", "inspect", "--raw", "--tls-verify=false",
                                                  f"docker://{address}/test/multi:1.0"])
            print(f"demo: skopeo reads {address}/test/multi:1.0 from serve: "
                  f"{'the same digest' if raw_served == raw else 'DIFFERENT'}")
        finally:
            served.terminate()
            served.wait(10)
        print(f"demo: or copy an image out digest for digest with `skopeo copy --preserve-digests "
              f"oci-archive:{bundle}:{ref} docker://REGISTRY/...`, or for podman `imgmirror extract "
              f"{bundle} {ref} -o one.tar` then `podman load -i one.tar` (`docker load -i` also reads "
              "the bundle, but keeps no registry digest)")
        return 0
    finally:
        reg.stop()


def show(bundle: Path, report: dict) -> None:
    """Print what the bundle holds: its images, and its size and checksum."""
    with tarfile.open(bundle) as tar:
        index = json.load(tar.extractfile("index.json"))
        blobs = [m for m in tar.getmembers() if m.name.startswith("blobs/sha256/") and m.isfile()]
    by_ref = {i["reference"]: i for i in report["images"]}
    b = report["bundle"]
    print(f"\ndemo: {bundle.relative_to(ROOT)}: {len(index['manifests'])} images, {len(blobs)} blobs, "
          f"{b['size']} bytes, {b['sha256']}")
    for m in index["manifests"]:
        ref = m["annotations"]["org.opencontainers.image.ref.name"]
        info = by_ref.get(ref, {})
        kind = "index" if "index" in m["mediaType"] or "list" in m["mediaType"] else "image"
        print(f"  {ref:<48} {kind:<5} {m['digest'][:19]}…  {', '.join(info.get('platforms', []))}")


if __name__ == "__main__":
    sys.exit(main())
