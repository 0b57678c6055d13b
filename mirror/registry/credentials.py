"""Where credentials for a registry host come from, in the order users of docker and podman expect.

1. the `registries:` entry of mirror.yaml;
2. `credHelpers[host]`, then `credsStore`, in $DOCKER_CONFIG/config.json or ~/.docker/config.json:
   the program `docker-credential-<name> get`, server URL on stdin, JSON on stdout;
3. `auths[host]` in that same config.json;
4. `auths[host]` in $REGISTRY_AUTH_FILE or ${XDG_RUNTIME_DIR}/containers/auth.json (podman);
5. anonymous.

Secrets are held in `Credentials`, whose repr hides them; nothing here logs.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ..errors import AuthError

# The key Docker uses for Docker Hub in config.json.
DOCKER_HUB_KEYS = ("https://index.docker.io/v1/", "index.docker.io", "docker.io",
                   "registry-1.docker.io")


@dataclass(frozen=True)
class Credentials:
    """A username and password, or an identity (refresh) token."""

    username: str = ""
    password: str = ""
    identity_token: str = ""

    def __repr__(self) -> str:
        return f"Credentials(username={self.username!r}, secret=***)"


def _keys_for(host: str) -> tuple[str, ...]:
    """The spellings a config file may use for a host."""
    if host in ("docker.io", "index.docker.io", "registry-1.docker.io"):
        return DOCKER_HUB_KEYS
    return (host, f"https://{host}", f"http://{host}", f"https://{host}/v1/", f"https://{host}/v2/")


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise AuthError(f"{path}: cannot read credentials file ({exc.__class__.__name__}); fix or move it") from None
    return data if isinstance(data, dict) else {}


def _from_auths(auths: dict, host: str, source: str) -> Credentials | None:
    if not isinstance(auths, dict):
        return None
    for key in _keys_for(host):
        entry = auths.get(key)
        if not isinstance(entry, dict):
            continue
        if entry.get("identitytoken"):
            return Credentials(username=entry.get("username", ""), identity_token=entry["identitytoken"])
        if entry.get("auth"):
            try:
                user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                raise AuthError(f"{source}: the 'auth' value for {key} is not base64 of user:password") from None
            return Credentials(user, password)
        if entry.get("username") and entry.get("password"):
            return Credentials(entry["username"], entry["password"])
    return None


def _from_helper(helper: str, host: str) -> Credentials | None:
    program = f"docker-credential-{helper}"
    server = "https://index.docker.io/v1/" if host in DOCKER_HUB_KEYS else host
    try:
        proc = subprocess.run([program, "get"], input=server.encode(), capture_output=True, timeout=30)
    except FileNotFoundError:
        raise AuthError(f"credential helper {program} named in the docker config is not on PATH; "
                        "install it or remove it from config.json") from None
    except subprocess.TimeoutExpired:
        raise AuthError(f"credential helper {program} did not answer within 30 s") from None
    if proc.returncode != 0:
        # "credentials not found" is the helper's normal answer for a host it does not know.
        return None
    try:
        data = json.loads(proc.stdout)
    except ValueError:
        raise AuthError(f"credential helper {program} printed something that is not JSON") from None
    user, secret = data.get("Username", ""), data.get("Secret", "")
    if not secret:
        return None
    if user == "<token>":
        return Credentials(identity_token=secret)
    return Credentials(user, secret)


def lookup(host: str, configured: tuple[str, str] | None = None,
           env: dict[str, str] | None = None) -> Credentials | None:
    """The credentials for `host` (as written in references), or None for anonymous access."""
    env = os.environ if env is None else env
    if configured:
        return Credentials(*configured)
    docker_dir = Path(env["DOCKER_CONFIG"]) if env.get("DOCKER_CONFIG") else Path.home() / ".docker"
    docker_cfg_path = docker_dir / "config.json"
    docker_cfg = _read_json(docker_cfg_path)
    helpers = docker_cfg.get("credHelpers") or {}
    for key in _keys_for(host):
        if isinstance(helpers, dict) and key in helpers:
            return _from_helper(helpers[key], host)
    if docker_cfg.get("credsStore"):
        found = _from_helper(docker_cfg["credsStore"], host)
        if found:
            return found
    found = _from_auths(docker_cfg.get("auths"), host, str(docker_cfg_path))
    if found:
        return found
    podman_files = []
    if env.get("REGISTRY_AUTH_FILE"):
        podman_files.append(Path(env["REGISTRY_AUTH_FILE"]))
    if env.get("XDG_RUNTIME_DIR"):
        podman_files.append(Path(env["XDG_RUNTIME_DIR"]) / "containers" / "auth.json")
    for path in podman_files:
        found = _from_auths(_read_json(path).get("auths"), host, str(path))
        if found:
            return found
    return None
