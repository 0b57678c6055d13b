"""The content-addressed cache kept between runs: blobs/sha256/<hex>, written only once verified.

Layout under the cache root:
    blobs/sha256/<hex>   exactly the bytes of that digest (blobs and manifests alike)
    tmp/                 downloads in progress; emptied when a run takes the lock
    lock                 flock()ed by the run using the cache; holds who that is
    uses/                when each blob was last used (the use record, below)

The use record. A Store notes in memory every digest a run uses (a blob committed or put, a
has() that finds it, a read, an open for reading: a set.add, no system call) and, when the run
releases the lock, writes them with the time into one new file (atomically: a temporary name,
then a rename), so a use costs nothing while the run goes and atime (which many mounts do not
keep) is never needed:
    uses/run-<ns>-<pid>.json   {"version": 1, "time": <unix seconds>, "digests": ["sha256:…", …]}
    uses/merged.json           {"version": 1, "used": {"sha256:…": <unix seconds>, …}}
A reader merges them all, the latest time of a digest winning. Under the lock, compact_uses()
folds the run files into merged.json (dropping digests no longer in the cache); a release does
so once COMPACT_AFTER run files have gathered. A blob with no record counts as used at its
file's mtime (it was written then).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .errors import DigestMismatchError, LockHeldError, StoreError
from .core.content import Abandoned, Follower, Restarted
from .core.oci import digest_hex, sha256_digest


USES_VERSION = 1
MERGED_USES = "merged.json"
COMPACT_AFTER = 64              # run files gathered before a release folds them into merged.json
_HEX = re.compile(r"[0-9a-f]{64}")


@dataclass
class Entry:
    """One blob of the cache: its size and when it was last used."""

    digest: str
    size: int
    last_use: float          # unix seconds: from the use record, else the file's mtime
    recorded: bool           # False: no use record, so last_use is the file's mtime


def default_cache_dir(env=os.environ) -> Path:
    """$XDG_CACHE_HOME/imgmirror, or ~/.cache/imgmirror."""
    base = env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "imgmirror"


class BlobWriter:
    """A download in progress: hashes as it writes, lands in the store only when verified."""

    def __init__(self, store: Store, digest: str, size: int | None):
        self.store, self.digest, self.expected_size = store, digest, size
        self.final = store.blob_path(digest)
        self.tmp = store.tmp_dir / f"{digest_hex(digest)}.{os.getpid()}.{id(self)}.part"
        self._fh = open(self.tmp, "wb", buffering=0)   # chunks are large: no copy into a buffer
        self._hash = hashlib.sha256()
        self.size = 0
        # For a reader following the download (the bundle writer): `size` bytes of the temp file
        # are written; `generation` changes when the download starts over; `state` ends as
        # "committed" (verified, in the store) or "failed". Changes are announced on `changed`.
        self.state, self.generation = "writing", 0
        self.changed = threading.Condition()

    def _announce(self, **fields) -> None:
        with self.changed:
            for name, value in fields.items():
                setattr(self, name, value)
            self.changed.notify_all()

    def reset(self) -> None:
        """Start over (the server ignored our Range request)."""
        self._fh.seek(0)
        self._fh.truncate()
        self._hash = hashlib.sha256()
        self._announce(size=0, generation=self.generation + 1)

    def write(self, *chunks: bytes) -> None:
        """Append bytes; refuse more than the descriptor's size (a lying server stops here)."""
        for chunk in chunks:
            if self.expected_size is not None and self.size + len(chunk) > self.expected_size:
                raise DigestMismatchError(f"blob {self.digest}: the registry sent more than the "
                                          f"{self.expected_size} bytes its descriptor states")
            view = memoryview(chunk)
            while view:       # an unbuffered write may take less than it was given
                view = view[self._fh.write(view):]
            self._hash.update(chunk)
            self._announce(size=self.size + len(chunk))

    def commit(self) -> None:
        """Verify size and digest, then rename into place (atomic).

        No fsync: after a power loss a renamed entry could hold stale pages, and that is caught
        where entries are used (every entry not fetched by the current run is hashed again when
        it is read or copied into a bundle), at no cost to every download.
        """
        self._fh.close()
        got = "sha256:" + self._hash.hexdigest()
        if self.expected_size is not None and self.size != self.expected_size:
            raise DigestMismatchError(f"blob {self.digest}: received {self.size} bytes, "
                                      f"descriptor states {self.expected_size}")
        if got != self.digest:
            raise DigestMismatchError(f"blob {self.digest}: received bytes hash to {got}; "
                                      "the download was corrupted (nothing was cached)")
        os.replace(self.tmp, self.final)
        self.store._used.add(self.digest)
        self._announce(state="committed")

    def abort(self) -> None:
        """Drop the partial download (a no-op after commit)."""
        if not self._fh.closed:
            self._fh.close()
        if self.state != "committed":       # committed: renamed into place, nothing to remove
            self.tmp.unlink(missing_ok=True)
            self._announce(state="failed")

    def follow(self) -> Follower:
        """A reader of this download as it lands (for the bundle writer): see core.content."""
        return _Follower(self)


