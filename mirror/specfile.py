"""mirror.yaml (version 1) -> a typed, validated MirrorSpec, before any network request.

Every error names the file, the line and the key path (`mirror.yaml:14 images[2].source: ...`).
Unknown keys are errors, so a typo never silently changes what gets mirrored.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import yaml

from .errors import PlatformError, ReferenceError_, SpecError
from .core.platform import Platform, parse_platform
from .core.reference import Reference, parse_reference
from .core.selection import TagFilter, check_filter
from .core.spec import (ALL_PLATFORMS, DEFAULT_CONCURRENCY, DEFAULT_OUTPUT, DEFAULT_RETRIES,  # noqa: F401
                        ImageSpec, Keyless, MirrorSpec, RegistryConfig, TrustRule, TrustSpec)

_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_TOP_KEYS = {"version", "output", "cache", "concurrency", "platforms", "keep_index_digest",
             "load_platform", "registries", "images", "referrers", "trust"}
_TRUST_KEYS = {"keys", "policies"}
_POLICY_KEYS = {"match", "signed_by", "keyless", "accept", "match_reference"}
_KEYLESS_KEYS = {"issuer", "identity", "trusted_root"}
_REGISTRY_KEYS = {"username", "password", "insecure", "ca_file", "max_concurrency", "retries"}
_IMAGE_KEYS = {"source", "tags", "digests", "platforms", "target", "referrers"}
_FILTER_KEYS = {"include", "exclude", "semver", "latest"}
_NULL = "tag:yaml.org,2002:null"


def beside(manifest: str | os.PathLike, path: str) -> str:
    """A path written in mirror.yaml (output, cache, ca_file): `~` expanded, and a relative one
    taken relative to the manifest's directory, so a cron job's working directory never matters."""
    path = os.path.expanduser(path)
    if not os.path.isabs(path):
        path = os.path.join(os.path.dirname(os.path.abspath(manifest)), path)
    return os.path.normpath(path)


def load_spec(path: str | os.PathLike, env: dict[str, str] | None = None) -> MirrorSpec:
    """Read and validate a mirror.yaml file."""
    name = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError("file not found; pass the path of your mirror.yaml", file=name) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"cannot read the file ({exc})", file=name) from None
    return parse_spec(text, name, os.environ if env is None else env)


def parse_spec(text: str, name: str, env) -> MirrorSpec:
    """Validate manifest text; `name` is used in messages, `env` for ${VAR} expansion."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark, context = exc.problem_mark or exc.context_mark, exc.context
        if context and exc.context_mark and mark and exc.context_mark.line != mark.line:
            context += f" started on line {exc.context_mark.line + 1}"   # often the real culprit
        reason = exc.problem or exc.context or "cannot be read"
        if context and exc.problem:   # "expected X" + "but found Y" reads as one sentence
            reason = f"{context} {reason}" if reason.startswith("but ") else f"{reason} ({context})"
        raise SpecError(f"not valid YAML: {reason}", file=name,
                        line=mark.line + 1 if mark else None) from None
    except yaml.reader.ReaderError as exc:   # a control character, or bytes that are not UTF-8
        line = text.count("\n", 0, exc.position) + 1 if isinstance(text, str) else None
        raise SpecError(f"not valid YAML: {exc.reason} (found character #x{exc.character:04x}); "
                        "remove it", file=name, line=line) from None
    except yaml.YAMLError as exc:
        raise SpecError(f"not valid YAML: {exc}", file=name) from None
    except RecursionError:   # the composer recurses once per level of nesting
        raise SpecError("lists or mappings nested too deeply to read", file=name) from None
    return _Reader(name, env).spec(root)


def _shown(node) -> str:
    """What a node holds, for "expected X, not Y" messages."""
    if isinstance(node, yaml.ScalarNode):
        return "an empty value" if node.tag == _NULL else repr(node.value)
    return "a list" if isinstance(node, yaml.SequenceNode) else "a mapping"


