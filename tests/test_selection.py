"""Tag selection: versions, Masterminds/semver ranges, include/exclude/latest, check_filter."""

import pytest

from mirror.core.selection import (TagFilter, Version, VersionRange, check_filter, parse_range,
                              parse_version, select_tags)


# --- versions --------------------------------------------------------------------------

@pytest.mark.parametrize("tag, expected", [
    ("1.2.3", (1, 2, 3, "", "")),
    ("v1.2.3", (1, 2, 3, "", "")),
    ("1.2", (1, 2, 0, "", "")),
    ("1", (1, 0, 0, "", "")),
    ("v1", (1, 0, 0, "", "")),
    ("1.2.3-rc.1", (1, 2, 3, "rc.1", "")),
    ("1.2.3+build.5", (1, 2, 3, "", "build.5")),
    ("1.2.3-rc.1+b-7", (1, 2, 3, "rc.1", "b-7")),
    ("3.19-alpine", (3, 19, 0, "alpine", "")),
    ("1.25-alpine3.19", (1, 25, 0, "alpine3.19", "")),
    ("01.02.03", (1, 2, 3, "", "")),
    ("20240101", (20240101, 0, 0, "", "")),
    ("v2.3.5-20161202202307-sha.e8fc5e5", (2, 3, 5, "20161202202307-sha.e8fc5e5", "")),
    ("18446744073709551615", (2**64 - 1, 0, 0, "", "")),
    ("latest", None),
    ("edge", None),
    ("V1.2.3", None),
    ("1.2.3.4", None),
    ("1.2.3-", None),
    ("1.2.3+", None),
    ("1.2.3-rc..1", None),
    ("1.2.3-01", None),          # leading zero in a numeric prerelease identifier
    ("stable-1.2", None),
    ("", None),
    ("v", None),
    ("1.2.3_4", None),
    ("18446744073709551616", None),  # does not fit Go's uint64
])
def test_parse_version(tag, expected):
    v = parse_version(tag)
    got = None if v is None else (v.major, v.minor, v.patch, v.prerelease, v.build)
    assert got == expected


def test_semver_org_precedence():
    ordered = ["1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-alpha.beta", "1.0.0-beta", "1.0.0-beta.2",
               "1.0.0-beta.11", "1.0.0-rc.1", "1.0.0", "1.0.1", "1.1.0", "2.0.0", "10.0.0"]
    versions = [parse_version(t) for t in ordered]
    assert sorted(reversed(versions)) == versions
    assert all(a < b for a, b in zip(versions, versions[1:], strict=False))


@pytest.mark.parametrize("a, b", [
    ("1.2", "1.2.0"), ("v1.2.0", "1.2.0"), ("1.0.0+a", "1.0.0+b"), ("1", "1.0.0"),
    ("1.0.0-1+x", "1.0.0-1"),
])
def test_equal_versions(a, b):
    assert parse_version(a) == parse_version(b)
    assert hash(parse_version(a)) == hash(parse_version(b))


def test_version_str():
    assert str(parse_version("v1.2-rc.1+b")) == "1.2.0-rc.1+b"
    assert str(Version(1)) == "1.0.0"


# --- ranges (cases from Masterminds/semver constraints_test.go) ------------------------

