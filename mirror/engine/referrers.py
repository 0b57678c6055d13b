"""Discovering what refers to a manifest: signatures, SBOMs, attestations (`referrers: true`).

Three places are looked at, for one subject digest in one repository:

1. the OCI 1.1 referrers API, `GET /v2/<repo>/referrers/<digest>`: an image index whose
   `manifests` are the referrers (pages joined through `Link: <…>; rel="next"`). A registry
   without the API (distribution 2.8 answers 404 "page not found") or one that refuses the
   request (400, 405) is not an error: the tags below are what clients use there;
2. the OCI 1.1 fallback tag `sha256-<hex>`: an index listing the referrers, kept by OCI 1.1
   clients (oras, cosign with OCI 1.1 mode, notation) on registries without the API. The tag
   itself is returned, not its children: it is an index, so mirroring it brings the children
   along, and the target registry gets the tag that its own clients look for;
3. cosign's tags `sha256-<hex>.sig`, `.att` and `.sbom` (signatures, attestations, SBOMs
   stored under a tag derived from the digest; they carry no `subject`).

The tags are looked at whatever the API answers: a registry may have gained the API after
referrers were pushed in tag form, and cosign's tags are never listed by the API anyway.

What comes back are references to append to `<registry>/<repo>`: `@sha256:<hex>` for a
referrer found through the API, `:<tag>` for a tag. The caller mirrors each as one more image of
the same repository.

Not recursive: referrers of referrers (a signature of an SBOM, an attestation's signature) are
not looked for. Call `discover` again on a referrer's digest to get them.
"""

from __future__ import annotations

import asyncio
import json
from urllib.parse import urljoin

from ..errors import RegistryError, UnsupportedManifestError
from ..core.oci import MANIFEST_TYPES, OCI_INDEX, Descriptor, digest_hex
from ..registry.client import Registry, _next_link, head_manifest, pull_scope
from ..registry.transport import read_capped

COSIGN_SUFFIXES = (".sig", ".att", ".sbom")
MAX_REFERRER_PAGES = 1000            # a referrers list that never ends stops here
MAX_REFERRERS_BYTES = 4 * 1024 * 1024   # one page is an index: the manifest size limit applies
_NO_API = (400, 404, 405)             # "no referrers API here": fall back to the tags


def fallback_tag(digest: str) -> str:
    """The OCI 1.1 referrers fallback tag of a digest: `sha256:<hex>` -> `sha256-<hex>`."""
    return f"sha256-{digest_hex(digest)}"


def cosign_tags(digest: str) -> list[str]:
    """cosign's tags for a digest: `sha256-<hex>.sig`, `.att`, `.sbom`, in that order."""
    return [fallback_tag(digest) + s for s in COSIGN_SUFFIXES]


async def discover(reg: Registry, repo: str, digest: str) -> list[str]:
    """The refs (`@sha256:<hex>` or `:<tag>`) of everything in `repo` that refers to `digest`.

    Order: referrers from the API (in the registry's order, pages in turn), then the fallback
    tag, then the cosign tags `.sig`, `.att`, `.sbom`; no duplicates. A subject with no
    referrers gives `[]`. Errors other than "not there" (auth refused, 5xx after retries, a
    malformed referrers index) raise the MirrorError the transport or parser raises.
    Not recursive: see the module docstring."""
    tags = [fallback_tag(digest), *cosign_tags(digest)]
    # All five requests at once; every one is awaited to the end, then the first error raised.
    results = await asyncio.gather(referrers_api(reg, repo, digest),
                                   *(tag_exists(reg, repo, t) for t in tags), return_exceptions=True)
    for r in results:
        if isinstance(r, BaseException):
            raise r
    api, *present = results
    refs = [f"@{d.digest}" for d in api or ()]
    refs += [f":{t}" for t, there in zip(tags, present, strict=True) if there]
    return list(dict.fromkeys(refs))


async def tag_exists(reg: Registry, repo: str, tag: str) -> bool:
    """True when `repo:tag` is a manifest (HEAD 200), False on 404; other answers raise."""
    return (await head_manifest(reg.t, repo, tag, pull_scope(repo), missing_ok=True))[0]


async def referrers_api(reg: Registry, repo: str, digest: str) -> list[Descriptor] | None:
    """The referrers of `digest` from the OCI referrers API, all pages joined; None when the
    registry has no such API (404, 400, 405 on the first page).

    Descriptors whose media type imgmirror cannot mirror (not an OCI/Docker manifest or index,
    e.g. the withdrawn `application/vnd.oci.artifact.manifest.v1+json`) are left out."""
    digest_hex(digest)     # validated: it goes into a URL
    url = f"/v2/{repo}/referrers/{digest}"
    what = f"referrers of {reg.host}/{repo}@{digest}"
    found: list[Descriptor] = []
    async def fetch(url: str, first: bool):
        resp = await reg.t.open("GET", url, scopes=pull_scope(repo), headers={"Accept": OCI_INDEX},
                                ok=(200, *_NO_API) if first else (200,), what=what, retry=False)
        async with resp:
            if resp.status != 200:
                return None
            return (await read_capped(resp, MAX_REFERRERS_BYTES, what), resp.headers.get("Link", ""),
                    str(resp.url))
    for page in range(MAX_REFERRER_PAGES):
        async with reg.t.meta:
            got = await reg.t.retrying(lambda u=url, first=page == 0: fetch(u, first))
        if got is None:
            return None
        raw, link, base = got
        found.extend(_parse_page(raw, what))
        nxt = _next_link(link)
        if not nxt:
            return found
        url = urljoin(base, nxt)
    raise RegistryError(f"{what}: more than {MAX_REFERRER_PAGES} pages; refused")




def _parse_page(raw: bytes, what: str) -> list[Descriptor]:
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise UnsupportedManifestError(f"{what}: the answer is not JSON ({exc})") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("manifests", []), list):
        raise UnsupportedManifestError(f"{what}: the answer is not an image index")
    descs = [Descriptor.from_json(m, f"{what} manifests[{i}]")
             for i, m in enumerate(obj.get("manifests") or [])]
    return [d for d in descs if d.media_type in MANIFEST_TYPES]
