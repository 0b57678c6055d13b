"""The trust policy checked inside, offline, from a bundle alone (`verify --policy`, `push
--policy`, `serve --policy`).

For every image of the bundle a policy covers: the signatures the bundle carries for the
registry's digest of it (cosign's `sha256-<hex>.sig` image of the same repository, OCI 1.1
referrers whose `subject` names that digest, and the children of the `sha256-<hex>` fallback
index) are checked as outside. When the image is a filtered index, its registry digest is the
one its `io.imgmirror.source.digest` annotation names, and the chain is checked too: the
original index bytes are in the bundle and hash to that digest, and every child the filtered
index keeps is listed in the original with the same descriptor (a nested index that was
filtered in turn: the same, one level down, its own source digest in place of its digest).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from ..core.oci import ANN_SOURCE_DIGEST, INDEX_TYPES, Descriptor, digest_hex
from ..core.reference import Reference, ReferenceError_, parse_reference
from ..core.spec import TrustSpec
from ..errors import MirrorError
from ..trust.policy import find_candidates, judge
from ..trust.types import Verdict

_REFERRER_TAG = re.compile(r"^sha256-[0-9a-f]{64}(\.(sig|att|sbom))?$")


@dataclass(frozen=True)
class Judged:
    """One image of a bundle and the policy's verdict on it."""

    reference: str
    digest: str
    verdict: Verdict

    def to_json(self) -> dict:
        return {"reference": self.reference, "digest": self.digest, **self.verdict.to_json()}


def _doc(source, digest: str) -> dict:
    try:
        doc = json.loads(source.read(digest))
    except (ValueError, UnicodeDecodeError):
        return {}
    return doc if isinstance(doc, dict) else {}


def is_referrer_entry(parsed: Reference, doc: dict) -> bool:
    """A signature, attestation or SBOM travelling with an image: judged with its subject, not alone."""
    return bool(parsed.tag and _REFERRER_TAG.match(parsed.tag)) or isinstance(doc.get("subject"), dict)


def check_bundle(source, images: list[tuple[str | None, Descriptor]], trust: TrustSpec) -> list[Judged]:
    """The verdict on every named image of a bundle (`source`: a BundleReader or MultiBundle,
    `images`: its index.json entries); images no policy covers are listed as not checked."""
    entries = _Entries(source, images)
    out = list(entries.bad)
    for ref, desc, parsed, doc in entries.all:
        if is_referrer_entry(parsed, doc):
            continue
        rule = trust.rule_for(ref, parsed.name)
        signed = (doc.get("annotations") or {}).get(ANN_SOURCE_DIGEST) or desc.digest
        if rule is None or rule.accept_unsigned:
            out.append(Judged(ref, signed, judge(trust, rule, [], signed, parsed.name)))
            continue
        try:
            if signed != desc.digest:
                _check_chain(source, desc.digest)
            cands = find_candidates(entries.signature_manifests(parsed.name, signed),
                                    lambda d: source.read(d) if source.has(d) else b"")
        except MirrorError as exc:
            out.append(Judged(ref, signed, Verdict(False, str(exc), rule.name)))
            continue
        out.append(Judged(ref, signed, judge(trust, rule, cands, signed, parsed.name)))
    return out


