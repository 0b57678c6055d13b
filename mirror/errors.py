"""The one exception tree of imgmirror.

    MirrorError                  anything imgmirror reports to a person (exit 1 unless below)
    ├── UsageError               bad command line (exit 2)
    ├── SpecError                invalid mirror.yaml: file, line, key path (exit 2)
    ├── ReferenceError_          a string that is not an image reference
    ├── PlatformError            bad platform string, or no child matches the wanted platforms
    ├── RegistryError            the registry answered with an error (status, code)
    │   ├── AuthError            401/403: credentials missing or refused
    │   ├── NotFoundError        404: repository, tag, manifest or blob unknown
    │   └── TransientError       408/429/5xx or a connection fault, after retries ran out
    ├── DigestMismatchError      bytes received do not hash to the digest expected
    ├── UnsupportedManifestError schema1 or an unknown manifest media type
    ├── StoreError               the cache could not be used (disk, permissions)
    │   └── LockHeldError        another run holds the cache lock (exit 3)
    └── BundleError              the bundle could not be written or read, or is damaged
        └── NotABundleError      the path is not a bundle at all (exit 2)

Lower-level errors (aiohttp, OSError) are mapped to this tree once, at the adapter boundary;
the CLI maps the tree to exit codes in one place (`exit_code`).
"""

from __future__ import annotations


class MirrorError(Exception):
    """Base of every error imgmirror reports; the message is meant for a person."""

    exit_code = 1


class UsageError(MirrorError):
    """The command line is wrong."""

    exit_code = 2


class SpecError(MirrorError):
    """mirror.yaml is invalid; the message names file, line and key path."""

    exit_code = 2

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None,
                 path: str | None = None):
        self.file, self.line, self.path, self.reason = file, line, path, message
        where = ""
        if file:
            where = f"{file}:{line}" if line else file
        if path:
            where = f"{where} {path}" if where else path
        super().__init__(f"{where}: {message}" if where else message)


class ReferenceError_(MirrorError):
    """A string is not a valid image reference (trailing underscore: the builtin is taken)."""


class PlatformError(MirrorError):
    """A platform string is invalid, or an index holds none of the wanted platforms."""


class RegistryError(MirrorError):
    """A registry answered with an error status."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None,
                 errors: tuple[dict, ...] = ()):
        # `errors`: every entry of the registry's {"errors": [...]} answer (code, message, detail)
        self.status, self.code, self.errors = status, code, tuple(errors)
        super().__init__(message)

    @property
    def codes(self) -> set[str]:
        """Every error code the registry gave."""
        return {e["code"] for e in self.errors if e.get("code")} | ({self.code} if self.code else set())


class AuthError(RegistryError):
    """Authentication failed or access was denied."""


class NotFoundError(RegistryError):
    """The repository, tag, manifest or blob does not exist."""


class TransientError(RegistryError):
    """A fault worth retrying (408, 429, 5xx, connection errors) that outlived its retries."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None,
                 retry_after: float | None = None, errors: tuple[dict, ...] = ()):
        super().__init__(message, status=status, code=code, errors=errors)
        self.retry_after = retry_after


class DigestMismatchError(MirrorError):
    """Received bytes do not match the digest (or size) they were asked for."""


class UnsupportedManifestError(MirrorError):
    """A manifest of a kind imgmirror does not mirror (Docker schema1, unknown media type)."""


class StoreError(MirrorError):
    """The content-addressed cache could not be used."""


class LockHeldError(StoreError):
    """Another imgmirror run holds the cache lock."""

    exit_code = 3


class BundleError(MirrorError):
    """A bundle could not be written or read."""


class NotABundleError(BundleError):
    """The path is not a bundle at all (as opposed to a damaged one): a usage problem."""

    exit_code = 2


def exit_code(exc: BaseException) -> int:
    """The process exit code for an exception that reached the CLI."""
    if isinstance(exc, MirrorError):
        return exc.exit_code
    if isinstance(exc, KeyboardInterrupt):
        return 130
    return 1
