"""Split volumes: a bundle tar cut into `NAME.tar.001`, `.002`, … with `NAME.tar.sha256sums`.

The parts are the bytes of the one tar in pieces (`cat NAME.tar.0*` gives it back). The writer
side (`PartsWriter`) writes them under temporary names and renames them together; the reader side
(`SplitBundle`, `find_split`, `PartsFile`) reads them as one file and names a missing or
damaged part.
"""

from __future__ import annotations

import bisect
import concurrent.futures
import glob
import hashlib
import io
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import BundleError


def tmp_beside(target: Path) -> Path:
    """The temporary name a file is written under, beside its final one, before the rename."""
    return target.with_name(f".{target.name}.{os.getpid()}.tmp")


def part_path(target: Path, number: int) -> Path:
    """`NAME.tar` -> `NAME.tar.001` for number 1 (three digits at least)."""
    return target.with_name(f"{target.name}.{number:03d}")


def sums_path(target: Path) -> Path:
    """`NAME.tar` -> `NAME.tar.sha256sums`."""
    return target.with_name(f"{target.name}.sha256sums")


def _sync_close(fh) -> None:
    try:
        os.fdatasync(fh.fileno())
    finally:
        fh.close()


class PartsWriter:
    """The tar's bytes as one or more files, written under temporary names beside their final
    ones: one file (`target`) without `split`, else files of `split` bytes each (the last may be
    shorter), each hashed as it is written. Supports cutting back to an earlier `mark()`, also
    into an earlier part. A finished part is fdatasynced and closed in the background."""

    def __init__(self, target: Path, split: int | None, flusher: concurrent.futures.Executor):
        # `flusher`: the TarWriter's own thread, so the next part is written meanwhile
        self.target, self.split, self.flusher = target, split, flusher
        self.tmps: list[Path] = []
        self.hashes: list = []
        self.pending: list[concurrent.futures.Future] = []
        self.fh, self.pos = None, 0
        self._new_part()

    def final(self, i: int) -> Path:
        return self.target if self.split is None else part_path(self.target, i + 1)

    def _new_part(self) -> None:
        self.tmps.append(tmp_beside(self.final(len(self.tmps))))
        self.hashes.append(hashlib.sha256() if self.split else None)
        self.fh, self.pos = open(self.tmps[-1], "wb", buffering=0), 0

    def fileno(self) -> int:
        return self.fh.fileno()

    def write(self, view) -> int:
        if self.split is None:
            n = self.fh.write(view)
            self.pos += n
            return n
        if self.pos >= self.split:       # the next part begins with the next byte, not before
            self.pending.append(self.flusher.submit(_sync_close, self.fh))
            self.fh = None
            self._new_part()
        n = self.fh.write(view[:self.split - self.pos])
        self.hashes[-1].update(view[:n])
        self.pos += n
        return n

    def mark(self):
        """Where the tar is now, to `rollback()` to."""
        h = self.hashes[-1]
        return len(self.tmps) - 1, self.pos, h.copy() if h else None

    def rollback(self, mark) -> None:
        index, pos, h = mark
        if index != len(self.tmps) - 1:
            self.settle()
            self.fh.close()
            for tmp in self.tmps[index + 1:]:
                tmp.unlink(missing_ok=True)
            del self.tmps[index + 1:], self.hashes[index + 1:]
            self.fh = open(self.tmps[index], "r+b", buffering=0)
        self.fh.truncate(pos)
        self.fh.seek(pos)
        self.pos, self.hashes[index] = pos, h

    def settle(self) -> None:
        """Wait until the finished parts are synced and closed; raise the first error."""
        pending, self.pending = self.pending, []
        errors = [f.exception() for f in pending]
        if err := next((e for e in errors if e is not None), None):
            raise err

    def close(self) -> list[dict]:
        """fsync and close every part; [{path (final), size, sha256}] of the parts (split only)."""
        self.settle()
        os.fsync(self.fh.fileno())
        self.fh.close()
        if self.split is None:
            return []
        sizes = [self.split] * (len(self.tmps) - 1) + [self.pos]
        return [{"path": str(self.final(i)), "size": size, "sha256": "sha256:" + h.hexdigest()}
                for i, (size, h) in enumerate(zip(sizes, self.hashes, strict=False))]

    def publish(self, parts: list[dict]) -> None:
        """Rename every part into place; split: drop parts of an older, longer set, then write
        the sums file, atomically, last. A failure leaves no part of this set at a final path."""
        if self.split is None:
            os.replace(self.tmps[0], self.target)
            return
        sums = sums_path(self.target)
        sums.unlink(missing_ok=True)      # an older set must not look complete while replaced
        done: list[Path] = []
        try:
            for i, tmp in enumerate(self.tmps):
                os.replace(tmp, self.final(i))
                done.append(self.final(i))
            n = len(self.tmps) + 1
            while os.path.lexists(stale := part_path(self.target, n)):
                stale.unlink()
                n += 1
            text = "".join(f"{p['sha256'].removeprefix('sha256:')}  {Path(p['path']).name}\n" for p in parts)
            tmp = tmp_beside(sums)
            try:
                with open(tmp, "w") as fh:
                    fh.write(text)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, sums)
            finally:
                tmp.unlink(missing_ok=True)
        except BaseException:
            for path in done:
                path.unlink(missing_ok=True)
            raise

    def discard(self) -> None:
        """Close and remove every temporary part."""
        try:
            self.settle()
        except OSError:
            pass
        if self.fh is not None and not self.fh.closed:
            self.fh.close()
        for tmp in self.tmps:
            tmp.unlink(missing_ok=True)


