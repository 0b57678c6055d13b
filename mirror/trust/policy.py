"""The trust policy of mirror.yaml applied to one image: which rule covers it, the signatures
found for it (as candidates), and the verdict. Where the signatures come from is the caller's
business: the registry outside (engine/images.py), the bundle inside (bundle/trustcheck.py)."""

from __future__ import annotations

import functools
import json

from ..core.oci import digest_hex
from ..core.spec import TrustRule, TrustSpec
from .types import BUNDLE_V03, SIMPLESIGNING, Candidate, Verdict

SIG_ARTIFACT = "application/vnd.dev.cosign.artifact.sig.v1+json"   # cosign's OCI 1.1 signature referrers


def sig_tag(digest: str) -> str:
    """cosign's signature tag for a digest: `sha256-<hex>.sig`."""
    return f"sha256-{digest_hex(digest)}.sig"


def is_signature_manifest(raw: bytes) -> bool:
    """A manifest that carries signatures: cosign's .sig image (simple-signing layers) or a Sigstore
    bundle / cosign signature referrer."""
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return False
    if not isinstance(doc, dict):
        return False
    if doc.get("artifactType") in (BUNDLE_V03, SIG_ARTIFACT):
        return True
    layers = doc.get("layers")
    return isinstance(layers, list) and any(isinstance(x, dict) and x.get("mediaType") in (SIMPLESIGNING, BUNDLE_V03)
                                            for x in layers)


def find_candidates(manifests: list[tuple[bytes, str]], read_blob) -> list[Candidate]:
    """Every signature the given manifests (raw bytes, digest) carry."""
    from .cosign import candidates
    out: list[Candidate] = []
    for raw, digest in manifests:
        out += candidates(raw, digest, read_blob)
    return out


@functools.lru_cache(maxsize=64)
def _key(pem: bytes):
    from .cosign import load_public_key
    return load_public_key(pem)


@functools.lru_cache(maxsize=8)
def _root(raw: bytes):
    from .keyless import load_trusted_root
    return load_trusted_root(raw)


def judge(trust: TrustSpec, rule: TrustRule | None, cands: list[Candidate], digest: str,
          repository: str) -> Verdict:
    """The verdict for one image whose registry digest is `digest` (before any platform filter)
    under `rule` (None: no policy covers it, nothing is checked)."""
    if rule is None:
        return Verdict(True, "no policy covers it: not checked")
    if rule.accept_unsigned:
        return Verdict(True, "accepted unsigned (accept: unsigned)", policy=rule.name)
    reference = repository if rule.match_reference else None
    if rule.keyless:
        from .keyless import check_keyless
        k = rule.keyless
        v = check_keyless(cands, _root(k.root_json), k.issuer, k.identity, digest, reference)
    else:
        from .cosign import check_with_keys
        v = check_with_keys(cands, {n: _key(trust.keys[n]) for n in rule.signed_by}, digest, reference)
    return Verdict(v.ok, v.reason, rule.name, v.signer, v.signature, v.reference)
