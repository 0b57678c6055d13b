"""Generate small, reproducible container images locally and push them to test registries.

Everything here is built from seeded pseudo-random bytes, so the same call gives the same
bytes (and so the same digests) on every run; nothing is downloaded.

Building blocks
---------------
- :func:`make_layer` - a real tar archive (one data file plus a small text file), gzip'd with
  ``mtime=0`` (or left uncompressed), as a :class:`Layer` that knows its ``diff_id``.
- :func:`make_image` - one image manifest plus config (OCI, or Docker schema2 with
  ``docker=True``) over a list of layers.  Pass the same layer objects to several images to get
  shared blobs (cross-repository mounts, de-duplication in a bundle).
- :func:`make_index` - an OCI image index or (``docker=True``) a Docker manifest list over images
  built with a ``platform``; :func:`make_multiarch` adds buildx-style attestation manifests.
- :func:`write_layout` - write any of these as an OCI image layout directory.
- :func:`push` - push an image/index (or a layout directory) with skopeo, then prove with
  ``skopeo inspect --raw`` that the registry serves exactly the bytes that were built.
- :func:`seed` - push the standard set of test repositories and describe them.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import gzip
import hashlib
import io
import json
import os
import random
import shutil
import subprocess
import tarfile
import tempfile
import urllib.parse
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from collections.abc import Iterable

# --------------------------------------------------------------------------------------------
# Media types
# --------------------------------------------------------------------------------------------

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
IN_TOTO = "application/vnd.in-toto+json"

INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
#: What a client should send in ``Accept`` to get any manifest unchanged.
ACCEPT_ALL = ", ".join((OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST))

ATTESTATION_PLATFORM = {"architecture": "unknown", "os": "unknown"}
#: Platforms of the standard multi-arch image, in index order.
MULTIARCH_PLATFORMS = (
    {"architecture": "amd64", "os": "linux"},
    {"architecture": "arm64", "os": "linux", "variant": "v8"},
    {"architecture": "arm", "os": "linux", "variant": "v7"},
)

# All JSON we build is serialised one way, so a document's bytes depend only on its content.
def _json_bytes(doc: dict) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------------------------
# Data model
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Blob:
    """Bytes plus the media type they are referenced with."""

    media_type: str
    data: bytes = field(repr=False)

    @cached_property
    def digest(self) -> str:
        return sha256_digest(self.data)

    @property
    def size(self) -> int:
        return len(self.data)

    def descriptor(self, **extra) -> dict:
        """An OCI descriptor for this blob; ``extra`` adds fields (platform, annotations...)."""
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size, **extra}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.media_type!r}, {self.digest[:19]}..., {self.size} B)"


@dataclass(frozen=True, eq=False, repr=False)
class Layer(Blob):
    """A layer blob; ``diff_id`` is the sha256 of the uncompressed tar (what the config lists)."""

    diff_id: str = ""


@dataclass(frozen=True, eq=False)
class Image:
    """A single-platform image: manifest bytes, config blob and layer blobs."""

    manifest: Blob
    config: Blob
    layers: tuple[Layer, ...]
    #: The platform this image was built for ({"architecture","os"[,"variant"]}), as it goes
    #: into an index descriptor.  Attestation manifests use {"os":"unknown","architecture":"unknown"}.
    platform: dict | None = None

    @property
    def digest(self) -> str:
        return self.manifest.digest

    @property
    def media_type(self) -> str:
        return self.manifest.media_type

    @property
    def raw(self) -> bytes:
        return self.manifest.data

    def blobs(self) -> list[Blob]:
        """Config and layers (the things uploaded with ``/blobs/``), without duplicates."""
        return _unique([self.config, *self.layers])

    def manifests(self) -> list[Blob]:
        """Manifests to upload, children first (here: just this one)."""
        return [self.manifest]


@dataclass(frozen=True, eq=False)
class Index:
    """An OCI image index or Docker manifest list over :class:`Image` children."""

    manifest: Blob
    children: tuple[Image, ...]

    @property
    def digest(self) -> str:
        return self.manifest.digest

    @property
    def media_type(self) -> str:
        return self.manifest.media_type

    @property
    def raw(self) -> bytes:
        return self.manifest.data

    def blobs(self) -> list[Blob]:
        return _unique(b for child in self.children for b in child.blobs())

    def manifests(self) -> list[Blob]:
        """Child manifests first, then the index: the order a registry accepts them in."""
        return _unique([*(c.manifest for c in self.children), self.manifest])

    def descriptors(self) -> list[dict]:
        """The ``manifests`` entries of the index, as written in its JSON."""
        return json.loads(self.raw)["manifests"]


Artifact = Image | Index


def _unique(blobs: Iterable[Blob]) -> list[Blob]:
    seen: dict[str, Blob] = {}
    for b in blobs:
        seen.setdefault(b.digest, b)
    return list(seen.values())


# --------------------------------------------------------------------------------------------
# Builders
# --------------------------------------------------------------------------------------------


def random_bytes(seed: int | str, size: int) -> bytes:
    """``size`` pseudo-random bytes fully determined by ``seed`` (int or str).

    ``random.Random`` seeds a str through sha512, so this does not depend on PYTHONHASHSEED.
    Random bytes do not compress, so a layer's blob is about ``size`` bytes even when gzip'd.
    """
    return random.Random(seed).randbytes(size)


def _tar(files: dict[str, bytes]) -> bytes:
    """A reproducible tar: fixed mtime/owner/mode, entries in the given order."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dirs_done: set[str] = set()
        for name, content in files.items():
            # Parent directories first, as real image builders write them.
            parts = name.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                d = "/".join(parts[:i])
                if d not in dirs_done:
                    dirs_done.add(d)
                    info = tarfile.TarInfo(d + "/")
                    info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
                    tar.addfile(info)
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(content), 0o644, 0
            tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()


