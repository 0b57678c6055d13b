"""deploy/kubernetes and the Containerfile: the manifests parse, the CronJob's container command
is one the real argument parser accepts, and the shard wiring holds (N completions = N
parallel = --shards N, the index reaching both imgmirror and the paths, every mount where the
arguments look). No cluster here: what Kubernetes itself would do with them is not run."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from mirror.cli import build_parser
from mirror.engine.shard import Shard
from mirror.specfile import parse_spec

DEPLOY = Path(__file__).resolve().parents[1] / "deploy" / "kubernetes"
CONTAINERFILE = Path(__file__).resolve().parents[1] / "Containerfile"


def docs() -> dict[str, dict]:
    out = {}
    for path in sorted(DEPLOY.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            out[doc["kind"]] = doc
    return out


def expand(args: list[str], env: dict[str, str]) -> list[str]:
    """Kubernetes' $(VAR) expansion in args, for the variables the container defines."""
    return [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], a) for a in args]


def test_every_manifest_parses_and_kustomize_lists_them():
    kinds = docs()
    assert set(kinds) == {"CronJob", "ConfigMap", "Secret", "PersistentVolumeClaim", "Kustomization"}
    listed = set(kinds["Kustomization"]["resources"])
    assert listed == {p.name for p in DEPLOY.glob("*.yaml")} - {"kustomization.yaml"}


def test_the_cronjob_is_an_indexed_job_whose_shards_match():
    cron = docs()["CronJob"]
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    job = cron["spec"]["jobTemplate"]["spec"]
    assert job["completionMode"] == "Indexed" and job["completions"] == job["parallelism"]
    assert job["backoffLimitPerIndex"] >= 1
    pod = job["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] != 0
    (c,) = pod["containers"]
    assert c["resources"]["requests"]["memory"] and c["resources"]["limits"]["memory"]
    env = {e["name"]: e for e in c["env"]}
    assert env["SHARD"]["valueFrom"]["fieldRef"]["fieldPath"] == \
        "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    n = job["completions"]
    for index in range(n):
        args = build_parser().parse_args(expand(c["args"], {"SHARD": str(index)}))
        assert args.command == "sync" and args.shards == n
        shard = Shard.parse(args.shard, args.shards, {"JOB_COMPLETION_INDEX": str(index)})
        assert (shard.index, shard.count) == (index, n)
        assert args.cache.endswith(f"shard-{index}")      # a cache each: a cache is locked by its run
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        assert any(args.cache.startswith(p + "/") and mounts[p] == "cache" for p in mounts)
        assert any(args.manifest.startswith(p + "/") and mounts[p] == "manifest" for p in mounts)


def test_credentials_and_manifest_arrive_where_the_container_reads_them():
    kinds = docs()
    (c,) = kinds["CronJob"]["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    volumes = {v["name"]: v for v in kinds["CronJob"]["spec"]["jobTemplate"]["spec"]["template"]["spec"]["volumes"]}
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    docker_config = next(e["value"] for e in c["env"] if e["name"] == "DOCKER_CONFIG")
    secret = volumes["registry-credentials"]["secret"]
    assert mounts["registry-credentials"] == docker_config
    assert secret["items"] == [{"key": ".dockerconfigjson", "path": "config.json"}]
    assert secret["secretName"] == kinds["Secret"]["metadata"]["name"]
    assert kinds["Secret"]["type"] == "kubernetes.io/dockerconfigjson"
    cm = volumes["manifest"]["configMap"]
    assert cm["name"] == kinds["ConfigMap"]["metadata"]["name"]
    args = build_parser().parse_args(expand(c["args"], {"SHARD": "0"}))
    assert f"{mounts['manifest']}/{cm['items'][0]['path']}" == args.manifest
    spec = parse_spec(kinds["ConfigMap"]["data"]["mirror.yaml"], "configmap mirror.yaml", {})
    assert spec.images                                    # the manifest in the ConfigMap is valid
    assert volumes["cache"]["persistentVolumeClaim"]["claimName"] == kinds["PersistentVolumeClaim"]["metadata"]["name"]


def test_the_containerfile_runs_imgmirror_as_a_non_root_user():
    text = CONTAINERFILE.read_text()
    user = re.findall(r"^USER (\S+)", text, re.M)
    assert user and user[-1].split(":")[0] not in ("0", "root")
    assert re.search(r'^ENTRYPOINT \["imgmirror"\]', text, re.M)
    cron = docs()["CronJob"]
    uid = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["securityContext"]["runAsUser"]
    assert user[-1].split(":")[0] == str(uid)