@pytest.mark.parametrize("rng, version, expected", [
    # plain comparisons
    ("=2.0.0", "1.2.3", False), ("=2.0.0", "2.0.0", True),
    ("= 2.0", "1.2.3", False), ("= 2.0", "2.0.0", True), ("=2.0", "2.0.1", True),
    ("4.1", "4.1.0", True), ("v1.2.3", "1.2.3", True), ("=v1.2", "1.2.9", True),
    ("!=4.1.0", "4.1.0", False), ("!=4.1.0", "4.1.1", True),
    ("!=4.1", "4.1.0", False), ("!=4.1", "4.1.1", False), ("!=4.1", "5.1.0", True),
    ("!=4.1", "5.1.0-alpha.1", False),
    ("!=4.1-alpha", "4.1.0-alpha", False), ("!=4.1-alpha", "4.1.1-alpha", False),
    ("!=4.1-alpha", "4.1.0", True),
    ("!=4.x", "5.1.0", True), ("!=4.x", "4.1.0", False),
    ("!=4.1.x", "4.2.0", True), ("!=4.2.x", "4.2.3", False),
    ("<11", "0.1.0", True), ("<11", "11.1.0", False),
    ("<1.1", "0.1.0", True), ("<1.1", "1.1.0", False), ("<1.1", "1.1.1", False),
    ("<1.x", "1.1.1", False), ("<1.x", "0.1.1", True), ("<1.x", "2.0.0", False),
    ("<1.1.x", "1.2.1", False), ("<1.1.x", "1.1.500", False), ("<1.1.x", "1.0.500", True),
    ("<1.2.x", "1.1.1", True),
    ("<=11", "1.2.3", True), ("<=11", "12.2.3", False), ("<=11", "11.2.3", True),
    ("<=1.1", "1.2.3", False), ("<=1.1", "0.1.0", True), ("<=1.1", "1.1.0", True),
    ("<=1.1", "1.1.1", True), ("<=1.x", "1.1.0", True), ("<=2.x", "3.0.0", False),
    ("<=1.1.x", "1.2.500", False), ("<=4.5", "3.7.0", True), ("<=4.5", "4.6.3", False),
    ("=<1.1", "1.1.1", True),
    (">1.1", "4.1.0", True), (">1.1", "1.1.0", False),
    (">0", "0", False), (">0", "1", True), (">11", "11.1.0", False),
    (">11.1", "11.1.0", False), (">11.1", "11.1.1", False), (">11.1", "11.2.1", True),
    (">=11", "11.1.2", True), (">=11.1", "11.1.2", True), (">=11.1", "11.0.2", False),
    (">=1.1", "4.1.0", True), (">=1.1", "1.1.0", True), (">=1.1", "0.0.9", False),
    ("=>1.1", "1.1.0", True), (">=0", "0", True), ("=0", "1", False),
    # wildcards
    ("*", "1", True), ("*", "4.5.6", True), ("x", "4.5.6", True),
    ("2.*", "1", False), ("2.*", "3.4.5", False), ("2.*", "2.1.1", True),
    ("2.1.*", "2.1.1", True), ("2.1.*", "2.2.1", False), ("1.x", "1.4", True),
    ("4.1.x", "4.1.3", True), ("0.x.x", "1.2.3", False), ("0.0.x", "1.2.3", False),
    ("0.0.0", "1.2.3", False),
    ("2", "1", False), ("2", "3.4.5", False), ("2", "2.1.1", True),
    ("2.1", "2.1.1", True), ("2.1", "2.2.1", False),
    # tilde
    ("~1.2.3", "1.2.4", True), ("~1.2.3", "1.3.4", False), ("~1.2.3", "1.2.2", False),
    ("~1.2", "1.2.4", True), ("~1.2", "1.3.4", False),
    ("~1", "1.2.4", True), ("~1", "2.3.4", False), ("~1", "1.4", True),
    ("~0.2.3", "0.2.5", True), ("~0.2.3", "0.3.5", False),
    ("~1.x", "2.1.1", False), ("~1.x", "1.3.5", True),
    ("~*", "2.1.1", True), ("~0.0.0", "1.2.3", True), ("~> 1.2", "1.2.9", True),
    ("~1.1", "1.1.1-alpha", False), ("~1.1-alpha", "1.1.1-beta", True),
    ("~1.1.1-beta", "1.1.1-alpha", False), ("~1.1.1-beta", "1.1.1", True),
    ("~1.2.3-beta.2", "1.2.3-beta.4", True), ("~1.2.3-beta.2", "1.2.4-beta.2", True),
    ("~1.2.3-beta.2", "1.3.4-beta.2", False),
    # caret
    ("^1.2.3", "1.8.9", True), ("^1.2.3", "2.8.9", False), ("^1.2.3", "1.2.1", False),
    ("^1.1.0", "2.1.0", False), ("^1.2.0", "2.2.1", False),
    ("^1.2", "1.8.9", True), ("^1.2", "2.8.9", False), ("^1", "1.8.9", True),
    ("^1", "2.8.9", False), ("^1.x", "1.1.1", True), ("^2.x", "1.1.1", False),
    ("^0.2.3", "0.2.5", True), ("^0.2.3", "0.5.6", False), ("^0.2", "0.2.5", True),
    ("^0.2", "0.5.6", False), ("^0.0.3", "0.0.3", True), ("^0.0.3", "0.0.4", False),
    ("^0.0", "0.0.3", True), ("^0.0", "0.1.4", False), ("^0.0", "1.0.4", False),
    ("^0", "0.2.3", True), ("^0", "1.1.4", False), ("^0.0.0", "1.2.3", False),
    ("^*", "3.2.1", True),
    ("^1.2.0", "1.2.1-alpha.1", False), ("^1.2.0-alpha.0", "1.2.1-alpha.1", True),
    ("^1.2.0-alpha.2", "1.2.0-alpha.1", False), ("^1.x", "1.1.1-beta1", False),
    ("^1.1.2-alpha", "1.2.1-beta1", True), ("^1.2.x-alpha", "1.1.1-beta1", False),
    ("^0.2.3-beta.2", "0.2.4-beta.2", True), ("^0.2.3-beta.2", "0.3.4-beta.2", False),
    # AND (comma or space) and OR
    (">1.1, <2", "1.1.1", False), (">1.1, <2", "1.2.1", True), (">1.1, <3", "4.3.2", False),
    (">=1.1, <2, !=1.2.3", "1.2.3", False), (">1.1 <2", "1.2.1", True),
    (">1.1    <3", "4.3.2", False), (">=1.1    <2    !=1.2.3", "1.2.3", False),
    ("> 1.1, <     2", "1.1.1", False), (">   1.1, <2", "1.2.1", True), (">=1.0,<2.0", "1.5", True),
    (">=1.1, <2, !=1.2.3 || > 3", "4.1.2", True), (">=1.1, <2, !=1.2.3 || > 3", "3.1.2", False),
    (">=1.1, <2, !=1.2.3 || >= 3", "3.0.0", True), (">=1.1, <2, !=1.2.3 || > 3", "3.0.0", False),
    (">=1.1, <2, !=1.2.3 || > 3", "1.2.3", False), (">= 1.1 <2 != 1.2.3 || >= 3", "3.0.0", True),
    # hyphen ranges
    ("1.1 - 2", "1.1.1", True), ("1.5.0 - 4.5", "3.7.0", True), ("1.2 - 1.4.5", "1.4.5", True),
    ("1.2 - 1.4.5", "1.4.6", False), ("1.2 - 1.4.5", "1.1.9", False),
    ("2 - 3, !=2.5.0", "2.5.0", False), ("1.1-3", "4.3.2", False),  # no spaces: a prerelease
    ("3 - 4 || => 3.0, < 4", "4.0.0", True),
    # prereleases: only a group that names one itself lets them in
    ("*", "1.2.3-alpha.1", False), ("*-0", "1.2.3-alpha.1", True),
    (">=1.1", "4.1.0-beta", False), ("<=1.1", "0.1.0-alpha", False),
    ("<=1.1-a", "0.1.0-alpha", True),
    (">0", "0.0.1-alpha", False), (">0.0", "0.0.1-alpha", False), (">0-0", "0.0.1-alpha", False),
    (">0.0-0", "0.0.1-alpha", False), (">0", "0.0.0-alpha", False), (">0-0", "0.0.0-alpha", False),
    (">0.0.0-0", "0.0.0-alpha", True), (">1.2.3-alpha.1", "1.2.3-alpha.2", True),
    (">1.2.3-alpha.1", "1.3.3-alpha.2", True),
    (">=0", "0.0.1-alpha", False), (">=0-0", "0.0.1-alpha", True), (">=0.0-0", "0.0.1-alpha", True),
    (">=0.0.0-0", "1.2.3", True), (">=0.0.0-0", "3.4.5-beta.1", True),
    ("<0", "0.0.0-alpha", False), ("<0-z", "0.0.0-alpha", True),
    (">=1.2.3-alpha, <2", "1.5.0-beta", True),    # the group's other comparator lets it in
    (">=1.2.3, <2", "1.5.0-beta", False),
    (">=5 || <1.0.0-0", "5.1.0-rc.1", False),      # only the group without one could match
    ("<1.0.0-0 || >=5", "0.9.0-rc.1", True),
    (">=3.19", "3.19-alpine", False), (">=3.19.0-0", "3.19-alpine", True),
])
def test_range_contains(rng, version, expected):
    v = parse_version(version)
    assert v is not None
    assert (v in parse_range(rng)) is expected


