"""Test-only: keys, signatures and signature manifests written byte for byte as cosign writes them.

- :func:`gen_key`, :func:`sign` - the key kinds cosign signs with, and its signature schemes.
- :func:`simple_signing_payload` - cosign's payload, exactly as Go's json.Marshal writes it.
- :func:`sig_image` / :func:`sign_image` - cosign's ``sha256-<hex>.sig`` tag image.
- :func:`bundle_referrer` - cosign v3's Sigstore bundle v0.3 referrer (DSSE over an in-toto statement).

Push them with ``imagegen.push_raw``: the .sig image at ``imagegen.cosign_tag(digest)``, a referrer
by its own digest.
"""

from __future__ import annotations

import base64
import json

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from imagegen import EMPTY_CONFIG, OCI_CONFIG, OCI_MANIFEST, Artifact, Blob, Image, Layer, sha256_digest

SIMPLESIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
BUNDLE_V03 = "application/vnd.dev.sigstore.bundle.v0.3+json"
COSIGN_SIGN_PREDICATE = "https://sigstore.dev/cosign/sign/v1"
IN_TOTO = "application/vnd.in-toto+json"
ANN_SIGNATURE = "dev.cosignproject.cosign/signature"

KEY_KINDS = ("ecdsa-p256", "ecdsa-p384", "rsa", "ed25519")


def go_json(doc) -> bytes:
    """Go's json.Marshal of `doc` (keys in the given order, as a struct's fields are): compact,
    UTF-8 as is, and <, >, &, U+2028, U+2029 escaped as \\u003c..."""
    text = json.dumps(doc, separators=(",", ":"), ensure_ascii=False)
    for ch, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                    ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(ch, esc)    # such characters only occur inside JSON strings
    return text.encode()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# ------------------------------------------------------------------------------------------------
# Keys and signatures
# ------------------------------------------------------------------------------------------------


def gen_key(kind: str = "ecdsa-p256"):
    """(private key, public key PEM (SubjectPublicKeyInfo)) for kind ecdsa-p256 (cosign's default),
    ecdsa-p384, rsa (2048 bits), ed25519; also "ecdsa-p521" and "rsa-1024" to test refusals."""
    if kind == "ecdsa-p256":
        key = ec.generate_private_key(ec.SECP256R1())
    elif kind == "ecdsa-p384":
        key = ec.generate_private_key(ec.SECP384R1())
    elif kind == "ecdsa-p521":
        key = ec.generate_private_key(ec.SECP521R1())
    elif kind == "rsa":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    elif kind == "rsa-1024":
        key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    elif kind == "ed25519":
        key = ed25519.Ed25519PrivateKey.generate()
    else:
        raise ValueError(f"unknown key kind {kind!r}")
    return key, public_pem(key)


def public_pem(private_key) -> bytes:
    return private_key.public_key().public_bytes(serialization.Encoding.PEM,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo)


def private_pem(private_key) -> bytes:
    return private_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption())


def sign(private_key, data: bytes, *, pss: bool = False) -> bytes:
    """As cosign signs: ECDSA (ASN.1 DER) over SHA-256, RSA PKCS#1 v1.5 SHA-256 (`pss`: RSA-PSS
    SHA-256, salt the digest's length), Ed25519 pure."""
    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        return private_key.sign(data, ec.ECDSA(hashes.SHA256()))
    if isinstance(private_key, rsa.RSAPrivateKey):
        if pss:
            return private_key.sign(data, padding.PSS(mgf=padding.MGF1(hashes.SHA256()),
                                                      salt_length=padding.PSS.DIGEST_LENGTH), hashes.SHA256())
        return private_key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    if isinstance(private_key, ed25519.Ed25519PrivateKey):
        return private_key.sign(data)
    raise TypeError(f"cannot sign with {type(private_key).__name__}")


# ------------------------------------------------------------------------------------------------
# cosign's .sig tag image (simple signing)
# ------------------------------------------------------------------------------------------------


def simple_signing_payload(digest: str, reference: str) -> bytes:
    """cosign's payload for `digest`, exactly as it signs it (Go's json.Marshal, "optional": null)."""
    return go_json({
        "critical": {"identity": {"docker-reference": reference},
                     "image": {"docker-manifest-digest": digest},
                     "type": "cosign container image signature"},
        "optional": None,
    })


def _descriptor(blob: Blob, annotations: dict | None = None) -> dict:
    """A descriptor in go-containerregistry's field order: mediaType, size, digest, annotations."""
    d = {"mediaType": blob.media_type, "size": blob.size, "digest": blob.digest}
    if annotations:
        d["annotations"] = dict(sorted(annotations.items()))    # Go writes a map's keys sorted
    return d


