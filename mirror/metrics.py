"""--metrics FILE.prom: a run's metrics in Prometheus text format, for node_exporter's textfile
collector (docs/monitoring.md).

The file describes the last run of one job: it is rewritten whole at every run, atomically (a
temporary file beside it, fsync'd, then renamed over it), so node_exporter never reads half of
it. Every sample carries `command="sync|push"` and the job's name: `manifest="<stem of the
manifest>"` for sync; for push `bundle="<first bundle's name>"` when the caller knows it (the
CLI passes none today, so push samples carry `command` alone). A failed run keeps the previous
file's `imgmirror_last_success_timestamp_seconds` for the same labels, so an alert can say
"no successful run for 2 days". Writing the file never changes the run's outcome: a failure is
a warning on stderr.
"""

from __future__ import annotations

import errno
import os
import re
import sys
from pathlib import Path

# name -> help; all gauges, in the order they are written
HELP = {
    "imgmirror_last_run_start_timestamp_seconds": "When the last run started (Unix time).",
    "imgmirror_last_run_end_timestamp_seconds": "When the last run ended (Unix time).",
    "imgmirror_last_run_duration_seconds": "How long the last run took.",
    "imgmirror_last_run_exit_code": "The exit code of the last run (0 all mirrored, 1 some images failed "
                                    "or another error, 2 usage, 3 cache locked, 130 interrupted).",
    "imgmirror_last_success_timestamp_seconds": "When the last run that exited 0 ended (Unix time); "
                                                "kept from the previous file by a failed run.",
    "imgmirror_images": "Images of the last run, by status (ok, failed; sync --to: a failed push is failed).",
    "imgmirror_blobs": "Blobs the last run sent, by direction (uploaded, mounted).",
    "imgmirror_bytes": "Bytes the last run transferred, by direction (downloaded, uploaded).",
}

LAST_SUCCESS = "imgmirror_last_success_timestamp_seconds"


def write_metrics(path, *, command: str, manifest: str | None, started: float, ended: float,
                  exit_code: int, result) -> None:
    """Write the metrics of one run of `imgmirror COMMAND` to PATH, atomically.

    manifest: the manifest file (sync) or the first bundle (push), or None; result: the run's
    SyncResult or PushResult, or None when it raised before having one. Never raises (but
    KeyboardInterrupt): a file that cannot be written is a warning on stderr."""
    path = Path(path)
    try:
        labels = job_labels(command, manifest)
        last_success = ended if exit_code == 0 else previous_value(path, LAST_SUCCESS, labels)
        text = render(labels, started=started, ended=ended, exit_code=exit_code, result=result,
                      last_success=last_success)
        write_atomically(path, text)
    except Exception as exc:    # noqa: BLE001 - metrics must never change the run's exit code
        if isinstance(exc, OSError) and exc.strerror:
            reason = exc.strerror + (f": {exc.filename}" if exc.filename else "")
        else:
            reason = str(exc) or type(exc).__name__
        print(f"imgmirror: warning: --metrics {path}: not written ({reason}); "
              f"the run's exit code ({exit_code}) is unchanged", file=sys.stderr)


def job_labels(command: str, manifest: str | None) -> dict[str, str]:
    """The labels that name a job: its command, and its manifest's stem (sync) or its first
    bundle's name without `.tar` or a part's `.tar.NNN` (push)."""
    labels = {"command": command}
    if manifest is not None:
        if command == "push":
            name = Path(str(manifest).rstrip("/") or "/").name
            labels["bundle"] = re.sub(r"\.tar(\.\d+)?$", "", name) or name
        else:
            labels["manifest"] = Path(str(manifest)).stem
    return labels


