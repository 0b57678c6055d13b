"""Test-only: a fake Sigstore of the tests' own making, everything generated locally (no Sigstore service,
no TUF, no network).

- :class:`Fulcio` - a Fulcio-like CA: a self-signed root (ECDSA P-384) and, if asked, an intermediate
  (as sigstore.dev's: CA, pathlen 0, EKU codeSigning), issuing ten-minute code-signing leaf certificates
  as Fulcio does: empty subject, a critical SAN (URI, email or Fulcio's OtherName username), key usage
  digitalSignature, EKU codeSigning, the OIDC issuer both as 1.3.6.1.4.1.57264.1.8 (DER UTF8String) and
  1.3.6.1.4.1.57264.1.1 (raw bytes).
- :class:`Rekor` - a Rekor-like log: an ECDSA P-256 key (logID = sha256 of its DER public key) issuing
  SignedEntryTimestamps over hashedrekord / dsse entry bodies written as Rekor writes them.
- :func:`trusted_root_json` - Sigstore's trusted_root.json (protojson: lowerCamelCase, bytes in base64,
  times RFC 3339) over such CAs and logs.
- :func:`sign_keyless` - a keyless signature of a payload by an ephemeral key: the signature, the leaf
  certificate, the log entry; :class:`KeylessSignature` gives it as a :class:`Candidate`, as cosign's
  layer annotations (certificate, chain, bundle) or as a Sigstore bundle v0.3 (tlogEntries).
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mirror.trust.types import BUNDLE_V03, Candidate, Rekor as RekorEntry

#: When the fake signs unless told otherwise (a fixed past time: results do not depend on the clock).
T0 = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
GITHUB = "https://token.actions.githubusercontent.com"
GOOGLE = "https://accounts.google.com"
WORKFLOW = "https://github.com/example/app/.github/workflows/release.yml@refs/heads/main"
EMAIL = "releaser@example.org"
IMAGE = "sha256:" + hashlib.sha256(b"the signed image").hexdigest()
REPOSITORY = "registry.example/team/app"
IN_TOTO = "application/vnd.in-toto+json"
COSIGN_SIGN_PREDICATE = "https://sigstore.dev/cosign/sign/v1"

#: a validFor range: (start, end), either None for open
Span = tuple[datetime | None, datetime | None]

OID_ISSUER_V1 = x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.1")
OID_ISSUER_V2 = x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.8")
OID_USERNAME = x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.7")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def der_utf8(text: str) -> bytes:
    """A DER UTF8String (tag 12), short or long length form."""
    data = text.encode()
    n = len(data)
    if n < 0x80:
        return bytes([0x0C, n]) + data
    length = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x0C, 0x80 | len(length)]) + length + data


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def rfc3339(t: datetime) -> str:
    """As protojson writes a Timestamp: UTC, 'Z', fractional seconds only when there are some."""
    t = t.astimezone(UTC)
    frac = f".{t.microsecond:06d}".rstrip("0") if t.microsecond else ""
    return t.strftime("%Y-%m-%dT%H:%M:%S") + frac + "Z"


# ------------------------------------------------------------------------------------------------
# Fulcio
# ------------------------------------------------------------------------------------------------


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fake-sigstore.test"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


_CA_KEY_USAGE = x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                              data_encipherment=False, key_agreement=False, key_cert_sign=True,
                              crl_sign=True, encipher_only=False, decipher_only=False)
_LEAF_KEY_USAGE = x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                crl_sign=False, encipher_only=False, decipher_only=False)


class Fulcio:
    """A Fulcio-like CA. `valid_for`: the CA's validFor in the trusted root (None: left out)."""

    def __init__(self, name: str = "fake-fulcio", *, intermediate: bool = False,
                 not_before: datetime = T0 - timedelta(days=365),
                 not_after: datetime = T0 + timedelta(days=3650),
                 valid_for: Span | None = (T0 - timedelta(days=365), None)):
        self.name = name
        self.valid_for = valid_for
        self.root_key = ec.generate_private_key(ec.SECP384R1())
        self.root = self._ca(_name(name), self.root_key, _name(name), self.root_key, 1, not_before, not_after)
        self.intermediate: x509.Certificate | None = None
        self.key, self.cert = self.root_key, self.root          # who issues the leaves
        if intermediate:
            key = ec.generate_private_key(ec.SECP384R1())
            self.intermediate = self._ca(_name(name + "-intermediate"), key, _name(name), self.root_key, 0,
                                         not_before, not_after, eku=True)
            self.key, self.cert = key, self.intermediate

    @staticmethod
    def _ca(subject: x509.Name, key, issuer: x509.Name, issuer_key, pathlen: int,
            not_before: datetime, not_after: datetime, *, eku: bool = False) -> x509.Certificate:
        b = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(key.public_key())
             .serial_number(x509.random_serial_number())
             .not_valid_before(not_before).not_valid_after(not_after)
             .add_extension(x509.BasicConstraints(ca=True, path_length=pathlen), critical=True)
             .add_extension(_CA_KEY_USAGE, critical=True)
             .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
             .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
                            critical=False))
        if eku:
            b = b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False)
        return b.sign(issuer_key, hashes.SHA384())

    @property
    def chain(self) -> list[x509.Certificate]:
        """The CA's certificates as the trusted root lists them: intermediate first, the root last."""
        return [c for c in (self.intermediate, self.root) if c is not None]

    def chain_pem(self) -> bytes:
        """cosign's dev.sigstore.cosign/chain annotation: the intermediates, then the root."""
        return b"".join(pem(c) for c in self.chain)

    def issue(self, public_key, *, uri: str | None = None, email: str | None = None,
              username: str | None = None, issuer: str | None = GITHUB, issuer_v1: str | None = None,
              not_before: datetime = T0, lifetime: timedelta = timedelta(minutes=10),
              code_signing: bool = True) -> x509.Certificate:
        """A leaf certificate for `public_key` as Fulcio issues it. `issuer` goes into both OIDC issuer
        extensions (v2 DER, v1 raw); `issuer_v1` puts another value in the v1 one; issuer None: v1 only
        (from `issuer_v1`), as Fulcio wrote certificates before the v2 extensions."""
        names: list[x509.GeneralName] = []
        if uri is not None:
            names.append(x509.UniformResourceIdentifier(uri))
        if email is not None:
            names.append(x509.RFC822Name(email))
        if username is not None:
            names.append(x509.OtherName(OID_USERNAME, der_utf8(username)))
        b = (x509.CertificateBuilder().subject_name(x509.Name([])).issuer_name(self.cert.subject)
             .public_key(public_key).serial_number(x509.random_serial_number())
             .not_valid_before(not_before).not_valid_after(not_before + lifetime)
             .add_extension(_LEAF_KEY_USAGE, critical=True)
             .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING if code_signing
                                                   else ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
             .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
             .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                            critical=False))
        if names:
            b = b.add_extension(x509.SubjectAlternativeName(names), critical=True)
        v1 = issuer_v1 if issuer_v1 is not None else issuer
        if v1 is not None:
            b = b.add_extension(x509.UnrecognizedExtension(OID_ISSUER_V1, v1.encode()), critical=False)
        if issuer is not None:
            b = b.add_extension(x509.UnrecognizedExtension(OID_ISSUER_V2, der_utf8(issuer)), critical=False)
        return b.sign(self.key, hashes.SHA384())


