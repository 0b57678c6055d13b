"""What `imgmirror prune` needs of a registry besides reading and pushing images: the catalog of
its repositories, and deleting a manifest by digest.

Both go through the Transport: its one retry policy (`retrying`: connection faults, 408, 429,
5xx), its auth and its error mapping. A 405 is never retried (it is not transient): it is how a
registry says that deletes are switched off, and it becomes DeletesDisabledError, whose message
names what to configure.
"""

from __future__ import annotations


from ..core.oci import digest_hex
from ..core.reference import join_ref
from ..errors import AuthError, NotFoundError, RegistryError
from .client import list_pages
from .transport import Transport, describe_errors

MAX_CATALOG_PAGES = 10_000
MAX_CATALOG_PAGE_BYTES = 16 * 1024 * 1024
CATALOG_SCOPE = frozenset({"registry:catalog:*"})

# What a registry without deletes needs, in its operator's words.
DELETE_HINT = ("deletes are switched off in its configuration: enable them (distribution/registry:2: "
               "storage.delete.enabled: true in config.yml, or REGISTRY_STORAGE_DELETE_ENABLED=true, then "
               "restart it; other registries: their setting or permission that allows deleting "
               "manifests) and run prune --yes again")


class DeletesDisabledError(RegistryError):
    """The registry refuses every manifest delete (405, or UNSUPPORTED): a setting, not a fault."""


def _delete(repo: str) -> frozenset:
    # distribution asks for the `delete` action on a DELETE (its token scopes: pull, push, delete)
    return frozenset({f"repository:{repo}:delete"})


async def catalog(t: Transport, page_size: int = 1000) -> list[str]:
    """Every repository of the registry (`GET /v2/_catalog`), following `Link: <…>; rel="next"`
    to the end. A registry that keeps its catalog to itself (404, 401/403) is named so."""
    what = f"catalog of {t.settings.host}"
    try:
        return await list_pages(t, f"/v2/_catalog?n={page_size}", "repositories", CATALOG_SCOPE, what,
                                MAX_CATALOG_PAGE_BYTES, MAX_CATALOG_PAGES)
    except (NotFoundError, AuthError) as exc:
        raise type(exc)(f"{exc}; prune lists the repositories under the prefix with the catalog API "
                        "(GET /v2/_catalog), which this registry does not offer to these credentials",
                        status=exc.status, code=exc.code, errors=exc.errors) from None


async def delete_manifest(t: Transport, repo: str, digest: str) -> bool:
    """DELETE /v2/<repo>/manifests/<digest>: True when deleted, False when it was not there (a
    404: deleting is idempotent, and a retry after a lost answer meets one). distribution deletes
    by digest only, and every tag on that digest in `repo` goes with it.

    Raises DeletesDisabledError when the registry does not allow deletes (405 or UNSUPPORTED),
    AuthError when these credentials may not delete, other RegistryErrors as mapped."""
    digest_hex(digest)          # validated: it goes into a URL
    what = f"delete of {join_ref(f'{t.settings.host}/{repo}', digest)}"
    try:
        async with t.meta:
            resp = await t.open("DELETE", f"/v2/{repo}/manifests/{digest}", scopes=_delete(repo),
                                ok=(200, 202, 204, 404), what=what)
            resp.release()
    except AuthError as exc:
        raise AuthError(f"{exc} (deleting needs the delete permission on the repository)",
                        status=exc.status, code=exc.code, errors=exc.errors) from None
    except RegistryError as exc:
        if exc.status == 405 or "UNSUPPORTED" in exc.codes:
            said = f"{exc.status}" + (f" {describe_errors(exc.errors)}" if exc.errors else "")
            raise DeletesDisabledError(f"{t.settings.host} refuses to delete manifests ({said}): {DELETE_HINT}",
                                       status=exc.status, code=exc.code, errors=exc.errors) from None
        raise
    return resp.status != 404
