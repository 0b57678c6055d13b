"""The package's layers, checked: the core is pure, and imports only point downward.

    cli, mirror/__init__  ->  api  ->  engine, server  ->  registry, bundle, cache, specfile  ->  trust  ->  core
    (errors everywhere)
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "mirror"
CORE = sorted(p.stem for p in (PKG / "core").glob("*.py") if p.stem != "__init__")
# what a pure module must not bring in, directly or through another module
FORBIDDEN = ["aiohttp", "yaml", "tenacity", "asyncio", "socket", "ssl", "subprocess", "tarfile",
             "urllib.request", "http.client", "concurrent.futures", "mirror.registry", "mirror.bundle",
             "mirror.engine", "mirror.cache", "mirror.specfile", "mirror.cli", "mirror.server", "mirror.trust"]

# the layer of each top-level piece, and the layers it may import from
LAYER = {"errors": 0, "core": 1, "trust": 1.5, "registry": 2, "bundle": 2, "cache": 2, "specfile": 2, "progress": 2, "metrics": 2,
         "engine": 3, "server": 3, "api": 4, "cli": 5, "__init__": 5, "__main__": 6}
# allowed sideways imports at the adapter layer: the bundle writer follows a blob into the cache
SIDEWAYS = {("bundle", "cache"), ("registry", "cache"), ("engine", "server")}


def test_core_modules_are_listed():
    assert {"reference", "platform", "oci", "selection", "spec", "plan", "diff"} <= set(CORE)


def test_the_core_imports_nothing_that_does_io():
    code = ("import sys, json\n" + "".join(f"import mirror.core.{m}\n" for m in CORE) +
            f"print(json.dumps([m for m in {FORBIDDEN!r} if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


def _piece(path: Path) -> str:
    rel = path.relative_to(PKG).parts
    return rel[0] if len(rel) > 1 else path.stem


def _imports(path: Path):
    """Every mirror-internal import of a file (lazy ones inside functions included), as the
    top-level piece it names."""
    tree = ast.parse(path.read_text())
    depth = len(path.relative_to(PKG).parts) - 1          # 0 for mirror/x.py, 1 for mirror/core/x.py
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            if node.level - 1 > depth:
                continue
            base = list(path.relative_to(PKG).parts[:depth - (node.level - 1)])
            target = base + (node.module.split(".") if node.module else [])
            if not target:                     # from . import __version__ / from .. import x
                target = [a.name for a in node.names][:1]
            yield target[0] if not target[0].endswith(".py") else target[0][:-3]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mirror"):
            parts = node.module.split(".")
            yield parts[1] if len(parts) > 1 else node.names[0].name


@pytest.mark.parametrize("path", sorted(PKG.rglob("*.py")), ids=lambda p: str(p.relative_to(PKG)))
def test_imports_point_downward(path):
    me = _piece(path)
    for target in _imports(path):
        if target == me or target == "__version__":
            continue
        assert target in LAYER, f"{path}: imports {target}, which has no layer in this test"
        assert LAYER[target] < LAYER[me] or (me, target) in SIDEWAYS, \
            f"{path.relative_to(PKG)} ({me}, layer {LAYER[me]}) imports {target} (layer {LAYER[target]})"


def test_aiohttp_is_spoken_only_at_the_network_boundary():
    """Errors from aiohttp are mapped once, in registry/ (and server.py is an aiohttp app): no
    other module imports it, so none can catch or leak its exceptions."""
    users = set()
    for path in PKG.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n == "aiohttp" or n.startswith("aiohttp.") for n in names):
                users.add(str(path.relative_to(PKG)))
    assert users and {u for u in users if not (u.startswith("registry/") or u == "server.py")} == set()
