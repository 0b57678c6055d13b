"""docs/airgap.md, run as written: the weekly air-gap cycle, week by week, against real registries.

The page is parsed into its ```yaml and ```sh blocks, in order, under their `##` headings. The
only change made to the text is the registry hosts: `docker.io` and `ghcr.io` become two local
source registries, `registry.internal:5000` the inside registry (a new, empty one under "A site
that lost its registry"), and serve's `--listen 0.0.0.0:5000` a free loopback port.

- `# mirror.yaml` writes the manifest outside; `# mirror.yaml: add at the end of images:` appends.
- `# outside` / `# inside` blocks run each command (backslash continuations included) with bash
  in the outside or the inside directory, with `imgmirror` on PATH; each must exit 0.
- After an outside block, the files of each `-o BUNDLE` (`BUNDLE.*`: the parts and the sums
  file; the report stays outside) are carried into the inside directory, flat.
- `imgmirror serve` is started in the background, read with skopeo, and stopped.
- The team's cosign key pair is made first; its public half is written to `keys/release.pub`
  outside (where the doc's manifest names it); every ghcr.io image is signed with it, as cosign
  signs (tests/cosignfake.py), and its `sha256-….sig` tag pushed beside it. After week 1's
  outside block `mirror.yaml` and `keys/` are carried in with the bundle, as the doc says.
- Upstream changes before each week (generated images pushed with imagegen): week 1 alpine
  3.18-3.20 (multi-arch) and app (FROM alpine 3.19, every tag signed); week 2 alpine
  3.21 and org/worker, FROM alpine 3.20 (its base layer came in week 1); week 3 alpine 3.21
  rebuilt and app v1.2.0.
- After each week's inside block, skopeo checks that every tag the week selects is in the inside
  registry with the source's digest (the bundle's, for alpine's platform-filtered index), and
  that what earlier weeks pushed is still there. The chain replay is checked the same way.
"""

from __future__ import annotations

import concurrent.futures
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import yaml

import imagegen
from cosignfake import gen_key, sign_image
from registries import free_port

DOC = Path(__file__).resolve().parents[1] / "docs" / "airgap.md"

AMD64 = {"architecture": "amd64", "os": "linux"}
PLATFORMS = imagegen.MULTIARCH_PLATFORMS[:2]      # amd64 and arm64: the filter has work to do
SIZE = 1024

# What mirror.yaml (as the doc writes it, week by week) selects: the test's own expectation of
# the doc, checked against each bundle's index.json and then against the inside registry.
SELECTED = {
    1: {"library/alpine": ["3.19", "3.20"], "org/app": ["v1.0.0", "v1.1.0"]},
    2: {"library/alpine": ["3.20", "3.21"], "org/app": ["v1.0.0", "v1.1.0"], "org/worker": ["v1.0.0"]},
    3: {"library/alpine": ["3.20", "3.21"], "org/app": ["v1.0.0", "v1.1.0", "v1.2.0"],
        "org/worker": ["v1.0.0"]},
}
SIGNED_REPOS = ("org/app", "org/worker")          # every image signed by the team's key (trust:)


# --------------------------------------------------------------------------------------------
# The doc
# --------------------------------------------------------------------------------------------


@dataclass
class Block:
    section: str          # the `## ` heading it is under
    lang: str             # yaml or sh
    first: str            # its first line (the marker comment)
    text: str

    def commands(self) -> list[str]:
        """The commands of an sh block as bash will read them: continuation lines kept with
        their backslashes, blank and comment-only lines dropped."""
        cmds, cur = [], []
        for line in self.text.splitlines():
            if not cur and (not line.strip() or line.lstrip().startswith("#")):
                continue
            cur.append(line)
            if not line.rstrip().endswith("\\"):
                cmds.append("\n".join(cur))
                cur = []
        assert not cur, f"{self.section}: a command ends with a backslash: {cur}"
        return cmds


