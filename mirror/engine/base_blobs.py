"""A differential bundle's blobs that no bundle given holds (its base carried them): found in
the registry before anything is pushed, and mounted into the repositories that lack them."""

from __future__ import annotations

import asyncio

from ..core.content import Sink
from ..core.diff import Holder
from ..core.reference import parse_reference
from ..errors import MirrorError


class BaseBlobs:
    """Where each lacking blob is in the registry, and its mount."""

    def __init__(self, up: Sink, dest, holders: dict[str, tuple[Holder, ...]], dry_run: bool):
        self.up, self.dest, self.holders, self.dry_run = up, dest, holders, dry_run
        self.mounts: dict[tuple[str, str], str] = {}     # (repo, digest) -> repo to mount it from

    def wanted(self, unit) -> list:
        """The blobs of an image (a copy.Unit) to mount from elsewhere in the registry."""
        return [d for d in unit.lacking.values() if (unit.repo, d.digest) in self.mounts]

    async def locate(self, units: list) -> None:
        """Find every blob no bundle holds (a differential bundle's, from its base) in the registry:
        in the repository that needs it, else in the repositories the base carried it in (mapped
        through --to and target:), else in another repository of this push that needs it too.
        One found elsewhere is mounted with the image's blobs. Refuse before any manifest is
        pushed if one is nowhere, naming it, the images that need it and where it was looked for."""
        wanted = {(u.repo, d): u for u in units for d in u.lacking}
        if not wanted:
            return
        heads: dict[tuple[str, str], asyncio.Future] = {}
        needing: dict[str, list[str]] = {}
        for repo, d in wanted:
            needing.setdefault(d, []).append(repo)

        def head(repo: str, d: str) -> asyncio.Future:
            if (repo, d) not in heads:
                heads[repo, d] = asyncio.ensure_future(self.up.blob_exists(repo, d))
            return heads[repo, d]

        async def locate(repo: str, d: str) -> tuple[str | None, list[str]]:
            candidates = [repo] + [self.dest.repository(parse_reference(name).repository, target)
                                   for name, target in self.holders.get(d, ())] + needing[d]
            looked: list[str] = []
            for cand in dict.fromkeys(candidates):
                looked.append(cand)
                if await head(cand, d):
                    return cand, looked
            return None, looked

        try:
            found = await asyncio.gather(*(locate(repo, d) for repo, d in wanted))
        finally:
            for f in heads.values():
                f.cancel()
        missing: dict[str, tuple[set, set]] = {}
        for (repo, d), (src, looked) in zip(wanted, found, strict=True):
            if src is None:
                refs, places = missing.setdefault(d, (set(), set()))
                refs.add(wanted[repo, d].name)
                places.update(f"{self.dest.host}/{r}" for r in looked)
            elif src != repo:
                self.mounts[repo, d] = src
        if missing:
            lines = "; ".join(f"{d} (needed by {', '.join(sorted(refs))}; looked in {', '.join(sorted(places))})"
                              for d, (refs, places) in sorted(missing.items()))
            n = len(missing)
            raise MirrorError(f"{n} blob{'s are' if n > 1 else ' is'} in no bundle given and not in "
                              f"{self.dest.host}: {lines}. This is a differential bundle: push its base "
                              "first, or give the base bundles on the same command line "
                              "(push BASE DIFF1 DIFF2 …); nothing was pushed")


    async def mount(self, repo: str, d: str) -> str:
        """Mount a blob no bundle given holds into `repo`, from where `locate` found it."""
        from_repo = self.mounts[repo, d]
        if self.dry_run:
            return "mounted"
        location = await self.up.mount(repo, d, from_repo)
        if location is None:
            return "mounted"
        # 202: the registry opened an upload session instead of mounting; nothing to send into it
        await self.up.cancel(location, repo)
        raise MirrorError(f"{self.dest.host}/{repo}: the registry did not mount {d} from {from_repo} (it "
                          "answered 202 instead of 201) and no bundle given holds it; give the base bundles "
                          "on the same command line (push BASE DIFF …) so it can be uploaded")