# ------------------------------------------------------------------------------------------------
# Rekor
# ------------------------------------------------------------------------------------------------


class Rekor:
    """A Rekor-like log. `valid_for`: the log key's validFor in the trusted root (None: left out)."""

    def __init__(self, *, valid_for: Span | None = (T0 - timedelta(days=365), None)):
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.spki = self.key.public_key().public_bytes(serialization.Encoding.DER,
                                                       serialization.PublicFormat.SubjectPublicKeyInfo)
        self.log_id = hashlib.sha256(self.spki).hexdigest()
        self.valid_for = valid_for
        self.next_index = 4242

    def log(self, body: str, integrated_time: int, *, log_index: int | None = None,
            log_id: str | None = None) -> RekorEntry:
        """The entry for `body` (base64) with its SET: this log's signature over Rekor's canonical JSON."""
        if log_index is None:
            log_index, self.next_index = self.next_index, self.next_index + 1
        log_id = log_id or self.log_id
        canonical = json.dumps({"body": body, "integratedTime": integrated_time, "logID": log_id,
                                "logIndex": log_index}, sort_keys=True, separators=(",", ":")).encode()
        set_ = self.key.sign(canonical, ec.ECDSA(hashes.SHA256()))
        return RekorEntry(set=set_, body=body, integrated_time=integrated_time, log_index=log_index,
                          log_id=log_id)


def _body(doc: dict) -> str:
    return b64(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode())