def parse_doc(text: str) -> list[Block]:
    blocks, section = [], ""
    for m in re.finditer(r"^## ([^\n]+)$|^```(\w*)\n(.*?)^```$", text, re.M | re.S):
        if m.group(1):
            section = m.group(1).strip()
            continue
        lang, body = m.group(2), m.group(3)
        assert lang in ("yaml", "sh"), f"{section}: a code block of language {lang!r}; the test runs only yaml and sh"
        blocks.append(Block(section, lang, body.splitlines()[0].strip(), body))
    return blocks


def week_of(section: str) -> int | None:
    m = re.match(r"Week (\d+)\b", section)
    return int(m.group(1)) if m else None


# --------------------------------------------------------------------------------------------
# Upstream
# --------------------------------------------------------------------------------------------


def amd64_layer(index: imagegen.Index) -> imagegen.Layer:
    (child,) = [c for c in index.children if c.platform == AMD64]
    return child.layers[0]


class Upstream:
    """The two source registries as they change week by week; `digests[(repo, tag)]`."""

    def __init__(self, hub, ghcr):
        self.hub, self.ghcr = hub, ghcr
        self.alpine: dict[str, imagegen.Index] = {}
        self.digests: dict[tuple[str, str], str] = {}
        self.artifacts: dict[tuple[str, str], imagegen.Artifact] = {}
        self.key, self.public_pem = gen_key("ecdsa-p256")     # the team's cosign key pair

    def _alpine(self, version: str, build: str = "") -> imagegen.Index:
        idx = imagegen.make_multiarch(f"alpine-{version}{build}", size=SIZE, platforms=PLATFORMS,
                                      ref=f"library/alpine:{version}")
        self.alpine[version] = idx
        return idx

    def _on(self, base: str, name: str, tag: str) -> imagegen.Image:
        """An image built FROM alpine:<base> (amd64): alpine's layer plus its own."""
        return imagegen.make_image([amd64_layer(self.alpine[base]), imagegen.make_layer(f"{name}-{tag}", SIZE)],
                                   labels={"org.opencontainers.image.version": tag})

    def publish(self, week: int) -> None:
        hub: dict[str, list] = {}
        ghcr: dict[str, list] = {}
        if week == 1:
            hub["library/alpine"] = [(v, self._alpine(v)) for v in ("3.18", "3.19", "3.20")]
            ghcr["org/app"] = [(t, self._on("3.19", "app", t)) for t in ("v1.0.0", "v1.1.0", "v1.2.0-rc1", "v2.0.0")]
        elif week == 2:
            hub["library/alpine"] = [("3.21", self._alpine("3.21"))]
            ghcr["org/worker"] = [("v1.0.0", self._on("3.20", "worker", "v1.0.0"))]
        elif week == 3:
            hub["library/alpine"] = [("3.21", self._alpine("3.21", "-r1"))]     # rebuilt, same tag
            ghcr["org/app"] = [("v1.2.0", self._on("3.21", "app", "v1.2.0"))]
        else:
            raise AssertionError(f"the test knows no upstream for week {week}")

        for repo, items in ghcr.items():    # the team signs what it publishes, as cosign does
            items += [(imagegen.cosign_tag(art.digest), sign_image(art.digest, f"ghcr.io/{repo}", self.key))
                      for _, art in list(items)]

        def push_repo(reg, repo, items):
            for tag, art in items:          # one repository's tags in turn (distribution 2.8 races)
                self.digests[(repo, tag)] = imagegen.push(art, reg.host, repo, tag)
                self.artifacts[(repo, tag)] = art

        jobs = [(self.hub, r, i) for r, i in hub.items()] + [(self.ghcr, r, i) for r, i in ghcr.items()]
        with concurrent.futures.ThreadPoolExecutor(len(jobs)) as pool:
            for fut in [pool.submit(push_repo, *job) for job in jobs]:
                fut.result()

    def layers(self, repo: str, tag: str) -> set[str]:
        """Layer digests of an image (of every child, for an index)."""
        art = self.artifacts[(repo, tag)]
        images = art.children if isinstance(art, imagegen.Index) else (art,)
        return {layer.digest for img in images for layer in img.layers}

    def source_host(self, repo: str) -> str:
        return self.hub.host if repo.startswith("library/") else self.ghcr.host


