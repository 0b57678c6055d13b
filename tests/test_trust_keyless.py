"""mirror.trust.keyless: Sigstore keyless signatures checked offline against a trusted root, with a
fake Sigstore of the tests' own making (tests/sigstorefake.py)."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
import sigstorefake as sf
from cryptography.hazmat.primitives.asymmetric import ec

from mirror.trust import keyless
from mirror.trust.cosign import candidates
from mirror.trust.keyless import check_keyless, load_trusted_root
from mirror.trust.types import ANN_SIGNATURE, BUNDLE_V03, SIMPLESIGNING

OTHER_DIGEST = "sha256:" + hashlib.sha256(b"another image").hexdigest()
ID_WORKFLOW = r"^https://github\.com/example/app/\.github/workflows/release\.yml@refs/heads/main$"
ID_EMAIL = r"^releaser@example\.org$"


@dataclasses.dataclass
class World:
    fulcio: sf.Fulcio
    rekor: sf.Rekor
    root: keyless.TrustedRoot

    def sign(self, payload=None, **kw) -> sf.KeylessSignature:
        return sf.sign_keyless(self.fulcio, self.rekor, payload, **kw)


def world(*, intermediate: bool = False, fulcio: sf.Fulcio | None = None,
          rekor: sf.Rekor | None = None) -> World:
    fulcio = fulcio or sf.Fulcio(intermediate=intermediate)
    rekor = rekor or sf.Rekor()
    return World(fulcio, rekor, load_trusted_root(sf.trusted_root_json([fulcio], [rekor])))


def check(w: World, cands, *, issuer=sf.GITHUB, identity=ID_WORKFLOW, digest=sf.IMAGE, reference=None,
          now=None):
    return check_keyless(cands, w.root, issuer, identity, digest, reference, now=now)


# ------------------------------------------------------------------------------------------------
# Accepted
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("intermediate", [False, True], ids=["root-issued", "intermediate"])
@pytest.mark.parametrize("kind", ["cosign", "bundle"])
@pytest.mark.parametrize("who", [
    # (certificate identity, signer's issuer, identity pattern given, what the verdict names)
    (dict(uri=sf.WORKFLOW), sf.GITHUB, ID_WORKFLOW, sf.WORKFLOW),
    (dict(uri=None, email=sf.EMAIL), sf.GOOGLE, ID_EMAIL, sf.EMAIL),
    (dict(uri=None, username="releaser"), "https://oidc.example", "^releaser$", "releaser"),
    # searched, not anchored: as cosign's --certificate-identity-regexp (Go's MatchString)
    (dict(uri=sf.WORKFLOW), sf.GITHUB, r"github\.com/example/app/", sf.WORKFLOW),
], ids=["uri", "email", "username", "unanchored"])
def test_good(intermediate, kind, who):
    san, issuer, pattern, named = who
    w = world(intermediate=intermediate)
    c = w.sign(kind=kind, issuer=issuer, **san).candidate(source="sha256:" + "a" * 64)
    v = check(w, [c], issuer=issuer, identity=pattern, reference=sf.REPOSITORY + ":v1")
    assert v.ok, v.reason
    assert v.reason == f"signed by {named} ({issuer})"
    assert v.signer == f"{named} ({issuer})"
    assert v.signature == "sha256:" + "a" * 64
    assert v.reference == sf.REPOSITORY
    assert v.policy is None


def test_good_among_bad_ones_and_the_chain_annotation_is_not_needed():
    w = world(intermediate=True)
    bad = w.sign(uri="https://github.com/someone/else").candidate()
    good = w.sign(carry_chain=False).candidate(source="sha256:" + "b" * 64)
    v = check(w, [bad, good])
    assert v.ok and v.signature == "sha256:" + "b" * 64


def test_v1_issuer_extension_alone_and_v2_preferred():
    w = world()
    old = w.sign(issuer=None, issuer_v1=sf.GITHUB).candidate()      # from before the v2 extensions
    assert check(w, [old]).ok
    both = w.sign(issuer=sf.GITHUB, issuer_v1="https://v1.example").candidate()
    assert check(w, [both]).ok
    v = check(w, [both], issuer="https://v1.example")
    assert v.reason == f"certificate issuer {sf.GITHUB} is not https://v1.example"


def test_through_cosign_candidates_annotation_and_bundle_forms():
    """The signatures as cosign writes them (a .sig layer's annotations; a bundle v0.3 referrer), read by
    mirror.trust.cosign.candidates, verify."""
    w = world(intermediate=True)
    blobs: dict[str, bytes] = {}

    def layer(media_type, data, annotations=None):
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        blobs[digest] = data
        d = {"mediaType": media_type, "size": len(data), "digest": digest}
        return d | ({"annotations": annotations} if annotations else {})

    s = w.sign()
    sig_manifest = json.dumps({"schemaVersion": 2, "layers": [
        layer(SIMPLESIGNING, s.payload, {ANN_SIGNATURE: sf.b64(s.signature), **s.annotations()})]}).encode()
    b = w.sign(kind="bundle")
    bundle_manifest = json.dumps({"schemaVersion": 2, "layers": [layer(BUNDLE_V03, b.bundle())]}).encode()

    for manifest, kind in ((sig_manifest, "cosign"), (bundle_manifest, "bundle")):
        cands = candidates(manifest, "sha256:" + "c" * 64, blobs.__getitem__)
        assert [c.kind for c in cands] == [kind]
        assert cands[0].rekor is not None
        v = check(w, cands, reference=sf.REPOSITORY)
        assert v.ok, v.reason
        assert v.signature == "sha256:" + "c" * 64


# ------------------------------------------------------------------------------------------------
# Refused: one row per way a keyless signature can fail, the reason checked
# ------------------------------------------------------------------------------------------------


def _other_signature(w: World):
    return sf.sign_keyless(w.fulcio, None).signature


def _replace_rekor(s: sf.KeylessSignature, **changes):
    return s.candidate(rekor=dataclasses.replace(s.rekor, **changes))


def _no_cands(w):
    return dict(cands=[])


def _no_certificate(w):
    return dict(cands=[w.sign().candidate(certificate=None, chain=None)])


def _unreadable_certificate(w):
    broken = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    return dict(cands=[w.sign().candidate(certificate=broken)])


def _another_ca(w):
    # the same names as the trusted CA: only its key tells it apart
    other = sf.Fulcio(name=w.fulcio.name)
    return dict(cands=[sf.sign_keyless(other, w.rekor).candidate()])


def _intermediate_not_in_root(w):
    # the CA's intermediate, carried by the signature (chain annotation); the trusted root lists the root only
    f = sf.Fulcio(intermediate=True)
    root = load_trusted_root(sf.trusted_root_json([SimpleNamespace(name=f.name, chain=[f.root],
                                                                   valid_for=f.valid_for)], [w.rekor]))
    return dict(cands=[sf.sign_keyless(f, w.rekor).candidate()], root=root)


def _intermediate_not_signed_by_the_root(w):
    # a trusted root whose chain pairs one CA's intermediate with another CA's root: the whole chain is
    # verified up to the root (the last certificate), the intermediate is not trusted for being listed
    a, b = sf.Fulcio(intermediate=True), sf.Fulcio(intermediate=True)
    mixed = SimpleNamespace(name=a.name, chain=[a.intermediate, b.root], valid_for=a.valid_for)
    root = load_trusted_root(sf.trusted_root_json([mixed], [w.rekor]))
    return dict(cands=[sf.sign_keyless(a, w.rekor).candidate()], root=root)


def _not_code_signing(w):
    return dict(cands=[w.sign(code_signing=False).candidate()])


def _no_san(w):
    return dict(cands=[w.sign(uri=None).candidate()])


def _wrong_identity(w):
    return dict(cands=[w.sign(uri="https://github.com/example/app/.github/workflows/evil.yml@refs/heads/main")
                       .candidate()])


def _wrong_issuer(w):
    return dict(cands=[w.sign(issuer=sf.GOOGLE).candidate()])


def _no_issuer(w):
    return dict(cands=[w.sign(issuer=None).candidate()])


def _bad_signature(w):
    return dict(cands=[w.sign().candidate(signature=_other_signature(w))])


def _other_digest(w):
    return dict(cands=[w.sign(sf.simple_signing(OTHER_DIGEST)).candidate()])


def _other_digest_bundle(w):
    return dict(cands=[w.sign(sf.statement(OTHER_DIGEST), kind="bundle").candidate()])


def _not_an_image_signature(w):
    return dict(cands=[w.sign(b'{"hello": "world"}').candidate()])


def _other_repository(w):
    return dict(cands=[w.sign().candidate()], reference="registry.example/team/other:1.0")


def _no_set(w):
    return dict(cands=[sf.sign_keyless(w.fulcio, None).candidate()])


def _set_by_unknown_log(w):
    return dict(cands=[sf.sign_keyless(w.fulcio, sf.Rekor()).candidate()])


def _set_forged_under_trusted_log_id(w):
    s = w.sign()
    forged = sf.Rekor().log(s.rekor.body, s.rekor.integrated_time, log_index=s.rekor.log_index,
                            log_id=w.rekor.log_id)
    return dict(cands=[s.candidate(rekor=forged)])


def _set_over_tampered_body(w):
    s = w.sign()
    other = sf.hashedrekord_body(_other_signature(w), s.signed, s.cert_pem)
    return dict(cands=[_replace_rekor(s, body=other)])


def _set_over_tampered_time(w):
    s = w.sign()
    return dict(cands=[_replace_rekor(s, integrated_time=s.rekor.integrated_time + 1)])


def _set_over_tampered_index(w):
    s = w.sign()
    return dict(cands=[_replace_rekor(s, log_index=s.rekor.log_index + 1)])


def _log_key_retired(w):
    old = sf.Rekor(valid_for=(sf.T0 - timedelta(days=365), sf.T0 - timedelta(days=1)))
    root = load_trusted_root(sf.trusted_root_json([w.fulcio], [old]))
    return dict(cands=[sf.sign_keyless(w.fulcio, old).candidate()], root=root)


def _body_names_another_signature(w):
    other = _other_signature(w)
    return dict(cands=[w.sign(body=lambda sig, signed, payload, cert:
                              sf.hashedrekord_body(other, signed, cert)).candidate()])


def _body_names_another_certificate(w):
    other = sf.pem(w.fulcio.issue(ec.generate_private_key(ec.SECP256R1()).public_key(), uri=sf.WORKFLOW))
    return dict(cands=[w.sign(body=lambda sig, signed, payload, cert:
                              sf.hashedrekord_body(sig, signed, other)).candidate()])


def _body_names_other_bytes(w):
    return dict(cands=[w.sign(body=lambda sig, signed, payload, cert:
                              sf.hashedrekord_body(sig, b"other", cert)).candidate()])


def _dsse_body_names_another_signature(w):
    other = _other_signature(w)
    return dict(cands=[w.sign(kind="bundle", body=lambda sig, signed, payload, cert:
                              sf.dsse_body(other, payload, cert, b"{}")).candidate()])


def _dsse_body_names_another_certificate(w):
    other = sf.pem(w.fulcio.issue(ec.generate_private_key(ec.SECP256R1()).public_key(), uri=sf.WORKFLOW))
    return dict(cands=[w.sign(kind="bundle", body=lambda sig, signed, payload, cert:
                              sf.dsse_body(sig, payload, other, b"{}")).candidate()])


def _dsse_body_names_another_payload(w):
    return dict(cands=[w.sign(kind="bundle", body=lambda sig, signed, payload, cert:
                              sf.dsse_body(sig, b"other", cert, b"{}")).candidate()])


def _intoto_body(w):
    body = sf.b64(json.dumps({"apiVersion": "0.0.2", "kind": "intoto", "spec": {}}).encode())
    return dict(cands=[w.sign(body=lambda *a: body).candidate()])


def _body_not_json(w):
    return dict(cands=[w.sign(body=lambda *a: sf.b64(b"not json")).candidate()])


def _logged_after_expiry(w):
    return dict(cands=[w.sign(logged_after=timedelta(minutes=10, seconds=1)).candidate()])


def _logged_before_issue(w):
    return dict(cands=[w.sign(logged_after=timedelta(seconds=-1)).candidate()])


def _ca_retired(w):
    f = sf.Fulcio(valid_for=(sf.T0 - timedelta(days=365), sf.T0 - timedelta(days=1)))
    root = load_trusted_root(sf.trusted_root_json([f], [w.rekor]))
    return dict(cands=[sf.sign_keyless(f, w.rekor).candidate()], root=root)


def _intermediate_expired_meanwhile(w):
    # the intermediate expires 5 minutes into the leaf's 10: issued fine, logged after it expired
    f = sf.Fulcio(intermediate=True, not_after=sf.T0 + timedelta(minutes=5))
    root = load_trusted_root(sf.trusted_root_json([f], [w.rekor]))
    return dict(cands=[sf.sign_keyless(f, w.rekor, logged_after=timedelta(minutes=6)).candidate()], root=root)


def _logged_in_the_future(w):
    return dict(cands=[w.sign().candidate()], now=sf.T0 - timedelta(days=2))


def _bad_regexp(w):
    return dict(cands=[w.sign().candidate()], identity="([")


def _most_specific_wins(w):
    # each fails at a different step; the one that got furthest (signed outside validity) gives the reason
    return dict(cands=[w.sign().candidate(certificate=None),
                       w.sign(logged_after=timedelta(minutes=30)).candidate(),
                       w.sign(issuer=sf.GOOGLE).candidate(),
                       sf.sign_keyless(w.fulcio, None).candidate()])


NOT_FULCIO = "certificate not issued by the trusted root's Fulcio CA"
NOT_LOG_KEY = "transparency-log entry not signed by the trusted root's log key"
MISMATCH = "log entry does not match this signature"
OUTSIDE = "signed outside the certificate's validity"

REFUSED = [
    # (builder, reason: exact, or a prefix when it ends with "…", then the parts that must follow)
    (_no_cands, "no signature found"),
    (_no_certificate, "no signature carries a certificate (keyless needs one)"),
    (_unreadable_certificate, f"{NOT_FULCIO} (the certificate it carries cannot be read)"),
    (_another_ca, f"{NOT_FULCIO} (issued by CN=fake-fulcio,O=fake-sigstore.test…"),
    (_intermediate_not_in_root, f"{NOT_FULCIO} (issued by CN=fake-fulcio-intermediate,…"),
    (_intermediate_not_signed_by_the_root, f"{NOT_FULCIO} (issued by CN=fake-fulcio-intermediate,…"),
    (_not_code_signing, f"{NOT_FULCIO} (issued by CN=fake-fulcio,O=fake-sigstore.test: "
                        "not a code-signing certificate (no extended key usage codeSigning))"),
    (_no_san, f"{NOT_FULCIO} (issued by CN=fake-fulcio,O=fake-sigstore.test: "
              "invalid extension: subjectAltName: Certificate is missing required extension)"),
    (_wrong_identity, "certificate identity https://github.com/example/app/.github/workflows/evil.yml"
                      f"@refs/heads/main does not match {ID_WORKFLOW}"),
    (_wrong_issuer, f"certificate issuer {sf.GOOGLE} is not {sf.GITHUB}"),
    (_no_issuer, f"certificate issuer (none) is not {sf.GITHUB}"),
    (_bad_signature, "signature does not verify with its certificate"),
    (_other_digest, f"payload names another digest ({OTHER_DIGEST})"),
    (_other_digest_bundle, f"payload names another digest ({OTHER_DIGEST})"),
    (_not_an_image_signature, "payload is not a cosign image signature"),
    (_other_repository, f"signed for {sf.REPOSITORY}, not for registry.example/team/other:1.0"),
    (_no_set, "no transparency-log entry (keyless needs Rekor's signed entry timestamp)"),
    (_set_by_unknown_log, f"{NOT_LOG_KEY} (log …is not in the trusted root)"),
    (_set_forged_under_trusted_log_id, NOT_LOG_KEY),
    (_set_over_tampered_body, NOT_LOG_KEY),
    (_set_over_tampered_time, NOT_LOG_KEY),
    (_set_over_tampered_index, NOT_LOG_KEY),
    (_log_key_retired, f"{NOT_LOG_KEY} (its key is valid from 2024-03-01T12:00:00Z to 2025-02-28T12:00:00Z, "
                       "the entry is of 2025-03-01T12:00:20Z)"),
    (_body_names_another_signature, f"{MISMATCH} (the entry records another signature)"),
    (_body_names_another_certificate, f"{MISMATCH} (the entry records another certificate)"),
    (_body_names_other_bytes, f"{MISMATCH} (the entry records the hash of other bytes)"),
    (_dsse_body_names_another_signature, f"{MISMATCH} (the entry records another signature)"),
    (_dsse_body_names_another_certificate, f"{MISMATCH} (the entry records another certificate)"),
    (_dsse_body_names_another_payload, f"{MISMATCH} (the entry records the hash of another payload)"),
    (_intoto_body, f"{MISMATCH} (entry kind 'intoto' is not accepted (hashedrekord or dsse))"),
    (_body_not_json, f"{MISMATCH} (its body is not base64 JSON)"),
    (_logged_after_expiry, f"{OUTSIDE} (logged at 2025-03-01T12:10:01Z; the certificate is valid "
                           "from 2025-03-01T12:00:00Z to 2025-03-01T12:10:00Z)"),
    (_logged_before_issue, f"{OUTSIDE} (logged at 2025-03-01T11:59:59Z; …"),
    (_ca_retired, f"{OUTSIDE} (logged at 2025-03-01T12:00:20Z; the trusted root's Fulcio CA "
                  "CN=fake-fulcio,O=fake-sigstore.test is valid from 2024-03-01T12:00:00Z "
                  "to 2025-02-28T12:00:00Z)"),
    (_intermediate_expired_meanwhile, f"{OUTSIDE} (logged at 2025-03-01T12:06:00Z: its issuing CA "
                                      "certificate was not valid then)"),
    (_logged_in_the_future, "log entry dated 2025-03-01T12:00:20Z, in the future (this machine's clock "
                            "says 2025-02-27T12:00:00Z)"),
    (_bad_regexp, "identity '([' is not a valid regular expression (…"),
    (_most_specific_wins, f"{OUTSIDE} (logged at 2025-03-01T12:30:00Z; …"),
]


@pytest.mark.parametrize("builder, reason", REFUSED, ids=[b.__name__.strip("_") for b, _ in REFUSED])
def test_refused(builder, reason):
    w = world()
    args = builder(w)
    root = args.pop("root", None)
    if root is not None:
        w = dataclasses.replace(w, root=root)
    cands = args.pop("cands")
    v = check(w, cands, **args)
    assert not v.ok
    assert (v.signer, v.signature, v.reference, v.policy) == (None, None, None, None)
    if "…" in reason:
        parts = reason.split("…")
        assert v.reason.startswith(parts[0]), v.reason
        pos = len(parts[0])
        for part in parts[1:]:
            found = v.reason.find(part, pos)
            assert found >= 0, (part, v.reason)
            pos = found + len(part)
    else:
        assert v.reason == reason


def test_order_of_candidates_does_not_change_the_reason():
    w = world()
    cands = [w.sign(issuer=sf.GOOGLE).candidate(), sf.sign_keyless(w.fulcio, None).candidate(),
             w.sign().candidate(certificate=None)]
    reasons = {check(w, order).reason for order in (cands, cands[::-1], cands[1:] + cands[:1])}
    assert reasons == {"no transparency-log entry (keyless needs Rekor's signed entry timestamp)"}


def test_the_set_is_over_rekors_canonical_json():
    w = world()
    r = w.sign().rekor
    assert keyless.canonical_entry(r) == (
        f'{{"body":"{r.body}","integratedTime":{r.integrated_time},"logID":"{r.log_id}",'
        f'"logIndex":{r.log_index}}}').encode()


# ------------------------------------------------------------------------------------------------
# The trusted root
# ------------------------------------------------------------------------------------------------


def test_load_trusted_root():
    f1, f2 = sf.Fulcio(intermediate=True), sf.Fulcio(name="second", valid_for=None)
    r1, r2 = sf.Rekor(), sf.Rekor(valid_for=(sf.T0, sf.T0 + timedelta(days=1, microseconds=999000)))
    root = load_trusted_root(sf.trusted_root_json([f1, f2], [r1, r2]))
    assert [ca.chain for ca in root.certificate_authorities] == [(f1.intermediate, f1.root), (f2.root,)]
    assert root.certificate_authorities[0].valid_from == sf.T0 - timedelta(days=365)
    assert root.certificate_authorities[0].valid_until is None
    assert root.certificate_authorities[1].valid_from is None
    assert [t.log_id for t in root.tlogs] == [r1.log_id, r2.log_id]
    assert root.tlogs[1].valid_until == sf.T0 + timedelta(days=1, microseconds=999000)
    assert root.tlog(r2.log_id.upper()) is root.tlogs[1]
    assert root.tlog("00" * 32) is None


def test_load_trusted_root_tolerates_proto_names_nanoseconds_and_unused_sections():
    f, r = sf.Fulcio(), sf.Rekor()
    doc = json.loads(sf.trusted_root_json([f], [r]))
    tlog = doc["tlogs"][0]
    doc["tlogs"] = [{"base_url": tlog["baseUrl"],
                     "public_key": {"raw_bytes": tlog["publicKey"]["rawBytes"],
                                    "valid_for": {"start": "2021-01-12T11:53:27.123456789Z"}},
                     "log_id": {"key_id": tlog["logId"]["keyId"].rstrip("=")}}]
    doc["ctlogs"] = [{"whatever": True}]
    doc["timestampAuthorities"] = [{"certChain": "not even looked at"}]
    doc["certificateAuthorities"][0]["validFor"] = {"start": "2021-03-07T03:20:29Z",
                                                    "end": "2022-12-31T23:59:59.999Z"}
    root = load_trusted_root(json.dumps(doc).encode())
    assert root.tlogs[0].log_id == r.log_id
    assert root.tlogs[0].valid_from == datetime(2021, 1, 12, 11, 53, 27, 123456, tzinfo=UTC)
    assert root.certificate_authorities[0].valid_until == datetime(2022, 12, 31, 23, 59, 59, 999000,
                                                                   tzinfo=UTC)


def test_log_id_defaults_to_the_keys_sha256():
    r = sf.Rekor()
    doc = json.loads(sf.trusted_root_json([sf.Fulcio()], [r]))
    del doc["tlogs"][0]["logId"]
    assert load_trusted_root(json.dumps(doc).encode()).tlogs[0].log_id == r.log_id


def _root_doc() -> dict:
    return json.loads(sf.trusted_root_json([sf.Fulcio()], [sf.Rekor()]))


def _edit(fn) -> bytes:
    doc = _root_doc()
    fn(doc)
    return json.dumps(doc).encode()


GARBAGE = [
    (b"not json at all", "not a Sigstore trusted root: not JSON"),
    (b"\xff\xfe", "not a Sigstore trusted root: not JSON"),
    (b"[1, 2]", "not a Sigstore trusted root: a JSON list, not an object"),
    (b"{}", "not a Sigstore trusted root (no mediaType, certificateAuthorities or tlogs)"),
    (b'{"signed": {"_type": "root"}, "signatures": []}',
     "this is TUF metadata (root.json), not a Sigstore trusted root"),
    (b'{"mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json"}',
     "not a Sigstore trusted root (mediaType 'application/vnd.dev.sigstore.bundle.v0.3+json')"),
    (b"-----BEGIN PUBLIC KEY-----\nMFkw\n-----END PUBLIC KEY-----\n",
     "not a Sigstore trusted root: not JSON"),
    (_edit(lambda d: d.pop("certificateAuthorities")),
     "the trusted root has no certificateAuthorities (Fulcio CAs)"),
    (_edit(lambda d: d.update(tlogs=[])), "the trusted root has no usable tlogs (Rekor log keys)"),
    (_edit(lambda d: d.update(tlogs={})), "trusted root: tlogs is not a list"),
    (_edit(lambda d: d["certificateAuthorities"][0].pop("certChain")),
     "trusted root: certificateAuthorities[0].certChain is missing"),
    (_edit(lambda d: d["certificateAuthorities"][0]["certChain"].update(certificates=[])),
     "trusted root: certificateAuthorities[0].certChain.certificates is empty"),
    (_edit(lambda d: d["certificateAuthorities"][0]["certChain"]["certificates"][0]
           .update(rawBytes="*not base64*")),
     "trusted root: certificateAuthorities[0].certChain.certificates[0].rawBytes is not base64"),
    (_edit(lambda d: d["certificateAuthorities"][0]["certChain"]["certificates"][0].update(rawBytes="AAAA")),
     "trusted root: certificateAuthorities[0].certChain.certificates[0].rawBytes is not a DER certificate"),
    (_edit(lambda d: d["certificateAuthorities"][0].update(validFor={"start": "yesterday"})),
     "trusted root: certificateAuthorities[0].validFor.start is not an RFC 3339 time ('yesterday')"),
    (_edit(lambda d: d["tlogs"][0]["publicKey"].update(rawBytes=sf.b64(b"not a key"))),
     "trusted root: tlogs[0].publicKey.rawBytes is not a DER public key"),
    (_edit(lambda d: d["tlogs"][0].pop("publicKey")), "trusted root: tlogs[0].publicKey is missing"),
    (_edit(lambda d: d["tlogs"][0]["logId"].update(keyId=7)),
     "trusted root: tlogs[0].logId.keyId is not a base64 string"),
]


@pytest.mark.parametrize("raw, message", GARBAGE, ids=[f"{i}-{m[:40]}" for i, (_, m) in enumerate(GARBAGE)])
def test_trusted_root_garbage(raw, message):
    with pytest.raises(ValueError) as exc:
        load_trusted_root(raw)
    assert str(exc.value).startswith(message), str(exc.value)


def test_garbage_says_what_to_give():
    with pytest.raises(ValueError, match=r"give Sigstore's trusted_root\.json .*cosign trusted-root create"):
        load_trusted_root(b"nope")


def test_a_log_key_of_another_kind_is_left_out():
    """A log key keyDetails names as a kind this module does not know (a future algorithm) and cryptography
    cannot load is left out; the same bytes said to be ECDSA are an error."""
    doc = _root_doc()
    spki = base64.b64decode(doc["tlogs"][0]["publicKey"]["rawBytes"])
    # the algorithm OID no longer id-ecPublicKey
    unknown = spki.replace(bytes.fromhex("2a8648ce3d0201"), bytes.fromhex("2a8648ce3d0299"), 1)
    doc["tlogs"].insert(0, {"publicKey": {"rawBytes": sf.b64(unknown), "keyDetails": "ML_DSA_65"},
                            "logId": {"keyId": sf.b64(b"x" * 32)}})
    root = load_trusted_root(json.dumps(doc).encode())
    assert len(root.tlogs) == 1 and root.tlogs[0].log_id == hashlib.sha256(spki).hexdigest()
    doc["tlogs"][0]["publicKey"]["keyDetails"] = "PKIX_ECDSA_P256_SHA_256"
    with pytest.raises(ValueError, match=r"^trusted root: tlogs\[0\]\.publicKey\.rawBytes is not a DER "):
        load_trusted_root(json.dumps(doc).encode())
