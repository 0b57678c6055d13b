"""mirror/trust/cosign.py: cosign signatures found in a manifest, and their check against public keys.

The signatures are written by tests/cosignfake.py as cosign writes them; one test reads them back
from a real registry over HTTP."""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import urllib.request

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

import cosignfake as cf
import imagegen as g
from mirror.trust import types as t
from mirror.trust.cosign import (
    candidates,
    check_with_keys,
    load_public_key,
    pae,
    repository,
    subject,
    verify_signature,
)
from mirror.trust.types import Candidate, Rekor, Verdict

REF = "registry.example/test/signed"
OTHER = "sha256:" + "0" * 64


def key(kind: str = "ecdsa-p256", n: int = 0):
    """(private key, public PEM), one per (kind, n) for the whole module (RSA keys take a while)."""
    return _key(kind, n)


@functools.cache
def _key(kind: str, n: int):     # positional only, so key() and key("ecdsa-p256", 0) are one key
    return cf.gen_key(kind)


def pub(kind: str = "ecdsa-p256", n: int = 0):
    return load_public_key(key(kind, n)[1])


@functools.cache
def subject_image(name: str = "cosign-subject") -> g.Image:
    return g.make_image([g.make_layer(name, 512)], labels={"name": name})


def cands(*images: g.Image) -> list[Candidate]:
    """Every candidate of `images`, each read as the caller would (blobs from memory)."""
    blobs = cf.blobs_of(*images)
    return [c for img in images for c in candidates(img.raw, img.digest, blobs.__getitem__)]


# ------------------------------------------------------------------------------------------------
# What cosignfake writes
# ------------------------------------------------------------------------------------------------


def test_simple_signing_payload_is_gos_json_marshal():
    d = "sha256:" + "ab" * 32
    assert cf.simple_signing_payload(d, "example.com/a/b:1") == (
        b'{"critical":{"identity":{"docker-reference":"example.com/a/b:1"},'
        b'"image":{"docker-manifest-digest":"sha256:' + b"ab" * 32 + b'"},'
        b'"type":"cosign container image signature"},"optional":null}')
    assert cf.go_json({"a": "<&>"}) == b'{"a":"\\u003c\\u0026\\u003e"}'


def test_sig_image_is_laid_out_as_cosign_does():
    img = cf.sign_image(subject_image().digest, REF, key()[0])
    doc = json.loads(img.raw)
    assert doc["mediaType"] == g.OCI_MANIFEST and "subject" not in doc
    assert list(doc["layers"][0]) == ["mediaType", "size", "digest", "annotations"]
    assert doc["layers"][0]["mediaType"] == t.SIMPLESIGNING
    sig = base64.b64decode(doc["layers"][0]["annotations"][t.ANN_SIGNATURE])
    assert verify_signature(pub(), img.layers[0].data, sig)
    config = json.loads(img.config.data)
    assert config["rootfs"]["diff_ids"] == [img.layers[0].digest]


def test_pae_matches_the_dsse_spec_vector():
    # https://github.com/secure-systems-lab/dsse/blob/master/protocol.md (test vector)
    want = b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    assert pae("http://example.com/HelloWorld", b"hello world") == want
    assert cf.pae("http://example.com/HelloWorld", b"hello world") == want


# ------------------------------------------------------------------------------------------------
# Keys and signatures
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", cf.KEY_KINDS)
def test_verify_signature_each_key_kind(kind):
    priv, pem = key(kind)
    k = load_public_key(pem)
    sig = cf.sign(priv, b"payload")
    assert verify_signature(k, b"payload", sig)
    assert not verify_signature(k, b"payloaD", sig)
    assert not verify_signature(k, b"payload", sig[:-1] + bytes([sig[-1] ^ 1]))
    assert not verify_signature(pub(kind, 1), b"payload", sig)       # same kind, another key


