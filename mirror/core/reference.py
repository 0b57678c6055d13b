"""Image references: parsing and normalising `[registry/]path[:tag][@digest]`.

Follows the grammar of distribution's `reference` package (regexp.go, normalize.go):
the first path element is a registry only if it is `localhost` or contains `.` or `:`;
otherwise the image lives on Docker Hub, where a one-element path gets `library/`.

Parsing is done by hand rather than with one big regular expression so that a bad
reference can be rejected with the reason, not just "invalid reference format".
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, replace

from mirror.errors import ReferenceError_

DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"
_LEGACY_DOCKER_HUB = "index.docker.io"
_OFFICIAL_PREFIX = "library/"
NAME_MAX = 255
TAG_MAX = 128

# Go's \w is ASCII-only; re.ASCII keeps Python's \w from accepting "é" in tags.
_PATH_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*", re.ASCII)
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = re.compile(
    rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?",
    re.ASCII,
)
_TAG = re.compile(r"\w[\w.-]*", re.ASCII)
_ALGORITHM = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*", re.ASCII)
_HEX = re.compile(r"[0-9a-fA-F]{32,}", re.ASCII)
_SHA256_HEX = re.compile(r"[0-9a-f]{64}", re.ASCII)
# A bare 64-hex string is an image ID; Docker refuses it as a repository name.
_IDENTIFIER = re.compile(r"[a-f0-9]{64}", re.ASCII)


@dataclass(frozen=True)
class Reference:
    """A normalised image reference; build one with parse_reference()."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        """The repository with its registry, e.g. "docker.io/library/alpine"."""
        return f"{self.registry}/{self.repository}"

    @property
    def api_host(self) -> str:
        """The host serving the distribution API (Docker Hub's differs from its name)."""
        return DOCKER_HUB_API if self.registry == DOCKER_HUB else self.registry

    def with_tag(self, tag: str) -> Reference:
        """The same repository at another tag, without a digest."""
        _check_tag(f"{self.name}:{tag}", tag)
        return replace(self, tag=tag, digest=None)

    def with_digest(self, digest: str) -> Reference:
        """The same repository and tag, pinned to a digest."""
        _check_digest(f"{self.name}@{digest}", digest)
        return replace(self, digest=digest)

    def __str__(self) -> str:
        text = self.name
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text


def _fail(text: str, reason: str) -> ReferenceError_:
    return ReferenceError_(f'"{text}" is not a valid reference ({reason})')


def parse_reference(text: str) -> Reference:
    """Parse and normalise an image reference; no default tag is added."""
    if not isinstance(text, str):
        raise ReferenceError_(f"{text!r} is not a valid reference (expected a string)")
    if not text:
        raise _fail(text, "empty reference")
    if any(ch.isspace() for ch in text):
        raise _fail(text, "contains whitespace")
    if "://" in text:
        scheme = text.split("://", 1)[0]
        raise _fail(text, f'drop the "{scheme}://" prefix: a reference is host/path, not a URL')

    rest, at, digest = text.partition("@")
    if at and not digest:
        raise _fail(text, "empty digest after '@'")
    if "@" in digest:
        raise _fail(text, "more than one '@'")

    # The tag separator is the first ":" after the last "/": earlier colons belong
    # to the registry's port ("localhost:5000/app:1.0").
    slash = rest.rfind("/")
    colon = rest.find(":", slash + 1)
    name, tag = (rest, None) if colon < 0 else (rest[:colon], rest[colon + 1:])
    if tag == "":
        raise _fail(text, "empty tag")
    if not name:
        raise _fail(text, "missing repository name")
    if _IDENTIFIER.fullmatch(name):
        raise _fail(text, "a 64-character hex string is an image ID, not a repository name")

    registry, repository = _split_registry(name)
    if not _DOMAIN.fullmatch(registry):
        raise _fail(text, f'invalid registry host "{registry}"')
    _check_path(text, repository)

    full = f"{registry}/{repository}"
    if len(full) > NAME_MAX:
        raise _fail(text, f"repository name too long: {len(full)} characters, "
                          f"the limit is {NAME_MAX}")
    if tag is not None:
        _check_tag(text, tag)
    if digest:
        _check_digest(text, digest)
    return Reference(registry, repository, tag, digest or None)


def _split_registry(name: str) -> tuple[str, str]:
    """Split a name into registry and path, applying Docker Hub's defaults."""
    first, slash, remainder = name.partition("/")
    if slash and (first == "localhost" or "." in first or ":" in first):
        registry, path = first, remainder
    else:
        registry, path = DOCKER_HUB, name
    if registry == _LEGACY_DOCKER_HUB:
        registry = DOCKER_HUB
    if registry == DOCKER_HUB and "/" not in path:
        path = _OFFICIAL_PREFIX + path
    return registry, path


def _check_path(text: str, path: str) -> None:
    for component in path.split("/"):
        if not component:
            raise _fail(text, "empty path component: a repository path has no '//' "
                              "and no leading or trailing '/'")
        if _PATH_COMPONENT.fullmatch(component):
            continue
        if component != component.lower() and _PATH_COMPONENT.fullmatch(component.lower()):
            raise _fail(text, "repository names are lowercase")
        raise _fail(text, f'invalid characters in repository path component "{component}": '
                          "use a-z and 0-9, separated by '.', '_', '__' or dashes, "
                          "starting and ending with a letter or digit")


def _check_tag(text: str, tag: str) -> None:
    if not tag:
        raise _fail(text, "empty tag")
    if len(tag) > TAG_MAX:
        raise _fail(text, f"tag too long: {len(tag)} characters, the limit is {TAG_MAX}")
    if not _TAG.fullmatch(tag):
        raise _fail(text, f'invalid tag "{tag}": a tag holds letters, digits, '
                          "'_', '.' and '-', and cannot start with '.' or '-'")


def _check_digest(text: str, digest: str) -> None:
    algorithm, colon, encoded = digest.partition(":")
    if not colon or not algorithm:
        raise _fail(text, f'invalid digest "{digest}": expected algorithm:hex, '
                          "e.g. sha256:<64 hex characters>")
    if algorithm == "sha256":
        if _SHA256_HEX.fullmatch(encoded):
            return
        if len(encoded) != 64:
            raise _fail(text, f"sha256 digest must be 64 hex characters, got {len(encoded)}")
        if _SHA256_HEX.fullmatch(encoded.lower()):
            raise _fail(text, "sha256 digest must be 64 hex characters in lowercase")
        raise _fail(text, "sha256 digest must be 64 hex characters (0-9, a-f)")
    # Other algorithms (sha512, blake3, ...) are checked against the general grammar
    # only, as distribution's regexp does.
    if not _ALGORITHM.fullmatch(algorithm) or not _HEX.fullmatch(encoded):
        raise _fail(text, f'invalid digest "{digest}": expected algorithm:hex '
                          "with at least 32 hex characters")


def join_ref(name: str, ref: str) -> str:
    """`name:tag` or `name@sha256:…`, for messages about a tag or digest of a repository."""
    return f"{name}@{ref}" if ref.startswith("sha256:") else f"{name}:{ref}"


def is_loopback(host: str) -> bool:
    """Whether a registry host (with or without port) is this machine: Docker talks HTTP to it."""
    hostname = host
    if host.startswith("["):
        end = host.find("]")
        if end < 0:
            return False
        hostname, port = host[1:end], host[end + 1:]
        if port and not (port.startswith(":") and port[1:].isdigit()):
            return False
    elif host.count(":") == 1:
        hostname, port = host.split(":")
        if not port.isdigit():
            return False
    # Otherwise: no port, or a bare IPv6 address such as "::1".
    if hostname.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(hostname).is_loopback
    except ValueError:
        return False
