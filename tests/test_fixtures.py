"""Prove the test infrastructure itself: registries, token server, image generator, seed().

If these fail, every integration test built on the fixtures is suspect, so they check the
fixtures against the real distribution registry and skopeo, not against each other.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import re
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request

import aiohttp
import jwt
import pytest

import imagegen
import registries
from imagegen import (
    ACCEPT_ALL,
    DOCKER_CONFIG,
    DOCKER_LAYER_GZIP,
    DOCKER_LIST,
    DOCKER_MANIFEST,
    IN_TOTO,
    OCI_INDEX,
    OCI_LAYER,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    TAGS,
)

# Never route loopback requests through a proxy from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http(method: str, url: str, *, headers: dict | None = None, data: bytes | None = None):
    """(status, headers, body) without raising on 4xx/5xx."""
    req = urllib.request.Request(url, method=method, headers=headers or {}, data=data)
    try:
        with _OPENER.open(req, timeout=10) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def basic(user: str, password: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def parse_challenge(header: str) -> tuple[str, dict]:
    """``Bearer realm="..",service="..",scope="repository:a:pull,push"`` -> ("Bearer", {...});
    quoted values may contain commas, so do not split on them."""
    scheme, _, rest = header.partition(" ")
    return scheme, dict(re.findall(r'(\w+)="([^"]*)"', rest))


def fetch_token(reg, params: list[tuple[str, str]], creds: tuple[str, str] | None):
    url = reg.token_server.realm + "?" + urllib.parse.urlencode(params)
    return http("GET", url, headers=basic(*creds) if creds else {})


# --------------------------------------------------------------------------------------------
# Registries
# --------------------------------------------------------------------------------------------


def test_plain_registry_answers_anonymously(registry):
    assert registry.host.startswith("127.0.0.1:") and registry.url == f"http://{registry.host}"
    assert registry.username is None and registry.password is None and registry.creds is None
    assert registry.token_server is None
    status, headers, body = http("GET", f"{registry.url}/v2/")
    assert status == 200, body
    assert headers["Docker-Distribution-Api-Version"] == "registry/2.0"
    # The access log is what tests count requests in.
    assert [r.status for r in registry.requests("GET", "/v2/")][-1] == 200


def test_basic_registry_challenges(registry_basic):
    reg = registry_basic
    assert reg.username == "alice" and reg.password
    status, headers, _ = http("GET", f"{reg.url}/v2/")
    assert status == 401
    scheme, params = parse_challenge(headers["WWW-Authenticate"])
    assert scheme == "Basic" and params["realm"] == registries.BASIC_REALM
    assert http("GET", f"{reg.url}/v2/", headers=basic(reg.username, "wrong"))[0] == 401
    assert http("GET", f"{reg.url}/v2/", headers=basic(reg.username, reg.password))[0] == 200


def test_token_registry_bearer_flow(registry_token):
    """401 challenge -> token from the realm -> the registry accepts it, scope by scope."""
    reg = registry_token
    ts = reg.token_server
    assert reg.username == "bob" and reg.password == ts.password

    status, headers, _ = http("GET", f"{reg.url}/v2/test/x/tags/list")
    assert status == 401
    scheme, ch = parse_challenge(headers["WWW-Authenticate"])
    assert scheme == "Bearer"
    assert ch == {"realm": ts.realm, "service": "imgmirror-test", "scope": "repository:test/x:pull"}

    params = [("service", ch["service"]), ("scope", ch["scope"])]
    assert fetch_token(reg, params, None)[0] == 401
    assert fetch_token(reg, params, ("bob", "wrong"))[0] == 401
    status, _, body = fetch_token(reg, params, reg.creds)
    assert status == 200, body
    answer = json.loads(body)
    assert set(answer) == {"token", "expires_in", "issued_at"} and answer["expires_in"] == 300
    claims = jwt.decode(answer["token"], options={"verify_signature": False})
    assert claims["iss"] == "imgmirror-test-issuer" and claims["aud"] == "imgmirror-test"
    assert claims["sub"] == "bob" and {"exp", "nbf", "iat", "jti"} <= set(claims)
    assert claims["access"] == [{"type": "repository", "name": "test/x", "actions": ["pull"]}]
    assert "x5c" in jwt.get_unverified_header(answer["token"])

    # distribution verified the signature against rootcertbundle: the repository is unknown
    # (404), not unauthorised.
    bearer = {"Authorization": f"Bearer {answer['token']}"}
    status, _, body = http("GET", f"{reg.url}/v2/test/x/tags/list", headers=bearer)
    assert status == 404 and b"NAME_UNKNOWN" in body
    # ... and it checks scopes: a pull token does not open another repository.
    assert http("GET", f"{reg.url}/v2/test/other/tags/list", headers=bearer)[0] == 401
    # A token for no scope at all opens /v2/.
    token = json.loads(fetch_token(reg, [("service", "imgmirror-test")], reg.creds)[2])["token"]
    assert http("GET", f"{reg.url}/v2/", headers={"Authorization": f"Bearer {token}"})[0] == 200

    assert [(r["scopes"], r["auth"], r["status"]) for r in ts.requests] == [
        (["repository:test/x:pull"], False, 401),
        (["repository:test/x:pull"], True, 401),
        (["repository:test/x:pull"], True, 200),
        ([], True, 200),
    ]


async def test_token_flow_with_aiohttp(registry_token):
    """The token server runs its own loop in a thread, so it works under pytest-asyncio too."""
    reg = registry_token
    img = imagegen.make_image([imagegen.make_layer("aiohttp-flow")])
    imagegen.push(img, reg.host, "test/flow", "1.0", reg.creds)
    url = f"{reg.url}/v2/test/flow/manifests/1.0"
    async with aiohttp.ClientSession() as session:
        async with session.get(url, headers={"Accept": ACCEPT_ALL}) as resp:
            assert resp.status == 401
            _, ch = parse_challenge(resp.headers["WWW-Authenticate"])
        params = [("service", ch["service"]), ("scope", ch["scope"])]
        # (aiohttp 3.14 deprecates auth=BasicAuth(...); a plain header works in every version.)
        async with session.get(ch["realm"], params=params, headers=basic(*reg.creds)) as resp:
            assert resp.status == 200
            token = (await resp.json())["token"]
        headers = {"Accept": ACCEPT_ALL, "Authorization": f"Bearer {token}"}
        async with session.get(url, headers=headers) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"] == OCI_MANIFEST
            assert imagegen.sha256_digest(await resp.read()) == img.digest


def test_token_server_access_token_field(make_registry):
    reg = make_registry(auth="token", token_field="access_token")
    status, _, body = fetch_token(reg, [("service", "imgmirror-test"), ("scope", "repository:a/b:pull")], reg.creds)
    assert status == 200 and set(json.loads(body)) == {"access_token", "expires_in", "issued_at"}
    # skopeo (containers/image) understands access_token as well.
    img = imagegen.make_image([imagegen.make_layer("access-token")])
    assert imagegen.push(img, reg.host, "a/b", "1", reg.creds) == img.digest


def test_token_server_knobs(registry_token):
    """Injected failures and expired tokens, for retry/refresh tests."""
    reg, ts = registry_token, registry_token.token_server
    params = [("service", "imgmirror-test")]
    ts.fail_next = 503
    assert fetch_token(reg, params, reg.creds)[0] == 503
    assert fetch_token(reg, params, reg.creds)[0] == 200  # only the next one fails
    ts.lifetime = -120  # past distribution's 60 s leeway
    expired = json.loads(fetch_token(reg, params, reg.creds)[2])["token"]
    assert http("GET", f"{reg.url}/v2/", headers={"Authorization": f"Bearer {expired}"})[0] == 401
    assert [r["status"] for r in ts.requests] == [503, 200, 200]


def test_token_server_records_push_scopes(registry_token):
    reg = registry_token
    img = imagegen.make_image([imagegen.make_layer("scopes")])
    imagegen.push(img, reg.host, "test/scoped", "1.0", reg.creds)
    seen = [s for r in reg.token_server.requests for s in r["scopes"]]
    assert "repository:test/scoped:pull,push" in seen  # skopeo copy
    assert "repository:test/scoped:pull" in seen  # skopeo inspect (the digest check)
    assert all(r["auth"] and r["user"] == "bob" and r["status"] == 200 for r in reg.token_server.requests)
    assert all(r["service"] == "imgmirror-test" for r in reg.token_server.requests)


def test_wrong_credentials_fail_the_push(registry_basic):
    img = imagegen.make_image([imagegen.make_layer("denied")])
    with pytest.raises(imagegen.PushError):
        imagegen.push(img, registry_basic.host, "test/denied", "1", ("alice", "wrong"))


def test_access_log_lines_for_blob_get_and_mount(registry):
    """The log lines tests count: one access-log line per request, URI with query string."""
    img = imagegen.make_image([imagegen.make_layer("log-lines")])
    imagegen.push(img, registry.host, "test/src", "1.0")
    layer = img.layers[0].digest
    mark = registry.mark()

    status, _, body = http("GET", f"{registry.url}/v2/test/src/blobs/{layer}")
    assert status == 200 and imagegen.sha256_digest(body) == layer
    status, headers, _ = http("POST", f"{registry.url}/v2/test/dst/blobs/uploads/?mount={layer}&from=test/src")
    assert status == 201 and headers["Docker-Content-Digest"] == layer

    got = registry.requests(since=mark)
    assert [(r.method, r.path, r.status) for r in got] == [
        ("GET", f"/v2/test/src/blobs/{layer}", 200),
        ("POST", "/v2/test/dst/blobs/uploads/", 201),
    ]
    assert got[1].query == {"mount": [layer], "from": ["test/src"]}
    assert registry.count("POST", "mount=", since=mark) == 1
    log = registry.log_text()
    assert f'"GET /v2/test/src/blobs/{layer} HTTP/1.1" 200 ' in log
    assert f'"POST /v2/test/dst/blobs/uploads/?mount={layer}&from=test/src HTTP/1.1" 201 ' in log


def test_blob_path_points_into_storage(registry):
    img = imagegen.make_image([imagegen.make_layer("storage")])
    imagegen.push(img, registry.host, "test/storage", "1.0")
    assert registry.blob_path(img.layers[0].digest).read_bytes() == img.layers[0].data


def test_missing_tools_fail_loudly(monkeypatch):
    """Without docker-registry the fixtures fail with an install hint instead of skipping."""
    from conftest import _require_tools

    monkeypatch.setattr(registries, "registry_binary", lambda: None)
    with pytest.raises(pytest.fail.Exception, match="apt-get install docker-registry skopeo"):
        _require_tools()


# --------------------------------------------------------------------------------------------
# Image generator
# --------------------------------------------------------------------------------------------


def test_layers_are_real_reproducible_tars():
    a, b = imagegen.make_layer("same", 5000), imagegen.make_layer("same", 5000)
    assert a.data == b.data and a.digest == b.digest
    assert imagegen.make_layer("other", 5000).digest != a.digest
    assert a.media_type == OCI_LAYER_GZIP and a.data[:2] == b"\x1f\x8b"
    assert a.data[4:8] == b"\0\0\0\0"  # gzip mtime 0
    tar = gzip.decompress(a.data)
    assert a.diff_id == "sha256:" + hashlib.sha256(tar).hexdigest()
    with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
        files = {m.name: m.size for m in tf.getmembers() if m.isfile()}
    assert files["data/same.bin"] == 5000 and "etc/imgmirror/same.txt" in files

    raw = imagegen.make_layer("raw", compressed=False)
    assert raw.media_type == OCI_LAYER and raw.digest == raw.diff_id
    assert imagegen.make_layer("d", docker=True).media_type == DOCKER_LAYER_GZIP


def test_big_layers_are_quick():
    start = time.monotonic()
    layer = imagegen.make_layer("bench", 8 * 1024 * 1024)
    assert layer.size > 8 * 1024 * 1024
    assert time.monotonic() - start < 5


def test_layout_push_by_ref_name(registry, tmp_path):
    """A multi-image OCI layout on disk pushes one entry selected by its ref name."""
    one = imagegen.make_image([imagegen.make_layer("layout-1")])
    two = imagegen.make_multiarch("layout-2")
    layout = imagegen.write_layout(tmp_path / "layout", one, ref_name="one")
    imagegen.write_layout(layout, two, ref_name="two")
    assert json.loads((layout / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    for blob in [*two.blobs(), *two.manifests()]:
        assert (layout / "blobs/sha256" / blob.digest.split(":")[1]).read_bytes() == blob.data
    assert imagegen.push(layout, registry.host, "test/layout", "two", ref_name="two") == two.digest
    assert imagegen.push(layout, registry.host, "test/layout", "one", ref_name="one") == one.digest


EXPECTED_REFS = {
    "test/base:1.0",
    "test/app-a:1.0",
    "test/app-b:1.0",
    "test/multi:1.0",
    "test/dockerv2:1.0",
    "test/dockerlist:1.0",
    "test/raw:1.0",
    *(f"test/tags:{t}" for t in TAGS),
}


@pytest.mark.parametrize("auth", [None, "basic", "token"])
def test_seed_round_trips_digest_for_digest(make_registry, auth):
    reg = make_registry(auth=auth)
    start = time.monotonic()
    info = imagegen.seed(reg.host, reg.creds)
    assert time.monotonic() - start < 10
    assert set(info) == EXPECTED_REFS

    # Every manifest, children included, reads back through skopeo with the built digest.
    for ref, item in info.items():
        assert item["ref"] == f"{reg.host}/{ref}"
        raw = imagegen.inspect_raw(reg.host, ref, reg.creds)
        assert raw == item["raw"] and imagegen.sha256_digest(raw) == item["digest"]
        for child in item.get("children", []):
            raw = imagegen.inspect_raw(reg.host, f"{item['repo']}@{child['digest']}", reg.creds)
            assert imagegen.sha256_digest(raw) == child["digest"]

    if auth == "token":
        scopes = {s for r in reg.token_server.requests for s in r["scopes"]}
        for repo in {ref.split(":")[0] for ref in EXPECTED_REFS}:
            assert f"repository:{repo}:pull,push" in scopes
            assert f"repository:{repo}:pull" in scopes
        return

    # Every blob is there (anonymous registry only; the auth flows are proven above).
    if auth is None:
        for item in info.values():
            for digest in item["blobs"]:
                status, headers, _ = http("HEAD", f"{reg.url}/v2/{item['repo']}/blobs/{digest}")
                assert status == 200, (item["ref"], digest)
        status, _, body = http("GET", f"{reg.url}/v2/test/tags/tags/list")
        assert sorted(json.loads(body)["tags"]) == sorted(TAGS)


def test_seed_contents():
    """What seed() promises, checked on the in-memory set (same bytes it pushes)."""
    images = imagegen.standard_set()
    info = {ref: imagegen.describe(art) for ref, art in images.items()}
    # Deterministic across calls (and runs: everything derives from fixed seeds).
    assert {r: i["digest"] for r, i in info.items()} == {
        r: a.digest for r, a in imagegen.standard_set().items()
    }

    base = info["test/base:1.0"]["layers"]
    for app in ("test/app-a:1.0", "test/app-b:1.0"):
        assert info[app]["layers"][:2] == base and len(info[app]["layers"]) == 3
    assert info["test/app-a:1.0"]["layers"][2] != info["test/app-b:1.0"]["layers"][2]

    multi = info["test/multi:1.0"]
    assert multi["media_type"] == OCI_INDEX
    images_ = [c for c in multi["children"] if not c["attestation"]]
    atts = [c for c in multi["children"] if c["attestation"]]
    assert [c["platform"] for c in images_] == [
        {"architecture": "amd64", "os": "linux"},
        {"architecture": "arm64", "os": "linux", "variant": "v8"},
        {"architecture": "arm", "os": "linux", "variant": "v7"},
    ]
    assert [a["annotations"]["vnd.docker.reference.digest"] for a in atts] == [c["digest"] for c in images_]
    for att in atts:
        assert att["platform"] == {"architecture": "unknown", "os": "unknown"}
        assert att["annotations"]["vnd.docker.reference.type"] == "attestation-manifest"
    att_image = next(c for c in images["test/multi:1.0"].children if c.digest == atts[0]["digest"])
    assert [layer.media_type for layer in att_image.layers] == [IN_TOTO]
    statement = json.loads(att_image.layers[0].data)
    assert statement["subject"][0]["digest"]["sha256"] == images_[0]["digest"].split(":")[1]

    dv2 = images["test/dockerv2:1.0"]
    assert dv2.media_type == DOCKER_MANIFEST and dv2.config.media_type == DOCKER_CONFIG
    assert [layer.media_type for layer in dv2.layers] == [DOCKER_LAYER_GZIP]
    dlist = info["test/dockerlist:1.0"]
    assert dlist["media_type"] == DOCKER_LIST and len(dlist["children"]) == 3
    assert {c["media_type"] for c in dlist["children"]} == {DOCKER_MANIFEST}

    raw_image = images["test/raw:1.0"]
    assert [layer.media_type for layer in raw_image.layers] == [OCI_LAYER]
    config = json.loads(raw_image.config.data)
    assert config["rootfs"]["diff_ids"] == [raw_image.layers[0].digest]
    assert config["architecture"] == "amd64" and config["os"] == "linux"

    tags = {t: info[f"test/tags:{t}"]["digest"] for t in TAGS}
    assert tags["latest"] == tags["v2.0.0"] and len(set(tags.values())) == len(TAGS) - 1
