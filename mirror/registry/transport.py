"""HTTP to one registry host: TLS choice, authentication, retries, error mapping.

`Transport.open()` returns a response whose status is known good (2xx, or one the caller asked
to see); every aiohttp error and unwanted status is mapped here, once, to the MirrorError tree.
Auth is a thin layer (challenge -> token cache -> header); retries are a tenacity policy kept as
data (which statuses, how long to wait).
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import heapq
import itertools
import json
import os
import random
import ssl
import time
import urllib.request
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit, urlunsplit

from .http import aiohttp, default_context, unverified_context
from tenacity import (AsyncRetrying, retry_if_exception_type, stop_after_attempt, stop_before_delay,
                      wait_random_exponential)

from .credentials import Credentials
from ..errors import AuthError, NotFoundError, RegistryError, TransientError
from .auth import Auth, parse_challenge  # noqa: F401  (parse_challenge: part of this module's API)
from ..core.reference import is_loopback

RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
MAX_RETRY_AFTER = 60.0        # never sleep longer than this on one Retry-After
MAX_TOTAL_WAIT = 300.0        # nor retry one request for longer than this in all
MAX_REDIRECTS = 10
SMALL_BLOB = 1 << 20          # a blob this size or smaller travels on the metadata lane
METADATA_PER_TRANSFER = 4     # the metadata lane is this many times the transfer lane (8 -> 32)


def proxy_for(url: str) -> str | None:
    """The proxy the environment names for `url` (HTTPS_PROXY, HTTP_PROXY, NO_PROXY), or None.

    Loopback addresses never go through a proxy."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if is_loopback(host) or urllib.request.proxy_bypass_environment(host):
        return None
    return urllib.request.getproxies_environment().get(parts.scheme)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
    return max(0.0, when - (time.time() if now is None else now))


def redact_url(url: str) -> str:
    """A URL fit for messages: no query string (presigned URLs carry signatures there), no userinfo."""
    parts = urlsplit(str(url))
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _wait_policy(retry_state) -> float:
    """Honour Retry-After when the server gave one (plus up to 10 % jitter, so clients told the
    same moment do not return together); else exponential backoff with full jitter."""
    exc = retry_state.outcome.exception() if retry_state.outcome else None
    if isinstance(exc, TransientError) and exc.retry_after is not None:
        wait = min(exc.retry_after, MAX_RETRY_AFTER)
        return wait + random.uniform(0, 0.1 * wait + 0.05)
    return wait_random_exponential(multiplier=0.2, max=10)(retry_state)


@dataclass
class HostSettings:
    """How to reach one registry host."""

    host: str                  # as written in references, e.g. docker.io
    api_host: str              # where the API lives, e.g. registry-1.docker.io
    insecure: bool = False
    ca_file: str | None = None
    retries: int = 5
    max_concurrency: int = 8

    @property
    def scheme(self) -> str:
        # Docker's convention: loopback registries speak plain HTTP, unless a CA is given or
        # they are marked insecure. An `insecure` registry is tried with HTTPS (unverified)
        # first and falls back to HTTP, as Docker's insecure-registries are.
        if is_loopback(self.api_host) and not self.ca_file and not self.insecure:
            return "http"
        return "https"

    def ssl_context(self):
        """The TLS setting for aiohttp: verified by default, a private CA, or no verification."""
        if self.scheme == "http":
            return None
        if self.ca_file:
            try:
                return ssl.create_default_context(cafile=self.ca_file)
            except (ssl.SSLError, OSError) as exc:
                raise RegistryError(f"{self.host}: ca_file {self.ca_file} is not a PEM certificate "
                                    f"this machine can read ({exc.__class__.__name__})") from None
        return unverified_context() if self.insecure else default_context()


