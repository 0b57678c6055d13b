"""Authentication against real registries: Basic (htpasswd) and Bearer tokens, from every source
of credentials; secrets never show up in what imgmirror prints or writes."""

from __future__ import annotations

import base64
import json
import os
import stat
import time

import aiohttp
import pytest

from helpers import Bundle, run_cli, write_manifest
from imagegen import make_image, make_layer, push
from mirror.registry.credentials import lookup
from mirror.errors import AuthError
from mirror.registry.client import Registry
from mirror.registry.transport import HostSettings, Transport, parse_challenge


@pytest.fixture(autouse=True)
def no_ambient_credentials(monkeypatch, tmp_path):
    """Tests must not read the developer's own docker or podman credentials."""
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "no-docker-config"))
    monkeypatch.delenv("REGISTRY_AUTH_FILE", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "no-runtime-dir"))


def _one_image(reg) -> str:
    """Push one small image to `reg`; returns its digest."""
    img = make_image([make_layer("auth-base", 2048), make_layer("auth-top", 1024)])
    push(img, reg.host, "test/private", "1.0", reg.creds)
    return img.digest


def _manifest(tmp_path, host: str, registries: str = "") -> str:
    return write_manifest(tmp_path / "m.yaml", f"""version: 1
{registries}
images:
  - source: {host}/test/private:1.0
""")


def _sync(tmp_path, manifest, capsys):
    code, out, err = run_cli("sync", manifest, "-o", tmp_path / "b.tar", "--cache", tmp_path / "c",
                             "--report", tmp_path / "r.json", "-v", capsys=capsys)
    text = out + err + ((tmp_path / "r.json").read_text() if (tmp_path / "r.json").exists() else "")
    return code, text


def _assert_no_secret(text: str, secret: str) -> None:
    assert secret not in text
    assert base64.b64encode(secret.encode()).decode()[:12] not in text


def test_basic_auth_from_manifest_env(registry_basic, tmp_path, capsys, monkeypatch):
    digest = _one_image(registry_basic)
    monkeypatch.setenv("REG_USER", registry_basic.username)
    monkeypatch.setenv("REG_PASS", registry_basic.password)
    manifest = _manifest(tmp_path, registry_basic.host, f"""registries:
  {registry_basic.host}:
    username: ${{REG_USER}}
    password: ${{REG_PASS}}""")
    code, text = _sync(tmp_path, manifest, capsys)
    assert code == 0, text
    assert Bundle(tmp_path / "b.tar").entry(f"{registry_basic.host}/test/private:1.0")["digest"] == digest
    _assert_no_secret(text, registry_basic.password)


def test_basic_auth_missing_credentials_is_a_clear_failure(registry_basic, tmp_path, capsys):
    _one_image(registry_basic)
    code, text = _sync(tmp_path, _manifest(tmp_path, registry_basic.host), capsys)
    assert code == 1
    assert "username and password" in text and registry_basic.host in text


def test_basic_auth_wrong_password(registry_basic, tmp_path, capsys):
    _one_image(registry_basic)
    manifest = _manifest(tmp_path, registry_basic.host, f"""registries:
  {registry_basic.host}:
    username: alice
    password: not-the-password-1234""")
    code, text = _sync(tmp_path, manifest, capsys)
    assert code == 1
    assert "access denied" in text and "check the credentials" in text
    _assert_no_secret(text, "not-the-password-1234")


def test_token_auth_from_docker_config(registry_token, tmp_path, capsys, monkeypatch):
    digest = _one_image(registry_token)
    cfg = tmp_path / "docker"
    cfg.mkdir()
    auth = base64.b64encode(f"{registry_token.username}:{registry_token.password}".encode()).decode()
    (cfg / "config.json").write_text(json.dumps({"auths": {registry_token.host: {"auth": auth}}}))
    monkeypatch.setenv("DOCKER_CONFIG", str(cfg))
    registry_token.token_server.requests.clear()
    code, text = _sync(tmp_path, _manifest(tmp_path, registry_token.host), capsys)
    assert code == 0, text
    assert Bundle(tmp_path / "b.tar").entry(f"{registry_token.host}/test/private:1.0")["digest"] == digest
    reqs = registry_token.token_server.requests
    assert all(r["user"] == registry_token.username for r in reqs)
    assert {s for r in reqs for s in r["scopes"]} == {"repository:test/private:pull"}
    # one token for the scope, reused for the HEAD, the GETs and every blob
    assert len(reqs) == 1
    _assert_no_secret(text, registry_token.password)


