"""Choosing tags from a repository's tag list: regex include/exclude, version ranges, latest N.

Version ranges follow Masterminds/semver v3 constraints, the dialect skopeo sync's
`images-by-semver` users already write:

    >=1.2 <2 || ~3.1     ,/space = AND, || = OR
    = != > < >= <=       (=> and =< too); no operator means =
    ~1.2.3  >=1.2.3 <1.3.0        ~1  >=1.0.0 <2.0.0
    ^1.2.3  >=1.2.3 <2.0.0        ^0.2.3  >=0.2.3 <0.3.0     ^0.0.3  >=0.0.3 <0.0.4
    1.2.x  1.*  *                 wildcards; "1.2" alone means 1.2.x
    1.2 - 1.4.5                   >=1.2 <=1.4.5

Tags are read as versions leniently, as Masterminds' NewVersion does: a leading "v",
missing minor/patch ("1.2" is 1.2.0), build metadata ignored for ordering. A tag such as
"3.19-alpine" therefore reads as the prerelease 3.19.0-alpine, and prereleases only match
an AND group in which some comparator itself names a prerelease (">=1.0.0-0").
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from collections.abc import Iterable

_UINT64_MAX = 2**64 - 1
_IDENT = r"[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*"
_PRE_BUILD = rf"(?:-({_IDENT}))?(?:\+({_IDENT}))?"
_VERSION = re.compile(rf"v?([0-9]+)(?:\.([0-9]+))?(?:\.([0-9]+))?{_PRE_BUILD}", re.ASCII)

# A version in a range: each number may also be a wildcard.
_SEG = r"(?:[0-9]+|[xX*])"
_CV = rf"v?{_SEG}(?:\.{_SEG})?(?:\.{_SEG})?(?:-{_IDENT})?(?:\+{_IDENT})?"
_CV_PARTS = re.compile(rf"v?({_SEG})(?:\.({_SEG}))?(?:\.({_SEG}))?{_PRE_BUILD}", re.ASCII)
# Longest operators first so ">=" is not read as ">" followed by "=1.2".
_COMPARATOR = re.compile(rf"(!=|>=|=>|<=|=<|~>|=|>|<|~|\^)?\s*({_CV})", re.ASCII)
_HYPHEN_RANGE = re.compile(rf"\s*({_CV})\s+-\s+({_CV})\s*", re.ASCII)
_SEPARATOR = re.compile(r"\s*(,)?\s*")
_POSIX_CLASS = re.compile(r"\[[^\]]*?\[:([a-z]+):\]")


@functools.total_ordering
@dataclass(frozen=True, eq=False)
class Version:
    """A semantic version; ordering and equality follow semver.org precedence (build ignored)."""

    major: int
    minor: int = 0
    patch: int = 0
    prerelease: str = ""
    build: str = ""

    def _key(self) -> tuple:
        if not self.prerelease:
            return (self.major, self.minor, self.patch, 1, ())
        # Numeric identifiers sort numerically and below alphanumeric ones; a longer
        # list wins when all shared identifiers are equal (tuple order does that).
        ids = tuple((0, int(p), "") if p.isdigit() else (1, 0, p)
                    for p in self.prerelease.split("."))
        return (self.major, self.minor, self.patch, 0, ids)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Version) and self._key() == other._key()

    def __lt__(self, other: Version) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return self._key() < other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __str__(self) -> str:
        text = f"{self.major}.{self.minor}.{self.patch}"
        if self.prerelease:
            text += f"-{self.prerelease}"
        if self.build:
            text += f"+{self.build}"
        return text


def parse_version(tag: str) -> Version | None:
    """Read a tag as a version the lenient Masterminds way; None if it is not one."""
    m = _VERSION.fullmatch(tag)
    if not m:
        return None
    numbers = [int(g) if g else 0 for g in m.group(1, 2, 3)]
    # Go's ParseUint fails past 64 bits, so a date-stamp-like tag too long for that is
    # not a version there either.
    if any(n > _UINT64_MAX for n in numbers):
        return None
    prerelease = m.group(4) or ""
    if any(len(p) > 1 and p.isdigit() and p[0] == "0" for p in prerelease.split(".")):
        return None  # semver forbids leading zeros in numeric prerelease identifiers
    return Version(*numbers, prerelease=prerelease, build=m.group(5) or "")


@dataclass(frozen=True)
class _Comparator:
    op: str              # "=", "!=", ">", "<", ">=", "<=", "~", "^"
    version: Version     # wildcards and missing parts read as 0
    dirty: bool          # some part was a wildcard or missing
    minor_dirty: bool    # "1", "1.x": only the major was given
    patch_dirty: bool    # "1.2", "1.2.x": major and minor were given

    def allows(self, v: Version) -> bool:
        c = self.version
        op = self.op
        if op == "=" and self.dirty:
            op = "~"  # a wildcard equality is a tilde range: "1.2.x" == "~1.2"
        if op == "=":
            return v == c
        if op == "!=":
            if self.dirty:
                if v.major != c.major:
                    return True
                if self.minor_dirty:
                    return False
                if v.minor != c.minor:
                    return True
                if self.patch_dirty:
                    return v.prerelease != c.prerelease
                if v.patch != c.patch:
                    return True
            return v != c
        if op == ">":
            if not self.dirty or not (self.minor_dirty or self.patch_dirty):
                return v > c
            if v.major != c.major:
                return v.major > c.major
            return not self.minor_dirty and v.minor > c.minor
        if op == "<":
            return v < c
        if op == ">=":
            return v >= c
        if op == "<=":
            if not self.dirty:
                return v <= c
            if v.major > c.major:
                return False
            return not (v.major == c.major and v.minor > c.minor and not self.minor_dirty)
        if op == "~":
            if v < c:
                return False
            if (c.major, c.minor, c.patch) == (0, 0, 0) and not (
                    self.minor_dirty or self.patch_dirty):
                return True  # "~0.0.0" and "~*" mean any version
            return v.major == c.major and (self.minor_dirty or v.minor == c.minor)
        # op == "^"
        if self.dirty and not (self.minor_dirty or self.patch_dirty):
            return True  # "^*": any (documented by Masterminds, though its code says 0.0.x)
        if v < c:
            return False
        if c.major > 0 or self.minor_dirty:
            return v.major == c.major
        if v.major > 0:
            return False
        if c.minor > 0 or self.patch_dirty:
            return v.minor == c.minor
        return v.minor == 0 and v.patch == c.patch


@dataclass(frozen=True)
class VersionRange:
    """A parsed version range: OR of AND groups of comparators. Use `version in rng`."""

    text: str
    groups: tuple[tuple[_Comparator, ...], ...]

    def __contains__(self, version: Version | str) -> bool:
        if isinstance(version, str):
            version = parse_version(version)
            if version is None:
                return False
        for group in self.groups:
            # Masterminds' rule: a prerelease is only considered by a group that asks
            # for prereleases itself, so ">=1.0" never picks "2.0.0-rc.1".
            if version.prerelease and not any(c.version.prerelease for c in group):
                continue
            if all(c.allows(version) for c in group):
                return True
        return False

    def __str__(self) -> str:
        return self.text


def parse_range(text: str) -> VersionRange:
    """Parse a Masterminds-style version range; raises ValueError saying what is wrong."""
    def fail(reason: str) -> ValueError:
        return ValueError(f'invalid version range "{text}": {reason}')

    if not isinstance(text, str):
        raise ValueError(f"invalid version range {text!r}: expected a string such as \">=1.2\"")
    if not text.strip():
        raise fail("it is empty")
    rewritten = _HYPHEN_RANGE.sub(lambda m: f">= {m.group(1)}, <= {m.group(2)} ", text)
    groups = []
    for alternative in rewritten.split("||"):
        if not alternative.strip():
            raise fail('empty alternative next to "||"')
        groups.append(_parse_group(alternative, fail))
    return VersionRange(text, tuple(groups))


def _parse_group(group: str, fail) -> tuple[_Comparator, ...]:
    comparators = []
    pos = len(group) - len(group.lstrip())
    while True:
        m = _COMPARATOR.match(group, pos)
        if not m:
            rest = group[pos:].strip()
            bad = rest.split(",")[0].strip() or rest
            raise fail(f'cannot read "{bad}" as a comparison such as ">=1.2" or "~1.4"')
        comparators.append(_comparator(m.group(1) or "=", m.group(2), fail))
        pos = m.end()
        sep = _SEPARATOR.match(group, pos)
        if sep.end() == len(group):
            if sep.group(1):
                raise fail("nothing after the last comma")
            return tuple(comparators)
        if sep.end() == pos:
            bad = re.split(r"[\s,]", group[pos:], maxsplit=1)[0]
            raise fail(f'unexpected "{bad}" after "{m.group(0).strip()}" '
                       "(separate comparisons with a comma or a space)")
        pos = sep.end()


def _comparator(op: str, text: str, fail) -> _Comparator:
    op = {"=>": ">=", "=<": "<=", "~>": "~"}.get(op, op)
    major, minor, patch, pre, build = _CV_PARTS.fullmatch(text).groups()
    wild = ("x", "X", "*")
    if major in wild:
        parts, flags = (0, 0, 0), (True, False, False)
    elif minor is None or minor in wild:
        parts, flags = (int(major), 0, 0), (True, True, False)
    elif patch is None or patch in wild:
        parts, flags = (int(major), int(minor), 0), (True, False, True)
    else:
        parts, flags = (int(major), int(minor), int(patch)), (False, False, False)
    pre = pre or ""
    if any(n > _UINT64_MAX for n in parts) or (
            any(len(p) > 1 and p.isdigit() and p[0] == "0" for p in pre.split("."))):
        raise fail(f'"{text}" is not a valid version')
    version = Version(*parts, prerelease=pre, build=(build or "") if not flags[0] else "")
    return _Comparator(op, version, *flags)


@dataclass(frozen=True)
class TagFilter:
    """Which tags of a repository to mirror."""

    include: tuple[str, ...] = ()     # regexes (re.search); if any, one must match
    exclude: tuple[str, ...] = ()     # regexes; none may match
    semver: str | None = None         # a version range; non-version tags are dropped
    latest: int | None = None         # keep the N highest versions left after the filters


def check_filter(flt: TagFilter) -> list[tuple[str, str]]:
    """Every problem in a filter as (key, message), e.g. ("include[0]", ...); [] if valid."""
    problems: list[tuple[str, str]] = []
    for field in ("include", "exclude"):
        patterns = getattr(flt, field)
        if isinstance(patterns, str) or not isinstance(patterns, (tuple, list)):
            problems.append((field, "must be a list of regular expressions"))
            continue
        for i, pattern in enumerate(patterns):
            message = _check_regex(pattern)
            if message:
                problems.append((f"{field}[{i}]", message))
    if flt.semver is not None:
        try:
            parse_range(flt.semver)
        except ValueError as exc:
            problems.append(("semver", str(exc)))
    if flt.latest is not None:
        if isinstance(flt.latest, bool) or not isinstance(flt.latest, int):
            problems.append(("latest", f"must be a whole number of versions to keep, "
                                       f"not {flt.latest!r}"))
        elif flt.latest < 1:
            problems.append(("latest", f"must be at least 1, not {flt.latest}"))
    return problems


def _check_regex(pattern: object) -> str | None:
    if not isinstance(pattern, str):
        return f"must be a regular expression string, not {pattern!r}"
    # Go (skopeo's images-by-tag-regex) accepts POSIX classes; Python reads
    # "[[:digit:]]" as a set of characters and would silently match the wrong tags.
    if m := _POSIX_CLASS.search(pattern):
        return (f'regular expression "{pattern}" uses the POSIX class "[:{m.group(1)}:]", '
                "which Python does not support; use \\d, \\w, [a-z] and the like")
    try:
        re.compile(pattern)
    except (re.error, OverflowError, RecursionError) as exc:   # a{99999999999} overflows
        return f'invalid regular expression "{pattern}": {exc}'
    return None


def select_tags(tags: Iterable[str], flt: TagFilter) -> list[str]:
    """The tags a filter selects, highest version first if semver or latest is set, else by name."""
    # An invalid filter selects nothing rather than raising: the manifest loader reports
    # it (check_filter) before any network I/O, and selecting nothing can never mirror
    # more than was asked for.
    if check_filter(flt):
        return []
    include = [re.compile(p) for p in flt.include]
    exclude = [re.compile(p) for p in flt.exclude]
    chosen = sorted({t for t in tags
                     if (not include or any(r.search(t) for r in include))
                     and not any(r.search(t) for r in exclude)})
    if flt.semver is None and flt.latest is None:
        return chosen

    # Without a range, "latest" still skips prereleases, as the range "*" would.
    rng = parse_range(flt.semver if flt.semver is not None else "*")
    versioned = [(v, t) for t in chosen if (v := parse_version(t)) is not None and v in rng]
    # Highest version first; the sort is stable, so tags naming the same version
    # ("1.2", "v1.2.0") stay in name order.
    versioned.sort(key=lambda vt: vt[0], reverse=True)
    if flt.latest is not None:
        keep = set(sorted({v for v, _ in versioned}, reverse=True)[:flt.latest])
        versioned = [(v, t) for v, t in versioned if v in keep]
    return [t for _, t in versioned]