class _Follower:
    """Reads a BlobWriter's temp file as it grows; the one place that knows its states."""

    def __init__(self, blob: BlobWriter):
        self.blob, self.digest, self.size = blob, blob.digest, blob.expected_size
        self.pos, self.generation, self.fh = 0, blob.generation, None

    def _open(self) -> None:
        b = self.blob
        try:
            self.fh = open(b.tmp, "rb", buffering=0)
        except FileNotFoundError:          # it ended before we looked: failed, or in the store
            # commit() renames the file before it announces "committed" (and abort() unlinks
            # before "failed"): wait for the announcement, or a committed blob is taken as lost.
            with b.changed:
                while b.state == "writing":
                    b.changed.wait(1.0)
            if b.state != "committed":
                raise Abandoned(b.digest) from None
            self.fh = open(b.final, "rb", buffering=0)   # an open file outlives the rename

    def readinto(self, buffer) -> int:
        """Up to len(buffer) more bytes, blocking until some arrive; 0 at the end of the blob."""
        if self.fh is None:
            self._open()
        b = self.blob
        while True:
            with b.changed:
                while b.state == "writing" and b.size <= self.pos and b.generation == self.generation:
                    b.changed.wait(1.0)
                state, available = b.state, b.size
                restarted, self.generation = b.generation != self.generation, b.generation
            if state == "failed":
                raise Abandoned(b.digest)
            if restarted:
                self.fh.seek(0)
                self.pos = 0
                raise Restarted(b.digest)
            if self.pos < available:
                n = self.fh.readinto(memoryview(buffer)[:available - self.pos])
                if n:
                    self.pos += n
                    return n
                continue     # truncated under us: the write started over; the next look says so
            if state == "committed":
                return 0

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


HOST_AUTH = ("none", "basic")   # what a host's first answer said, kept between runs
TAGS_FILE = "tags.json"     # the digest each tag had when last resolved: which tags need a HEAD