class Slots:
    """A semaphore that admits its waiters largest first (by the size they name): the transfer
    lane hands a free slot to the biggest blob waiting, so the longest transfers start first and
    the run does not end on one (longest-first is also the order the bundle is written in).

    A holder may give its slot back before it is done (`Held.release`): a download whose rest
    will take less than a round trip lets the next one be asked for meanwhile, so the link does
    not idle while a request travels."""

    def __init__(self, n: int):
        self.free = n
        self.waiting: list[tuple[int, int, asyncio.Future]] = []
        self._seq = itertools.count()

    @contextlib.asynccontextmanager
    async def slot(self, size: int):
        if self.free > 0 and not self.waiting:
            self.free -= 1
        else:
            fut = asyncio.get_running_loop().create_future()
            heapq.heappush(self.waiting, (-size, next(self._seq), fut))
            try:
                await fut
            except asyncio.CancelledError:
                if fut.done() and not fut.cancelled():
                    self._release()        # granted, then cancelled before it ran: hand it on
                raise
        held = Held(self._release)
        try:
            yield held
        finally:
            held.release()

    def _release(self) -> None:
        while self.waiting:
            fut = heapq.heappop(self.waiting)[2]
            if not fut.done():
                fut.set_result(None)
                return
        self.free += 1


class Held:
    """A lane slot being held; `release()` gives it back early (once; later calls do nothing)."""

    def __init__(self, give_back=None):
        self._give_back = give_back

    def release(self) -> None:
        give_back, self._give_back = self._give_back, None
        if give_back:
            give_back()