def hashedrekord_body(signature: bytes, signed: bytes, cert_pem: bytes) -> str:
    """A hashedrekord v0.0.1 entry body (base64) as Rekor canonicalises it."""
    return _body({"apiVersion": "0.0.1", "kind": "hashedrekord", "spec": {
        "data": {"hash": {"algorithm": "sha256", "value": hashlib.sha256(signed).hexdigest()}},
        "signature": {"content": b64(signature), "publicKey": {"content": b64(cert_pem)}}}})


def dsse_body(signature: bytes, payload: bytes, cert_pem: bytes, envelope: bytes) -> str:
    """A dsse v0.0.1 entry body (base64) as Rekor canonicalises it."""
    return _body({"apiVersion": "0.0.1", "kind": "dsse", "spec": {
        "envelopeHash": {"algorithm": "sha256", "value": hashlib.sha256(envelope).hexdigest()},
        "payloadHash": {"algorithm": "sha256", "value": hashlib.sha256(payload).hexdigest()},
        "signatures": [{"signature": b64(signature), "verifier": b64(cert_pem)}]}})


# ------------------------------------------------------------------------------------------------
# trusted_root.json
# ------------------------------------------------------------------------------------------------


def _valid_for(v: Span | None) -> dict:
    if v is None:
        return {}
    start, end = v
    out = {}
    if start is not None:
        out["start"] = rfc3339(start)
    if end is not None:
        out["end"] = rfc3339(end)
    return {"validFor": out}


def trusted_root_json(fulcios: list[Fulcio], rekors: list[Rekor]) -> bytes:
    """Sigstore's trusted_root.json over these CAs and logs, as protobuf-specs' protojson writes it
    (with an empty ctlogs list, as a root without a CT log would have)."""
    return json.dumps({
        "mediaType": "application/vnd.dev.sigstore.trustedroot+json;version=0.1",
        "tlogs": [{"baseUrl": "https://rekor.fake-sigstore.test", "hashAlgorithm": "SHA2_256",
                   "publicKey": {"rawBytes": b64(r.spki), "keyDetails": "PKIX_ECDSA_P256_SHA_256",
                                 **_valid_for(r.valid_for)},
                   "logId": {"keyId": b64(bytes.fromhex(r.log_id))}} for r in rekors],
        "certificateAuthorities": [{"subject": {"organization": "fake-sigstore.test", "commonName": f.name},
                                    "uri": "https://fulcio.fake-sigstore.test",
                                    "certChain": {"certificates": [{"rawBytes": b64(der(c))}
                                                                   for c in f.chain]},
                                    **_valid_for(f.valid_for)} for f in fulcios],
        "ctlogs": [],
        "timestampAuthorities": [],
    }, indent=2).encode()


# ------------------------------------------------------------------------------------------------
# Payloads and signatures
# ------------------------------------------------------------------------------------------------


def simple_signing(digest: str = IMAGE, reference: str = REPOSITORY) -> bytes:
    """cosign's simple-signing payload naming `digest`."""
    return json.dumps({"critical": {"identity": {"docker-reference": reference},
                                    "image": {"docker-manifest-digest": digest},
                                    "type": "cosign container image signature"},
                       "optional": None}, separators=(",", ":")).encode()


def statement(digest: str = IMAGE, name: str | None = REPOSITORY) -> bytes:
    """cosign v3's in-toto statement naming `digest` (predicate https://sigstore.dev/cosign/sign/v1)."""
    subj: dict = {"name": name} if name is not None else {}
    subj["digest"] = {"sha256": digest.split(":", 1)[1]}
    return json.dumps({"_type": "https://in-toto.io/Statement/v1", "subject": [subj],
                       "predicateType": COSIGN_SIGN_PREDICATE, "predicate": {}},
                      separators=(",", ":")).encode()


def pae(payload_type: str, payload: bytes) -> bytes:
    t = payload_type.encode()
    return b"DSSEv1 " + str(len(t)).encode() + b" " + t + b" " + str(len(payload)).encode() + b" " + payload


