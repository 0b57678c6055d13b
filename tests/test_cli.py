"""The command line itself: version, usage errors, exit codes, the console script."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mirror import __version__
from mirror.cli import main


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"imgmirror {__version__}"


@pytest.mark.parametrize("argv, needle", [
    ([], "usage"),
    (["sync"], "the following arguments are required: manifest"),
    (["sync", "m.yaml", "--jobs", "0"], "--jobs must be at least 1"),
    (["sync", "m.yaml", "--bogus"], "unrecognized arguments: --bogus"),
    (["frobnicate"], "invalid choice"),
])
def test_usage_errors_exit_2(argv, needle, capsys):
    assert main(argv) == 2
    assert needle in capsys.readouterr().err


def test_console_script_and_module_agree(tmp_path):
    """`python -m mirror` runs the same CLI as the installed `imgmirror` script."""
    out = subprocess.run([sys.executable, "-m", "mirror", "sync", str(tmp_path / "missing.yaml")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "missing.yaml: file not found" in out.stderr