def test_range_accepts_tag_strings():
    rng = parse_range("^1.2")
    assert "v1.4.0" in rng
    assert "latest" not in rng
    assert isinstance(rng, VersionRange) and str(rng) == "^1.2"


@pytest.mark.parametrize("text", [
    ">= 1.1", ">40.50.60, < 50.70", "2.0", "v2.3.5-20161202202307-sha.e8fc5e5",
    ">= 1.2.3 < 2.0", ">= 1.2.3 < 2.0 || => 3.0 < 4", ">= 1.2.3, < 2.0 || => 3.0, < 4",
    "3 - 4 || => 3.0, < 4", "12.3.34 ~1.2.3", ">=1.0,<2.0", "~> 1.2", "  >=1  ", "1.2.X",
])
def test_parse_range_good(text):
    parse_range(text)


@pytest.mark.parametrize("text, reason", [
    ("", "it is empty"),
    ("   ", "it is empty"),
    (">= bar", 'cannot read ">= bar"'),
    ("BAR >= 1.2.3", 'cannot read "BAR >= 1.2.3"'),
    ("12.3.4.1234", 'unexpected ".1234"'),
    ("12.3.34~ 1.2.3", 'unexpected "~"'),
    (">1 ||", 'empty alternative next to "||"'),
    ("|| >1", 'empty alternative next to "||"'),
    (">1 |||| <3", 'empty alternative'),
    (">1,", "nothing after the last comma"),
    (">1,,<2", 'cannot read ",<2"'),
    ("1.2.3-01", '"1.2.3-01" is not a valid version'),
    ("1.2.", 'unexpected "."'),
    (">=1.2.3abc", 'unexpected "abc" after ">=1.2.3"'),
    (">1<2", 'unexpected "<2"'),
    ("99999999999999999999.0.0", "is not a valid version"),
    ("=>=1", 'cannot read "=>=1"'),
    (">= 1.2 && < 2", 'cannot read "&& < 2"'),
    (">=1, foo, <2", 'cannot read "foo"'),
])
def test_parse_range_bad(text, reason):
    with pytest.raises(ValueError) as info:
        parse_range(text)
    message = str(info.value)
    assert message.startswith(f'invalid version range "{text}": ')
    assert reason in message