class Transport:
    """Authenticated, retried HTTP to one registry host, with its two lanes: metadata (manifests,
    HEADs, tag lists, mounts, upload sessions, small blobs; many in flight, round-trip bound) and
    transfers (blobs over SMALL_BLOB; bandwidth bound, largest first). Each request of a caller is
    sent under `meta` or `lane(size)`, held around the whole operation."""

    def __init__(self, session: aiohttp.ClientSession, settings: HostSettings,
                 credentials: Credentials | None, timeout: aiohttp.ClientTimeout | None = None):
        self.session, self.settings, self.credentials = session, settings, credentials
        self.base = f"{settings.scheme}://{settings.api_host}"
        # HTTP(S)_PROXY / NO_PROXY, read once per host: aiohttp's trust_env would look them (and
        # ~/.netrc) up again in a worker thread for every request, a measurable cost per blob.
        self.proxy = proxy_for(self.base)
        self.ssl = settings.ssl_context()
        # Held by callers around a whole operation (a blob is one request for its whole body).
        self.meta = asyncio.Semaphore(METADATA_PER_TRANSFER * settings.max_concurrency)
        self.transfers = Slots(settings.max_concurrency)
        # Until this host has answered once, one request goes alone: if it says 401, the others
        # wait for the challenge and then carry a token, instead of each getting a 401 first.
        self._leader_sent = False              # the first request to this host has gone
        self._first_answer = asyncio.Event()   # ... and its answer (or failure) is known
        self._answered_once = False
        self._prefetches: set[asyncio.Future] = set()
        self.timeout = timeout or aiohttp.ClientTimeout(total=None, connect=30, sock_read=60)
        self._may_fall_back = settings.insecure and self.base.startswith("https:")
        self.auth = Auth(self)

    def assume(self, scheme: str | None) -> None:
        """What this host's first answer said in an earlier run ("none": no challenge; "basic",
        with credentials at hand): then no request waits for a first answer, and Basic
        credentials go with the first ones. A host that changed since answers 401 and is
        learnt again, as on a first run."""
        if self._leader_sent:
            return
        if scheme == "none" or (scheme == "basic" and self.credentials and self.credentials.password):
            if scheme == "basic":
                self.auth.challenge = ("basic", {})
            self._leader_sent = True
            self._first_answer.set()

    def prefetch_tokens(self, scope_sets: list[frozenset]) -> None:
        """Fetch the token of each scope set (a repository's) as soon as this host's first
        answer is known, all at once, so that no repository's first request waits for its
        token later. Nothing is fetched for a host that asks for none or for Basic."""
        async def one(scopes: frozenset) -> None:
            await self._first_answer.wait()
            if self.auth.challenge is not None and self.auth.challenge[0] == "bearer":
                await self.auth.header(scopes)
        for scopes in scope_sets:
            task = asyncio.ensure_future(one(scopes))
            self._prefetches.add(task)
            # a failure here is met again, and reported, by the repository's first request
            task.add_done_callback(lambda t: (self._prefetches.discard(t), t.cancelled() or t.exception()))

    def cancel_prefetches(self) -> None:
        for task in list(self._prefetches):
            task.cancel()

    def answered_with(self) -> str | None:
        """How this host answered this run ("none", "basic", "bearer"), or None if it did not."""
        if self.auth.challenge is not None:
            return self.auth.challenge[0]
        return "none" if self._answered_once else None

    def lane(self, size: int | None):
        """The lane for a blob of `size` bytes, held around its transfer: `async with
        t.lane(n) as held`, where `held.release()` may give a transfer slot back early."""
        return self._meta_slot() if size is None or size <= SMALL_BLOB else self.transfers.slot(size)

    @contextlib.asynccontextmanager
    async def _meta_slot(self):
        async with self.meta:
            yield Held()

    # --- requests -------------------------------------------------------------------------
    async def retrying(self, operation):
        """Run `operation()` (a coroutine function) under the one retry policy of imgmirror:
        at most `retries` + 1 attempts on a TransientError, waits honouring Retry-After with
        jitter, the whole bounded by MAX_TOTAL_WAIT. An operation that sends several requests
        (an upload session, a resumed download) is one attempt: its own requests are sent with
        `open(..., retry=False)`, so retries never multiply."""
        policy = AsyncRetrying(
            retry=retry_if_exception_type(TransientError),
            stop=stop_after_attempt(self.settings.retries + 1) | stop_before_delay(MAX_TOTAL_WAIT),
            wait=_wait_policy, reraise=True)
        async for attempt in policy:
            with attempt:
                return await operation()
        raise AssertionError("unreachable")

    async def open(self, method: str, url: str, *, scopes: frozenset, headers: dict | None = None,
                   ok: tuple[int, ...] = (200,), what: str = "", body=None,
                   retry: bool = True) -> aiohttp.ClientResponse:
        """Send a request and return the open response; the caller closes it.

        `body` is a callable giving a fresh request body for each attempt. With `retry=True` the
        request is its own operation under `retrying`; `retry=False` is for a request that is one
        step of a larger operation which the caller runs under `retrying` as a whole."""
        def once():
            return self._open_once(method, url, scopes, headers or {}, ok, what, body)
        return await (self.retrying(once) if retry else once())

    async def _open_once(self, method, url, scopes, headers, ok, what, body=None):
        if not self._leader_sent:
            self._leader_sent = True
            try:
                return await self._open_auth(method, self._full(url), scopes, headers, ok, what, body)
            finally:
                self._first_answer.set()          # answered, failed or cancelled: the others go
        if not self._first_answer.is_set():
            await self._first_answer.wait()
        return await self._open_auth(method, self._full(url), scopes, headers, ok, what, body)

    def _full(self, url: str) -> str:
        return url if url.startswith(("http://", "https://")) else self.base + url

    def _answered(self) -> None:
        self._answered_once = True
        self._first_answer.set()

    async def _open_auth(self, method, full, scopes, headers, ok, what, body=None):
        for auth_try in (0, 1):
            hdrs = dict(headers)
            auth = await self.auth.header(scopes)
            if auth:
                hdrs["Authorization"] = auth
            try:
                resp = await self._send(method, full, hdrs, body)
            except (aiohttp.ClientConnectorError, aiohttp.ServerDisconnectedError,
                    aiohttp.ClientOSError) as exc:
                if self._may_fall_back and full.startswith(self.base):
                    # insecure: true and HTTPS does not answer: this registry speaks plain HTTP.
                    self._may_fall_back = False
                    self.base = "http://" + self.base.removeprefix("https://")
                    self.ssl = None
                    full = self.base + full.removeprefix("https://" + self.settings.api_host)
                    return await self._open_auth(method, full, scopes, headers, ok, what, body)
                if isinstance(exc, aiohttp.ClientSSLError):
                    raise RegistryError(f"{self.settings.host}: TLS failed ({exc.__class__.__name__}); "
                                        "give the registry's CA as ca_file, or set insecure: true") from None
                raise TransientError(f"{self.settings.host}: {method} {redact_url(full)}: "
                                     f"{exc.__class__.__name__} {exc}".strip()) from None
            except (TimeoutError, aiohttp.ClientError) as exc:
                if "HTTPS server" in str(exc):   # Go's answer to plain HTTP on a TLS port
                    raise RegistryError(self._https_hint()) from None
                raise TransientError(f"{self.settings.host}: {method} {redact_url(full)}: "
                                     f"{exc.__class__.__name__} {exc}".strip()) from None
            self._answered()      # its challenge, if any, is known: the others may go
            if resp.status == 401 and auth_try == 0 and self.auth.learn(resp, auth):
                resp.release()
                continue
            break
        if resp.status in ok:
            return resp
        await self._raise_for(resp, method, full, what)

    async def _send(self, method, full, hdrs, body):
        if self.ssl is not None:
            return await self.session.request(method, full, headers=hdrs, ssl=self.ssl, proxy=self.proxy,
                                              timeout=self.timeout, allow_redirects=True,
                                              data=body() if body else None)
        # A plain-HTTP registry: a redirect (blobs kept in object storage) may lead to HTTPS,
        # verified with the system's CAs (aiohttp's own default context is not loaded, see
        # registry.http), so redirects are followed here.
        resp = await self.session.request(method, full, headers=hdrs, proxy=self.proxy, timeout=self.timeout,
                                          allow_redirects=False, data=body() if body else None)
        for _ in range(MAX_REDIRECTS):
            location = resp.headers.get("Location")
            if resp.status not in (301, 302, 303, 307, 308) or not location:
                return resp
            target = urljoin(full, location)
            resp.release()
            if resp.status == 303 or (resp.status in (301, 302) and method not in ("GET", "HEAD")):
                method, body = "GET", None
            if urlsplit(target)[:2] != urlsplit(full)[:2]:     # another origin: no credentials
                hdrs = {k: v for k, v in hdrs.items() if k.lower() != "authorization"}
            full = target
            resp = await self.session.request(
                method, full, headers=hdrs, proxy=proxy_for(full), timeout=self.timeout, allow_redirects=False,
                ssl=default_context() if full.startswith("https:") else None, data=body() if body else None)
        raise RegistryError(f"{self.settings.host}: more than {MAX_REDIRECTS} redirects from {redact_url(full)}")

    def _https_hint(self) -> str:
        return (f"{self.settings.host}: the registry speaks HTTPS, not plain HTTP; give its CA as "
                "ca_file, or set insecure: true, under registries in mirror.yaml")

    async def _raise_for(self, resp, method, url, what):
        body = await resp.read()
        resp.release()
        errors = parse_errors(body)
        code = errors[0]["code"] if errors else None
        status = resp.status
        subject = what or f"{method} {redact_url(url)}"
        detail = f"{status}" + (f" {describe_errors(errors)}" if errors else "")
        kw = dict(status=status, code=code, errors=errors)
        # A 5xx that names a problem with what was sent (distribution answers 500 UNKNOWN +
        # MANIFEST_BLOB_UNKNOWN to a manifest with foreign-layer URLs) fails again the same way.
        if status in RETRY_STATUSES and not {e["code"] for e in errors} & PERMANENT_CODES:
            raise TransientError(f"{self.settings.host}: {subject}: {detail}",
                                 retry_after=parse_retry_after(resp.headers.get("Retry-After")), **kw)
        if status == 400 and url.startswith("http:") and b"HTTPS server" in body:
            raise RegistryError(self._https_hint(), status=status)
        if status in (401, 403):
            hint = ("check the credentials (registries in mirror.yaml, docker login)" if self.credentials
                    else "no credentials found; add them under registries in mirror.yaml or `docker login`")
            raise AuthError(f"{self.settings.host}: {subject}: access denied ({detail}); {hint}", **kw)
        if status == 404:
            raise NotFoundError(f"{self.settings.host}: {subject}: not found ({detail})", **kw)
        raise RegistryError(f"{self.settings.host}: {subject}: {detail}", **kw)


