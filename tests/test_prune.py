"""imgmirror prune against real distribution registries: images pushed into a target with
`sync --to`, then dropped from mirror.yaml; prune lists exactly what is no longer selected, deletes
it only with --yes (the DELETE requests counted in the registry's access log), and leaves
everything kept pullable with its digest. Also: digests shared with kept tags, children of kept
indexes, referrers, the --to prefix, a registry whose deletes are switched off, an entry that does
not resolve, and docs/prune.md run as written.

Until `prune` is registered in mirror/cli/__init__.py the tests build the subcommand from
mirror.cli.prune.add_parser (as the lead will register it); once it is, they go through main().
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import yaml

import imagegen
from helpers import run_cli, sha256, write_manifest
from imagegen import (cosign_tag, inspect_raw, make_cosign_signature, make_fallback_index, make_image,
                      make_index, make_layer, make_referrer, push, push_raw)
from mirror.errors import MirrorError, exit_code
from registries import _wait_until_up, registry_binary

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
DOC = Path(__file__).resolve().parents[1] / "docs" / "prune.md"


# --------------------------------------------------------------------------------------------
# Running the command
# --------------------------------------------------------------------------------------------


def _registered() -> bool:
    from mirror.cli import build_parser
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return "prune" in sub.choices


def prune_cli(*args, capsys) -> tuple[int, str, str]:
    """`imgmirror prune ARGS` in-process: (exit code, stdout, stderr)."""
    if _registered():
        return run_cli("prune", *args, capsys=capsys)
    from mirror.cli.prune import add_parser
    parser = argparse.ArgumentParser(prog="imgmirror")
    add_parser(parser.add_subparsers(dest="command"))
    ns = parser.parse_args(["prune", *map(str, args)])
    try:
        code = ns.handler(ns)
    except MirrorError as exc:          # as mirror.cli.main does
        print(f"imgmirror: error: {exc}", file=sys.stderr)
        code = exit_code(exc)
    out = capsys.readouterr()
    return code, out.out, out.err


# The `imgmirror` the doc's commands run: the console script, with `prune` built from its
# add_parser while mirror/cli/__init__.py does not register it yet.
SHIM = f"""#!{sys.executable}
import argparse, sys
from mirror.cli import build_parser, main
from mirror.errors import MirrorError, exit_code
argv = sys.argv[1:]
sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
if argv[:1] == ["prune"] and "prune" not in sub.choices:
    from mirror.cli.prune import add_parser
    parser = argparse.ArgumentParser(prog="imgmirror")
    add_parser(parser.add_subparsers(dest="command"))
    ns = parser.parse_args(argv)
    try:
        sys.exit(ns.handler(ns))
    except MirrorError as exc:
        print(f"imgmirror: error: {{exc}}", file=sys.stderr)
        sys.exit(exit_code(exc))
