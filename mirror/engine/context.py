"""What one run owns: its worker threads, started with it and shut down when it ends, so two
runs in one process (two API calls, two threads) share nothing. The HTTP session is the run's
too (opened by sync and push around their work)."""

from __future__ import annotations

import concurrent.futures
from dataclasses import dataclass, field


def _pool(n: int, name: str) -> concurrent.futures.ThreadPoolExecutor:
    return concurrent.futures.ThreadPoolExecutor(max_workers=n, thread_name_prefix=f"imgmirror-{name}")


@dataclass
class RunContext:
    """The thread pools of one sync or push."""

    # Downloads hash and write their batches here. Few threads: on a small machine the event
    # loop and the bundle writer need the other cores; more threads only queue for the same CPUs.
    hashers: concurrent.futures.ThreadPoolExecutor = field(default_factory=lambda: _pool(2, "hash"))
    # Uploads read the bundle or the cache here (reads of 2 MiB, many blobs at once).
    readers: concurrent.futures.ThreadPoolExecutor = field(default_factory=lambda: _pool(4, "read"))
    # The bundle writer's own thread, so it never queues behind the downloads' hashing.
    tar: concurrent.futures.ThreadPoolExecutor = field(default_factory=lambda: _pool(1, "tar"))

    def close(self) -> None:
        for pool in (self.hashers, self.readers, self.tar):
            pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> RunContext:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
