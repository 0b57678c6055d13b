"""Signatures as cosign writes them, and their check against public keys.

Two layouts carry them (see :func:`candidates`):

- cosign's ``sha256-<hex>.sig`` tag image (and the same layers in an OCI 1.1 referrer of artifactType
  ``application/vnd.dev.cosign.artifact.sig.v1+json``): one simple-signing layer per signature, the
  signature in the layer's annotation; the signature is over the layer's bytes.
- a Sigstore bundle v0.3 referrer (cosign v3's default): a layer holding the bundle JSON, whose DSSE
  envelope signs an in-toto statement (predicate ``https://sigstore.dev/cosign/sign/v1``) naming the image.

Pure: no network, no files. The keyless checks (certificate, identity, transparency log) are in keyless.py.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from .types import (
    ANN_BUNDLE,
    ANN_CERTIFICATE,
    ANN_CHAIN,
    ANN_SIGNATURE,
    BUNDLE_V03,
    COSIGN_SIGN_PREDICATE,
    SIMPLESIGNING,
    SIMPLESIGNING_TYPE,
    Candidate,
    Rekor,
    Verdict,
)

#: The bundle media types whose JSON this module reads (v0.3 is what cosign v3 writes; the older
#: ones differ only in what this module does not look at).
BUNDLE_MEDIA_TYPES = frozenset({
    BUNDLE_V03,
    "application/vnd.dev.sigstore.bundle+json;version=0.3",
    "application/vnd.dev.sigstore.bundle+json;version=0.2",
    "application/vnd.dev.sigstore.bundle+json;version=0.1",
})
IN_TOTO_STATEMENTS = frozenset({"https://in-toto.io/Statement/v0.1", "https://in-toto.io/Statement/v1"})
MIN_RSA_BITS = 2048

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----")


# ------------------------------------------------------------------------------------------------
# Keys and signatures
# ------------------------------------------------------------------------------------------------


def load_public_key(pem: bytes):
    """A PEM public key (SubjectPublicKeyInfo, "-----BEGIN PUBLIC KEY-----"): ECDSA P-256/P-384,
    RSA (>= 2048 bits), Ed25519.

    Raises ValueError with a reason a person can act on (e.g. 'not a PEM public key',
    'ECDSA curve secp521r1 is not supported (P-256, P-384)', 'RSA key of 1024 bits is too small')."""
    if isinstance(pem, str):
        pem = pem.encode()
    if not isinstance(pem, bytes | bytearray):
        raise ValueError("not a PEM public key (expected bytes)")
    m = _PEM_BLOCK.search(pem)
    if m is None:
        raise ValueError("not a PEM public key (no '-----BEGIN PUBLIC KEY-----' block)")
    label = m.group(1).decode()
    if "PRIVATE KEY" in label:
        raise ValueError(f"this is a private key ({label}); give the public key "
                         "(cosign public-key, or cosign.pub)")
    if label == "CERTIFICATE":
        raise ValueError("this is a certificate, not a public key; give the public key "
                         "(openssl x509 -pubkey -noout)")
    if label != "PUBLIC KEY":
        raise ValueError(f"not a PEM public key ('{label}'; expected '-----BEGIN PUBLIC KEY-----')")
    try:
        key = serialization.load_pem_public_key(bytes(pem[m.start():]))
    except UnsupportedAlgorithm as exc:
        raise ValueError(f"unsupported public key algorithm ({exc}); ECDSA P-256/P-384, RSA or Ed25519") from None
    except ValueError as exc:
        raise ValueError(f"not a PEM public key (cannot parse it: {exc})") from None
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, ec.SECP256R1 | ec.SECP384R1):
            raise ValueError(f"ECDSA curve {key.curve.name} is not supported (P-256, P-384)")
    elif isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise ValueError(f"RSA key of {key.key_size} bits is too small (at least {MIN_RSA_BITS})")
    elif not isinstance(key, ed25519.Ed25519PublicKey):
        raise ValueError(f"{type(key).__name__.removeprefix('_')} keys are not supported "
                         "(ECDSA P-256/P-384, RSA, Ed25519)")
    return key


def verify_signature(key, signed: bytes, signature: bytes) -> bool:
    """True if `signature` verifies over `signed` with `key`, as cosign signs: ECDSA DER signature with
    SHA-256 (also SHA-384 for a P-384 key), RSA PKCS#1 v1.5 with SHA-256 (also PSS SHA-256),
    Ed25519 pure. Never raises for a bad signature (or a key of another type): False."""
    if not isinstance(signed, bytes | bytearray) or not isinstance(signature, bytes | bytearray):
        return False
    signed, signature = bytes(signed), bytes(signature)
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            algs = [hashes.SHA256()]
            if isinstance(key.curve, ec.SECP384R1):
                algs.append(hashes.SHA384())
            return any(_try(key.verify, signature, signed, ec.ECDSA(h)) for h in algs)
        if isinstance(key, rsa.RSAPublicKey):
            pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.AUTO)
            return (_try(key.verify, signature, signed, padding.PKCS1v15(), hashes.SHA256())
                    or _try(key.verify, signature, signed, pss, hashes.SHA256()))
        if isinstance(key, ed25519.Ed25519PublicKey):
            return _try(key.verify, signature, signed)
    except Exception:   # noqa: BLE001 - whatever the backend says about odd input, it is not a valid signature
        return False
    return False


def _try(verify, *args) -> bool:
    try:
        verify(*args)
        return True
    except (InvalidSignature, ValueError, TypeError):
        return False


# ------------------------------------------------------------------------------------------------
# Finding the signatures a manifest carries
# ------------------------------------------------------------------------------------------------


def candidates(manifest_raw: bytes, source_digest: str, read_blob) -> list[Candidate]:
    """The signatures one signature manifest carries. `read_blob(digest) -> bytes` gives a blob's bytes.

    Every layer is looked at by its media type, whatever the manifest's artifactType:
    - SIMPLESIGNING (cosign's .sig tag image, OCI or Docker schema2, or cosign's OCI 1.1 signature
      referrer): one candidate, kind "cosign", payload = signed = the layer's bytes, signature = the
      base64-decoded ANN_SIGNATURE annotation; certificate/chain/rekor from ANN_CERTIFICATE, ANN_CHAIN,
      ANN_BUNDLE if present.
    - BUNDLE_V03 (a Sigstore bundle referrer): one candidate per DSSE signature, kind "bundle", payload =
      the in-toto statement, signed = the DSSE PAE; certificate/chain from the verification material,
      rekor from tlogEntries[0] if it has an inclusionPromise. A bundle holding a messageSignature
      (cosign sign-blob) is not an image signature and gives nothing.

    Malformed layers or bundles are skipped, as is a layer whose bytes do not match its sha256 digest;
    a malformed ANN_BUNDLE or tlog entry only leaves `rekor` None (a key check does not need it, a
    keyless one then fails for want of it). Errors of `read_blob` (a missing blob) are the caller's and
    propagate. A manifest that is neither layout (or not JSON, or an index) gives []."""
    try:
        doc = json.loads(manifest_raw)
    except (ValueError, UnicodeDecodeError, TypeError):
        return []
    if not isinstance(doc, dict) or not isinstance(doc.get("layers"), list):
        return []
    out: list[Candidate] = []
    for layer in doc["layers"]:
        if not isinstance(layer, dict):
            continue
        mtype = layer.get("mediaType")
        if mtype == SIMPLESIGNING:
            c = _simplesigning(layer, source_digest, read_blob)
            if c is not None:
                out.append(c)
        elif mtype in BUNDLE_MEDIA_TYPES:
            data = _layer_bytes(layer, read_blob)
            if data is not None:
                out += _bundle(data, source_digest)
    return out


def _layer_bytes(layer: dict, read_blob) -> bytes | None:
    digest = layer.get("digest")
    if not isinstance(digest, str) or ":" not in digest:
        return None
    data = read_blob(digest)
    if not isinstance(data, bytes | bytearray):
        return None
    data = bytes(data)
    algo, hexd = digest.split(":", 1)
    if algo == "sha256" and hashlib.sha256(data).hexdigest() != hexd:
        return None
    return data


def _simplesigning(layer: dict, source: str, read_blob) -> Candidate | None:
    ann = layer.get("annotations")
    if not isinstance(ann, dict):
        return None
    signature = _b64_std(ann.get(ANN_SIGNATURE))
    if not signature:
        return None
    payload = _layer_bytes(layer, read_blob)
    if payload is None:
        return None
    cert, chain = ann.get(ANN_CERTIFICATE), ann.get(ANN_CHAIN)
    return Candidate(
        source=source, kind="cosign", payload=payload, signature=signature, signed=payload,
        certificate=cert.encode() if isinstance(cert, str) and cert.strip() else None,
        chain=chain.encode() if isinstance(chain, str) and chain.strip() else None,
        rekor=_rekor_annotation(ann.get(ANN_BUNDLE)),
    )


def _rekor_annotation(text) -> Rekor | None:
    """cosign's bundle annotation: {"SignedEntryTimestamp": b64, "Payload": {"body": b64,
    "integratedTime": int, "logIndex": int, "logID": hex}}."""
    if not isinstance(text, str):
        return None
    try:
        doc = json.loads(text)
        p = doc["Payload"]
        set_ = _b64_std(doc["SignedEntryTimestamp"])
        body, log_id = p["body"], p["logID"]
        integrated, index = p["integratedTime"], p["logIndex"]
    except (ValueError, KeyError, TypeError):
        return None
    if (not set_ or not isinstance(body, str) or not isinstance(log_id, str)
            or not _is_int(integrated) or not _is_int(index)):
        return None
    return Rekor(set=set_, body=body, integrated_time=integrated, log_index=index, log_id=log_id)


def _bundle(data: bytes, source: str) -> list[Candidate]:
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return []
    if not isinstance(doc, dict) or doc.get("mediaType") not in BUNDLE_MEDIA_TYPES:
        return []
    env = doc.get("dsseEnvelope")
    if not isinstance(env, dict):          # messageSignature: sign-blob, not an image signature
        return []
    payload = _b64_any(env.get("payload"))
    ptype = env.get("payloadType")
    sigs = env.get("signatures")
    if payload is None or not isinstance(ptype, str) or not isinstance(sigs, list):
        return []
    signed = pae(ptype, payload)
    material = doc.get("verificationMaterial")
    material = material if isinstance(material, dict) else {}
    cert, chain = _bundle_certificates(material)
    rekor = _rekor_tlog(material.get("tlogEntries"))
    out = []
    for s in sigs:
        sig = _b64_any(s.get("sig")) if isinstance(s, dict) else None
        if sig:
            out.append(Candidate(source=source, kind="bundle", payload=payload, signature=sig, signed=signed,
                                 certificate=cert, chain=chain, rekor=rekor))
    return out


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE's pre-authentication encoding: what a DSSE signature is over."""
    t = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