# --------------------------------------------------------------------------------------------
# Running and checking
# --------------------------------------------------------------------------------------------


class Runner:
    def __init__(self, tmp: Path):
        bindir = tmp / "bin"
        bindir.mkdir()
        venv_script = Path(sys.executable).with_name("imgmirror")
        if venv_script.exists():
            (bindir / "imgmirror").symlink_to(venv_script)
        else:                                           # not installed: the same CLI by module
            (bindir / "imgmirror").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m mirror "$@"\n')
            (bindir / "imgmirror").chmod(0o755)
        (tmp / "docker-config").mkdir()
        self.env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}",
                    "DOCKER_CONFIG": str(tmp / "docker-config"), "XDG_RUNTIME_DIR": str(tmp),
                    "XDG_CACHE_HOME": str(tmp / "xdg-cache"), "PYTHONUNBUFFERED": "1"}
        self.env.pop("REGISTRY_AUTH_FILE", None)
        self.log: list[tuple[str, float]] = []

    def run(self, cmd: str, cwd: Path) -> str:
        t0 = time.monotonic()
        proc = subprocess.run(["bash", "-c", cmd], cwd=cwd, env=self.env, capture_output=True,
                              text=True, timeout=120)
        self.log.append((cmd, time.monotonic() - t0))
        assert proc.returncode == 0, (f"`{cmd}` (in {cwd.name}/) exited {proc.returncode}\n"
                                      f"--- stdout\n{proc.stdout}--- stderr\n{proc.stderr}")
        return proc.stdout

    def serve(self, cmd: str, cwd: Path, port: int, check) -> None:
        """Start `imgmirror serve …` in the background, wait for it, run check(), stop it."""
        proc = subprocess.Popen(["bash", "-c", cmd], cwd=cwd, env=self.env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            deadline = time.monotonic() + 15
            while True:
                assert proc.poll() is None, f"`{cmd}` exited {proc.returncode}: {proc.communicate()[1]}"
                try:
                    with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(
                            f"http://127.0.0.1:{port}/v2/", timeout=2) as resp:
                        if resp.status == 200:
                            break
                except OSError:
                    pass
                assert time.monotonic() < deadline, f"`{cmd}` did not answer on port {port}"
                time.sleep(0.05)
            check()
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)     # our own session: bash and imgmirror
            out, err = proc.communicate(timeout=15)
        assert proc.returncode == 0, f"`{cmd}` exited {proc.returncode} on SIGTERM: {err}"


def substitute(text: str, hosts: dict[str, str]) -> str:
    for name, real in hosts.items():
        text = text.replace(name, real)
    return text


def substitute_commands(block: Block, hosts: dict[str, str]) -> list[str]:
    return [substitute(cmd, hosts) for cmd in block.commands()]


def bundle_files(inside: Path, bundle: str) -> dict[str, bytes]:
    """The files of a (split) bundle carried inside (its parts joined are the tar), by name."""
    parts = sorted(inside.glob(f"{bundle}.[0-9][0-9][0-9]"))
    assert parts, f"no parts of {bundle} were carried in"
    data = b"".join(p.read_bytes() for p in parts)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}


def blob_digests(files: dict[str, bytes]) -> set[str]:
    return {"sha256:" + n.rsplit("/", 1)[1] for n in files if n.startswith("blobs/sha256/")}


def served_digest(host: str, ref: str) -> str:
    return imagegen.sha256_digest(imagegen.inspect_raw(host, ref))


