"""Real CNCF distribution registries (and a token server) for tests.

``start_registry(tmpdir)`` runs ``docker-registry serve`` (distribution 2.8, the Debian package)
on a free 127.0.0.1 port with its own filesystem storage under ``tmpdir``, and returns a
:class:`RegistryProcess`.  Three flavours:

- ``auth=None``: anonymous, everything allowed.
- ``auth="basic"``: htpasswd with user ``alice`` and a random password.  distribution accepts
  only bcrypt entries; we hash with cost 4 (the minimum) because the registry checks the hash
  on *every* request and the default cost 12 would add ~0.2 s to each one.
- ``auth="token"``: distribution's ``auth: token`` with a :class:`TokenServer` (an aiohttp app in
  a background thread) as realm.  The token server authenticates ``bob`` with Basic auth and
  signs JWTs with a freshly generated EC P-256 key; the certificate goes both into the JWT
  header (``x5c``) and into the registry's ``rootcertbundle``, which is how distribution
  verifies a token without knowing key ids.

The registry writes its log (application log and an Apache-style access log, see
:meth:`RegistryProcess.requests`) to ``RegistryProcess.log_path``.

Only loopback addresses are used; nothing is fetched from the network.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import ipaddress
import os
import re
import secrets
import shutil
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import bcrypt
import jwt
import yaml
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

SERVICE = "imgmirror-test"
ISSUER = "imgmirror-test-issuer"
BASIC_USER = "alice"
TOKEN_USER = "bob"
BASIC_REALM = "imgmirror-test-basic"

INSTALL_HINT = "install them with: apt-get install docker-registry skopeo podman (or run make test)"


def registry_binary() -> str | None:
    """Path of the distribution binary, or None when it is not installed."""
    return shutil.which("docker-registry") or (
        "/usr/bin/docker-registry" if os.access("/usr/bin/docker-registry", os.X_OK) else None
    )


def missing_tools() -> list[str]:
    """Names of the external programs the registry fixtures need but cannot find."""
    missing = []
    if registry_binary() is None:
        missing.append("docker-registry")
    if shutil.which("skopeo") is None:
        missing.append("skopeo")
    return missing


def free_port() -> int:
    """A port that was free a moment ago on 127.0.0.1 (start-up retries if it got taken)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------------------------
# Access log parsing
# --------------------------------------------------------------------------------------------

# distribution wraps its handler in gorilla's CombinedLoggingHandler, which writes one line per
# request to stdout, e.g.
#   127.0.0.1 - - [27/Nov/2026:02:44:17 +0000] "GET /v2/foo/blobs/sha256:... HTTP/1.1" 200 157 "" "ua"
# (The logrus "response completed" lines carry the same information, but twice as verbose and
# only at level info or below; the access log is written whatever the level.)
_ACCESS_RE = re.compile(
    r'^(?P<remote>\S+) \S+ (?P<user>\S+) \[(?P<time>[^\]]+)\] '
    r'"(?P<method>[A-Z]+) (?P<uri>\S+) HTTP/[0-9.]+" (?P<status>\d{3}) (?P<size>\S+)'
)


@dataclass(frozen=True)
class LoggedRequest:
    """One line of the registry's access log."""

    method: str
    uri: str  # path plus query string, exactly as requested
    status: int
    user: str  # "-" unless distribution attached a user (it does not for tokens)

    @property
    def path(self) -> str:
        return self.uri.split("?", 1)[0]

    @property
    def query(self) -> dict[str, list[str]]:
        return urllib.parse.parse_qs(urllib.parse.urlsplit(self.uri).query)


# --------------------------------------------------------------------------------------------
# Token server
# --------------------------------------------------------------------------------------------


def _self_signed_cert(common_name: str, *, server: bool = False) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A self-signed CA certificate; with `server`, also valid for TLS on 127.0.0.1/localhost."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    builder = x509.CertificateBuilder()
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]), critical=False)
    cert = (
        builder
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=7))
        # A CA certificate, so Go's x509 verification accepts it as its own root.
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, content_commitment=False,
                key_encipherment=False, data_encipherment=False, key_agreement=False,
                crl_sign=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return key, cert


def parse_scope(scope: str) -> dict:
    """``repository:test/base:pull,push`` -> {"type","name","actions"}.  The name may itself
    contain ``:`` (e.g. a port), so split at the first and the last colon."""
    typ, rest = scope.split(":", 1)
    name, actions = rest.rsplit(":", 1)
    return {"type": typ, "name": name, "actions": [a for a in actions.split(",") if a]}