sys.exit(main(argv))
"""


# --------------------------------------------------------------------------------------------
# Looking at the target
# --------------------------------------------------------------------------------------------


def http(reg, method: str, path: str) -> tuple[int, bytes]:
    req = urllib.request.Request(f"{reg.url}{path}", method=method, headers={"Accept": imagegen.ACCEPT_ALL})
    try:
        with _OPENER.open(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def tags(reg, repo: str) -> set[str]:
    status, body = http(reg, "GET", f"/v2/{repo}/tags/list")
    return set(json.loads(body).get("tags") or []) if status == 200 else set()


def digest_of(reg, ref: str) -> str:
    """The digest the target serves for `repo:tag` (skopeo, as a puller sees it)."""
    return sha256(inspect_raw(reg.host, ref))


def has_manifest(reg, repo: str, digest: str) -> bool:
    return http(reg, "GET", f"/v2/{repo}/manifests/{digest}")[0] == 200


def pull(reg, ref: str, dest: Path) -> None:
    """A real pull: every blob of the image fetched and checked by skopeo."""
    imagegen._skopeo("copy", "--src-tls-verify=false", "--quiet", f"docker://{reg.host}/{ref}", f"dir:{dest}")


def entries(report: Path) -> set[tuple]:
    return {(e["repository"], e["tag"], e["digest"], e["action"]) for e in json.loads(report.read_text())["entries"]}


def deletes(reg, since: int) -> list[str]:
    return [r.path for r in reg.requests("DELETE", since=since)]


def signed(host: str, repo: str, tag: str, seed: str) -> imagegen.Image:
    """An image pushed at repo:tag with its cosign signature under sha256-<hex>.sig."""
    image = make_image([make_layer(f"{repo}-{seed}", 2048)])
    push(image, host, repo, tag)
    push(make_cosign_signature(image, seed=seed), host, repo, cosign_tag(image.digest))
    return image


def manifest_text(cache: Path, images: str, referrers: bool = True) -> str:
    return (f"version: 1\ncache: {cache}\nreferrers: {str(referrers).lower()}\nplatforms: all\n"
            f"images:\n{images}")


def sync_to(manifest: Path, to: str, capsys) -> None:
    code, _, err = run_cli("sync", manifest, "--to", to, "--no-progress", capsys=capsys)
    assert code == 0, err


# --------------------------------------------------------------------------------------------
# The tests
# --------------------------------------------------------------------------------------------


def test_prune_lists_exactly_the_dropped_image_and_deletes_it_only_with_yes(make_registry, tmp_path, capsys):
    source, target = make_registry(), make_registry()
    a = signed(source.host, "test/a", "1.0", "a")
    b = signed(source.host, "test/b", "1.0", "b")
    c = signed(source.host, "test/c", "1.0", "c")
    sig = {x: make_cosign_signature(img, seed=x) for x, img in (("a", a), ("b", b), ("c", c))}
    three = (f"  - {source.host}/test/a:1.0\n"
             f"  - source: {source.host}/test/b:1.0\n    target: tools/b\n"
             f"  - {source.host}/test/c:1.0\n")
    m = write_manifest(tmp_path / "mirror.yaml", manifest_text(tmp_path / "cache", three))
    sync_to(m, f"{target.host}/mirror", capsys)
    assert tags(target, "mirror/test/c") == {"1.0", cosign_tag(c.digest)}

    two = "".join(three.splitlines(keepends=True)[:3])          # test/c dropped
    write_manifest(m, manifest_text(tmp_path / "cache", two))
    mark = target.mark()
    code, out, err = prune_cli(m, "--to", f"{target.host}/mirror", "--report", tmp_path / "list.json",
                               capsys=capsys)
    assert code == 0, err
    want = {("mirror/test/c", "1.0", c.digest), ("mirror/test/c", cosign_tag(c.digest), sig["c"].digest)}
    assert entries(tmp_path / "list.json") == {(*w, "listed") for w in want}
    assert f"would delete {target.host}/mirror/test/c:1.0 {c.digest}" in out
    assert "nothing was deleted: run the same command with --yes" in out
    assert deletes(target, mark) == []                          # listing deletes nothing
    assert tags(target, "mirror/test/c") == {"1.0", cosign_tag(c.digest)}

    mark = target.mark()
    code, out, err = prune_cli(m, "--to", f"{target.host}/mirror", "--yes", "--report", tmp_path / "del.json",
                               capsys=capsys)
    assert code == 0, err
    assert entries(tmp_path / "del.json") == {(*w, "deleted") for w in want}
    assert sorted(deletes(target, mark)) == sorted(f"/v2/mirror/test/c/manifests/{d}" for _, _, d in want)
    assert all(r.status == 202 for r in target.requests("DELETE", since=mark))
    assert json.loads((tmp_path / "del.json").read_text())["totals"]["deletes"] == 2
    assert tags(target, "mirror/test/c") == set()
    # the kept images (and their signatures) are there with their digests, and pull
    assert digest_of(target, "mirror/test/a:1.0") == a.digest
    assert digest_of(target, "mirror/tools/b:1.0") == b.digest
    assert digest_of(target, f"mirror/test/a:{cosign_tag(a.digest)}") == sig["a"].digest
    assert digest_of(target, f"mirror/tools/b:{cosign_tag(b.digest)}") == sig["b"].digest
    pull(target, "mirror/test/a:1.0", tmp_path / "pulled-a")
    pull(target, "mirror/tools/b:1.0", tmp_path / "pulled-b")

    mark = target.mark()
    code, out, err = prune_cli(m, "--to", f"{target.host}/mirror", "--yes", capsys=capsys)
    assert code == 0, err
    assert "prune: nothing in the" in out and deletes(target, mark) == []


def test_a_tag_sharing_its_digest_with_a_kept_tag_is_kept(make_registry, tmp_path, capsys):
    source, target = make_registry(), make_registry()
    one = signed(source.host, "test/a", "1.0", "one")
    push(one, source.host, "test/a", "latest")                  # the same digest as 1.0
    old = signed(source.host, "test/a", "0.9", "old")
    m = write_manifest(tmp_path / "mirror.yaml", manifest_text(
        tmp_path / "cache", f"  - source: {source.host}/test/a\n    tags: ['1.0', latest, '0.9']\n"))
    sync_to(m, f"{target.host}/m", capsys)
    # now only 1.0, and no referrers asked for: the signature of what is kept stays anyway
    write_manifest(m, manifest_text(tmp_path / "cache", f"  - {source.host}/test/a:1.0\n", referrers=False))

    code, out, err = prune_cli(m, "--to", f"{target.host}/m", "--report", tmp_path / "r.json", capsys=capsys)
    assert code == 0, err
    old_sig = make_cosign_signature(old, seed="old").digest
    assert entries(tmp_path / "r.json") == {
        ("m/test/a", "latest", one.digest, "kept-because-referenced"),
        ("m/test/a", cosign_tag(one.digest), make_cosign_signature(one, seed="one").digest, "kept-because-referenced"),
        ("m/test/a", "0.9", old.digest, "listed"),
        ("m/test/a", cosign_tag(old.digest), old_sig, "listed")}
    assert re.search(rf"kept +{target.host}/m/test/a:latest {one.digest} \(its digest is kept: tagged 1\.0", out)

    mark = target.mark()
    code, out, err = prune_cli(m, "--to", f"{target.host}/m", "--yes", capsys=capsys)
    assert code == 0, err
    assert sorted(deletes(target, mark)) == sorted(f"/v2/m/test/a/manifests/{d}" for d in (old.digest, old_sig))
    assert tags(target, "m/test/a") == {"1.0", "latest", cosign_tag(one.digest)}
    assert digest_of(target, "m/test/a:latest") == digest_of(target, "m/test/a:1.0") == one.digest


def test_children_of_a_kept_index_are_kept_and_a_pruned_index_takes_its_own(make_registry, tmp_path, capsys):
    source, target = make_registry(), make_registry()
    amd, arm, ppc = (make_image([make_layer(f"child-{p}", 1024)], platform={"architecture": p, "os": "linux"})
                     for p in ("amd64", "arm64", "ppc64le"))
    first, second = make_index([amd, arm]), make_index([amd, ppc])       # amd64 is in both
    push(first, source.host, "test/m", "1.0")
    push(second, source.host, "test/m", "2.0")
    m = write_manifest(tmp_path / "mirror.yaml", manifest_text(
        tmp_path / "cache", f"  - source: {source.host}/test/m\n    tags: ['1.0', '2.0']\n"))
    sync_to(m, f"{target.host}/m", capsys)
    write_manifest(m, manifest_text(tmp_path / "cache", f"  - {source.host}/test/m:1.0\n"))

    code, out, err = prune_cli(m, "--to", f"{target.host}/m", "--report", tmp_path / "r.json", capsys=capsys)
    assert code == 0, err
    assert entries(tmp_path / "r.json") == {
        ("m/test/m", "2.0", second.digest, "listed"),
        ("m/test/m", None, ppc.digest, "listed"),
        ("m/test/m", None, amd.digest, "kept-because-referenced")}
    assert f"in pruned index {second.digest}, but kept: in kept index {first.digest}" in out

    mark = target.mark()
    code, out, err = prune_cli(m, "--to", f"{target.host}/m", "--yes", capsys=capsys)
    assert code == 0, err
    # the child first, its index last: an interrupted prune leaves the index for a re-run to find
    assert deletes(target, mark) == [f"/v2/m/test/m/manifests/{ppc.digest}",
                                     f"/v2/m/test/m/manifests/{second.digest}"]
    assert digest_of(target, "m/test/m:1.0") == first.digest
    assert has_manifest(target, "m/test/m", amd.digest) and has_manifest(target, "m/test/m", arm.digest)
    assert not has_manifest(target, "m/test/m", ppc.digest)
    pull(target, "m/test/m:1.0", tmp_path / "pulled")


def test_referrers_of_a_dropped_image_go_with_it(make_registry, tmp_path, capsys):
    """The OCI 1.1 fallback tag `sha256-<hex>` is pruned with its subject, and so is the
    artifact it lists, pushed by digest alone; the kept image's are left alone."""
    source, target = make_registry(), make_registry()
    arts = {}
    for name in ("keep", "drop"):
        image = make_image([make_layer(f"ref-{name}", 1024)])
        push(image, source.host, "test/r", name)
        arts[name] = (image, make_referrer(image))
        push_raw(arts[name][1], source.host, "test/r")                                 # by digest
        push_raw(make_fallback_index([arts[name][1]]), source.host, "test/r", cosign_tag(image.digest, ""))
    m = write_manifest(tmp_path / "mirror.yaml", manifest_text(
        tmp_path / "cache", f"  - source: {source.host}/test/r\n    tags: [keep, drop]\n"))
    sync_to(m, f"{target.host}/m", capsys)
    write_manifest(m, manifest_text(tmp_path / "cache", f"  - {source.host}/test/r:keep\n"))

    image, artifact = arts["drop"]
    fallback = make_fallback_index([artifact])
    mark = target.mark()
    code, out, err = prune_cli(m, "--to", f"{target.host}/m", "--yes", "--report", tmp_path / "r.json",
                               capsys=capsys)
    assert code == 0, err
    assert entries(tmp_path / "r.json") == {
        ("m/test/r", "drop", image.digest, "deleted"),
        ("m/test/r", cosign_tag(image.digest, ""), fallback.digest, "deleted"),
        ("m/test/r", None, artifact.digest, "deleted")}
    assert len(deletes(target, mark)) == 3
    keep, keep_artifact = arts["keep"]
    assert tags(target, "m/test/r") == {"keep", cosign_tag(keep.digest, "")}
    assert has_manifest(target, "m/test/r", keep_artifact.digest)
    assert not has_manifest(target, "m/test/r", artifact.digest)


