"""`imgmirror extract`: one image of a bundle as a single-image OCI archive, digests unchanged.

Bundles come from the real `imgmirror sync` against a real registry; the archives are read by
skopeo and podman, the tools a user would load them with. podman is required (never skipped):
the README's claims about what `podman load` keeps are checked here.
"""

from __future__ import annotations

import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

import pytest

from helpers import Bundle, run_cli, sha256, skopeo, write_manifest
from mirror.bundle.extract import find_image
from mirror.errors import UsageError
from mirror.core.oci import Descriptor

OCI_INDEX = "application/vnd.oci.image.index.v1+json"


@pytest.fixture(scope="module")
def made(seeded_registry, tmp_path_factory):
    """Five images synced into one tar, every platform (indexes kept byte for byte). Read-only."""
    host = seeded_registry.registry.host
    work = tmp_path_factory.mktemp("extract")
    manifest = write_manifest(work / "mirror.yaml", f"""version: 1
images:
  - source: {host}/test/base:1.0
  - source: {host}/test/multi:1.0
  - source: {host}/test/dockerv2:1.0
  - source: {host}/test/dockerlist:1.0
  - source: {host}/test/raw:1.0
""")
    tar = work / "bundle.tar"
    assert run_cli("sync", manifest, "-o", tar, "--cache", work / "cache")[0] == 0
    return {"host": host, "seeded": seeded_registry.images, "work": work, "manifest": manifest,
            "tar": tar, "bundle": Bundle(tar)}


def _extract(*args, capsys) -> tuple[int, str, str]:
    return run_cli("extract", *args, capsys=capsys)


def _image_blobs(info: dict) -> set[str]:
    """Every digest an image or index references, itself included (from what was pushed)."""
    out = {info["digest"], *info["blobs"]}
    out |= {c["digest"] for c in info.get("children", ())}
    return out


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


def test_single_image_archive_holds_exactly_its_blobs(made, tmp_path, capsys):
    ref = f"{made['host']}/test/base:1.0"
    info, bundle = made["seeded"]["test/base:1.0"], made["bundle"]
    out = tmp_path / "one.tar"
    code, stdout, err = _extract(made["tar"], ref, "-o", out, capsys=capsys)
    assert code == 0, err
    assert info["digest"] in stdout and "podman load" in stdout
    one = Bundle(out)
    assert set(one.blobs) == _image_blobs(info)
    for digest, data in one.blobs.items():
        assert data == bundle.blobs[digest], f"{digest} changed on the way"
        assert sha256(data) == digest
    assert one.files["oci-layout"] == b'{"imageLayoutVersion":"1.0.0"}'
    # index.json: one entry, exactly the bundle's (descriptor and both name annotations)
    assert one.index["manifests"] == [bundle.entry(ref)]
    assert one.index["manifests"][0]["annotations"]["io.containerd.image.name"] == ref
    # manifest.json: the bundle's docker-load entry for this tag
    assert one.docker_manifest == [e for e in bundle.docker_manifest if ref in e["RepoTags"]]
    assert one.docker_manifest[0]["Config"] == f"blobs/sha256/{info['config'][7:]}"
    assert one.docker_manifest[0]["Layers"] == [f"blobs/sha256/{d[7:]}" for d in info["layers"]]
    # the bundle's own format: verify accepts it, and it is deterministic
    assert run_cli("verify", out)[0] == 0
    again = tmp_path / "again.tar"
    assert _extract(made["tar"], ref, "-o", again, capsys=capsys)[0] == 0
    assert again.read_bytes() == out.read_bytes()
    assert [m.name for m in one.members][:3] == ["oci-layout", "blobs", "blobs/sha256"]
    assert [m.name for m in one.members][-2:] == ["index.json", "manifest.json"]
    assert _leftovers(tmp_path) == []


def test_skopeo_reads_it_and_copies_it_digest_for_digest(made, make_registry, tmp_path, capsys):
    ref = f"{made['host']}/test/base:1.0"
    info = made["seeded"]["test/base:1.0"]
    out = tmp_path / "one.tar"
    assert _extract(made["tar"], ref, "-o", out, capsys=capsys)[0] == 0
    # one image: skopeo needs no name to pick it, and the name works too
    assert skopeo("inspect", "--raw", f"oci-archive:{out}") == info["raw"]
    assert skopeo("inspect", "--raw", f"oci-archive:{out}:{ref}") == info["raw"]
    target = make_registry()
    skopeo("copy", "--quiet", "--preserve-digests", "--dest-tls-verify=false",
           f"oci-archive:{out}", f"docker://{target.host}/copied/base:1.0")
    landed = skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{target.host}/copied/base:1.0")
    assert sha256(landed) == info["digest"]