def make_layer(
    seed: int | str,
    size: int = 4096,
    *,
    compressed: bool = True,
    docker: bool = False,
    compresslevel: int = 1,
) -> Layer:
    """A layer whose tar holds ``data/<seed>.bin`` (``size`` seeded random bytes) and a
    small ``etc/imgmirror/<seed>.txt``.

    gzip uses ``mtime=0`` (the header would otherwise carry the current time) and, by default,
    level 1: random data does not compress anyway and a benchmark can build multi-MiB layers
    fast (8 MiB in ~0.3 s).  The bytes are reproducible for a given zlib; compare digests with
    what the builders return rather than hard-coding them in tests.  ``compressed=False`` gives an ``application/vnd.oci.image.layer.v1.tar`` layer
    whose digest equals its diff_id; ``docker=True`` uses the Docker rootfs media type.
    """
    name = str(seed).replace("/", "_")
    tar = _tar(
        {
            f"etc/imgmirror/{name}.txt": f"imgmirror test layer {seed}\n".encode(),
            f"data/{name}.bin": random_bytes(f"layer:{seed}", size),
        }
    )
    diff_id = sha256_digest(tar)
    if not compressed:
        if docker:
            # Docker schema2 has no separate uncompressed-layer type worth testing here.
            raise ValueError("uncompressed layers are only built as OCI layers")
        return Layer(OCI_LAYER, tar, diff_id=diff_id)
    data = gzip.compress(tar, compresslevel=compresslevel, mtime=0)
    return Layer(DOCKER_LAYER_GZIP if docker else OCI_LAYER_GZIP, data, diff_id=diff_id)


