"""Plain helpers shared by the test modules: request bodies, pictures, rows made and read, waits with a deadline.

Fixtures live in the conftests (``tests/conftest.py`` and one per folder); everything here is a plain function or
constant, imported by name. A test module never imports another test module (tests/test_suite_layout.py checks it).
The non-test helper modules keep their own files: HTTP servers (``tests/httpservers.py``), the S3 server
(``tests/s3server.py``), the webhook receiver (``tests/webhook_receiver.py``) and the system tests' processes,
servers and faults (``tests/system/``).
"""

from __future__ import annotations

import ast
import io
import os
import re
import shutil
import subprocess
import time
import tomllib
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from packaging.requirements import Requirement
from PIL import Image
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api.keys import create_key
from shared import jobs
from shared.db import Database
from shared.fetch import Fetcher
from shared.migrate import upgrade
from shared.models import Client, GenerationMetric, Job, JobImage, Style, StyleVersion, TrainingImage
from shared.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
"""The repository root."""

# --- Services the suite runs against ----------------------------------------------------------------------------------
ADMIN_URL = os.environ.get("TEST_DATABASE_ADMIN_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/11")
# System tests run real workers; they get a Redis db of their own so stray test messages never reach them.
SYSTEM_REDIS_URL = os.environ.get("TEST_SYSTEM_REDIS_URL", "redis://127.0.0.1:6379/12")
RABBITMQ_URL = os.environ.get("TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672")


@contextmanager
def new_database(prefix: str, *, migrated: bool = True) -> Iterator[str]:
    """A database of its own on the shared PostgreSQL (migrated to head unless told not to); dropped on exit."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        if migrated:
            upgrade(Settings(database_url=url))
        yield url
    finally:
        with admin.connect() as connection:
            connection.execute(
                sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                        " WHERE datname = :n AND pid <> pg_backend_pid()"),
                {"n": name},
            )
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()


# --- Waiting ----------------------------------------------------------------------------------------------------------
def wait_for(check: Callable[[], bool], timeout_s: float, what: str, interval_s: float = 0.1) -> None:
    """Call ``check`` until it is true; fail naming ``what`` once ``timeout_s`` has passed (never a bare sleep)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


# --- Pictures and files -----------------------------------------------------------------------------------------------
def encode_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def png(size: tuple[int, int] = (32, 32), color: str | tuple[int, int, int] = "red") -> bytes:
    """A PNG of one colour."""
    return encode_png(Image.new("RGB", size, color))


def lora(path: Path, rank: int = 4, alpha: float = 8.0) -> Path:
    """A LoRA-shaped file (the registry reads its header only; the worker tests load real ones)."""
    import torch
    from safetensors.torch import save_file

    tensors = {
        "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight": torch.randn(rank, 32),
        "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.lora_B.weight": torch.randn(32, rank),
    }
    save_file(tensors, path, metadata={"format": "pt",
                                       "lora_adapter_metadata": f'{{"unet.r": {rank}, "unet.lora_alpha": {alpha}}}'})
    return path


# --- Clients and keys -------------------------------------------------------------------------------------------------
def make_key(database: Database, client_name: str | None = None, scopes: tuple[str, ...] = ("generate",)) -> str:
    """A new API key (of a new client unless ``client_name`` names one): its plaintext."""
    with database.begin() as session:
        _, plaintext = create_key(session, client_name or f"client-{uuid.uuid4().hex[:8]}", scopes)
    return plaintext


def new_client(database: Database, **columns: Any) -> str:
    """A new client row (a unique name unless given): its id."""
    with database.begin() as session:
        client = Client(**{"name": f"c-{uuid.uuid4().hex[:12]}", **columns})
        session.add(client)
        session.flush()
        return client.id


# --- Jobs in the database ---------------------------------------------------------------------------------------------
IMAGE = jobs.StoredImage(index=0, storage_key="jobs/x/1/0.png", content_type="image/png", width=64, height=64,
                         sha256="0" * 64, size_bytes=10)


def request_doc(steps: int = 2, width: int = 64, height: int = 64, **params: object) -> dict[str, object]:
    """A stored request as the API leaves it (no references), small enough for the tiny model."""
    return {
        "prompt": "a quiet street in the rain",
        "negative_prompt": None,
        "params": {"width": width, "height": height, "steps": steps, "guidance_scale": 5.0, "num_images": 1,
                   "identity_scale": 0.6, "style_scale": 0.8, "content_scale": 1.0, "output_format": "png",
                   **params},
        "resolved": {"identity": [], "style": None},
    }