def _bundle_certificates(material: dict) -> tuple[bytes | None, bytes | None]:
    """(leaf PEM, rest of the chain PEM-concatenated) from a bundle's verification material."""
    ders: list[bytes] = []
    if isinstance(material.get("certificate"), dict):
        der = _b64_any(material["certificate"].get("rawBytes"))
        ders = [der] if der else []
    elif isinstance(material.get("x509CertificateChain"), dict):
        certs = material["x509CertificateChain"].get("certificates")
        for c in certs if isinstance(certs, list) else []:
            der = _b64_any(c.get("rawBytes")) if isinstance(c, dict) else None
            if not der:
                return None, None
            ders.append(der)
    if not ders:
        return None, None
    return _pem(ders[0]), (b"".join(_pem(d) for d in ders[1:]) or None)


def _pem(der: bytes) -> bytes:
    b64 = base64.b64encode(der)
    lines = b"".join(b64[i:i + 64] + b"\n" for i in range(0, len(b64), 64))
    return b"-----BEGIN CERTIFICATE-----\n" + lines + b"-----END CERTIFICATE-----\n"


def _rekor_tlog(entries) -> Rekor | None:
    """Rekor from a bundle's tlogEntries[0], if it carries an inclusion promise (a SET)."""
    if not isinstance(entries, list) or not entries or not isinstance(entries[0], dict):
        return None
    e = entries[0]
    try:
        promise = e["inclusionPromise"]
        set_ = _b64_any(promise["signedEntryTimestamp"])
        log_id = _b64_any(e["logId"]["keyId"])
        body = e["canonicalizedBody"]
        index, integrated = _int(e["logIndex"]), _int(e["integratedTime"])
    except (KeyError, TypeError, ValueError):
        return None
    if not set_ or not log_id or not isinstance(body, str) or index is None or integrated is None:
        return None
    return Rekor(set=set_, body=body, integrated_time=integrated, log_index=index, log_id=log_id.hex())


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _int(v) -> int | None:
    """protojson's int64: a decimal string (or, leniently, a JSON integer)."""
    if _is_int(v):
        return v
    if isinstance(v, str) and re.fullmatch(r"-?[0-9]+", v):
        return int(v)
    return None


