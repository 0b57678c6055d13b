"""What a run reports, typed: the totals of a sync and of a push, and the bundle a sync wrote.
`to_json()` gives the JSON of `--report` (fields left unset are left out, as they always were)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


def _json(obj) -> dict:
    return {k: v for k, v in asdict(obj).items() if v is not None}


@dataclass
class SyncTotals:
    """A sync in numbers."""

    images: int
    ok: int
    failed: int
    blobs: int                     # unique blobs of the images mirrored
    bytes: int                     # their bytes
    downloaded_bytes: int
    seconds: float
    failed_pushes: int | None = None     # sync --to: images the push failed
    bundle_error: str | None = None      # why no bundle was written (a full disk, say)

    def to_json(self) -> dict:
        return _json(self)


@dataclass
class PushTotals:
    """A push in numbers."""

    images: int
    ok: int
    failed: int
    uploaded_bytes: int
    blobs_uploaded: int
    blobs_mounted: int
    seconds: float

    def to_json(self) -> dict:
        return _json(self)


@dataclass
class BundleSummary:
    """The bundle a sync wrote, and what a later `--since` needs from it."""

    path: str
    format: str                    # "tar" or "directory"
    images: int
    blobs: int
    index_sha256: str              # the sha256 of its index.json: the base a differential names
    carried: list[str]             # every digest it holds or expects from its own base
    carried_by: dict[str, list[dict]] = field(default_factory=dict)   # where each blob was carried
    size: int | None = None        # tar: its size and sha256
    sha256: str | None = None
    parts: list[dict] | None = None      # --split: [{path, size, sha256}] of every part, in order
    sha256sums: str | None = None

    def to_json(self) -> dict:
        return _json(self)
