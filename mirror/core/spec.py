"""What mirror.yaml says, as typed values: the settings of registries, the images and the
whole manifest. Pure: specfile.py reads and validates the YAML into these."""

from __future__ import annotations

from dataclasses import dataclass, field

from .platform import Platform
from .reference import Reference
from .selection import TagFilter

DEFAULT_OUTPUT = "bundles/mirror-{date}.tar"
DEFAULT_CONCURRENCY = 8
DEFAULT_RETRIES = 5
# An image's `platforms: all`: every platform, whatever the top-level `platforms:` says. Empty,
# because `platforms: []` is refused, so an empty tuple can mean nothing else; the resolver
# is given None (no filter) for it.
ALL_PLATFORMS: tuple[Platform, ...] = ()


@dataclass(frozen=True)
class RegistryConfig:
    """Settings for one registry host, as written under `registries:`."""

    username: str | None = None
    password: str | None = None
    insecure: bool = False
    ca_file: str | None = None
    max_concurrency: int | None = None
    retries: int = DEFAULT_RETRIES

    def __repr__(self) -> str:  # never print a password, even in a debugger or a traceback
        return (f"RegistryConfig(username={self.username!r}, password={'***' if self.password else None}, "
                f"insecure={self.insecure}, ca_file={self.ca_file!r}, "
                f"max_concurrency={self.max_concurrency}, retries={self.retries})")


@dataclass(frozen=True)
class ImageSpec:
    """One entry of `images:`: a repository and what to take from it."""

    where: str                      # "mirror.yaml:12 images[3]", for messages
    repository: Reference           # no tag, no digest
    tags: tuple[str, ...] = ()      # explicit tags
    tag_filter: TagFilter | None = None   # select from the registry's tag list
    digests: tuple[str, ...] = ()
    platforms: tuple[Platform, ...] | None = None   # None: the top level's; ALL_PLATFORMS: every one
    target: str | None = None
    pinned: Reference | None = None  # source written as name:tag@digest: one image, by digest
    referrers: bool | None = None    # None: the top-level setting


@dataclass(frozen=True)
class MirrorSpec:
    """The whole manifest, validated."""

    path: str
    output: str = DEFAULT_OUTPUT
    cache: str | None = None
    concurrency: int = DEFAULT_CONCURRENCY
    platforms: tuple[Platform, ...] | None = None   # None: every platform (`all` or no key)
    keep_index_digest: bool = False
    referrers: bool = False          # also mirror signatures, attestations, SBOMs pointing at images
    load_platform: Platform | None = None
    registries: dict[str, RegistryConfig] = field(default_factory=dict)
    images: tuple[ImageSpec, ...] = ()
