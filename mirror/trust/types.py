"""What the signature checks exchange: pure data, no crypto here."""

from __future__ import annotations

from dataclasses import dataclass

SIMPLESIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"     # a .sig tag's layers
BUNDLE_V03 = "application/vnd.dev.sigstore.bundle.v0.3+json"            # a Sigstore bundle
ANN_SIGNATURE = "dev.cosignproject.cosign/signature"
ANN_CERTIFICATE = "dev.sigstore.cosign/certificate"
ANN_CHAIN = "dev.sigstore.cosign/chain"
ANN_BUNDLE = "dev.sigstore.cosign/bundle"
COSIGN_SIGN_PREDICATE = "https://sigstore.dev/cosign/sign/v1"          # cosign v3 image signature
SIMPLESIGNING_TYPE = "cosign container image signature"


@dataclass(frozen=True)
class Rekor:
    """A transparency-log entry's promise, as a signature carries it (cosign's bundle annotation
    or a Sigstore bundle's tlogEntries[0]): enough to check its SignedEntryTimestamp offline."""

    set: bytes                 # the SignedEntryTimestamp: the log's signature over the fields below
    body: str                  # the canonicalized entry body, base64, exactly as carried
    integrated_time: int       # seconds since the epoch: when the log took the entry
    log_index: int
    log_id: str                # hex sha256 of the log's public key (DER)


@dataclass(frozen=True)
class Candidate:
    """One signature found for an image, not yet checked."""

    source: str                # digest of the manifest that carried it (.sig manifest or bundle referrer)
    kind: str                  # "cosign": a .sig layer (simple signing); "bundle": Sigstore bundle v0.3 (DSSE)
    payload: bytes             # simple-signing JSON, or the DSSE payload (an in-toto statement)
    signature: bytes           # the raw signature (base64 decoded)
    signed: bytes              # exactly the bytes the signature is over: the payload, or the DSSE PAE
    certificate: bytes | None = None   # leaf certificate, PEM (keyless)
    chain: bytes | None = None         # intermediate and root certificates, PEM, if carried
    rekor: Rekor | None = None


@dataclass(frozen=True)
class Verdict:
    """The policy's answer for one image."""

    ok: bool
    reason: str                        # why not, or how ("signed by release", "accepted unsigned")
    policy: str | None = None          # the policy that matched, as `match` (None: no policy matched)
    signer: str | None = None          # key name, or "identity (issuer)" for keyless
    signature: str | None = None       # digest of the manifest that carried the verifying signature
    reference: str | None = None       # the payload's docker-reference, reported

    def to_json(self) -> dict:
        return {"ok": self.ok, "reason": self.reason, "policy": self.policy, "signer": self.signer,
                "signature": self.signature, "reference": self.reference}
