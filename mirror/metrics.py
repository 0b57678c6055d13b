"""--metrics FILE.prom: a run's metrics in Prometheus text format (being written: issue 11)."""

from __future__ import annotations


def write_metrics(path, *, command: str, manifest: str | None, started: float, ended: float,
                  exit_code: int, result) -> None:
    raise NotImplementedError
