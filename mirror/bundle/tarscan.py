"""The rules a bundle tar or layout directory is read by, shared by the reader and verify.

The two read a tar differently on purpose: the reader (`reader.py`) walks the headers once with
random access and reads blobs in place later; verify (`inventory.py`) streams every byte once and
hashes it. Each entry is judged the same way by both, here: which entries are unsafe, which appear
twice, which are blobs and which layout files, how large a layout file may be, where the tar must
end, and what makes a tar or directory a bundle at all. The reader refuses at the first problem;
verify lists them all.
"""

from __future__ import annotations

import os
import re
import stat
import tarfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

from ..errors import NotABundleError
from .volumes import PartsFile

# Bounds on what is read into memory: a real index.json of thousands of images is a few MiB.
META_LIMITS = {"oci-layout": 64 << 10, "index.json": 16 << 20, "manifest.json": 16 << 20}
LAYOUT_FILES = ("oci-layout", "index.json")      # without both, it is not a bundle
END_OF_ARCHIVE = bytes(2 * tarfile.BLOCKSIZE)
_BLOB_NAME = re.compile(r"blobs/sha256/([a-f0-9]{64})")
_COMPRESSED = {b"\x1f\x8b": "gzip", b"\x28\xb5\x2f\xfd": "zstd", b"\xfd7zXZ": "xz", b"BZh": "bzip2"}
HINT = "make one with `imgmirror sync`"


def not_a_bundle(path, why: str) -> NotABundleError:
    """The one wording for "this is not a bundle", with the way to make one."""
    return NotABundleError(f"{path}: not an imgmirror/OCI bundle: {why}; {HINT}")


def refuse_compressed(head: bytes, where) -> None:
    """NotABundleError if a file's first bytes announce a compressed file."""
    if kind := next((name for magic, name in _COMPRESSED.items() if head.startswith(magic)), None):
        raise not_a_bundle(where, f"it is {kind}-compressed; decompress it first (sync writes plain "
                                  "tars, so blobs can be read in place)")


def check_member(m: tarfile.TarInfo) -> tuple[str, str | None]:
    """(normalised name, why the entry is unsafe or None). `./a//b` is `a/b`."""
    if m.name.startswith("/"):
        return m.name, "absolute path"
    parts = [p for p in m.name.split("/") if p not in ("", ".")]
    name = "/".join(parts)
    if ".." in parts:
        return m.name, "path leaves the layout with .."
    if m.issym():
        return name, f"symbolic link to {m.linkname!r}"
    if m.islnk():
        return name, f"hard link to {m.linkname!r}"
    if m.ischr() or m.isblk() or m.isfifo():
        return name, "device or fifo"
    if m.issparse():        # its data is not stored contiguously: cannot be read in place
        return name, "GNU sparse file"
    if not (m.isreg() or m.isdir()):
        return name, f"unsupported entry type {m.type!r}"
    return name, None


def blob_digest(name: str) -> str | None:
    """`blobs/sha256/<hex>` -> `sha256:<hex>`; None for any other name."""
    m = _BLOB_NAME.fullmatch(name)
    return f"sha256:{m.group(1)}" if m else None


class Member(NamedTuple):
    """One tar entry, judged."""

    name: str                   # normalised (the raw name when unsafe)
    info: tarfile.TarInfo
    unsafe: str | None          # why extracting it could escape the layout
    twice: bool                 # a file whose name an earlier entry had: readers disagree on which counts

    @property
    def digest(self) -> str | None:
        """`sha256:<hex>` for a blob (a file at blobs/sha256/<hex>), else None."""
        return blob_digest(self.name) if self.info.isreg() else None

    @property
    def is_meta(self) -> bool:
        """oci-layout, index.json or manifest.json, as a file."""
        return self.name in META_LIMITS and self.info.isreg()


def members(infos: Iterable[tarfile.TarInfo]) -> Iterator[Member]:
    """Each tar entry judged, in order: unsafe, or the same name twice, or neither."""
    seen: set[str] = set()
    for m in infos:
        name, unsafe = check_member(m)
        yield Member(name, m, unsafe, not unsafe and m.isreg() and name in seen)
        if not unsafe:
            seen.add(name)


def end_problem(tail: bytes | None, after: str | None, offset: int) -> str | None:
    """What is wrong with the bytes where the tar's end-of-archive marker must be (`tail`, read
    from `offset`, the end of the last entry; None if they cannot be read any more), or None."""
    if tail == END_OF_ARCHIVE:
        return None
    last = repr(after) if after else "the start"
    if tail is not None and len(tail) < len(END_OF_ARCHIVE) and not tail.strip(b"\0"):
        return f"the tar has no end-of-archive marker after {last}: truncated after that entry"
    return (f"invalid tar header at byte {offset}, after {last}: nothing after it can be read "
            "(damaged tar)")


def require_layout(where, meta, damaged: bool = False) -> None:
    """A tar or directory without the layout files is not a bundle (NotABundleError, exit 2);
    a `damaged` one whose index.json was lost is a bundle with problems (verify says which)."""
    missing = [n for n in LAYOUT_FILES if n not in meta]
    if missing and not damaged:
        raise not_a_bundle(where, f"no {' or '.join(missing)}")


def layout_files(p: Path) -> Iterator[tuple[str, int | None]]:
    """(name, size) of each layout file in a layout directory; size None when it is not a regular
    file (a symlink is looked at, never followed)."""
    for name in META_LIMITS:
        try:
            st = os.lstat(p / name)
        except FileNotFoundError:
            continue
        yield name, st.st_size if stat.S_ISREG(st.st_mode) else None


def stat_bundle(p: Path) -> os.stat_result:
    """stat() a bundle path; NotABundleError if it is missing or unreadable."""
    try:
        return p.stat()
    except FileNotFoundError:
        raise NotABundleError(f"{p}: no such file or directory") from None
    except OSError as exc:
        raise NotABundleError(f"{p}: cannot read ({exc.strerror})") from None


def open_tar(p: Path):
    """Open a bundle tar for reading; NotABundleError if it is not a readable regular file."""
    if not stat.S_ISREG(stat_bundle(p).st_mode):
        raise not_a_bundle(p, "not a regular file or directory")
    try:
        return open(p, "rb")
    except OSError as exc:
        raise NotABundleError(f"{p}: cannot read ({exc.strerror})") from None


def pread(fh, n: int, offset: int) -> bytes:
    """Up to n bytes at offset of a tar file or a `PartsFile`, without moving any position."""
    if isinstance(fh, PartsFile):
        return fh.pread(n, offset)
    return os.pread(fh.fileno(), n, offset)
