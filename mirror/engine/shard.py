"""sync --shard I/N: one of N runs that share a manifest, each taking whole repositories.

Every shard resolves the whole manifest and computes the same partition from what it resolved,
so N runs that never talk to each other split the work without overlap: whole repositories per
shard (two shards never write one repository: distribution does not like the same blob
uploaded into one repository twice at once), balanced by unique bytes, largest first onto the
lightest shard, ties broken by name (and the lightest shard by its number)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..errors import UsageError


@dataclass(frozen=True)
class Shard:
    index: int            # from 0
    count: int

    @property
    def label(self) -> str:
        """What `{shard}` in an output path becomes: 1of4 for index 0 of 4."""
        return f"{self.index + 1}of{self.count}"

    @classmethod
    def parse(cls, text: str | None, shards: int | None = None, env=os.environ) -> Shard | None:
        """--shard I/N, or --shards N with I from JOB_COMPLETION_INDEX (a Kubernetes Indexed Job)."""
        if text and shards:
            raise UsageError("give --shard I/N or --shards N, not both")
        if shards is not None:
            raw = env.get("JOB_COMPLETION_INDEX")
            if raw is None:
                raise UsageError("--shards N takes this shard's index from JOB_COMPLETION_INDEX (set by a "
                                 "Kubernetes Indexed Job), which is not set; give --shard I/N instead")
            text = f"{raw}/{shards}"
        if not text:
            return None
        i, sep, n = text.partition("/")
        try:
            index, count = int(i), int(n)
        except ValueError:
            index = count = -1
        if not sep or count < 1 or not 0 <= index < count:
            raise UsageError(f"shard {text!r}: write I/N with 0 <= I < N, e.g. --shard 0/4 (the first of four)")
        return cls(index, count)


def partition(weights: dict[str, int], count: int) -> list[list[str]]:
    """Repositories (name -> unique bytes) onto `count` shards: largest first onto the lightest."""
    shards: list[list[str]] = [[] for _ in range(count)]
    load = [0] * count
    for repo in sorted(weights, key=lambda r: (-weights[r], r)):
        lightest = min(range(count), key=lambda i: (load[i], i))
        shards[lightest].append(repo)
        load[lightest] += weights[repo]
    return shards


def weigh(items) -> dict[str, int]:
    """Each repository's unique bytes over its images (a failed image weighs nothing, but its
    repository still goes to one shard, which reports it)."""
    blobs: dict[str, dict[str, int]] = {}
    for it in items:
        sizes = blobs.setdefault(it.report.source, {})
        if it.res is not None:
            sizes.update(it.res.sizes())
    return {repo: sum(sizes.values()) for repo, sizes in blobs.items()}