def test_verify_signature_accepts_rsa_pss_and_p384_with_sha384():
    priv, pem = key("rsa")
    assert verify_signature(load_public_key(pem), b"x", cf.sign(priv, b"x", pss=True))
    priv, pem = key("ecdsa-p384")
    assert verify_signature(load_public_key(pem), b"x", priv.sign(b"x", ec.ECDSA(hashes.SHA384())))
    # ...but a P-256 key only with SHA-256
    priv, pem = key("ecdsa-p256")
    assert not verify_signature(load_public_key(pem), b"x", priv.sign(b"x", ec.ECDSA(hashes.SHA384())))


@pytest.mark.parametrize("sig", [b"", b"garbage", b"\x30\x00", None, "text"])
@pytest.mark.parametrize("kind", cf.KEY_KINDS)
def test_verify_signature_never_raises(kind, sig):
    assert verify_signature(pub(kind), b"x", sig) is False
    assert verify_signature(object(), b"x", b"sig") is False
    assert verify_signature(None, b"x", b"sig") is False


@pytest.mark.parametrize("kind", cf.KEY_KINDS)
def test_load_public_key_each_kind(kind):
    k = load_public_key(key(kind)[1])
    assert verify_signature(k, b"m", cf.sign(key(kind)[0], b"m"))
    assert load_public_key(key(kind)[1].decode()) is not None          # str is fine too


def _cert_pem() -> bytes:
    from registries import _self_signed_cert
    _, cert = _self_signed_cert("cosign-test")
    return cert.public_bytes(serialization.Encoding.PEM)


