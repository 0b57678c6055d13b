"""`imgmirror cache info` and `cache prune`: what the cache holds, and removing what no kept
manifest needs and nobody used lately.

prune's rules, in order:
1. Nothing a kept manifest (`--keep`, repeatable) needs is removed: its images are resolved as
   `sync --dry-run` resolves them (tags listed and selected, indexes filtered, referrers and the
   signatures a trust policy looks for), and every digest they need is protected (manifests
   and original index bytes included). An image that does not resolve makes prune refuse,
   removing nothing: what it needs is unknown.
2. With `--unused-for AGE`, nothing used within AGE is removed.
3. What is left may go: all of it, or with `--max-size SIZE` the least recently used first,
   only until the cache holds at most SIZE.
It runs under the cache lock (never beside a sync), resolution included: resolving may add
manifests to the cache. Its own resolution is not a use of anything.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from dataclasses import dataclass, field

from ..cache import Entry, Store, default_cache_dir
from ..core.spec import MirrorSpec
from ..errors import MirrorError, StoreError, UsageError
from ..progress import Progress
from ..registry.transport import new_session
from ..specfile import beside, load_spec
from .context import RunContext
from .images import Item, Resolver

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_age(text: str) -> float:
    """`30d` -> seconds. Units: s, m (minutes), h, d, w; a unit is required."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", str(text))
    if not m:
        raise UsageError(f"--unused-for {text!r}: write a number and a unit, e.g. 30d, 12h, 2w "
                         "(s, m, h, d, w)")
    return float(m.group(1)) * _UNITS[m.group(2)]


def iso(t: float | None) -> str | None:
    """Unix seconds as `2026-01-02T10:00:00Z`."""
    return None if t is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def cache_root(cache: str | os.PathLike | None) -> str:
    """--cache, or the default cache directory ($XDG_CACHE_HOME/imgmirror)."""
    return os.path.abspath(os.path.expanduser(os.fspath(cache))) if cache else str(default_cache_dir())


# -- info ---------------------------------------------------------------------------------------


@dataclass
class CacheInfo:
    path: str
    blobs: int
    bytes: int
    oldest_use: float | None       # unix seconds; None for an empty cache
    newest_use: float | None
    recorded: int                  # blobs whose last use is in the use record (the others: mtime)
    in_use: str | None             # the lock's holder ("pid N on HOST since T"), if a run holds it
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"cache": self.path, "blobs": self.blobs, "bytes": self.bytes,
                "oldest_use": iso(self.oldest_use), "newest_use": iso(self.newest_use),
                "recorded": self.recorded, "in_use": self.in_use}


def cache_info(cache: str | os.PathLike | None = None) -> CacheInfo:
    """What the cache holds. Read-only, without the lock: it may run beside a sync (which then
    shows as `in_use`); it writes nothing, and reads no blob."""
    store = Store(cache_root(cache), create=False, record_uses=False)
    entries, warnings = store.entries()
    try:
        holder = (store.root / "lock").read_text().strip() or None
    except OSError:
        holder = None
    uses = [e.last_use for e in entries]
    return CacheInfo(str(store.root), len(entries), sum(e.size for e in entries),
                     min(uses, default=None), max(uses, default=None),
                     sum(1 for e in entries if e.recorded), holder, warnings)


# -- prune --------------------------------------------------------------------------------------


@dataclass
class PruneResult:
    path: str
    dry_run: bool
    removed: list[Entry]           # oldest use first (with --dry-run: what would be removed)
    freed: int
    blobs_left: int
    bytes_left: int
    needed: int                    # blobs kept because a kept manifest needs them
    recent: int                    # kept because used within --unused-for
    spared: int                    # could have gone, but the cache is under --max-size without them
    unused_for: float | None
    max_size: int | None
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"cache": self.path, "dry_run": self.dry_run,
                "removed": [{"digest": e.digest, "size": e.size, "last_use": iso(e.last_use)}
                            for e in self.removed],
                "freed": self.freed, "blobs_left": self.blobs_left, "bytes_left": self.bytes_left,
                "kept": {"needed": self.needed, "recent": self.recent, "spared": self.spared}}


class _Warnings(Progress):
    """The resolver's warnings (a tag filter matching nothing) go on; its per-image lines do not
    (a failure is reported by prune's own error, naming every image)."""

    def __init__(self, progress: Progress | None):
        super().__init__()
        self.to = progress

    def line(self, text: str) -> None:
        pass

    def warn(self, text: str) -> None:
        if self.to is not None:
            self.to.warn(text)

    def image_done(self, ref: str, ok: bool, detail: str) -> None:
        pass


