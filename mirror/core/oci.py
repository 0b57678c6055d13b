"""OCI and Docker vocabulary: digests, media types, descriptors, and reading manifests.

Manifests are parsed here for reading only. Their raw bytes are what imgmirror stores and writes;
nothing in this module re-serialises a manifest it was given.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

from ..errors import DigestMismatchError, UnsupportedManifestError

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_SCHEMA1 = ("application/vnd.docker.distribution.manifest.v1+json",
                  "application/vnd.docker.distribution.manifest.v1+prettyjws")

INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_LIST})
# Layers that must not be redistributed: fetched only from their own `urls`, not mirrored.
FOREIGN_LAYER_TYPES = frozenset({
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
})
IMAGE_CONFIG_TYPES = frozenset({OCI_CONFIG, DOCKER_CONFIG})   # a runnable image's config; an artifact's is any blob
MAX_CONFIG_READ = 4 << 20    # an image config read whole for its platform: never more than this
IMAGE_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
MANIFEST_TYPES = INDEX_TYPES | IMAGE_TYPES
# Every kind imgmirror can mirror, listed in Accept: without them a registry may downgrade to
# schema1 or answer with one platform's manifest, and the digest would differ from `docker pull`.
ACCEPT = ", ".join([OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST])

# buildx attaches provenance/SBOM as image manifests inside the index, marked by these annotations.
ATTESTATION_TYPE = "vnd.docker.reference.type"
ATTESTATION_DIGEST = "vnd.docker.reference.digest"

ANN_REF_NAME = "org.opencontainers.image.ref.name"
ANN_CONTAINERD_NAME = "io.containerd.image.name"
ANN_SOURCE_DIGEST = "io.imgmirror.source.digest"
ANN_TARGET = "io.imgmirror.target"     # mirror.yaml's target: path, for imgmirror push

_DIGEST_RE = re.compile(r"^sha256:[a-f0-9]{64}$")


def sha256_digest(data: bytes) -> str:
    """The `sha256:<hex>` digest of some bytes."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def digest_hex(digest: str) -> str:
    """The hex part of a sha256 digest, validated (it becomes a file name)."""
    if not _DIGEST_RE.match(digest):
        raise DigestMismatchError(f"unsupported or malformed digest {digest!r} (only sha256 is supported)")
    return digest.split(":", 1)[1]


def verify_bytes(data: bytes, digest: str, what: str) -> None:
    """Raise DigestMismatchError unless `data` hashes to `digest`."""
    got = sha256_digest(data)
    if got != digest:
        raise DigestMismatchError(f"{what}: content has digest {got}, expected {digest}")


@dataclass(frozen=True)
class Descriptor:
    """A content descriptor: what a manifest says about a blob or child manifest."""

    media_type: str
    digest: str
    size: int
    platform: dict | None = None
    annotations: dict = field(default_factory=dict, compare=False, hash=False)
    urls: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, obj: Any, where: str) -> Descriptor:
        """Read a descriptor object, refusing ones whose fields are missing or malformed."""
        if not isinstance(obj, dict):
            raise UnsupportedManifestError(f"{where}: descriptor is not an object")
        digest, size = obj.get("digest"), obj.get("size")
        if not isinstance(digest, str) or not _DIGEST_RE.match(digest):
            raise UnsupportedManifestError(f"{where}: descriptor has a missing or unsupported digest {digest!r}")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise UnsupportedManifestError(f"{where}: descriptor {digest} has an invalid size {size!r}")
        annotations, urls = obj.get("annotations") or {}, obj.get("urls") or []
        if not isinstance(annotations, dict):
            raise UnsupportedManifestError(f"{where}: descriptor {digest} has annotations that are not an object")
        if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
            raise UnsupportedManifestError(f"{where}: descriptor {digest} has urls that are not a list of strings")
        return cls(media_type=str(obj.get("mediaType", "")), digest=digest, size=size,
                   platform=obj.get("platform") if isinstance(obj.get("platform"), dict) else None,
                   annotations=dict(annotations), urls=tuple(urls))

    def to_json(self) -> dict:
        """The descriptor as a JSON object (for index.json and rewritten indexes)."""
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.urls:
            out["urls"] = list(self.urls)
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        if self.platform:
            out["platform"] = self.platform
        return out

    @property
    def is_foreign(self) -> bool:
        """A non-distributable layer, fetched from its own `urls` by whoever pulls: not mirrored."""
        return bool(self.urls) or self.media_type in FOREIGN_LAYER_TYPES

    @property
    def is_attestation(self) -> bool:
        """True for a buildx attestation manifest inside an index."""
        return self.annotations.get(ATTESTATION_TYPE) == "attestation-manifest"


