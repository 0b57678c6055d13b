"""imgmirror prune: what is under `--to REGISTRY[/PREFIX]` that mirror.yaml no longer selects,
listed, and deleted with --yes.

What mirror.yaml selects is resolved as a dry run does (engine.images.Resolver: tags listed and
filtered, digests, referrers, trust) and placed under the prefix as push places it
(push.Destination: the source path or `target:`). Then, for every repository under the prefix
(`GET /v2/_catalog`, every page):

- its tags (`tags/list`), each read once (GET by tag: the bytes give the digest and, for an index,
  its children);
- **kept**: the digests of the tags mirror.yaml selects, every digest it selects (an image by
  digest, a referrer found through the API, the digest a selected tag resolves to), and
  everything those reach through index children, nested indexes too; and referrer tags
  (`sha256-<hex>`, `sha256-<hex>.sig`, `.att`, `.sbom`) whose subject is kept, or is the source
  digest of a selected image whose index was filtered;
- **pruned**: every other tag, and the digest-only manifests only those reach: the children of a
  pruned index (nested ones too) and the referrers the registry's referrers API names for a
  pruned digest; each unless it is kept.

A registry cannot list its untagged manifests, so a digest-only manifest nothing pruned leads to
(an image once selected by digest and later dropped from mirror.yaml) is not found.

distribution deletes by digest, and every tag on a digest goes with it: a pruned tag whose digest
is kept (a kept tag shares it, or a kept index references it) is `kept-because-referenced`, and so
is a digest-only manifest a kept index still needs. Deletes go children and referrers first
(referrer tags before the images they refer to), the tagged manifests last, so an interrupted
prune leaves nothing a re-run cannot find again; within a repository they stop at the first
failure. The first DELETE is sent alone: a registry that does not allow deletes (405,
UNSUPPORTED) is told about once, with what to configure.

A repository that an entry of mirror.yaml maps to but that did not resolve (its source failed,
a trust policy refused it, or a tag filter selected nothing) is not pruned at all: `failed`.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from ..core.oci import MANIFEST_TYPES, sha256_digest
from ..core.spec import MirrorSpec, RegistryConfig
from ..errors import DigestMismatchError, MirrorError, NotFoundError
from ..progress import Progress
from ..registry.admin import DeletesDisabledError, catalog, delete_manifest
from ..registry.client import Registry
from .context import RunContext
from .images import Item, Resolver
from .push import Destination
from .referrers import referrers_api

if TYPE_CHECKING:
    from ..cache import Store

LISTED, DELETED, KEPT, FAILED = "listed", "deleted", "kept-because-referenced", "failed"
# cosign's tags and the OCI 1.1 referrers fallback tag: they name the digest they refer to
REFERRER_TAG = re.compile(r"^sha256-([a-f0-9]{64})(\.sig|\.att|\.sbom)?$")
_KIND = {".sig": "signature", ".att": "attestation", ".sbom": "SBOM", None: "referrers index"}


@dataclass
class PruneEntry:
    """One line of the report: a tag, or a manifest by digest (tag None), and what became of it."""

    repository: str
    tag: str | None
    digest: str | None
    action: str                  # listed | deleted | kept-because-referenced | failed
    error: str | None = None
    reason: str | None = None    # why it is pruned, or why it is kept


@dataclass
class PruneTotals:
    repositories: int            # under the prefix
    tags: int                    # unselected tags listed (or deleted)
    manifests: int               # digest-only manifests listed (or deleted)
    deleted: int                 # entries deleted
    kept: int                    # kept because referenced
    failed: int
    deletes: int                 # DELETE requests sent
    seconds: float


@dataclass
class PruneResult:
    destination: str
    deleting: bool               # --yes
    entries: list[PruneEntry]
    totals: PruneTotals
    deletes_disabled: str | None = None     # the registry refuses deletes: what to configure

    def to_json(self) -> dict:
        return {"destination": self.destination, "deleting": self.deleting,
                "entries": [asdict(e) for e in self.entries], "totals": asdict(self.totals),
                "deletes_disabled": self.deletes_disabled}


@dataclass
class PruneOptions:
    yes: bool = False            # delete; without it, list only
    jobs: int | None = None      # parallel requests (default: concurrency:)
    insecure: bool = False       # the target: HTTPS without verification, else plain HTTP


@dataclass
class Wanted:
    """What mirror.yaml selects in one repository of the target."""

    tags: set[str] = field(default_factory=set)
    digests: set[str] = field(default_factory=set)     # every selected image's digest, as pushed
    subjects: set[str] = field(default_factory=set)    # those and the source digests of filtered indexes
    blocked: list[str] = field(default_factory=list)   # why it must not be pruned


def selection(spec: MirrorSpec, items: list[Item], dest: Destination) -> dict[str, Wanted]:
    """The resolved images placed under `dest`, per target repository. Every entry of mirror.yaml
    maps to its repository; an image that did not resolve blocks its repository, and so does an
    entry that selected nothing."""
    wanted: dict[str, Wanted] = defaultdict(Wanted)
    counted: dict[int, int] = {id(s): 0 for s in spec.images}
    for s in spec.images:
        wanted[dest.repository(s.repository.repository, s.target)]     # mapped, even if empty
    for it in items:
        if it.spec is not None:
            counted[id(it.spec)] = counted.get(id(it.spec), 0) + 1
        if it.res is None:
            specs = [it.spec] if it.spec is not None else [s for s in spec.images
                                                             if s.repository.name == it.report.source]
            for s in specs:
                wanted[dest.repository(s.repository.repository, s.target)].blocked.append(
                    f"{it.report.reference} did not resolve ({it.report.error})")
            continue
        res = it.res
        w = wanted[dest.repository(res.ref.repository, res.target)]
        if res.ref.tag:
            w.tags.add(res.ref.tag)
        w.digests.add(res.top.digest)
        w.subjects |= {res.top.digest, res.source_digest} - {None}
    for s in spec.images:
        if not counted[id(s)]:
            wanted[dest.repository(s.repository.repository, s.target)].blocked.append(
                f"{s.where} selects no image of {s.repository.name}")
    return dict(wanted)


class RepoPrune:
    """One repository under the prefix: its tags read, what is kept and what is pruned worked
    out, and (with --yes) the pruned manifests deleted."""

    def __init__(self, reg: Registry, repo: str, wanted: Wanted | None):
        self.reg, self.repo, self.wanted = reg, repo, wanted
        self.entries: list[PruneEntry] = []
        self.children: dict[str, tuple[str, ...]] = {}   # digest -> child manifests (() for an image)
        self.kinds: dict[str, str] = {}                  # digest -> media type its parent gave
        self.delete_order: list[str] = []                # pruned digests: children and referrers first
        self.listed: dict[str, list[PruneEntry]] = defaultdict(list)   # digest -> its listed entries
        self.deletes = 0

    def _entry(self, tag, digest, action, reason=None, error=None) -> PruneEntry:
        e = PruneEntry(self.repo, tag, digest, action, error=error, reason=reason)
        self.entries.append(e)
        if action == LISTED:
            self.listed[digest].append(e)
        return e

    async def plan(self) -> None:
        """Fill `entries` (listed, kept, failed) and `delete_order`; a MirrorError that stops the
        whole repository is one failed entry, and nothing in it is deleted."""
        try:
            await self._plan()
        except MirrorError as exc:
            self.entries, self.delete_order, self.listed = [], [], defaultdict(list)
            self._entry(None, None, FAILED, error=f"{exc}; nothing in this repository is pruned")

    async def _plan(self) -> None:
        w = self.wanted
        if w is not None and w.blocked:
            self._entry(None, None, FAILED, error="; ".join(w.blocked) + ": nothing in this repository is "
                        "pruned until every entry of mirror.yaml that maps here resolves")
            return
        try:
            tags = sorted(await self.reg.list_tags(self.repo))
        except NotFoundError:
            tags = []
        got = await asyncio.gather(*(self.load(t) for t in tags), return_exceptions=True)
        tag_digest: dict[str, str] = {}
        unreadable: dict[str, str] = {}
        for t, r in zip(tags, got, strict=True):
            if isinstance(r, MirrorError):
                unreadable[t] = str(r)
            elif isinstance(r, BaseException):
                raise r
            else:
                tag_digest[t] = r
        selected = w.tags if w is not None else set()
        for t in unreadable:
            if t in selected:    # its digest could not be protected: leave the repository alone
                raise MirrorError(f"{self.repo}:{t}, which mirror.yaml selects, could not be read "
                                  f"({unreadable[t]})")
        # kept: digest -> why
        roots: dict[str, str] = {}
        for t in tags:
            if t in selected and t in tag_digest:
                roots.setdefault(tag_digest[t], f"tagged {t}, which mirror.yaml selects")
        for d in sorted(w.digests if w is not None else ()):
            roots.setdefault(d, "mirror.yaml selects this digest")
        protected: dict[str, str] = {}
        subjects = w.subjects if w is not None else set()
        while True:
            kept = await self.reach(roots)
            more = False
            for t in tags:
                m = REFERRER_TAG.match(t)
                if not m or t in selected or t in protected or t not in tag_digest:
                    continue
                subject = f"sha256:{m[1]}"
                if subject in kept or subject in subjects:
                    protected[t] = f"{_KIND[m[2]]} of kept {subject}"
                    if tag_digest[t] not in roots:
                        roots[tag_digest[t]] = f"tagged {t}, the {_KIND[m[2]]} of kept {subject}"
                        more = True
            if not more:
                break
        why = "not selected by mirror.yaml" if w is not None else "its repository is not in mirror.yaml"
        pruned: dict[str, str] = {}
        # referrer tags last: deleted in reverse, they go before the images they refer to
        for t in sorted(tags, key=lambda t: (bool(REFERRER_TAG.match(t)), t)):
            if t in selected:
                continue
            if t in unreadable:
                self._entry(t, None, FAILED, error=f"{unreadable[t]}; not pruned")
            elif t in protected:
                self._entry(t, tag_digest[t], KEPT, reason=protected[t])
            elif tag_digest[t] in kept:
                self._entry(t, tag_digest[t], KEPT, reason=f"its digest is kept: {kept[tag_digest[t]]} "
                            "(a delete by digest removes every tag on it)")
            else:
                self._entry(t, tag_digest[t], LISTED, reason=why)
                pruned.setdefault(tag_digest[t], why)
        await self.reach_pruned(pruned, kept)

    async def load(self, ref: str) -> str:
        """The digest of `ref` (a tag, or a digest checked), its children recorded if an index."""
        raw, ctype = await self.reg.get_manifest(self.repo, ref)
        digest = sha256_digest(raw)
        if ref.startswith("sha256:") and digest != ref:
            raise DigestMismatchError(f"{self.reg.host}/{self.repo}@{ref}: the registry sent bytes with "
                                      f"digest {digest}")
        self.children[digest] = self._parse_children(raw)
        return digest

    def _parse_children(self, raw: bytes) -> tuple[str, ...]:
        """The child manifests an index lists (their media types noted); () for anything else."""
        try:
            obj = json.loads(raw)
        except (ValueError, UnicodeDecodeError, RecursionError):
            return ()
        kids = obj.get("manifests") if isinstance(obj, dict) else None
        out = []
        for d in kids if isinstance(kids, list) else ():
            digest = d.get("digest") if isinstance(d, dict) else None
            if isinstance(digest, str) and re.fullmatch(r"sha256:[a-f0-9]{64}", digest):
                self.kinds.setdefault(digest, str(d.get("mediaType") or ""))
                out.append(digest)
        return tuple(dict.fromkeys(out))

    async def _known(self, digests) -> None:
        """Children known for each digest: an image manifest (by its parent's word) has none; an
        index, or a manifest of unknown type, is read (one not there has none)."""
        todo = [d for d in dict.fromkeys(digests) if d not in self.children]
        for d in todo:
            if self.kinds.get(d) in MANIFEST_TYPES:
                self.children[d] = ()
        todo = [d for d in todo if d not in self.children]

        async def one(d: str) -> None:
            try:
                await self.load(d)
            except NotFoundError:
                self.children[d] = ()
        await asyncio.gather(*(one(d) for d in todo))

    async def reach(self, roots: dict[str, str]) -> dict[str, str]:
        """Everything `roots` reach through index children, each with why it is kept."""
        kept = dict(roots)
        level = list(roots)
        while level:
            await self._known(level)
            nxt = []
            for d in level:
                for c in self.children.get(d, ()):
                    if c not in kept:
                        kept[c] = f"in kept index {d}"
                        nxt.append(c)
            level = nxt
        return kept

    async def reach_pruned(self, pruned: dict[str, str], kept: dict[str, str]) -> None:
        """The digest-only manifests only pruned ones lead to: children of pruned indexes and the
        referrers the registry's API names for a pruned digest; a kept one is reported as such."""
        order, level, told = list(pruned), list(pruned), set()
        while level:
            await self._known(level)
            found = await asyncio.gather(*(self._referrers(d) for d in level))
            nxt = []
            for d, refs in zip(level, found, strict=True):
                leads = [(c, f"in pruned index {d}") for c in self.children.get(d, ())]
                leads += [(r, f"refers to pruned {d}") for r in refs]
                for c, why in leads:
                    if c in pruned:
                        continue
                    if c in kept:
                        if c not in told:
                            told.add(c)
                            self._entry(None, c, KEPT, reason=f"{why}, but kept: {kept[c]}")
                        continue
                    pruned[c] = why
                    order.append(c)
                    nxt.append(c)
                    self._entry(None, c, LISTED, reason=why)
            level = nxt
        self.delete_order = list(reversed(order))

    async def _referrers(self, digest: str) -> list[str]:
        try:
            found = await referrers_api(self.reg, self.repo, digest)
        except MirrorError as exc:
            self._entry(None, digest, FAILED, error=f"its referrers could not be listed ({exc}); they are "
                        "not pruned")
            return []
        return [d.digest for d in found or ()]

    async def delete(self, digest: str) -> None:
        """DELETE one pruned digest; its listed entries become deleted (or failed, raised on)."""
        self.deletes += 1
        try:
            there = await delete_manifest(self.reg.t, self.repo, digest)
        except MirrorError as exc:
            for e in self.listed.pop(digest, []):
                e.action, e.error = FAILED, str(exc)
            raise
        for e in self.listed.pop(digest, []):
            e.action = DELETED
            if not there:
                e.reason = f"{e.reason}; it was already gone"

    async def delete_all(self, start: int = 0) -> None:
        """The pruned digests from `start` on, in order; the first failure stops this repository."""
        for i, d in enumerate(self.delete_order[start:], start):
            try:
                await self.delete(d)
            except DeletesDisabledError:
                self.abandon(i + 1, "not deleted: the registry does not allow deletes (see above)")
                raise
            except MirrorError:
                self.abandon(i + 1, "not deleted: an earlier delete in this repository failed")
                return

    def abandon(self, start: int, error: str) -> None:
        for d in self.delete_order[start:]:
            for e in self.listed.pop(d, []):
                e.action, e.error = FAILED, error


class _Silent(Progress):
    """progress=None: a library call writes nothing to the terminal."""

    def line(self, text: str) -> None:
        pass


class _Quiet(Progress):
    """The resolve phase's lines: failures and warnings, not every image resolved (unless -v)."""

    def __init__(self, inner: Progress):
        super().__init__(verbosity=inner.verbosity)
        self.inner = inner

    def line(self, text: str) -> None:
        self.inner.line(text)

    def warn(self, text: str) -> None:
        self.inner.warn(text)

    def image_done(self, ref: str, ok: bool, detail: str) -> None:
        if not ok or self.inner.verbosity >= 1:
            self.inner.image_done(ref, ok, detail)


class Pruner:
    """Every repository under the prefix planned, then (with --yes) pruned."""

    def __init__(self, reg: Registry, dest: Destination, wanted: dict[str, Wanted], opts: PruneOptions,
                 progress: Progress):
        self.reg, self.dest, self.wanted, self.opts, self.progress = reg, dest, wanted, opts, progress
        self.disabled: str | None = None

    def under(self, repo: str) -> bool:
        return not self.dest.prefix or repo.startswith(self.dest.prefix + "/")

    async def run(self) -> list[RepoPrune]:
        repos = sorted(r for r in await catalog(self.reg.t) if self.under(r))
        plans = [RepoPrune(self.reg, r, self.wanted.get(r)) for r in repos]
        await asyncio.gather(*(p.plan() for p in plans))
        if self.opts.yes:
            await self.delete(plans)
        return plans

    async def delete(self, plans: list[RepoPrune]) -> None:
        todo = [p for p in plans if p.delete_order]
        if not todo:
            return
        # The first DELETE alone: a registry that does not allow deletes says so once.
        first = todo[0]
        try:
            await first.delete(first.delete_order[0])
        except DeletesDisabledError as exc:
            self.disabled = str(exc)
            first.abandon(1, "not deleted: the registry does not allow deletes (see above)")
            for p in todo[1:]:
                p.abandon(0, "not deleted: the registry does not allow deletes (see above)")
            return
        except MirrorError:
            first.abandon(1, "not deleted: an earlier delete in this repository failed")
            first.delete_order = []
        rest = [(p, 1 if p is first else 0) for p in todo if p.delete_order]
        done = await asyncio.gather(*(p.delete_all(start) for p, start in rest), return_exceptions=True)
        for r in done:
            if isinstance(r, DeletesDisabledError):
                self.disabled = str(r)
            elif isinstance(r, BaseException):
                raise r


async def prune_target(spec: MirrorSpec, store: Store, dest: Destination, opts: PruneOptions,
                       progress: Progress) -> PruneResult:
    """Resolve `spec` (as a dry run does), then list, and with opts.yes delete, what is under
    `dest` that it does not select."""
    from ..registry.transport import new_session, transport_for
    started = time.monotonic()
    jobs = opts.jobs or spec.concurrency
    with RunContext() as ctx:
        async with new_session() as session:
            items = await Resolver(spec, store, _Quiet(progress), ctx, jobs).resolve_all(session)
            wanted = selection(spec, items, dest)
            cfg = spec.registries.get(dest.host, RegistryConfig())
            reg = Registry(transport_for(session, dest.host, cfg, jobs, opts.insecure), hashers=ctx.hashers)
            pruner = Pruner(reg, dest, wanted, opts, progress)
            plans = await pruner.run()
    entries = [e for p in plans for e in p.entries]
    pruned = [e for e in entries if e.action in (LISTED, DELETED) or (e.action == FAILED and e.reason)]
    totals = PruneTotals(repositories=len(plans),
                         tags=sum(1 for e in pruned if e.tag is not None),
                         manifests=sum(1 for e in pruned if e.tag is None),
                         deleted=sum(1 for e in entries if e.action == DELETED),
                         kept=sum(1 for e in entries if e.action == KEPT),
                         failed=sum(1 for e in entries if e.action == FAILED),
                         deletes=sum(p.deletes for p in plans),
                         seconds=round(time.monotonic() - started, 3))
    where = dest.host + (f"/{dest.prefix}" if dest.prefix else "")
    return PruneResult(where, opts.yes, entries, totals, pruner.disabled)


def prune(manifest, to: str, *, yes: bool = False, cache=None, jobs: int | None = None,
          insecure: bool = False, wait_lock: float = 0.0, progress: Progress | None = None) -> PruneResult:
    """`imgmirror prune`: what is under `to` (`host[:port][/prefix]`) that `manifest` (a
    mirror.yaml path or a MirrorSpec) no longer selects, listed; deleted only when `yes`.

    The manifest is resolved as a dry run resolves it (its sources must be reachable), through
    the cache (held locked, like sync). Failures are in the result's entries, not raised; an
    invalid manifest or argument raises before any request."""
    import os

    from ..cache import Store, default_cache_dir
    from ..errors import UsageError
    from ..specfile import beside, load_spec

    if jobs is not None and jobs < 1:
        raise UsageError("--jobs must be at least 1")
    dest = Destination.parse(to)
    spec = manifest if isinstance(manifest, MirrorSpec) else load_spec(manifest)
    cache = os.fspath(cache) if cache else (beside(spec.path, spec.cache) if spec.cache else None)
    store = Store(cache or default_cache_dir())
    opts = PruneOptions(yes=yes, jobs=jobs, insecure=insecure)
    with store.lock(wait=wait_lock):
        return asyncio.run(prune_target(spec, store, dest, opts, progress or _Silent()))


__all__ = ["DELETED", "FAILED", "KEPT", "LISTED", "PruneEntry", "PruneOptions", "PruneResult", "PruneTotals",
           "Wanted", "prune", "prune_target", "selection"]