_PART = re.compile(r"(.+)\.(\d{3,})")
_SUMS_LINE = re.compile(r"([0-9a-fA-F]{64}) [ *](.+)")


@dataclass
class SplitBundle:
    """The parts of a split bundle, in order: those its sums file lists, else those found."""

    base: Path                       # NAME.tar
    parts: list[Path]
    sums: dict[Path, str] | None     # part -> sha256 hex, from NAME.tar.sha256sums

    @property
    def sums_path(self) -> Path:
        return sums_path(self.base)

    def missing(self) -> list[Path]:
        return [p for p in self.parts if not p.is_file()]

    def missing_message(self, missing: list[Path]) -> str:
        listed = f"listed in {self.sums_path.name}" if self.sums is not None else "found"
        return (f"{', '.join(map(str, missing))} {'is' if len(missing) == 1 else 'are'} missing "
                f"(split bundle {self.base}: {len(self.parts)} parts {listed})")

    def size_problems(self) -> list[str]:
        """Every part but the last has the split size; the last is not longer. Parts that break
        this are named (the size most parts have is taken as the right one)."""
        sizes = [p.stat().st_size for p in self.parts]
        if len(sizes) < 2:
            return []
        full = sizes[:-1]
        want = max(set(full), key=lambda x: (full.count(x), x))
        out = [f"{p}: {n} bytes, but every part before the last has {want} (truncated or damaged part)"
               for p, n in zip(self.parts, full, strict=False) if n != want]
        if sizes[-1] > want:
            out.append(f"{self.parts[-1]}: {sizes[-1]} bytes, more than the {want} of each part "
                       "before it (a part of another bundle?)")
        return out