def _b64_std(s) -> bytes | None:
    """Standard base64, padded, as cosign's annotations carry it."""
    if not isinstance(s, str):
        return None
    try:
        return base64.b64decode(s.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None


def _b64_any(s) -> bytes | None:
    """base64 as protojson accepts it for bytes fields: standard or URL-safe, padded or not."""
    if not isinstance(s, str):
        return None
    s = s.strip().rstrip("=")
    if "-" in s or "_" in s:
        s = s.replace("-", "+").replace("_", "/")
    try:
        return base64.b64decode(s + "=" * (-len(s) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None


# ------------------------------------------------------------------------------------------------
# What a signature is for
# ------------------------------------------------------------------------------------------------


def subject(c: Candidate) -> tuple[str | None, str | None]:
    """(the manifest digest the payload names, its docker-reference or None); (None, None) when the
    payload is not an image signature.

    cosign: simple-signing JSON, critical.type SIMPLESIGNING_TYPE (or COSIGN_SIGN_PREDICATE):
    critical.image["docker-manifest-digest"], critical.identity["docker-reference"].
    bundle: in-toto statement (v0.1 or v1) with predicateType COSIGN_SIGN_PREDICATE:
    "sha256:" + subject[0].digest.sha256, and subject[0].name (or None)."""
    try:
        doc = json.loads(c.payload)
    except (ValueError, UnicodeDecodeError, TypeError):
        return None, None
    if not isinstance(doc, dict):
        return None, None
    if c.kind == "cosign":
        return _simplesigning_subject(doc)
    if c.kind == "bundle":
        return _statement_subject(doc)
    return None, None


def _simplesigning_subject(doc: dict) -> tuple[str | None, str | None]:
    crit = doc.get("critical")
    if not isinstance(crit, dict) or crit.get("type") not in (SIMPLESIGNING_TYPE, COSIGN_SIGN_PREDICATE):
        return None, None
    image, identity = crit.get("image"), crit.get("identity")
    digest = image.get("docker-manifest-digest") if isinstance(image, dict) else None
    if not isinstance(digest, str) or not digest:
        return None, None
    ref = identity.get("docker-reference") if isinstance(identity, dict) else None
    return digest, ref if isinstance(ref, str) and ref else None


def _statement_subject(doc: dict) -> tuple[str | None, str | None]:
    if doc.get("_type") not in IN_TOTO_STATEMENTS or doc.get("predicateType") != COSIGN_SIGN_PREDICATE:
        return None, None
    subjects = doc.get("subject")
    if not isinstance(subjects, list) or not subjects or not isinstance(subjects[0], dict):
        return None, None
    first = subjects[0]
    digests = first.get("digest")
    hexd = digests.get("sha256") if isinstance(digests, dict) else None
    if not isinstance(hexd, str) or not _SHA256_HEX.fullmatch(hexd):
        return None, None
    name = first.get("name")
    return "sha256:" + hexd, name if isinstance(name, str) and name else None


# ------------------------------------------------------------------------------------------------
# The check against keys
# ------------------------------------------------------------------------------------------------


def repository(reference: str) -> str:
    """A reference without its '@digest' and ':tag' (a ':' after the last '/' only, so a registry's
    port stays). Nothing else is normalised: 'docker.io/library/alpine', 'index.docker.io/library/alpine'
    and 'alpine' are three different repositories here, compared case-sensitively."""
    ref = reference.split("@", 1)[0]
    slash = ref.rfind("/")
    colon = ref.rfind(":")
    if colon > slash:
        ref = ref[:colon]
    return ref


def check_with_keys(cands: list[Candidate], keys: dict[str, object], digest: str,
                    reference: str | None = None) -> Verdict:
    """Does any candidate verify with any of `keys` (name -> key from load_public_key) and name `digest`?

    With `reference` (match_reference), the payload's docker-reference must also name the same
    repository: both sides lose a ':tag' / '@digest' suffix, the rest is compared as is (see
    :func:`repository`; no docker.io / library/ normalisation). Keys are tried in the dict's order.
    The verdict's policy is left None for the caller to fill.

    Failure reasons, the first that applies:
      "no signature found"
      "signed by K, but the payload names another digest (D)"
      "signed by K, but the payload is not a cosign image signature"   (no digest in it at all)
      "signed by K for R, not for REF"                                  (R: "no reference" if none)
      "no signature verifies with K1, K2 (N found: signed by another key, or over other bytes)"
    """
    if not cands:
        return Verdict(False, "no signature found")
    other_digest: str | None = None
    not_image: str | None = None
    wrong_ref: str | None = None
    for c in cands:
        for name, key in keys.items():
            if not verify_signature(key, c.signed, c.signature):
                continue
            named, payload_ref = subject(c)
            if named is None:
                not_image = not_image or f"signed by {name}, but the payload is not a cosign image signature"
            elif named != digest:
                other_digest = other_digest or f"signed by {name}, but the payload names another digest ({named})"
            elif reference is not None and (payload_ref is None
                                            or repository(payload_ref) != repository(reference)):
                wrong_ref = wrong_ref or f"signed by {name} for {payload_ref or 'no reference'}, not for {reference}"
            else:
                return Verdict(True, f"signed by {name}", signer=name, signature=c.source, reference=payload_ref)
            break   # this candidate verified with this key; another key will not change what it names
    reason = other_digest or not_image or wrong_ref or (
        f"no signature verifies with {', '.join(sorted(keys)) or 'no key'} "
        f"({len(cands)} found: signed by another key, or over other bytes)")
    return Verdict(False, reason)
