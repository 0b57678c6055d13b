"""What a person (tqdm bars on a terminal) or a cron log (one plain line per event) sees."""

from __future__ import annotations


import sys


class Progress:
    """Plain lines for logs: `imgmirror: ok docker.io/library/alpine:3.19 sha256:… 3.4 MiB 1.2s`."""

    def __init__(self, stream=None, verbosity: int = 0):
        self.stream = stream or sys.stderr
        self.verbosity = verbosity

    def line(self, text: str) -> None:
        print(f"imgmirror: {text}", file=self.stream, flush=True)

    def warn(self, text: str) -> None:
        if self.verbosity >= 0:
            self.line(f"warning: {text}")

    def images_total(self, n: int) -> None:
        pass

    def bytes_total(self, n: int) -> None:
        pass

    def advance(self, n: int) -> None:
        pass

    def image_done(self, ref: str, ok: bool, detail: str) -> None:
        if ok and self.verbosity < 0:
            return
        self.line(f"{'ok' if ok else 'FAILED'} {ref} {detail}")

    def close(self) -> None:
        pass


class BarProgress(Progress):
    """Two tqdm bars on a terminal: bytes downloaded, images done."""

    def __init__(self, stream=None, verbosity: int = 0):
        super().__init__(stream, verbosity)
        from tqdm import tqdm
        self.bytes_bar = tqdm(total=0, unit="B", unit_scale=True, unit_divisor=1024, desc="bytes ",
                              file=self.stream, position=0, dynamic_ncols=True)
        self.images_bar = tqdm(total=0, unit="img", desc="images", file=self.stream, position=1,
                               dynamic_ncols=True)
        self._last = 0.0

    def line(self, text: str) -> None:
        self.bytes_bar.write(f"imgmirror: {text}", file=self.stream)

    def images_total(self, n: int) -> None:
        self.images_bar.total = n
        self.images_bar.refresh()

    def bytes_total(self, n: int) -> None:
        self.bytes_bar.total = (self.bytes_bar.total or 0) + n
        self.bytes_bar.refresh()

    def advance(self, n: int) -> None:
        self.bytes_bar.update(n)

    def image_done(self, ref: str, ok: bool, detail: str) -> None:
        self.images_bar.update(1)
        if not ok or self.verbosity >= 1:
            self.line(f"{'ok' if ok else 'FAILED'} {ref} {detail}")

    def close(self) -> None:
        self.bytes_bar.close()
        self.images_bar.close()


class SideProgress(Progress):
    """A second job's events shown on a run's progress: its lines, not its counts (the push of
    sync --to runs alongside the sync, whose bars count the downloads and images)."""

    def __init__(self, main: Progress):
        super().__init__(main.stream, main.verbosity)
        self.main = main

    def line(self, text: str) -> None:
        self.main.line(text)

    def image_done(self, ref: str, ok: bool, detail: str) -> None:
        quiet = self.verbosity < (1 if isinstance(self.main, BarProgress) else 0)
        if not ok or not quiet:
            self.line(f"{'ok' if ok else 'FAILED'} {ref} {detail}")


def make_progress(mode: bool | None, verbosity: int, stream=None) -> Progress:
    """Bars when asked for, or by default when stderr is a terminal; plain lines otherwise."""
    stream = stream or sys.stderr
    bars = stream.isatty() if mode is None else mode
    return BarProgress(stream, verbosity) if bars else Progress(stream, verbosity)