class TokenServer:
    """A Docker token server (``GET /token``) for one user, run in its own thread and loop.

    ``GET /token?service=S&scope=A&scope=B`` with Basic auth ``bob``:``password`` answers
    ``{"token"|"access_token": JWT, "expires_in": ..., "issued_at": ...}`` granting every action
    asked for.  Missing or wrong credentials get 401 (with a Basic challenge), an unknown
    service 400.  Every request is appended to :attr:`requests` as a dict:
    ``{"method", "path", "service", "scopes": [..], "account", "auth": bool (Authorization
    header present), "user": name or None, "status": int, "t": time.monotonic() on arrival}``.

    Tests may change :attr:`expires_in` (what the answer claims) and :attr:`lifetime` (seconds
    from now to the JWT's ``exp``) between requests, or set :attr:`fail_next` to a status code
    to make the next token request fail with it.  distribution allows 60 s of clock skew past
    ``exp``, so a token the registry rejects as expired needs ``lifetime`` below -60.
    """

    def __init__(
        self,
        *,
        username: str = TOKEN_USER,
        password: str | None = None,
        service: str = SERVICE,
        issuer: str = ISSUER,
        token_field: str = "token",
        expires_in: int = 300,
    ):
        if token_field not in ("token", "access_token"):
            raise ValueError("token_field must be 'token' or 'access_token'")
        self.username = username
        self.password = password or secrets.token_urlsafe(12)
        self.service = service
        self.issuer = issuer
        self.token_field = token_field
        self.expires_in = expires_in
        self.lifetime = expires_in
        self.fail_next: int | None = None
        self.requests: list[dict] = []
        self.key, self.cert = _self_signed_cert("imgmirror test token signer")
        self.cert_pem = self.cert.public_bytes(serialization.Encoding.PEM)
        self._x5c = [base64.b64encode(self.cert.public_bytes(serialization.Encoding.DER)).decode()]
        self.port: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    # -- public -----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def realm(self) -> str:
        return f"{self.url}/token"

    def issue(self, scopes: list[str], subject: str | None = None) -> str:
        """A signed JWT granting ``scopes`` (also usable directly by tests)."""
        now = int(time.time())
        access = []
        for s in scopes:
            p = parse_scope(s)
            access.append({"type": p["type"], "name": p["name"], "actions": p["actions"]})
        claims = {
            "iss": self.issuer,
            "sub": subject or self.username,
            "aud": self.service,
            "exp": now + self.lifetime,
            "nbf": now - 10,
            "iat": now,
            "jti": secrets.token_hex(16),
            "access": access,
        }
        return jwt.encode(claims, self.key, algorithm="ES256", headers={"x5c": self._x5c})

    def start(self, timeout: float = 10) -> TokenServer:
        self._thread = threading.Thread(target=self._run, name="token-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("token server did not start")
        if self._error:
            raise RuntimeError(f"token server failed to start: {self._error!r}")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)

    # -- server -----------------------------------------------------------------------------

    def _run(self) -> None:
        # A private loop: the tests' own event loop (pytest-asyncio) must not have to drive it.
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        app = web.Application()
        app.router.add_get("/token", self._handle_token)
        runner = web.AppRunner(app, access_log=None)
        try:
            loop.run_until_complete(runner.setup())
            site = web.TCPSite(runner, "127.0.0.1", 0)  # port 0: no race for a free port
            loop.run_until_complete(site.start())
            self.port = runner.addresses[0][1]
        except BaseException as e:  # report to start() rather than dying silently
            self._error = e
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(runner.cleanup())
            loop.close()

    def _check_basic(self, header: str | None) -> str | None:
        """The user name if ``header`` holds the right Basic credentials, else None."""
        if not header or not header.lower().startswith("basic "):
            return None
        try:
            user, _, pw = base64.b64decode(header[6:].strip()).decode().partition(":")
        except Exception:
            return None
        ok = secrets.compare_digest(user, self.username) and secrets.compare_digest(pw, self.password)
        return user if ok else None

    async def _handle_token(self, request: web.Request) -> web.Response:
        q = request.query
        header = request.headers.get("Authorization")
        user = self._check_basic(header)
        record = {
            "method": request.method,
            "path": request.path,
            "service": q.get("service"),
            "scopes": q.getall("scope", []),
            "account": q.get("account"),
            "auth": header is not None,
            "user": user,
            "status": 200,
            "t": time.monotonic(),
        }
        self.requests.append(record)

        def fail(status: int, code: str, msg: str, **headers) -> web.Response:
            record["status"] = status
            return web.json_response({"errors": [{"code": code, "message": msg}]}, status=status, headers=headers)

        if self.fail_next is not None:
            status, self.fail_next = self.fail_next, None
            return fail(status, "UNAVAILABLE", "injected failure")
        if user is None:
            return fail(401, "UNAUTHORIZED", "authentication required",
                        **{"WWW-Authenticate": 'Basic realm="imgmirror-test-token"'})
        if record["service"] != self.service:
            return fail(400, "UNSUPPORTED", f"unknown service {record['service']!r}")
        try:
            token = self.issue(record["scopes"], subject=user)
        except ValueError:
            return fail(400, "INVALID_SCOPE", f"bad scope in {record['scopes']!r}")
        issued = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return web.json_response({self.token_field: token, "expires_in": self.expires_in, "issued_at": issued})


