"""mirror.yaml -> MirrorSpec: good manifests give typed values, bad ones a located SpecError.

Every bad case names the line and key path it expects; the message must read
`mirror.yaml:LINE PATH: REASON`, so a person can go straight to the mistake.
"""

from __future__ import annotations

import random
import re
import socket
import textwrap
from pathlib import Path

import pytest
import yaml

from mirror.cli import main
from mirror.errors import SpecError
from mirror.core.platform import Platform
from mirror.core.reference import Reference
from mirror.core.selection import TagFilter
from mirror.specfile import (ALL_PLATFORMS, DEFAULT_CONCURRENCY, DEFAULT_OUTPUT, ImageSpec, MirrorSpec,
                         RegistryConfig, load_spec, parse_spec)

D1 = "sha256:" + "a" * 64
D2 = "sha256:dbcc1c35ac38df41fd2f5e4130b32ffdb93ebae8b3dbe638c23575912276fc9c"
ENV = {"GHCR_USER": "me", "GHCR_TOKEN": "ghp_secret", "OUT": "/srv/out", "ALL": "all"}
AMD64, ARM64 = Platform("linux", "amd64"), Platform("linux", "arm64")


def parse(text: str, env: dict | None = None) -> MirrorSpec:
    return parse_spec(textwrap.dedent(text), "mirror.yaml", ENV if env is None else env)


def lookup(obj, path: str):
    """`lookup(spec, "images[0].tags")`: attributes, [index] and ["key"] of a parsed spec."""
    for name, index in re.findall(r"\.?(\w+)?(\[[^\]]+\])?", path):
        if name:
            obj = getattr(obj, name)
        if index:
            key = index[1:-1]
            obj = obj[int(key)] if key.isdigit() else obj[key.strip("'\"")]
    return obj


# --- good manifests -----------------------------------------------------------------------

