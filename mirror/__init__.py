"""imgmirror: mirror container images into an OCI image-layout bundle, digest for digest.

The public Python API (documented in README.md, "Python API"):

    import mirror
    result = mirror.sync("mirror.yaml", output="bundle.tar")      # -> SyncResult
    mirror.push("bundle.tar", "registry.internal:5000/mirror")    # -> PushResult
    mirror.verify("bundle.tar").ok                                # -> VerifyResult
    mirror.list_images("bundle.tar")                              # -> [ImageInfo, ...]
    with mirror.serve(["bundle.tar"], listen="127.0.0.1:0") as server: ...   # server.url

Errors are the tree rooted at MirrorError (mirror.errors). Importing this package is cheap: the
engine, aiohttp and the bundle reader load only when a function (or a result type) is used.
"""

__version__ = "0.1.0"

from .api import (ExtractResult, ImageInfo, Server, extract, list_images, push, serve, sync,  # noqa: E402
                  verify)
from .errors import (AuthError, BundleError, DigestMismatchError, LockHeldError, MirrorError,  # noqa: E402
                     NotABundleError, NotFoundError, PlatformError, ReferenceError_, RegistryError,
                     SpecError, StoreError, TransientError, UnsupportedManifestError, UsageError)
from .progress import Progress  # noqa: E402

# Result types whose modules are heavy (the engine imports aiohttp): loaded on first use (PEP 562).
_LAZY = ("SyncResult", "ImageReport", "PushResult", "PushReport", "VerifyResult", "SyncTotals",
         "PushTotals", "BundleSummary")


def __getattr__(name: str):
    if name in ("SyncResult", "ImageReport"):
        from .engine.sync import ImageReport, SyncResult  # noqa: F401  (read through locals())
    elif name in ("PushResult", "PushReport"):
        from .engine.push import PushReport, PushResult  # noqa: F401
    elif name in ("SyncTotals", "PushTotals", "BundleSummary"):
        from .engine.report import BundleSummary, PushTotals, SyncTotals  # noqa: F401
    elif name == "VerifyResult":
        from .bundle.verify import VerifyResult  # noqa: F401
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = globals()[name] = locals()[name]
    return value



def __dir__():
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "__version__",
    # functions
    "sync", "push", "verify", "list_images", "extract", "serve",
    # results
    "SyncResult", "ImageReport", "PushResult", "PushReport", "VerifyResult", "ImageInfo",
    "ExtractResult", "Server", "Progress", "SyncTotals", "PushTotals", "BundleSummary",
    # errors
    "MirrorError", "UsageError", "SpecError", "ReferenceError_", "PlatformError", "RegistryError",
    "AuthError", "NotFoundError", "TransientError", "DigestMismatchError", "UnsupportedManifestError",
    "StoreError", "LockHeldError", "BundleError", "NotABundleError",
]
