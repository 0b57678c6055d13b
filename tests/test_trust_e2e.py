"""trust: as users run it, against the suite's real registry: signatures written as cosign writes
them (tests/cosignfake.py), `imgmirror sync` refusing what the policy refuses (outside), and
`verify --policy`, `push --policy` and `serve --policy` checking the bundle alone (inside).

The signed multi-arch index is filtered to one platform on the way, so the inside check has to
follow the chain: signature -> the registry's index digest -> the original index bytes carried
in the bundle -> every kept child listed there with the same descriptor."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest

import imagegen as g
from cosignfake import gen_key, sign_image, simple_signing_payload, sig_image, sign
from helpers import run_cli, write_manifest
from mirror.core.oci import digest_hex


@pytest.fixture(scope="module")
def keys():
    release, release_pem = gen_key("ecdsa-p256")
    other, _ = gen_key("ecdsa-p256")
    return release, release_pem, other


def _sig(host, repo, digest, image):
    g.push_raw(image, host, repo, g.cosign_tag(digest))


@pytest.fixture
def world(registry, keys, tmp_path):
    """The source registry: one image per case, and a mirror.yaml with a trust: policy."""
    release, release_pem, other = keys
    host = registry.host
    multi = g.make_multiarch("trust-multi", attestations=False)
    g.push(multi, host, "team/signed", "1.0")
    _sig(host, "team/signed", multi.digest, sign_image(multi.digest, f"{host}/team/signed", release))

    plain = g.make_image([g.make_layer("trust-unsigned", 2048)])
    g.push(plain, host, "team/unsigned", "1.0")

    by_other = g.make_image([g.make_layer("trust-other", 2048)])
    g.push(by_other, host, "team/otherkey", "1.0")
    _sig(host, "team/otherkey", by_other.digest, sign_image(by_other.digest, f"{host}/team/otherkey", other))

    wrong = g.make_image([g.make_layer("trust-wrong", 2048)])
    g.push(wrong, host, "team/wrongdigest", "1.0")
    payload = simple_signing_payload(plain.digest, f"{host}/team/wrongdigest")     # names another image
    _sig(host, "team/wrongdigest", wrong.digest, sig_image([(payload, sign(release, payload))]))

    before, after = (g.make_image([g.make_layer(f"trust-moved-{i}", 2048)]) for i in (1, 2))
    g.push(before, host, "team/moved", "1.0")
    _sig(host, "team/moved", before.digest, sign_image(before.digest, f"{host}/team/moved", release))
    g.push(after, host, "team/moved", "1.0")           # the tag moved to an unsigned image

    optout = g.make_image([g.make_layer("trust-optout", 2048)])
    g.push(optout, host, "team/optout", "1.0")
    free = g.make_image([g.make_layer("trust-free", 2048)])
    g.push(free, host, "other/free", "1.0")

    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "release.pub").write_bytes(release_pem)
    manifest = write_manifest(tmp_path / "mirror.yaml", f"""version: 1
