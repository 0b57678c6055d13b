"""--metrics FILE.prom (mirror/metrics.py) against real registries, and docs/monitoring.md run as written.

Every file is read back with `parse_exposition` below: a strict reader of the Prometheus text
format (0.0.4) as node_exporter's textfile collector takes it: HELP and TYPE at most once per
family and before its samples, a family's lines together, valid metric and label names, only
the escapes the format defines, Go-style float values, no sample twice, a final newline.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

import imagegen
from helpers import run_cli, write_manifest
from mirror import metrics as metrics_mod
from mirror.metrics import write_metrics

DOC = Path(__file__).resolve().parents[1] / "docs" / "monitoring.md"

NAMES = ["imgmirror_last_run_start_timestamp_seconds", "imgmirror_last_run_end_timestamp_seconds",
         "imgmirror_last_run_duration_seconds", "imgmirror_last_run_exit_code",
         "imgmirror_last_success_timestamp_seconds", "imgmirror_images", "imgmirror_blobs", "imgmirror_bytes"]
RUN = NAMES[:4]                  # written by every run
SUCCESS = NAMES[4]


# --------------------------------------------------------------------------------------------
# A strict reader of the text format
# --------------------------------------------------------------------------------------------


METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
FLOAT = re.compile(r"[+-]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|Inf|NaN)\Z")
TYPES = ("counter", "gauge", "histogram", "summary", "untyped")


@dataclass
class Family:
    name: str
    help: str | None = None
    type: str | None = None
    samples: dict[frozenset, float] = field(default_factory=dict)


class FormatError(AssertionError):
    pass


def _unescape(text: str, allowed: str, where: str) -> str:
    out, i = [], 0
    while i < len(text):
        c = text[i]
        if c == "\\":
            if i + 1 >= len(text) or text[i + 1] not in allowed:
                raise FormatError(f"{where}: an escape the format does not define: {text[i:i + 2]!r}")
            out.append("\n" if text[i + 1] == "n" else text[i + 1])
            i += 2
            continue
        out.append(c)
        i += 1
    return "".join(out)


def _parse_sample(line: str, where: str) -> tuple[str, dict[str, str], float]:
    m = METRIC_NAME.match(line)
    if not m:
        raise FormatError(f"{where}: no metric name")
    name, pos, labels = m.group(), m.end(), {}
    if pos < len(line) and line[pos] == "{":
        pos += 1
        while True:
            if line[pos:pos + 1] == "}" and not labels:
                pos += 1
                break
            lm = LABEL_NAME.match(line, pos)
            if not lm or line[lm.end():lm.end() + 2] != '="':
                raise FormatError(f"{where}: a label is not name=\"value\" at {line[pos:]!r}")
            lname, pos = lm.group(), lm.end() + 2
            if lname in labels:
                raise FormatError(f"{where}: label {lname} twice")
            end = pos
            while end < len(line) and line[end] != '"':
                end += 2 if line[end] == "\\" else 1
            if end >= len(line):
                raise FormatError(f"{where}: unterminated label value")
            labels[lname] = _unescape(line[pos:end], '\\"n', where)
            pos = end + 1
            if line[pos:pos + 1] == ",":
                pos += 1
                if line[pos:pos + 1] == "}":
                    raise FormatError(f"{where}: a trailing comma")
                continue
            if line[pos:pos + 1] != "}":
                raise FormatError(f"{where}: expected , or }} after a label value")
            pos += 1
            break
    rest = line[pos:]
    if not rest.startswith(" "):
        raise FormatError(f"{where}: no blank between the name and the value")
    tokens = rest.split()
    if len(tokens) not in (1, 2):
        raise FormatError(f"{where}: expected a value and an optional timestamp, got {tokens}")
    if not FLOAT.match(tokens[0]):
        raise FormatError(f"{where}: not a float: {tokens[0]!r}")
    if len(tokens) == 2 and not re.fullmatch(r"-?\d+", tokens[1]):
        raise FormatError(f"{where}: not a timestamp in ms: {tokens[1]!r}")
    return name, labels, float(tokens[0])


def parse_exposition(text: str) -> dict[str, Family]:
    if not text.endswith("\n"):
        raise FormatError("the last line does not end with a newline")
    families: dict[str, Family] = {}
    current, closed = None, set()

    def family(name: str, where: str) -> Family:
        nonlocal current
        if name != current:
            if name in closed:
                raise FormatError(f"{where}: {name} again after other families: a family's lines must be together")
            if current is not None:
                closed.add(current)
            current = name
        return families.setdefault(name, Family(name))

    for n, line in enumerate(text[:-1].split("\n"), 1):
        where = f"line {n} {line!r}"
        if not line.strip():
            raise FormatError(f"{where}: an empty line")
        if line.startswith("#"):
            parts = line.split(" ", 3)
            if len(parts) >= 3 and parts[0] == "#" and parts[1] in ("HELP", "TYPE"):
                if not METRIC_NAME.fullmatch(parts[2]):
                    raise FormatError(f"{where}: not a metric name")
                fam = family(parts[2], where)
                if parts[1] == "HELP":
                    if fam.help is not None:
                        raise FormatError(f"{where}: a second HELP")
                    fam.help = _unescape(parts[3] if len(parts) > 3 else "", "\\n", where)
                else:
                    if fam.type is not None or fam.samples:
                        raise FormatError(f"{where}: TYPE twice, or after the family's samples")
                    if len(parts) != 4 or parts[3] not in TYPES:
                        raise FormatError(f"{where}: an unknown type")
                    fam.type = parts[3]
            continue
        name, labels, value = _parse_sample(line, where)
        fam = family(name, where)
        if fam.type in ("histogram", "summary"):
            raise FormatError(f"{where}: this reader knows no {fam.type}")
        key = frozenset(labels.items())
        if key in fam.samples:
            raise FormatError(f"{where}: the same sample twice")
        fam.samples[key] = value
    return families


def read_metrics(path: Path) -> dict[str, Family]:
    fams = parse_exposition(Path(path).read_text(encoding="utf-8"))
    for fam in fams.values():
        assert fam.name in NAMES, f"an unexpected metric {fam.name}"
        assert fam.type == "gauge" and fam.help, f"{fam.name}: no TYPE gauge or no HELP"
        assert fam.samples, f"{fam.name}: HELP and TYPE without samples"
    return fams


def value(fams: dict[str, Family], name: str, **labels: str) -> float:
    """The value of the one sample of NAME whose labels include LABELS."""
    hits = [v for k, v in fams[name].samples.items() if set(labels.items()) <= k]
    assert len(hits) == 1, f"{name}{labels}: {len(hits)} samples in {fams[name].samples}"
    return hits[0]


def job_labels(fams: dict[str, Family]) -> dict[str, str]:
    """The labels every sample shares (less status and direction); one set for the whole file."""
    sets = {frozenset((k, v) for k, v in key if k not in ("status", "direction"))
            for fam in fams.values() for key in fam.samples}
    assert len(sets) == 1, f"samples of one file carry different job labels: {sets}"
    return dict(next(iter(sets)))


def test_the_reader_is_strict():
    good = '# HELP a_b x\\\\y\n# TYPE a_b gauge\na_b{l="q\\"\\n\\\\"} 1.5e3\na_b 2 1700000000000\n'
    fams = parse_exposition(good)
    assert fams["a_b"].help == "x\\y" and fams["a_b"].samples[frozenset({("l", 'q"\n\\')})] == 1500.0
    bad = ["a 1", "a{l=\"x\"} 1\nb 1\na 2\n", "# TYPE a gauge\n# TYPE a gauge\n", "a 1\na 1\n",
           'a{l="\\t"} 1\n', 'a{l="x",} 1\n', "a{l=x} 1\n", "a one\n", "a{l=\"x\",l=\"y\"} 1\n",
           "a 1\n\n", "9a 1\n", "a 1\n# TYPE a gauge\n", "# TYPE a weird\n"]
    for text in bad:
        with pytest.raises(FormatError):
            parse_exposition(text)


# --------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def source(seeded_registry):
    return seeded_registry.registry


def _manifest(path: Path, host: str, *refs: str) -> Path:
    lines = "".join(f"  - source: {host}/{r}\n" for r in refs)
    return write_manifest(path, f"version: 1\nimages:\n{lines}")


GOOD = ("test/base:1.0", "test/app-a:1.0")
MISSING = "test/does-not-exist:1.0"


def _run(*args, capsys) -> tuple[int, float, float, str]:
    t0 = time.time()
    code, _, err = run_cli(*args, capsys=capsys)
    return code, t0, time.time(), err


def _check_times(fams, t0: float, t1: float) -> None:
    start = value(fams, "imgmirror_last_run_start_timestamp_seconds")
    end = value(fams, "imgmirror_last_run_end_timestamp_seconds")
    assert t0 <= start <= end <= t1
    assert value(fams, "imgmirror_last_run_duration_seconds") == pytest.approx(end - start, abs=0.002)


# --------------------------------------------------------------------------------------------
# sync
# --------------------------------------------------------------------------------------------


def test_sync_metrics_values_and_last_success_kept_by_failed_runs(source, tmp_path, capsys):
    manifest = _manifest(tmp_path / "mirror.yaml", source.host, *GOOD)
    prom, report = tmp_path / "textfile" / "mirror.prom", tmp_path / "r.json"
    common = ["--cache", tmp_path / "c", "-o", tmp_path / "b.tar", "--report", report, "--metrics", prom]

    # 1. a good run on an empty cache
    code, t0, t1, _ = _run("sync", manifest, *common, capsys=capsys)
    assert code == 0
    fams = read_metrics(prom)
    assert set(fams) == {*RUN, SUCCESS, "imgmirror_images", "imgmirror_bytes"}    # no push: no blobs sent
    assert job_labels(fams) == {"command": "sync", "manifest": "mirror"}
    _check_times(fams, t0, t1)
    totals = json.loads(report.read_text())["totals"]
    assert value(fams, "imgmirror_last_run_exit_code") == 0
    assert value(fams, "imgmirror_images", status="ok") == 2 == totals["ok"]
    assert value(fams, "imgmirror_images", status="failed") == 0
    assert value(fams, "imgmirror_bytes", direction="downloaded") == totals["downloaded_bytes"] > 0
    assert set(fams["imgmirror_bytes"].samples) == {frozenset({("command", "sync"), ("manifest", "mirror"),
                                                              ("direction", "downloaded")})}
    first_success = value(fams, SUCCESS)
    assert first_success == value(fams, "imgmirror_last_run_end_timestamp_seconds")

    # 2. an image that does not exist: exit 1, the counts say so, the last success is kept
    _manifest(manifest, source.host, *GOOD, MISSING)
    code, t0, t1, _ = _run("sync", manifest, *common, capsys=capsys)
    assert code == 1
    fams = read_metrics(prom)
    _check_times(fams, t0, t1)
    totals = json.loads(report.read_text())["totals"]
    assert value(fams, "imgmirror_last_run_exit_code") == 1
    assert value(fams, "imgmirror_images", status="ok") == 2
    assert value(fams, "imgmirror_images", status="failed") == 1 == totals["failed"]
    assert value(fams, "imgmirror_bytes", direction="downloaded") == totals["downloaded_bytes"] == 0
    assert value(fams, SUCCESS) == first_success                   # exactly: read back from the file
    assert value(fams, "imgmirror_last_run_start_timestamp_seconds") > first_success

    # 3. a run that raises before it has a result (an invalid manifest, exit 2): the run metrics only
    write_manifest(manifest, "version: 1\nimages: 7\n")
    code, t0, t1, err = _run("sync", manifest, *common, capsys=capsys)
    assert code == 2 and "imgmirror: error:" in err
    fams = read_metrics(prom)
    assert set(fams) == {*RUN, SUCCESS}
    assert job_labels(fams) == {"command": "sync", "manifest": "mirror"}
    _check_times(fams, t0, t1)
    assert value(fams, "imgmirror_last_run_exit_code") == 2
    assert value(fams, SUCCESS) == first_success

    # 4. good again: a new last success
    _manifest(manifest, source.host, *GOOD)
    code, t0, t1, _ = _run("sync", manifest, *common, capsys=capsys)
    assert code == 0
    fams = read_metrics(prom)
    assert value(fams, SUCCESS) == value(fams, "imgmirror_last_run_end_timestamp_seconds") > first_success
    assert value(fams, "imgmirror_bytes", direction="downloaded") == 0      # all in the cache
    assert sorted(os.listdir(prom.parent)) == ["mirror.prom"]             # no temporary file left


def test_failed_first_run_has_no_last_success_and_other_labels_are_not_taken(source, tmp_path, capsys):
    prom = tmp_path / "m.prom"
    # a file of another job (other manifest) is there: its success is not this job's
    other = _manifest(tmp_path / "other.yaml", source.host, GOOD[0])
    assert run_cli("sync", other, "--cache", tmp_path / "c", "-o", tmp_path / "b.tar", "--metrics", prom)[0] == 0
    assert job_labels(read_metrics(prom))["manifest"] == "other"
    manifest = _manifest(tmp_path / "weekly.yaml", source.host, MISSING)
    code = run_cli("sync", manifest, "--cache", tmp_path / "c", "-o", tmp_path / "b.tar", "--metrics", prom)[0]
    assert code == 1
    fams = read_metrics(prom)
    assert job_labels(fams) == {"command": "sync", "manifest": "weekly"}
    assert SUCCESS not in fams
    assert value(fams, "imgmirror_images", status="failed") == 1
    assert value(fams, "imgmirror_images", status="ok") == 0


def test_sync_to_registry_metrics(source, registry, tmp_path):
    manifest = _manifest(tmp_path / "nightly.yaml", source.host, *GOOD)
    prom, report = tmp_path / "n.prom", tmp_path / "r.json"
    code = run_cli("sync", manifest, "--to", f"{registry.host}/mirror", "--cache", tmp_path / "c",
                   "--report", report, "--metrics", prom)[0]
    assert code == 0
    fams = read_metrics(prom)
    assert set(fams) == set(NAMES)
    assert job_labels(fams) == {"command": "sync", "manifest": "nightly"}
    rep = json.loads(report.read_text())
    push = rep["push"]["totals"]
    assert value(fams, "imgmirror_images", status="ok") == 2
    assert value(fams, "imgmirror_bytes", direction="downloaded") == rep["totals"]["downloaded_bytes"] > 0
    assert value(fams, "imgmirror_bytes", direction="uploaded") == push["uploaded_bytes"] > 0
    assert value(fams, "imgmirror_blobs", direction="uploaded") == push["blobs_uploaded"] > 0
    assert value(fams, "imgmirror_blobs", direction="mounted") == push["blobs_mounted"] > 0  # app-a's base


# --------------------------------------------------------------------------------------------
# push
# --------------------------------------------------------------------------------------------


def test_push_metrics(source, registry, tmp_path, capsys):
    manifest = _manifest(tmp_path / "mirror.yaml", source.host, *GOOD)
    bundle = tmp_path / "week1.tar"
    assert run_cli("sync", manifest, "-o", bundle, "--cache", tmp_path / "c")[0] == 0
    prom, report = tmp_path / "push.prom", tmp_path / "p.json"
    code, t0, t1, _ = _run("push", bundle, "--to", f"{registry.host}/m", "--report", report,
                           "--metrics", prom, capsys=capsys)
    assert code == 0
    fams = read_metrics(prom)
    assert set(fams) == {*RUN, SUCCESS, "imgmirror_images", "imgmirror_blobs", "imgmirror_bytes"}
    labels = job_labels(fams)
    # push is labelled by its first bundle's name
    assert labels["command"] == "push" and "manifest" not in labels
    assert labels["bundle"] == "week1"
    _check_times(fams, t0, t1)
    totals = json.loads(report.read_text())["totals"]
    assert value(fams, "imgmirror_last_run_exit_code") == 0
    assert value(fams, SUCCESS) == value(fams, "imgmirror_last_run_end_timestamp_seconds")
    assert value(fams, "imgmirror_images", status="ok") == 2 and value(fams, "imgmirror_images", status="failed") == 0
    assert value(fams, "imgmirror_blobs", direction="uploaded") == totals["blobs_uploaded"] > 0
    assert value(fams, "imgmirror_blobs", direction="mounted") == totals["blobs_mounted"] > 0
    assert value(fams, "imgmirror_bytes", direction="uploaded") == totals["uploaded_bytes"] > 0
    assert {k for key in fams["imgmirror_bytes"].samples for k, _ in key} == {"command", "direction"} | set(labels)
    first_success = value(fams, SUCCESS)

    # again: everything is there, nothing is sent
    assert run_cli("push", bundle, "--to", f"{registry.host}/m", "--metrics", prom)[0] == 0
    fams = read_metrics(prom)
    assert value(fams, "imgmirror_bytes", direction="uploaded") == 0
    assert value(fams, "imgmirror_blobs", direction="uploaded") == 0
    assert value(fams, SUCCESS) > first_success
    second_success = value(fams, SUCCESS)

    # a bundle that is not one: exit 2, no result; the last success is kept
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "week1.tar").write_bytes(b"not a tar")      # same job (label), a broken bundle
    code, _, _, err = _run("push", tmp_path / "bad" / "week1.tar", "--to", registry.host, "--metrics", prom,
                           capsys=capsys)
    assert code == 2
    fams = read_metrics(prom)
    assert set(fams) == {*RUN, SUCCESS}
    assert value(fams, "imgmirror_last_run_exit_code") == 2 and value(fams, SUCCESS) == second_success


# --------------------------------------------------------------------------------------------
# The file: atomic, and never the run's undoing
# --------------------------------------------------------------------------------------------


def test_the_file_is_replaced_atomically(source, tmp_path, monkeypatch):
    manifest = _manifest(tmp_path / "mirror.yaml", source.host, *GOOD)
    textfile = tmp_path / "textfile"
    prom = textfile / "mirror.prom"
    args = ["sync", manifest, "--cache", tmp_path / "c", "-o", tmp_path / "b.tar", "--metrics", prom]
    assert run_cli(*args)[0] == 0
    old_text = prom.read_text()
    old_inode = prom.stat().st_ino

    synced, replaced = set(), []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        synced.add(os.fstat(fd).st_ino)
        return real_fsync(fd)

    def replace(src, dst, *a, **kw):
        if Path(dst) == prom:
            src = Path(src)
            # beside the file, a name node_exporter does not read, complete, on disk, while the
            # old file is still whole at its path
            assert src.parent == prom.parent and not src.name.endswith(".prom") and src.name.startswith(".")
            assert src.stat().st_ino in synced
            read_metrics(src)
            assert prom.read_text() == old_text
            replaced.append(src)
        return real_replace(src, dst, *a, **kw)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    with open(prom) as reader:                  # node_exporter in the middle of a read
        assert run_cli(*args)[0] == 0
        assert reader.read() == old_text        # it reads the old file whole
    assert len(replaced) == 1 and not replaced[0].exists()
    assert prom.stat().st_ino != old_inode      # a new file renamed over it, not a rewrite in place
    assert prom.stat().st_mode & 0o777 == 0o666 & ~_umask()      # readable by node_exporter
    assert sorted(os.listdir(textfile)) == ["mirror.prom"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_failed_write_warns_keeps_the_old_file_and_the_exit_code(source, tmp_path, monkeypatch, capsys):
    manifest = _manifest(tmp_path / "mirror.yaml", source.host, *GOOD)
    textfile = tmp_path / "textfile"
    prom = textfile / "mirror.prom"
    args = ["sync", manifest, "--cache", tmp_path / "c", "-o", tmp_path / "b.tar", "--metrics", prom]
    assert run_cli(*args)[0] == 0
    old_text = prom.read_text()
    real_replace = os.replace

    def failing_replace(src, dst, *a, **kw):
        if Path(dst) == prom:
            raise OSError(28, "No space left on device")
        return real_replace(src, dst, *a, **kw)

    monkeypatch.setattr(os, "replace", failing_replace)
    code, _, err = run_cli(*args, capsys=capsys)
    assert code == 0
    assert f"imgmirror: warning: --metrics {prom}: not written (No space left on device)" in err
    assert prom.read_text() == old_text and sorted(os.listdir(textfile)) == ["mirror.prom"]
    # the same with a failed run: its exit code stays 1
    _manifest(manifest, source.host, *GOOD, MISSING)
    assert run_cli(*args, capsys=capsys)[0] == 1
    assert prom.read_text() == old_text and sorted(os.listdir(textfile)) == ["mirror.prom"]


def test_an_unwritable_directory_warns_and_the_exit_code_is_the_runs(source, tmp_path, monkeypatch, capsys):
    good = _manifest(tmp_path / "good.yaml", source.host, *GOOD)
    bad = _manifest(tmp_path / "bad.yaml", source.host, *GOOD, MISSING)
    invalid = write_manifest(tmp_path / "invalid.yaml", "version: 1\nimages: 7\n")
    common = ["--cache", tmp_path / "c", "-o", tmp_path / "b.tar"]

    # the "directory" is a file: it cannot be made, nor written into
    (tmp_path / "blocker").write_text("")
    prom = tmp_path / "blocker" / "m.prom"
    for manifest, want in ((good, 0), (bad, 1), (invalid, 2)):
        code, _, err = run_cli("sync", manifest, *common, "--metrics", prom, capsys=capsys)
        assert code == want, err
        assert f"imgmirror: warning: --metrics {prom}: not written (Not a directory: {prom.parent})" in err
        assert f"the run's exit code ({want}) is unchanged" in err
    assert "imgmirror: error:" in err           # the run's own error is still shown

    # a directory without write permission (as root, which ignores modes, the refusal is simulated)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    prom = ro / "m.prom"
    if os.geteuid() == 0:
        real_open = os.open

        def refusing_open(path, flags, *a, **kw):
            if Path(path).parent == ro and flags & os.O_CREAT:
                raise PermissionError(13, "Permission denied", str(path))
            return real_open(path, flags, *a, **kw)

        monkeypatch.setattr(os, "open", refusing_open)
    try:
        for manifest, want in ((good, 0), (bad, 1)):
            code, _, err = run_cli("sync", manifest, *common, "--metrics", prom, capsys=capsys)
            assert code == want
            assert f"imgmirror: warning: --metrics {prom}: not written (Permission denied: {ro}/" in err
        assert os.listdir(ro) == []
    finally:
        ro.chmod(0o755)


# --------------------------------------------------------------------------------------------
# The writer alone: labels and their escapes
# --------------------------------------------------------------------------------------------


def test_label_values_are_escaped_and_read_back(tmp_path):
    prom = tmp_path / "x.prom"
    odd = 'we"ird\\name\nnext'
    write_metrics(prom, command="sync", manifest=f"/etc/{odd}.yaml", started=100.25, ended=160.5,
                  exit_code=0, result=None)
    fams = read_metrics(prom)
    assert job_labels(fams) == {"command": "sync", "manifest": odd}
    assert value(fams, SUCCESS) == 160.5 and value(fams, "imgmirror_last_run_duration_seconds") == 60.25
    write_metrics(prom, command="sync", manifest=f"/etc/{odd}.yaml", started=200.0, ended=201.0,
                  exit_code=1, result=None)
    fams = read_metrics(prom)
    assert value(fams, SUCCESS) == 160.5 and value(fams, "imgmirror_last_run_exit_code") == 1


def test_a_push_given_its_bundle_is_labelled_with_the_bundles_name(tmp_path):
    # what the CLI would pass were it to give the first bundle as `manifest` for push
    for given, name in (("/srv/in/week1.tar", "week1"), ("week2.tar.001", "week2"), ("layout/", "layout")):
        prom = tmp_path / f"{name}.prom"
        write_metrics(prom, command="push", manifest=given, started=1.0, ended=2.0, exit_code=0, result=None)
        assert job_labels(read_metrics(prom)) == {"command": "push", "bundle": name}


def test_previous_file_that_is_not_metrics_is_ignored(tmp_path):
    prom = tmp_path / "x.prom"
    prom.write_bytes(b"\xff\xfe garbage {{{\n")
    write_metrics(prom, command="sync", manifest="m.yaml", started=1.0, ended=2.0, exit_code=1, result=None)
    fams = read_metrics(prom)
    assert SUCCESS not in fams and value(fams, "imgmirror_last_run_exit_code") == 1


def test_help_text_is_the_same_in_every_file():
    # node_exporter refuses one metric with two HELP texts across the textfile directory's files
    assert set(metrics_mod.HELP) == set(NAMES)
    assert all("\n" not in h and h for h in metrics_mod.HELP.values())


# --------------------------------------------------------------------------------------------
# docs/monitoring.md, run as written (its blocks parsed as tests/test_airgap_doc.py parses docs)
# --------------------------------------------------------------------------------------------

from test_airgap_doc import Block, parse_doc  # noqa: E402


def commands(block: Block) -> list[str]:
    """An sh block's commands: every line that is not blank or a comment (the doc has no
    continuation lines: a crontab line cannot have them)."""
    lines = [ln for ln in block.text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    assert not any(ln.rstrip().endswith("\\") for ln in lines), f"{block.first}: a continuation line"
    return lines


def crontab_command(line: str) -> str:
    """The command of a crontab line: what cron gives /bin/sh after the five time fields."""
    fields = line.split(None, 5)
    assert len(fields) == 6 and all(re.fullmatch(r"[\d*/,-]+", f) for f in fields[:5]), f"not a crontab line: {line}"
    assert "%" not in fields[5], "cron turns % into a newline"
    return fields[5]


class Machine:
    """A home directory (cron's working directory) with `imgmirror` on PATH."""

    def __init__(self, home: Path, bindir: Path):
        self.home = home
        home.mkdir()
        self.env = {**os.environ, "HOME": str(home), "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}",
                    "DOCKER_CONFIG": str(home / ".docker"), "XDG_CACHE_HOME": str(home / ".cache"),
                    "XDG_RUNTIME_DIR": str(home)}
        self.env.pop("REGISTRY_AUTH_FILE", None)

    def run(self, cmd: str, shell: str) -> subprocess.CompletedProcess:
        proc = subprocess.run([shell, "-c", cmd], cwd=self.home, env=self.env, capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 0, (f"`{cmd}` in {self.home.name}/ exited {proc.returncode}\n"
                                      f"--- stdout\n{proc.stdout}--- stderr\n{proc.stderr}")
        return proc


def _bindir(tmp: Path) -> Path:
    bindir = tmp / "bin"
    bindir.mkdir()
    script = Path(sys.executable).with_name("imgmirror")
    if script.exists():
        (bindir / "imgmirror").symlink_to(script)
    else:
        (bindir / "imgmirror").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m mirror "$@"\n')
        (bindir / "imgmirror").chmod(0o755)
    return bindir


def test_monitoring_doc_runs_as_written(tmp_path, make_registry):
    doc = DOC.read_text()
    blocks = parse_doc(doc)
    hub, internal = make_registry(), make_registry()
    hosts = {"docker.io": hub.host, "registry.internal:5000": internal.host}
    pushed = {"library/alpine:3.20": imagegen.push(imagegen.make_image([imagegen.make_layer("alpine", 2048)]),
                                                   hub.host, "library/alpine", "3.20"),
              "library/busybox:1.36": imagegen.push(imagegen.make_image([imagegen.make_layer("busybox", 2048)]),
                                                    hub.host, "library/busybox", "1.36")}
    bindir = _bindir(tmp_path)
    machines = {"outside": Machine(tmp_path / "outside", bindir), "inside": Machine(tmp_path / "inside", bindir)}

    def sub(text: str) -> str:
        for name, real in hosts.items():
            text = text.replace(name, real)
        return text

    ran, rules = [], None
    for block in blocks:
        if block.lang == "yaml":
            if block.first == "# mirror.yaml":
                (machines["outside"].home / "mirror.yaml").write_text(sub(block.text))
            elif block.first == "# imgmirror.rules.yml":
                rules = yaml.safe_load(block.text)
            else:
                raise AssertionError(f"{block.section}: a yaml block the test cannot place: {block.first!r}")
            continue
        if block.first == "# setup: each machine":
            for m in machines.values():
                for cmd in commands(block):
                    m.run(sub(cmd), "bash")
            continue
        where = re.fullmatch(r"# crontab: (outside|inside)", block.first)
        assert where, f"{block.section}: an sh block the test cannot place: {block.first!r}"
        machine = machines[where.group(1)]
        if where.group(1) == "inside":          # the media: the bundle lands in incoming/
            (machine.home / "incoming").mkdir(exist_ok=True)
            shutil.copy2(machines["outside"].home / "bundles" / "mirror.tar", machine.home / "incoming" / "mirror.tar")
        for line in commands(block):
            cmd = crontab_command(line)
            assert cmd.startswith("imgmirror ") and "--metrics " in cmd
            machine.run(sub(cmd), "/bin/sh")    # cron's shell
            ran.append((where.group(1), cmd))
    assert [w for w, _ in ran] == ["outside", "inside"], ran

    # what the runs wrote, as node_exporter would read it
    textfiles = {w: sorted(m.home.joinpath("metrics").iterdir()) for w, m in machines.items()}
    assert [p.name for p in textfiles["outside"]] == ["imgmirror-sync.prom"]
    assert [p.name for p in textfiles["inside"]] == ["imgmirror-push.prom"]
    assert all(p.stat().st_mode & 0o044 == 0o044 for ps in textfiles.values() for p in ps)   # others read it
    sync = read_metrics(textfiles["outside"][0])
    push = read_metrics(textfiles["inside"][0])
    assert job_labels(sync) == {"command": "sync", "manifest": "mirror"}
    assert job_labels(push)["command"] == "push"
    for fams in (sync, push):
        assert value(fams, "imgmirror_last_run_exit_code") == 0
        assert value(fams, "imgmirror_images", status="ok") == 2
        assert time.time() - value(fams, SUCCESS) < 600
    assert value(sync, "imgmirror_bytes", direction="downloaded") > 4096
    assert value(push, "imgmirror_blobs", direction="uploaded") == 4      # two layers, two configs
    for ref, digest in pushed.items():
        assert imagegen.sha256_digest(imagegen.inspect_raw(internal.host, f"mirror/{ref}")) == digest

    # the doc's table names every metric the writer writes, and only those
    table = set(re.findall(r"^\| `(imgmirror_\w+)` \|", doc, re.M))
    assert table == set(NAMES) == set(metrics_mod.HELP)

    # the alert rules: Prometheus rule-file shape, about metrics the runs wrote
    assert rules is not None, "no # imgmirror.rules.yml block"
    (group,) = rules["groups"]
    alerts = {r["alert"]: r for r in group["rules"]}
    assert set(alerts) == {"ImgmirrorNoSuccessfulRun", "ImgmirrorLastRunFailed"}
    for rule in alerts.values():
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"} and isinstance(rule["expr"], str)
        named = set(re.findall(r"\bimgmirror_\w+", rule["expr"]))
        assert named and all(n in sync and n in push for n in named), (rule["expr"], named)
    no_success = alerts["ImgmirrorNoSuccessfulRun"]["expr"]
    assert re.fullmatch(r"time\(\) - imgmirror_last_success_timestamp_seconds > 2 \* 86400", no_success)
    assert alerts["ImgmirrorLastRunFailed"]["expr"] == "imgmirror_last_run_exit_code != 0"
    # neither fires on what the runs wrote (the expressions, evaluated by hand)
    for fams in (sync, push):
        assert not time.time() - value(fams, SUCCESS) > 2 * 86400
        assert not value(fams, "imgmirror_last_run_exit_code") != 0
