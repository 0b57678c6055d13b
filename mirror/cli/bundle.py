"""`imgmirror verify`, `list` and `extract`: their arguments and what they print."""

from __future__ import annotations

import json
import sys

from .. import api
from ..core.units import human
from ..errors import UsageError


def add_parsers(subparsers) -> None:
    """Add `verify` and `list` to the CLI's subparsers; each sets `handler`."""
    v = subparsers.add_parser("verify", help="check every blob and reference of a bundle; write nothing")
    v.add_argument("bundle", nargs="+", help="a bundle tar or layout directory, or - for a tar on stdin; "
                   "several (the bundles of a sharded run): each is checked")
    v.add_argument("--base", action="append", default=[], metavar="PREVIOUS",
                   help="for a differential bundle: an earlier bundle (or its report) that must "
                        "carry the blobs it expects; repeat for a chain")
    v.add_argument("--policy", metavar="MIRROR.yaml",
                   help="also check every image against this manifest's trust: policy, offline")
    v.add_argument("--key", metavar="COSIGN.pub", help="also check that every image is signed with this key")
    v.set_defaults(handler=cmd_verify)
    ls = subparsers.add_parser("list", help="the images in a bundle")
    ls.add_argument("bundle", nargs="+", help="a bundle tar or layout directory; several: listed together")
    ls.add_argument("--json", action="store_true", help="print JSON")
    ls.set_defaults(handler=cmd_list)


def cmd_verify(args) -> int:
    """`imgmirror verify BUNDLE…`: 0 sound, 1 problems (each listed), 2 not a bundle (raised)."""
    if "-" in args.bundle and len(args.bundle) > 1:
        raise UsageError("verify reads one tar from stdin (-), alone")
    return max(_verify_one(args, bundle) for bundle in args.bundle)


def _verify_one(args, bundle: str) -> int:
    if bundle == "-":
        res = api.verify(sys.stdin.buffer, bases=args.base, name="<stdin>", policy=args.policy, key=args.key)
    else:
        res = api.verify(bundle, bases=args.base, policy=args.policy, key=args.key)
    for w in res.warnings:
        print(f"warning: {w}")
    for digest, size in sorted(res.expected.items()):
        print(f"expected from the base: {digest} ({size} bytes)")
    for j in res.trust or ():
        if j.verdict.ok:
            print(f"trusted: {j.reference} {j.digest}: {j.verdict.reason}"
                  + (f" (signature {j.verdict.signature})" if j.verdict.signature else ""))
    for p in res.problems:
        print(f"problem: {p}")
    print(res.summary())
    return 0 if res.ok else 1


def cmd_list(args) -> int:
    """`imgmirror list BUNDLE [--json]`: 0 listed, 1 some image has a problem (listed anyway),
    2 not a bundle (raised)."""
    if "-" in args.bundle:
        raise UsageError("list reads a bundle in place: give a file or directory, not -")
    images = [i for bundle in args.bundle for i in api.list_images(bundle)]
    bad = sum(i.problem is not None for i in images)
    if args.json:
        print(json.dumps([i.to_json() for i in images], indent=2))
    else:
        for i in images:
            size = human(i.size) if i.size is not None else "unknown"
            print(f"{i.reference or '(no name)'}\n    {i.digest} {i.media_type}\n"
                  f"    platforms: {', '.join(i.platforms) or 'unknown'}\n    size: {size}")
            for note in i.notes:
                print(f"    note: {note}")
            if i.problem is not None:
                print(f"    problem: {i.problem}")
        tail = (f", {bad} with a problem; run `imgmirror verify {' '.join(args.bundle)}` for details" if bad else "")
        print(f"{len(images)} images{tail}")
    if bad and args.json:
        print(f"imgmirror: {bad} of {len(images)} images with a problem; run `imgmirror verify "
              f"{' '.join(args.bundle)}` for details", file=sys.stderr)
    return 1 if bad else 0


def add_extract_parser(subparsers) -> None:
    """Add `extract` to the CLI's subparsers; it sets `handler`."""
    e = subparsers.add_parser("extract", help="write one image of a bundle as a single-image OCI archive "
                              "(for `podman load`, keeping its digests)")
    e.add_argument("args", nargs="+", metavar="BUNDLE... REF",
                   help="the bundle (tar, first part, or layout directory; several: a base and its "
                        "differential bundles, in order), then the image's reference as `imgmirror "
                        "list` shows it (a short form such as alpine:3.19 is normalised)")
    e.add_argument("-o", "--output", required=True, metavar="OUT.tar", help="the archive to write")
    e.add_argument("--load-platform", metavar="OS/ARCH",
                   help="the platform of the manifest.json entry for docker load (default: the "
                        "bundle's entry for the image, else linux/amd64)")
    e.set_defaults(handler=cmd_extract)


def cmd_extract(args) -> int:
    """`imgmirror extract BUNDLE... REF -o OUT.tar`: 0 written; 2 usage, unknown ref or not a
    bundle; 1 a damaged bundle, a blob it lacks, or the archive cannot be written."""
    if len(args.args) < 2:
        raise UsageError("give the bundle and the image's reference: imgmirror extract BUNDLE REF -o OUT.tar")
    *bundles, ref = args.args
    res = api.extract(bundles, ref, args.output, load_platform=args.load_platform)
    for note in res.notes:
        print(f"imgmirror: note: {note}", file=sys.stderr)
    print(f"{res.path}: {res.reference}\n    {res.digest} {res.media_type}\n"
          f"    {res.blobs} blobs, {human(res.bytes)}; archive {human(res.size)}, {res.sha256}"
          f"\n    load it with `podman load -i {res.path}` or `skopeo copy --preserve-digests "
          f"oci-archive:{res.path} docker://…`" + ("" if res.docker_load else
                                                   "; manifest.json is empty (no docker load)"))
    return 0