async def needed_digests(specs: list[MirrorSpec], store: Store, progress: Progress) -> dict[str, int]:
    """Every digest the images of these manifests need, as sync would resolve them (manifests,
    original index bytes, configs, layers, referrers, the signatures a trust policy reads).
    MirrorError, naming each image, if any does not resolve: then nothing may be removed."""
    failed: list[str] = []
    needed: dict[str, int] = {}
    ctx = RunContext()
    try:
        async with new_session() as session:
            async def one(spec: MirrorSpec) -> list[Item]:
                r = Resolver(spec, store, progress, ctx, spec.concurrency)
                refs = await asyncio.gather(*(r.expand(session, s) for s in spec.images))
                items = list(await asyncio.gather(*(r.resolve_one(session, s, ref)
                                                    for s, rs in zip(spec.images, refs, strict=True)
                                                    for ref in rs)))
                # referrers: also those a trust policy looks for; no verdict is taken (a signature
                # that would not verify today is still kept)
                return items + await r.referrers(session, items)
            for spec, items in zip(specs, await asyncio.gather(*(one(s) for s in specs)), strict=True):
                for it in items:
                    if it.res is None:
                        failed.append(f"{spec.path}: {it.report.reference}: {it.report.error}")
                    else:
                        needed.update(it.res.sizes())
                        needed.update(it.res.originals)
    finally:
        ctx.close()
    if failed:
        raise MirrorError(f"{len(failed)} image(s) of the kept manifests did not resolve, so what they need "
                          "is unknown; nothing was removed (prune asks the registries as sync --dry-run "
                          "does: run it where they answer):\n  " + "\n  ".join(failed))
    return needed


def prune(cache: str | os.PathLike | None = None, *, keep=(), unused_for: float | None = None,
          max_size: int | None = None, dry_run: bool = False, wait_lock: float = 0.0,
          progress: Progress | None = None, now: float | None = None) -> PruneResult:
    """Remove the blobs no kept manifest needs and nobody used for `unused_for` seconds; with
    `max_size` (bytes), least recently used first and only until the cache holds at most that.
    `keep`: mirror.yaml paths (or MirrorSpecs). Under the cache lock (LockHeldError, exit 3,
    after `wait_lock` s). `dry_run`: the same choice, nothing removed."""
    if not keep and unused_for is None and max_size is None:
        raise UsageError("say what may go: --keep MANIFEST, --unused-for AGE and/or --max-size SIZE "
                         "(with none of them prune would empty the cache)")
    if unused_for is not None and unused_for < 0:
        raise UsageError("--unused-for must not be negative")
    if max_size is not None and max_size < 0:
        raise UsageError("--max-size must not be negative")
    specs = [k if isinstance(k, MirrorSpec) else load_spec(k) for k in keep]   # before the lock
    Store(cache_root(cache), create=False)        # StoreError: no cache there, nothing to prune
    store = Store(cache_root(cache), record_uses=False)
    warnings = []
    for spec in specs:
        if spec.cache and os.path.normpath(beside(spec.path, spec.cache)) != str(store.root):
            warnings.append(f"{spec.path} says cache: {beside(spec.path, spec.cache)}, but the cache "
                            f"pruned is {store.root} (give --cache to prune that one)")
    sink = _Warnings(progress)
    for w in warnings:
        sink.warn(w)
    with store.lock(wait=wait_lock):
        needed = asyncio.run(needed_digests(specs, store, sink)) if specs else {}
        entries, problems = store.entries()
        for w in problems:
            sink.warn(w)
        warnings += problems
        now = time.time() if now is None else now
        cutoff = None if unused_for is None else now - unused_for
        candidates, n_needed, n_recent = [], 0, 0
        for e in entries:
            if e.digest in needed:
                n_needed += 1
            elif cutoff is not None and e.last_use > cutoff:
                n_recent += 1
            else:
                candidates.append(e)
        candidates.sort(key=lambda e: (e.last_use, e.digest))
        total = sum(e.size for e in entries)
        removed: list[Entry] = []
        for e in candidates:
            if max_size is not None and total <= max_size:
                break
            removed.append(e)
            total -= e.size
        if not dry_run:
            for i, e in enumerate(removed):
                try:
                    store.evict(e.digest)
                except OSError as exc:
                    raise StoreError(f"cache {store.root}: cannot remove {e.digest} ({exc.strerror}); "
                                     f"{i} blobs were removed before it") from None
            store.compact_uses()        # the record forgets what is gone
    spared = len(candidates) - len(removed)
    return PruneResult(str(store.root), dry_run, removed, sum(e.size for e in removed),
                       len(entries) - len(removed), total, n_needed, n_recent, spared,
                       unused_for, max_size, warnings)