def make_image(
    layers: Iterable[Layer],
    *,
    platform: dict | None = None,
    docker: bool = False,
    labels: dict | None = None,
    annotations: dict | None = None,
) -> Image:
    """An image over ``layers`` (bottom first) with a valid config.

    ``platform`` defaults to linux/amd64; it goes into the config (architecture, os, variant)
    and is remembered for :func:`make_index`.  ``docker=True`` builds a Docker schema2
    manifest and config (layers should then be made with ``docker=True`` too).
    ``labels`` vary the config (and so the digest) for images over the same layers.
    """
    layers = tuple(layers)
    platform = dict(platform or {"architecture": "amd64", "os": "linux"})
    config_doc = {
        "created": "1970-01-01T00:00:00Z",
        "architecture": platform["architecture"],
        "os": platform["os"],
        **({"variant": platform["variant"]} if "variant" in platform else {}),
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["/bin/sh"],
            "Labels": dict(labels or {}),
        },
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
        "history": [
            {"created": "1970-01-01T00:00:00Z", "created_by": f"imagegen layer {layer.digest[:19]}"}
            for layer in layers
        ],
    }
    config = Blob(DOCKER_CONFIG if docker else OCI_CONFIG, _json_bytes(config_doc))
    mtype = DOCKER_MANIFEST if docker else OCI_MANIFEST
    manifest_doc = {
        "schemaVersion": 2,
        "mediaType": mtype,
        "config": config.descriptor(),
        "layers": [layer.descriptor() for layer in layers],
    }
    if annotations:
        if docker:
            raise ValueError("Docker schema2 manifests have no annotations")
        manifest_doc["annotations"] = dict(annotations)
    return Image(Blob(mtype, _json_bytes(manifest_doc)), config, layers, platform)


def make_attestation(subject: Image, *, ref: str = "test/multi:1.0") -> Image:
    """A buildx-style attestation manifest (an SPDX in-toto statement) for ``subject``.

    Like buildx: config with os/architecture "unknown", one ``application/vnd.in-toto+json``
    layer whose diff_id is its own digest (it is not compressed).  The index descriptor that
    points at it carries the ``vnd.docker.reference.*`` annotations (see :func:`make_index`).
    """
    p = subject.platform or {}
    plat = "/".join(x for x in (p.get("os"), p.get("architecture"), p.get("variant")) if x)
    statement = {
        "_type": "https://in-toto.io/Statement/v0.1",
        "predicateType": "https://spdx.dev/Document",
        "subject": [
            {
                "name": f"pkg:docker/{ref}?platform={urllib.parse.quote(plat, safe='')}",
                "digest": {"sha256": subject.digest.split(":", 1)[1]},
            }
        ],
        "predicate": {"spdxVersion": "SPDX-2.3", "name": f"sbom-{plat}", "packages": []},
    }
    layer_bytes = _json_bytes(statement)
    layer = Layer(IN_TOTO, layer_bytes, diff_id=sha256_digest(layer_bytes))
    config = Blob(
        OCI_CONFIG,
        _json_bytes(
            {
                **ATTESTATION_PLATFORM,
                "config": {},
                "rootfs": {"type": "layers", "diff_ids": [layer.diff_id]},
            }
        ),
    )
    layer_desc = layer.descriptor(annotations={"in-toto.io/predicate-type": "https://spdx.dev/Document"})
    manifest_doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config.descriptor(),
        "layers": [layer_desc],
    }
    return Image(Blob(OCI_MANIFEST, _json_bytes(manifest_doc)), config, (layer,), dict(ATTESTATION_PLATFORM))


