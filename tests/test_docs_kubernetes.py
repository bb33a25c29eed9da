"""The Kubernetes page's YAML (docs/kubernetes.md) is YAML a user can apply: every block parses, and names only
fields of the Kubernetes objects it declares (batch/v1 CronJob and Job, v1 Pod, Secret, ConfigMap), with the
settings the page promises."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

PAGE = Path(__file__).resolve().parent.parent / "docs" / "kubernetes.md"
BLOCK = re.compile(r"```yaml\n(.*?)```", re.S)

# The fields each object may hold (a subset of the Kubernetes API reference: the ones worth writing here).
CONTAINER = {"name", "image", "command", "args", "env", "envFrom", "volumeMounts", "resources", "securityContext",
             "workingDir", "imagePullPolicy"}
POD_SPEC = {"restartPolicy", "containers", "volumes", "terminationGracePeriodSeconds", "serviceAccountName",
            "securityContext", "nodeSelector", "tolerations", "affinity", "imagePullSecrets"}
JOB_SPEC = {"template", "backoffLimit", "backoffLimitPerIndex", "maxFailedIndexes", "activeDeadlineSeconds",
            "completionMode", "completions", "parallelism", "ttlSecondsAfterFinished", "podFailurePolicy"}
CRONJOB_SPEC = {"schedule", "timeZone", "concurrencyPolicy", "startingDeadlineSeconds", "suspend",
                "successfulJobsHistoryLimit", "failedJobsHistoryLimit", "jobTemplate"}
METADATA = {"name", "namespace", "labels", "annotations"}
ENV_VAR = {"name", "value", "valueFrom"}
TOP = {"CronJob": {"apiVersion", "kind", "metadata", "spec"}, "Secret": {"apiVersion", "kind", "metadata", "type",
       "data", "stringData"}, "ConfigMap": {"apiVersion", "kind", "metadata", "data"}}


def documents() -> list[dict[str, Any]]:
    blocks = BLOCK.findall(PAGE.read_text())
    assert blocks, "docs/kubernetes.md has its YAML"
    return [doc for block in blocks for doc in YAML(typ="safe").load_all(block)]


def unknown(mapping: dict[str, Any], allowed: set[str], where: str) -> list[str]:
    return [f"{where}.{key}" for key in mapping if key not in allowed]


def cronjob_problems(doc: dict[str, Any]) -> list[str]:
    spec = doc["spec"]
    job = spec["jobTemplate"]["spec"]
    pod = job["template"]["spec"]
    problems = unknown(spec, CRONJOB_SPEC, "spec") + unknown(job, JOB_SPEC, "jobTemplate.spec")
    problems += unknown(pod, POD_SPEC, "template.spec") + unknown(job["template"], {"metadata", "spec"}, "template")
    for container in pod["containers"]:
        problems += unknown(container, CONTAINER, "container")
        problems += [p for env in container.get("env", []) for p in unknown(env, ENV_VAR, "env")]
        names = {env["name"] for env in container.get("env", [])}
        account = "STRIPE_SF_ACCOUNT" in names or "STRIPE_SF_ACCOUNT" in " ".join(container.get("args", []))
        problems += [] if account else [f"{doc['metadata']['name']}: no STRIPE_SF_ACCOUNT"]
        problems += [f"{env['name']}: a secret not from a Secret" for env in container.get("env", [])
                     if env["name"] not in ("STRIPE_SF_ACCOUNT", "SF_DOMAIN", "SF_INSTANCE_URL") and "value" in env]
    return problems


def test_every_yaml_block_parses_and_names_valid_fields() -> None:
    docs = documents()
    problems = [p for doc in docs for p in unknown(doc, TOP[doc["kind"]], doc["kind"])]
    problems += [p for doc in docs for p in unknown(doc["metadata"], METADATA, "metadata")]
    problems += [p for doc in docs if doc["kind"] == "CronJob" for p in cronjob_problems(doc)]
    assert problems == []
    kinds = [d["kind"] for d in docs]
    assert kinds.count("CronJob") == 2 and "Secret" in kinds and "ConfigMap" in kinds


def test_each_cronjob_forbids_overlap_and_has_its_deadlines() -> None:
    for doc in (d for d in documents() if d["kind"] == "CronJob"):
        assert doc["apiVersion"] == "batch/v1"
        spec = doc["spec"]
        assert spec["concurrencyPolicy"] == "Forbid" and 0 < spec["startingDeadlineSeconds"] < 300
        job = spec["jobTemplate"]["spec"]
        assert job["activeDeadlineSeconds"] > 0 and job["template"]["spec"]["restartPolicy"] == "Never"


def test_the_indexed_job_has_an_account_per_completion() -> None:
    [indexed] = [d["spec"]["jobTemplate"]["spec"] for d in documents()
                 if d["kind"] == "CronJob" and d["spec"]["jobTemplate"]["spec"].get("completionMode") == "Indexed"]
    [line] = indexed["template"]["spec"]["containers"][0]["args"]
    accounts = re.match(r"set -- ([\w ]+?);", line)
    assert accounts and len(accounts.group(1).split()) == indexed["completions"]
    assert 'shift "$JOB_COMPLETION_INDEX"' in line and "exec stripe-sf sync" in line