# Error codes that say what was sent is wrong: never transient, whatever the status.
PERMANENT_CODES = frozenset({
    "MANIFEST_INVALID", "MANIFEST_BLOB_UNKNOWN", "MANIFEST_UNVERIFIED", "MANIFEST_UNKNOWN",
    "BLOB_UNKNOWN", "DIGEST_INVALID", "SIZE_INVALID", "NAME_INVALID", "NAME_UNKNOWN", "TAG_INVALID",
    "UNSUPPORTED", "DENIED", "UNAUTHORIZED"})
MAX_ERROR_ENTRIES = 5         # entries of an `errors` array shown in a message
MAX_ERROR_FIELD = 200         # characters of one message or detail


def parse_errors(body: bytes) -> tuple[dict, ...]:
    """Every entry of a registry's `{"errors": [{"code", "message", "detail"}]}` answer, with
    code and message as strings and detail as compact text; () when the body is not that."""
    try:
        entries = json.loads(body)["errors"]
    except (ValueError, KeyError, TypeError, RecursionError):
        return ()
    out = []
    for e in entries if isinstance(entries, list) else ():
        if not isinstance(e, dict):
            continue
        detail = e.get("detail")
        if detail is not None and not isinstance(detail, str):
            detail = json.dumps(detail, separators=(",", ":"), sort_keys=True)
        out.append({"code": str(e.get("code") or ""), "message": str(e.get("message") or ""),
                    "detail": detail or ""})
    return tuple(out)