def make_index(
    images: Iterable[Image],
    *,
    docker: bool = False,
    attestations: dict[str, Image] | None = None,
    annotations: dict | None = None,
) -> Index:
    """An OCI index (or with ``docker=True`` a Docker manifest list) over ``images``.

    Each image's ``platform`` becomes its descriptor's platform.  ``attestations`` maps a
    platform image's digest to its attestation manifest; those are listed after all platform
    images, as buildx does, with platform unknown/unknown and the annotations
    ``vnd.docker.reference.type: attestation-manifest`` and
    ``vnd.docker.reference.digest: <platform manifest digest>``.
    """
    images = list(images)
    entries: list[dict] = [img.manifest.descriptor(platform=img.platform) for img in images]
    children = list(images)
    for subject_digest, att in (attestations or {}).items():
        entries.append(
            att.manifest.descriptor(
                annotations={
                    "vnd.docker.reference.digest": subject_digest,
                    "vnd.docker.reference.type": "attestation-manifest",
                },
                platform=dict(ATTESTATION_PLATFORM),
            )
        )
        children.append(att)
    mtype = DOCKER_LIST if docker else OCI_INDEX
    if docker and (attestations or annotations):
        raise ValueError("attestations/annotations are only built into OCI indexes")
    if docker and any(img.media_type != DOCKER_MANIFEST for img in images):
        raise ValueError("a Docker manifest list must list Docker schema2 manifests")
    doc = {"schemaVersion": 2, "mediaType": mtype, "manifests": entries}
    if annotations:
        doc["annotations"] = dict(annotations)
    return Index(Blob(mtype, _json_bytes(doc)), tuple(children))


def make_multiarch(
    seed: int | str,
    *,
    docker: bool = False,
    attestations: bool = True,
    size: int = 4096,
    platforms: Iterable[dict] = MULTIARCH_PLATFORMS,
    ref: str = "test/multi:1.0",
) -> Index:
    """The standard multi-arch image: linux/amd64, linux/arm64/v8, linux/arm/v7, each with
    its own layer, plus (OCI only, by default) one attestation manifest per platform."""
    images = []
    for plat in platforms:
        tag = "-".join(v for v in (plat["os"], plat["architecture"], plat.get("variant")) if v)
        layer = make_layer(f"{seed}:{tag}", size, docker=docker)
        images.append(make_image([layer], platform=plat, docker=docker))
    atts = None
    if attestations and not docker:
        atts = {img.digest: make_attestation(img, ref=ref) for img in images}
    return make_index(images, docker=docker, attestations=atts)


# --------------------------------------------------------------------------------------------
# OCI image layout
# --------------------------------------------------------------------------------------------