@dataclass(frozen=True)
class KeylessSignature:
    """A keyless signature as the fake made it; `rekor` None when it was not logged."""

    kind: str                          # "cosign" (simple signing) or "bundle" (DSSE)
    payload: bytes
    signed: bytes
    signature: bytes
    certificate: x509.Certificate
    chain_pem: bytes | None
    rekor: RekorEntry | None

    @property
    def cert_pem(self) -> bytes:
        return pem(self.certificate)

    def candidate(self, source: str = "sha256:" + "5" * 64, **changes) -> Candidate:
        c = Candidate(source=source, kind=self.kind, payload=self.payload, signature=self.signature,
                      signed=self.signed, certificate=self.cert_pem, chain=self.chain_pem, rekor=self.rekor)
        return dataclasses.replace(c, **changes) if changes else c

    def bundle_annotation(self) -> str:
        """cosign's dev.sigstore.cosign/bundle annotation: the SET and the entry it is over."""
        r = self.rekor
        assert r is not None, "not logged"
        return json.dumps({"SignedEntryTimestamp": b64(r.set),
                           "Payload": {"body": r.body, "integratedTime": r.integrated_time,
                                       "logIndex": r.log_index, "logID": r.log_id}}, separators=(",", ":"))

    def annotations(self) -> dict[str, str]:
        """The keyless annotations of a .sig layer (besides the signature): certificate, chain, bundle."""
        out = {"dev.sigstore.cosign/certificate": self.cert_pem.decode()}
        if self.chain_pem:
            out["dev.sigstore.cosign/chain"] = self.chain_pem.decode()
        if self.rekor is not None:
            out["dev.sigstore.cosign/bundle"] = self.bundle_annotation()
        return out

    def tlog_entry(self) -> dict:
        """The Sigstore bundle v0.3 form of the log entry (tlogEntries[0]), int64 as strings."""
        r = self.rekor
        assert r is not None, "not logged"
        kind = json.loads(base64.b64decode(r.body))["kind"]
        return {"logIndex": str(r.log_index), "logId": {"keyId": b64(bytes.fromhex(r.log_id))},
                "kindVersion": {"kind": kind, "version": "0.0.1"}, "integratedTime": str(r.integrated_time),
                "inclusionPromise": {"signedEntryTimestamp": b64(r.set)}, "canonicalizedBody": r.body}

    def bundle(self) -> bytes:
        """A Sigstore bundle v0.3 carrying this (DSSE) signature, its certificate and its log entry."""
        assert self.kind == "bundle", "only a DSSE signature makes a bundle"
        return json.dumps({
            "mediaType": BUNDLE_V03,
            "verificationMaterial": {"certificate": {"rawBytes": b64(der(self.certificate))},
                                     "tlogEntries": [self.tlog_entry()] if self.rekor else []},
            "dsseEnvelope": {"payload": b64(self.payload), "payloadType": IN_TOTO,
                             "signatures": [{"sig": b64(self.signature), "keyid": ""}]},
        }).encode()


def sign_keyless(fulcio: Fulcio, rekor: Rekor | None, payload: bytes | None = None, *, kind: str = "cosign",
                 uri: str | None = WORKFLOW, email: str | None = None, username: str | None = None,
                 issuer: str | None = GITHUB, issuer_v1: str | None = None, signed_at: datetime = T0,
                 logged_after: timedelta = timedelta(seconds=20), carry_chain: bool = True,
                 body=None, code_signing: bool = True) -> KeylessSignature:
    """Sign `payload` as cosign does keyless: an ephemeral P-256 key, a leaf from `fulcio` for the
    identity (`uri`, `email`, `username`) valid from `signed_at` for ten minutes, the signature, and
    (if `rekor`) the entry `rekor` logs `logged_after` that: hashedrekord for kind "cosign" (simple
    signing; default payload: one naming IMAGE), dsse for kind "bundle" (an in-toto statement, signed as
    DSSE's PAE). `body(signature, signed, payload, cert_pem) -> str` replaces the entry body."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = fulcio.issue(key.public_key(), uri=uri, email=email, username=username, issuer=issuer,
                        issuer_v1=issuer_v1, not_before=signed_at, code_signing=code_signing)
    if kind == "cosign":
        payload = simple_signing() if payload is None else payload
        signed = payload
    elif kind == "bundle":
        payload = statement() if payload is None else payload
        signed = pae(IN_TOTO, payload)
    else:
        raise ValueError(f"unknown kind {kind!r}")
    signature = key.sign(signed, ec.ECDSA(hashes.SHA256()))
    cert_pem = pem(cert)
    entry = None
    if rekor is not None:
        if body is not None:
            text = body(signature, signed, payload, cert_pem)
        elif kind == "cosign":
            text = hashedrekord_body(signature, signed, cert_pem)
        else:
            envelope = json.dumps({"payload": b64(payload), "payloadType": IN_TOTO,
                                   "signatures": [{"sig": b64(signature)}]}).encode()
            text = dsse_body(signature, payload, cert_pem, envelope)
        entry = rekor.log(text, int((signed_at + logged_after).timestamp()))
    chain = fulcio.chain_pem() if carry_chain else None
    return KeylessSignature(kind, payload, signed, signature, cert, chain, entry)