platforms: [linux/amd64]
trust:
  keys:
    release: keys/release.pub
  policies:
    - match: {host}/team/optout*
      accept: unsigned
    - match: {host}/team/*
      signed_by: [release]
images:
  - {host}/team/signed:1.0
  - {host}/team/unsigned:1.0
  - {host}/team/otherkey:1.0
  - {host}/team/wrongdigest:1.0
  - {host}/team/moved:1.0
  - {host}/team/optout:1.0
  - {host}/other/free:1.0
""")
    return {"host": host, "manifest": manifest, "multi": multi, "tmp": tmp_path, "release_pem": release_pem}


@pytest.fixture
def cli(capsys):
    """`imgmirror ARGS` in-process: (exit code, stdout, stderr)."""
    return lambda *args: run_cli(*args, capsys=capsys)


def _sync(world, cli, *extra):
    tmp = world["tmp"]
    code, out, err = cli("sync", str(world["manifest"]), "--cache", str(tmp / "cache"),
                             "--report", str(tmp / "report.json"), "--no-progress", *extra)
    return code, json.loads((tmp / "report.json").read_text()), err


def test_sync_mirrors_only_what_the_policy_allows_and_says_why(world, cli):
    tmp, host = world["tmp"], world["host"]
    code, report, err = _sync(world, cli, "-o", str(tmp / "b.tar"))
    assert code == 1, err
    by = {r["reference"]: r for r in report["images"]}
    signed = by[f"{host}/team/signed:1.0"]
    assert signed["status"] == "ok"
    assert signed["trust"]["ok"] and signed["trust"]["signer"] == "release"
    assert signed["trust"]["policy"].startswith(f"{host}/team/* (")
    assert signed["trust"]["signature"].startswith("sha256:")
    assert signed["source_digest"] == world["multi"].digest       # filtered: the signed digest is the source's
    reasons = {name: by[f"{host}/team/{name}:1.0"]["error"] or "" for name in
               ("unsigned", "otherkey", "wrongdigest", "moved")}
    assert all(by[f"{host}/team/{n}:1.0"]["status"] == "failed" for n in reasons)
    assert "no signature found" in reasons["unsigned"]
    assert "no signature verifies with release" in reasons["otherkey"]
    assert "names another digest" in reasons["wrongdigest"]
    assert "no signature found" in reasons["moved"]          # the new image has no signature of its own
    for n in reasons:
        assert f"trust policy {host}/team/* (" in reasons[n] and "mirror.yaml:" in reasons[n]
    assert by[f"{host}/team/optout:1.0"]["status"] == "ok"
    assert "accepted unsigned" in by[f"{host}/team/optout:1.0"]["trust"]["reason"]
    assert by[f"{host}/other/free:1.0"]["status"] == "ok" and by[f"{host}/other/free:1.0"]["trust"] is None
    # the signature travels; the refused images and their signatures do not
    names = _names(tmp / "b.tar")
    assert f"{host}/team/signed:{g.cosign_tag(world['multi'].digest)}" in names
    assert not any("/team/otherkey" in n or "/team/unsigned" in n for n in names)


def _names(tar: Path) -> set[str]:
    with tarfile.open(tar) as tf:
        index = json.load(tf.extractfile("index.json"))
    return {m["annotations"]["org.opencontainers.image.ref.name"] for m in index["manifests"]}


def test_the_inside_verifies_the_filtered_index_from_the_bundle_alone(world, cli):
    tmp, host = world["tmp"], world["host"]
    _sync(world, cli, "-o", str(tmp / "b.tar"))
    code, out, _ = cli("verify", str(tmp / "b.tar"), "--policy", str(world["manifest"]))
    assert code == 0, out
    assert f"trusted: {host}/team/signed:1.0 {world['multi'].digest}: signed by release" in out
    # --key: every image must be signed with it; the opt-out and the free image are not
    code, out, _ = cli("verify", str(tmp / "b.tar"), "--key", str(tmp / "keys" / "release.pub"))
    assert code == 1
    assert f"problem: {host}/team/optout:1.0: trust policy * (--key): no signature found" in out
    assert f"trusted: {host}/team/signed:1.0" in out


def test_tampered_original_index_bytes_break_the_chain(world, cli):
    tmp, host = world["tmp"], world["host"]
    _sync(world, cli, "-o", str(tmp / "layout") + "/")
    original = tmp / "layout" / "blobs" / "sha256" / digest_hex(world["multi"].digest)
    assert original.exists(), "the original index bytes travel with the filtered index"
    code, out, _ = cli("verify", str(tmp / "layout"), "--policy", str(world["manifest"]))
    assert code == 0, out
    doc = json.loads(original.read_bytes())
    doc["manifests"][0]["annotations"] = {"evil": "yes"}
    original.write_bytes(json.dumps(doc).encode())
    code, out, _ = cli("verify", str(tmp / "layout"), "--policy", str(world["manifest"]))
    assert code == 1
    assert f"problem: {host}/team/signed:1.0: trust policy {host}/team/* (" in out
    assert "original index bytes are damaged" in out


def test_a_filtered_child_not_in_the_signed_index_is_refused(world, cli):
    """The filtered index edited to list a child the signed index never had: the chain breaks."""
    tmp, host = world["tmp"], world["host"]
    _sync(world, cli, "-o", str(tmp / "layout") + "/")
    index = json.loads((tmp / "layout" / "index.json").read_text())
    entry = next(m for m in index["manifests"]
                 if m["annotations"]["org.opencontainers.image.ref.name"] == f"{host}/team/signed:1.0")
    path = tmp / "layout" / "blobs" / "sha256" / digest_hex(entry["digest"])
    doc = json.loads(path.read_bytes())
    doc["manifests"][0]["platform"]["architecture"] = "s390x"
    raw = json.dumps(doc).encode()
    new = g.sha256_digest(raw)
    (tmp / "layout" / "blobs" / "sha256" / digest_hex(new)).write_bytes(raw)
    entry["digest"], entry["size"] = new, len(raw)
    (tmp / "layout" / "index.json").write_text(json.dumps(index))
    code, out, _ = cli("verify", str(tmp / "layout"), "--policy", str(world["manifest"]))
    assert code == 1
    assert "which the signed index" in out and f"{host}/team/signed:1.0" in out


def test_push_with_a_policy_refuses_unsigned_images_before_any_manifest(world, make_registry, cli):
    """A bundle made without the policy, pushed inside with it: only the signed image lands."""
    tmp, host = world["tmp"], world["host"]
    text = world["manifest"].read_text()
    plain = text.split("trust:")[0] + "images:" + text.split("images:")[1]
    write_manifest(tmp / "plain.yaml", plain)
    code, _, err = cli("sync", str(tmp / "plain.yaml"), "--cache", str(tmp / "c2"), "-o",
                           str(tmp / "all.tar"), "--no-progress")
    assert code == 0, err
    inside = make_registry()
    code, out, err = cli("push", str(tmp / "all.tar"), "--to", inside.host, "--policy",
                             str(world["manifest"]), "--report", str(tmp / "push.json"), "--no-progress")
    assert code == 1
    report = json.loads((tmp / "push.json").read_text())
    status = {r["reference"]: (r["status"], r["error"]) for r in report["images"]}
    assert status[f"{host}/team/unsigned:1.0"][0] == "failed"
    assert "no signature found" in status[f"{host}/team/unsigned:1.0"][1]
    assert status[f"{host}/team/optout:1.0"][0] == "ok" and status[f"{host}/other/free:1.0"][0] == "ok"
    puts = [r.path for r in inside.requests() if r.method == "PUT"]
    assert any("/team/optout/manifests/" in p for p in puts)
    assert not any("/team/unsigned/" in p or "/team/otherkey/" in p for p in puts)


def test_push_of_the_trusted_bundle_carries_the_signature_inside(world, make_registry, cli):
    tmp = world["tmp"]
    _sync(world, cli, "-o", str(tmp / "b.tar"))
    inside = make_registry()
    code, out, err = cli("push", str(tmp / "b.tar"), "--to", inside.host, "--policy", str(world["manifest"]),
                             "--no-progress")
    assert code == 0, out + err
    sig_tag = g.cosign_tag(world["multi"].digest)
    raw = g.inspect_raw(inside.host, f"team/signed:{sig_tag}")
    assert json.loads(raw)["layers"][0]["mediaType"] == "application/vnd.dev.cosign.simplesigning.v1+json"


def test_serve_with_a_policy_serves_only_what_verifies(world, cli):
    tmp, host = world["tmp"], world["host"]
    text = world["manifest"].read_text()
    write_manifest(tmp / "plain.yaml", text.split("trust:")[0] + "images:" + text.split("images:")[1])
    cli("sync", str(tmp / "plain.yaml"), "--cache", str(tmp / "c3"), "-o", str(tmp / "all.tar"), "--no-progress")
    from mirror import api
    with api.serve([str(tmp / "all.tar")], listen="127.0.0.1:0", policy=str(world["manifest"])) as server:
        assert any(f"{host}/team/unsigned:1.0 is not served: trust policy" in w for w in server.warnings)
        assert not any("team/optout" in w for w in server.warnings)


@pytest.mark.parametrize("policy, message", [
    ("    - match: x/*\n      signed_by: [nokey]\n", "no key 'nokey' in trust.keys"),
    ("    - match: x/*\n", "give exactly one of signed_by"),
    ("    - match: x/*\n      accept: signed\n", "expected `accept: unsigned`"),
    ("    - match: x/*\n      signed_by: [release]\n      keyless: {issuer: a, identity: b, trusted_root: r.json}\n",
     "found signed_by and keyless"),
])
def test_policy_mistakes_name_the_place(tmp_path, keys, policy, message, cli):
    (tmp_path / "release.pub").write_bytes(keys[1])
    path = write_manifest(tmp_path / "m.yaml", "version: 1\ntrust:\n  keys:\n    release: release.pub\n"
                          f"  policies:\n{policy}images: [alpine]\n")
    code, out, err = cli("sync", str(path), "--dry-run")
    assert code == 2, err
    assert message in err and "m.yaml:" in err and "trust.policies[0]" in err


def test_a_missing_or_bad_key_file_is_named(tmp_path, cli):
    path = write_manifest(tmp_path / "m.yaml", "version: 1\ntrust:\n  keys:\n    release: keys/nope.pub\n"
                          "  policies:\n    - match: '*'\n      signed_by: [release]\nimages: [alpine]\n")
    code, _, err = cli("sync", str(path), "--dry-run")
    assert code == 2 and "m.yaml:4 trust.keys.release" in err and "nope.pub" in err
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "nope.pub").write_text("not a key")
    code, _, err = cli("sync", str(path), "--dry-run")
    assert code == 2 and "trust.keys.release" in err and "PEM" in err


# --- keyless: a Fulcio CA and a Rekor log key of the tests' own making, in a trusted_root.json --

def test_keyless_signatures_verified_outside_and_inside(registry, tmp_path, cli):
    """Two keyless-signed images, one as cosign's .sig tag (certificate and log entry in the
    layer's annotations), one as a cosign v3 Sigstore bundle referrer (found through the
    fallback tag on this registry, which has no referrers API), and one signed by another
    identity: the first two pass outside and again inside from the bundle alone, the third fails."""
    from cosignfake import bundle_image
    from sigstorefake import Fulcio, Rekor, sign_keyless, simple_signing, statement, trusted_root_json
    host = registry.host
    fulcio, rekor = Fulcio(), Rekor()
    legacy, v3, stranger = (g.make_image([g.make_layer(f"keyless-{n}", 2048)]) for n in ("legacy", "v3", "x"))
    g.push(legacy, host, "ci/legacy", "1.0")
    s = sign_keyless(fulcio, rekor, simple_signing(legacy.digest, f"{host}/ci/legacy"))
    _sig(host, "ci/legacy", legacy.digest, sig_image([(s.payload, s.signature)], [s.annotations()]))
    g.push(v3, host, "ci/v3", "1.0")
    b = sign_keyless(fulcio, rekor, statement(v3.digest, f"{host}/ci/v3"), kind="bundle")
    referrer = bundle_image(v3, b.bundle())
    g.push_raw(referrer, host, "ci/v3")
    g.push_raw(g.make_fallback_index([referrer]), host, "ci/v3", g.cosign_tag(v3.digest, ""))
    g.push(stranger, host, "ci/stranger", "1.0")
    s = sign_keyless(fulcio, rekor, simple_signing(stranger.digest, f"{host}/ci/stranger"),
                     uri="https://github.com/evil/fork/.github/workflows/release.yml@refs/heads/main")
    _sig(host, "ci/stranger", stranger.digest, sig_image([(s.payload, s.signature)], [s.annotations()]))
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "trusted_root.json").write_bytes(trusted_root_json([fulcio], [rekor]))
    manifest = write_manifest(tmp_path / "mirror.yaml", f"""version: 1
trust:
  policies:
    - match: {host}/ci/*
      keyless:
        issuer: https://token.actions.githubusercontent.com
        identity: '^https://github\\.com/example/'
        trusted_root: keys/trusted_root.json
images: [{host}/ci/legacy:1.0, {host}/ci/v3:1.0, {host}/ci/stranger:1.0]
""")
    code, _, err = cli("sync", str(manifest), "--cache", str(tmp_path / "c"), "-o", str(tmp_path / "k.tar"),
                       "--report", str(tmp_path / "k.json"), "--no-progress")
    assert code == 1, err
    by = {r["reference"]: r for r in json.loads((tmp_path / "k.json").read_text())["images"]}
    for name in ("legacy", "v3"):
        r = by[f"{host}/ci/{name}:1.0"]
        assert r["status"] == "ok", r
        assert r["trust"]["signer"].startswith("https://github.com/example/app/") and \
            r["trust"]["signer"].endswith("(https://token.actions.githubusercontent.com)")
    assert "certificate identity https://github.com/evil/fork/" in by[f"{host}/ci/stranger:1.0"]["error"]
    code, out, _ = cli("verify", str(tmp_path / "k.tar"), "--policy", str(manifest))
    assert code == 0, out
    assert out.count("trusted: ") == 2 and "signed by https://github.com/example/app/" in out


def test_every_key_kind_cosign_signs_with_passes_outside_and_inside(registry, tmp_path, cli):
    """ECDSA P-384, RSA and Ed25519 keys (P-256 is the world fixture's), each signing one image
    pushed into the real registry; one policy naming the three keys."""
    host = registry.host
    (tmp_path / "keys").mkdir()
    images = []
    for kind in ("ecdsa-p384", "rsa", "ed25519"):
        key, pem = gen_key(kind)
        (tmp_path / "keys" / f"{kind}.pub").write_bytes(pem)
        img = g.make_image([g.make_layer(f"kind-{kind}", 1024)])
        g.push(img, host, f"kinds/{kind}", "1")
        _sig(host, f"kinds/{kind}", img.digest, sign_image(img.digest, f"{host}/kinds/{kind}", key))
        images.append(f"{host}/kinds/{kind}:1")
    keys = "".join(f"    {k}: keys/{k}.pub\n" for k in ("ecdsa-p384", "rsa", "ed25519"))
    manifest = write_manifest(tmp_path / "mirror.yaml", f"version: 1\ntrust:\n  keys:\n{keys}  policies:\n"
                              f"    - match: '{host}/kinds/*'\n      signed_by: [ecdsa-p384, rsa, ed25519]\n"
                              f"images: [{', '.join(images)}]\n")
    code, _, err = cli("sync", str(manifest), "--cache", str(tmp_path / "c"), "-o", str(tmp_path / "k.tar"),
                       "--report", str(tmp_path / "k.json"), "--no-progress")
    assert code == 0, err
    signers = {r["reference"]: r["trust"]["signer"] for r in json.loads((tmp_path / "k.json").read_text())["images"]
               if r["trust"]}
    assert signers == {f"{host}/kinds/{k}:1": k for k in ("ecdsa-p384", "rsa", "ed25519")}
    code, out, _ = cli("verify", str(tmp_path / "k.tar"), "--policy", str(manifest))
    assert code == 0 and out.count("trusted: ") == 3, out
