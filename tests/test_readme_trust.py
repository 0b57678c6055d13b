"""README.md's "Trust" section, run as written: its mirror.yaml and its commands, with only the
registry hosts pointed at local registries (`ghcr.io` at the suite's source registry,
`registry.internal:5000` at an empty one). The publisher's part (cosign signing the two images)
happens before, with tests/cosignfake.py writing the signatures byte for byte as cosign does."""

from __future__ import annotations

import json
import re
from pathlib import Path

import imagegen as g
from cosignfake import gen_key, sign_image
from test_airgap_doc import Runner, parse_doc, substitute, substitute_commands

README = Path(__file__).resolve().parents[1] / "README.md"


def _section(text: str, heading: str) -> str:
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


def test_readme_trust_example_runs_as_written(tmp_path, make_registry):
    ghcr, inside = make_registry(), make_registry()
    hosts = {"ghcr.io": ghcr.host, "registry.internal:5000": inside.host}
    key, public_pem = gen_key("ecdsa-p256")
    app = g.make_image([g.make_layer("readme-trust-app", 2048)])
    multi = g.make_multiarch("readme-trust-multi", attestations=False)
    for repo, tag, art in (("org/app", "v1.1.0", app), ("org/multi", "1.0", multi)):
        g.push(art, ghcr.host, repo, tag)
        g.push_raw(sign_image(art.digest, f"ghcr.io/{repo}", key), ghcr.host, repo, g.cosign_tag(art.digest))

    blocks = parse_doc(_section(README.read_text(), "Trust: only signed images cross"))
    assert [b.lang for b in blocks] == ["yaml", "sh"], blocks
    work = tmp_path / "work"
    (work / "keys").mkdir(parents=True)
    (work / "keys" / "release.pub").write_bytes(public_pem)
    assert blocks[0].first == "# mirror.yaml"
    (work / "mirror.yaml").write_text(substitute(blocks[0].text, hosts))
    runner = Runner(tmp_path)
    outs = {cmd.split()[1]: runner.run(cmd, work) for cmd in substitute_commands(blocks[1], hosts)}
    assert set(outs) == {"sync", "verify", "push"}

    report = json.loads((work / "signed.json").read_text())
    trust = {r["reference"]: r["trust"] for r in report["images"] if r["trust"]}
    assert {ref: t["signer"] for ref, t in trust.items()} == {f"{ghcr.host}/org/app:v1.1.0": "release",
                                                               f"{ghcr.host}/org/multi:1.0": "release"}
    trusted = re.findall(r"^trusted: (\S+) (\S+): signed by release", outs["verify"], re.M)
    assert sorted(trusted) == sorted([(f"{ghcr.host}/org/app:v1.1.0", app.digest),
                                      (f"{ghcr.host}/org/multi:1.0", multi.digest)])   # the signed digests
    for repo, art in (("org/app", app), ("org/multi", multi)):
        raw = g.inspect_raw(inside.host, f"mirror/{repo}:{g.cosign_tag(art.digest)}")   # signature inside
        assert g.sha256_digest(raw) == report_digest(report, ghcr.host, repo, art.digest)


def report_digest(report: dict, host: str, repo: str, digest: str) -> str:
    ref = f"{host}/{repo}:{g.cosign_tag(digest)}"
    return next(r["digest"] for r in report["images"] if r["reference"] == ref)
