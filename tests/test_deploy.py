"""Deployment files checked offline: Dockerfiles (hadolint), compose, Kubernetes (kubernetes-validate --strict),
the KEDA ScaledObject against its documented fields (and its query against the real schema), and every command
and setting they use against the code."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import sqlalchemy as sa
import yaml
from click.testing import CliRunner
from packaging.requirements import Requirement

from shared.settings import ENV_PREFIX, Settings
from tests.helpers import ROOT, installed_requirement_files, read_lock

K8S = ROOT / "infra" / "k8s"
KNOWN_SETTINGS = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
KUBERNETES_VERSION = "1.30.0"


def k8s_documents() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        docs += [(path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return docs


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "infra" / "compose.yaml").read_text())
    return data


# --- Dockerfiles ------------------------------------------------------------------------------------------------------
DOCKERFILES = ["Dockerfile.api", "Dockerfile.worker", "Dockerfile.worker-cpu"]
OUR_PACKAGES = {"api", "worker", "shared", "cli"}


def copied_packages(dockerfile: str) -> set[str]:
    """Our packages an image carries (its COPY lines)."""
    copied = set()
    for line in (ROOT / dockerfile).read_text().splitlines():
        if line.startswith("COPY "):
            copied |= {source.rstrip("/") for source in line.split()[1:-1]}
    return copied & OUR_PACKAGES


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_dockerfiles_are_hadolint_clean(dockerfile: str) -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    result = subprocess.run([str(hadolint), "--failure-threshold", "style", str(ROOT / dockerfile)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_images_run_as_a_numeric_non_root_user(dockerfile: str) -> None:
    users = [line.split()[1] for line in (ROOT / dockerfile).read_text().splitlines() if line.startswith("USER ")]
    assert users
    assert users[-1].split(":")[0].isdigit()
    assert users[-1] != "0"


def test_the_api_image_has_no_worker_code() -> None:
    assert copied_packages("Dockerfile.api") == {"api", "shared", "cli"}


@pytest.mark.parametrize("dockerfile", ["Dockerfile.worker", "Dockerfile.worker-cpu"])
def test_the_worker_images_have_no_api_code(dockerfile: str) -> None:
    assert copied_packages(dockerfile) == {"worker", "shared", "cli"}


# --- What each image can run: the CLI imports a side only when a command needs it ------------------------------------
# The `worker` extra beyond the base set (test_the_api_image_dependency_set_has_no_torch): absent where the locks an
# image installs (requirements/*.txt) lack them.
ML_STACK = {"torch", "diffusers", "transformers", "accelerate", "peft", "safetensors", "tenacity", "numpy"}
IMAGE_COMMANDS = {
    "Dockerfile.api": [["--help"], ["api", "--help"], ["db", "upgrade"], ["keys", "create", "--name", "image-check"],
                       ["keys", "list"]],
    "Dockerfile.worker-cpu": [["--help"], ["worker", "--help"], ["beat", "--help"], ["flower", "--help"],
                              ["db", "upgrade"], ["ops", "retry-failed", "--dry-run"],
                              ["ops", "cancel", "--all", "--dry-run"]],
    "Dockerfile.worker": [["--help"], ["worker", "--help"], ["models", "check", "--help"], ["models", "sync", "--help"],
                          ["ops", "drain", "--help"]],
}
# Run in a fresh interpreter where the packages the image lacks cannot be imported.
IN_THE_IMAGE = """
import importlib.abc, json, sys

ABSENT = set(sys.argv[1].split(","))