def test_only_repositories_under_the_prefix_are_touched(make_registry, tmp_path, capsys):
    source, target = make_registry(), make_registry()
    a = signed(source.host, "test/a", "1.0", "a")
    m = write_manifest(tmp_path / "mirror.yaml", manifest_text(tmp_path / "cache", f"  - {source.host}/test/a:1.0\n"))
    sync_to(m, f"{target.host}/mirror", capsys)
    stray = make_image([make_layer("stray", 1024)])
    for repo in ("other/x", "mirrorx/y", "mirror", "mirror/stray/z"):    # only the last is under mirror/
        push(stray, target.host, repo, "1")

    code, out, err = prune_cli(m, "--to", f"{target.host}/mirror", "--report", tmp_path / "r.json", capsys=capsys)
    assert code == 0, err
    assert entries(tmp_path / "r.json") == {("mirror/stray/z", "1", stray.digest, "listed")}
    assert "(its repository is not in mirror.yaml)" in out
    assert "2 repositories under" in out                       # mirror/test/a and mirror/stray/z

    mark = target.mark()
    code, out, err = prune_cli(m, "--to", f"{target.host}/mirror", "--yes", capsys=capsys)
    assert code == 0, err
    assert deletes(target, mark) == [f"/v2/mirror/stray/z/manifests/{stray.digest}"]
    for repo in ("other/x", "mirrorx/y", "mirror"):
        assert digest_of(target, f"{repo}:1") == stray.digest
    assert digest_of(target, "mirror/test/a:1.0") == a.digest