def test_issue_example(tmp_path):
    ca = tmp_path / "internal-ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    spec = parse(f"""\
        version: 1
        output: bundles/mirror-{{date}}.tar   # bundle path
        cache: ~/.cache/imgmirror
        concurrency: 8
        platforms: [linux/amd64, linux/arm64]   # default for every image
        keep_index_digest: false
        load_platform: linux/amd64
        registries:                         # optional, keyed by the host
          ghcr.io:
            username: ${{GHCR_USER}}
            password: ${{GHCR_TOKEN}}
          registry.internal:5000:
            insecure: true
            ca_file: {ca}
            max_concurrency: 4
            retries: 5
        images:
          - source: docker.io/library/alpine          # a repository, with tags below
            tags: ["3.19", "3.20"]
          - source: nginx:1.27                        # a full reference is one image
          - source: ghcr.io/org/app
            tags:                                     # a mapping selects from the tag list
              include: ['^v1\\.']
              exclude: ['-rc', '-beta']
              semver: '>=1.4.0, <2.0.0'
              latest: 3
            platforms: [linux/amd64]
          - source: quay.io/prometheus/node-exporter
            digests: ['{D2}']
        """)
    assert spec == MirrorSpec(
        path="mirror.yaml",
        output="bundles/mirror-{date}.tar",
        cache="~/.cache/imgmirror",
        concurrency=8,
        platforms=(AMD64, ARM64),
        keep_index_digest=False,
        load_platform=AMD64,
        registries={
            "ghcr.io": RegistryConfig(username="me", password="ghp_secret"),
            "registry.internal:5000": RegistryConfig(insecure=True, ca_file=str(ca), max_concurrency=4,
                                                     retries=5),
        },
        images=(
            ImageSpec(where="mirror.yaml:18 images[0]", repository=Reference("docker.io", "library/alpine"),
                      tags=("3.19", "3.20")),
            ImageSpec(where="mirror.yaml:20 images[1]", repository=Reference("docker.io", "library/nginx"),
                      tags=("1.27",)),
            ImageSpec(where="mirror.yaml:21 images[2]", repository=Reference("ghcr.io", "org/app"),
                      tag_filter=TagFilter(include=(r"^v1\.",), exclude=("-rc", "-beta"),
                                           semver=">=1.4.0, <2.0.0", latest=3),
                      platforms=(AMD64,)),
            ImageSpec(where="mirror.yaml:28 images[3]",
                      repository=Reference("quay.io", "prometheus/node-exporter"), digests=(D2,)),
        ),
    )
    assert "ghp_secret" not in repr(spec.registries["ghcr.io"])


def test_repository_example_manifest_is_valid():
    example = Path(__file__).resolve().parent.parent / "mirror.example.yaml"
    spec = load_spec(example, env=ENV)
    assert len(spec.images) == 5 and spec.registries["ghcr.io"].username == "me"


MINIMAL = "version: 1\nimages: [alpine]\n"


@pytest.mark.parametrize("text, expected", [
    pytest.param(MINIMAL, {
        "output": DEFAULT_OUTPUT, "cache": None, "concurrency": DEFAULT_CONCURRENCY, "platforms": None,
        "keep_index_digest": False, "load_platform": None, "registries": {},
        "images[0].repository": Reference("docker.io", "library/alpine"), "images[0].tags": ("latest",),
        "images[0].digests": (), "images[0].tag_filter": None, "images[0].platforms": None,
        "images[0].pinned": None, "images[0].target": None, "images[0].where": "mirror.yaml:2 images[0]",
    }, id="defaults"),
    pytest.param("""\
        version: 1
        images:
          - alpine:3.19
          - ghcr.io/org/app
          - localhost:5000/team/tool@""" + D1 + """
        """, {
        "images[0].repository": Reference("docker.io", "library/alpine"), "images[0].tags": ("3.19",),
        "images[1].repository": Reference("ghcr.io", "org/app"), "images[1].tags": ("latest",),
        "images[2].repository": Reference("localhost:5000", "team/tool"),
        "images[2].digests": (D1,), "images[2].tags": (), "images[2].pinned": None,
        "images[2].where": "mirror.yaml:5 images[2]",
    }, id="shorthand-entries"),
    pytest.param(f"version: 1\nimages:\n  - source: alpine:3.19@{D1}\n", {
        "images[0].pinned": Reference("docker.io", "library/alpine", "3.19", D1),
        "images[0].repository": Reference("docker.io", "library/alpine"),
        "images[0].tags": (), "images[0].digests": (),
    }, id="name-tag-digest-is-pinned"),
    pytest.param(f"version: 1\nimages: ['nginx:1.27@{D1}']\n", {
        "images[0].pinned": Reference("docker.io", "library/nginx", "1.27", D1),
    }, id="pinned-shorthand"),
    pytest.param(f"version: 1\nimages:\n  - source: quay.io/a/b\n    digests: ['{D1}']\n", {
        "images[0].digests": (D1,), "images[0].tags": (),   # digests alone: no implicit :latest
    }, id="digests-only-no-latest"),
    pytest.param(f"version: 1\nimages:\n  - source: quay.io/a/b\n    tags: [v1, v1]\n"
                 f"    digests: ['{D1}', '{D2}', '{D1}']\n", {
        "images[0].tags": ("v1",), "images[0].digests": (D1, D2),
    }, id="tags-and-digests-deduplicated"),
    pytest.param("version: 1\nimages:\n  - source: python\n    tags: [3.10, 3.9, 010]\n", {
        "images[0].tags": ("3.10", "3.9", "010"),   # as written, not as YAML numbers (3.1, 8)
    }, id="numeric-looking-tags-kept-as-written"),
    pytest.param("version: 1\nimages:\n  - source: ghcr.io/org/app\n    tags: {latest: 2}\n", {
        "images[0].tag_filter": TagFilter(latest=2), "images[0].tags": (),
    }, id="filter-latest-only"),
    pytest.param("""\
        version: 1
        concurrency: 256
        keep_index_digest: yes
        platforms: [linux/x86_64, linux/amd64, linux/arm64/v8, linux/armhf]
        load_platform: linux/aarch64
        images:
          - source: alpine
            platforms: [linux/arm/v7]
            target: registry.internal:5000/mirror/alpine
        """, {
        "concurrency": 256, "keep_index_digest": True,
        "platforms": (AMD64, ARM64, Platform("linux", "arm", "v7")), "load_platform": ARM64,
        "images[0].platforms": (Platform("linux", "arm", "v7"),),
        "images[0].target": "registry.internal:5000/mirror/alpine",
    }, id="platforms-normalised-and-deduplicated"),
    pytest.param("""\
        version: 1
        output: ${OUT}/mirror-{date}-{time}.tar
        cache: ${OUT}/cache
        registries:
          ghcr.io: {username: "${GHCR_USER}", password: "tok-${GHCR_TOKEN}-${GHCR_TOKEN}"}
        images: [alpine]
        """, {
        "output": "/srv/out/mirror-{date}-{time}.tar", "cache": "/srv/out/cache",
        "registries['ghcr.io'].username": "me",
        "registries['ghcr.io'].password": "tok-ghp_secret-ghp_secret",
    }, id="env-expansion"),
    pytest.param("version: 1\noutput: $OUT/{date}.tar and $${OUT\nimages: [alpine]\n", {
        "output": "$OUT/{date}.tar and $${OUT",   # only ${NAME} is a variable
    }, id="env-only-braced"),
    pytest.param("""\
        version: 1
        registries:
          GHCR.io: {}
          index.docker.io: {max_concurrency: 2, retries: 0}
          localhost:5000: {insecure: off}
          "[::1]:5000": {}
        images: [alpine]
        """, {
        "registries": {"ghcr.io": RegistryConfig(), "docker.io": RegistryConfig(max_concurrency=2, retries=0),
                       "localhost:5000": RegistryConfig(), "[::1]:5000": RegistryConfig()},
    }, id="registry-hosts-normalised"),
    pytest.param("""\
        # mirror.yaml
        version: 1
        platforms: &p [linux/amd64]

        images:
          - source: alpine
            platforms: *p
          - nginx
        """, {
        "images[0].platforms": (AMD64,), "images[0].where": "mirror.yaml:6 images[0]",
        "images[1].where": "mirror.yaml:8 images[1]",
    }, id="comments-anchors-aliases"),
    pytest.param('version: "1"\nimages: [alpine]\n', {"images[0].tags": ("latest",)}, id="quoted-version"),
    # `platforms: all` switches the top-level default off for one image; at the top level it is
    # what leaving the key out means. Any case, as platform names are (linux/AMD64 is accepted).
    pytest.param("""\
        version: 1
        platforms: [linux/amd64]
        images:
          - source: alpine
            platforms: all
          - nginx
          - source: busybox
            platforms: [linux/arm64]
        """, {
        "platforms": (AMD64,), "images[0].platforms": ALL_PLATFORMS,
        "images[1].platforms": None, "images[2].platforms": (ARM64,),
    }, id="image-platforms-all"),
    *(pytest.param(f"version: 1\nplatforms: [linux/amd64]\nimages:\n  - source: alpine\n"
                   f"    platforms: {word}\n", {"images[0].platforms": ()}, id=f"image-platforms-{word}")
      for word in ("ALL", "All", "'all'", '"all"', "${ALL}")),
    pytest.param("version: 1\nplatforms: all\nimages: [alpine]\n",
                 {"platforms": None, "images[0].platforms": None}, id="top-platforms-all"),
    pytest.param("version: 1\nplatforms: ALL\nimages:\n  - source: alpine\n    platforms: all\n",
                 {"platforms": None, "images[0].platforms": ()}, id="top-and-image-platforms-all"),
])
def test_good_manifest(text, expected):
    spec = parse(text)
    got = {path: lookup(spec, path) for path in expected}
    assert got == expected


# --- bad manifests ------------------------------------------------------------------------

def bad(id_, text, line, path, *reasons):
    return pytest.param(text, line, path, reasons, id=id_)


IMG = "version: 1\nimages:\n  - source: ghcr.io/org/app\n"   # the image mapping starts on line 3

BAD = [
    # YAML itself
    bad("yaml-syntax", "version: 1\noutput: a: b\nimages: [alpine]\n", 2, None,
        "not valid YAML", "mapping values are not allowed here"),
    bad("yaml-missing-colon", "version: 1\nimages\n  - alpine\nconcurrency: 2\n", 4, None,
        "not valid YAML", "could not find expected ':'", "line 2"),
    bad("yaml-unclosed-flow", "version: 1\nimages: [alpine,\n  nginx\nconcurrency: 2\n", 4, None,
        "not valid YAML", "flow sequence started on line 2"),
    bad("yaml-tab", "version: 1\nimages:\n\t- alpine\n", 3, None, "not valid YAML", "'\\t'"),
    bad("yaml-control-char", "version: 1\nimages: [alpine]\x07\n", 2, None, "not valid YAML", "#x0007"),
    bad("yaml-two-documents", "version: 1\nimages: [alpine]\n---\nversion: 1\n", 3, None,
        "not valid YAML", "single document"),
    bad("yaml-undefined-alias", "version: 1\nimages: [*nope]\n", 2, None, "not valid YAML", "nope"),
    bad("yaml-nested-too-deeply", "version: 1\nimages: " + "[" * 800 + "]" * 800 + "\n", None, None,
        "nested too deeply"),
    # shape of the file
    bad("empty-file", "", None, None, "the file is empty"),
    bad("comments-only", "# nothing yet\n\n", None, None, "the file is empty"),
    bad("top-level-list", "- alpine\n- nginx\n", 1, None, "expected a mapping", "version: 1", "not a list"),
    bad("top-level-scalar", "alpine\n", 1, None, "expected a mapping", "not 'alpine'"),
    bad("missing-version", "images: [alpine]\n", 1, "version", "missing", "version: 1"),
    bad("wrong-version", "version: 2\nimages: [alpine]\n", 1, "version", "unsupported version '2'",
        "reads version 1"),
    bad("version-1.0", "version: 1.0\nimages: [alpine]\n", 1, "version", "unsupported version '1.0'"),
    bad("version-list", "version: [1]\nimages: [alpine]\n", 1, "version", "expected `version: 1`, not a list"),
    bad("version-empty", "version:\nimages: [alpine]\n", 1, "version", "not an empty value"),
    bad("unknown-top-key", "version: 1\nplatform: [linux/amd64]\nimages: [alpine]\n", 2, "platform",
        "unknown key 'platform'", "platforms"),
    bad("non-string-key", "version: 1\n1: x\nimages: [alpine]\n", 2, "1", "unknown key '1'"),
    bad("complex-key", "version: 1\n[a, b]: x\nimages: [alpine]\n", 2, None,
        "a key must be a plain name, not a list"),
    bad("duplicate-key", "version: 1\nconcurrency: 4\nimages: [alpine]\nconcurrency: 8\n", 4,
        "concurrency", "given twice"),
    bad("missing-images", "version: 1\nconcurrency: 4\n", 1, "images", "missing", "at least one image"),
    bad("empty-images", "version: 1\nimages: []\n", 2, "images", "empty list", "at least one image"),
    bad("images-not-a-list", "version: 1\nimages: alpine\n", 2, "images", "expected a list of images",
        "not 'alpine'"),
    bad("images-mapping", "version: 1\nimages:\n  alpine: 3.19\n", 3, "images", "expected a list",
        "not a mapping"),
    bad("images-null", "version: 1\nimages:\n", 2, "images", "expected a list", "not an empty value"),
    # scalar settings
    bad("concurrency-0", "version: 1\nconcurrency: 0\nimages: [alpine]\n", 2, "concurrency",
        "expected a whole number from 1 to 256", "not '0'"),
    bad("concurrency-eight", "version: 1\nconcurrency: eight\nimages: [alpine]\n", 2, "concurrency",
        "expected a whole number from 1 to 256", "not 'eight'"),
    bad("concurrency-true", "version: 1\nconcurrency: true\nimages: [alpine]\n", 2, "concurrency",
        "expected a whole number"),
    bad("concurrency-quoted", "version: 1\nconcurrency: '8'\nimages: [alpine]\n", 2, "concurrency",
        "expected a whole number"),
    bad("concurrency-float", "version: 1\nconcurrency: 1.5\nimages: [alpine]\n", 2, "concurrency",
        "expected a whole number"),
    bad("concurrency-257", "version: 1\nconcurrency: 257\nimages: [alpine]\n", 2, "concurrency",
        "from 1 to 256"),
    bad("keep-index-digest-yes-ish", "version: 1\nkeep_index_digest: yes-ish\nimages: [alpine]\n", 2,
        "keep_index_digest", "expected true or false", "not 'yes-ish'"),
    bad("keep-index-digest-1", "version: 1\nkeep_index_digest: 1\nimages: [alpine]\n", 2,
        "keep_index_digest", "expected true or false"),
    bad("output-empty", "version: 1\noutput: ''\nimages: [alpine]\n", 2, "output", "empty"),
    bad("output-list", "version: 1\noutput: [a]\nimages: [alpine]\n", 2, "output",
        "expected a string, not a list"),
    bad("unset-env", "version: 1\ncache: ${NO_SUCH_VAR}/x\nimages: [alpine]\n", 2, "cache",
        "environment variable ${NO_SUCH_VAR} is not set"),
    # platforms
    bad("bad-platform", "version: 1\nplatforms: [linux/amd64, linux]\nimages: [alpine]\n", 2, "platforms[1]",
        '"linux" is not a valid platform', "os and an architecture"),
    bad("bad-platform-chars", "version: 1\nplatforms:\n  - linux/amd64\n  - linux/am d64\nimages: [alpine]\n",
        4, "platforms[1]", "invalid characters"),
    bad("empty-platforms", "version: 1\nplatforms: []\nimages: [alpine]\n", 2, "platforms",
        "empty list", "write `platforms: all`", "omit the key"),
    bad("image-empty-platforms", "version: 1\nplatforms: [linux/amd64]\nimages:\n  - source: alpine\n"
        "    platforms: []\n", 5, "images[0].platforms", "empty list", "write `platforms: all`",
        "omitting the key takes the top-level"),
    bad("platforms-scalar", "version: 1\nplatforms: linux/amd64\nimages: [alpine]\n", 2, "platforms",
        "expected a list", "or `all`", "not 'linux/amd64'"),
    bad("image-platforms-any", IMG + "    platforms: any\n", 4, "images[0].platforms",
        "expected a list", "or `all` for every platform", "not 'any'"),
    bad("image-platforms-all-in-list", IMG + "    platforms: [all]\n", 4, "images[0].platforms[0]",
        '"all" is not a valid platform', "write `platforms: all`, no list"),
    bad("image-platforms-null", IMG + "    platforms:\n", 4, "images[0].platforms",
        "expected a list", "not an empty value"),
    bad("image-platforms-true", IMG + "    platforms: true\n", 4, "images[0].platforms",
        "expected a list", "not 'true'"),
    bad("image-platforms-mapping", IMG + "    platforms: {all: true}\n", 4, "images[0].platforms",
        "expected a list", "not a mapping"),
    bad("image-bad-platform", IMG + "    platforms: [linux/amd64/v1/x]\n", 4, "images[0].platforms[0]",
        "too many parts"),
    bad("load-platform", "version: 1\nload_platform: amd64\nimages: [alpine]\n", 2, "load_platform",
        "not a valid platform"),
    # registries
    bad("unknown-registry-key", "version: 1\nregistries:\n  ghcr.io:\n    user: me\nimages: [alpine]\n", 4,
        "registries.ghcr.io.user", "unknown key 'user'", "username"),
    bad("registry-not-a-host", "version: 1\nregistries:\n  ghcr: {}\nimages: [alpine]\n", 3,
        "registries.ghcr", "not a registry host", "ghcr.io"),
    bad("registry-host-with-path", "version: 1\nregistries:\n  ghcr.io/org: {}\nimages: [alpine]\n", 3,
        "registries.ghcr.io/org", "not a registry host"),
    bad("registry-null-key", "version: 1\nregistries:\n  ~: {}\nimages: [alpine]\n", 3, "registries.~",
        "not a registry host"),
    bad("registry-complex-key", "version: 1\nregistries:\n  ? [a]\n  : {}\nimages: [alpine]\n", 3,
        "registries", "a key must be a registry host, not a list"),
    bad("registry-settings-null", "version: 1\nregistries:\n  ghcr.io:\nimages: [alpine]\n", 3,
        "registries.ghcr.io", "expected a mapping", "not an empty value"),
    bad("registries-list", "version: 1\nregistries: [ghcr.io]\nimages: [alpine]\n", 2, "registries",
        "expected a mapping of registry host"),
    bad("registry-twice", "version: 1\nregistries:\n  ghcr.io: {}\n  GHCR.IO: {}\nimages: [alpine]\n", 4,
        "registries.GHCR.IO", "given twice"),
    bad("username-without-password",
        "version: 1\nregistries:\n  ghcr.io:\n    insecure: false\n    username: me\nimages: [alpine]\n", 5,
        "registries.ghcr.io", "username without password", "give both"),
    bad("password-without-username", "version: 1\nregistries:\n  ghcr.io: {password: x}\nimages: [alpine]\n",
        3, "registries.ghcr.io", "password without username"),
    bad("unset-env-password",
        "version: 1\nregistries:\n  ghcr.io:\n    username: me\n    password: ${GHCR_PAT}\nimages: [alpine]\n",
        5, "registries.ghcr.io.password", "${GHCR_PAT} is not set", "export it"),
    bad("ca-file-missing", "version: 1\nregistries:\n  r.internal:\n    ca_file: /nonexistent/ca.pem\n"
        "images: [alpine]\n", 4, "registries.r.internal.ca_file", "'/nonexistent/ca.pem' does not exist"),
    bad("ca-file-directory", "version: 1\nregistries:\n  r.internal:\n    ca_file: /\nimages: [alpine]\n",
        4, "registries.r.internal.ca_file", "is a directory"),
    bad("insecure-string", "version: 1\nregistries:\n  r.internal:\n    insecure: 'true'\nimages: [alpine]\n",
        4, "registries.r.internal.insecure", "expected true or false"),
    bad("retries-negative", "version: 1\nregistries:\n  r.internal: {retries: -1}\nimages: [alpine]\n",
        3, "registries.r.internal.retries", "from 0 to 100"),
    bad("max-concurrency-0", "version: 1\nregistries:\n  r.internal: {max_concurrency: 0}\n"
        "images: [alpine]\n", 3, "registries.r.internal.max_concurrency", "from 1 to 256"),
    # image entries
    bad("unknown-image-key", IMG + "    tag: [v1]\n", 4, "images[0].tag", "unknown key 'tag'", "tags"),
    bad("image-list", "version: 1\nimages: [[1, 2]]\n", 2, "images[0]", "expected a mapping", "not a list"),
    bad("image-null", "version: 1\nimages:\n  - alpine\n  -\n", 4, "images[1]", "empty entry"),
    bad("image-missing-source", "version: 1\nimages:\n  - tags: [v1]\n", 3, "images[0].source", "missing"),
    bad("source-null", "version: 1\nimages:\n  - source:\n", 3, "images[0].source", "expected a string"),
    bad("source-uppercase", "version: 1\nimages:\n  - nginx\n  - source: Alpine\n", 4, "images[1].source",
        '"Alpine" is not a valid reference (repository names are lowercase)'),
    bad("source-uppercase-shorthand", "version: 1\nimages:\n  - Alpine:3.19\n", 3, "images[0].source",
        "repository names are lowercase"),
    bad("source-empty-tag", "version: 1\nimages:\n  - source: 'alpine:'\n", 3, "images[0].source",
        "empty tag"),
    bad("source-url", "version: 1\nimages:\n  - https://ghcr.io/org/app\n", 3, "images[0].source",
        'drop the "https://" prefix'),
    bad("bad-tag", IMG + "    tags:\n      - v1\n      - -rc1\n", 6, "images[0].tags[1]",
        "'-rc1' is not a valid tag", "not starting with '.' or '-'"),
    bad("empty-tag-in-list", IMG + "    tags: ['']\n", 4, "images[0].tags[0]", "'' is not a valid tag"),
    bad("tag-with-digest", IMG + f"    tags: ['v1@{D1}']\n", 4, "images[0].tags[0]", "is not a valid tag"),
    bad("tag-with-slash", IMG + "    tags: [a/b]\n", 4, "images[0].tags[0]", "is not a valid tag"),
    bad("tag-too-long", IMG + f"    tags: [{'a' * 129}]\n", 4, "images[0].tags[0]", "at most 128"),
    bad("tags-empty", IMG + "    tags: []\n", 4, "images[0].tags", "empty list"),
    bad("tags-null", IMG + "    tags:\n", 4, "images[0].tags", "expected a list", "not an empty value"),
    bad("tags-scalar", IMG + "    tags: v1\n", 4, "images[0].tags", "expected a list", "not 'v1'"),
    bad("tags-nested", IMG + "    tags: [[v1]]\n", 4, "images[0].tags[0]", "expected a string, not a list"),
    bad("bad-digest", IMG + "    digests: ['sha256:abc']\n", 4, "images[0].digests[0]",
        "'sha256:abc' is not a valid digest", "64 lowercase hex characters"),
    bad("digest-uppercase", IMG + f"    digests: ['{D1.upper().replace('SHA256', 'sha256')}']\n", 4,
        "images[0].digests[0]", "lowercase"),
    bad("digest-no-algorithm", IMG + "    digests: [" + "a" * 64 + "]\n", 4, "images[0].digests[0]",
        "algorithm:hex, e.g. sha256:"),
    bad("digests-empty", IMG + "    digests: []\n", 4, "images[0].digests", "empty list"),
    bad("tags-on-tagged-source", "version: 1\nimages:\n  - source: alpine:3.19\n    tags: ['3.20']\n", 3,
        "images[0].source", "is one image", "drop the tag"),
    bad("digests-on-digest-source", f"version: 1\nimages:\n  - source: alpine@{D1}\n    digests: ['{D2}']\n",
        3, "images[0].source", "is one image"),
    bad("target-list", IMG + "    target: [x]\n", 4, "images[0].target", "expected a string"),
    bad("duplicate-image-key", IMG + "    tags: [v1]\n    tags: [v2]\n", 5, "images[0].tags", "given twice"),
    # tag filters
    bad("unknown-filter-key", IMG + "    tags:\n      includes: ['^v1']\n", 5, "images[0].tags.includes",
        "unknown key 'includes'", "include"),
    bad("empty-filter", IMG + "    tags: {}\n", 4, "images[0].tags", "empty filter"),
    bad("filter-non-string-key", IMG + "    tags: {1: 2}\n", 4, "images[0].tags.1", "unknown key '1'"),
    bad("bad-regex", IMG + "    tags:\n      include: ['^v1', '(unclosed']\n", 5, "images[0].tags.include[1]",
        'invalid regular expression "(unclosed"'),
    bad("bad-regex-block-list", IMG + "    tags:\n      exclude:\n        - ok\n        - '*rc'\n", 7,
        "images[0].tags.exclude[1]", "invalid regular expression", "nothing to repeat"),
    bad("posix-class-regex", IMG + "    tags: {include: ['^[[:digit:]]+$']}\n", 4, "images[0].tags.include[0]",
        "POSIX class"),
    bad("regex-huge-repeat", IMG + "    tags: {include: ['a{99999999999}']}\n", 4, "images[0].tags.include[0]",
        "invalid regular expression", "too large"),
    bad("include-scalar", IMG + "    tags: {include: '^v1'}\n", 4, "images[0].tags.include", "expected a list"),
    bad("bad-semver", IMG + "    tags:\n      semver: '>=1.4.0 <<2'\n", 5, "images[0].tags.semver",
        'invalid version range ">=1.4.0 <<2"'),
    bad("semver-empty", IMG + "    tags: {semver: ''}\n", 4, "images[0].tags.semver", "it is empty"),
    bad("latest-0", IMG + "    tags:\n      semver: '>=1'\n      latest: 0\n", 6, "images[0].tags.latest",
        "expected a whole number from 1", "not '0'"),
    bad("latest-string", IMG + "    tags: {latest: three}\n", 4, "images[0].tags.latest", "whole number"),
]


@pytest.mark.parametrize("text, line, path, reasons", BAD)
def test_bad_manifest(text, line, path, reasons):
    with pytest.raises(SpecError) as info:
        parse_spec(text, "mirror.yaml", ENV)
    err = info.value
    message = str(err)
    where = "mirror.yaml" + (f":{line}" if line else "") + (f" {path}" if path else "")
    assert message.startswith(where + ": "), message
    assert (err.file, err.line, err.path) == ("mirror.yaml", line, path)
    for reason in reasons:
        assert reason in err.reason, message
    assert "Node(" not in message and "None" not in message, message   # no internals leak out


def test_good_ca_file_and_home_expansion(tmp_path, monkeypatch):
    (tmp_path / "ca.pem").write_text("pem")
    monkeypatch.setenv("HOME", str(tmp_path))
    spec = parse("version: 1\nregistries:\n  r.internal: {ca_file: ~/ca.pem}\nimages: [alpine]\n")
    assert spec.registries["r.internal"].ca_file == str(tmp_path / "ca.pem")


def test_relative_ca_file_is_relative_to_the_manifest(tmp_path, monkeypatch):
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "ca.pem").write_text("pem")
    monkeypatch.chdir("/")
    path = tmp_path / "site" / "mirror.yaml"
    path.write_text("version: 1\nregistries:\n  r.internal: {ca_file: ca.pem}\nimages: [alpine]\n")
    assert load_spec(path).registries["r.internal"].ca_file == str(tmp_path / "site" / "ca.pem")


# --- files --------------------------------------------------------------------------------

def test_load_spec_reads_file_and_environment(tmp_path, monkeypatch):
    path = tmp_path / "mirror.yaml"
    path.write_text("version: 1\ncache: ${CACHE_DIR}\nimages: [alpine]\n")
    monkeypatch.setenv("CACHE_DIR", "/var/cache/im")
    spec = load_spec(path)
    assert spec.path == str(path) and spec.cache == "/var/cache/im"
    assert spec.images[0].where == f"{path}:3 images[0]"
    assert load_spec(str(path), env={"CACHE_DIR": "/x"}).cache == "/x"


def test_load_spec_names_the_file_in_errors(tmp_path):
    path = tmp_path / "site" / "mirror.yaml"
    path.parent.mkdir()
    path.write_text("version: 1\nimages:\n  - source: nginx\n    tgas: [1.27]\n")
    with pytest.raises(SpecError, match=re.escape(f"{path}:4 images[0].tgas: unknown key 'tgas'")):
        load_spec(path, env={})


def test_load_spec_missing_file(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert str(info.value) == f"{path}: file not found; pass the path of your mirror.yaml"


@pytest.mark.parametrize("make, reason", [
    (lambda p: p.mkdir(), "cannot read the file"),
    (lambda p: p.write_bytes(b"version: 1\nimages: [\xff]\n"), "cannot read the file"),
])
def test_load_spec_unreadable(tmp_path, make, reason):
    path = tmp_path / "mirror.yaml"
    make(path)
    with pytest.raises(SpecError, match=re.escape(f"{path}: {reason}")):
        load_spec(path)


# --- CLI: a bad manifest exits 2 before any network request -------------------------------

SENTINEL = "127.0.0.1:9"   # the discard port: nothing listens, so contacting it fails the image


@pytest.fixture
def connects(monkeypatch, tmp_path):
    """Every address a socket tried to connect to (the connection still goes ahead)."""
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)   # the sentinel must be dialled directly
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))   # no credential helpers
    seen = []
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def connect(self, address):
        seen.append(address)
        return real_connect(self, address)

    def connect_ex(self, address):
        seen.append(address)
        return real_connect_ex(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    return seen


def sentinel_manifest(tmp_path, second_image: str):
    path = tmp_path / "mirror.yaml"
    path.write_text(f"version: 1\nregistries:\n  {SENTINEL}: {{retries: 0}}\nimages:\n"
                    f"  - {SENTINEL}/app:1.0\n{second_image}")
    return path


def test_cli_bad_manifest_exits_2_without_network(tmp_path, capsys, connects):
    path = sentinel_manifest(tmp_path, f"  - source: {SENTINEL}/other\n    tags: [-bad]\n")
    code = main(["sync", str(path), "--cache", str(tmp_path / "cache")])
    err = capsys.readouterr().err
    assert code == 2, err    # 1 would mean the sentinel image was tried and failed
    assert f"imgmirror: error: {path}:7 images[1].tags[0]: '-bad' is not a valid tag" in err
    assert connects == []
    assert not (tmp_path / "cache").exists()


def test_cli_sentinel_host_is_really_contacted_when_valid(tmp_path, capsys, connects):
    """The control for the test above: a valid manifest does reach the sentinel and exits 1."""
    path = sentinel_manifest(tmp_path, "")
    code = main(["sync", str(path), "--cache", str(tmp_path / "cache"), "-q"])
    err = capsys.readouterr().err
    assert code == 1, err
    assert ("127.0.0.1", 9) in connects


# --- fuzz: odd documents give a MirrorSpec or a SpecError, never another exception --------

_KEYS = ["version", "output", "cache", "concurrency", "platforms", "keep_index_digest", "load_platform",
         "registries", "images", "platform", "source", "tags", "digests", "target", "include", "exclude",
         "semver", "latest", "username", "password", "insecure", "ca_file", "max_concurrency", "retries"]
_SCALARS = [None, True, False, 0, 1, -1, 3, 257, 1.5, "", " ", "~", "1", "yes", "eight", "alpine",
            "alpine:3.19", "Alpine", "ghcr.io/org/app", "ghcr.io", "localhost:5000", "nginx:1.27@" + D1, D1,
            "sha256:abc", "linux/amd64", "linux", "linux/arm/v7/x", "^v1\\.", "(", "[[:digit:]]",
            "a{99999999999}", ">=1.4.0, <2.0.0", ">=", "${GHCR_USER}", "${UNSET_VAR}", "${", "@", ":",
            "é", "-rc", "3.10", "/", "/etc/hostname", "127.0.0.1:9", "x" * 300]


def _value(rng: random.Random, depth: int):
    """Anything: a scalar, or a small nested list or mapping under plausible (and odd) keys."""
    roll = rng.random()
    if depth > 3 or roll < 0.55:
        return rng.choice(_SCALARS)
    if roll < 0.75:
        return [_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    keys = _KEYS + _SCALARS[:12] if rng.random() < 0.2 else _KEYS
    return {rng.choice(keys): _value(rng, depth + 1) for _ in range(rng.randrange(4))}


def _maybe(rng: random.Random, good: list, bad: list = ()):
    """Mostly a value that fits the key, sometimes a plausible mistake, now and then anything."""
    roll = rng.random()
    if roll < 0.8 or (roll < 0.93 and not bad):
        return rng.choice(good)
    return rng.choice(bad) if roll < 0.93 else _value(rng, 1)


_PLATFORMS = ["linux/amd64", "linux/arm64", "linux/arm/v7", "linux/x86_64"]


def _platforms(rng: random.Random):
    return _maybe(rng, [rng.sample(_PLATFORMS, rng.randrange(1, 4)), "all"],
                  [["linux"], ["windows/amd64/x/y"], [], ["all"], "any"])


def _filter(rng: random.Random) -> dict:
    pools = {"include": ([["^v1"], ["^3\\."]], [["("], "^v1"]),
             "exclude": ([["-rc", "-beta"]], [["a{99999999999}"], ["[[:alpha:]]"]]),
             "semver": ([">=1.4.0, <2.0.0", "~1.2", "^3"], [">>1", ""]),
             "latest": ([1, 3], [0, "three"]), "includes": ([["x"]], [])}
    keys = rng.sample(sorted(pools), rng.randrange(1, 4))
    return {k: _maybe(rng, *pools[k]) for k in keys if k != "includes" or rng.random() < 0.1}


def _image(rng: random.Random):
    if rng.random() < 0.3:
        return _maybe(rng, ["alpine", "alpine:3.19", "ghcr.io/org/app", f"nginx:1.27@{D1}"], ["Alpine", None])
    entry = {"source": _maybe(rng, ["alpine", "ghcr.io/org/app", "q.io/a/b", "nginx:1.27", f"q.io/a@{D1}"],
                              ["Alpine", "alpine:"])}
    for key in rng.sample(["tags", "tags", "digests", "platforms", "target", "tag"], rng.randrange(3)):
        if key == "tags" and rng.random() < 0.5:
            entry[key] = _maybe(rng, [_filter(rng)], [{}])
        elif key == "tags":
            entry[key] = _maybe(rng, [["3.19", "3.20"], ["v1"], [3.10]], [["-x"], []])
        elif key == "digests":
            entry[key] = _maybe(rng, [[D1], [D1, D2]], [["sha256:abc"], []])
        elif key == "platforms":
            entry[key] = _platforms(rng)
        elif key == "target":
            entry[key] = _maybe(rng, ["r.internal/mirror/app"])
        elif rng.random() < 0.1:
            entry[key] = ["v1"]
    return entry


def _registry(rng: random.Random):
    fields = {"username": _maybe(rng, ["me", "${GHCR_USER}"], ["${UNSET_VAR}"]),
              "password": _maybe(rng, ["${GHCR_TOKEN}", "pw"]),
              "insecure": _maybe(rng, [True, False], ["yes-ish"]),
              "ca_file": _maybe(rng, ["/etc/hostname", __file__], ["/nonexistent", "/"]),
              "max_concurrency": _maybe(rng, [4], [0]), "retries": _maybe(rng, [0, 5], [-1])}
    if rng.random() < 0.05:
        fields["user"] = "x"
    chosen = rng.sample(sorted(fields), rng.randrange(3))
    if ("username" in chosen) != ("password" in chosen) and rng.random() < 0.8:
        chosen = [k for k in chosen if k not in ("username", "password")]
    return {k: fields[k] for k in chosen}


def _document(rng: random.Random) -> str:
    plausible = {
        "output": lambda: _maybe(rng, ["bundles/mirror-{date}.tar", "${OUT}/m.tar", "out/"], [""]),
        "cache": lambda: _maybe(rng, ["~/.cache/imgmirror"], ["${UNSET_VAR}"]),
        "concurrency": lambda: _maybe(rng, [1, 8, 256], [0, "eight", True]),
        "platforms": lambda: _platforms(rng),
        "keep_index_digest": lambda: _maybe(rng, [True, False], ["yes-ish"]),
        "load_platform": lambda: _maybe(rng, ["linux/amd64"], ["amd64"]),
        "platform": lambda: _value(rng, 1),
    }
    doc = {"version": _maybe(rng, [1], [2, "1", "1.0"])}
    for key in rng.sample(sorted(plausible), rng.randrange(4)):
        if key != "platform" or rng.random() < 0.1:
            doc[key] = plausible[key]()
    if rng.random() < 0.4:
        hosts = ["ghcr.io", "r.internal:5000", "index.docker.io"] * 3 + ["GHCR.io", "ghcr", None, 1]
        doc["registries"] = _maybe(rng, [{rng.choice(hosts): _registry(rng) for _ in range(rng.randrange(3))}])
    if rng.random() < 0.97:
        doc["images"] = _maybe(rng, [[_image(rng) for _ in range(rng.randrange(1, 5))]], [[]])
    text = yaml.safe_dump(doc, default_flow_style=rng.choice([None, True, False]), allow_unicode=True,
                          sort_keys=rng.random() < 0.5)
    if rng.random() < 0.1:   # a random typo: drop or duplicate a character
        i = rng.randrange(len(text))
        text = text[:i] + text[i + 1:] if rng.random() < 0.5 else text[:i] + text[i] + text[i:]
    return text


@pytest.mark.parametrize("seed", range(8))
def test_fuzz_gives_spec_or_spec_error(seed):
    rng = random.Random(f"imgmirror-spec-{seed}")
    outcomes = {"ok": 0, "error": 0}
    for _ in range(50):
        text = _document(rng)
        try:
            spec = parse_spec(text, "mirror.yaml", ENV)
        except SpecError as exc:
            assert str(exc).startswith("mirror.yaml"), (text, str(exc))
            assert "Node(" not in str(exc), (text, str(exc))
            outcomes["error"] += 1
        except Exception as exc:   # anything else is the bug this test looks for
            pytest.fail(f"{type(exc).__name__}: {exc}\n--- document ---\n{text}")
        else:
            assert isinstance(spec, MirrorSpec) and spec.images
            outcomes["ok"] += 1
    assert outcomes["error"] > 0


def test_fuzz_reaches_valid_manifests():
    """The generator is only useful if it also builds manifests that pass, i.e. reaches the end."""
    rng = random.Random("imgmirror-spec-valid")
    valid = 0
    for _ in range(200):
        try:
            parse_spec(_document(rng), "mirror.yaml", ENV)
            valid += 1
        except SpecError:
            pass
    assert 20 <= valid <= 180