# --------------------------------------------------------------------------------------------
# Registry process
# --------------------------------------------------------------------------------------------


@dataclass
class RegistryProcess:
    """A running ``docker-registry serve``; stop it with :meth:`stop` (or use ``with``)."""

    host: str  # "127.0.0.1:PORT"
    url: str  # "http://127.0.0.1:PORT"
    username: str | None
    password: str | None
    log_path: Path
    token_server: TokenServer | None
    auth: str | None
    root: Path  # the tmpdir holding config, storage, log
    storage_dir: Path
    config_path: Path
    process: subprocess.Popen = field(repr=False)
    ca_file: Path | None = None  # the self-signed certificate of a TLS registry

    @property
    def creds(self) -> tuple[str, str] | None:
        """(username, password), or None for an anonymous registry."""
        return (self.username, self.password) if self.username else None

    @property
    def creds_str(self) -> str | None:
        """``"user:pass"`` as skopeo's ``--creds`` wants it, or None."""
        return f"{self.username}:{self.password}" if self.username else None

    def blob_path(self, digest: str) -> Path:
        """Where distribution's filesystem driver keeps a blob's bytes (to corrupt or delete
        it behind the registry's back in a test)."""
        algo, hexd = digest.split(":", 1)
        return self.storage_dir / "docker/registry/v2/blobs" / algo / hexd[:2] / hexd / "data"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def requests(
        self,
        method: str | None = None,
        path_contains: str | None = None,
        *,
        since: int = 0,
        settle: float = 0.05,
    ) -> list[LoggedRequest]:
        """Requests from the access log, in order, optionally filtered by method and by a
        substring of the URI (path plus query), counting only those after the mark ``since``
        (see :meth:`mark`).

        The registry writes a line as its handler returns, which can be a moment after the
        client has read the whole response; ``settle`` seconds of sleep wait that out.
        """
        if settle:
            time.sleep(settle)
        out = []
        for r in self._access_log()[since:]:
            if method and r.method != method.upper():
                continue
            if path_contains and path_contains not in r.uri:
                continue
            out.append(r)
        return out

    def count(self, method: str | None = None, path_contains: str | None = None, *, since: int = 0) -> int:
        """Shorthand for ``len(self.requests(method, path_contains, since=since))``."""
        return len(self.requests(method, path_contains, since=since))

    def mark(self, settle: float = 0.05) -> int:
        """The number of requests logged so far; pass it as ``since=`` to count only later ones."""
        if settle:
            time.sleep(settle)
        return len(self._access_log())

    def _access_log(self) -> list[LoggedRequest]:
        out = []
        for line in self.log_text().splitlines():
            m = _ACCESS_RE.match(line)
            if m:
                out.append(LoggedRequest(m["method"], m["uri"], int(m["status"]), m["user"]))
        return out

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        """Stop the registry (and its token server); safe to call twice."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        if self.token_server is not None:
            self.token_server.stop()

    def __enter__(self) -> RegistryProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# urllib would send requests through $http_proxy if one is set; loopback must never be proxied.
_OPENER = urllib.request.build_opener(
    urllib.request.ProxyHandler({}),
    # only to see that a TLS registry is up; its certificate is the test's own
    urllib.request.HTTPSHandler(context=ssl._create_unverified_context()))


def _wait_until_up(url: str, proc: subprocess.Popen, timeout: float) -> bool:
    """Poll ``/v2/`` until any HTTP answer (a 401 counts: the auth flavours answer 401)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with _OPENER.open(f"{url}/v2/", timeout=1):
                return True
        except urllib.error.HTTPError:
            return True
        except (urllib.error.URLError, ConnectionError, OSError):
            time.sleep(0.02)
    return False