def _without_deletes(reg) -> None:
    """Restart a registry of make_registry() on the same storage and port with
    storage.delete.enabled: false, as a registry set up without deletes runs."""
    config = yaml.safe_load(reg.config_path.read_text())
    config["storage"]["delete"]["enabled"] = False
    reg.stop()
    reg.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    with open(reg.log_path, "ab") as log:
        reg.process = subprocess.Popen([registry_binary(), "serve", str(reg.config_path)], stdout=log,
                                       stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=reg.root)
    assert _wait_until_up(reg.url, reg.process, 10), reg.log_text()[-2000:]


def test_a_registry_without_deletes_gets_a_clear_message(make_registry, tmp_path, capsys):
    source, target = make_registry(), make_registry()
    signed(source.host, "test/a", "1.0", "a")
    c = signed(source.host, "test/c", "1.0", "c")
    m = write_manifest(tmp_path / "mirror.yaml", manifest_text(
        tmp_path / "cache", f"  - {source.host}/test/a:1.0\n  - {source.host}/test/c:1.0\n"))
    sync_to(m, f"{target.host}/mirror", capsys)
    _without_deletes(target)
    write_manifest(m, manifest_text(tmp_path / "cache", f"  - {source.host}/test/a:1.0\n"))

    code, out, err = prune_cli(m, "--to", f"{target.host}/mirror", capsys=capsys)
    assert code == 0, err                                        # listing needs no delete
    assert f"would delete {target.host}/mirror/test/c:1.0" in out

    mark = target.mark()
    code, out, err = prune_cli(m, "--to", f"{target.host}/mirror", "--yes", "--report", tmp_path / "r.json",
                               capsys=capsys)
    assert code == 1
    assert "refuses to delete manifests (405 UNSUPPORTED" in err
    assert "storage.delete.enabled: true" in err and "REGISTRY_STORAGE_DELETE_ENABLED=true" in err
    # one DELETE, answered 405 and not retried; the rest not even tried
    assert [(r.method, r.status) for r in target.requests("DELETE", since=mark)] == [("DELETE", 405)]
    report = json.loads((tmp_path / "r.json").read_text())
    assert {e["action"] for e in report["entries"]} == {"failed"} and len(report["entries"]) == 2
    assert "storage.delete.enabled" in report["deletes_disabled"]
    assert tags(target, "mirror/test/c") == {"1.0", cosign_tag(c.digest)}