def test_token_in_access_token_field_and_podman_auth_file(make_registry, tmp_path, capsys, monkeypatch):
    reg = make_registry(auth="token", token_field="access_token")
    digest = _one_image(reg)
    auth = base64.b64encode(f"{reg.username}:{reg.password}".encode()).decode()
    (tmp_path / "auth.json").write_text(json.dumps({"auths": {reg.host: {"auth": auth}}}))
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(tmp_path / "auth.json"))
    code, text = _sync(tmp_path, _manifest(tmp_path, reg.host), capsys)
    assert code == 0, text
    assert Bundle(tmp_path / "b.tar").entry(f"{reg.host}/test/private:1.0")["digest"] == digest


def test_credential_helper(registry_basic, tmp_path, capsys, monkeypatch):
    digest = _one_image(registry_basic)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    helper = bin_dir / "docker-credential-imgtest"
    helper.write_text(f"""#!/bin/sh
read server
[ "$1" = get ] && [ "$server" = "{registry_basic.host}" ] || exit 1
echo '{{"ServerURL":"{registry_basic.host}","Username":"{registry_basic.username}","Secret":"{registry_basic.password}"}}'
""")
    helper.chmod(helper.stat().st_mode | stat.S_IEXEC)
    cfg = tmp_path / "docker"
    cfg.mkdir()
    (cfg / "config.json").write_text(json.dumps({"credHelpers": {registry_basic.host: "imgtest"}}))
    monkeypatch.setenv("DOCKER_CONFIG", str(cfg))
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    code, text = _sync(tmp_path, _manifest(tmp_path, registry_basic.host), capsys)
    assert code == 0, text
    assert Bundle(tmp_path / "b.tar").entry(f"{registry_basic.host}/test/private:1.0")["digest"] == digest
    _assert_no_secret(text, registry_basic.password)


def test_manifest_credentials_win_over_files(tmp_path):
    cfg = tmp_path / "docker"
    cfg.mkdir()
    auth = base64.b64encode(b"fileuser:filepass").decode()
    (cfg / "config.json").write_text(json.dumps({"auths": {"reg.example:5000": {"auth": auth}}}))
    env = {"DOCKER_CONFIG": str(cfg)}
    assert lookup("reg.example:5000", ("yamluser", "yamlpass"), env).username == "yamluser"
    assert lookup("reg.example:5000", None, env).password == "filepass"
    assert lookup("other.example", None, env) is None
    assert "filepass" not in repr(lookup("reg.example:5000", None, env))


async def test_expired_token_is_refreshed_once(registry_token, tmp_path):
    """A cached token the registry no longer accepts: the 401 makes exactly one fresh token."""
    digest = _one_image(registry_token)
    ts = registry_token.token_server
    settings = HostSettings(host=registry_token.host, api_host=registry_token.host, retries=0)
    from mirror.registry.credentials import Credentials
    async with aiohttp.ClientSession() as session:
        reg = Registry(Transport(session, settings, Credentials(registry_token.username, registry_token.password)))
        assert await reg.head_manifest("test/private", "1.0") == digest
        # distribution allows 60 s of clock skew: a token that ended two minutes ago is dead
        ts.lifetime = -120
        expired = ts.issue(["repository:test/private:pull"])
        ts.lifetime = 300
        reg.t.auth.tokens = {k: (expired, time.monotonic() + 1000) for k in reg.t.auth.tokens}
        ts.requests.clear()
        assert await reg.head_manifest("test/private", "1.0") == digest
        assert len(ts.requests) == 1


async def test_token_server_refusal_is_auth_error(registry_token, tmp_path):
    _one_image(registry_token)
    from mirror.registry.credentials import Credentials
    settings = HostSettings(host=registry_token.host, api_host=registry_token.host, retries=0)
    async with aiohttp.ClientSession() as session:
        reg = Registry(Transport(session, settings, Credentials("bob", "wrong-secret-xyz")))
        with pytest.raises(AuthError) as info:
            await reg.head_manifest("test/private", "1.0")
    assert "refused" in str(info.value) and "wrong-secret-xyz" not in str(info.value)


@pytest.mark.parametrize("header, scheme, params", [
    ('Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
     'scope="repository:library/alpine:pull,push"', "bearer",
     {"realm": "https://auth.docker.io/token", "service": "registry.docker.io",
      "scope": "repository:library/alpine:pull,push"}),
    ('Basic realm="Registry Realm"', "basic", {"realm": "Registry Realm"}),
    ('Bearer realm=https://ghcr.io/token, service=ghcr.io', "bearer",
     {"realm": "https://ghcr.io/token", "service": "ghcr.io"}),
])
def test_parse_challenge(header, scheme, params):
    assert parse_challenge(header) == (scheme, params)


