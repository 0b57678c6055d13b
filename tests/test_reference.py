"""Image references: cases from distribution's reference_test.go and normalize_test.go."""

import subprocess
import sys
from pathlib import Path

import pytest

from mirror.errors import MirrorError, ReferenceError_
from mirror.core.reference import DOCKER_HUB, Reference, is_loopback, parse_reference

SHA = "sha256:" + "f" * 64
SHA_B = "sha256:dbcc1c35ac38df41fd2f5e4130b32ffdb93ebae8b3dbe638c23575912276fc9c"
HEX64 = "1a3f5e7d9c1b3a5f7e9d1c3b5a7f9e1d3c5b7a9f1e3d5d7c9b1a3f5e7d9c1b3a"


@pytest.mark.parametrize("text, registry, repository, tag, digest", [
    # Docker Hub normalisation
    ("alpine", "docker.io", "library/alpine", None, None),
    ("alpine:3.19", "docker.io", "library/alpine", "3.19", None),
    ("docker.io/alpine", "docker.io", "library/alpine", None, None),
    ("index.docker.io/alpine", "docker.io", "library/alpine", None, None),
    ("index.docker.io/docker/docker", "docker.io", "docker/docker", None, None),
    ("docker.io/library/debian", "docker.io", "library/debian", None, None),
    ("library/ubuntu", "docker.io", "library/ubuntu", None, None),
    ("fooo/bar", "docker.io", "fooo/bar", None, None),
    ("docker.io/library/foo/bar", "docker.io", "library/foo/bar", None, None),
    ("store/foo/bar", "docker.io", "store/foo/bar", None, None),
    ("ubuntu-12.04-base", "docker.io", "library/ubuntu-12.04-base", None, None),
    ("docker.io/" + HEX64, "docker.io", "library/" + HEX64, None, None),
    # first element without "." or ":" is a path, not a host
    ("test_com", "docker.io", "library/test_com", None, None),
    ("test_com/foo", "docker.io", "test_com/foo", None, None),
    ("foo/foo_bar.com:8080", "docker.io", "foo/foo_bar.com", "8080", None),
    ("test.com:tag", "docker.io", "library/test.com", "tag", None),
    ("test.com:5000", "docker.io", "library/test.com", "5000", None),
    ("foo_bar.com:8080", "docker.io", "library/foo_bar.com", "8080", None),
    # other registries
    ("test.com/repo:tag", "test.com", "repo", "tag", None),
    ("test:5000/repo", "test:5000", "repo", None, None),
    ("test-com:8080/foo", "test-com:8080", "foo", None, None),
    ("test:5000/repo@" + SHA, "test:5000", "repo", None, SHA),
    ("test:5000/repo:tag@" + SHA, "test:5000", "repo", "tag", SHA),
    ("sub-dom1.foo.com/bar/baz/quux:some-long-tag", "sub-dom1.foo.com", "bar/baz/quux",
     "some-long-tag", None),
    ("b.gcr.io/test.example.com/my-app:test.example.com", "b.gcr.io",
     "test.example.com/my-app", "test.example.com", None),
    ("xn--n3h.com/myimage:xn--n3h.com", "xn--n3h.com", "myimage", "xn--n3h.com", None),
    ("xn--7o8h.com/myimage:xn--7o8h.com@sha512:" + "f" * 64, "xn--7o8h.com", "myimage",
     "xn--7o8h.com", "sha512:" + "f" * 64),
    ("xn--n3h.com:18080/foo", "xn--n3h.com:18080", "foo", None, None),
    ("127.0.0.1:5000/library/debian", "127.0.0.1:5000", "library/debian", None, None),
    ("127.0.0.1:8000/privatebase", "127.0.0.1:8000", "privatebase", None, None),
    ("example.com/privatebase", "example.com", "privatebase", None, None),
    ("localhost/foo", "localhost", "foo", None, None),
    ("localhost:5000/foo/bar:1.0", "localhost:5000", "foo/bar", "1.0", None),
    ("[::1]:5000/foo", "[::1]:5000", "foo", None, None),
    ("[2001:db8::1]/foo:v1", "[2001:db8::1]", "foo", "v1", None),
    ("ghcr.io/owner/app", "ghcr.io", "owner/app", None, None),
    # path component separators
    ("docker---rules/docker", "docker.io", "docker---rules/docker", None, None),
    ("dock__er/docker", "docker.io", "dock__er/docker", None, None),
    ("d/docker", "docker.io", "d/docker", None, None),
    ("jess/t", "docker.io", "jess/t", None, None),
    ("thisisthesongthatneverendsitgoesonandonandonthisisthesongthatnev", "docker.io",
     "library/thisisthesongthatneverendsitgoesonandonandonthisisthesongthatnev", None, None),
    # tags
    ("busybox:latest@" + SHA_B, "docker.io", "library/busybox", "latest", SHA_B),
    ("foo:TAG5", "docker.io", "library/foo", "TAG5", None),
    ("foo:_x", "docker.io", "library/foo", "_x", None),
    ("foo:" + "a" * 128, "docker.io", "library/foo", "a" * 128, None),
    ("redis@" + SHA_B, "docker.io", "library/redis", None, SHA_B),
])
def test_parse_good(text, registry, repository, tag, digest):
    ref = parse_reference(text)
    assert ref == Reference(registry, repository, tag, digest)