def test_an_entry_that_does_not_resolve_protects_its_repository(make_registry, tmp_path, capsys):
    source, target = make_registry(), make_registry()
    signed(source.host, "test/a", "1.0", "a1")
    two = signed(source.host, "test/a", "2.0", "a2")
    c = signed(source.host, "test/c", "1.0", "c")
    m = write_manifest(tmp_path / "mirror.yaml", manifest_text(
        tmp_path / "cache", f"  - source: {source.host}/test/a\n    tags: ['1.0', '2.0']\n"
                            f"  - {source.host}/test/c:1.0\n"))
    sync_to(m, f"{target.host}/mirror", capsys)
    # 2.0 dropped, but `gone` does not resolve: nothing in mirror/test/a may be pruned
    write_manifest(m, manifest_text(tmp_path / "cache", f"  - source: {source.host}/test/a\n"
                                                         "    tags: ['1.0', gone]\n"))
    mark = target.mark()
    code, out, err = prune_cli(m, "--to", f"{target.host}/mirror", "--yes", "--report", tmp_path / "r.json",
                               capsys=capsys)
    assert code == 1
    report = json.loads((tmp_path / "r.json").read_text())
    failed = [e for e in report["entries"] if e["action"] == "failed"]
    assert [(e["repository"], e["tag"]) for e in failed] == [("mirror/test/a", None)]
    assert "test/a:gone did not resolve" in failed[0]["error"] and "nothing in this repository" in failed[0]["error"]
    assert {e["repository"] for e in report["entries"] if e["action"] == "deleted"} == {"mirror/test/c"}
    assert all("/mirror/test/c/" in p for p in deletes(target, mark))
    assert "2.0" in tags(target, "mirror/test/a") and digest_of(target, "mirror/test/a:2.0") == two.digest
    assert tags(target, "mirror/test/c") == set() and c.digest


def test_token_auth_asks_for_the_catalog_and_delete_scopes(make_registry, tmp_path, capsys):
    """distribution's token auth wants `registry:catalog:*` for the catalog and the `delete`
    action for a DELETE; the credentials come from the manifest's registries: entry."""
    source, target = make_registry(), make_registry(auth="token")
    signed(source.host, "test/a", "1.0", "a")
    c = signed(source.host, "test/c", "1.0", "c")
    creds = (f"registries:\n  {target.host}:\n    username: {target.username}\n"
             f"    password: {target.password}\n")
    m = write_manifest(tmp_path / "mirror.yaml", creds + manifest_text(
        tmp_path / "cache", f"  - {source.host}/test/a:1.0\n  - {source.host}/test/c:1.0\n"))
    sync_to(m, f"{target.host}/m", capsys)
    write_manifest(m, creds + manifest_text(tmp_path / "cache", f"  - {source.host}/test/a:1.0\n"))
    asked = len(target.token_server.requests)
    mark = target.mark()
    code, out, err = prune_cli(m, "--to", f"{target.host}/m", "--yes", capsys=capsys)
    assert code == 0, err
    assert [(r.path, r.status) for r in target.requests("DELETE", since=mark)] == [
        (f"/v2/m/test/c/manifests/{d}", 202) for d in (make_cosign_signature(c, seed="c").digest, c.digest)]
    scopes = {s for r in target.token_server.requests[asked:] for s in r["scopes"]}
    assert {"registry:catalog:*", "repository:m/test/c:delete"} <= scopes