def write_layout(path: str | os.PathLike, artifact: Artifact, *, ref_name: str | None = None) -> Path:
    """Write ``artifact`` into an OCI image layout at ``path`` and return the path.

    Calling it again on the same path adds another entry to ``index.json`` (a multi-image
    layout); blobs are shared.  ``ref_name`` becomes the entry's
    ``org.opencontainers.image.ref.name`` annotation.
    """
    root = Path(path)
    blobdir = root / "blobs" / "sha256"
    blobdir.mkdir(parents=True, exist_ok=True)
    (root / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    for b in [*artifact.blobs(), *artifact.manifests()]:
        target = blobdir / b.digest.split(":", 1)[1]
        if not target.exists():
            target.write_bytes(b.data)
    index_path = root / "index.json"
    index = (
        json.loads(index_path.read_text())
        if index_path.exists()
        else {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
    )
    extra = {"annotations": {"org.opencontainers.image.ref.name": ref_name}} if ref_name else {}
    index["manifests"].append(artifact.manifest.descriptor(**extra))
    index_path.write_text(json.dumps(index, indent=2))
    return root


# --------------------------------------------------------------------------------------------
# Pushing
# --------------------------------------------------------------------------------------------

Creds = None | str | tuple[str, str]


class PushError(RuntimeError):
    """A push failed, or the registry does not serve the bytes that were built."""


def _creds_str(creds: Creds) -> str | None:
    if creds is None or isinstance(creds, str):
        return creds
    return f"{creds[0]}:{creds[1]}"


_AUTHFILE: str | None = None


def _skopeo(*args: str, timeout: float = 120) -> bytes:
    """Run skopeo with an empty auth file, so a developer's own ~/.docker/config.json or
    containers auth.json never leaks into a test; policy checks are off (we push our own
    unsigned images to throwaway registries)."""
    global _AUTHFILE
    if shutil.which("skopeo") is None:
        raise PushError("skopeo is not installed: apt-get install skopeo")
    if _AUTHFILE is None or not os.path.exists(_AUTHFILE):
        fd, _AUTHFILE = tempfile.mkstemp(prefix="imagegen-auth-", suffix=".json")
        os.write(fd, b'{"auths":{}}')
        os.close(fd)
        atexit.register(lambda path=_AUTHFILE: os.path.exists(path) and os.unlink(path))
    # `copy` and `inspect` both take --authfile; it must follow the subcommand.
    cmd = ["skopeo", "--insecure-policy", args[0], "--authfile", _AUTHFILE, *args[1:]]
    proc = subprocess.run(cmd, capture_output=True, timeout=timeout)
    if proc.returncode != 0:
        raise PushError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.decode(errors='replace')}")
    return proc.stdout


def inspect_raw(host: str, ref: str, creds: Creds = None) -> bytes:
    """The exact manifest bytes the registry serves for ``repo:tag`` or ``repo@digest``."""
    args = ["inspect", "--raw", "--tls-verify=false"]
    if creds:
        args += ["--creds", _creds_str(creds)]
    return _skopeo(*args, f"docker://{host}/{ref}")


def _layout_top(path: Path, ref_name: str | None) -> tuple[str, str]:
    """(digest, media type) of the entry of an OCI layout that skopeo will copy."""
    entries = json.loads((path / "index.json").read_text())["manifests"]
    if ref_name is not None:
        entries = [
            e for e in entries if e.get("annotations", {}).get("org.opencontainers.image.ref.name") == ref_name
        ]
    if len(entries) != 1:
        raise PushError(f"{path}: need exactly one manifest (give ref_name), found {len(entries)}")
    return entries[0]["digest"], entries[0]["mediaType"]


def push(
    artifact: Artifact | str | os.PathLike,
    host: str,
    repo: str,
    tag: str,
    creds: Creds = None,
    *,
    ref_name: str | None = None,
) -> str:
    """Push an :class:`Image`/:class:`Index` (or an OCI layout directory) to
    ``host/repo:tag`` and return its manifest digest.

    Uses ``skopeo copy --all --preserve-digests`` from an ``oci:`` layout, then reads the
    manifest back with ``skopeo inspect --raw`` and raises :class:`PushError` unless its sha256
    is the digest that was built: a registry or copier that rewrote the manifest would make
    every digest assertion in the tests meaningless.

    ``creds`` is ``"user:pass"`` or ``(user, pass)``; ``ref_name`` picks an entry of a
    multi-image layout directory.

    No raw-HTTP fallback is needed: skopeo 1.9.3 copies Docker schema2 manifests and Docker
    manifest lists out of an ``oci:`` layout byte for byte too (it takes the manifest as is
    and, with ``--preserve-digests``, refuses any conversion), which the read-back proves.
    """
    with tempfile.TemporaryDirectory(prefix="imagegen-") as tmp:
        if isinstance(artifact, (Image, Index)):
            layout = write_layout(Path(tmp) / "layout", artifact)
            digest = artifact.digest
        else:
            layout = Path(artifact)
            digest, _ = _layout_top(layout, ref_name)
        src = f"oci:{layout}" + (f":{ref_name}" if ref_name else "")
        args = ["copy", "--all", "--preserve-digests", "--quiet", "--dest-tls-verify=false"]
        if creds:
            args += ["--dest-creds", _creds_str(creds)]
        _skopeo(*args, src, f"docker://{host}/{repo}:{tag}")
    got = sha256_digest(inspect_raw(host, f"{repo}:{tag}", creds))
    if got != digest:
        raise PushError(f"{host}/{repo}:{tag}: registry serves {got}, built {digest}")
    return digest


# --------------------------------------------------------------------------------------------
# The standard test set
# --------------------------------------------------------------------------------------------

#: Tags of ``test/tags`` for tag-selection tests; ``latest`` is the same image as ``v2.0.0``.
TAGS = ("v1.0.0", "v1.2.0", "v1.4.1", "v1.5.0-rc1", "v2.0.0", "latest", "nightly")


def describe(artifact: Artifact) -> dict:
    """What tests need to know about a built artifact (see :func:`seed`)."""
    info: dict = {
        "digest": artifact.digest,
        "media_type": artifact.media_type,
        "size": len(artifact.raw),
        "raw": artifact.raw,
        "blobs": [b.digest for b in artifact.blobs()],
        "artifact": artifact,
    }
    if isinstance(artifact, Image):
        info["config"] = artifact.config.digest
        info["layers"] = [layer.digest for layer in artifact.layers]
        info["platform"] = artifact.platform
    else:
        by_digest = {c.digest: c for c in artifact.children}
        children = []
        for desc in artifact.descriptors():
            child = by_digest[desc["digest"]]
            ann = desc.get("annotations", {})
            children.append(
                {
                    "digest": desc["digest"],
                    "media_type": desc["mediaType"],
                    "platform": desc.get("platform"),
                    "annotations": ann,
                    "attestation": ann.get("vnd.docker.reference.type") == "attestation-manifest",
                    "config": child.config.digest,
                    "layers": [layer.digest for layer in child.layers],
                    "blobs": [b.digest for b in child.blobs()],
                }
            )
        info["children"] = children
    return info


def standard_set() -> dict[str, Artifact]:
    """The images :func:`seed` pushes, by ``repo:tag``; deterministic, built in memory."""
    # Two base layers shared by test/base, test/app-a and test/app-b (and one by test/tags).
    base1 = make_layer("base-1", 4096)
    base2 = make_layer("base-2", 2048)
    images: dict[str, Artifact] = {
        "test/base:1.0": make_image([base1, base2], labels={"name": "base"}),
        "test/app-a:1.0": make_image([base1, base2, make_layer("app-a", 3072)], labels={"name": "app-a"}),
        "test/app-b:1.0": make_image([base1, base2, make_layer("app-b", 3072)], labels={"name": "app-b"}),
        "test/multi:1.0": make_multiarch("multi", ref="test/multi:1.0"),
        "test/dockerv2:1.0": make_image([make_layer("dockerv2", 4096, docker=True)], docker=True),
        "test/dockerlist:1.0": make_multiarch("dockerlist", docker=True),
        "test/raw:1.0": make_image([make_layer("raw", 4096, compressed=False)], labels={"name": "raw"}),
    }
    for tag in TAGS:
        if tag == "latest":
            continue
        images[f"test/tags:{tag}"] = make_image([base1, make_layer(f"tags-{tag}", 512)], labels={"version": tag})
    images["test/tags:latest"] = images["test/tags:v2.0.0"]
    return images


def seed(host: str, creds: Creds = None, *, workers: int = 4) -> dict:
    """Push the standard test set to ``host`` and describe it.

    Returns ``{"repo:tag": info}`` for these references::

        test/base:1.0        OCI image, 2 layers (base-1, base-2)
        test/app-a:1.0       OCI image, base-1 + base-2 + own layer
        test/app-b:1.0       OCI image, base-1 + base-2 + own layer
        test/multi:1.0       OCI index: linux/amd64, linux/arm64/v8, linux/arm/v7 + 3 attestations
        test/dockerv2:1.0    Docker schema2 image
        test/dockerlist:1.0  Docker manifest list: the same three platforms, no attestations
        test/raw:1.0         OCI image with one uncompressed (application/vnd.oci.image.layer.v1.tar) layer
        test/tags:<tag>      for tag in TAGS; base-1 + own layer; latest == v2.0.0

    Each info holds ``repo``, ``tag``, ``ref`` (``host/repo:tag``), ``digest``, ``media_type``,
    ``size``, ``raw`` (manifest bytes), ``blobs`` (all config/layer digests, children
    included), ``artifact`` (the :class:`Image`/:class:`Index`); images also ``config``,
    ``layers``, ``platform``; indexes ``children``: one dict per index entry, in order, with
    ``digest``, ``media_type``, ``platform``, ``annotations``, ``attestation`` (bool),
    ``config``, ``layers``, ``blobs``.  ``test/app-a:1.0`` and ``test/app-b:1.0`` also carry
    ``base_layers`` (the layer digests they share with ``test/base:1.0``).

    Pushes run in a few threads (each is a skopeo process); every push is verified digest for
    digest (see :func:`push`).
    """
    images = standard_set()
    # One thread per repository, tags of a repository one after the other: distribution 2.8's
    # filesystem driver writes a repository's blob link file in place (not atomically), so a
    # HEAD racing a concurrent upload of the same blob into the same repository reads an
    # empty link and answers 500 "invalid checksum digest format".  Different repositories
    # are safe (blob data is committed by rename).
    by_repo: dict[str, list[tuple[str, Artifact]]] = {}
    for ref, art in images.items():
        repo, tag = ref.rsplit(":", 1)
        by_repo.setdefault(repo, []).append((tag, art))

    def push_repo(repo: str) -> None:
        for tag, art in by_repo[repo]:
            push(art, host, repo, tag, creds)

    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        # The longest queue first, so it does not start last.
        order = sorted(by_repo, key=lambda r: -len(by_repo[r]))
        for fut in [pool.submit(push_repo, repo) for repo in order]:
            fut.result()  # re-raises a PushError
    out = {}
    base_layers = [layer.digest for layer in images["test/base:1.0"].layers]
    for ref, art in images.items():
        repo, tag = ref.rsplit(":", 1)
        info = {"repo": repo, "tag": tag, "ref": f"{host}/{ref}", **describe(art)}
        if repo in ("test/app-a", "test/app-b"):
            info["base_layers"] = list(base_layers)
        out[ref] = info
    return out


# --------------------------------------------------------------------------------------------
# Referrers: OCI 1.1 artifacts with a subject, the fallback tag index, cosign-style signatures
# --------------------------------------------------------------------------------------------

OCI_EMPTY = "application/vnd.oci.empty.v1+json"
COSIGN_SIMPLESIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
#: The OCI empty descriptor's blob: exactly the two bytes ``{}``.
EMPTY_CONFIG = Blob(OCI_EMPTY, b"{}")


def make_referrer(
    subject: Artifact,
    *,
    artifact_type: str = "application/vnd.example.signature.v1",
    layer_media_type: str = COSIGN_SIMPLESIGNING,
    payload: bytes | None = None,
    annotations: dict | None = None,
) -> Image:
    """An OCI 1.1 artifact manifest pointing at ``subject``: empty config (``{}``), one layer
    of ``layer_media_type`` holding ``payload`` (default: a small JSON naming the subject),
    ``artifactType`` set, ``subject`` = the subject's descriptor."""
    if payload is None:
        payload = _json_bytes({"critical": {"image": {"docker-manifest-digest": subject.digest}}})
    layer = Layer(layer_media_type, payload, diff_id=sha256_digest(payload))
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": EMPTY_CONFIG.descriptor(),
        "layers": [layer.descriptor()],
        "subject": subject.manifest.descriptor(),
    }
    if annotations:
        doc["annotations"] = dict(annotations)
    return Image(Blob(OCI_MANIFEST, _json_bytes(doc)), EMPTY_CONFIG, (layer,), None)