class NotInThisImage(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ABSENT:
            raise ModuleNotFoundError(f"No module named {name!r} in this image", name=name)
        return None


sys.meta_path.insert(0, NotInThisImage())
if sys.argv[2] == "worker-start":  # what a worker process imports as it starts: the app and its include= modules
    from worker.celery_app import app

    app.loader.import_default_modules()
    print(json.dumps(sorted(name for name in app.tasks if name.startswith("illustrations."))))
else:
    from click.testing import CliRunner

    from cli import main

    results = {}
    for args in json.loads(sys.argv[2]):
        result = CliRunner().invoke(main, args)
        error = None if result.exception is None or isinstance(result.exception, SystemExit) else repr(result.exception)
        results[" ".join(args)] = {"exit_code": result.exit_code, "output": result.output, "error": error}
    print(json.dumps(results))
"""


def absent_from(dockerfile: str) -> set[str]:
    """Our packages the image does not copy, and the ML stack's packages that none of its locks installs."""
    installed = set()
    for path in installed_requirement_files(dockerfile):
        name = Path(path).stem
        installed |= {"torch"} if name == "torch" else {key.replace("-", "_") for key in read_lock(name)}
    return (OUR_PACKAGES - copied_packages(dockerfile)) | (ML_STACK - installed)


def run_in_the_image(dockerfile: str, what: str, var_dir: Path) -> Any:
    env = {**os.environ, "ILLUSTRATIONS_VAR_DIR": str(var_dir)}
    result = subprocess.run([sys.executable, "-c", IN_THE_IMAGE, ",".join(sorted(absent_from(dockerfile))), what],
                            capture_output=True, text=True, timeout=180, cwd=ROOT, env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def image_runs(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], dict[str, Any]]:
    """Every command of IMAGE_COMMANDS[dockerfile], run in order in one interpreter (a throwaway SQLite var dir)."""
    done: dict[str, dict[str, Any]] = {}

    def run(dockerfile: str) -> dict[str, Any]:
        if dockerfile not in done:
            var_dir = tmp_path_factory.mktemp(dockerfile.replace(".", "-"))
            done[dockerfile] = run_in_the_image(dockerfile, json.dumps(IMAGE_COMMANDS[dockerfile]), var_dir)
        return done[dockerfile]

    return run


@pytest.mark.parametrize(("dockerfile", "command"),
                         [(dockerfile, " ".join(args)) for dockerfile, commands in IMAGE_COMMANDS.items()
                          for args in commands])
def test_an_image_runs_its_commands_without_the_code_it_lacks(
        image_runs: Callable[[str], dict[str, Any]], dockerfile: str, command: str) -> None:
    result = image_runs(dockerfile)[command]
    assert result["exit_code"] == 0, f"{result['output']}{result['error'] or ''}"


def test_the_api_image_lacks_the_worker_and_the_ml_stack() -> None:
    assert {"worker", "torch", "diffusers"} <= absent_from("Dockerfile.api")


def test_the_api_image_creates_and_lists_keys(image_runs: Callable[[str], dict[str, Any]]) -> None:
    assert "image-check\tik_" in image_runs("Dockerfile.api")["keys list"]["output"]


@pytest.mark.parametrize("dockerfile", ["Dockerfile.worker", "Dockerfile.worker-cpu"])
def test_a_worker_starts_with_every_task_without_the_api(dockerfile: str, tmp_path: Path) -> None:
    from shared import tasks

    registered = run_in_the_image(dockerfile, "worker-start", tmp_path)
    assert {tasks.GENERATE, tasks.PREPARE, tasks.DELIVER_WEBHOOK, tasks.TRAIN, tasks.SWEEP} <= set(registered)


def _closure(requirements: list[str], extras: set[str]) -> set[str]:
    """Names of the distributions a set of requirements pulls in, following installed metadata."""
    seen: set[str] = set()
    todo = [Requirement(text) for text in requirements]
    while todo:
        requirement = todo.pop()
        if requirement.marker and not any(requirement.marker.evaluate({"extra": e}) for e in extras | {""}):
            continue
        name = requirement.name.lower().replace("_", "-")
        if name in seen:
            continue
        seen.add(name)
        try:
            todo += [Requirement(text) for text in metadata.requires(name) or []
                     if "extra ==" not in text or any(f'extra == "{e}"' in text for e in requirement.extras)]
        except metadata.PackageNotFoundError:
            pass
    return seen


def test_the_api_image_dependency_set_has_no_torch() -> None:
    base = [text for text in metadata.requires("autobio-illustrations") or [] if "extra ==" not in text]
    api_set = _closure(base, set())
    assert {"flask", "celery", "sqlalchemy", "boto3", "pydantic", "gunicorn"} <= api_set
    heavy = api_set & {"torch", "diffusers", "transformers", "accelerate", "peft", "nvidia-cudnn-cu12"}
    assert not heavy, f"the API image would install {heavy}"
    worker = [text for text in metadata.requires("autobio-illustrations") or [] if 'extra == "worker"' in text]
    assert {"torch", "diffusers"} <= _closure([text.split(";")[0] for text in worker], set())


# --- compose ----------------------------------------------------------------------------------------------------------
def test_compose_has_the_whole_system_with_healthchecks_and_order() -> None:
    services = compose()["services"]
    expected = {"api", "migrate", "worker-gpu0", "worker-cpu", "worker-training", "beat", "redis", "postgres",
                "minio", "flower", "prometheus", "grafana"}
    assert expected <= set(services)
    for name in ("api", "redis", "postgres", "minio", "flower", "prometheus", "grafana", "worker-gpu0"):
        assert "healthcheck" in services[name], name
    assert services["api"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for worker in ("worker-gpu0", "worker-training"):
        devices = services[worker]["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["capabilities"] == ["gpu"]
    redis_command = services["redis"]["command"]
    assert "--appendonly" in redis_command
    assert "noeviction" in redis_command
    assert "ILLUSTRATIONS_FLOWER_BASIC_AUTH" in services["flower"]["environment"]
    assert services["flower"]["ports"][0].startswith("127.0.0.1:")


def test_compose_sets_only_known_settings_and_mounts_existing_files() -> None:
    for name, service in compose()["services"].items():
        for variable in service.get("environment") or {}:
            if variable.startswith(ENV_PREFIX):
                assert variable in KNOWN_SETTINGS, f"{name} sets unknown setting {variable}"
        for volume in service.get("volumes") or []:
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / "infra" / source).exists(), f"{name} mounts missing {source}"


# --- Kubernetes -------------------------------------------------------------------------------------------------------
CORE_KINDS = {"ConfigMap", "Secret", "Job", "Deployment", "Service", "PodDisruptionBudget"}


@pytest.mark.parametrize(("name", "doc"), [(n, d) for n, d in k8s_documents() if d["kind"] in CORE_KINDS],
                         ids=lambda value: value if isinstance(value, str) else value["metadata"]["name"])
def test_core_resources_validate_strictly(name: str, doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_every_manifest_is_in_the_kustomization() -> None:
    listed = set(yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"])
    files = {path.name for path in K8S.glob("*.yaml")} - {"kustomization.yaml", "secret.example.yaml"}
    assert listed == files


def _deployments() -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for _, doc in k8s_documents() if doc["kind"] == "Deployment"}


def test_workloads_follow_the_process_model() -> None:
    deployments = _deployments()
    gpu = deployments["illustrations-worker-gpu"]["spec"]["template"]["spec"]
    container = gpu["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"  # one GPU per pod
    assert gpu["tolerations"]
    assert gpu["nodeSelector"]
    assert "preStop" in container["lifecycle"]
    soft_limit = Settings().task_soft_time_limit_s
    assert gpu["terminationGracePeriodSeconds"] > soft_limit  # above one generation
    training = deployments["illustrations-worker-training"]["spec"]["template"]["spec"]
    assert training["terminationGracePeriodSeconds"] >= 120
    assert "illustrations.training" in training["containers"][0]["command"]
    assert deployments["illustrations-beat"]["spec"]["replicas"] == 1
    assert deployments["illustrations-beat"]["spec"]["strategy"]["type"] == "Recreate"
    for name, deployment in deployments.items():
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        for c in pod["containers"]:
            sources = {next(iter(ref.values()))["name"] for ref in c.get("envFrom", [])}
            assert sources == {"illustrations-config", "illustrations-secrets"}, name  # config and secrets by reference


def _commands() -> list[list[str]]:
    commands = []
    for _, doc in k8s_documents():
        spec = doc.get("spec", {}).get("template", {}).get("spec", {})
        for container in spec.get("containers", []) + spec.get("initContainers", []):
            commands.append(container["command"])
            pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command")
            if pre_stop and pre_stop[0] == "sh":
                commands.append(shlex.split(pre_stop[-1]))
    for service in compose()["services"].values():
        if isinstance(service.get("command"), list):
            commands.append(service["command"])
    return [command for command in commands if command[0] == "illustrations"]


def test_every_command_in_the_deployment_files_is_a_real_cli_command() -> None:
    from cli import main

    commands = _commands()
    assert len(commands) >= 10
    for command in commands:
        args = [arg for arg in command[1:] if not arg.startswith("$(")]
        result = CliRunner().invoke(main, [*args, "--help"])
        assert result.exit_code == 0, f"{' '.join(command)}: {result.output}"


# The side a command needs (the CLI imports it when the command runs); the others need shared and cli only.
NEEDS = {"api": "api", "worker": "worker", "beat": "worker", "flower": "worker", "models": "worker"}
IMAGES = {"illustrations-api": "Dockerfile.api", "illustrations-worker": "Dockerfile.worker",
          "illustrations-worker-cpu": "Dockerfile.worker-cpu"}


def _workloads() -> list[tuple[str, str, list[str]]]:
    """(where, Dockerfile, command) of every container in the manifests and every service built here in compose."""
    found = []
    for name, doc in k8s_documents():
        spec = doc.get("spec", {}).get("template", {}).get("spec", {})
        for container in spec.get("containers", []) + spec.get("initContainers", []):
            image = container["image"].rsplit("/", 1)[-1].split(":")[0]
            found.append((f"{name}/{container['name']}", IMAGES[image], container["command"]))
    for name, service in compose()["services"].items():
        if "build" in service:
            found.append((f"compose/{name}", service["build"]["dockerfile"], service["command"]))
    return found


def test_every_workload_runs_from_an_image_that_carries_its_side() -> None:
    workloads = _workloads()
    assert {dockerfile for _, dockerfile, _ in workloads} == set(DOCKERFILES)
    for where, dockerfile, command in workloads:
        assert command[0] == "illustrations", where
        needed = NEEDS.get(command[1])
        assert needed is None or needed in copied_packages(dockerfile), f"{where}: {command[1]} needs {needed}/"


def test_configmap_and_secret_name_known_settings() -> None:
    for _, doc in k8s_documents():
        if doc["kind"] in ("ConfigMap", "Secret"):
            for key in doc.get("data", {}) | doc.get("stringData", {}):
                if key.startswith(ENV_PREFIX):
                    assert key in KNOWN_SETTINGS, key
    settings = Settings(**{name.removeprefix(ENV_PREFIX).lower(): value for name, value in
                           yaml.safe_load((K8S / "configmap.yaml").read_text())["data"].items()})
    assert settings.model_profile == "sdxl"  # the ConfigMap parses as settings


# --- KEDA -------------------------------------------------------------------------------------------------------------
# The ScaledObject fields documented at keda.sh/docs/2.15/reference/scaledobject-spec (and the postgresql scaler page).
SCALED_OBJECT_SPEC: dict[str, Any] = {
    "scaleTargetRef": {"apiVersion": str, "kind": str, "name": str, "envSourceContainerName": str},
    "pollingInterval": int, "cooldownPeriod": int, "initialCooldownPeriod": int, "idleReplicaCount": int,
    "minReplicaCount": int, "maxReplicaCount": int,
    "fallback": {"failureThreshold": int, "replicas": int},
    "advanced": {"restoreToOriginalReplicaCount": bool,
                 "horizontalPodAutoscalerConfig": {"name": str, "behavior": dict},
                 "scalingModifiers": {"target": str, "activationTarget": str, "metricType": str, "formula": str}},
    "triggers": [{"type": str, "metadata": dict, "name": str, "useCachedMetrics": bool, "metricType": str,
                  "authenticationRef": {"name": str, "kind": str}}],
}
POSTGRESQL_METADATA = {"connectionFromEnv", "host", "port", "userName", "passwordFromEnv", "dbName", "sslmode",
                       "query", "targetQueryValue", "activationTargetQueryValue", "metricName"}


def _check_fields(value: Any, spec: Any, path: str) -> None:
    if isinstance(spec, dict):
        assert isinstance(value, dict), f"{path} must be a mapping"
        unknown = set(value) - set(spec)
        assert not unknown, f"{path}: undocumented field(s) {sorted(unknown)}"
        for key, item in value.items():
            _check_fields(item, spec[key], f"{path}.{key}")
    elif isinstance(spec, list):
        assert isinstance(value, list), f"{path} must be a non-empty list"
        assert value, f"{path} must be a non-empty list"
        for i, item in enumerate(value):
            _check_fields(item, spec[0], f"{path}[{i}]")
    else:
        assert isinstance(value, spec), f"{path} must be {spec.__name__}, got {type(value).__name__}"


def _keda() -> dict[str, dict[str, Any]]:
    return {doc["kind"]: doc for name, doc in k8s_documents() if name == "keda.yaml"}


def test_scaled_object_uses_documented_fields_and_targets_the_gpu_workers() -> None:
    keda = _keda()
    scaled = keda["ScaledObject"]
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    _check_fields(scaled["spec"], SCALED_OBJECT_SPEC, "spec")
    spec = scaled["spec"]
    assert spec["scaleTargetRef"]["name"] in _deployments()
    assert spec["scaleTargetRef"]["name"] == "illustrations-worker-gpu"
    assert 0 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "postgresql"  # queued + running from the source of truth, not a Redis list length
    assert set(trigger["metadata"]) <= POSTGRESQL_METADATA
    assert {"query", "targetQueryValue"} <= set(trigger["metadata"])
    assert float(trigger["metadata"]["targetQueryValue"]) > 0
    auth = keda["TriggerAuthentication"]
    assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
    (ref,) = auth["spec"]["secretTargetRef"]
    assert ref["parameter"] == "connection"
    secret = yaml.safe_load((K8S / "secret.example.yaml").read_text())
    assert ref["name"] == secret["metadata"]["name"]
    assert ref["key"] in secret["stringData"]


def test_scaled_object_query_counts_queued_and_running_generation_jobs(pg_url: str) -> None:
    from shared import jobs
    from shared.db import Database
    from tests.helpers import add_job, claim

    query = _keda()["ScaledObject"]["spec"]["triggers"][0]["metadata"]["query"]
    database = Database(Settings(database_url=pg_url))
    engine = database.engine

    def count() -> int:
        with engine.connect() as connection:
            return int(connection.execute(sa.text(query)).scalar_one())

    before = count()
    queued = add_job(database)
    running = add_job(database)
    claim(database, running)
    add_job(database, queue="illustrations.training")  # not a generation job
    assert count() == before + 2
    with database.begin() as session:
        jobs.canceled(session, queued, jobs.CancelReason.CANCELED_BY_CLIENT)
    assert count() == before + 1
    engine.dispose()
    assert re.search(r"status IN \('queued', 'running'\)", query)