def week_expectation(week: int, upstream: Upstream, files: dict[str, bytes]) -> dict[tuple[str, str], str]:
    """{(repo, tag): digest} the week puts inside, checked against the week's bundle first."""
    index = json.loads(files["index.json"])
    refs = {e["annotations"]["org.opencontainers.image.ref.name"]: e for e in index["manifests"]}
    want: dict[tuple[str, str], str] = {}
    for repo, tags in SELECTED[week].items():
        for tag in tags:
            want[(repo, tag)] = upstream.digests[(repo, tag)]
    for repo, tag in list(want):
        if repo in SIGNED_REPOS:        # the signature travels with the image (referrers, trust)
            sig_tag = imagegen.cosign_tag(upstream.digests[(repo, tag)])
            want[(repo, sig_tag)] = upstream.digests[(repo, sig_tag)]
    expected_refs = {f"{upstream.source_host(repo)}/{repo}:{tag}" for repo, tag in want}
    assert set(refs) == expected_refs, f"week {week}: the bundle's images are not what mirror.yaml selects"
    for (repo, tag), source_digest in list(want.items()):
        entry = refs[f"{upstream.source_host(repo)}/{repo}:{tag}"]
        if repo == "library/alpine":    # platform-filtered: a new index, the source's recorded
            assert entry["digest"] != source_digest
            assert entry["annotations"]["io.imgmirror.source.digest"] == source_digest
            kept = json.loads(files["blobs/sha256/" + entry["digest"].split(":", 1)[1]])["manifests"]
            assert sorted(d["platform"]["architecture"] for d in kept) == ["amd64", "unknown"], kept
            want[(repo, tag)] = entry["digest"]
        else:
            assert entry["digest"] == source_digest, f"{repo}:{tag} changed digest in the bundle"
    return want


def assert_inside(registry, prefix: str, want: dict[tuple[str, str], str], what: str) -> None:
    got = {key: served_digest(registry.host, f"{prefix}/{key[0]}:{key[1]}") for key in want}
    wrong = {f"{r}:{t}": (got[(r, t)], d) for (r, t), d in want.items() if got[(r, t)] != d}
    assert not wrong, f"{what}: tags with the wrong digest (got, want): {wrong}"


# --------------------------------------------------------------------------------------------
# The test
# --------------------------------------------------------------------------------------------