@dataclass(frozen=True)
class Manifest:
    """A parsed manifest or index, with the exact bytes it came from."""

    raw: bytes
    media_type: str
    digest: str
    children: tuple[Descriptor, ...] = ()      # index: child manifests
    config: Descriptor | None = None           # image: config blob
    layers: tuple[Descriptor, ...] = ()        # image: layer blobs
    annotations: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEX_TYPES

    @property
    def blobs(self) -> tuple[Descriptor, ...]:
        """The blobs an image manifest needs: config first, then layers."""
        return ((self.config,) if self.config else ()) + self.layers


def json_problem(exc: Exception) -> str:
    """What is wrong with some JSON, in words: json.loads raises RecursionError on [[[[…."""
    if isinstance(exc, RecursionError):
        return "arrays or objects nested too deep"
    return str(exc)[:200]


def parse_manifest(raw: bytes, media_type: str | None, where: str) -> Manifest:
    """Parse raw manifest bytes; `media_type` is the Content-Type when the body lacks one."""
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise UnsupportedManifestError(f"{where}: manifest is not valid JSON ({json_problem(exc)})") from None
    if not isinstance(obj, dict):
        raise UnsupportedManifestError(f"{where}: manifest is not a JSON object")
    body_type = obj.get("mediaType")
    mt = body_type if isinstance(body_type, str) and body_type else (media_type or "").split(";")[0].strip()
    if obj.get("schemaVersion") == 1 or mt in DOCKER_SCHEMA1:
        raise UnsupportedManifestError(
            f"{where}: Docker schema1 manifests are deprecated and not mirrored; "
            "re-push the image with a current docker or skopeo to convert it")
    if not mt:
        # OCI allows mediaType to be absent; tell index from image by shape.
        mt = OCI_INDEX if "manifests" in obj else OCI_MANIFEST
    if mt not in MANIFEST_TYPES:
        raise UnsupportedManifestError(f"{where}: unsupported manifest media type {mt!r}")
    digest = sha256_digest(raw)
    ann = obj.get("annotations") or {}
    if not isinstance(ann, dict):
        raise UnsupportedManifestError(f"{where}: manifest annotations are not an object")
    ann = dict(ann)
    if mt in INDEX_TYPES:
        children = obj.get("manifests")
        if not isinstance(children, list):
            raise UnsupportedManifestError(f"{where}: index has no 'manifests' list")
        return Manifest(raw, mt, digest, annotations=ann, children=tuple(
            Descriptor.from_json(c, f"{where} manifests[{i}]") for i, c in enumerate(children)))
    layers = obj.get("layers")
    if not isinstance(layers, list):
        raise UnsupportedManifestError(f"{where}: image manifest has no 'layers' list")
    return Manifest(raw, mt, digest, annotations=ann,
                    config=Descriptor.from_json(obj.get("config"), f"{where} config"),
                    layers=tuple(Descriptor.from_json(x, f"{where} layers[{i}]")
                                 for i, x in enumerate(layers)))


def image_platform(config_raw: bytes) -> dict | None:
    """The platform object (os, architecture, variant) that an image config declares."""
    try:
        cfg = json.loads(config_raw)
    except ValueError:
        return None
    if not isinstance(cfg, dict) or "architecture" not in cfg:
        return None
    out = {"architecture": cfg.get("architecture", ""), "os": cfg.get("os", "")}
    if cfg.get("variant"):
        out["variant"] = cfg["variant"]
    return out