def test_a_multi_arch_index_extracts_whole(made, make_registry, tmp_path, capsys):
    ref = f"{made['host']}/test/multi:1.0"
    info = made["seeded"]["test/multi:1.0"]
    out = tmp_path / "multi.tar"
    code, _, err = _extract(made["tar"], ref, "-o", out, capsys=capsys)
    assert code == 0, err
    one = Bundle(out)
    # the index, every child manifest (attestations included), every config and layer
    assert set(one.blobs) == _image_blobs(info)
    assert len(info["children"]) == 6 and one.blobs[info["digest"]] == info["raw"]
    entry = one.index["manifests"]
    assert len(entry) == 1 and entry[0]["digest"] == info["digest"] and entry[0]["mediaType"] == OCI_INDEX
    # manifest.json: the linux/amd64 child, for docker load
    amd64 = next(c for c in info["children"] if c["platform"] == {"architecture": "amd64", "os": "linux"})
    assert [e["Config"] for e in one.docker_manifest] == [f"blobs/sha256/{amd64['config'][7:]}"]
    assert skopeo("inspect", "--raw", f"oci-archive:{out}") == info["raw"]
    target = make_registry()
    skopeo("copy", "--quiet", "--all", "--preserve-digests", "--dest-tls-verify=false",
           f"oci-archive:{out}", f"docker://{target.host}/copied/multi:1.0")
    landed = skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{target.host}/copied/multi:1.0")
    assert sha256(landed) == info["digest"]


def test_a_docker_media_type_image_reads_without_a_name(made, tmp_path, capsys):
    """skopeo 1.x (and `podman pull oci-archive:`) cannot pick a Docker-media-type entry of
    index.json by name; an archive of that one image needs no name."""
    ref = f"{made['host']}/test/dockerv2:1.0"
    proc = subprocess.run(["skopeo", "inspect", "--raw", f"oci-archive:{made['tar']}:{ref}"],
                          capture_output=True, timeout=60)
    assert proc.returncode != 0 and b"no descriptor found" in proc.stderr   # the limitation stands
    out = tmp_path / "d2.tar"
    assert _extract(made["tar"], ref, "-o", out, capsys=capsys)[0] == 0
    assert skopeo("inspect", "--raw", f"oci-archive:{out}") == made["seeded"]["test/dockerv2:1.0"]["raw"]


def test_short_forms_and_digests_find_the_image(made, tmp_path, capsys):
    host = made["host"]
    info = made["seeded"]["test/base:1.0"]
    out = tmp_path / "by-digest.tar"
    code, stdout, err = _extract(made["tar"], f"{host}/test/base@{info['digest']}", "-o", out, capsys=capsys)
    assert code == 0, err
    assert Bundle(out).index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"] \
        == f"{host}/test/base:1.0"


@pytest.mark.parametrize("asked, found", [
    ("docker.io/library/alpine:3.19", "docker.io/library/alpine:3.19"),     # exact
    ("alpine:3.19", "docker.io/library/alpine:3.19"),                       # short form
    ("library/alpine:3.19", "docker.io/library/alpine:3.19"),
    ("index.docker.io/library/alpine:3.19", "docker.io/library/alpine:3.19"),
    ("alpine", "docker.io/library/alpine:latest"),                          # no tag: latest
    ("quay.io/x/y@sha256:" + "b" * 64, "quay.io/x/y:1"),                    # tagged, asked by digest
    ("quay.io/x/y@sha256:" + "c" * 64, "quay.io/x/y:1"),                    # ... or by source digest
])
def test_find_image_normalises(asked, found):
    images = [(r, Descriptor("application/vnd.oci.image.manifest.v1+json", d, 1, annotations=a)) for r, d, a in [
        ("docker.io/library/alpine:3.19", "sha256:" + "1" * 64, {}),
        ("docker.io/library/alpine:latest", "sha256:" + "2" * 64, {}),
        ("quay.io/x/y:1", "sha256:" + "b" * 64, {"io.imgmirror.source.digest": "sha256:" + "c" * 64}),
    ]]
    assert find_image(images, asked)[0] == found