def add_job(database: Database, **columns: object) -> str:
    """A queued job of a new client (``columns`` override the defaults): its id."""
    values: dict[str, object] = {"client_id": None, "user_id": "u1", "priority": "interactive",
                                 "queue": "illustrations.interactive",
                                 "request": {"prompt": "p", "params": {"steps": 2}}, "seed": 1}
    values.update(columns)
    if values["client_id"] is None:
        values["client_id"] = new_client(database)
    with database.begin() as session:
        job = jobs.new_job(**values)
        session.add(job)
        session.flush()
        return job.id


def load(database: Database, job_id: str) -> Job:
    with database.begin() as session:
        return session.get_one(Job, job_id)


def claim(database: Database, job_id: str, lease_s: float = 60, worker: str = "w1") -> jobs.Claim:
    """Start the job as ``worker`` would (the fenced claim), asserting it was won."""
    with database.begin() as session:
        result = jobs.started(session, job_id, worker, lease_s)
    assert isinstance(result, jobs.Claim), result
    return result


def unpublished_ids(session: Session, older_than_s: float) -> list[str]:
    return [job_id for job_id, _ in jobs.unpublished(session, older_than_s, limit=100_000)]


def count_jobs(database: Database) -> int:
    with database.begin() as session:
        return int(session.execute(select(func.count()).select_from(Job)).scalar_one())


def image_keys(database: Database, job_id: str) -> list[str]:
    """The storage keys of the job's images, in index order."""
    with database.begin() as session:
        return list(session.execute(
            select(JobImage.storage_key).where(JobImage.job_id == job_id).order_by(JobImage.index)
        ).scalars())


def metric_rows(database: Database, job_ids: list[str]) -> list[GenerationMetric]:
    """The generation metrics rows of the jobs, oldest first."""
    with database.begin() as session:
        return list(session.execute(
            select(GenerationMetric).where(GenerationMetric.job_id.in_(job_ids)).order_by(GenerationMetric.id)
        ).scalars())


# --- Trainings in the database ----------------------------------------------------------------------------------------
TRAINING_PARAMS: dict[str, Any] = {"rank": 4, "alpha": 4, "steps": 10, "learning_rate": 1e-3, "resolution": 64,
                                   "seed": 1, "batch_size": 1}


def style_version(database: Database, job_id: str) -> StyleVersion:
    """The style version trained by the job ``job_id``."""
    with database.begin() as session:
        return session.execute(select(StyleVersion).where(StyleVersion.job_id == job_id)).scalar_one()


def active_version(database: Database, style_id: str) -> int | None:
    with database.begin() as session:
        return session.execute(select(Style.active_version).where(Style.id == style_id)).scalar_one()


def training_images(database: Database, job_id: str) -> list[TrainingImage]:
    """The training set of the version trained by ``job_id``, in index order."""
    version = style_version(database, job_id)
    with database.begin() as session:
        return list(session.execute(
            select(TrainingImage).where(TrainingImage.style_id == version.style_id,
                                        TrainingImage.version == version.version).order_by(TrainingImage.index)
        ).scalars())


# --- Through the API (Flask's test client) ----------------------------------------------------------------------------
VALID = {"user_id": "u-1", "prompt": "grandma teaching me to ride a bike", "params": {"width": 64, "height": 64}}
"""A valid illustration request."""

CAPTION_SECRET = "caption-text-that-must-not-leak"
"""The captions of ``style_form``: they must never show in an answer, a queue message or a log."""


def submit(client: FlaskClient, auth: dict[str, str], body: dict[str, Any] | None = None, *,
           headers: dict[str, str] | None = None, **fields: Any) -> dict[str, Any]:
    """POST /v1/illustrations with ``body`` (``VALID`` unless given) updated by ``fields``: the job answered.

    The answer must be 202 (accepted); with a ``Prefer`` header, 200 too (finished within the wait). The response is
    closed, as a WSGI server closes it once sent, so the job's outbox mark is made.
    """
    sent = {**(VALID if body is None else body), **fields}
    response = client.post("/v1/illustrations", json=sent, headers={**auth, **(headers or {})})
    accepted = (200, 202) if headers and "Prefer" in headers else (202,)
    assert response.status_code in accepted, response.json
    response.close()
    job: dict[str, Any] = response.json  # type: ignore[assignment]
    return job