def render(labels: dict[str, str], *, started: float, ended: float, exit_code: int, result,
           last_success: float | None) -> str:
    """The file's text: HELP and TYPE, then the samples, of every family that has samples."""
    samples: dict[str, list[tuple[dict[str, str], float | int]]] = {name: [] for name in HELP}
    samples["imgmirror_last_run_start_timestamp_seconds"].append(({}, started))
    samples["imgmirror_last_run_end_timestamp_seconds"].append(({}, ended))
    samples["imgmirror_last_run_duration_seconds"].append(({}, max(0.0, round(ended - started, 3))))
    samples["imgmirror_last_run_exit_code"].append(({}, exit_code))
    if last_success is not None:
        samples[LAST_SUCCESS].append(({}, last_success))
    for name, extra, value in counts(result):
        samples[name].append((extra, value))
    out = []
    for name, rows in samples.items():
        if not rows:
            continue
        out.append(f"# HELP {name} {_escape_help(HELP[name])}")
        out.append(f"# TYPE {name} gauge")
        for extra, value in rows:
            out.append(f"{name}{_labels({**labels, **extra})} {_value(value)}")
    return "\n".join(out) + "\n"


def counts(result) -> list[tuple[str, dict[str, str], int]]:
    """(metric, extra labels, value) of what a run did; none without a result."""
    if result is None:
        return []
    totals = result.totals
    push = getattr(result, "push", None)            # sync --to: the push that followed
    out = []
    if hasattr(totals, "downloaded_bytes"):         # a sync
        failed = totals.failed + (push.totals.failed if push else 0)
        out += [("imgmirror_images", {"status": "ok"}, totals.images - failed),
                ("imgmirror_images", {"status": "failed"}, failed)]
        pushed = push.totals if push else None
    else:                                           # a push
        out += [("imgmirror_images", {"status": "ok"}, totals.ok),
                ("imgmirror_images", {"status": "failed"}, totals.failed)]
        pushed = totals
    if pushed is not None:
        out += [("imgmirror_blobs", {"direction": "uploaded"}, pushed.blobs_uploaded),
                ("imgmirror_blobs", {"direction": "mounted"}, pushed.blobs_mounted)]
    if hasattr(totals, "downloaded_bytes"):
        out.append(("imgmirror_bytes", {"direction": "downloaded"}, totals.downloaded_bytes))
    if pushed is not None:
        out.append(("imgmirror_bytes", {"direction": "uploaded"}, pushed.uploaded_bytes))
    return out


# --------------------------------------------------------------------------------------------
# The text format
# --------------------------------------------------------------------------------------------


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _labels(labels: dict[str, str]) -> str:
    return "{" + ",".join(f'{k}="{_escape_label(str(v))}"' for k, v in labels.items()) + "}"


def _value(value: float | int) -> str:
    if isinstance(value, bool) or isinstance(value, int):
        return str(int(value))
    return repr(float(value))      # shortest exact form: read back, it is the same float


_SAMPLE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+-?\d+)?\s*$")
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*(?:,|$)')


def _unescape_label(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), value)


def parse_labels(text: str) -> dict[str, str] | None:
    """`a="x",b="y"` -> {"a": "x", "b": "y"}; None when it is not that."""
    labels, pos = {}, 0
    text = text.strip()
    while pos < len(text):
        m = _LABEL.match(text, pos)
        if not m:
            return None
        labels[m.group(1)] = _unescape_label(m.group(2))
        pos = m.end()
    return labels


def previous_value(path: Path, name: str, labels: dict[str, str]) -> float | None:
    """The value of NAME{LABELS} in the file at PATH as it is now; None when there is no such
    sample (or no file, or one that cannot be read)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        m = _SAMPLE.match(line)
        if not m or m.group(1) != name or parse_labels(m.group(2) or "") != labels:
            continue
        try:
            return float(m.group(3))
        except ValueError:
            return None
    return None


# --------------------------------------------------------------------------------------------
# The file
# --------------------------------------------------------------------------------------------


def write_atomically(path: Path, text: str) -> None:
    """TEXT at PATH, all or nothing: a hidden temporary file in the same directory (a name
    node_exporter does not read: it takes *.prom only), written, fsync'd, renamed over PATH;
    then the directory fsync'd. The file gets the usual mode (0666 less the umask) so that
    node_exporter, another user, can read it. On any error the temporary file is removed and
    PATH is as it was."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError:         # a file where the directory should be
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(path.parent)) from None
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), 0o666)
    try:
        try:
            data = text.encode("utf-8")
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise
    try:                            # the rename itself survives a crash
        dfd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)