class Store:
    """A directory of verified content, keyed by sha256 digest."""

    def __init__(self, root: str | os.PathLike, *, record_uses: bool = True, create: bool = True):
        """`record_uses=False`: what this Store is asked is not a use (cache prune resolving the
        manifests it keeps); `create=False`: StoreError if there is no cache at `root` (info)."""
        self.root = Path(root).expanduser()
        self.blob_dir = self.root / "blobs" / "sha256"
        self._blob_dir_s = str(self.blob_dir)
        self.tmp_dir = self.root / "tmp"
        self.uses_dir = self.root / "uses"
        self.record_uses = record_uses
        self._used: set[str] = set()      # digests this run used; written when the lock is released
        self._tags: dict[str, str] | None = None   # name:tag -> the digest it had last time (tags.json)
        self._hosts: dict[str, str] = {}            # host -> "none" | "basic" (tags.json)
        self._tags_changed = False
        if not create:
            if not self.root.is_dir():
                raise StoreError(f"cache {self.root}: no such directory; give the cache with --cache DIR")
            return
        try:
            self.blob_dir.mkdir(parents=True, exist_ok=True)
            self.tmp_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cache {self.root}: cannot create it ({exc.strerror}); "
                             "choose another with --cache or cache: in mirror.yaml") from None

    def blob_path(self, digest: str) -> Path:
        return self.blob_dir / digest_hex(digest)

    def has(self, digest: str) -> bool:
        if os.path.isfile(os.path.join(self._blob_dir_s, digest_hex(digest))):   # os.path: pathlib costs more here
            self._used.add(digest)
            return True
        return False

    def size(self, digest: str) -> int:
        return self.blob_path(digest).stat().st_size

    def read(self, digest: str) -> bytes:
        """Small content (manifests, configs), verified on the way out."""
        data = self.blob_path(digest).read_bytes()
        if sha256_digest(data) != digest:
            self.evict(digest)
            raise DigestMismatchError(f"cache entry {digest} was corrupt and has been removed; run again")
        self._used.add(digest)
        return data

    def open(self, digest: str):
        """A blob opened for reading (a use)."""
        fh = open(self.blob_path(digest), "rb")
        self._used.add(digest)
        return fh

    def put(self, digest: str, data: bytes) -> None:
        """Store bytes already in memory (manifests), verified, atomically."""
        if self.has(digest):
            return
        w = self.begin(digest, len(data))
        try:
            w.write(data)
            w.commit()
        finally:
            w.abort()

    def begin(self, digest: str, size: int | None) -> BlobWriter:
        return BlobWriter(self, digest, size)

    def evict(self, digest: str) -> None:
        self.blob_path(digest).unlink(missing_ok=True)
        self._used.discard(digest)

    # -- the use record ----------------------------------------------------------------------

    def _use_files(self) -> list[Path]:
        try:
            return sorted(p for p in self.uses_dir.iterdir() if p.name.endswith(".json"))
        except FileNotFoundError:
            return []

    def _read_uses(self) -> tuple[dict[str, float], list[Path], list[str]]:
        """The merged record (digest -> latest use), the files read, and a warning per file that
        could not be read (ignored: its blobs count at their file times, or an older record)."""
        times: dict[str, float] = {}
        files, problems = self._use_files(), []
        for path in files:
            try:
                doc = json.loads(path.read_bytes())
                if doc.get("version") != USES_VERSION:
                    raise ValueError(f"version {doc.get('version')!r}")
                if path.name == MERGED_USES:
                    pairs = [(str(d), float(t)) for d, t in doc["used"].items()]
                else:
                    t = float(doc["time"])
                    pairs = [(str(d), t) for d in doc["digests"]]
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
                problems.append(f"use record {path} is unreadable ({exc}); ignored: its blobs count as "
                                "used at their file times")
                continue
            for d, t in pairs:
                if t > times.get(d, float("-inf")):
                    times[d] = t
        return times, files, problems

    def use_times(self) -> tuple[dict[str, float], list[str]]:
        """digest -> when it was last used, from the use record alone; and warnings."""
        times, _, problems = self._read_uses()
        return times, problems

    def entries(self) -> tuple[list[Entry], list[str]]:
        """Every blob in the cache with its size and last use (the record, else its mtime);
        and the use record's warnings. Reads no blob."""
        times, problems = self.use_times()
        out = []
        try:
            with os.scandir(self.blob_dir) as it:
                for e in it:
                    if not _HEX.fullmatch(e.name) or not e.is_file(follow_symlinks=False):
                        continue
                    st = e.stat(follow_symlinks=False)
                    digest = "sha256:" + e.name
                    t = times.get(digest)
                    out.append(Entry(digest, st.st_size, st.st_mtime if t is None else t, t is not None))
        except FileNotFoundError:
            pass
        return out, problems

    def _write_json(self, path: Path, doc: dict, sync: bool = False) -> None:
        """Atomically: a temporary name beside it, then a rename."""
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            with open(tmp, "wb") as fh:
                fh.write(json.dumps(doc, separators=(",", ":")).encode())
                if sync:
                    fh.flush()
                    os.fsync(fh.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def remembered(self, name: str) -> str | None:
        """The digest `name` (registry/repository:tag) had when a run last resolved it; None when
        no run did (a cold tag: fetched by tag at once, no HEAD before it)."""
        self._load_tags()
        return self._tags.get(name)

    def _load_tags(self) -> None:
        if self._tags is None:
            try:
                doc = json.loads((self.root / TAGS_FILE).read_bytes())
                self._tags = {k: v for k, v in doc.get("tags", {}).items() if isinstance(v, str)}
                self._hosts = {k: v for k, v in doc.get("hosts", {}).items() if v in HOST_AUTH}
            except (OSError, ValueError, AttributeError):
                self._tags, self._hosts = {}, {}

    def host_auth(self, host: str) -> str | None:
        """How `host` answered the last run's first request: "none" (no challenge) or "basic";
        None when unknown, or a token server's (whose address is not kept: it is learnt again
        from a 401 each run, so no credentials go where the cache alone says)."""
        self._load_tags()
        return self._hosts.get(host)

    def remember_host_auth(self, host: str, scheme: str | None) -> None:
        """Note how a host answered (written with the tags)."""
        self._load_tags()
        value = scheme if scheme in HOST_AUTH else None
        if self._hosts.get(host) != value:
            if value is None:
                self._hosts.pop(host, None)
            else:
                self._hosts[host] = value
            self._tags_changed = True

    def remember(self, name: str, digest: str) -> None:
        """Note the digest a tag resolved to; written when the lock is released."""
        if self.remembered(name) != digest:
            self._tags[name] = digest
            self._tags_changed = True

    def save_tags(self) -> None:
        if not self._tags_changed:
            return
        try:
            self._write_json(self.root / TAGS_FILE, {"version": 1, "tags": dict(sorted(self._tags.items())),
                                                     "hosts": dict(sorted(self._hosts.items()))})
            self._tags_changed = False
        except OSError:
            pass                  # only a HEAD saved next time is lost

    def save_uses(self) -> None:
        """Write what this run used, with the time, as one new run file (done when the lock is
        released). A failure to write is not the run's failure: the digests stay noted for the
        next release, and meanwhile count as used at their file times."""
        if not self.record_uses or not self._used:
            return
        used, self._used = self._used, set()
        try:
            self.uses_dir.mkdir(exist_ok=True)
            self._write_json(self.uses_dir / f"run-{time.time_ns()}-{os.getpid()}.json",
                             {"version": USES_VERSION, "time": int(time.time()), "digests": sorted(used)})
            if sum(1 for p in self._use_files() if p.name != MERGED_USES) >= COMPACT_AFTER:
                self.compact_uses()
        except OSError:
            self._used |= used

    def compact_uses(self) -> None:
        """Fold every run file into merged.json, dropping digests no longer in the cache. Only
        under the lock (no other writer then); fsynced, since it replaces the files it reads."""
        times, files, _ = self._read_uses()
        try:
            present = {"sha256:" + n for n in os.listdir(self.blob_dir)}
        except FileNotFoundError:
            present = set()
        self.uses_dir.mkdir(exist_ok=True)
        self._write_json(self.uses_dir / MERGED_USES, {"version": USES_VERSION, "used": {
            d: t for d, t in sorted(times.items()) if d in present}}, sync=True)
        for path in files:       # unreadable ones too: they were reported, and would be forever
            if path.name != MERGED_USES:
                path.unlink(missing_ok=True)

    @contextmanager
    def lock(self, wait: float = 0.0):
        """Hold the cache for this run; LockHeldError (exit 3) names the holder after `wait` s."""
        path = self.root / "lock"
        fh = open(path, "a+")
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    fh.seek(0)
                    holder = fh.read().strip() or "another process"
                    fh.close()
                    raise LockHeldError(f"cache {self.root} is in use by {holder}; another imgmirror run "
                                        "is mirroring into it. Wait for it, or pass --wait-lock SECONDS") from None
                time.sleep(0.2)
        try:
            fh.seek(0)
            fh.truncate()
            fh.write(f"pid {os.getpid()} on {socket.gethostname()} since "
                     f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\n")
            fh.flush()
            # Whoever held the lock before is gone: its partial downloads are garbage.
            for stale in self.tmp_dir.iterdir():
                stale.unlink(missing_ok=True)
            yield self
        finally:
            self.save_uses()            # while the lock is still held: one writer at a time
            self.save_tags()
            fh.seek(0)
            fh.truncate()
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
            fh.close()


class StoreSource:
    """The store as a source of bytes to push (`imgmirror sync --to`)."""

    def __init__(self, store: Store):
        self.store = store

    def has(self, digest: str) -> bool:
        return self.store.has(digest)

    def size(self, digest: str) -> int:
        return self.store.size(digest)

    def open_blob(self, digest: str):
        return self.store.open(digest)

    def read(self, digest: str) -> bytes:
        return self.store.read(digest)


class CacheSink:
    """The store as the end of a copy (sync: registry -> cache). It has no repositories: a blob
    is there or it is not, and a mount is a no-op. A blob comes in through the source's
    `stage(digest)` (engine.fetch.RegistrySource: the one download of it, verified, renamed in).
    Manifests are put by resolve as it reads them; a manifest here says nothing of its blobs."""

    complete_manifests = False
    remote = False

    def __init__(self, store: Store):
        self.store = store
        self.tags: dict[tuple[str, str], str] = {}

    async def blob_exists(self, repo: str, digest: str) -> bool:
        return self.store.has(digest)

    async def manifest_digest(self, repo: str, ref: str) -> str | None:
        if ref.startswith("sha256:"):
            return ref if self.store.has(ref) else None
        return self.tags.get((repo, ref))

    async def mount(self, repo: str, digest: str, from_repo: str) -> str | None:
        return None          # one store: what one repository has, every repository has

    async def cancel(self, location: str, repo: str) -> None:
        return None

    async def upload(self, repo: str, digest: str, source, chunk_size: int, location: str | None = None,
                     on_bytes=None) -> None:
        try:
            await source.stage(digest)
        except OSError as exc:   # the cache's disk: full, read-only, gone
            raise StoreError(f"cache {self.store.root}: {exc.strerror or exc} "
                             f"({exc.filename or f'writing blob {digest}'}); free space or choose --cache") from exc

    async def put_manifest(self, repo: str, ref: str, raw: bytes, media_type: str) -> str | None:
        digest = sha256_digest(raw)
        if ref.startswith("sha256:"):
            self.store.put(digest, raw)
        else:
            self.tags[repo, ref] = digest
        return digest