def test_airgap_doc_weekly_cycle_runs_as_written(tmp_path, make_registry):
    doc = DOC.read_text()
    blocks = parse_doc(doc)
    sections = list(dict.fromkeys(b.section for b in blocks))
    assert [week_of(s) for s in sections if week_of(s)] == [1, 2, 3], sections
    assert "A site that lost its registry" in sections

    hub, ghcr, internal = make_registry(), make_registry(), make_registry()
    serve_port = free_port()
    hosts = {"docker.io": hub.host, "ghcr.io": ghcr.host, "registry.internal:5000": internal.host,
             "0.0.0.0:5000": f"127.0.0.1:{serve_port}"}
    outside, inside = tmp_path / "outside", tmp_path / "inside"
    outside.mkdir()
    inside.mkdir()
    runner = Runner(tmp_path)
    upstream = Upstream(hub, ghcr)
    (outside / "keys").mkdir()
    (outside / "keys" / "release.pub").write_bytes(upstream.public_pem)     # where the doc names it
    prefix = "mirror"
    inside_state: dict[tuple[str, str], str] = {}       # what the inside registry must hold
    carried_layers: set[str] = set()                      # layers earlier weeks' bundles held
    t_start = time.monotonic()

    def check_serve(bundle: str, week: int) -> None:
        want = week_expectation(week, upstream, bundle_files(inside, bundle))
        for repo, tag in [("org/app", "v1.1.0"), ("library/alpine", "3.20")]:
            assert served_digest(f"127.0.0.1:{serve_port}", f"{repo}:{tag}") == want[(repo, tag)]

    for section in sections:
        week = week_of(section)
        if week:
            upstream.publish(week)
        if section == "A site that lost its registry":
            hosts["registry.internal:5000"] = (replay := make_registry()).host
        pushed = False
        for block in [b for b in blocks if b.section == section]:
            text = substitute(block.text, hosts)
            if block.lang == "yaml":
                manifest = outside / "mirror.yaml"
                if block.first == "# mirror.yaml":
                    assert not manifest.exists(), "a second full mirror.yaml"
                    manifest.write_text(text)
                elif block.first == "# mirror.yaml: add at the end of images:":
                    before = len(yaml.safe_load(manifest.read_text())["images"])
                    manifest.write_text(manifest.read_text() + text)
                    assert len(yaml.safe_load(manifest.read_text())["images"]) > before, "the addition added no image"
                else:
                    raise AssertionError(f"{section}: a yaml block the test cannot place: {block.first!r}")
                continue
            assert block.first in ("# outside", "# inside"), f"{section}: sh block without # outside/# inside"
            cwd = outside if block.first == "# outside" else inside
            for cmd in substitute_commands(block, hosts):
                if cmd.startswith("imgmirror serve "):
                    bundle = cmd.split()[2]
                    runner.serve(cmd, cwd, serve_port, lambda b=bundle, w=week: check_serve(b, w))
                    continue
                out = runner.run(cmd, cwd)
                if cmd.startswith("sha256sum -c "):
                    assert ": OK" in out and "FAILED" not in out, out
                if cmd.startswith("imgmirror verify ") and "--policy" in cmd:    # each app signed by the key
                    signed = re.findall(r"^trusted: \S+/org/\S+ \S+: signed by release", out, re.M)
                    assert signed and "problem:" not in out, out
                pushed |= cmd.startswith("imgmirror push ")
            if block.first == "# outside":            # the carry: parts and sums, not the report
                for bundle in re.findall(r"-o (\S+)", text):
                    assert f"Carry `{bundle}.*`" in doc, f"the doc does not say to carry {bundle}"
                    carried = sorted(outside.glob(f"{bundle}.*"))
                    names = [f.name for f in carried]
                    assert f"{Path(bundle).name}.sha256sums" in names and f"{Path(bundle).name}.001" in names, names
                    for f in carried:
                        shutil.copy2(f, inside / f.name)
                if week == 1:                     # the policy goes in with the first bundle
                    assert "this first time also\n`mirror.yaml` and `keys/`" in doc
                    shutil.copy2(outside / "mirror.yaml", inside / "mirror.yaml")
                    shutil.copytree(outside / "keys", inside / "keys")
        if week:
            assert pushed, f"{section}: nothing was pushed"
            files = bundle_files(inside, f"week{week}.tar")
            # The doc's claims about what travels: no layer twice; week 2 without the worker's base.
            # (signature payloads travel in every bundle, like manifests: the doc says so)
            layers = {d for key in upstream.artifacts if not key[1].startswith("sha256-")
                      for d in upstream.layers(*key)}
            held = blob_digests(files) & layers
            assert not held & carried_layers, f"week {week} carried layers again: {held & carried_layers}"
            carried_layers |= held
            if week == 2:
                base_layer = amd64_layer(upstream.alpine["3.20"]).digest
                assert base_layer in upstream.layers("org/worker", "v1.0.0") and base_layer not in held
                assert upstream.layers("org/worker", "v1.0.0") - {base_layer} <= held
                assert amd64_layer(upstream.alpine["3.21"]).digest in held
            want = week_expectation(week, upstream, files)
            inside_state.update(want)
            assert_inside(internal, prefix, inside_state, f"after the week {week} push")
        elif section == "A site that lost its registry":
            assert pushed
            assert_inside(replay, prefix, inside_state, "after the chain replay into a new registry")

    assert len(inside_state) == 11   # alpine 3.19-3.21, app v1.0.0-v1.2.0, worker, and their 4 signatures
    elapsed = time.monotonic() - t_start
    slow = sorted(runner.log, key=lambda c: -c[1])[:3]
    print(f"airgap doc cycle: {elapsed:.1f}s; slowest commands: "
          + "; ".join(f"{c.splitlines()[0]} {s:.2f}s" for c, s in slow))
