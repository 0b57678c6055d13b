"""The push engine itself, against an in-memory Source (a bundle) and Sink (a registry): tables
of what it must send, in milliseconds, beside the real-registry tests (issue 9).

The fakes are for what the engine decides (dedupe under concurrency, mount choice, children-first
order, failures); that a real registry accepts it is tested in test_push.py and test_diff_push.py."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json

import pytest

from mirror.core.oci import OCI_INDEX, OCI_MANIFEST, Descriptor
from mirror.engine.push import Destination, PushImage, PushOptions, Pusher
from mirror.errors import RegistryError
from mirror.progress import Progress


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class FakeBundle:
    """A Source: blobs by digest; `broken` blobs fail after a few bytes, as a bad disk would."""

    def __init__(self):
        self.blobs: dict[str, bytes] = {}
        self.broken: set[str] = set()

    def add(self, data: bytes) -> str:
        self.blobs[sha(data)] = data
        return sha(data)

    def has(self, d):
        return d in self.blobs

    def size(self, d):
        return len(self.blobs[d])

    def read(self, d):
        return self.blobs[d]

    def open_blob(self, d):
        if d in self.broken:
            raise OSError(5, "Input/output error")
        return io.BytesIO(self.blobs[d])


class FakeRegistry:
    """A Sink: repositories of blobs, manifests and tags; records every call in order."""

    complete_manifests = True
    remote = False

    def __init__(self, mount_answer: int = 201, refuse: set[str] = frozenset()):
        self.blobs: dict[str, set[str]] = {}
        self.manifests: dict[str, dict[str, bytes]] = {}
        self.tags: dict[tuple[str, str], str] = {}
        self.calls: list[tuple] = []
        self.mount_answer, self.refuse = mount_answer, refuse

    async def blob_exists(self, repo, d):
        self.calls.append(("HEAD", repo, d))
        await asyncio.sleep(0)                      # let concurrent pushes interleave
        return d in self.blobs.get(repo, ())

    async def manifest_digest(self, repo, ref):
        self.calls.append(("HEAD-manifest", repo, ref))
        if ref.startswith("sha256:"):
            return ref if ref in self.manifests.get(repo, {}) else None
        return self.tags.get((repo, ref))

    async def mount(self, repo, d, from_repo):
        self.calls.append(("MOUNT", repo, d, from_repo))
        if self.mount_answer == 201 and d in self.blobs.get(from_repo, ()):
            self.blobs.setdefault(repo, set()).add(d)
            return None
        return f"/v2/{repo}/blobs/uploads/open"

    async def cancel(self, location, repo):
        self.calls.append(("DELETE", location))

    async def upload(self, repo, d, source, chunk_size, location=None, on_bytes=None):
        self.calls.append(("UPLOAD", repo, d))
        await asyncio.sleep(0)
        with source.open_blob(d) as fh:
            data = fh.read()
        assert sha(data) == d
        self.blobs.setdefault(repo, set()).add(d)

    async def put_manifest(self, repo, ref, raw, media_type):
        self.calls.append(("PUT", repo, ref))
        if sha(raw) in self.refuse:
            raise RegistryError("MANIFEST_INVALID: refused", status=400, code="MANIFEST_INVALID",
                                errors=({"code": "MANIFEST_INVALID", "message": "refused", "detail": ""},))
        self.manifests.setdefault(repo, {})[sha(raw)] = raw
        if not ref.startswith("sha256:"):
            self.tags[repo, ref] = sha(raw)
        return sha(raw)

    def uploads(self):
        return [c[1:] for c in self.calls if c[0] == "UPLOAD"]


def image(bundle: FakeBundle, *layers: bytes) -> Descriptor:
    config = bundle.add(json.dumps({"layers": [sha(x) for x in layers]}).encode())
    doc = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
           "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config,
                      "size": bundle.size(config)},
           "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": bundle.add(x),
                       "size": len(x)} for x in layers]}
    raw = json.dumps(doc).encode()
    return Descriptor(OCI_MANIFEST, bundle.add(raw), len(raw))


def index(bundle: FakeBundle, *children: Descriptor) -> Descriptor:
    raw = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": c.media_type, "digest": c.digest, "size": c.size,
         "platform": {"os": "linux", "architecture": a}} for c, a in zip(children, ("amd64", "arm64")[:len(children)], strict=True)]}).encode()
    return Descriptor(OCI_INDEX, bundle.add(raw), len(raw))


def push(bundle, registry, images, holders=None, **opts):
    pusher = Pusher(bundle, registry, Destination("reg.example"), PushOptions(**opts), Progress(io.StringIO()),
                    holders)
    return asyncio.run(pusher.run([PushImage(ref, desc) for ref, desc in images]))


BASE, APP_A, APP_B = b"base layer" * 100, b"app a" * 50, b"app b" * 50


@pytest.mark.parametrize("names, uploads, mounts", [
    # two tags of one repository sharing every blob: each blob uploaded once, nothing mounted
    (["x.io/r/app:1", "x.io/r/app:2"], 5, 0),
    # two repositories sharing the base: the base uploaded once and mounted into the other
    (["x.io/r/a:1", "x.io/r/b:1"], 5, 1),
])
def test_each_blob_is_uploaded_once_and_mounted_elsewhere(names, uploads, mounts):
    bundle, registry = FakeBundle(), FakeRegistry()
    images = [(names[0], image(bundle, BASE, APP_A)), (names[1], image(bundle, BASE, APP_B))]
    result = push(bundle, registry, images)
    assert result.totals.failed == 0
    done = registry.uploads()
    assert len(done) == len(set(done)) == uploads
    assert [c for c in registry.calls if c[0] == "MOUNT"] == [("MOUNT", "r/b", sha(BASE), "r/a")] * mounts
    assert {registry.tags[("r/" + n.split("/")[-1].split(":")[0], n.split(":")[-1])] for n in names} == \
           {d.digest for _, d in images}


def test_children_before_their_index_and_the_tag_last():
    bundle, registry = FakeBundle(), FakeRegistry()
    a, b = image(bundle, BASE, APP_A), image(bundle, BASE, APP_B)
    top = index(bundle, a, b)
    assert push(bundle, registry, [("x.io/r/multi:1", top)]).totals.failed == 0
    puts = [c[2] for c in registry.calls if c[0] == "PUT"]
    # the children by digest, then the index once, under its tag (the digest it answers is checked)
    assert set(puts[:2]) == {a.digest, b.digest} and puts[2:] == ["1"]
    assert registry.tags[("r/multi", "1")] == top.digest and top.digest in registry.manifests["r/multi"]
    first_put = next(i for i, c in enumerate(registry.calls) if c[0] == "PUT")
    assert all(c[0] != "UPLOAD" for c in registry.calls[first_put:])      # every blob before any manifest


def test_a_source_failing_mid_blob_fails_its_image_only():
    bundle, registry = FakeBundle(), FakeRegistry()
    good, bad = image(bundle, BASE, APP_A), image(bundle, APP_B)
    bundle.broken.add(sha(APP_B))
    result = push(bundle, registry, [("x.io/r/good:1", good), ("x.io/r/bad:1", bad)])
    status = {r.reference: (r.status, r.error) for r in result.images}
    assert status["x.io/r/good:1"] == ("ok", None)
    assert status["x.io/r/bad:1"][0] == "failed" and "Input/output error" in status["x.io/r/bad:1"][1]
    assert ("r/bad", "1") not in registry.tags and bad.digest not in registry.manifests.get("r/bad", {})


def test_a_refused_manifest_fails_its_image_with_the_registry_words():
    bundle, registry = FakeBundle(), FakeRegistry()
    ok, refused = image(bundle, APP_A), image(bundle, APP_B)
    registry.refuse = {refused.digest}
    result = push(bundle, registry, [("x.io/r/ok:1", ok), ("x.io/r/no:1", refused)])
    errors = {r.reference: r.error for r in result.images}
    assert errors["x.io/r/ok:1"] is None and "MANIFEST_INVALID: refused" in errors["x.io/r/no:1"]
    assert ("r/no", "1") not in registry.tags


@pytest.mark.parametrize("answer, failed, cancelled", [(201, 0, 0), (202, 1, 1)])
def test_a_blob_from_the_base_is_mounted_from_where_the_base_carried_it(answer, failed, cancelled):
    bundle, registry = FakeBundle(), FakeRegistry(mount_answer=answer)
    registry.blobs["m/tools/base"] = {sha(BASE)}             # pushed last week
    worker = image(bundle, BASE, APP_A)
    del bundle.blobs[sha(BASE)]                              # a differential bundle lacks it
    holders = {sha(BASE): (("x.io/library/base", "tools/base"),)}
    pusher = Pusher(bundle, registry, Destination("reg.example", "m"), PushOptions(), Progress(io.StringIO()),
                    holders)
    result = asyncio.run(pusher.run([PushImage("x.io/team/worker:1", worker)]))
    assert result.totals.failed == failed
    heads = [c for c in registry.calls if c[0] == "HEAD" and c[2] == sha(BASE)]
    assert heads[:2] == [("HEAD", "m/team/worker", sha(BASE)), ("HEAD", "m/tools/base", sha(BASE))]
    assert [c for c in registry.calls if c[0] == "MOUNT"] == [("MOUNT", "m/team/worker", sha(BASE), "m/tools/base")]
    assert len([c for c in registry.calls if c[0] == "DELETE"]) == cancelled
    assert (("m/team/worker", "1") in registry.tags) == (failed == 0)


def test_a_blob_nowhere_refuses_the_push_before_any_manifest():
    bundle, registry = FakeBundle(), FakeRegistry()
    worker = image(bundle, BASE, APP_A)
    del bundle.blobs[sha(BASE)]
    pusher = Pusher(bundle, registry, Destination("reg.example", "m"), PushOptions(), Progress(io.StringIO()), {})
    with pytest.raises(Exception, match="looked in reg.example/m/team/worker"):
        asyncio.run(pusher.run([PushImage("x.io/team/worker:1", worker)]))
    assert not [c for c in registry.calls if c[0] in ("PUT", "UPLOAD", "MOUNT")]


# --- the engine called directly: copy(units, source, sink) ----------------------------------------

from mirror.cache import CacheSink, Store  # noqa: E402
from mirror.engine.copy import Unit, copy, walk  # noqa: E402
from mirror.errors import MirrorError  # noqa: E402


def units(bundle, names_and_tops):
    return [walk(bundle, Unit(name, name.split("/", 1)[1].split(":")[0], name.split(":")[-1], top))
            for name, top in names_and_tops]


@pytest.mark.parametrize("repos, per_repo, uploads, mounts", [
    (1, 6, 1 + 6 + 6, 0),       # six tags in one repository: the base once, every app and config once
    (3, 2, 1 + 6 + 6, 2),       # three repositories: the base sent once and mounted twice
    (6, 1, 1 + 6 + 6, 5),
])
def test_copy_dedupes_under_concurrency(repos, per_repo, uploads, mounts):
    """Twelve units started at once, sharing a base layer: each (repository, blob) once, the
    first repository to need a blob sends it, every other one mounts it from there."""
    bundle, registry = FakeBundle(), FakeRegistry()
    tops = []
    for i in range(repos * per_repo):
        tops.append((f"x.io/r{i % repos}:{i}", image(bundle, BASE, b"app %d" % i * 20)))
    outcomes = asyncio.run(copy(units(bundle, tops), bundle, registry))
    assert all(o.ok for o in outcomes)
    assert len(registry.uploads()) == len(set(registry.uploads())) == uploads
    assert len([c for c in registry.calls if c[0] == "MOUNT"]) == mounts
    assert all(o.uploaded + o.mounted + o.existing == 3 for o in outcomes)   # each blob accounted once


class StagingSource(FakeBundle):
    """A remote Source (a registry, as engine.fetch.RegistrySource is): `stage` brings a blob into
    the store, counted; `failing` blobs fail after the transfer began."""

    def __init__(self, store):
        super().__init__()
        self.store, self.staged, self.failing = store, [], set()

    async def stage(self, d):
        self.staged.append(d)
        await asyncio.sleep(0)
        if d in self.failing:
            raise MirrorError(f"{d}: connection reset mid-blob")
        self.store.put(d, self.blobs[d])


def test_copy_into_the_cache_stages_each_blob_once_and_fails_only_whom_it_concerns(tmp_path):
    """sync's registry -> cache: a blob two repositories share is downloaded once; a blob failing
    mid-transfer fails the images that need it, and the rest still land in the cache."""
    store = Store(tmp_path)
    source = StagingSource(store)
    a, b, c = image(source, BASE, APP_A), image(source, BASE, APP_B), image(source, b"doomed" * 9)
    source.failing.add(sha(b"doomed" * 9))
    for d in list(source.blobs):          # manifests are in the cache already (resolve put them)
        if d in (a.digest, b.digest, c.digest):
            store.put(d, source.blobs[d])
    todo = units(source, [("x.io/a:1", a), ("x.io/b:1", b), ("x.io/c:1", c)])
    outcomes = asyncio.run(copy(todo, source, CacheSink(store)))
    assert [o.ok for o in outcomes] == [True, True, False]
    assert "connection reset mid-blob" in str(outcomes[2].error)
    assert source.staged.count(sha(BASE)) == 1 and len(source.staged) == len(set(source.staged))
    assert store.has(sha(BASE)) and store.has(sha(APP_A)) and store.has(sha(APP_B))


def test_copy_fail_fast_stops_and_cancels_the_rest():
    bundle, registry = FakeBundle(), FakeRegistry()
    ok, refused = image(bundle, APP_A), image(bundle, APP_B)
    registry.refuse = {refused.digest}
    with pytest.raises(MirrorError, match="x.io/no:1: .*MANIFEST_INVALID.*--fail-fast: stopped"):
        asyncio.run(copy(units(bundle, [("x.io/no:1", refused), ("x.io/ok:1", ok)]), bundle, registry,
                         fail_fast=True))