def _cut(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_ERROR_FIELD else text[:MAX_ERROR_FIELD - 1] + "…"


def describe_errors(errors: tuple[dict, ...]) -> str:
    """`UNKNOWN: unknown error; MANIFEST_BLOB_UNKNOWN: blob unknown to registry (sha256:…)`:
    every entry, each field cut to a sane length."""
    parts = []
    for e in errors[:MAX_ERROR_ENTRIES]:
        text = e["code"] or "(no code)"
        if e["message"]:
            text += f": {_cut(e['message'])}"
        if e["detail"]:
            text += f" ({_cut(e['detail'])})"
        parts.append(text)
    if len(errors) > MAX_ERROR_ENTRIES:
        parts.append(f"and {len(errors) - MAX_ERROR_ENTRIES} more")
    return "; ".join(parts)


def new_session() -> aiohttp.ClientSession:
    """A run's HTTP session: no connection cap of aiohttp's own (the transport's per-host limit
    bounds requests), bodies as received (never decompressed: digests are of the bytes sent),
    proxies read once per host by the Transport rather than per request."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, limit_per_host=0),
                                 auto_decompress=False, trust_env=False)


async def read_capped(resp: aiohttp.ClientResponse, limit: int, what: str) -> bytes:
    """A response body of at most `limit` bytes, exactly as received. Longer is refused
    (RegistryError); a connection lost on the way is a TransientError (the caller's operation,
    under `Transport.retrying`, is then tried again)."""
    raw = b""
    try:
        # content.read(n) may return less than n before EOF: read until EOF or past the limit.
        while len(raw) <= limit:
            more = await resp.content.read(limit + 1 - len(raw))
            if not more:
                return raw
            raw += more
    except (TimeoutError, aiohttp.ClientError) as exc:
        raise TransientError(f"{what}: connection lost ({exc.__class__.__name__})") from None
    raise RegistryError(f"{what}: larger than {limit} bytes; refused")


def transport_for(session: aiohttp.ClientSession, host: str, cfg, default_concurrency: int,
                  insecure: bool = False) -> Transport:
    """A Transport for `host` (as written in references) with its RegistryConfig and credentials."""
    from .credentials import lookup
    from ..core.reference import DOCKER_HUB, DOCKER_HUB_API
    settings = HostSettings(host=host, api_host=DOCKER_HUB_API if host == DOCKER_HUB else host,
                            insecure=cfg.insecure or insecure,
                            ca_file=os.path.expanduser(cfg.ca_file) if cfg.ca_file else None,
                            retries=cfg.retries, max_concurrency=cfg.max_concurrency or default_concurrency)
    creds = lookup(host, (cfg.username, cfg.password) if cfg.username else None)
    return Transport(session, settings, creds)