def test_find_image_refuses_ambiguity_and_unknowns():
    d = Descriptor("application/vnd.oci.image.manifest.v1+json", "sha256:" + "1" * 64, 1)
    images = [("quay.io/x/y:1", d), ("quay.io/x/y:2", d)]
    with pytest.raises(UsageError, match="more than one image.*quay.io/x/y:1, quay.io/x/y:2"):
        find_image(images, "quay.io/x/y@sha256:" + "1" * 64)
    with pytest.raises(UsageError, match="no image 'alpine:3.19'"):
        find_image(images, "alpine:3.19")


def test_unknown_ref_exits_2_listing_the_images(made, tmp_path, capsys):
    out = tmp_path / "none.tar"
    code, _, err = _extract(made["tar"], "docker.io/library/alpine:3.19", "-o", out, capsys=capsys)
    assert code == 2
    assert "no image 'docker.io/library/alpine:3.19'" in err
    for name in ("base", "multi", "dockerv2", "dockerlist", "raw"):
        assert f"{made['host']}/test/{name}:1.0" in err
    assert list(tmp_path.iterdir()) == []


def test_usage_errors_exit_2(made, tmp_path, capsys):
    ref = f"{made['host']}/test/base:1.0"
    assert _extract(made["tar"], "-o", tmp_path / "x.tar", capsys=capsys)[0] == 2     # no REF
    code, _, err = _extract(made["tar"], ref, "-o", tmp_path, capsys=capsys)         # a directory
    assert code == 2 and "not a directory" in err
    code, _, err = _extract(tmp_path / "absent.tar", ref, "-o", tmp_path / "x.tar", capsys=capsys)
    assert code == 2 and "absent.tar" in err
    copy = tmp_path / "copy.tar"
    shutil.copy(made["tar"], copy)
    code, _, err = _extract(copy, ref, "-o", copy, capsys=capsys)                      # onto itself
    assert code == 2 and "being read" in err
    assert copy.read_bytes() == made["tar"].read_bytes()
    assert _extract(made["tar"], ref, "-o", tmp_path / "x.tar", "--load-platform", "nope",
                    capsys=capsys)[0] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy.tar"]


def test_a_damaged_blob_leaves_nothing_behind(made, tmp_path, capsys):
    """Every byte copied is hashed: a bundle whose layer was altered in place (same size) gives
    exit 1 naming the blob, and neither the archive nor its temporary file is left."""
    layer = made["seeded"]["test/base:1.0"]["layers"][0]
    bad = tmp_path / "bad.tar"
    shutil.copy(made["tar"], bad)
    with tarfile.open(bad) as tf:
        offset = tf.getmember(f"blobs/sha256/{layer[7:]}").offset_data
    with open(bad, "r+b") as fh:
        fh.seek(offset + 100)
        byte = fh.read(1)
        fh.seek(offset + 100)
        fh.write(bytes([byte[0] ^ 0xFF]))
    outdir = tmp_path / "out"
    outdir.mkdir()
    code, _, err = _extract(bad, f"{made['host']}/test/base:1.0", "-o", outdir / "one.tar", capsys=capsys)
    assert code == 1
    assert layer in err and "damaged" in err and "imgmirror verify" in err
    assert list(outdir.iterdir()) == []


def test_split_bundle_and_layout_directory(made, tmp_path, capsys):
    ref = f"{made['host']}/test/multi:1.0"
    expected = made["bundle"].blobs
    work = made["work"]
    split, layout = tmp_path / "split.tar", tmp_path / "layout"
    assert run_cli("sync", made["manifest"], "-o", split, "--split", "16K", "--cache", work / "cache")[0] == 0
    assert run_cli("sync", made["manifest"], "-o", f"{layout}/", "--cache", work / "cache")[0] == 0
    for source in (tmp_path / "split.tar.001", split, layout):
        out = tmp_path / "one.tar"
        code, _, err = _extract(source, ref, "-o", out, capsys=capsys)
        assert code == 0, f"{source}: {err}"
        one = Bundle(out)
        assert set(one.blobs) == _image_blobs(made["seeded"]["test/multi:1.0"])
        assert all(expected[d] == data for d, data in one.blobs.items())