def start_registry(
    tmpdir: str | os.PathLike,
    *,
    auth: str | None = None,
    token_field: str = "token",
    token_expires_in: int = 300,
    startup_timeout: float = 10,
    tls: bool = False,
    allow_urls: bool = False,
) -> RegistryProcess:
    """Start ``docker-registry serve`` with a generated config under ``tmpdir``.

    ``auth`` is None (anonymous), ``"basic"`` (htpasswd, user ``alice``) or ``"token"``
    (Bearer tokens from a :class:`TokenServer`, user ``bob``; ``token_field`` names the JSON
    field the token is returned in). ``allow_urls`` sets ``validation.manifests.urls.allow``.  Raises RuntimeError with the log tail if ``/v2/`` does
    not answer within ``startup_timeout`` seconds.
    """
    if auth not in (None, "basic", "token"):
        raise ValueError(f"auth must be None, 'basic' or 'token', not {auth!r}")
    binary = registry_binary()
    if binary is None:
        raise RuntimeError(f"docker-registry is not installed; {INSTALL_HINT}")
    root = Path(tmpdir)
    root.mkdir(parents=True, exist_ok=True)
    storage = root / "storage"
    storage.mkdir(exist_ok=True)
    log_path = root / "registry.log"
    config_path = root / "config.yml"

    username = password = None
    token_server = None
    auth_cfg: dict | None = None
    if auth == "basic":
        username, password = BASIC_USER, secrets.token_urlsafe(12)
        hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
        htpasswd = root / "htpasswd"
        htpasswd.write_text(f"{username}:{hashed}\n")
        auth_cfg = {"htpasswd": {"realm": BASIC_REALM, "path": str(htpasswd)}}
    elif auth == "token":
        token_server = TokenServer(token_field=token_field, expires_in=token_expires_in).start()
        username, password = token_server.username, token_server.password
        bundle = root / "token-ca.pem"
        bundle.write_bytes(token_server.cert_pem)
        auth_cfg = {
            "token": {
                "realm": token_server.realm,
                "service": token_server.service,
                "issuer": token_server.issuer,
                "rootcertbundle": str(bundle),
            }
        }

    tls_cfg, ca_file = None, None
    if tls:   # HTTPS with a self-signed certificate for 127.0.0.1; `ca_file` is its PEM
        key, cert = _self_signed_cert("imgmirror test registry", server=True)
        ca_file, key_file = root / "registry-cert.pem", root / "registry-key.pem"
        ca_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        tls_cfg = {"certificate": str(ca_file), "key": str(key_file)}

    last_error = ""
    for _attempt in range(3):  # the port may be taken between free_port() and the bind
        port = free_port()
        config = {
            "version": 0.1,
            # info: the application log gets one "response completed" line per request;
            # the access log (one Apache-style line per request) is written at any level.
            "log": {"level": "info", "formatter": "text", "accesslog": {"disabled": False}},
            "storage": {
                "filesystem": {"rootdirectory": str(storage)},
                "delete": {"enabled": True},
                # No purge goroutine touching uploads mid-test.
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            # A fixed secret silences the "No HTTP secret provided" warning.
            "http": {"addr": f"127.0.0.1:{port}", "secret": secrets.token_hex(16)},
        }
        if allow_urls:   # accept manifests whose (foreign) layers carry urls, as Docker Hub's Windows images do
            config["validation"] = {"manifests": {"urls": {"allow": ["^https?://"]}}}
        if auth_cfg:
            config["auth"] = auth_cfg
        if tls_cfg:
            config["http"]["tls"] = tls_cfg
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        log = open(log_path, "ab")
        try:
            proc = subprocess.Popen(
                [binary, "serve", str(config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=root,
            )
        finally:
            log.close()  # the child has its own copy of the descriptor
        url = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
        if _wait_until_up(url, proc, startup_timeout):
            return RegistryProcess(
                host=f"127.0.0.1:{port}",
                url=url,
                username=username,
                password=password,
                log_path=log_path,
                token_server=token_server,
                auth=auth,
                root=root,
                storage_dir=storage,
                config_path=config_path,
                process=proc,
                ca_file=ca_file,
            )
        if proc.poll() is None:
            proc.kill()
        proc.wait(5)
        last_error = _log_tail(log_path)
        if "address already in use" not in last_error:
            break
    if token_server is not None:
        token_server.stop()
    raise RuntimeError(
        f"docker-registry did not answer on /v2/ within {startup_timeout}s; log {log_path}:\n{last_error}"
    )
