"""mirror.yaml (version 1) -> a typed, validated MirrorSpec, before any network request.

Every error names the file, the line and the key path (`mirror.yaml:14 images[2].source: ...`).
Unknown keys are errors, so a typo never silently changes what gets mirrored.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .errors import PlatformError, ReferenceError_, SpecError
from .platform import Platform, parse_platform
from .reference import Reference, parse_reference
from .selection import TagFilter, check_filter

_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_TOP_KEYS = {"version", "output", "cache", "concurrency", "platforms", "keep_index_digest",
             "load_platform", "registries", "images"}
_REGISTRY_KEYS = {"username", "password", "insecure", "ca_file", "max_concurrency", "retries"}
_IMAGE_KEYS = {"source", "tags", "digests", "platforms", "target"}
_FILTER_KEYS = {"include", "exclude", "semver", "latest"}
DEFAULT_OUTPUT = "bundles/mirror-{date}.tar"
DEFAULT_CONCURRENCY = 8
DEFAULT_RETRIES = 5


@dataclass(frozen=True)
class RegistryConfig:
    """Settings for one registry host, as written under `registries:`."""

    username: str | None = None
    password: str | None = None
    insecure: bool = False
    ca_file: str | None = None
    max_concurrency: int | None = None
    retries: int = DEFAULT_RETRIES

    def __repr__(self) -> str:  # never print a password, even in a debugger or a traceback
        return (f"RegistryConfig(username={self.username!r}, password={'***' if self.password else None}, "
                f"insecure={self.insecure}, ca_file={self.ca_file!r}, "
                f"max_concurrency={self.max_concurrency}, retries={self.retries})")


@dataclass(frozen=True)
class ImageSpec:
    """One entry of `images:`: a repository and what to take from it."""

    where: str                      # "mirror.yaml:12 images[3]", for messages
    repository: Reference           # no tag, no digest
    tags: tuple[str, ...] = ()      # explicit tags
    tag_filter: TagFilter | None = None   # select from the registry's tag list
    digests: tuple[str, ...] = ()
    platforms: tuple[Platform, ...] | None = None   # None: all platforms
    target: str | None = None
    pinned: Reference | None = None  # source written as name:tag@digest: one image, by digest


@dataclass(frozen=True)
class MirrorSpec:
    """The whole manifest, validated."""

    path: str
    output: str = DEFAULT_OUTPUT
    cache: str | None = None
    concurrency: int = DEFAULT_CONCURRENCY
    platforms: tuple[Platform, ...] | None = None
    keep_index_digest: bool = False
    load_platform: Platform | None = None
    registries: dict[str, RegistryConfig] = field(default_factory=dict)
    images: tuple[ImageSpec, ...] = ()


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
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise SpecError(f"not valid YAML: {getattr(exc, 'problem', None) or exc}", file=name,
                        line=mark.line + 1 if mark else None) from None
    return _Reader(name, env).spec(root)


class _Reader:
    """Walks the composed YAML node tree so every value keeps its line number."""

    def __init__(self, name: str, env):
        self.name, self.env = name, env

    def fail(self, node, path: str, message: str):
        raise SpecError(message, file=self.name, line=node.start_mark.line + 1 if node else None,
                        path=path or None)

    # --- scalar helpers -------------------------------------------------------------------
    def mapping(self, node, path: str, allowed: set[str]) -> dict[str, tuple]:
        if not isinstance(node, yaml.MappingNode):
            self.fail(node, path, "expected a mapping (key: value)")
        out: dict[str, tuple] = {}
        for knode, vnode in node.value:
            key = knode.value if isinstance(knode, yaml.ScalarNode) else None
            where = f"{path}.{key}" if path else str(key)
            if key not in allowed:
                hint = ", ".join(sorted(allowed))
                self.fail(knode, where, f"unknown key {key!r} (allowed here: {hint})")
            if key in out:
                self.fail(knode, where, "key given twice")
            out[key] = (knode, vnode, where)
        return out

    def string(self, node, path: str) -> str:
        if not isinstance(node, yaml.ScalarNode) or node.tag == "tag:yaml.org,2002:null":
            self.fail(node, path, "expected a string")
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
            self.fail(node, path, f"expected a whole number from {low} to {high}")
        return value

    def boolean(self, node, path: str) -> bool:
        if not (isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:bool"):
            self.fail(node, path, "expected true or false")
        return node.value.lower() in ("true", "yes", "on")

    def string_list(self, node, path: str) -> list[tuple[str, object, str]]:
        if isinstance(node, yaml.ScalarNode) and node.tag != "tag:yaml.org,2002:null":
            self.fail(node, path, "expected a list, e.g. [a, b]")
        if not isinstance(node, yaml.SequenceNode):
            self.fail(node, path, "expected a list")
        return [(self.string(n, f"{path}[{i}]"), n, f"{path}[{i}]") for i, n in enumerate(node.value)]

    def platforms(self, node, path: str) -> tuple[Platform, ...]:
        out = []
        for text, n, where in self.string_list(node, path):
            try:
                out.append(parse_platform(text))
            except PlatformError as exc:
                self.fail(n, where, str(exc))
        if not out:
            self.fail(node, path, "empty list; omit the key to take every platform")
        return tuple(dict.fromkeys(out))

    # --- sections -------------------------------------------------------------------------
    def spec(self, root) -> MirrorSpec:
        if root is None:
            self.fail(None, "", "the file is empty; see mirror.example.yaml")
        top = self.mapping(root, "", _TOP_KEYS)
        if "version" not in top:
            self.fail(root, "version", "missing; add `version: 1` at the top")
        knode, vnode, _ = top["version"]
        if not (isinstance(vnode, yaml.ScalarNode) and vnode.value == "1"):
            self.fail(vnode, "version", f"unsupported version {vnode.value!r}; this imgmirror reads version 1")
        kw: dict = {}
        if "output" in top:
            kw["output"] = self.string(top["output"][1], "output")
        if "cache" in top:
            kw["cache"] = self.string(top["cache"][1], "cache")
        if "concurrency" in top:
            kw["concurrency"] = self.integer(top["concurrency"][1], "concurrency", 1, 256)
        if "platforms" in top:
            kw["platforms"] = self.platforms(top["platforms"][1], "platforms")
        if "keep_index_digest" in top:
            kw["keep_index_digest"] = self.boolean(top["keep_index_digest"][1], "keep_index_digest")
        if "load_platform" in top:
            n = top["load_platform"][1]
            try:
                kw["load_platform"] = parse_platform(self.string(n, "load_platform"))
            except PlatformError as exc:
                self.fail(n, "load_platform", str(exc))
        if "registries" in top:
            kw["registries"] = self.registries(top["registries"][1])
        if "images" not in top:
            self.fail(root, "images", "missing; list at least one image to mirror")
        kw["images"] = self.images(top["images"][1])
        return MirrorSpec(path=self.name, **kw)

    def registries(self, node) -> dict[str, RegistryConfig]:
        if not isinstance(node, yaml.MappingNode):
            self.fail(node, "registries", "expected a mapping of registry host -> settings")
        out = {}
        for knode, vnode in node.value:
            host = str(knode.value).lower()
            path = f"registries.{host}"
            if "/" in host or not host:
                self.fail(knode, path, "expected a registry host such as ghcr.io or registry.internal:5000")
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
                self.fail(vnode, path, "give both username and password, or neither")
            if "ca_file" in kw and not os.path.isfile(os.path.expanduser(kw["ca_file"])):
                self.fail(fields["ca_file"][1], fields["ca_file"][2], f"file {kw['ca_file']!r} does not exist")
            out[host] = RegistryConfig(**kw)
        return out

    def images(self, node) -> tuple[ImageSpec, ...]:
        if not isinstance(node, yaml.SequenceNode) or not node.value:
            self.fail(node, "images", "expected a non-empty list of images")
        return tuple(self.image(n, f"images[{i}]") for i, n in enumerate(node.value))

    def image(self, node, path: str) -> ImageSpec:
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
            tnode, twhere = fields["tags"][1], fields["tags"][2]
            if isinstance(tnode, yaml.MappingNode):
                kw["tag_filter"] = self.tag_filter(tnode, twhere)
            else:
                tags = []
                for tag, n, w in self.string_list(tnode, twhere):
                    try:
                        parse_reference(f"{ref.name}:{tag}")
                    except ReferenceError_:
                        self.fail(n, w, f"{tag!r} is not a valid tag (letters, digits, _ . -; at most 128)")
                    tags.append(tag)
                if not tags:
                    self.fail(tnode, twhere, "empty list; list tags, or use include/semver/latest to select")
                kw["tags"] = tuple(dict.fromkeys(tags))
        if "digests" in fields:
            dnode, dwhere = fields["digests"][1], fields["digests"][2]
            digests = []
            for d, n, w in self.string_list(dnode, dwhere):
                try:
                    parse_reference(f"{ref.name}@{d}")
                except ReferenceError_:
                    self.fail(n, w, f"{d!r} is not a valid digest (sha256:<64 hex>)")
                digests.append(d)
            kw["digests"] = tuple(dict.fromkeys(digests))
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
        return ImageSpec(where=where, repository=Reference(ref.registry, ref.repository), **kw)

    def tag_filter(self, node, path: str) -> TagFilter:
        fields = self.mapping(node, path, _FILTER_KEYS)
        kw: dict = {}
        for key in ("include", "exclude"):
            if key in fields:
                kw[key] = tuple(t for t, _, _ in self.string_list(fields[key][1], fields[key][2]))
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