# --- select_tags -----------------------------------------------------------------------

TAGS = ["latest", "edge", "3", "3.17", "3.17.0", "3.18.4", "3.19", "3.19.0", "3.19.1",
        "3.20.0-rc.1", "3.19-alpine", "v3.16.2", "20230901"]


@pytest.mark.parametrize("flt, expected", [
    (TagFilter(), sorted(TAGS)),
    (TagFilter(include=(r"^3\.19",)), ["3.19", "3.19-alpine", "3.19.0", "3.19.1"]),
    (TagFilter(include=(r"^3\.19",), exclude=("alpine",)), ["3.19", "3.19.0", "3.19.1"]),
    (TagFilter(include=("^latest$", "^edge$")), ["edge", "latest"]),
    (TagFilter(include=("rc",)), ["3.20.0-rc.1"]),
    (TagFilter(exclude=(r"\d",)), ["edge", "latest"]),
    (TagFilter(include=("nomatch",)), []),
    # semver: version order, highest first; equal versions by name; non-versions dropped
    (TagFilter(semver=">=3.18"), ["20230901", "3.19.1", "3.19", "3.19.0", "3.18.4"]),
    (TagFilter(semver="~3.19"), ["3.19.1", "3.19", "3.19.0"]),
    (TagFilter(semver=">=3.16 <3.17"), ["v3.16.2"]),
    (TagFilter(semver="^3.0.0, <4"), ["3.19.1", "3.19", "3.19.0", "3.18.4", "3.17", "3.17.0",
                                      "v3.16.2", "3"]),
    (TagFilter(semver=">=3.19.0-0 <4"), ["3.20.0-rc.1", "3.19.1", "3.19", "3.19.0",
                                         "3.19-alpine"]),
    (TagFilter(semver="3.17 || 3.19.x"), ["3.19.1", "3.19", "3.19.0", "3.17", "3.17.0"]),
    (TagFilter(semver=">=4"), ["20230901"]),
    (TagFilter(semver=">=3.18", exclude=(r"^\d{8}$",)), ["3.19.1", "3.19", "3.19.0", "3.18.4"]),
    # latest N: N highest versions; prereleases skipped unless the range asks for them
    (TagFilter(latest=2), ["20230901", "3.19.1"]),
    (TagFilter(latest=2, exclude=(r"^\d{8}$",)), ["3.19.1", "3.19", "3.19.0"]),
    (TagFilter(latest=1, semver="<3.19"), ["3.18.4"]),
    (TagFilter(latest=2, semver="<3.19"), ["3.18.4", "3.17", "3.17.0"]),
    (TagFilter(latest=1, semver=">=3.19.0-0 <4"), ["3.20.0-rc.1"]),
    (TagFilter(latest=100, semver="~3.19"), ["3.19.1", "3.19", "3.19.0"]),
    (TagFilter(latest=1, include=("^edge$",)), []),
])
def test_select_tags(flt, expected):
    assert select_tags(TAGS, flt) == expected
    assert select_tags(reversed(TAGS), flt) == expected  # input order does not matter


