"""Authentication for one registry host: what its last 401 asked for (Basic or Bearer), and
Bearer tokens fetched from its token server, cached per scope set (refreshed once on a 401)."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time

from .http import aiohttp, default_context

from ..errors import AuthError, TransientError

TOKEN_DEFAULT_TTL = 60        # seconds, when the token server gives no expires_in
_PARAM_RE = re.compile(r'([A-Za-z][A-Za-z0-9_-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))')


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """Split `Bearer realm="…",service="…",scope="a:b:pull,push"` into scheme and parameters."""
    scheme, _, rest = header.strip().partition(" ")
    params = {m.group(1).lower(): (m.group(2) if m.group(2) is not None else m.group(3)).replace('\\"', '"')
              for m in _PARAM_RE.finditer(rest)}
    return scheme.lower(), params


class Auth:
    """The Authorization header for a Transport's requests (it gives session, TLS and timeouts)."""

    def __init__(self, transport):
        self.t = transport
        self.challenge: tuple[str, dict[str, str]] | None = None
        self.tokens: dict[frozenset, tuple[str, float]] = {}
        self._locks: dict[frozenset, asyncio.Lock] = {}

    def _basic(self) -> str:
        c = self.t.credentials
        return "Basic " + base64.b64encode(f"{c.username}:{c.password}".encode()).decode()

    async def header(self, scopes: frozenset) -> str | None:
        """The Authorization value for a request needing `scopes`, once a 401 said how (else None)."""
        if self.challenge is None:
            return None
        scheme, params = self.challenge
        if scheme == "basic":
            if not self.t.credentials or not self.t.credentials.password:
                raise AuthError(f"{self.t.settings.host}: the registry asks for a username and password; "
                                "add them under registries in mirror.yaml or `docker login`", status=401)
            return self._basic()
        if scheme == "bearer":
            cached = self.tokens.get(scopes)
            if cached and cached[1] > time.monotonic():
                return f"Bearer {cached[0]}"
            lock = self._locks.setdefault(scopes, asyncio.Lock())
            async with lock:   # many requests wanting one scope fetch one token
                cached = self.tokens.get(scopes)
                if not (cached and cached[1] > time.monotonic()):
                    cached = await self._fetch_token(params, scopes)
                    self.tokens[scopes] = cached
            return f"Bearer {cached[0]}"
        return None

    async def _fetch_token(self, params: dict[str, str], scopes: frozenset) -> tuple[str, float]:
        from .transport import RETRY_STATUSES, parse_retry_after, proxy_for, redact_url   # it imports this module
        realm = params.get("realm")
        if not realm:
            raise AuthError(f"{self.t.settings.host}: Bearer challenge without a realm", status=401)
        query = [("service", params["service"])] if params.get("service") else []
        query += [("scope", s) for s in sorted(scopes)]
        headers, c = {}, self.t.credentials
        try:
            if c and c.identity_token:
                form = dict(query, grant_type="refresh_token", refresh_token=c.identity_token,
                            client_id="imgmirror", scope=" ".join(sorted(scopes)))
                resp = await self.t.session.post(realm, data=form, ssl=self._ssl(realm), timeout=self.t.timeout,
                                               proxy=proxy_for(realm))
            else:
                if c and c.password:
                    headers["Authorization"] = self._basic()
                resp = await self.t.session.get(realm, params=query, headers=headers, ssl=self._ssl(realm),
                                              proxy=proxy_for(realm),
                                              timeout=self.t.timeout)
            async with resp:
                body = await resp.read()
                if resp.status in (401, 403):
                    who = "the credentials given were refused" if c else "anonymous access was refused"
                    raise AuthError(f"{self.t.settings.host}: token server {redact_url(realm)}: {who} "
                                    f"({resp.status}); check the username and password or token",
                                    status=resp.status)
                if resp.status in RETRY_STATUSES:
                    raise TransientError(f"{self.t.settings.host}: token server answered {resp.status}",
                                         status=resp.status,
                                         retry_after=parse_retry_after(resp.headers.get("Retry-After")))
                if resp.status != 200:
                    raise AuthError(f"{self.t.settings.host}: token server answered {resp.status}",
                                    status=resp.status)
        except aiohttp.ClientError as exc:
            raise TransientError(f"{self.t.settings.host}: token server {redact_url(realm)} "
                                 f"unreachable ({exc.__class__.__name__})") from None
        try:
            data = json.loads(body)
            token = data.get("token") or data.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not token:
            raise AuthError(f"{self.t.settings.host}: token server gave no token", status=resp.status)
        ttl = data.get("expires_in") or TOKEN_DEFAULT_TTL
        # Refresh a little early so a token does not expire between the check and the request.
        return token, time.monotonic() + max(1.0, float(ttl) - 10)

    def _ssl(self, realm: str):
        """The registry's TLS setting, or for an HTTPS token server of a plain-HTTP registry the
        system's CAs."""
        return self.t.ssl if self.t.ssl is not None or not realm.startswith("https:") else default_context()

    def learn(self, resp, sent_auth: str | None) -> bool:
        """Take the 401's challenge; True when a retry with (new) credentials makes sense."""
        header = resp.headers.get("WWW-Authenticate", "")
        if not header:
            return False
        challenge = parse_challenge(header)
        first = self.challenge is None
        self.challenge = challenge
        if challenge[0] == "bearer" and sent_auth:
            self.tokens.clear()   # expired or too narrow: fetch a fresh one, once
            return True
        return first or not sent_auth