def find_split(path) -> SplitBundle | None:
    """The split bundle `path` names (`NAME.tar.001`, or `NAME.tar` when that does not exist but
    its parts or sums file do), else None. BundleError if its sums file is malformed."""
    p = Path(path)
    m = _PART.fullmatch(p.name)
    if m and not p.is_dir():
        base = p.with_name(m.group(1))
        if not (part_path(base, 1).exists() or sums_path(base).exists()):
            return None
    elif not os.path.lexists(p) and (part_path(p, 1).exists() or sums_path(p).exists()):
        base = p
    else:
        return None
    sums = _read_sums(base)
    if sums is not None:
        return SplitBundle(base, list(sums), sums)
    parts, n = [], 1
    while part_path(base, n).is_file():
        parts.append(part_path(base, n))
        n += 1
    # Parts after a gap: the gap is a missing part, not the end.
    prefix = base.name + "."
    later = [int(q.name[len(prefix):]) for q in base.parent.glob(f"{glob.escape(prefix)}[0-9]*")
             if q.name[len(prefix):].isdigit()]
    parts += [part_path(base, i) for i in range(n, max(later, default=0) + 1)]
    return SplitBundle(base, parts, None)


def _read_sums(base: Path) -> dict[Path, str] | None:
    sums = sums_path(base)
    try:
        text = sums.read_text()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise BundleError(f"{sums}: cannot read ({getattr(exc, 'strerror', None) or exc})") from None
    out: dict[Path, str] = {}
    numbers = []
    for no, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        m = _SUMS_LINE.fullmatch(line)
        part = _PART.fullmatch(m.group(2)) if m else None
        if not part or part.group(1) != base.name:
            raise BundleError(f"{sums}:{no}: not a `<sha256>  {base.name}.NNN` line (damaged sums file)")
        out[base.with_name(m.group(2))] = m.group(1).lower()
        numbers.append(int(part.group(2)))
    if numbers != list(range(1, len(numbers) + 1)):
        raise BundleError(f"{sums}: lists parts {numbers}, not 1 to {len(numbers)} in order "
                          "(damaged sums file)")
    return out


class PositionalFile(io.RawIOBase):
    """A read-only file of `size` bytes defined by `pread(n, offset)`: seek, tell and readinto
    come from that, so several readers never share a file position."""

    size = 0
    _pos = 0

    def pread(self, n: int, offset: int) -> bytes:
        raise NotImplementedError

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self.size}[whence]
        self._pos = max(0, base + pos)
        return self._pos

    def readinto(self, buf) -> int:
        data = self.pread(len(buf), self._pos)
        buf[:len(data)] = data
        self._pos += len(data)
        return len(data)


class PartsFile(PositionalFile):
    """Several files read as one: the parts of a split bundle. `pread(n, offset)` reads across
    part boundaries without a shared position (safe from several threads); read/seek/tell for
    tarfile. Has no fileno()."""

    def __init__(self, paths: list[Path]):
        super().__init__()
        self.paths, self._fhs, self.ends = list(paths), [], []
        total = 0
        try:
            for path in self.paths:
                fh = open(path, "rb", buffering=0)
                self._fhs.append(fh)
                total += os.fstat(fh.fileno()).st_size
                self.ends.append(total)
        except OSError as exc:
            self.close()
            raise BundleError(f"{exc.filename}: cannot read ({exc.strerror})") from None
        self.size, self._pos, self.name = total, 0, str(self.paths[0]) if self.paths else ""

    def part_at(self, offset: int) -> int:
        """The index of the part holding byte `offset` (len(paths) past the end)."""
        return bisect.bisect_right(self.ends, offset)

    def start(self, i: int) -> int:
        return self.ends[i - 1] if i else 0

    def pread(self, n: int, offset: int) -> bytes:
        if self.closed:
            raise ValueError("I/O operation on closed file")
        out = []
        i = self.part_at(offset)
        while n > 0 and i < len(self._fhs):
            want = min(n, self.ends[i] - offset)
            data = os.pread(self._fhs[i].fileno(), want, offset - self.start(i))
            out.append(data)
            n, offset = n - len(data), offset + len(data)
            if len(data) < want:     # the part shrank since it was opened
                break
            i += 1
        return b"".join(out)

    def close(self) -> None:
        for fh in getattr(self, "_fhs", ()):
            fh.close()
        super().close()


