"""Shared pytest fixtures: real distribution registries on 127.0.0.1.

A registry starts in ~30 ms, so every registry fixture is function-scoped: each test gets empty,
private storage and a private log to count requests in.  Only ``seeded_registry`` (pushing the
standard set takes about a second) is shared by the tests of a module; treat it as read-only.

The registry fixtures need ``docker-registry`` and ``skopeo``.  When either is missing they
*fail* (never skip): a skipped integration suite looks green while testing nothing.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import NamedTuple
from collections.abc import Callable

import pytest

# Tests import the helpers as plain modules (``import imagegen``), with or without a rootdir
# conftest on sys.path.
sys.path.insert(0, str(Path(__file__).resolve().parent))

import imagegen  # noqa: E402
from registries import INSTALL_HINT, RegistryProcess, missing_tools, start_registry  # noqa: E402


def _require_tools() -> None:
    missing = missing_tools()
    if missing:
        pytest.fail(
            f"{' and '.join(missing)} not found, but the registry tests need them; {INSTALL_HINT}",
            pytrace=False,
        )


@pytest.fixture
def make_registry(tmp_path_factory) -> Callable[..., RegistryProcess]:
    """Factory: ``make_registry(auth=None|"basic"|"token", token_field="token")`` starts one
    more registry (e.g. a fresh empty mirror target); all are stopped at teardown."""
    _require_tools()
    started: list[RegistryProcess] = []

    def make(auth: str | None = None, **kwargs) -> RegistryProcess:
        reg = start_registry(tmp_path_factory.mktemp(f"registry-{auth or 'anon'}"), auth=auth, **kwargs)
        started.append(reg)
        return reg

    yield make
    for reg in started:
        reg.stop()


@pytest.fixture
def registry(make_registry) -> RegistryProcess:
    """An empty anonymous registry (no auth at all)."""
    return make_registry()


@pytest.fixture
def registry_basic(make_registry) -> RegistryProcess:
    """An empty registry behind htpasswd Basic auth: ``.username`` alice / ``.password``."""
    return make_registry(auth="basic")


@pytest.fixture
def registry_token(make_registry) -> RegistryProcess:
    """An empty registry behind Bearer-token auth; ``.token_server`` issues tokens to
    ``.username`` bob / ``.password`` and records every request in ``.token_server.requests``."""
    return make_registry(auth="token")


class Seeded(NamedTuple):
    registry: RegistryProcess
    images: dict  # what imagegen.seed() returned: {"repo:tag": info}


@pytest.fixture(scope="module")
def seeded_registry(tmp_path_factory) -> Seeded:
    """An anonymous registry holding imagegen's standard set, shared by a module's tests.

    Read-only by convention: push into a ``make_registry()`` target instead.  Other tests of
    the module share its log, so count requests from a mark:
    ``m = reg.mark(); ...; reg.count("GET", "/blobs/", since=m)``.
    """
    _require_tools()
    reg = start_registry(tmp_path_factory.mktemp("registry-seeded"))
    try:
        images = imagegen.seed(reg.host)
        yield Seeded(reg, images)
    finally:
        reg.stop()
