"""Sigstore keyless signatures, checked offline against a trusted root (Sigstore's trusted_root.json).

A keyless signature is made with an ephemeral key whose certificate Fulcio issued for a few minutes to
an OIDC identity, and recorded in Rekor, which promises (the SignedEntryTimestamp, "SET") that it logged
the entry at `integratedTime`. Everything is checked from what the signature carries and the trusted
root alone, no network; the time that counts is the log's, not this machine's.

What :func:`check_keyless` verifies, for one signature (all must hold):

1. it carries a leaf certificate (PEM);
2. the certificate chains to one of the trusted root's Fulcio CAs (``certificateAuthorities``): path
   building by cryptography's ``x509.verification`` (each signature by its issuer's key, names, the CAs'
   basic constraints and key usage, RFC 5280 / CA-B Forum profile checks), at the time the log took the
   entry, with only the trusted root's certificates as intermediates (the last certificate of each
   ``certChain`` is the trust anchor); the leaf must be a code-signing certificate (extended key usage
   codeSigning, key usage digitalSignature) - intermediates a signature carries itself are not used;
3. the certificate's identity (its subject alternative names: URI, email, DNS, IP, and Fulcio's
   OtherName username) matches the regular expression `identity`, searched as cosign's
   ``--certificate-identity-regexp`` does (Go's ``regexp.MatchString``: unanchored, so
   ``https://github.com/org/`` also matches ``https://github.com/org/repo/...``; anchor with ``^...$``
   for an exact identity; Python's ``re`` syntax), and its OIDC issuer extension equals `issuer`
   exactly (1.3.6.1.4.1.57264.1.8, a DER UTF8String; else the older 1.3.6.1.4.1.57264.1.1, raw bytes);
4. the signature verifies over the signed bytes with the certificate's public key;
5. the payload names `digest` (and, with `reference`, the same repository, ignoring ':tag' / '@digest');
6. a transparency-log promise: the entry's SET verifies with the trusted root's log key (``tlogs``)
   whose ``logId.keyId`` is the entry's logID, over Rekor's canonical JSON of body, integratedTime, logID
   and logIndex; the entry (kind hashedrekord or dsse, apiVersion 0.0.1) records this very signature,
   this certificate and the hash of these bytes (hashedrekord: the signed bytes; dsse: the payload);
7. the log's time lies within the certificate's validity, the Fulcio CA's and the log key's
   ``validFor`` ranges (and every certificate of the chain was valid then), and is not more than a day
   after `now` (this machine's clock, with room for skew: an air-gapped clock is often off).

Needs cryptography >= 45 (``x509.verification``'s extension policies).

What it does not verify:

- nothing online: the log is not asked whether the entry is still there; nothing is fetched (TUF is the
  caller's business: the trusted root is taken as given);
- inclusion proofs (Merkle) are not required when a SET is present, and are not checked when a bundle
  carries one (nor its signed checkpoint): the SET, the log's signed promise to include the entry,
  stands for them, as in cosign's offline verification. An entry without a SET does not count;
- no revocation (Fulcio certificates live ten minutes and have none);
- no SCT: the certificate's embedded Certificate Transparency timestamp is not checked against the
  trusted root's ``ctlogs``;
- no RFC 3161 timestamps (``timestampAuthorities``): the only time source is the log's integratedTime,
  so Rekor v2 entries (no SET, time from a timestamp authority) do not count;
- the certificate's other Fulcio extensions (workflow, repository, ref...) are not looked at: only the
  identity and the issuer.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from .cosign import repository, subject, verify_signature
from .types import Candidate, Rekor, Verdict

TRUSTED_ROOT_MEDIA_TYPE = "application/vnd.dev.sigstore.trustedroot+json;version=0.1"
OID_ISSUER_V1 = x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.1")     # raw bytes
OID_ISSUER_V2 = x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.8")     # DER UTF8String
OID_OTHERNAME_USERNAME = x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.7")
#: A log entry dated later than this after `now` is refused (a clock that far behind is an error).
CLOCK_SKEW = timedelta(days=1)

_HINT = ("give Sigstore's trusted_root.json (media type " + TRUSTED_ROOT_MEDIA_TYPE + "), as "
         "`cosign trusted-root create` writes it or Sigstore's TUF repository serves it")


# ------------------------------------------------------------------------------------------------
# The trusted root
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CertificateAuthority:
    """A Fulcio CA of the trusted root: its chain as listed (intermediates first, the root last)."""

    chain: tuple[x509.Certificate, ...]
    valid_from: datetime | None = None
    valid_until: datetime | None = None
    uri: str = ""

    @property
    def name(self) -> str:
        return self.chain[0].subject.rfc4514_string() or self.uri or "(unnamed CA)"


@dataclass(frozen=True)
class TransparencyLog:
    """A Rekor log of the trusted root: the key its SETs verify with."""

    log_id: str                     # hex: logId.keyId (sha256 of the DER public key for Rekor v1)
    key: object                     # public key (cryptography)
    valid_from: datetime | None = None
    valid_until: datetime | None = None
    base_url: str = ""


@dataclass(frozen=True)
class TrustedRoot:
    """What keyless checks trust: Fulcio CAs (certificateAuthorities) and Rekor keys (tlogs)."""

    certificate_authorities: tuple[CertificateAuthority, ...]
    tlogs: tuple[TransparencyLog, ...]

    def tlog(self, log_id: str) -> TransparencyLog | None:
        log_id = log_id.lower()
        return next((t for t in self.tlogs if t.log_id == log_id), None)


def load_trusted_root(raw: bytes) -> TrustedRoot:
    """Parse trusted_root.json: `certificateAuthorities[]` (certChain.certificates[].rawBytes: base64 DER,
    validFor.start/end RFC 3339) are the Fulcio CAs; `tlogs[]` (publicKey.rawBytes: base64 DER
    SubjectPublicKeyInfo, publicKey.validFor, logId.keyId: base64) the Rekor keys. ctlogs and
    timestampAuthorities may be there and are not used. protojson's field names are read in either
    spelling (certChain or cert_chain). A log whose key algorithm cryptography does not know is left out.

    Raises ValueError with a reason a person can act on (what is wrong, and where) if it is not such
    a file, or if it lacks a Fulcio CA or a log key."""
    if isinstance(raw, str):
        raw = raw.encode()
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError, TypeError) as exc:
        raise ValueError(f"not a Sigstore trusted root: not JSON ({exc}); {_HINT}") from None
    if not isinstance(doc, dict):
        raise ValueError(f"not a Sigstore trusted root: a JSON {type(doc).__name__}, not an object; {_HINT}")
    if "signed" in doc and "signatures" in doc:
        raise ValueError(f"this is TUF metadata (root.json), not a Sigstore trusted root; {_HINT}")
    media = doc.get("mediaType", doc.get("media_type"))
    if media is not None and (not isinstance(media, str)
                              or not media.startswith("application/vnd.dev.sigstore.trustedroot")):
        raise ValueError(f"not a Sigstore trusted root (mediaType {media!r}); {_HINT}")
    cas_doc = _field(doc, "certificateAuthorities")
    tlogs_doc = _field(doc, "tlogs")
    if media is None and cas_doc is None and tlogs_doc is None:
        raise ValueError("not a Sigstore trusted root (no mediaType, certificateAuthorities or tlogs); "
                         + _HINT)
    cas = tuple(_authority(a, f"certificateAuthorities[{i}]")
                for i, a in enumerate(_list(cas_doc, "certificateAuthorities")))
    logs = (_tlog(t, f"tlogs[{i}]") for i, t in enumerate(_list(tlogs_doc, "tlogs")))
    tlogs = tuple(t for t in logs if t is not None)
    if not cas:
        raise ValueError("the trusted root has no certificateAuthorities (Fulcio CAs): keyless signatures "
                         "cannot be checked against it")
    if not tlogs:
        raise ValueError("the trusted root has no usable tlogs (Rekor log keys): keyless signatures "
                         "cannot be checked against it")
    return TrustedRoot(cas, tlogs)


def _field(d: dict, camel: str):
    """protojson accepts the lowerCamelCase JSON name and the proto field name alike."""
    if camel in d:
        return d[camel]
    return d.get(re.sub(r"[A-Z]", lambda m: "_" + m.group(0).lower(), camel))


def _list(v, path: str) -> list:
    if v is None:
        return []
    if not isinstance(v, list):
        raise ValueError(f"trusted root: {path} is not a list")
    return v


def _obj(v, path: str, *, required: bool = True) -> dict:
    if v is None and not required:
        return {}
    if not isinstance(v, dict):
        raise ValueError(f"trusted root: {path} is {'missing' if v is None else 'not an object'}")
    return v


def _bytes(v, path: str) -> bytes:
    """protojson bytes: standard or URL-safe base64, padded or not."""
    if not isinstance(v, str) or not v.strip():
        raise ValueError(f"trusted root: {path} is {'missing' if v is None else 'not a base64 string'}")
    s = v.strip().rstrip("=").replace("-", "+").replace("_", "/")
    try:
        return base64.b64decode(s + "=" * (-len(s) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"trusted root: {path} is not base64") from None


_RFC3339 = re.compile(r"(\d{4}-\d\d-\d\d)[Tt ](\d\d:\d\d:\d\d)(\.\d+)?([Zz]|[+-]\d\d:\d\d)")


def _time(v, path: str) -> datetime | None:
    if v is None:
        return None
    m = _RFC3339.fullmatch(v) if isinstance(v, str) else None
    if m is None:
        raise ValueError(f"trusted root: {path} is not an RFC 3339 time ({v!r})")
    frac = (m.group(3) or "")[:7]           # datetime keeps microseconds
    zone = "+00:00" if m.group(4) in ("Z", "z") else m.group(4)
    try:
        return datetime.fromisoformat(f"{m.group(1)}T{m.group(2)}{frac}{zone}").astimezone(UTC)
    except ValueError:
        raise ValueError(f"trusted root: {path} is not an RFC 3339 time ({v!r})") from None


def _valid_for(d: dict, path: str) -> tuple[datetime | None, datetime | None]:
    vf = _obj(_field(d, "validFor"), f"{path}.validFor", required=False)
    return _time(vf.get("start"), f"{path}.validFor.start"), _time(vf.get("end"), f"{path}.validFor.end")


def _authority(a, path: str) -> CertificateAuthority:
    a = _obj(a, path)
    chain_doc = _obj(_field(a, "certChain"), f"{path}.certChain")
    certs = _list(chain_doc.get("certificates"), f"{path}.certChain.certificates")
    if not certs:
        raise ValueError(f"trusted root: {path}.certChain.certificates is empty")
    chain = []
    for i, c in enumerate(certs):
        where = f"{path}.certChain.certificates[{i}].rawBytes"
        der = _bytes(_field(_obj(c, f"{path}.certChain.certificates[{i}]"), "rawBytes"), where)
        try:
            chain.append(x509.load_der_x509_certificate(der))
        except ValueError as exc:
            raise ValueError(f"trusted root: {where} is not a DER certificate ({exc})") from None
    start, end = _valid_for(a, path)
    uri = a.get("uri")
    return CertificateAuthority(tuple(chain), start, end, uri if isinstance(uri, str) else "")


#: protobuf-specs' PublicKeyDetails of the key kinds cryptography loads: a log key of another kind
#: (keyDetails says so) that does not load is left out rather than the whole file refused.
_KNOWN_KEY_DETAILS = ("PKIX_ECDSA", "PKIX_RSA", "PKCS1_RSA", "PKIX_ED25519")


def _tlog(t, path: str) -> TransparencyLog | None:
    t = _obj(t, path)
    pk = _obj(_field(t, "publicKey"), f"{path}.publicKey")
    der = _bytes(_field(pk, "rawBytes"), f"{path}.publicKey.rawBytes")
    details = _field(pk, "keyDetails")
    try:
        key = serialization.load_der_public_key(der)
    except (UnsupportedAlgorithm, ValueError) as exc:
        if isinstance(details, str) and not details.startswith(_KNOWN_KEY_DETAILS):
            return None                     # a newer kind of key (keyDetails says so): verifies nothing here
        raise ValueError(f"trusted root: {path}.publicKey.rawBytes is not a DER public key ({exc})") from None
    log_id_doc = _obj(_field(t, "logId"), f"{path}.logId", required=False)
    if _field(log_id_doc, "keyId") is not None:
        log_id = _bytes(_field(log_id_doc, "keyId"), f"{path}.logId.keyId").hex()
    else:
        log_id = hashlib.sha256(der).hexdigest()
    start, end = _valid_for(pk, f"{path}.publicKey")
    base = _field(t, "baseUrl")
    return TransparencyLog(log_id, key, start, end, base if isinstance(base, str) else "")


# ------------------------------------------------------------------------------------------------
# The check
# ------------------------------------------------------------------------------------------------

# How far a candidate got: the verdict gives the reason of the one that got furthest.
_NO_CERT, _CHAIN, _IDENTITY, _ISSUER, _SIGNATURE, _SUBJECT, _NO_LOG, _LOG_KEY, _ENTRY, _TIME = range(1, 11)

NOT_FULCIO = "certificate not issued by the trusted root's Fulcio CA"
NOT_LOG_KEY = "transparency-log entry not signed by the trusted root's log key"
ENTRY_MISMATCH = "log entry does not match this signature"
OUTSIDE_VALIDITY = "signed outside the certificate's validity"


def check_keyless(cands: list[Candidate], root: TrustedRoot, issuer: str, identity: str, digest: str,
                  reference: str | None = None, now: datetime | None = None) -> Verdict:
    """Does any candidate carry a keyless signature of `identity` (a regular expression searched in the
    certificate's SANs) at `issuer` (the OIDC issuer, exact), valid under `root`, naming `digest` (and,
    with `reference`, its repository)? `now`: the time of the check (default: this machine's clock),
    used only to refuse log entries dated more than CLOCK_SKEW later. See the module's docstring for
    what is and is not verified. The verdict's policy is left None for the caller to fill.

    Failure reasons (of the candidate that got furthest, some followed by details in parentheses):
      "no signature found"
      "no signature carries a certificate (keyless needs one)"
      "certificate not issued by the trusted root's Fulcio CA"
      "certificate identity SAN does not match IDENTITY"
      "certificate issuer GOT is not ISSUER"
      "signature does not verify with its certificate"
      "payload names another digest (D)" / "payload is not a cosign image signature" /
      "signed for R, not for REFERENCE"
      "no transparency-log entry (keyless needs Rekor's signed entry timestamp)"
      "transparency-log entry not signed by the trusted root's log key"
      "log entry does not match this signature"
      "signed outside the certificate's validity"
      "log entry dated T, in the future (this machine's clock says NOW)"
    and "identity 'X' is not a valid regular expression (...)" before looking at any.
    """
    if not cands:
        return Verdict(False, "no signature found")
    try:
        pattern = re.compile(identity)
    except (re.error, OverflowError, RecursionError) as exc:
        return Verdict(False, f"identity {identity!r} is not a valid regular expression ({exc})")
    now = now or datetime.now(UTC)
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    best: tuple[int, str] = (0, "no signature found")
    for c in cands:
        result = _check_one(c, root, issuer, identity, pattern, digest, reference, now)
        if isinstance(result, Verdict):
            return result
        if result[0] > best[0]:
            best = result
    return Verdict(False, best[1])


def _check_one(c: Candidate, root: TrustedRoot, issuer: str, identity: str, pattern: re.Pattern,
               digest: str, reference: str | None, now: datetime) -> Verdict | tuple[int, str]:
    # 1. a certificate
    if not c.certificate:
        return _NO_CERT, "no signature carries a certificate (keyless needs one)"
    leaf = _load_certificate(c.certificate)
    if leaf is None:
        return _CHAIN, f"{NOT_FULCIO} (the certificate it carries cannot be read)"

    # 2. issued by the trusted root's Fulcio (checked as the leaf's validity starts; again at the log's time)
    issued_at = leaf.not_valid_before_utc
    cas, errors = [], []
    for ca in root.certificate_authorities:
        err = _chain_error(leaf, ca, issued_at)
        if err is None:
            cas.append(ca)
        else:
            errors.append(err)
    if not cas:
        detail = f"issued by {leaf.issuer.rfc4514_string() or '(no name)'}"
        specific = [e for e in errors if "candidates exhausted" not in e]
        return _CHAIN, f"{NOT_FULCIO} ({detail}{': ' + specific[0] if specific else ''})"

    # 3. identity and issuer
    sans = _sans(leaf)
    matched = [s for s in sans if pattern.search(s)]
    if not matched:
        return _IDENTITY, f"certificate identity {', '.join(sans) or '(none)'} does not match {identity}"
    san = matched[0]
    got = oidc_issuer(leaf)
    if got != issuer:
        return _ISSUER, f"certificate issuer {got if got is not None else '(none)'} is not {issuer}"

    # 4. the signature
    try:
        leaf_key = leaf.public_key()
    except (UnsupportedAlgorithm, ValueError):
        leaf_key = None
    if not verify_signature(leaf_key, c.signed, c.signature):
        return _SIGNATURE, "signature does not verify with its certificate"

    # 5. what it is a signature of
    named, payload_ref = subject(c)
    if named is None:
        return _SUBJECT, "payload is not a cosign image signature"
    if named != digest:
        return _SUBJECT, f"payload names another digest ({named})"
    if reference is not None and (payload_ref is None or repository(payload_ref) != repository(reference)):
        return _SUBJECT, f"signed for {payload_ref or 'no reference'}, not for {reference}"

    # 6. the transparency log's promise
    rekor = c.rekor
    if rekor is None:
        return _NO_LOG, "no transparency-log entry (keyless needs Rekor's signed entry timestamp)"
    log = root.tlog(rekor.log_id)
    if log is None:
        return _LOG_KEY, f"{NOT_LOG_KEY} (log {rekor.log_id} is not in the trusted root)"
    if not verify_signature(log.key, canonical_entry(rekor), rekor.set):
        return _LOG_KEY, NOT_LOG_KEY
    try:
        logged = datetime.fromtimestamp(rekor.integrated_time, UTC)
    except (OverflowError, OSError, ValueError):
        return _TIME, f"{OUTSIDE_VALIDITY} (integratedTime {rekor.integrated_time} is not a time)"
    if not _within(logged, log.valid_from, log.valid_until):
        return _LOG_KEY, (f"{NOT_LOG_KEY} (its key is valid {_span(log.valid_from, log.valid_until)}, "
                          f"the entry is of {_iso(logged)})")
    mismatch = entry_mismatch(rekor, c, leaf)
    if mismatch is not None:
        return _ENTRY, f"{ENTRY_MISMATCH} ({mismatch})"

    # 7. when
    if not leaf.not_valid_before_utc <= logged <= leaf.not_valid_after_utc:
        return _TIME, (f"{OUTSIDE_VALIDITY} (logged at {_iso(logged)}; the certificate is valid "
                       f"{_span(leaf.not_valid_before_utc, leaf.not_valid_after_utc)})")
    if logged > now + CLOCK_SKEW:
        return _TIME, f"log entry dated {_iso(logged)}, in the future (this machine's clock says {_iso(now)})"
    valid_cas = [ca for ca in cas if _within(logged, ca.valid_from, ca.valid_until)]
    if not valid_cas:
        ca = cas[0]
        return _TIME, (f"{OUTSIDE_VALIDITY} (logged at {_iso(logged)}; the trusted root's Fulcio CA "
                       f"{ca.name} is valid {_span(ca.valid_from, ca.valid_until)})")
    if all(_chain_error(leaf, ca, logged) is not None for ca in valid_cas):
        return _TIME, (f"{OUTSIDE_VALIDITY} (logged at {_iso(logged)}: its issuing CA certificate was "
                       "not valid then)")

    who = f"{san} ({issuer})"
    return Verdict(True, f"signed by {who}", signer=who, signature=c.source, reference=payload_ref)


# ------------------------------------------------------------------------------------------------
# Certificates
# ------------------------------------------------------------------------------------------------


def _load_certificate(data: bytes) -> x509.Certificate | None:
    """The first certificate of PEM `data` (or DER)."""
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_certificates(data)[0]
        return x509.load_der_x509_certificate(data)
    except (ValueError, TypeError, IndexError):
        return None


def _code_signing(_policy, _cert, eku: x509.ExtendedKeyUsage) -> None:
    if ExtendedKeyUsageOID.CODE_SIGNING not in eku:
        raise ValueError("not a code-signing certificate (no extended key usage codeSigning)")


def _digital_signature(_policy, _cert, ku: x509.KeyUsage) -> None:
    if not ku.digital_signature:
        raise ValueError("its key usage does not include digitalSignature")


# The Web PKI profile (cryptography's defaults) but for the extended key usage: Fulcio's leaves are for
# code signing, not client authentication, and its intermediate carries codeSigning too.
_CA_POLICY = ExtensionPolicy.webpki_defaults_ca().may_be_present(x509.ExtendedKeyUsage, Criticality.AGNOSTIC,
                                                                 None)
_EE_POLICY = (ExtensionPolicy.webpki_defaults_ee()
              .require_present(x509.ExtendedKeyUsage, Criticality.AGNOSTIC, _code_signing)
              .require_present(x509.KeyUsage, Criticality.AGNOSTIC, _digital_signature))


_EXTENSION_NAMES = {"2.5.29.14": "subjectKeyIdentifier", "2.5.29.15": "keyUsage",
                    "2.5.29.17": "subjectAltName", "2.5.29.19": "basicConstraints",
                    "2.5.29.30": "nameConstraints", "2.5.29.35": "authorityKeyIdentifier",
                    "2.5.29.37": "extendedKeyUsage"}


def _chain_error(leaf: x509.Certificate, ca: CertificateAuthority, at: datetime) -> str | None:
    """None if `leaf` chains to `ca`'s root through `ca`'s intermediates, all valid at `at`; else why not."""
    verifier = (PolicyBuilder().store(Store([ca.chain[-1]])).time(at)
                .extension_policies(ca_policy=_CA_POLICY, ee_policy=_EE_POLICY)
                .build_client_verifier())
    try:
        verifier.verify(leaf, list(ca.chain[:-1]))
    except (VerificationError, x509.UnsupportedGeneralNameType, ValueError, TypeError) as exc:
        msg = str(exc).removeprefix("validation failed: ")
        msg = re.sub(r" \(encountered processing <Certificate.*$", "", msg)
        msg = re.sub(r"\b2\.5\.29\.\d+\b", lambda m: _EXTENSION_NAMES.get(m.group(0), m.group(0)), msg)
        return msg.removeprefix("Python extension validator failed: ValueError: ")
    return None


def _sans(cert: x509.Certificate) -> list[str]:
    """The certificate's subject alternative names as strings: URIs, emails, DNS names, IPs and Fulcio's
    OtherName username (1.3.6.1.4.1.57264.1.7, a UTF8String)."""
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (x509.ExtensionNotFound, ValueError):
        return []
    out: list[str] = []
    for g in names:
        if isinstance(g, x509.UniformResourceIdentifier | x509.RFC822Name | x509.DNSName):
            out.append(g.value)
        elif isinstance(g, x509.IPAddress):
            out.append(str(g.value))
        elif isinstance(g, x509.OtherName) and g.type_id == OID_OTHERNAME_USERNAME:
            text = _der_utf8(g.value)
            if text is not None:
                out.append(text)
    return out


def oidc_issuer(cert: x509.Certificate) -> str | None:
    """Fulcio's OIDC issuer extension: 1.3.6.1.4.1.57264.1.8 (a DER UTF8String), else the older
    1.3.6.1.4.1.57264.1.1 (the string's raw bytes). None if neither is there (or readable)."""
    try:
        exts = cert.extensions
    except ValueError:
        return None
    for oid, der in ((OID_ISSUER_V2, True), (OID_ISSUER_V1, False)):
        try:
            value = exts.get_extension_for_oid(oid).value
        except x509.ExtensionNotFound:
            continue
        raw = getattr(value, "value", None)
        if not isinstance(raw, bytes):
            continue
        if der:
            return _der_utf8(raw)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return None
    return None


def _der_utf8(data: bytes) -> str | None:
    """The text of a DER UTF8String (tag 12), or None."""
    if len(data) < 2 or data[0] != 0x0C:
        return None
    n, i = data[1], 2
    if n & 0x80:
        k = n & 0x7F
        if not 1 <= k <= 4 or len(data) < 2 + k:
            return None
        n, i = int.from_bytes(data[2:2 + k], "big"), 2 + k
    if len(data) != i + n:
        return None
    try:
        return data[i:].decode("utf-8")
    except UnicodeDecodeError:
        return None


# ------------------------------------------------------------------------------------------------
# The transparency log
# ------------------------------------------------------------------------------------------------


def canonical_entry(r: Rekor) -> bytes:
    """What a SET signs: Rekor's canonical JSON (keys sorted, no whitespace) of the entry's body (base64
    as carried), integratedTime, logID (hex) and logIndex."""
    return json.dumps({"body": r.body, "integratedTime": r.integrated_time, "logID": r.log_id,
                       "logIndex": r.log_index}, sort_keys=True, separators=(",", ":")).encode()


_HASHES = {"sha256": hashlib.sha256, "sha384": hashlib.sha384, "sha512": hashlib.sha512}


def entry_mismatch(r: Rekor, c: Candidate, leaf: x509.Certificate) -> str | None:
    """None if the log entry records this signature, by this certificate, over these bytes; else how
    it differs. hashedrekord: spec.signature.content is the signature, spec.data.hash the hash of the
    signed bytes, spec.signature.publicKey.content the certificate (PEM, base64). dsse: one of
    spec.signatures[] has the signature and the certificate (verifier), spec.payloadHash is the hash
    of the payload. Other kinds are not accepted."""
    try:
        body = json.loads(base64.b64decode(r.body, validate=True))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return "its body is not base64 JSON"
    if not isinstance(body, dict):
        return "its body is not a JSON object"
    kind, spec = body.get("kind"), body.get("spec")
    if kind not in ("hashedrekord", "dsse"):
        return f"entry kind {kind!r} is not accepted (hashedrekord or dsse)"
    if body.get("apiVersion") != "0.0.1":
        return f"{kind} apiVersion {body.get('apiVersion')!r} is not accepted (0.0.1)"
    if not isinstance(spec, dict):
        return f"the {kind} entry has no spec"
    leaf_der = leaf.public_bytes(serialization.Encoding.DER)
    if kind == "hashedrekord":
        sig = _get(spec, "signature")
        if _b64(_get(sig, "content")) != c.signature:
            return "the entry records another signature"
        if not _same_certificate(_get(sig, "publicKey", "content"), leaf_der):
            return "the entry records another certificate"
        if not _hash_matches(_get(spec, "data", "hash"), c.signed):
            return "the entry records the hash of other bytes"
        return None
    sigs = _get(spec, "signatures")
    sigs = [s for s in sigs if isinstance(s, dict)] if isinstance(sigs, list) else []
    mine = [s for s in sigs if _b64(s.get("signature")) == c.signature]
    if not mine:
        return "the entry records another signature"
    if not any(_same_certificate(s.get("verifier"), leaf_der) for s in mine):
        return "the entry records another certificate"
    if not _hash_matches(_get(spec, "payloadHash"), c.payload):
        return "the entry records the hash of another payload"
    return None


def _get(d, *keys):
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


def _b64(s) -> bytes | None:
    """base64, standard or URL-safe, padded or not (a DSSE envelope's sig is kept as the signer wrote it)."""
    if not isinstance(s, str) or not s:
        return None
    s = s.rstrip("=").replace("-", "+").replace("_", "/")
    try:
        return base64.b64decode(s + "=" * (-len(s) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None


def _same_certificate(b64_pem, leaf_der: bytes) -> bool:
    """Is this base64 of a PEM (or DER) certificate the leaf? Compared as DER: PEM's line breaks and
    headers do not matter."""
    data = _b64(b64_pem)
    cert = _load_certificate(data) if data else None
    return cert is not None and cert.public_bytes(serialization.Encoding.DER) == leaf_der


def _hash_matches(h, data: bytes) -> bool:
    if not isinstance(h, dict):
        return False
    algo, value = h.get("algorithm"), h.get("value")
    fn = _HASHES.get(algo) if isinstance(algo, str) else None
    return fn is not None and isinstance(value, str) and value.lower() == fn(data).hexdigest()


# ------------------------------------------------------------------------------------------------
# Times
# ------------------------------------------------------------------------------------------------


def _within(t: datetime, start: datetime | None, end: datetime | None) -> bool:
    return (start is None or start <= t) and (end is None or t <= end)


def _iso(t: datetime | None) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if t is not None else "?"


def _span(start: datetime | None, end: datetime | None) -> str:
    if start is None and end is None:
        return "always"
    if end is None:
        return f"from {_iso(start)}"
    if start is None:
        return f"until {_iso(end)}"
    return f"from {_iso(start)} to {_iso(end)}"
