"""Small helpers shared by the end-to-end tests: run the CLI, read a bundle, ask skopeo."""

from __future__ import annotations

import hashlib
import json
import subprocess
import tarfile
from pathlib import Path

from mirror.cli import main


def run_cli(*args: str, capsys=None) -> tuple[int, str, str]:
    """Run `imgmirror ARGS` in-process; returns (exit code, stdout, stderr) when capsys is given."""
    code = main([str(a) for a in args])
    if capsys is None:
        return code, "", ""
    out = capsys.readouterr()
    return code, out.out, out.err


def write_manifest(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


class Bundle:
    """A bundle tar read into memory (test bundles are small)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.names: list[str] = []
        self.files: dict[str, bytes] = {}
        self.members: list[tarfile.TarInfo] = []
        with tarfile.open(self.path) as tar:
            for m in tar:
                self.members.append(m)
                self.names.append(m.name)
                if m.isfile():
                    self.files[m.name] = tar.extractfile(m).read()
        self.index = json.loads(self.files["index.json"])
        self.docker_manifest = json.loads(self.files["manifest.json"])

    @property
    def blobs(self) -> dict[str, bytes]:
        return {"sha256:" + n.rsplit("/", 1)[1]: b for n, b in self.files.items() if n.startswith("blobs/sha256/")}

    def entry(self, ref: str) -> dict:
        hits = [m for m in self.index["manifests"]
                if m["annotations"]["org.opencontainers.image.ref.name"] == ref]
        assert len(hits) == 1, f"{ref} not in index.json: {[m['annotations'] for m in self.index['manifests']]}"
        return hits[0]

    def refs(self) -> set[str]:
        return {m["annotations"]["org.opencontainers.image.ref.name"] for m in self.index["manifests"]}

    def manifest(self, digest: str) -> dict:
        return json.loads(self.blobs[digest])


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def skopeo(*args: str) -> bytes:
    proc = subprocess.run(["skopeo", *args], capture_output=True, timeout=120)
    assert proc.returncode == 0, f"skopeo {' '.join(args)} failed: {proc.stderr.decode()}"
    return proc.stdout


def tar_bytes(path: Path) -> bytes:
    return Path(path).read_bytes()