@pytest.mark.parametrize("make_pem, reason", [
    (lambda: b"garbage", "not a PEM public key"),
    (lambda: b"", "not a PEM public key"),
    (lambda: b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", "not a PEM public key (cannot parse"),
    (lambda: cf.private_pem(key()[0]), "this is a private key (PRIVATE KEY)"),
    (lambda: cf.gen_key("rsa-1024")[1], "RSA key of 1024 bits is too small (at least 2048)"),
    (lambda: cf.gen_key("ecdsa-p521")[1], "ECDSA curve secp521r1 is not supported (P-256, P-384)"),
    (_cert_pem, "this is a certificate, not a public key"),
], ids=["garbage", "empty", "bad-base64", "private-key", "rsa-1024", "p521", "certificate"])
def test_load_public_key_refuses_with_a_reason(make_pem, reason):
    with pytest.raises(ValueError) as exc:
        load_public_key(make_pem())
    assert str(exc.value).startswith(reason), str(exc.value)


# ------------------------------------------------------------------------------------------------
# The check: table
# ------------------------------------------------------------------------------------------------


def _sig(kind="ecdsa-p256", n=0, *, digest=None, ref=REF, signed_payload=None):
    """A .sig image for subject_image(): its payload names `digest` (default: the subject's) and
    `ref`; the signature is over `signed_payload` (default: the payload itself)."""
    payload = cf.simple_signing_payload(digest or subject_image().digest, ref)
    return cf.sig_image([(payload, cf.sign(key(kind, n)[0], signed_payload or payload))])


def _bundle(kind="ecdsa-p256", n=0, *, digest=None, name=REF):
    return cf.bundle_referrer(subject_image(), key(kind, n)[0], digest=digest, name=name)


D = subject_image().digest
GENERIC = "no signature verifies with release (1 found: signed by another key, or over other bytes)"

CASES = [
    # id, signature images, keys (kind, n) by name, reference (match_reference), ok, reason
    *[(f"good-{k}", lambda k=k: [_sig(k)], {"release": (k, 0)}, None, True, "signed by release")
      for k in cf.KEY_KINDS],
    ("no-signature", lambda: [], {"release": ("ecdsa-p256", 0)}, None, False, "no signature found"),
    ("unsigned-image-layers", lambda: [subject_image()], {"release": ("ecdsa-p256", 0)}, None, False,
     "no signature found"),
    ("another-key", lambda: [_sig(n=1)], {"release": ("ecdsa-p256", 0)}, None, False, GENERIC),
    ("another-kind", lambda: [_sig("ed25519")], {"release": ("ecdsa-p256", 0)}, None, False, GENERIC),
    ("another-digest", lambda: [_sig(digest=OTHER)], {"release": ("ecdsa-p256", 0)}, None, False,
     f"signed by release, but the payload names another digest ({OTHER})"),
    ("over-other-bytes", lambda: [_sig(signed_payload=cf.simple_signing_payload(D, "other/ref"))],
     {"release": ("ecdsa-p256", 0)}, None, False, GENERIC),
    ("second-key-verifies", lambda: [_sig("rsa")], {"a-dev": ("ecdsa-p256", 0), "release": ("rsa", 0)}, None,
     True, "signed by release"),
    ("two-keys-none-verifies", lambda: [_sig(n=2)], {"b": ("ecdsa-p256", 0), "a": ("rsa", 0)}, None, False,
     "no signature verifies with a, b (1 found: signed by another key, or over other bytes)"),
    ("one-of-two-signatures", lambda: [_sig(n=1), _sig()], {"release": ("ecdsa-p256", 0)}, None, True,
     "signed by release"),
    ("bundle-good", lambda: [_bundle()], {"release": ("ecdsa-p256", 0)}, None, True, "signed by release"),
    ("bundle-good-ed25519", lambda: [_bundle("ed25519")], {"release": ("ed25519", 0)}, None, True,
     "signed by release"),
    ("bundle-another-digest", lambda: [_bundle(digest=OTHER)], {"release": ("ecdsa-p256", 0)}, None, False,
     f"signed by release, but the payload names another digest ({OTHER})"),
    ("bundle-another-key", lambda: [_bundle(n=1)], {"release": ("ecdsa-p256", 0)}, None, False, GENERIC),
    ("reference-good", lambda: [_sig(ref=REF)], {"release": ("ecdsa-p256", 0)}, REF + ":1.0", True,
     "signed by release"),
    ("reference-good-tag-in-payload", lambda: [_sig(ref=REF + ":1.0")], {"release": ("ecdsa-p256", 0)},
     REF + "@" + D, True, "signed by release"),
    ("reference-port", lambda: [_sig(ref="localhost:5000/a:1")], {"release": ("ecdsa-p256", 0)},
     "localhost:5000/a", True, "signed by release"),
    ("reference-bad", lambda: [_sig(ref="registry.example/test/other")], {"release": ("ecdsa-p256", 0)}, REF,
     False, f"signed by release for registry.example/test/other, not for {REF}"),
    ("reference-not-normalised", lambda: [_sig(ref="docker.io/library/alpine")], {"release": ("ecdsa-p256", 0)},
     "alpine:3", False, "signed by release for docker.io/library/alpine, not for alpine:3"),
    ("reference-case-sensitive", lambda: [_sig(ref="Registry.example/test/signed")],
     {"release": ("ecdsa-p256", 0)}, REF, False, f"signed by release for Registry.example/test/signed, not for {REF}"),
    ("reference-none-in-bundle", lambda: [_bundle(name=None)], {"release": ("ecdsa-p256", 0)}, REF, False,
     f"signed by release for no reference, not for {REF}"),
    ("bundle-reference-good", lambda: [_bundle()], {"release": ("ecdsa-p256", 0)}, REF + ":1.0", True,
     "signed by release"),
    ("other-digest-beats-reference", lambda: [_sig(ref="x/y"), _sig(digest=OTHER)], {"release": ("ecdsa-p256", 0)},
     REF, False, f"signed by release, but the payload names another digest ({OTHER})"),
    ("reference-beats-generic", lambda: [_sig(n=1), _sig(ref="x/y")], {"release": ("ecdsa-p256", 0)}, REF, False,
     f"signed by release for x/y, not for {REF}"),
]


@pytest.mark.parametrize("make, keys, reference, ok, reason", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_check_with_keys(make, keys, reference, ok, reason):
    images = make()
    found = cands(*images)
    verdict = check_with_keys(found, {name: pub(*k) for name, k in keys.items()}, D, reference)
    assert verdict.reason == reason
    assert verdict.ok is ok
    assert verdict.policy is None
    if ok:
        name = reason.removeprefix("signed by ")
        assert verdict.signer == name
        assert verdict.signature in {img.digest for img in images}
        good = next(c for c in found if c.source == verdict.signature)
        assert verdict.reference == subject(good)[1]
    else:
        assert verdict.signer is None and verdict.signature is None


def test_ok_verdict_names_the_carrier_and_reference():
    sig = _sig(ref=REF + ":1.0")
    v = check_with_keys(cands(sig), {"release": pub()}, D)
    assert v == Verdict(True, "signed by release", signer="release", signature=sig.digest, reference=REF + ":1.0")
    assert v.to_json()["signature"] == sig.digest


def test_a_signed_payload_that_is_not_an_image_signature():
    payload = b'{"critical":{"type":"atomic container signature","image":{"docker-manifest-digest":"%s"}}}' % D.encode()
    img = cf.sig_image([(payload, cf.sign(key()[0], payload))])
    v = check_with_keys(cands(img), {"release": pub()}, D)
    assert not v.ok and v.reason == "signed by release, but the payload is not a cosign image signature"


def test_no_keys_at_all():
    v = check_with_keys(cands(_sig()), {}, D)
    assert not v.ok and v.reason.startswith("no signature verifies with no key (1 found")


def test_repository():
    assert repository("a/b:1") == "a/b"
    assert repository("a/b@sha256:" + "1" * 64) == "a/b"
    assert repository("a/b:1@sha256:" + "1" * 64) == "a/b"
    assert repository("localhost:5000/a/b") == "localhost:5000/a/b"
    assert repository("localhost:5000/a/b:2") == "localhost:5000/a/b"
    assert repository("alpine") == "alpine"


# ------------------------------------------------------------------------------------------------
# candidates(): what a manifest carries
# ------------------------------------------------------------------------------------------------


def test_sig_candidates_carry_payload_signature_and_annotations():
    payload = cf.simple_signing_payload(D, REF)
    sig = cf.sign(key()[0], payload)
    set_ = b"set-bytes"
    ann = {t.ANN_CERTIFICATE: "-----BEGIN CERTIFICATE-----\nleaf\n-----END CERTIFICATE-----\n",
           t.ANN_CHAIN: "-----BEGIN CERTIFICATE-----\nca\n-----END CERTIFICATE-----\n",
           t.ANN_BUNDLE: cf.rekor_annotation(set_, "Ym9keQ==", 1700000000, 42, "c0d2" * 16)}
    img = cf.sig_image([(payload, sig)], ann)
    [c] = cands(img)
    assert c == Candidate(source=img.digest, kind="cosign", payload=payload, signature=sig, signed=payload,
                          certificate=ann[t.ANN_CERTIFICATE].encode(), chain=ann[t.ANN_CHAIN].encode(),
                          rekor=Rekor(set=set_, body="Ym9keQ==", integrated_time=1700000000, log_index=42,
                                      log_id="c0d2" * 16))
    assert subject(c) == (D, REF)


def test_sig_candidates_one_per_layer_and_malformed_layers_skipped():
    good = cf.simple_signing_payload(D, REF)
    other = cf.simple_signing_payload(OTHER, REF)
    img = cf.sig_image([(good, cf.sign(key()[0], good)), (other, b"sig2")],
                       [None, {t.ANN_BUNDLE: "{not json"}])
    found = cands(img)
    assert [subject(c)[0] for c in found] == [D, OTHER]
    assert found[1].rekor is None and found[1].signature == b"sig2"

    doc = json.loads(img.raw)
    layers = doc["layers"]
    bad = [
        {**layers[0], "annotations": {}},                                           # no signature
        {**layers[0], "annotations": {t.ANN_SIGNATURE: "not base64!"}},             # bad base64
        {**layers[0], "annotations": {t.ANN_SIGNATURE: ""}},                        # empty
        {**layers[0], "digest": "sha256:" + hashlib.sha256(b"x").hexdigest()},     # bytes do not match
        {**layers[0], "digest": 7},
        "not a descriptor",
        {**layers[0], "mediaType": g.OCI_LAYER_GZIP},                               # not a signature layer
    ]
    blobs = cf.blobs_of(img)
    blobs["sha256:" + hashlib.sha256(b"x").hexdigest()] = b"y"
    raw = json.dumps({**doc, "layers": [*bad, layers[1]]}).encode()
    [c] = candidates(raw, "sha256:src", blobs.__getitem__)
    assert c.signature == b"sig2" and c.source == "sha256:src"


def test_docker_schema2_sig_and_oci11_sig_referrer():
    payload = cf.simple_signing_payload(D, REF)
    sig = cf.sign(key()[0], payload)
    docker = cf.sig_image([(payload, sig)], media_type=g.DOCKER_MANIFEST)
    assert json.loads(docker.raw)["mediaType"] == g.DOCKER_MANIFEST
    # cosign's experimental OCI 1.1 referrer: empty config, artifactType, subject, same layers
    layer = json.loads(docker.raw)["layers"][0]
    referrer = json.dumps({"schemaVersion": 2, "mediaType": g.OCI_MANIFEST,
                           "artifactType": "application/vnd.dev.cosign.artifact.sig.v1+json",
                           "config": g.EMPTY_CONFIG.descriptor(), "layers": [layer],
                           "subject": subject_image().manifest.descriptor()}).encode()
    blobs = cf.blobs_of(docker)
    for raw in (docker.raw, referrer):
        [c] = candidates(raw, "sha256:src", blobs.__getitem__)
        assert (c.kind, c.payload, c.signature) == ("cosign", payload, sig)
        assert check_with_keys([c], {"k": pub()}, D).ok


@pytest.mark.parametrize("raw", [b"", b"not json", b"[]", b'{"layers": {}}', b'"x"',
                                 json.dumps({"schemaVersion": 2, "mediaType": g.OCI_INDEX, "manifests": []}).encode()])
def test_neither_layout_gives_nothing(raw):
    assert candidates(raw, "sha256:src", lambda d: pytest.fail("no blob should be read")) == []


def test_read_blob_errors_propagate():
    img = _sig()
    with pytest.raises(KeyError):
        candidates(img.raw, img.digest, {}.__getitem__)


def test_bundle_candidate_fields():
    priv = key()[0]
    ref = cf.bundle_referrer(subject_image(), priv)
    [c] = cands(ref)
    statement = cf.in_toto_statement(D, REF)
    assert c.kind == "bundle" and c.source == ref.digest
    assert c.payload == statement
    assert c.signed == b"DSSEv1 28 application/vnd.in-toto+json %d " % len(statement) + statement
    assert verify_signature(pub(), c.signed, c.signature)
    assert (c.certificate, c.chain, c.rekor) == (None, None, None)
    assert subject(c) == (D, REF)
    doc = json.loads(ref.raw)
    assert doc["artifactType"] == t.BUNDLE_V03 and doc["subject"]["digest"] == D
    assert doc["annotations"]["dev.sigstore.bundle.predicateType"] == t.COSIGN_SIGN_PREDICATE


def _der_cert(cn: str) -> bytes:
    from registries import _self_signed_cert
    return _self_signed_cert(cn)[1].public_bytes(serialization.Encoding.DER)


def test_bundle_certificate_chain_and_tlog_entry():
    leaf, ca = _der_cert("leaf"), _der_cert("ca")
    log_key = b"\x01" * 32
    entry = {"logIndex": "123", "logId": {"keyId": base64.b64encode(log_key).decode()},
             "kindVersion": {"kind": "dsse", "version": "0.0.1"}, "integratedTime": "1700000001",
             "inclusionPromise": {"signedEntryTimestamp": base64.b64encode(b"the-set").decode()},
             "canonicalizedBody": "eyJib2R5Ijp0cnVlfQ=="}
    statement = cf.in_toto_statement(D, REF)
    sig = cf.sign(key()[0], cf.pae(cf.IN_TOTO, statement))
    chain_bundle = cf.bundle_json(statement, sig, chain_der=[leaf, ca], tlog_entry=entry)
    [c] = cands(cf.bundle_image(subject_image(), chain_bundle))
    assert x509.load_pem_x509_certificate(c.certificate).public_bytes(serialization.Encoding.DER) == leaf
    assert len(x509.load_pem_x509_certificates(c.chain)) == 1
    assert c.rekor == Rekor(set=b"the-set", body="eyJib2R5Ijp0cnVlfQ==", integrated_time=1700000001, log_index=123,
                            log_id=log_key.hex())
    # a single certificate: no chain; no inclusion promise: no rekor
    no_promise = {k: v for k, v in entry.items() if k != "inclusionPromise"}
    [c] = cands(cf.bundle_image(subject_image(), cf.bundle_json(statement, sig, certificate_der=leaf,
                                                                 tlog_entry=no_promise)))
    assert c.certificate.startswith(b"-----BEGIN CERTIFICATE-----\n") and c.chain is None and c.rekor is None
    assert x509.load_pem_x509_certificate(c.certificate).subject.rfc4514_string() == "CN=leaf"


def _bundle_image_with(mutate) -> g.Image:
    statement = cf.in_toto_statement(D, REF)
    doc = json.loads(cf.bundle_json(statement, cf.sign(key()[0], cf.pae(cf.IN_TOTO, statement))))
    mutate(doc)
    return cf.bundle_image(subject_image(), json.dumps(doc).encode())


def test_bundle_variants():
    def two_sigs(doc):
        doc["dsseEnvelope"]["signatures"].append({"sig": base64.b64encode(b"second").decode(), "keyid": ""})
    assert [c.signature[:6] for c in cands(_bundle_image_with(two_sigs))][1] == b"second"

    def urlsafe_unpadded(doc):
        env = doc["dsseEnvelope"]
        env["payload"] = base64.urlsafe_b64encode(base64.b64decode(env["payload"])).decode().rstrip("=")
    [c] = cands(_bundle_image_with(urlsafe_unpadded))
    assert subject(c) == (D, REF) and check_with_keys([c], {"k": pub()}, D).ok


@pytest.mark.parametrize("mutate", [
    lambda d: d.pop("dsseEnvelope") and d.update(messageSignature={
        "messageDigest": {"algorithm": "SHA2_256", "digest": "AA=="}, "signature": "AA=="}),
    lambda d: d.update(mediaType="application/json"),
    lambda d: d["dsseEnvelope"].update(payload="%%%"),
    lambda d: d["dsseEnvelope"].update(signatures="nope"),
    lambda d: d["dsseEnvelope"].update(signatures=[{"sig": ""}, "x", {"keyid": ""}]),
    lambda d: d["dsseEnvelope"].pop("payloadType"),
], ids=["messageSignature", "media-type", "payload-base64", "signatures-not-list", "no-usable-sig", "no-type"])
def test_bundle_malformed_or_sign_blob_is_skipped(mutate):
    assert cands(_bundle_image_with(mutate)) == []


def test_bundle_not_json_is_skipped():
    assert cands(cf.bundle_image(subject_image(), b"{oops")) == []


@pytest.mark.parametrize("statement, want", [
    (cf.in_toto_statement(D, REF), (D, REF)),
    (cf.in_toto_statement(D), (D, None)),
    (cf.in_toto_statement(D, REF).replace(b"Statement/v1", b"Statement/v0.1"), (D, REF)),
    (cf.in_toto_statement(D, REF).replace(b"Statement/v1", b"Statement/v2"), (None, None)),
    (cf.in_toto_statement(D, REF, predicate_type="https://slsa.dev/provenance/v1"), (None, None)),
    (cf.in_toto_statement(D, REF).replace(D.split(":")[1].encode(), b"abc"), (None, None)),
    (b'{"_type":"https://in-toto.io/Statement/v1","subject":[],"predicateType":"%s"}'
     % t.COSIGN_SIGN_PREDICATE.encode(), (None, None)),
    (b"not json", (None, None)),
], ids=["v1", "no-name", "v0.1", "v2", "other-predicate", "bad-hex", "no-subject", "not-json"])
def test_subject_of_a_bundle(statement, want):
    assert subject(Candidate("sha256:s", "bundle", statement, b"", b"")) == want


@pytest.mark.parametrize("payload, want", [
    (cf.simple_signing_payload(D, REF), (D, REF)),
    (json.dumps({"critical": {"type": t.COSIGN_SIGN_PREDICATE, "image": {"docker-manifest-digest": D}}}).encode(),
     (D, None)),
    (json.dumps({"critical": {"type": "other", "image": {"docker-manifest-digest": D}}}).encode(), (None, None)),
    (json.dumps({"critical": {"type": t.SIMPLESIGNING_TYPE, "image": {}}}).encode(), (None, None)),
    (json.dumps({"critical": "x"}).encode(), (None, None)),
    (b"[1]", (None, None)),
])
def test_subject_of_simple_signing(payload, want):
    assert subject(Candidate("sha256:s", "cosign", payload, b"", b"")) == want
    assert subject(Candidate("sha256:s", "other-kind", payload, b"", b"")) == (None, None)


# ------------------------------------------------------------------------------------------------
# Against a real registry
# ------------------------------------------------------------------------------------------------


def _get(host: str, path: str, accept: str | None = None) -> bytes:
    req = urllib.request.Request(f"http://{host}/v2/{path}")
    if accept:
        req.add_header("Accept", accept)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(req, timeout=30) as resp:
        return resp.read()


def test_signatures_read_back_from_a_registry(registry):
    repo = "test/cosigned"
    image = g.make_image([g.make_layer("cosign-registry", 1024)], labels={"name": "cosigned"})
    g.push(image, registry.host, repo, "1.0")
    ref = f"{registry.host}/{repo}"
    sig = cf.sign_image(image.digest, ref, key()[0])
    g.push_raw(sig, registry.host, repo, g.cosign_tag(image.digest))
    bundle = cf.bundle_referrer(image, key("ed25519")[0], name=ref)
    hdrs = g.push_raw(bundle, registry.host, repo)
    assert hdrs["docker-content-digest"] == bundle.digest

    def read_blob(digest: str) -> bytes:
        data = _get(registry.host, f"{repo}/blobs/{digest}")
        assert g.sha256_digest(data) == digest
        return data

    raw_sig = _get(registry.host, f"{repo}/manifests/{g.cosign_tag(image.digest)}", g.ACCEPT_ALL)
    assert raw_sig == sig.raw
    raw_bundle = _get(registry.host, f"{repo}/manifests/{bundle.digest}", g.ACCEPT_ALL)
    found = (candidates(raw_sig, g.sha256_digest(raw_sig), read_blob)
             + candidates(raw_bundle, g.sha256_digest(raw_bundle), read_blob))
    assert [c.kind for c in found] == ["cosign", "bundle"]

    keys = {"release": pub()}
    v = check_with_keys(found, keys, image.digest, f"{ref}:1.0")
    assert v == Verdict(True, "signed by release", signer="release", signature=sig.digest, reference=ref)
    v = check_with_keys(found, {"edkey": pub("ed25519")}, image.digest, ref)
    assert v == Verdict(True, "signed by edkey", signer="edkey", signature=bundle.digest, reference=ref)
    # the same signatures do not vouch for another image, nor for another key
    assert check_with_keys(found, keys, OTHER).reason.startswith("signed by release, but the payload names")
    assert check_with_keys(found, {"x": pub(n=1)}, image.digest).reason == (
        "no signature verifies with x (2 found: signed by another key, or over other bytes)")