def test_no_secret_in_push_output_report_or_dry_run(registry_token, make_registry, tmp_path, capsys,
                                                    monkeypatch):
    """Push and sync --dry-run with credentials from the manifest: the secret appears nowhere."""
    digest = _one_image(registry_token)
    target = make_registry(auth="basic")
    monkeypatch.setenv("SRC_PASS", registry_token.password)
    monkeypatch.setenv("DST_PASS", target.password)
    manifest = _manifest(tmp_path, registry_token.host, f"""registries:
  {registry_token.host}:
    username: {registry_token.username}
    password: ${{SRC_PASS}}
  {target.host}:
    username: {target.username}
    password: ${{DST_PASS}}""")
    texts = []
    code, out, err = run_cli("sync", manifest, "--dry-run", "-v", "--cache", tmp_path / "c", capsys=capsys)
    texts.append(out + err)
    assert code == 0
    code, out, err = run_cli("sync", manifest, "-o", tmp_path / "b.tar", "--cache", tmp_path / "c",
                             "--report", tmp_path / "s.json", "-v", capsys=capsys)
    texts += [out + err, (tmp_path / "s.json").read_text()]
    assert code == 0
    for extra in (["--dry-run"], []):
        code, out, err = run_cli("push", tmp_path / "b.tar", "--to", target.host, "--config", manifest,
                                 "--report", tmp_path / "p.json", "-v", *extra, capsys=capsys)
        texts += [out + err, (tmp_path / "p.json").read_text()]
        assert code == 0, err
    # a refused password must not be echoed either
    monkeypatch.setenv("DST_PASS", "wrong-and-secret-42")
    code, out, err = run_cli("push", tmp_path / "b.tar", "--to", target.host, "--config", manifest,
                             capsys=capsys)
    texts.append(out + err)
    assert code == 1
    for text in texts:
        for secret in (registry_token.password, target.password, "wrong-and-secret-42"):
            _assert_no_secret(text, secret)
        assert "eyJ" not in text          # no bearer token (a JWT starts with base64 '{"')
    assert digest in texts[1]


def test_one_challenge_then_tokens_for_every_repository_in_parallel(registry_token, tmp_path, capsys):
    """Nine images in three repositories at once: only the very first request meets a 401; the
    others wait for its challenge, and each repository's token is fetched once, before any
    request of that repository is sent (none gets a 401)."""
    creds = registry_token.creds
    for r in range(3):
        for t in range(3):
            img = make_image([make_layer(f"tok-{r}-{t}", 1024 + t)])
            push(img, registry_token.host, f"test/tok{r}", f"t{t}", creds)
    registry_token.token_server.requests.clear()
    mark = registry_token.mark()
    manifest = write_manifest(tmp_path / "m.yaml", f"""version: 1
registries:
  {registry_token.host}:
    username: {registry_token.username}
    password: {registry_token.password}
images:
""" + "".join(f"  - source: {registry_token.host}/test/tok{r}\n    tags: [t0, t1, t2]\n" for r in range(3)))
    code, text = _sync(tmp_path, manifest, capsys)
    assert code == 0, text
    reqs = registry_token.requests(since=mark)
    assert [r.status for r in reqs].count(401) == 1, [(r.method, r.uri, r.status) for r in reqs]
    assert reqs[0].status == 401
    scopes = sorted(s for r in registry_token.token_server.requests for s in r["scopes"])
    assert scopes == [f"repository:test/tok{r}:pull" for r in range(3)]


def test_tokens_of_every_repository_fetched_at_the_first_challenge(registry_token, tmp_path, capsys):
    """Six repositories through a metadata lane of 4 (concurrency: 1): every repository's token
    is asked for as soon as the first 401 tells how, before the registry has answered any
    request that carries a token, not when a repository's first request finds a free slot."""
    from faultproxy import FaultProxy
    creds = registry_token.creds
    for r in range(6):
        push(make_image([make_layer(f"pre-{r}", 1200 + r)]), registry_token.host, f"test/pre{r}", "1.0", creds)
    front = FaultProxy(registry_token.url).start()
    front.rule = lambda seen, n: ("delay", 0.3)       # every answer of the registry: 0.3 s late
    try:
        manifest = write_manifest(tmp_path / "m.yaml", f"""version: 1
concurrency: 1
registries:
  {front.host}:
    username: {registry_token.username}
    password: {registry_token.password}
images:
""" + "".join(f"  - {front.host}/test/pre{r}:1.0\n" for r in range(6)))
        registry_token.token_server.requests.clear()
        code, text = _sync(tmp_path, manifest, capsys)
    finally:
        front.stop()
    assert code == 0, text
    tokens = registry_token.token_server.requests
    assert sorted(s for r in tokens for s in r["scopes"]) == [f"repository:test/pre{r}:pull" for r in range(6)]
    authorized = [s for s in front.seen if "Authorization" in s.headers]
    # without the prefetch, the 5th and 6th repositories' tokens wait for a free slot: for an
    # answer of the registry to an authorized request, 0.3 s after the challenge at the least
    assert max(r["t"] for r in tokens) < min(s.t1 for s in authorized), \
        "a token was fetched only when its repository's turn came"
