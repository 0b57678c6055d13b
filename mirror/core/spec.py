"""What mirror.yaml says, as typed values: the settings of registries, the images and the
whole manifest. Pure: specfile.py reads and validates the YAML into these."""

from __future__ import annotations

from dataclasses import dataclass, field
from fnmatch import fnmatchcase

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
    trust: TrustSpec | None = None   # signatures required before an image is mirrored


@dataclass(frozen=True)
class Keyless:
    """Sigstore keyless: who must have signed (certificate identity and issuer), checked offline
    against a trusted root carried with the manifest."""

    issuer: str
    identity: str                   # a regular expression over the certificate's SAN
    trusted_root: str               # path of trusted_root.json (resolved beside the manifest)
    root_json: bytes = field(default=b"", repr=False)


@dataclass(frozen=True)
class TrustRule:
    """One entry of `trust.policies:`; first match wins."""

    where: str                      # "mirror.yaml:14 trust.policies[0]"
    match: str                      # glob over the normalised reference (or its repository)
    signed_by: tuple[str, ...] = ()
    keyless: Keyless | None = None
    accept_unsigned: bool = False
    match_reference: bool = False

    def matches(self, reference: str, repository: str) -> bool:
        return fnmatchcase(reference, self.match) or fnmatchcase(repository, self.match)

    @property
    def name(self) -> str:
        return f"{self.match} ({self.where})"


@dataclass(frozen=True)
class TrustSpec:
    """`trust:`: named public keys (PEM bytes, read when the manifest is) and the policies."""

    keys: dict[str, bytes] = field(default_factory=dict, repr=False)
    key_files: dict[str, str] = field(default_factory=dict)
    policies: tuple[TrustRule, ...] = ()

    def rule_for(self, reference: str, repository: str) -> TrustRule | None:
        """The first policy whose `match` covers this image; None: the image is not checked."""
        return next((r for r in self.policies if r.matches(reference, repository)), None)