class _Nodes:
    """Typed values read from YAML nodes, each failure naming the file, line and key path."""

    def __init__(self, name: str, env):
        self.name, self.env = name, env

    def fail(self, node, path: str, message: str):
        raise SpecError(message, file=self.name, line=node.start_mark.line + 1 if node else None,
                        path=path or None)

    # --- scalar helpers -------------------------------------------------------------------
    def mapping(self, node, path: str, allowed: set[str]) -> dict[str, tuple]:
        if not isinstance(node, yaml.MappingNode):
            self.fail(node, path, f"expected a mapping (key: value), not {_shown(node)}")
        out: dict[str, tuple] = {}
        for knode, vnode in node.value:
            if not isinstance(knode, yaml.ScalarNode):
                self.fail(knode, path, f"a key must be a plain name, not {_shown(knode)}")
            key = knode.value
            where = f"{path}.{key}" if path else key
            if key not in allowed:
                hint = ", ".join(sorted(allowed))
                self.fail(knode, where, f"unknown key {key!r} (allowed here: {hint})")
            if key in out:
                self.fail(knode, where, "key given twice")
            out[key] = (knode, vnode, where)
        return out

    def string(self, node, path: str) -> str:
        if not isinstance(node, yaml.ScalarNode) or node.tag == _NULL:
            self.fail(node, path, f"expected a string, not {_shown(node)}")
        def sub(m):
            var = m.group(1)
            if var not in self.env:
                self.fail(node, path, f"environment variable ${{{var}}} is not set; export it or remove it")
            return self.env[var]
        return _ENV_RE.sub(sub, node.value)

    def integer(self, node, path: str, low: int, high: int) -> int:
        value = None
        if isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:int":
            try:
                value = int(node.value.replace("_", ""), 0)
            except ValueError:
                pass
        if value is None or not low <= value <= high:
            self.fail(node, path, f"expected a whole number from {low} to {high}, not {_shown(node)}")
        return value

    def boolean(self, node, path: str) -> bool:
        if not (isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:bool"):
            self.fail(node, path, f"expected true or false, not {_shown(node)}")
        return node.value.lower() in ("true", "yes", "on")

    def string_list(self, node, path: str) -> list[tuple[str, object, str]]:
        if not isinstance(node, yaml.SequenceNode):
            self.fail(node, path, f"expected a list, e.g. [a, b], not {_shown(node)}")
        return [(self.string(n, f"{path}[{i}]"), n, f"{path}[{i}]") for i, n in enumerate(node.value)]

    def platforms(self, node, path: str, top: bool = False) -> tuple[Platform, ...]:
        """A list of platforms, or `all` (any case, as platform names are): ALL_PLATFORMS."""
        if not isinstance(node, yaml.SequenceNode):
            if isinstance(node, yaml.ScalarNode) and node.tag != _NULL \
                    and self.string(node, path).strip().lower() == "all":
                return ALL_PLATFORMS
            self.fail(node, path, f"expected a list, e.g. [linux/amd64, linux/arm64], or `all` for "
                      f"every platform, not {_shown(node)}")
        out = []
        for text, n, where in self.string_list(node, path):
            try:
                out.append(parse_platform(text))
            except PlatformError as exc:
                every = text.strip().lower() == "all"
                hint = "; for every platform write `platforms: all`, no list" if every else ""
                self.fail(n, where, f"{exc}{hint}")
        if not out:
            self.fail(node, path, "empty list; write `platforms: all`, or omit the key, to take every "
                      "platform" if top else "empty list; write `platforms: all` to take every platform "
                      "(omitting the key takes the top-level `platforms:`)")
        return tuple(dict.fromkeys(out))

class _Reader(_Nodes):
    """The sections of mirror.yaml, walked as composed YAML nodes so every value keeps its line."""

    def spec(self, root) -> MirrorSpec:
        if root is None:
            self.fail(None, "", "the file is empty; see mirror.example.yaml")
        if not isinstance(root, yaml.MappingNode):
            self.fail(root, "", f"expected a mapping with `version: 1` and `images:` at the top "
                      f"level, not {_shown(root)}")
        top = self.mapping(root, "", _TOP_KEYS)
        if "version" not in top:
            self.fail(root, "version", "missing; add `version: 1` at the top")
        knode, vnode, _ = top["version"]
        if not (isinstance(vnode, yaml.ScalarNode) and vnode.value == "1"):
            if isinstance(vnode, yaml.ScalarNode) and vnode.tag != _NULL:
                self.fail(vnode, "version", f"unsupported version {vnode.value!r}; this imgmirror reads version 1")
            self.fail(vnode, "version", f"expected `version: 1`, not {_shown(vnode)}")
        kw: dict = {}
        for key in ("output", "cache"):
            if key in top:
                kw[key] = self.string(top[key][1], key)
                if not kw[key].strip():
                    self.fail(top[key][1], key, "empty; give a path, or omit the key for the default")
        if "concurrency" in top:
            kw["concurrency"] = self.integer(top["concurrency"][1], "concurrency", 1, 256)
        if "platforms" in top:
            # `all` at the top level is what leaving the key out means: no filter
            kw["platforms"] = self.platforms(top["platforms"][1], "platforms", top=True) or None
        if "keep_index_digest" in top:
            kw["keep_index_digest"] = self.boolean(top["keep_index_digest"][1], "keep_index_digest")
        if "referrers" in top:
            kw["referrers"] = self.boolean(top["referrers"][1], "referrers")
        if "load_platform" in top:
            n = top["load_platform"][1]
            try:
                kw["load_platform"] = parse_platform(self.string(n, "load_platform"))
            except PlatformError as exc:
                self.fail(n, "load_platform", str(exc))
        if "registries" in top:
            kw["registries"] = self.registries(top["registries"][1])
        if "trust" in top:
            kw["trust"] = self.trust(top["trust"][1])
        if "images" not in top:
            self.fail(root, "images", "missing; list at least one image to mirror")
        kw["images"] = self.images(top["images"][1])
        return MirrorSpec(path=self.name, **kw)

    def registries(self, node) -> dict[str, RegistryConfig]:
        if not isinstance(node, yaml.MappingNode):
            self.fail(node, "registries", "expected a mapping of registry host -> settings")
        out = {}
        for knode, vnode in node.value:
            if not isinstance(knode, yaml.ScalarNode):
                self.fail(knode, "registries", f"a key must be a registry host, not {_shown(knode)}")
            path, host = f"registries.{knode.value}", self.host(knode)
            if host in out:
                self.fail(knode, path, f"registry {host} given twice (host names ignore case)")
            out[host] = self.registry(vnode, path)
        return out

    def registry(self, vnode, path: str) -> RegistryConfig:
        """One `registries:` entry: credentials, TLS, limits."""
        fields = self.mapping(vnode, path, _REGISTRY_KEYS)
        kw: dict = {}
        for key in ("username", "password", "ca_file"):
            if key in fields:
                kw[key] = self.string(fields[key][1], fields[key][2])
        if "insecure" in fields:
            kw["insecure"] = self.boolean(fields["insecure"][1], fields["insecure"][2])
        if "max_concurrency" in fields:
            kw["max_concurrency"] = self.integer(fields["max_concurrency"][1], fields["max_concurrency"][2], 1, 256)
        if "retries" in fields:
            kw["retries"] = self.integer(fields["retries"][1], fields["retries"][2], 0, 100)
        if ("username" in kw) != ("password" in kw):
            given, missing = ("username", "password") if "username" in kw else ("password", "username")
            self.fail(fields[given][0], path, f"{given} without {missing}; give both, or neither "
                      "to use docker's credentials")
        if "ca_file" in kw:
            kw["ca_file"] = beside(self.name, kw["ca_file"])
        if "ca_file" in kw and not os.path.isfile(ca_file := kw["ca_file"]):
            problem = "is a directory" if os.path.isdir(ca_file) else "does not exist"
            self.fail(fields["ca_file"][1], fields["ca_file"][2], f"file {kw['ca_file']!r} {problem}; "
                      "give the path of the registry's CA certificate (PEM)")
        return RegistryConfig(**kw)

    def host(self, knode) -> str:
        """A `registries:` key, as the registry of a reference would spell it."""
        host = knode.value.strip().lower()
        try:   # a host is what reference parsing takes as one: localhost, or a "." or ":" in it
            ref = parse_reference(f"{host}/x")
        except ReferenceError_:
            ref = None
        if ref is None or "/" in host or not (host == "localhost" or "." in host or ":" in host):
            self.fail(knode, f"registries.{knode.value}", f"{knode.value!r} is not a registry host; "
                      "write it as in references, e.g. ghcr.io, localhost:5000 or registry.internal:5000")
        return ref.registry   # index.docker.io -> docker.io, as references are normalised

    def images(self, node) -> tuple[ImageSpec, ...]:
        if not isinstance(node, yaml.SequenceNode):
            self.fail(node, "images", f"expected a list of images, not {_shown(node)}")
        if not node.value:
            self.fail(node, "images", "empty list; list at least one image to mirror")
        return tuple(self.image(n, f"images[{i}]") for i, n in enumerate(node.value))

    def image(self, node, path: str) -> ImageSpec:
        if isinstance(node, yaml.ScalarNode) and node.tag == _NULL:
            self.fail(node, path, "empty entry; name an image, e.g. `- alpine:3.19`")
        if isinstance(node, yaml.ScalarNode):   # shorthand: "- alpine:3.19"
            fields = {"source": (node, node, f"{path}.source")}
        else:
            fields = self.mapping(node, path, _IMAGE_KEYS)
        if "source" not in fields:
            self.fail(node, f"{path}.source", "missing; name the image, e.g. docker.io/library/alpine")
        snode = fields["source"][1]
        text = self.string(snode, f"{path}.source")
        try:
            ref = parse_reference(text)
        except ReferenceError_ as exc:
            self.fail(snode, f"{path}.source", str(exc))
        where = f"{self.name}:{node.start_mark.line + 1} {path}"
        kw: dict = {}
        if "tags" in fields:
            kw.update(self.tags(ref, *fields["tags"][1:]))
        if "digests" in fields:
            kw["digests"] = self.digests(ref, *fields["digests"][1:])
        if ref.tag or ref.digest:
            if "tags" in fields or "digests" in fields:
                self.fail(snode, f"{path}.source", "a source with a tag or digest is one image; "
                          "drop the tag from source or drop the tags/digests keys")
            if ref.digest and ref.tag:   # the digest wins; the tag names it in the bundle
                kw["pinned"] = ref
            elif ref.digest:
                kw["digests"] = (ref.digest,)
            else:
                kw["tags"] = (ref.tag,)
        elif "tags" not in fields and "digests" not in fields:
            kw["tags"] = ("latest",)   # as `docker pull alpine` does
        if "platforms" in fields:
            kw["platforms"] = self.platforms(fields["platforms"][1], fields["platforms"][2])
        if "target" in fields:
            kw["target"] = self.string(fields["target"][1], fields["target"][2])
        if "referrers" in fields:
            kw["referrers"] = self.boolean(fields["referrers"][1], fields["referrers"][2])
        return ImageSpec(where=where, repository=Reference(ref.registry, ref.repository), **kw)

    def tags(self, ref: Reference, tnode, twhere: str) -> dict:
        """`tags:` as a list (tag_filter for a mapping: include, exclude, semver, latest)."""
        if isinstance(tnode, yaml.MappingNode):
            return {"tag_filter": self.tag_filter(tnode, twhere)}
        tags = []
        for tag, n, w in self.string_list(tnode, twhere):
            try:   # with_tag checks the tag alone: "1.0@sha256:..." is no tag
                ref.with_tag(tag)
            except ReferenceError_:
                self.fail(n, w, f"{tag!r} is not a valid tag (letters, digits, '_', '.' and '-', "
                          "not starting with '.' or '-'; at most 128 characters)")
            tags.append(tag)
        if not tags:
            self.fail(tnode, twhere, "empty list; list tags, or use include/semver/latest to select")
        return {"tags": tuple(dict.fromkeys(tags))}

    def digests(self, ref: Reference, dnode, dwhere: str) -> tuple[str, ...]:
        digests = []
        for d, n, w in self.string_list(dnode, dwhere):
            try:
                ref.with_digest(d)
            except ReferenceError_:
                self.fail(n, w, f"{d!r} is not a valid digest (algorithm:hex, e.g. sha256: and "
                          "64 lowercase hex characters)")
            digests.append(d)
        if not digests:
            self.fail(dnode, dwhere, "empty list; list digests, or omit the key")
        return tuple(dict.fromkeys(digests))

    def tag_filter(self, node, path: str) -> TagFilter:
        fields = self.mapping(node, path, _FILTER_KEYS)
        kw: dict = {}
        for key in ("include", "exclude"):
            if key in fields:
                items = self.string_list(fields[key][1], fields[key][2])
                for t, n, w in items:   # check_filter reports re.error; a few patterns raise others
                    try:
                        with warnings.catch_warnings():
                            warnings.simplefilter("ignore")   # FutureWarning: "possible nested set"
                            re.compile(t)
                    except (re.error, ValueError):
                        pass
                    except (OverflowError, RecursionError) as exc:
                        self.fail(n, w, f'invalid regular expression "{t}": {exc}')
                kw[key] = tuple(t for t, _, _ in items)
        if "semver" in fields:
            kw["semver"] = self.string(fields["semver"][1], fields["semver"][2])
        if "latest" in fields:
            kw["latest"] = self.integer(fields["latest"][1], fields["latest"][2], 1, 100000)
        flt = TagFilter(**kw)
        for key, message in check_filter(flt):
            base = key.split("[")[0]
            n = fields[base][1]
            if "[" in key and isinstance(n, yaml.SequenceNode):
                n = n.value[int(key.split("[")[1].rstrip("]"))]
            self.fail(n, f"{path}.{key}", message)
        if not fields:
            self.fail(node, path, "empty filter; give include, exclude, semver or latest")
        return flt

    # --- trust: ---------------------------------------------------------------------------
    def trust(self, node) -> TrustSpec:
        fields = self.mapping(node, "trust", _TRUST_KEYS)
        keys, files = {}, {}
        if "keys" in fields:
            knode = fields["keys"][1]
            for name, (_kn, vn, where) in self.mapping(knode, "trust.keys", _AnyKey()).items():
                files[name] = beside(self.name, self.string(vn, where))
                keys[name] = self.key_file(vn, where, files[name])
        if "policies" not in fields:
            self.fail(node, "trust.policies", "missing; list the policies (match: and signed_by:, "
                      "keyless: or accept: unsigned), or remove trust:")
        pnode = fields["policies"][1]
        if not isinstance(pnode, yaml.SequenceNode) or not pnode.value:
            self.fail(pnode, "trust.policies", f"expected a list of policies, not {_shown(pnode)}")
        rules = tuple(self.policy(n, f"trust.policies[{i}]", keys) for i, n in enumerate(pnode.value))
        return TrustSpec(keys=keys, key_files=files, policies=rules)

    def key_file(self, node, where: str, path: str) -> bytes:
        """A public key file: there, readable, and a key cosign could have signed with."""
        from .trust.cosign import load_public_key
        return self.trust_file(node, where, path, load_public_key, "a PEM public key (cosign.pub)")

    def trust_file(self, node, where: str, path: str, check, what: str) -> bytes:
        """A file the trust policy reads (a key, a trusted root): its bytes, `check`ed."""
        try:
            raw = Path(path).read_bytes()
        except OSError as exc:
            self.fail(node, where, f"cannot read {path!r} ({exc.strerror or exc}); give the path of "
                      f"{what}, relative to this manifest")
        try:
            check(raw)
        except ValueError as exc:
            self.fail(node, where, f"{path}: {exc}")
        return raw

    def policy(self, node, path: str, keys: dict) -> TrustRule:
        fields = self.mapping(node, path, _POLICY_KEYS)
        if "match" not in fields:
            self.fail(node, f"{path}.match", "missing; give a glob over references, e.g. ghcr.io/org/*")
        match = self.string(fields["match"][1], fields["match"][2]).strip()
        kinds = [k for k in ("signed_by", "keyless", "accept") if k in fields]
        if len(kinds) != 1:
            self.fail(node, path, "give exactly one of signed_by: [KEY…], keyless: {…} or accept: unsigned"
                      + (f" (found {' and '.join(kinds)})" if kinds else ""))
        kw: dict = {"where": f"{self.name}:{node.start_mark.line + 1} {path}", "match": match}
        if "signed_by" in fields:
            names = self.string_list(fields["signed_by"][1], fields["signed_by"][2])
            if not names:
                self.fail(fields["signed_by"][1], fields["signed_by"][2], "empty list; name a key of trust.keys")
            for name, n, w in names:
                if name not in keys:
                    known = ", ".join(sorted(keys)) or "none"
                    self.fail(n, w, f"no key {name!r} in trust.keys (known: {known})")
            kw["signed_by"] = tuple(dict.fromkeys(n for n, _, _ in names))
        if "keyless" in fields:
            kw["keyless"] = self.keyless(fields["keyless"][1], fields["keyless"][2])
        if "accept" in fields:
            value = self.string(fields["accept"][1], fields["accept"][2])
            if value != "unsigned":
                self.fail(fields["accept"][1], fields["accept"][2], f"expected `accept: unsigned`, not {value!r}")
            kw["accept_unsigned"] = True
        if "match_reference" in fields:
            kw["match_reference"] = self.boolean(fields["match_reference"][1], fields["match_reference"][2])
        return TrustRule(**kw)

    def keyless(self, node, path: str) -> Keyless:
        fields = self.mapping(node, path, _KEYLESS_KEYS)
        for key in sorted(_KEYLESS_KEYS - set(fields)):
            self.fail(node, f"{path}.{key}", "missing; keyless needs issuer, identity and trusted_root")
        issuer = self.string(fields["issuer"][1], fields["issuer"][2])
        identity = self.string(fields["identity"][1], fields["identity"][2])
        try:
            re.compile(identity)
        except (re.error, OverflowError, RecursionError) as exc:
            self.fail(fields["identity"][1], fields["identity"][2], f"invalid regular expression: {exc}")
        rnode, rwhere = fields["trusted_root"][1], fields["trusted_root"][2]
        root_path = beside(self.name, self.string(rnode, rwhere))
        from .trust.keyless import load_trusted_root
        raw = self.trust_file(rnode, rwhere, root_path, load_trusted_root, "a Sigstore trusted_root.json")
        return Keyless(issuer=issuer, identity=identity, trusted_root=root_path, root_json=raw)


class _AnyKey(set):
    """`allowed` for a mapping whose keys are names of the user's choosing."""

    def __contains__(self, key) -> bool:
        return isinstance(key, str) and bool(key.strip())

