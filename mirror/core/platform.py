"""Platforms (os/architecture/variant), normalised the way containerd's platforms package does.

Registries and users spell the same platform many ways (`x86_64`, `aarch64`, `arm64/v8`,
`armhf`); normalising once, when a Platform is built, lets matching be plain equality.
`os.version` and `os.features` are deliberately ignored: imgmirror selects by os/arch/variant.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mirror.errors import PlatformError

# containerd's specifier grammar for each part of "os/arch/variant".
_PART = re.compile(r"[A-Za-z0-9_.-]+", re.ASCII)
_NUMERIC_VARIANT = re.compile(r"\d+(?:\.\d+)?", re.ASCII)
_POINT_ZERO = re.compile(r"(v\d+)\.0", re.ASCII)

_OS_ALIASES = {"macos": "darwin"}
_ARCH_ALIASES = {
    "x86_64": "amd64", "x86-64": "amd64",
    "aarch64": "arm64",
    "i386": "386", "i686": "386",
}
# Each architecture's default variant, which is never stored or printed.
_DEFAULT_VARIANT = {"amd64": "v1", "arm64": "v8"}


def _normalize(os: str, architecture: str, variant: str) -> tuple[str, str, str]:
    os, architecture, variant = os.lower(), architecture.lower(), variant.lower()
    os = _OS_ALIASES.get(os, os)
    # Debian's names carry the variant in the architecture.
    if architecture == "armhf":
        return os, "arm", "v7"
    if architecture == "armel":
        return os, "arm", "v6"
    if architecture in ("i386", "i686"):
        return os, "386", ""  # containerd drops the variant of i386 too
    architecture = _ARCH_ALIASES.get(architecture, architecture)
    # "7" and "v7", "v8.0" and "v8" are the same variant.
    if _NUMERIC_VARIANT.fullmatch(variant):
        variant = "v" + variant
    if m := _POINT_ZERO.fullmatch(variant):
        variant = m.group(1)
    if architecture == "arm" and not variant:
        variant = "v7"  # an arm image without a variant is built for v7
    if _DEFAULT_VARIANT.get(architecture) == variant:
        variant = ""
    return os, architecture, variant


@dataclass(frozen=True, order=True)
class Platform:
    """An os/architecture/variant triple, normalised on construction."""

    os: str
    architecture: str
    variant: str = ""

    def __post_init__(self) -> None:
        os, architecture, variant = _normalize(self.os, self.architecture, self.variant)
        # Normalising here, not only in the parsers, keeps Platform("linux", "x86_64")
        # equal to parse_platform("linux/amd64") however a Platform was built.
        object.__setattr__(self, "os", os)
        object.__setattr__(self, "architecture", architecture)
        object.__setattr__(self, "variant", variant)

    def __str__(self) -> str:
        if self.variant:
            return f"{self.os}/{self.architecture}/{self.variant}"
        return f"{self.os}/{self.architecture}"


def parse_platform(text: str) -> Platform:
    """Parse "os/arch" or "os/arch/variant", e.g. "linux/arm/v7"."""
    if not isinstance(text, str):
        raise PlatformError(f"{text!r} is not a valid platform (expected a string "
                            "like linux/amd64)")
    parts = text.strip().split("/")
    reason = None
    if not text.strip():
        reason = "empty platform"
    elif len(parts) < 2:
        reason = "both an os and an architecture are needed"
    elif len(parts) > 3:
        reason = "too many parts"
    elif not all(parts):
        reason = "empty part"
    else:
        bad = next((p for p in parts if not _PART.fullmatch(p)), None)
        if bad is not None:
            reason = f'invalid characters in "{bad}"'
    if reason:
        raise PlatformError(f'"{text}" is not a valid platform ({reason}; expected os/arch '
                            "or os/arch/variant, e.g. linux/amd64 or linux/arm/v7)")
    return Platform(*parts)


def from_oci(obj: dict | None) -> Platform | None:
    """The platform of a descriptor's "platform" object; None if absent or incomplete."""
    if not isinstance(obj, dict):
        return None
    os, architecture = obj.get("os"), obj.get("architecture")
    variant = obj.get("variant") or ""
    # A descriptor without os or architecture cannot match anything we could ask for;
    # treating it as "no platform" lets callers handle it like an unplatformed child.
    if not (isinstance(os, str) and os and isinstance(architecture, str) and architecture):
        return None
    if not isinstance(variant, str):
        return None
    return Platform(os, architecture, variant)


def matches(wanted: Platform, actual: Platform) -> bool:
    """Whether a manifest for `actual` is what was asked for with `wanted`."""
    # Both sides are normalised on construction, so arm64 == arm64/v8 and
    # arm == arm/v7 already hold; anything looser (amd64 accepting amd64/v3, arm64
    # accepting arm/v7 as containerd's runtime matcher does) would mirror images a
    # user did not ask for.
    return wanted == actual
