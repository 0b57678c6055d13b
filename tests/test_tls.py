"""TLS: a registry with a self-signed certificate, reached with its CA, with insecure: true, and
refused with a message that says what to do."""

from __future__ import annotations

import pytest

from helpers import Bundle, run_cli, write_manifest
from imagegen import make_image, make_layer, push
from registries import _self_signed_cert, serialization


@pytest.fixture
def tls_registry(make_registry):
    reg = make_registry(tls=True)
    img = make_image([make_layer("tls", 2048)])
    push(img, reg.host, "test/tls", "1.0")
    reg.digest = img.digest
    return reg


def _sync(tmp_path, reg, settings: str, capsys):
    manifest = write_manifest(tmp_path / "m.yaml", f"""version: 1
registries:
  {reg.host}:
{settings}
images:
  - {reg.host}/test/tls:1.0
""")
    return run_cli("sync", manifest, "-o", tmp_path / "b.tar", "--cache", tmp_path / "c", capsys=capsys)


def test_ca_file_verifies_the_registry(tls_registry, tmp_path, capsys):
    code, _, err = _sync(tmp_path, tls_registry, f"    ca_file: {tls_registry.ca_file}", capsys)
    assert code == 0, err
    assert Bundle(tmp_path / "b.tar").entry(f"{tls_registry.host}/test/tls:1.0")["digest"] == tls_registry.digest


def test_insecure_skips_verification(tls_registry, tmp_path, capsys):
    code, _, err = _sync(tmp_path, tls_registry, "    insecure: true", capsys)
    assert code == 0, err


def test_wrong_ca_is_refused_with_advice(tls_registry, tmp_path, capsys):
    _, other = _self_signed_cert("someone else", server=True)
    (tmp_path / "other.pem").write_bytes(other.public_bytes(serialization.Encoding.PEM))
    code, _, err = _sync(tmp_path, tls_registry, f"    ca_file: {tmp_path / 'other.pem'}", capsys)
    assert code == 1
    assert "TLS failed" in err and "ca_file" in err and "insecure: true" in err
    assert not (tmp_path / "b.tar").exists()


def test_plain_http_to_a_tls_loopback_registry_says_so(tls_registry, tmp_path, capsys):
    """Loopback registries speak HTTP by default (as in Docker); a TLS one answers 400."""
    code, _, err = _sync(tmp_path, tls_registry, "    retries: 0", capsys)
    assert code == 1
    assert "speaks HTTPS" in err and "ca_file" in err


def test_unreadable_ca_file(tls_registry, tmp_path, capsys):
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    code, _, err = _sync(tmp_path, tls_registry, f"    ca_file: {tmp_path / 'junk.pem'}", capsys)
    assert code == 1 and "not a PEM certificate" in err


@pytest.mark.parametrize("trusted", [True, False])
def test_plain_http_registry_redirecting_to_https_verifies_with_the_system_cas(
        tls_registry, registry, tmp_path, capsys, monkeypatch, trusted):
    """Blobs of a plain-HTTP registry kept behind HTTPS (object storage): the redirect is
    followed with the system's CAs (SSL_CERT_FILE stands for them here), and refused when they
    do not trust the server. aiohttp's import-time default contexts are built without
    certificates (registry.http), so this proves imgmirror verifies with its own."""
    from faultproxy import FaultProxy
    img = make_image([make_layer("tls", 2048)])          # the image tls_registry holds
    push(img, registry.host, "test/tls", "1.0")
    layer = img.layers[0].digest
    front = FaultProxy(registry.url).start()
    front.rule = lambda seen, n: (("redirect", f"https://{tls_registry.host}{seen.path}")
                                  if seen.path.endswith(layer) and seen.method == "GET" else None)
    if trusted:
        monkeypatch.setenv("SSL_CERT_FILE", str(tls_registry.ca_file))
    mark = tls_registry.mark()
    try:
        manifest = write_manifest(tmp_path / "m.yaml", f"version: 1\nregistries:\n  {front.host}: {{retries: 0}}\n"
                                  f"images:\n  - {front.host}/test/tls:1.0\n")
        code, _, err = run_cli("sync", manifest, "-o", tmp_path / "b.tar", "--cache", tmp_path / "c", capsys=capsys)
    finally:
        front.stop()
    if trusted:
        assert code == 0, err
        assert layer in Bundle(tmp_path / "b.tar").blobs
        assert [r.path for r in tls_registry.requests(since=mark)] == [f"/v2/test/tls/blobs/{layer}"]
    else:
        assert code == 1 and "certificate" in err.lower(), err
        assert tls_registry.requests(since=mark) == []