def test_differential_bundle_needs_its_base(seeded_registry, tmp_path, capsys):
    """app-a shares two layers with base: a differential bundle made on a bundle of base leaves
    them out. Alone it cannot give app-a whole (exit 1, naming the blobs and the base); with the
    base first it can."""
    host, seeded = seeded_registry.registry.host, seeded_registry.images
    first = write_manifest(tmp_path / "first.yaml", f"version: 1\nimages:\n  - source: {host}/test/base:1.0\n")
    second = write_manifest(tmp_path / "second.yaml", f"""version: 1
images:
  - source: {host}/test/base:1.0
  - source: {host}/test/app-a:1.0
""")
    base, diff = tmp_path / "base.tar", tmp_path / "diff.tar"
    assert run_cli("sync", first, "-o", base, "--cache", tmp_path / "cache")[0] == 0
    assert run_cli("sync", second, "-o", diff, "--since", base, "--cache", tmp_path / "cache")[0] == 0
    ref = f"{host}/test/app-a:1.0"
    out = tmp_path / "app-a.tar"
    code, _, err = _extract(diff, ref, "-o", out, capsys=capsys)
    assert code == 1, err
    assert "differential" in err and "base" in err and "imgmirror extract BASE.tar" in err
    for layer in seeded["test/app-a:1.0"]["base_layers"]:
        assert layer in err
    assert not out.exists() and _leftovers(tmp_path) == []
    code, _, err = _extract(base, diff, ref, "-o", out, capsys=capsys)
    assert code == 0, err
    one = Bundle(out)
    assert set(one.blobs) == _image_blobs(seeded["test/app-a:1.0"])
    # docker load's entry is computed: the differential bundle could not offer one (layers absent)
    assert Bundle(diff).docker_manifest == []
    info = seeded["test/app-a:1.0"]
    assert one.docker_manifest == [{"Config": f"blobs/sha256/{info['config'][7:]}", "RepoTags": [ref],
                                    "Layers": [f"blobs/sha256/{d[7:]}" for d in info["layers"]]}]
    assert skopeo("inspect", "--raw", f"oci-archive:{out}") == seeded["test/app-a:1.0"]["raw"]


# ---------------------------------------------------------------------------------------------
# podman: what `podman load` keeps (the README's claims)
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def podman():
    """A factory: `podman()` is a fresh, private podman store (as root, vfs: no overlay mounts in
    this sandbox); call it with podman's arguments. Stores are removed at teardown."""
    exe = shutil.which("podman")
    if exe is None:       # fail, never skip: a skipped check looks green while testing nothing
        pytest.fail("podman not found, but the loader tests need it; install it with: apt-get install "
                    "podman (`make deps` does)", pytrace=False)
    made: list[str] = []

    def store():
        # podman refuses a runroot path of more than 50 characters: pytest's tmp_path is longer
        root = tempfile.mkdtemp(prefix="imgmirror-podman-",
                                dir="/tmp" if len(tempfile.gettempdir()) > 20 else None)
        made.append(root)

        def run(*args: str) -> str:
            proc = subprocess.run([exe, "--root", f"{root}/root", "--runroot", f"{root}/run",
                                   "--storage-driver", "vfs", *args], capture_output=True, timeout=120)
            assert proc.returncode == 0, f"podman {' '.join(args)} failed: {proc.stderr.decode()}"
            return proc.stdout.decode() + proc.stderr.decode()
        return run

    yield store
    for root in made:
        shutil.rmtree(root, ignore_errors=True)


def _digest(podman, ref: str) -> str:
    return podman("image", "inspect", "--format", "{{.Digest}}", ref).strip()


@pytest.mark.parametrize("name", ["test/base:1.0", "test/multi:1.0", "test/dockerv2:1.0",
                                  "test/dockerlist:1.0"])
def test_podman_load_of_an_extracted_archive_keeps_the_digest(made, podman, tmp_path, capsys, name):
    ref = f"{made['host']}/{name}"
    out = tmp_path / "one.tar"
    assert _extract(made["tar"], ref, "-o", out, capsys=capsys)[0] == 0
    loaded = podman()
    assert f"Loaded image: {ref}" in loaded("load", "-i", str(out))
    assert _digest(loaded, ref) == made["seeded"][name]["digest"]


def test_podman_load_of_a_multi_image_bundle_loses_the_digests(made, podman):
    """What the README warns about: podman cannot pick one image of several from index.json,
    falls back to manifest.json and stores manifests of its own; `podman pull oci-archive:B:REF`
    names the image and keeps the digest."""
    loaded = podman()
    log = loaded("load", "--log-level=debug", "-i", str(made["tar"]))
    assert "more than one image in oci" in log
    ref = f"{made['host']}/test/base:1.0"
    assert f"Loaded image: {ref}" in log          # loaded, through manifest.json...
    assert _digest(loaded, ref) != made["seeded"]["test/base:1.0"]["digest"]   # ...under another digest
    pulled = podman()
    pulled("pull", "-q", f"oci-archive:{made['tar']}:{ref}")
    assert _digest(pulled, ref) == made["seeded"]["test/base:1.0"]["digest"]
