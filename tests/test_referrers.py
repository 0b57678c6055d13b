"""Referrer discovery (`referrers: true`): the OCI 1.1 referrers API, its fallback tag, cosign's tags.

The tag forms run against a real distribution 2.8 registry, which has no referrers API (404) but
stores artifacts with `subject` and `artifactType` as they are. The API itself is served by a
tiny aiohttp server, since distribution 2.8 cannot produce it.
"""

from __future__ import annotations

import json

import aiohttp
import pytest
from aiohttp import web

import imagegen as g
from mirror.errors import AuthError, PlatformError, TransientError
from mirror.core.oci import OCI_INDEX, OCI_MANIFEST, parse_manifest
from mirror.core.platform import parse_platform
from mirror.core.reference import parse_reference
from mirror.engine.referrers import cosign_tags, discover, fallback_tag, referrers_api
from mirror.registry.client import Registry
from mirror.engine.resolve import resolve
from mirror.cache import Store
from mirror.registry.transport import HostSettings, Transport

REPO = "test/signed"


def _registry(session, host: str) -> Registry:
    return Registry(Transport(session, HostSettings(host=host, api_host=host, retries=0), None))


def test_tag_names():
    d = "sha256:" + "ab" * 32
    assert fallback_tag(d) == "sha256-" + "ab" * 32
    assert cosign_tags(d) == [f"sha256-{'ab' * 32}{s}" for s in (".sig", ".att", ".sbom")]


@pytest.fixture
def signed(registry):
    """A registry holding an image with referrers in every tag form, and one without any."""
    subject = g.make_image([g.make_layer("referrers-subject", 1024)], labels={"name": "signed"})
    plain = g.make_image([g.make_layer("referrers-plain", 1024)], labels={"name": "plain"})
    g.push(subject, registry.host, REPO, "1.0")
    g.push(plain, registry.host, REPO, "plain")
    # An OCI 1.1 artifact with `subject`, by digest only (no tag: that is how clients push them).
    artifact = g.make_referrer(subject, annotations={"org.opencontainers.image.created": "1970-01-01T00:00:00Z"})
    hdrs = g.push_raw(artifact, registry.host, REPO)
    assert hdrs["docker-content-digest"] == artifact.digest
    assert "oci-subject" not in hdrs      # distribution 2.8 does not know the referrers API
    # The fallback tag: an index listing the artifact. skopeo 1.9.3 will not copy this index with
    # --preserve-digests ("must be converted"), so it goes in raw, after its child.
    fallback = g.make_fallback_index([artifact])
    g.push_raw(fallback, registry.host, REPO, g.cosign_tag(subject.digest, ""))
    sigs = {s: g.make_cosign_signature(subject, seed=s) for s in ("sig", "att", "sbom")}
    for suffix, sig in sigs.items():
        g.push(sig, registry.host, REPO, g.cosign_tag(subject.digest, suffix))
    for art in (artifact, fallback):   # the registry serves exactly what was built
        assert g.sha256_digest(g.inspect_raw(registry.host, f"{REPO}@{art.digest}")) == art.digest
    return {"subject": subject, "plain": plain, "artifact": artifact, "fallback": fallback, "sigs": sigs}


async def test_discover_finds_fallback_tag_and_cosign_tags(registry, signed):
    subject = signed["subject"]
    hexd = subject.digest.split(":", 1)[1]
    mark = registry.mark()
    async with aiohttp.ClientSession() as session:
        reg = _registry(session, registry.host)
        got = await discover(reg, REPO, subject.digest)
        assert got == [f":sha256-{hexd}", f":sha256-{hexd}.sig", f":sha256-{hexd}.att", f":sha256-{hexd}.sbom"]
        assert await discover(reg, REPO, signed["plain"].digest) == []
        # an unknown digest (nothing there at all) is not an error either
        assert await discover(reg, REPO, "sha256:" + "0" * 64) == []
    api = registry.requests("GET", "/referrers/", since=mark)
    assert [r.status for r in api] == [404, 404, 404]       # asked, and fell back
    assert all(r.status in (200, 404) for r in registry.requests("HEAD", since=mark))