@pytest.mark.parametrize("text, reason", [
    ("", "empty reference"),
    (":justtag", "missing repository name"),
    ("@" + SHA, "missing repository name"),
    ("alpine:", "empty tag"),
    ("alpine@", "empty digest"),
    ("Alpine", "repository names are lowercase"),
    ("docker/Docker", "repository names are lowercase"),
    ("docker.io/docker/Docker", "repository names are lowercase"),
    ("a@sha256:abc", "sha256 digest must be 64 hex characters"),
    ("a@sha256:" + "F" * 64, "sha256 digest must be 64 hex characters in lowercase"),
    ("a@sha256:" + "g" * 64, "sha256 digest must be 64 hex characters"),
    ("a@sha512:abc", "invalid digest"),
    ("a@1sha:" + "f" * 64, "invalid digest"),
    ("a@nodigest", "invalid digest"),
    ("a@" + SHA + "@" + SHA, "more than one '@'"),
    ("a/" * 128 + "a:tag", "repository name too long"),
    ("example.com/" + "a/" * 121 + "ab", "repository name too long"),
    ("aa/asdf$$^/aa", "invalid characters"),
    ("https://github.com/docker/docker", 'drop the "https://" prefix'),
    ("-docker", "invalid characters"),
    ("-docker/docker", "invalid characters"),
    ("-docker.io/docker/docker", "invalid registry host"),
    ("docker///docker", "empty path component"),
    ("docker.io/docker///docker", "empty path component"),
    ("docker/", "empty path component"),
    ("docker-/docker", "invalid characters"),
    ("-docker-/docker", "invalid characters"),
    ("____/____", "invalid characters"),
    ("_docker/_docker", "invalid characters"),
    ("dock..er/docker", "invalid registry host"),  # "." makes it a host
    ("dock_.er/docker", "invalid registry host"),  # "." makes it a host
    ("dock-.er/docker", "invalid registry host"),  # "." makes it a host
    ("dock___er/docker", "invalid characters"),
    (HEX64, "image ID"),
    ("foo:-tag", "invalid tag"),
    ("foo:.tag", "invalid tag"),
    ("foo:t@g", "invalid digest"),
    ("foo:" + "a" * 129, "tag too long"),
    ("foo:bar:baz", "invalid tag"),
    ("alpine ", "whitespace"),
    ("exa_mple.com/foo", "invalid registry host"),
    ("[fc00::1%eth0]:5000/foo", "invalid registry host"),
    ("localhost:port/foo", "invalid registry host"),
    ("_".join(["this_is_not_a_valid_namespace_because_its_lenth_is_greater_than_255"] * 4)
     + "/docker", "repository name too long"),
    ("dock..er", "invalid characters"),
    ("library/dock_.er", "invalid characters"),
])
def test_parse_bad(text, reason):
    with pytest.raises(ReferenceError_) as info:
        parse_reference(text)
    message = str(info.value)
    assert message.startswith(f'"{text}" is not a valid reference (')
    assert reason in message
    assert isinstance(info.value, MirrorError)