def make_fallback_index(referrers: Iterable[Image]) -> Index:
    """The OCI 1.1 referrers fallback index (tag ``sha256-<hex>`` of the subject): one
    descriptor per referrer, carrying its ``artifactType`` and ``annotations`` as the
    referrers API would."""
    referrers = tuple(referrers)
    descs = []
    for r in referrers:
        doc = json.loads(r.raw)
        extra = {}
        if doc.get("artifactType"):
            extra["artifactType"] = doc["artifactType"]
        if doc.get("annotations"):
            extra["annotations"] = doc["annotations"]
        descs.append(r.manifest.descriptor(**extra))
    doc = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": descs}
    return Index(Blob(OCI_INDEX, _json_bytes(doc)), referrers)


def make_cosign_signature(subject: Artifact, *, seed: str = "sig") -> Image:
    """A cosign-style signature image (what cosign pushes as tag ``sha256-<hex>.sig``): an
    OCI image manifest, a minimal config, one simplesigning layer, the signature annotation;
    no ``subject`` (cosign's tag scheme predates it)."""
    payload = _json_bytes({
        "critical": {"identity": {"docker-reference": "example/signed"},
                     "image": {"docker-manifest-digest": subject.digest},
                     "type": "cosign container image signature"},
        "optional": {"seed": seed},
    })
    layer = Layer(COSIGN_SIMPLESIGNING, payload, diff_id=sha256_digest(payload))
    config = Blob(OCI_CONFIG, _json_bytes({
        "architecture": "", "created": "0001-01-01T00:00:00Z", "os": "", "config": {},
        "history": [{"created": "0001-01-01T00:00:00Z"}],
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id]},
    }))
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config.descriptor(),
        "layers": [layer.descriptor(annotations={
            "dev.cosignproject.cosign/signature": "MEUCIQDtestsignature" + seed})],
    }
    return Image(Blob(OCI_MANIFEST, _json_bytes(doc)), config, (layer,), None)