async def test_discover_only_the_present_cosign_tags(registry):
    subject = g.make_image([g.make_layer("referrers-att-only", 512)])
    g.push(subject, registry.host, REPO, "1.0")
    g.push(g.make_cosign_signature(subject, seed="att"), registry.host, REPO, g.cosign_tag(subject.digest, "att"))
    async with aiohttp.ClientSession() as session:
        got = await discover(_registry(session, registry.host), REPO, subject.digest)
    assert got == [":" + g.cosign_tag(subject.digest, "att")]


async def test_discovered_refs_resolve_as_images(registry, signed, tmp_path):
    """What the integrator relies on: each ref goes through resolve() like an image; the fallback
    index brings its artifact child (empty config, no platform) along. With a platform filter
    the fallback index has no matching child: referrers must be resolved without one."""
    subject, artifact = signed["subject"], signed["artifact"]
    store = Store(tmp_path / "cache")
    async with aiohttp.ClientSession() as session:
        reg = _registry(session, registry.host)
        refs = await discover(reg, REPO, subject.digest)
        resolved = [await resolve(reg, store, parse_reference(f"{registry.host}/{REPO}{r}"), None, True, "test")
                    for r in refs]
        fb = resolved[0]
        assert fb.top.digest == signed["fallback"].digest and fb.top.media_type == OCI_INDEX
        assert artifact.digest in fb.manifests
        assert set(fb.blobs) == {g.EMPTY_CONFIG.digest, artifact.layers[0].digest}
        sig = resolved[1]
        assert sig.top.digest == signed["sigs"]["sig"].digest and sig.top.media_type == OCI_MANIFEST
        # the artifact as a registry serves it: `subject` and `artifactType` kept byte for byte
        raw, _ = await reg.get_manifest(REPO, artifact.digest)
        doc = json.loads(raw)
        assert doc["subject"]["digest"] == subject.digest and doc["artifactType"]
        assert parse_manifest(raw, None, "test").config.media_type == "application/vnd.oci.empty.v1+json"
        with pytest.raises(PlatformError):
            await resolve(reg, store, parse_reference(f"{registry.host}/{REPO}{refs[0]}"),
                          (parse_platform("linux/amd64"),), True, "test")


# --- the referrers API, from a fake registry ---------------------------------------------------

SUBJECT = "sha256:" + "5" * 64
A, B, C = ("sha256:" + x * 64 for x in "abc")


def _desc(digest, media_type=OCI_MANIFEST, **extra):
    return {"mediaType": media_type, "digest": digest, "size": 321, **extra}


async def _serve(handlers: dict):
    app = web.Application()
    for (method, path), handler in handlers.items():
        app.router.add_route(method, path, handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"127.0.0.1:{runner.addresses[0][1]}"


async def test_referrers_api_pages_are_followed():
    seen = []

    async def referrers(request):
        seen.append((request.query.get("page"), request.headers.get("Accept")))
        if request.query.get("page") != "2":
            body = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
                _desc(A, artifactType="application/vnd.example.sbom", annotations={"x": "1"}),
                _desc(B, artifactType="application/vnd.example.sig")]}
            # relative, as the spec allows
            return web.json_response(body, content_type=OCI_INDEX,
                                     headers={"Link": f'</v2/{REPO}/referrers/{SUBJECT}?page=2>; rel="next"'})
        body = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
            _desc(B),                                                       # again: no duplicate
            _desc(C, "application/vnd.oci.artifact.manifest.v1+json"),      # withdrawn type: left out
            _desc("sha256:" + "d" * 64, OCI_INDEX)]}
        return web.json_response(body, content_type=OCI_INDEX)

    async def head(request):
        ref = request.match_info["ref"]
        return web.Response(status=200 if ref == fallback_tag(SUBJECT) + ".sig" else 404)

    runner, host = await _serve({("GET", f"/v2/{REPO}/referrers/{{digest}}"): referrers,
                                 ("HEAD", f"/v2/{REPO}/manifests/{{ref}}"): head})
    try:
        async with aiohttp.ClientSession() as session:
            got = await discover(_registry(session, host), REPO, SUBJECT)
    finally:
        await runner.cleanup()
    assert got == [f"@{A}", f"@{B}", "@sha256:" + "d" * 64, f":{fallback_tag(SUBJECT)}.sig"]
    assert seen == [(None, OCI_INDEX), ("2", OCI_INDEX)]