def upload(client: FlaskClient, auth: dict[str, str], user_id: str = "u-1", name: str = "grandma",
           data: bytes | None = None) -> dict[str, Any]:
    """A subject photo uploaded (POST /v1/subjects): the subject answered."""
    response = client.post("/v1/subjects", headers=auth,
                           data={"user_id": user_id, "name": name, "image": (io.BytesIO(data or png()), "g.png")})
    assert response.status_code in (200, 201), response.json
    body: dict[str, Any] = response.json  # type: ignore[assignment]
    return body


def succeeded_job(client: FlaskClient, auth: dict[str, str], app: Flask, db: Database, user_id: str,
                  color: str) -> dict[str, Any]:
    """A succeeded job of ``user_id`` with one stored image: the job as submitted, plus ``key``, its image's key."""
    body: Any = client.post("/v1/illustrations", json={**VALID, "user_id": user_id}, headers=auth).json
    key = f"jobs/{body['id']}/1/0.png"
    data = png((64, 64), color)
    app.extensions["illustrations"].storage.put(key, data, "image/png")
    with db.begin() as session:
        held = jobs.started(session, body["id"], "w", 60)
        assert isinstance(held, jobs.Claim)
        jobs.succeeded(session, held, [jobs.StoredImage(0, key, "image/png", 64, 64, "cd" * 32, len(data))])
    return {**body, "key": key}


def style_form(name: str = "ink", count: int = 4, captions: list[str] | None = None, **fields: Any) -> dict[str, Any]:
    """The multipart form of a style training (POST /v1/styles): ``count`` pictures and their captions."""
    colors = ["red", "green", "blue", "yellow", "purple", "orange"]
    data: dict[str, Any] = {
        "name": name,
        "image": [(io.BytesIO(png((40 + i, 36), colors[i % len(colors)])), f"{i}.png") for i in range(count)],
        "caption": captions if captions is not None else [f"{CAPTION_SECRET} {i}" for i in range(count)],
    }
    data.update(fields)
    return data


def photo_fetcher() -> Fetcher:
    """A fetcher whose host names resolve by a table of ours: ``photos.test`` is the local picture server
    (allowlisted), ``intranet.test`` a private address, ``sneaky.test`` loopback without the allowlist."""
    table = {"photos.test": ["127.0.0.1"], "intranet.test": ["10.0.0.7"], "sneaky.test": ["127.0.0.1"]}
    return Fetcher(allowlist=["photos.test"], resolve=lambda host, _port: table[host], timeout_s=5)


# --- Over HTTP (the system tests) -------------------------------------------------------------------------------------
def wait_terminal(base: str, headers: dict[str, str], job_id: str, timeout_s: float = 180) -> dict[str, Any]:
    """Poll GET /v1/illustrations/{id} on a running API until the job is finished: the job."""
    seen: dict[str, Any] = {}

    def finished() -> bool:
        seen.update(requests.get(f"{base}/v1/illustrations/{job_id}", headers=headers, timeout=10).json())
        return seen["status"] in ("succeeded", "failed", "canceled")

    try:
        wait_for(finished, timeout_s, f"job {job_id} to finish", interval_s=0.2)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last seen: {seen}") from None
    return seen


# --- Reading the code (the boundaries and the suite's layout) ---------------------------------------------------------
def imports_in(path: Path, root: Path = ROOT) -> Iterator[tuple[str, int]]:
    """(dotted name, line) of every import in the module at ``path`` (under ``root``): at the top, inside functions,
    under TYPE_CHECKING. Relative imports are resolved against the module's package; ``from a import b`` gives
    ``a.b``."""
    package = path.relative_to(root).with_suffix("").parts[:-1]
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = list(package[:len(package) - node.level + 1]) if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            for alias in node.names:
                yield f"{module}.{alias.name}", node.lineno


# --- The dependency locks (requirements/*.txt, written by `make lock`) ------------------------------------------------
PROJECT = "autobio-illustrations"
LOCKS = {"api": (), "worker": ("worker",), "dev": ("worker", "embedded", "dev")}
"""Each lock in requirements/ and the extras of pyproject.toml it is compiled with."""