class _Entries:
    """A bundle's named entries read once: reference parsed, manifest parsed, and indexed by
    (repository, tag) and by subject digest, so each image's signatures are found directly."""

    def __init__(self, source, images):
        self.source = source
        self.all: list[tuple[str, Descriptor, Reference, dict]] = []
        self.by_tag: dict[tuple[str, str], list[tuple[Descriptor, dict]]] = {}
        self.by_subject: dict[tuple[str, str], list[tuple[Descriptor, dict]]] = {}
        self.bad: list[Judged] = []          # names that are no reference: judged failed
        for ref, desc in images:
            if not ref:
                continue
            try:
                parsed = parse_reference(ref)
            except ReferenceError_ as exc:
                self.bad.append(Judged(ref, desc.digest, Verdict(False, f"not a reference ({exc})")))
                continue
            doc = _doc(source, desc.digest) if source.has(desc.digest) else {}
            self.all.append((ref, desc, parsed, doc))
            if parsed.tag:
                self.by_tag.setdefault((parsed.name, parsed.tag), []).append((desc, doc))
            subject = doc.get("subject")
            if isinstance(subject, dict) and isinstance(subject.get("digest"), str):
                self.by_subject.setdefault((parsed.name, subject["digest"]), []).append((desc, doc))

    def signature_manifests(self, repository: str, digest: str) -> list[tuple[bytes, str]]:
        """The manifests in the bundle that may carry signatures of `digest` in `repository`:
        cosign's .sig image, the OCI fallback index's children, referrers whose subject it is."""
        tag = f"sha256-{digest_hex(digest)}"
        found: dict[str, None] = {}
        for desc, doc in (self.by_tag.get((repository, tag), []) + self.by_tag.get((repository, tag + ".sig"), [])
                          + self.by_subject.get((repository, digest), [])):
            found[desc.digest] = None
            if desc.media_type in INDEX_TYPES or doc.get("manifests"):
                for child in doc.get("manifests") or []:
                    if isinstance(child, dict) and self.source.has(str(child.get("digest"))):
                        found[child["digest"]] = None
        return [(self.source.read(d), d) for d in found]


def _check_chain(source, digest: str, depth: int = 0) -> None:
    """A filtered index back to the index its signature covers; MirrorError saying where it breaks."""
    if depth > 8:
        raise MirrorError("indexes nested too deep")
    doc = _doc(source, digest)
    original_digest = (doc.get("annotations") or {}).get(ANN_SOURCE_DIGEST)
    if not original_digest:
        return
    if not source.has(original_digest):
        raise MirrorError(f"the index {digest} was filtered from {original_digest}, whose bytes are not in "
                          "the bundle: the signature cannot be traced to it (sync it again with the policy)")
    try:
        original = json.loads(source.read(original_digest))      # read() verifies the digest
    except MirrorError as exc:
        raise MirrorError(f"the original index bytes are damaged: {exc}") from None
    listed = [c for c in original.get("manifests") or [] if isinstance(c, dict)]
    for child in doc.get("manifests") or []:
        expect = dict(child)
        sub = _doc(source, child.get("digest", "")) if source.has(str(child.get("digest"))) else {}
        sub_source = (sub.get("annotations") or {}).get(ANN_SOURCE_DIGEST)
        if sub_source:          # a nested index filtered in turn: listed under its own source
            _check_chain(source, child["digest"], depth + 1)
            expect["digest"], expect["size"] = sub_source, source.size(sub_source)
        if expect not in listed:
            raise MirrorError(f"the filtered index {digest} lists {child.get('digest')}, which the signed "
                              f"index {original_digest} does not list with that descriptor")


def partition(source, entries: list[tuple[str | None, Descriptor]], trust: TrustSpec
              ) -> tuple[list[tuple[str | None, Descriptor]], list[Judged]]:
    """The entries of a bundle that pass `trust`, and the verdicts of the images that do not.
    The signatures, attestations and SBOMs that travel with a refused image go with it."""
    refused = [j for j in check_bundle(source, entries, trust) if not j.verdict.ok]
    if not refused:
        return entries, []
    tags = {f"sha256-{digest_hex(j.digest)}" for j in refused}
    names = {j.reference for j in refused}

    def travels_with_refused(ref: str) -> bool:
        tail = ref.rsplit(":", 1)[-1] if "@" not in ref else ""
        return ref in names or any(tail == t or tail.startswith(t + ".") for t in tags)
    return [(ref, desc) for ref, desc in entries if not travels_with_refused(ref or "")], refused
