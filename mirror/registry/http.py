"""aiohttp, imported without the two TLS contexts it builds at import time.

aiohttp loads the system's CA certificates twice when it is imported (a verified and an
unverified default context): about 90 ms on every start of imgmirror, `--version` included,
before the first request. imgmirror never uses those defaults: every request it sends carries
its own context (`HostSettings.ssl_context`, `default_context()`), built only once a host that
speaks TLS is reached. So they are built here without certificates, which is fail-closed: were
one ever used, verification would fail, not pass.
"""

from __future__ import annotations

import functools
import ssl
import sys

if "aiohttp" not in sys.modules:
    _create, _verify_paths = ssl.create_default_context, ssl.SSLContext.set_default_verify_paths
    ssl.create_default_context = lambda *a, **k: ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ssl.SSLContext.set_default_verify_paths = lambda self: None
    try:
        import aiohttp  # noqa: F401
    finally:
        ssl.create_default_context, ssl.SSLContext.set_default_verify_paths = _create, _verify_paths
import aiohttp  # noqa: E402,F811


@functools.cache
def default_context() -> ssl.SSLContext:
    """The verified context of every TLS connection without a ca_file (the system's CAs),
    built once, when first needed."""
    return ssl.create_default_context()


@functools.cache
def unverified_context() -> ssl.SSLContext:
    """`insecure: true`: TLS without verification."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


__all__ = ["aiohttp", "default_context", "unverified_context"]