@dataclass(frozen=True)
class Locked:
    """One package of a lock: its pinned version, its hashes and what asked for it (uv's ``# via`` lines)."""

    version: str
    hashes: tuple[str, ...]
    via: frozenset[str]

    @property
    def declared(self) -> bool:
        """Asked for by pyproject.toml itself (a top-level dependency)."""
        return f"{PROJECT} (pyproject.toml)" in self.via


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(name: str) -> dict[str, Locked]:
    """requirements/<name>.txt as {canonical package name: Locked}; every entry must be ``name==version``."""
    entries: dict[str, dict[str, Any]] = {}
    current: dict[str, Any] | None = None
    for line in (ROOT / "requirements" / f"{name}.txt").read_text().splitlines():
        text = line.strip().rstrip("\\").strip()
        if not text:
            continue
        if not line[0].isspace() and not text.startswith(("#", "-")):
            requirement = Requirement(text)
            (spec,) = requirement.specifier  # one `==` pin per package
            assert spec.operator == "==", line
            current = entries[canonical(requirement.name)] = {"version": spec.version, "hashes": [], "via": set()}
        elif current is not None and text.startswith("--hash="):
            current["hashes"].append(text.removeprefix("--hash="))
        elif current is not None and text.startswith("# via"):
            if text.removeprefix("# via").strip():
                current["via"].add(text.removeprefix("# via").strip())
        elif current is not None and line[0].isspace() and text.startswith("#   "):
            current["via"].add(text.removeprefix("#").strip())
    return {key: Locked(e["version"], tuple(e["hashes"]), frozenset(e["via"])) for key, e in entries.items()}


def torch_pin() -> str:
    """The one torch version (requirements/torch.txt)."""
    lines = [line.strip() for line in (ROOT / "requirements" / "torch.txt").read_text().splitlines()]
    (pin,) = [Requirement(line) for line in lines if line and not line.startswith("#")]
    (spec,) = pin.specifier
    assert (canonical(pin.name), spec.operator) == ("torch", "=="), pin
    return spec.version


def pyproject_requirements(extras: tuple[str, ...]) -> list[Requirement]:
    """The base dependencies of pyproject.toml plus those of ``extras``, as written there."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    texts = list(project["dependencies"])
    for extra in extras:
        texts += project["optional-dependencies"][extra]
    return [Requirement(text) for text in texts]


def pip_installs(dockerfile: str) -> list[list[str]]:
    """The arguments of every ``pip install`` in the Dockerfile's RUN instructions (continuation lines joined)."""
    text = (ROOT / dockerfile).read_text().replace("\\\n", " ")
    installs = []
    for line in text.splitlines():
        if not line.startswith("RUN "):
            continue
        for command in re.split(r"&&|;|\|\|", line.removeprefix("RUN ")):
            words = command.split()
            if words[:2] == ["pip", "install"]:
                installs.append(words[2:])
            elif words[:4] == ["python", "-m", "pip", "install"]:
                installs.append(words[4:])
    return installs


def installed_requirement_files(dockerfile: str) -> list[str]:
    """The requirement files (``-r FILE``) the Dockerfile's pip installs read, in order."""
    files = []
    for args in pip_installs(dockerfile):
        files += [args[i + 1] for i, arg in enumerate(args[:-1]) if arg in ("-r", "--requirement")]
    return files


# --- The TypeScript client (clients/typescript) -------------------------------------------------------------------
TS_CLIENT = ROOT / "clients" / "typescript"


def typescript_client() -> Path:
    """``clients/typescript`` with its locked dependencies installed (``npm ci``, again only when the lock file is
    newer than the install). Node.js and npm come from Debian's packages (``make node``)."""
    npm = shutil.which("npm")
    assert npm is not None and shutil.which("node") is not None, "Node.js and npm are needed: make node"
    installed = TS_CLIENT / "node_modules" / ".package-lock.json"
    lock = TS_CLIENT / "package-lock.json"
    if not installed.exists() or installed.stat().st_mtime < lock.stat().st_mtime:
        result = subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--prefer-offline"], cwd=TS_CLIENT,
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, f"npm ci failed:\n{result.stdout}\n{result.stderr}"
    return TS_CLIENT


def node_tool(name: str, *args: str | Path, cwd: Path | None = None, timeout: float = 300) -> str:
    """Run a tool of the TypeScript client's ``node_modules/.bin`` (``tsc``, ``openapi-typescript``); its output,
    or a failure showing it."""
    tool = typescript_client() / "node_modules" / ".bin" / name
    result = subprocess.run([str(tool), *map(str, args)], cwd=cwd or TS_CLIENT, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, f"{name} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout
