"""infra/compose.yaml as a careless operator would run it: without an .env file it must refuse to start rather than
fall back to a known password; what it publishes listens on loopback unless asked; the application reaches MinIO as
a user of its own bucket, never as MinIO's root.

Compose interpolates `${VAR}`, `${VAR:-default}`, `${VAR-default}`, `${VAR:?error}`, `${VAR?error}` and `$$`; the
renderer below does the same (offline: no Docker here), so each check reads what compose would run.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
VARIABLE = re.compile(r"\$(?:\$|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\})")
# What a secret looks like by name (a *_FILE variable is a path to one, not the secret).
SECRET_NAME = re.compile(r"PASSWORD|SECRET|_KEY$|_KEYS$|BASIC_AUTH|DATABASE_URL|BROKER_URL")
REQUIRED = {"POSTGRES_PASSWORD", "MINIO_ROOT_PASSWORD", "S3_APP_SECRET_KEY", "WEBHOOK_SECRET_KEY",
            "FLOWER_PASSWORD", "GRAFANA_PASSWORD"}
APP_SERVICES = ("api", "migrate", "worker-gpu0", "worker-training", "worker-cpu", "beat", "flower")


class Missing(Exception):
    """A required variable is unset: compose refuses to start."""


def render(value: Any, env: dict[str, str]) -> Any:
    """``value`` (any YAML node) interpolated as compose does with the environment ``env``."""
    if isinstance(value, dict):
        return {key: render(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [render(item, env) for item in value]
    if not isinstance(value, str):
        return value

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, arg = match["name"], match["op"], match["arg"]
        present = name in env and (env[name] != "" or op is None or not op.startswith(":"))
        if present:
            return env[name]
        if op in ("-", ":-"):
            return str(arg)
        if op in ("?", ":?"):
            raise Missing(f"{name}: {arg}")
        return ""

    return VARIABLE.sub(one, value)


def raw() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((INFRA / "compose.yaml").read_text())
    return data


def variables(node: Any) -> list[tuple[str, str | None, str | None]]:
    """Every ``(name, operator, argument)`` the file interpolates."""
    text = json.dumps(node)
    return [(m["name"], m["op"], m["arg"]) for m in VARIABLE.finditer(text) if m["name"]]


def canaries() -> dict[str, str]:
    """A distinct value for every variable the file names."""
    return {name: f"canary-{name.lower()}" for name, _, _ in variables(raw())}


def services(env: dict[str, str]) -> dict[str, Any]:
    rendered: dict[str, Any] = render(raw()["services"], env)
    return rendered


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def test_without_an_env_file_compose_refuses_to_start() -> None:
    with pytest.raises(Missing):
        services({})


def test_every_secret_is_a_required_variable() -> None:
    required = {name for name, op, _ in variables(raw()) if op in (":?", "?")}
    assert required >= REQUIRED
    for name, op, arg in variables(raw()):
        if SECRET_NAME.search(name) and not name.endswith("_FILE"):
            assert op in (":?", "?"), f"${{{name}}} has a fallback ({op}{arg}): make it required"


def test_each_required_variable_alone_stops_compose() -> None:
    full = canaries()
    for name in REQUIRED:
        with pytest.raises(Missing, match=name):
            services({k: v for k, v in full.items() if k != name})


def test_every_secret_setting_comes_from_a_variable() -> None:
    """Each password, key or URL with a password in it holds a value the operator set (a canary), never a literal."""
    env = canaries()
    found = 0
    for name, service in services(env).items():
        for key, value in environment(service).items():
            if SECRET_NAME.search(key) and not key.endswith("_ID") and "redis://redis:" not in value:
                found += 1
                assert "canary-" in value, f"{name}: {key} is a literal ({value})"
    assert found >= 8


def ports(env: dict[str, str]) -> dict[str, list[str]]:
    return {name: [str(p) for p in service.get("ports", [])] for name, service in services(env).items()}


def test_published_ports_listen_on_loopback_unless_asked() -> None:
    published = ports(canaries() | {"BIND_ADDRESS": ""})
    assert published["api"] and published["minio"]
    for name, specs in published.items():
        for spec in specs:
            host_ip, _, _ = spec.rpartition(":")[0].rpartition(":")
            assert host_ip == "127.0.0.1", f"{name} publishes {spec}"


def test_bind_address_opens_the_api_and_minio_only() -> None:
    published = ports(canaries() | {"BIND_ADDRESS": "0.0.0.0"})  # noqa: S104 - the operator's choice under test
    for name, specs in published.items():
        for spec in specs:
            opened = spec.startswith("0.0.0.0:")
            assert opened == (name in ("api", "minio")), f"{name} publishes {spec}"


def test_the_application_is_not_minios_root_user() -> None:
    rendered = services(canaries())
    minio = environment(rendered["minio"])
    root_user, root_password = minio["MINIO_ROOT_USER"], minio["MINIO_ROOT_PASSWORD"]
    for name in APP_SERVICES:
        env = environment(rendered[name])
        assert env["ILLUSTRATIONS_S3_ACCESS_KEY_ID"] != root_user, name
        assert env["ILLUSTRATIONS_S3_SECRET_ACCESS_KEY"] != root_password, name
        assert root_password not in " ".join(env.values()), f"{name} carries MinIO's root password"


def init_service() -> tuple[str, dict[str, Any]]:
    rendered = services(canaries())
    (name,) = [name for name, service in rendered.items() if "minio/mc" in str(service.get("image"))]
    return name, rendered[name]


def init_script() -> str:
    _, service = init_service()
    mount = next(v for v in service["volumes"] if v.startswith("./minio:"))
    target = mount.split(":")[1]
    script = next(arg for arg in service["entrypoint"] if arg.startswith(target))
    return (INFRA / "minio" / script.removeprefix(target).lstrip("/")).read_text()


def test_the_init_step_gives_the_application_a_user_of_its_bucket_only() -> None:
    name, service = init_service()
    rendered = services(canaries())
    app_env = environment(rendered["api"])
    init_env = environment(service)
    assert init_env["APP_USER"] == app_env["ILLUSTRATIONS_S3_ACCESS_KEY_ID"]
    assert init_env["APP_SECRET_KEY"] == app_env["ILLUSTRATIONS_S3_SECRET_ACCESS_KEY"]
    bucket = urlsplit(app_env["ILLUSTRATIONS_STORAGE_URL"]).netloc
    assert init_env["BUCKET"] == bucket
    script = init_script()
    assert 'mc admin user add s3 "$APP_USER" "$APP_SECRET_KEY"' in script
    assert re.search(r'mc admin policy attach s3 \S+ --user "\$APP_USER"', script)
    assert subprocess.run(["sh", "-n"], input=script, text=True, capture_output=True, timeout=10).returncode == 0
    policy = json.loads((INFRA / "minio" / "app-policy.json").read_text())
    resources = {r for statement in policy["Statement"] for r in statement["Resource"]}
    assert resources == {f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"}
    actions = {a for statement in policy["Statement"] for a in statement["Action"]}
    assert not any(a.endswith("*") or a.startswith("admin:") for a in actions), actions
    assert {"s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:ListBucket"} <= actions
    assert rendered["api"]["depends_on"][name]["condition"] == "service_completed_successfully"
