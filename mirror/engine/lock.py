"""Pinned runs: `sync --lock FILE` writes what a run resolved, `sync --locked FILE` mirrors
exactly that.

The lock is YAML meant for review and version control: one entry per image, sorted by
reference, with the digest mirrored and, for a platform-filtered index, the registry's digest it
was cut from; signatures and other referrers with the image they point at. A locked run resolves
no tag: each image is fetched by the digest the lock names (a filtered index is cut again from
the locked source digest, and must come out as the locked digest), a tag that moved since is
reported and not followed, and a tag filter selects what the lock recorded for that repository
(a locked run lists no tags). An image mirror.yaml names that the lock lacks is an error.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass

import yaml

from ..errors import UsageError

HEADER = ("# imgmirror lock: what `imgmirror sync --lock` resolved; `sync --locked` mirrors exactly\n"
          "# these digests. Review changes to it like code.\n")


@dataclass(frozen=True)
class Locked:
    reference: str                  # name:tag, or name@digest for an image by digest
    digest: str                     # what is mirrored
    source_digest: str | None = None   # a filtered index: the registry's digest it was cut from
    referrer_of: str | None = None     # a signature, attestation, SBOM: the image it points at

    @property
    def fetch_digest(self) -> str:
        return self.source_digest or self.digest

    def to_yaml(self) -> dict:
        out = {"reference": self.reference, "digest": self.digest}
        if self.source_digest:
            out["source_digest"] = self.source_digest
        if self.referrer_of:
            out["referrer_of"] = self.referrer_of
        return out


def write_lock(path: str | os.PathLike, entries: list[Locked]) -> None:
    """The lock, sorted, written atomically (a temporary file renamed over it)."""
    doc = {"version": 1, "images": [e.to_yaml() for e in sorted(set(entries), key=lambda e: (e.reference, e.digest))]}
    text = HEADER + yaml.safe_dump(doc, sort_keys=False, default_flow_style=False, width=200)
    path = os.fspath(path)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=".lock.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def read_lock(path: str | os.PathLike) -> dict[str, Locked]:
    """reference -> entry; UsageError naming the file and the entry when it is not a lock."""
    path = os.fspath(path)
    try:
        doc = yaml.safe_load(open(path, encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"--locked {path}: cannot read it ({exc.strerror or exc}); write one with --lock") from None
    except yaml.YAMLError as exc:
        raise UsageError(f"--locked {path}: not valid YAML ({exc})") from None
    if not isinstance(doc, dict) or doc.get("version") != 1 or not isinstance(doc.get("images"), list):
        raise UsageError(f"--locked {path}: not an imgmirror lock (version: 1 and images:); write one with --lock")
    out: dict[str, Locked] = {}
    for i, e in enumerate(doc["images"]):
        ok = isinstance(e, dict) and isinstance(e.get("reference"), str) and \
            str(e.get("digest", "")).startswith("sha256:")
        if not ok or set(e) - {"reference", "digest", "source_digest", "referrer_of"}:
            raise UsageError(f"--locked {path}: images[{i}] is not an entry (reference, digest, and optionally "
                             "source_digest, referrer_of)")
        out[e["reference"]] = Locked(e["reference"], e["digest"], e.get("source_digest"), e.get("referrer_of"))
    return out