def test_usage_errors(tmp_path, capsys):
    m = write_manifest(tmp_path / "mirror.yaml", "version: 1\nimages: [alpine]\n")
    code, _, err = prune_cli(m, "--to", "not a host", capsys=capsys)
    assert code == 2 and "--to" in err
    code, _, err = prune_cli(tmp_path / "missing.yaml", "--to", "127.0.0.1:1/m", capsys=capsys)
    assert code == 2 and "missing.yaml" in err


# --------------------------------------------------------------------------------------------
# docs/prune.md, run as written
# --------------------------------------------------------------------------------------------


def test_prune_doc_runs_as_written(make_registry, tmp_path):
    """Every ```yaml block whose first line is `# mirror.yaml…` becomes mirror.yaml; every ```sh
    block's commands run with bash in one directory, exit 0. The only change: the hosts
    (docker.io and ghcr.io: two source registries, registry.internal:5000 the target). The
    output the page shows (indented lines after "prints") is checked against what prune printed,
    digests aside."""
    from test_airgap_doc import Runner, parse_doc, substitute, substitute_commands

    hub, ghcr, internal = make_registry(), make_registry(), make_registry()
    hosts = {"docker.io": hub.host, "ghcr.io": ghcr.host, "registry.internal:5000": internal.host}
    # upstream: alpine 3.19 and 3.20 (two platforms each), the team's app signed, an old tool
    for version in ("3.19", "3.20"):
        kids = [make_image([make_layer(f"alpine-{version}-{p}", 1024)], platform={"architecture": p, "os": "linux"})
                for p in ("amd64", "arm64")]
        push(make_index(kids), hub.host, "library/alpine", version)
    app = signed(ghcr.host, "org/app", "v1.4.0", "app")
    signed(ghcr.host, "org/old-tool", "1.0", "old")

    work = tmp_path / "work"
    work.mkdir()
    runner = Runner(tmp_path)
    shim = tmp_path / "bin" / "imgmirror"
    shim.unlink()
    shim.write_text(SHIM)
    shim.chmod(0o755)

    doc = DOC.read_text()
    blocks = parse_doc(doc)
    assert [b.lang for b in blocks].count("sh") >= 2
    outputs: dict[str, str] = {}
    for block in blocks:
        if block.lang == "yaml":
            assert block.first.startswith("# mirror.yaml"), block.first
            (work / "mirror.yaml").write_text(substitute(block.text, hosts))
            continue
        for cmd in substitute_commands(block, hosts):
            outputs[cmd] = runner.run(cmd, work)

    # what the page shows prune printing, line by line, is what it printed (digests aside)
    shown = re.findall(r"prints:\n\n((?:    .*\n)+)", doc)
    assert len(shown) >= 2, "the page shows the listing and the deletion"
    printed = "".join(outputs.values())
    digestless = re.sub(r"sha256([:-])[0-9a-f]{64}", r"sha256\1…", printed)
    for block in shown:
        at = 0
        for line in block.splitlines():        # each line printed, in the order shown
            line = substitute(line.strip(), hosts)
            found = digestless.find(line + "\n", at)
            assert found >= 0, f"the page shows {line!r} (in this order), prune printed:\n{digestless}"
            at = found + len(line)

    # and the registry agrees: the old tool and alpine 3.19 are gone, the rest is there
    assert tags(internal, "mirror/org/old-tool") == set()
    assert tags(internal, "mirror/library/alpine") == {"3.20"}
    assert tags(internal, "mirror/org/app") == {"v1.4.0", cosign_tag(app.digest)}
    assert digest_of(internal, "mirror/org/app:v1.4.0") == app.digest
    report = json.loads((work / "prune.json").read_text())
    assert {e["action"] for e in report["entries"]} == {"deleted"}