@pytest.mark.parametrize("status", [400, 404, 405])
async def test_no_referrers_api_falls_back_to_tags(status):
    async def referrers(request):
        return web.json_response({"errors": [{"code": "UNSUPPORTED", "message": "no"}]}, status=status)

    async def head(request):
        return web.Response(status=200 if request.match_info["ref"] == fallback_tag(SUBJECT) else 404)

    runner, host = await _serve({("GET", f"/v2/{REPO}/referrers/{{digest}}"): referrers,
                                 ("HEAD", f"/v2/{REPO}/manifests/{{ref}}"): head})
    try:
        async with aiohttp.ClientSession() as session:
            reg = _registry(session, host)
            assert await referrers_api(reg, REPO, SUBJECT) is None
            assert await discover(reg, REPO, SUBJECT) == [f":{fallback_tag(SUBJECT)}"]
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("where, status, error", [("referrers", 403, AuthError),
                                                  ("head", 403, AuthError),
                                                  ("head", 503, TransientError)])
async def test_other_errors_propagate(where, status, error):
    async def referrers(request):
        if where == "referrers":
            return web.json_response({"errors": [{"code": "DENIED", "message": "no"}]}, status=status)
        return web.json_response({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []})

    async def head(request):
        return web.Response(status=status if where == "head" else 404)

    runner, host = await _serve({("GET", f"/v2/{REPO}/referrers/{{digest}}"): referrers,
                                 ("HEAD", f"/v2/{REPO}/manifests/{{ref}}"): head})
    try:
        async with aiohttp.ClientSession() as session:
            with pytest.raises(error):
                await discover(_registry(session, host), REPO, SUBJECT)
    finally:
        await runner.cleanup()


# ---------------------------------------------------------------------------------------------
# End to end: sync with referrers: true, push into a fresh registry, find them attached there
# ---------------------------------------------------------------------------------------------


def _sha(data: bytes) -> str:
    import hashlib
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_signatures_travel_with_their_image(registry, make_registry, tmp_path, capsys):
    import json as _json

    from helpers import Bundle, run_cli, write_manifest
    from imagegen import (cosign_tag, inspect_raw, make_cosign_signature, make_fallback_index,
                          make_image, make_layer, make_referrer, push, push_raw)
    image = make_image([make_layer("signed", 4096)])
    push(image, registry.host, "test/signed", "1.0")
    artifact = make_referrer(image)
    push_raw(artifact, registry.host, "test/signed")                       # by digest
    push_raw(make_fallback_index([artifact]), registry.host, "test/signed", cosign_tag(image.digest, ""))
    signature = make_cosign_signature(image)
    push_raw(signature, registry.host, "test/signed", cosign_tag(image.digest))
    manifest = write_manifest(tmp_path / "m.yaml", f"""version: 1
referrers: true
platforms: [linux/amd64]
images:
  - {registry.host}/test/signed:1.0
""")
    bundle = tmp_path / "b.tar"
    code, _, err = run_cli("sync", manifest, "-o", bundle, "--cache", tmp_path / "c", capsys=capsys)
    assert code == 0, err
    refs = Bundle(bundle).refs()
    base = f"{registry.host}/test/signed"
    assert refs == {f"{base}:1.0", f"{base}:{cosign_tag(image.digest, '')}", f"{base}:{cosign_tag(image.digest)}"}
    target = make_registry()
    code, _, err = run_cli("push", bundle, "--to", target.host, capsys=capsys)
    assert code == 0, err
    # inside: the same image digest, its signature under cosign's tag, and the OCI 1.1 fallback
    # index listing the artifact whose subject is that digest
    assert _sha(inspect_raw(target.host, "test/signed:1.0")) == image.digest
    assert _sha(inspect_raw(target.host, f"test/signed:{cosign_tag(image.digest)}")) == signature.digest
    index = _json.loads(inspect_raw(target.host, f"test/signed:{cosign_tag(image.digest, '')}"))
    assert [m["digest"] for m in index["manifests"]] == [artifact.digest]
    pushed = _json.loads(inspect_raw(target.host, f"test/signed@{artifact.digest}"))
    assert pushed["subject"]["digest"] == image.digest
