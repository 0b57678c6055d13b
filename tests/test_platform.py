"""Platforms: containerd's normalisation, matching, and errors."""

import pytest

from mirror.errors import PlatformError
from mirror.core.platform import Platform, from_oci, matches, parse_platform


@pytest.mark.parametrize("text, expected", [
    ("linux/amd64", "linux/amd64"),
    ("LINUX/AMD64", "linux/amd64"),
    ("linux/x86_64", "linux/amd64"),
    ("linux/x86-64", "linux/amd64"),
    ("linux/amd64/v1", "linux/amd64"),
    ("linux/amd64/v3", "linux/amd64/v3"),
    ("linux/x86_64/v2", "linux/amd64/v2"),
    ("linux/amd64/2", "linux/amd64/v2"),
    ("linux/arm64", "linux/arm64"),
    ("linux/arm64/v8", "linux/arm64"),
    ("linux/arm64/8", "linux/arm64"),
    ("linux/arm64/v8.0", "linux/arm64"),
    ("linux/aarch64", "linux/arm64"),
    ("linux/aarch64/v8", "linux/arm64"),
    ("linux/arm64/v9", "linux/arm64/v9"),
    ("linux/arm64/9.0", "linux/arm64/v9"),
    ("linux/arm", "linux/arm/v7"),
    ("linux/arm/7", "linux/arm/v7"),
    ("linux/arm/v7", "linux/arm/v7"),
    ("linux/arm/V6", "linux/arm/v6"),
    ("linux/arm/5", "linux/arm/v5"),
    ("linux/arm/v8", "linux/arm/v8"),     # 32-bit arm on an armv8 core stays arm
    ("linux/armhf", "linux/arm/v7"),
    ("linux/armel", "linux/arm/v6"),
    ("linux/i386", "linux/386"),
    ("linux/i686", "linux/386"),
    ("linux/386", "linux/386"),
    ("linux/ppc64le", "linux/ppc64le"),
    ("linux/s390x", "linux/s390x"),
    ("linux/riscv64", "linux/riscv64"),
    ("windows/amd64", "windows/amd64"),
    ("macos/arm64", "darwin/arm64"),
    (" linux/amd64 ", "linux/amd64"),
])
def test_parse_and_normalise(text, expected):
    assert str(parse_platform(text)) == expected


@pytest.mark.parametrize("text, reason", [
    ("", "empty platform"),
    ("   ", "empty platform"),
    ("linux", "both an os and an architecture are needed"),
    ("amd64", "both an os and an architecture are needed"),
    ("a/b/c/d", "too many parts"),
    ("linux/", "empty part"),
    ("/amd64", "empty part"),
    ("linux//v7", "empty part"),
    ("linux/arm/", "empty part"),
    ("linux/am d64", "invalid characters"),
    ("linux/amd64,linux/arm64", "invalid characters"),
    ("linux(10.0)/amd64", "invalid characters"),
])
def test_parse_errors(text, reason):
    with pytest.raises(PlatformError) as info:
        parse_platform(text)
    message = str(info.value)
    assert message.startswith(f'"{text}" is not a valid platform (')
    assert reason in message
    assert "linux/amd64" in message  # says what a good one looks like


def test_constructor_normalises_too():
    assert Platform("Linux", "x86_64") == Platform("linux", "amd64")
    assert Platform("linux", "arm64", "v8") == Platform("linux", "arm64")
    assert Platform("linux", "arm") == Platform("linux", "arm", "v7")
    assert Platform("linux", "arm64", "v8").variant == ""


def test_platforms_sort_and_hash():
    ps = [parse_platform(t) for t in ("linux/s390x", "linux/arm/v7", "linux/amd64", "linux/arm64")]
    assert [str(p) for p in sorted(ps)] == ["linux/amd64", "linux/arm/v7", "linux/arm64",
                                            "linux/s390x"]
    assert len({parse_platform("linux/arm64"), parse_platform("linux/aarch64/v8")}) == 1


@pytest.mark.parametrize("obj, expected", [
    ({"os": "linux", "architecture": "amd64"}, "linux/amd64"),
    ({"os": "linux", "architecture": "arm64", "variant": "v8"}, "linux/arm64"),
    ({"os": "linux", "architecture": "arm", "variant": "v6"}, "linux/arm/v6"),
    ({"os": "linux", "architecture": "arm"}, "linux/arm/v7"),
    ({"os": "windows", "architecture": "amd64", "os.version": "10.0.17763.5458",
      "os.features": ["win32k"]}, "windows/amd64"),
    ({"os": "unknown", "architecture": "unknown"}, "unknown/unknown"),  # attestation manifests
    ({"os": "linux", "architecture": "amd64", "variant": ""}, "linux/amd64"),
    ({"os": "linux", "architecture": "amd64", "variant": None}, "linux/amd64"),
    (None, None),
    ({}, None),
    ({"os": "linux"}, None),
    ({"architecture": "amd64"}, None),
    ({"os": "", "architecture": "amd64"}, None),
    ({"os": "linux", "architecture": 64}, None),
    ({"os": "linux", "architecture": "arm", "variant": 7}, None),
    ("linux/amd64", None),
])
def test_from_oci(obj, expected):
    got = from_oci(obj)
    assert (None if got is None else str(got)) == expected


@pytest.mark.parametrize("wanted, actual, expected", [
    ("linux/amd64", "linux/amd64", True),
    ("linux/amd64", "linux/x86_64", True),
    ("linux/arm64", "linux/arm64/v8", True),
    ("linux/arm64/v8", "linux/arm64", True),
    ("linux/arm64/v8", "linux/aarch64", True),
    ("linux/arm/v7", "linux/arm", True),
    ("linux/arm", "linux/arm/v7", True),
    ("linux/arm/v7", "linux/armhf", True),
    ("linux/arm/v6", "linux/armel", True),
    ("LINUX/AMD64", "linux/amd64", True),
    ("linux/amd64", "linux/arm64", False),
    ("linux/arm/v7", "linux/arm/v6", False),
    ("linux/arm/v6", "linux/arm/v7", False),
    ("linux/arm64", "linux/arm/v7", False),
    ("linux/amd64", "linux/amd64/v3", False),
    ("linux/amd64", "windows/amd64", False),
    ("linux/arm64", "linux/arm64/v9", False),
])
def test_matches(wanted, actual, expected):
    assert matches(parse_platform(wanted), parse_platform(actual)) is expected


def test_matches_descriptor_without_variant():
    wanted = parse_platform("linux/arm64/v8")
    assert matches(wanted, from_oci({"os": "linux", "architecture": "arm64"}))