def sig_image(signatures: list[tuple[bytes, bytes]], extra_annotations: dict | list | None = None,
              *, media_type: str = OCI_MANIFEST) -> Image:
    """cosign's .sig image: one simple-signing layer per (payload, signature), the signature in the
    layer's dev.cosignproject.cosign/signature annotation (base64), a config like cosign's.

    `extra_annotations`: one dict added to every layer, or a list of dicts (or None), one per
    signature (e.g. the certificate, chain or bundle annotation). `media_type` may be Docker schema2
    (then the config is a Docker config)."""
    if isinstance(extra_annotations, dict) or extra_annotations is None:
        extras = [extra_annotations or {}] * len(signatures)
    else:
        extras = [e or {} for e in extra_annotations]
        if len(extras) != len(signatures):
            raise ValueError("one extra_annotations entry per signature")
    layers = tuple(Layer(SIMPLESIGNING, payload, diff_id=sha256_digest(payload)) for payload, _ in signatures)
    config_type = OCI_CONFIG if media_type == OCI_MANIFEST else "application/vnd.docker.container.image.v1+json"
    # go-containerregistry's ConfigFile, fields in its order; cosign leaves all but rootfs empty.
    config = Blob(config_type, go_json({
        "architecture": "", "created": "0001-01-01T00:00:00Z",
        "history": [{"created": "0001-01-01T00:00:00Z"} for _ in layers],
        "os": "", "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
        "config": {},
    }))
    doc = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": _descriptor(config),
        "layers": [_descriptor(layer, {ANN_SIGNATURE: b64(sig), **extra})
                   for layer, (_, sig), extra in zip(layers, signatures, extras, strict=True)],
    }
    return Image(Blob(media_type, go_json(doc)), config, layers, None)


def sign_image(image_digest: str, reference: str, private_key) -> Image:
    """The .sig image cosign pushes for `image_digest` signed with `private_key`."""
    payload = simple_signing_payload(image_digest, reference)
    return sig_image([(payload, sign(private_key, payload))])


def rekor_annotation(set_: bytes, body: str, integrated_time: int, log_index: int, log_id: str) -> str:
    """cosign's dev.sigstore.cosign/bundle annotation (a Rekor SET and the entry it is over)."""
    return go_json({"SignedEntryTimestamp": b64(set_),
                    "Payload": {"body": body, "integratedTime": integrated_time,
                                "logIndex": log_index, "logID": log_id}}).decode()


# ------------------------------------------------------------------------------------------------
# cosign v3: a Sigstore bundle v0.3 referrer
# ------------------------------------------------------------------------------------------------


def in_toto_statement(digest: str, name: str | None = None, predicate_type: str = COSIGN_SIGN_PREDICATE) -> bytes:
    """An in-toto v1 statement naming `digest` (and `name`, if given) with cosign's sign predicate."""
    subj: dict = {"name": name} if name is not None else {}
    subj["digest"] = {"sha256": digest.split(":", 1)[1]}
    return go_json({"_type": "https://in-toto.io/Statement/v1", "subject": [subj],
                    "predicateType": predicate_type, "predicate": {}})


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE's pre-authentication encoding (written here independently of mirror.trust.cosign)."""
    t = payload_type.encode()
    return b"DSSEv1 " + str(len(t)).encode() + b" " + t + b" " + str(len(payload)).encode() + b" " + payload


def bundle_json(statement: bytes, signature: bytes, *, key_hint: str = "", certificate_der: bytes | None = None,
                chain_der: list[bytes] | None = None, tlog_entry: dict | None = None) -> bytes:
    """A Sigstore bundle v0.3 with a DSSE envelope over `statement`; `signature` over its PAE.
    Verification material: the certificate if given (`chain_der`: an x509CertificateChain of these
    DER certificates instead), else a public-key hint; `tlog_entry` as tlogEntries[0]."""
    if chain_der is not None:
        material: dict = {"x509CertificateChain": {"certificates": [{"rawBytes": b64(d)} for d in chain_der]}}
    elif certificate_der is not None:
        material = {"certificate": {"rawBytes": b64(certificate_der)}}
    else:
        material = {"publicKey": {"hint": key_hint}}
    material["tlogEntries"] = [tlog_entry] if tlog_entry is not None else []
    return go_json({
        "mediaType": BUNDLE_V03,
        "verificationMaterial": material,
        "dsseEnvelope": {"payload": b64(statement), "payloadType": IN_TOTO,
                         "signatures": [{"sig": b64(signature), "keyid": ""}]},
    })


def bundle_image(subject_image: Artifact, bundle: bytes) -> Image:
    """The OCI referrer cosign v3 pushes for a bundle: artifactType BUNDLE_V03, empty config, the bundle
    as its one layer, `subject` = the signed image."""
    layer = Layer(BUNDLE_V03, bundle, diff_id=sha256_digest(bundle))
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": BUNDLE_V03,
        "config": _descriptor(EMPTY_CONFIG),
        "layers": [_descriptor(layer)],
        "subject": _descriptor(subject_image.manifest),
        "annotations": {"dev.sigstore.bundle.content": "dsse-envelope",
                        "dev.sigstore.bundle.predicateType": COSIGN_SIGN_PREDICATE,
                        "org.opencontainers.image.created": "1970-01-01T00:00:00Z"},
    }
    return Image(Blob(OCI_MANIFEST, go_json(doc)), EMPTY_CONFIG, (layer,), None)


def bundle_referrer(subject_image: Artifact, private_key, digest: str | None = None, key_hint: str = "",
                    certificate_der: bytes | None = None, tlog_entry: dict | None = None,
                    *, name: str | None = "registry.example/test/signed") -> Image:
    """cosign v3's signature of `subject_image` with `private_key`: a bundle referrer whose statement
    names `digest` (default: the subject's; pass another to make a bad one) and `name`."""
    statement = in_toto_statement(digest or subject_image.digest, name)
    bundle = bundle_json(statement, sign(private_key, pae(IN_TOTO, statement)), key_hint=key_hint,
                         certificate_der=certificate_der, tlog_entry=tlog_entry)
    return bundle_image(subject_image, bundle)


def blobs_of(*images: Image) -> dict[str, bytes]:
    """digest -> bytes of every blob of `images`: a read_blob for mirror.trust.cosign.candidates."""
    return {b.digest: b.data for img in images for b in img.blobs()}