def cosign_tag(digest: str, suffix: str = "sig") -> str:
    """cosign's tag for ``digest``: ``sha256-<hex>.<suffix>``; ``suffix=""`` gives the OCI 1.1
    fallback tag ``sha256-<hex>``."""
    algo, hexd = digest.split(":", 1)
    return f"{algo}-{hexd}" + (f".{suffix}" if suffix else "")


def push_raw(artifact: Artifact, host: str, repo: str, ref: str | None = None) -> str:
    """Push ``artifact`` to an anonymous plain-HTTP registry with raw distribution API calls
    (blobs, then child manifests by digest, then the top manifest at ``ref``: a tag, or by
    default its own digest) and return the headers of the top manifest's PUT (lower-case
    keys; ``oci-subject`` would show a registry that knows the referrers API).  For what skopeo cannot do: a manifest pushed by digest alone, with no tag."""
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    base = f"http://{host}/v2/{repo}"

    def call(method: str, url: str, data: bytes | None = None, ctype: str | None = None):
        req = urllib.request.Request(url, data=data, method=method)
        if ctype:
            req.add_header("Content-Type", ctype)
        try:
            with opener.open(req, timeout=30) as resp:
                return resp.status, {k.lower(): v for k, v in resp.headers.items()}
        except urllib.error.HTTPError as exc:
            raise PushError(f"{method} {url}: {exc.code} {exc.read().decode(errors='replace')}") from None

    for blob in artifact.blobs():
        if _blob_exists(opener, base, blob):
            continue
        _, hdrs = call("POST", f"{base}/blobs/uploads/", b"")
        loc = urllib.parse.urljoin(f"http://{host}/", hdrs["location"])
        sep = "&" if "?" in loc else "?"
        call("PUT", f"{loc}{sep}digest={urllib.parse.quote(blob.digest)}", blob.data, "application/octet-stream")
    *children, top = artifact.manifests()
    for m in children:
        call("PUT", f"{base}/manifests/{m.digest}", m.data, m.media_type)
    _, hdrs = call("PUT", f"{base}/manifests/{ref or top.digest}", top.data, top.media_type)
    return hdrs


def _blob_exists(opener, base: str, blob: Blob) -> bool:
    import urllib.request

    try:
        with opener.open(urllib.request.Request(f"{base}/blobs/{blob.digest}", method="HEAD"), timeout=30):
            return True
    except urllib.error.HTTPError:
        return False