def test_select_tags_dedupes_and_accepts_any_iterable():
    assert select_tags(iter(["b", "a", "b"]), TagFilter()) == ["a", "b"]
    assert select_tags((), TagFilter(latest=3)) == []


@pytest.mark.parametrize("flt", [
    TagFilter(include=("v(1",)),
    TagFilter(exclude=("[",)),
    TagFilter(semver=">= bar"),
    TagFilter(latest=0),
])
def test_select_tags_with_invalid_filter_selects_nothing(flt):
    assert select_tags(TAGS, flt) == []


# --- check_filter ----------------------------------------------------------------------

@pytest.mark.parametrize("flt, expected", [
    (TagFilter(), []),
    (TagFilter(include=("^v1",), exclude=("rc",), semver="^1", latest=3), []),
    (TagFilter(include=("v(1",)),
     [("include[0]", 'invalid regular expression "v(1": missing ), unterminated subpattern')]),
    (TagFilter(exclude=("ok", "[")),
     [("exclude[1]", 'invalid regular expression "[": unterminated character set')]),
    (TagFilter(include=("[[:digit:]]+",)),
     [("include[0]", 'uses the POSIX class "[:digit:]", which Python does not support')]),
    (TagFilter(exclude=("^v[0-9a-f[:space:]]",)), [("exclude[0]", 'POSIX class "[:space:]"')]),
    (TagFilter(include=("[:x:]",)), []),  # a plain set in Go and Python alike
    (TagFilter(include=(5,)), [("include[0]", "must be a regular expression string")]),
    (TagFilter(include="^v1"), [("include", "must be a list of regular expressions")]),
    (TagFilter(semver=">= bar"),
     [("semver", 'invalid version range ">= bar": cannot read ">= bar"')]),
    (TagFilter(semver=""), [("semver", 'invalid version range "": it is empty')]),
    (TagFilter(latest=0), [("latest", "must be at least 1, not 0")]),
    (TagFilter(latest=-2), [("latest", "must be at least 1, not -2")]),
    (TagFilter(latest=True), [("latest", "must be a whole number of versions to keep")]),
    (TagFilter(latest="3"), [("latest", "must be a whole number of versions to keep")]),
    (TagFilter(include=("(",), exclude=(")",), semver="~", latest=0),
     [("include[0]", "invalid regular expression"), ("exclude[0]", "invalid regular expression"),
      ("semver", "invalid version range"), ("latest", "must be at least 1")]),
])
def test_check_filter(flt, expected):
    problems = check_filter(flt)
    assert [key for key, _ in problems] == [key for key, _ in expected]
    for (_, message), (_, fragment) in zip(problems, expected, strict=True):
        assert fragment in message