def test_name_length_limit_is_255():
    path = "a/" * 121 + "a"
    assert len("example.com/" + path) == 255
    assert parse_reference("example.com/" + path).name == "example.com/" + path


@pytest.mark.parametrize("text, canonical", [
    ("alpine", "docker.io/library/alpine"),
    ("alpine:3.19", "docker.io/library/alpine:3.19"),
    ("index.docker.io/fooo/bar:1", "docker.io/fooo/bar:1"),
    ("busybox:latest@" + SHA_B, "docker.io/library/busybox:latest@" + SHA_B),
    ("localhost:5000/a/b@" + SHA, "localhost:5000/a/b@" + SHA),
    ("[::1]:5000/foo:v2", "[::1]:5000/foo:v2"),
    ("ghcr.io/org/app", "ghcr.io/org/app"),
])
def test_str_round_trip(text, canonical):
    ref = parse_reference(text)
    assert str(ref) == canonical
    assert parse_reference(str(ref)) == ref


@pytest.mark.parametrize("text, name, api_host", [
    ("alpine", "docker.io/library/alpine", "registry-1.docker.io"),
    ("index.docker.io/x/y", "docker.io/x/y", "registry-1.docker.io"),
    ("ghcr.io/a/b:1", "ghcr.io/a/b", "ghcr.io"),
    ("localhost:5000/a", "localhost:5000/a", "localhost:5000"),
    ("[::1]:5000/a", "[::1]:5000/a", "[::1]:5000"),
])
def test_name_and_api_host(text, name, api_host):
    ref = parse_reference(text)
    assert ref.name == name
    assert ref.api_host == api_host


def test_with_tag_drops_digest_and_with_digest_keeps_tag():
    ref = parse_reference("alpine:3.19@" + SHA)
    assert str(ref.with_tag("edge")) == "docker.io/library/alpine:edge"
    assert ref.with_tag("edge").digest is None
    pinned = parse_reference("alpine:3.19").with_digest(SHA_B)
    assert (pinned.tag, pinned.digest) == ("3.19", SHA_B)
    assert str(pinned) == "docker.io/library/alpine:3.19@" + SHA_B


@pytest.mark.parametrize("call, arg, reason", [
    ("with_tag", "-foo", "invalid tag"),
    ("with_tag", "", "empty tag"),
    ("with_digest", "foo", "invalid digest"),
    ("with_digest", "sha256:abc", "sha256 digest must be 64 hex characters"),
])
def test_with_rejects_invalid(call, arg, reason):
    ref = parse_reference("busybox")
    with pytest.raises(ReferenceError_, match=reason):
        getattr(ref, call)(arg)


def test_reference_is_a_frozen_value():
    ref = Reference(DOCKER_HUB, "library/alpine", "3.19")
    assert ref == parse_reference("alpine:3.19")
    assert hash(ref) == hash(parse_reference("alpine:3.19"))
    with pytest.raises(AttributeError):
        ref.tag = "x"  # type: ignore[misc]


@pytest.mark.parametrize("host, expected", [
    ("localhost", True),
    ("localhost:5000", True),
    ("LOCALHOST:5000", True),
    ("127.0.0.1", True),
    ("127.0.0.1:5000", True),
    ("127.1.2.3:443", True),
    ("[::1]:5000", True),
    ("[::1]", True),
    ("::1", True),
    ("128.0.0.1", False),
    ("10.0.0.1:5000", False),
    ("docker.io", False),
    ("registry-1.docker.io", False),
    ("localhost.example.com", False),
    ("mylocalhost:5000", False),
    ("[::2]:5000", False),
    ("[::1", False),
    ("localhost:abc", False),
    ("", False),
])
def test_is_loopback(host, expected):
    assert is_loopback(host) is expected


def test_pure_core_does_not_import_aiohttp():
    code = ("import sys; import mirror.core.reference, mirror.core.platform, mirror.core.selection; "
            "print('aiohttp' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).parents[1])
    assert out.stdout.strip() == "False"
