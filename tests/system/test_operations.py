"""Operations on one real stack (API under gunicorn with 2 processes, a generation worker with its exporter, the
maintenance worker, beat, Flower with Basic auth), shared by the checks below to save start-up time:

1. Prometheus output of the API (multiprocess) and of the worker exporter, parsed after real jobs; the quality
   numbers and JSON logs of the same jobs.
2. The controls on real workers: pause/resume a queue (Flower shows the waiting message), pause/resume a client,
   retry-failed and bulk cancel. Flower lists the worker and the queue lengths through its API, with auth.
3. The /ops page in headless Chromium (Debian's), with a screenshot kept in test-artifacts/.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import ROOT, SYSTEM_REDIS_URL, new_database, wait_for
from tests.system.faults import TINY_JOB, Ledger, Stack, fast_env
from tests.system.procs import Processes, free_port, http_ok, run_cli

pytestmark = pytest.mark.system

ARTIFACTS = ROOT / "test-artifacts"
WORKER = "gpu1@ops"
FLOWER_AUTH = ("ops", "flower-secret")
PROMPT = TINY_JOB["prompt"]


@dataclass
class OpsStack:
    stack: Stack
    procs: Processes
    ledger: Ledger
    env: dict[str, str]
    cwd: Path
    ops_headers: dict[str, str]
    ops_key: str
    client_name: str
    headers: dict[str, str]
    metrics_url: str
    flower: str

    def submit(self, headers: dict[str, str] | None = None) -> str:
        response = requests.post(f"{self.stack.base}/v1/illustrations", json=TINY_JOB,
                                 headers=headers or self.headers, timeout=30)
        assert response.status_code == 202, response.text
        return str(response.json()["id"])

    def ops(self, *args: str) -> str:
        return run_cli(["ops", *args], self.env, self.cwd).stdout

    def job(self, job_id: str) -> Any:
        with self.ledger.engine.connect() as connection:
            return connection.execute(sa.text("SELECT * FROM jobs WHERE id = :id"), {"id": job_id}).one()

    def flower_get(self, path: str) -> Any:
        response = requests.get(f"{self.flower}{path}", auth=FLOWER_AUTH, timeout=10)
        assert response.status_code == 200, response.text
        return response.json()


def new_key(env: dict[str, str], cwd: Path, name: str, *scopes: str) -> str:
    args = ["keys", "create", "--name", name, *[part for scope in scopes for part in ("--scope", scope)]]
    return run_cli(args, env, cwd).stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def ops_stack(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[OpsStack]:
    redis.Redis.from_url(SYSTEM_REDIS_URL).flushdb()
    with new_database("illustrations_ops") as url:
        yield from _ops_stack(url, tmp_path_factory.mktemp("ops"), tiny_model_dir)


def _ops_stack(url: str, tmp: Path, tiny_model_dir: Path) -> Iterator[OpsStack]:
    metrics_port, flower_port = free_port(), free_port()
    env = fast_env(tmp, url, SYSTEM_REDIS_URL, tiny_model_dir, FLOWER_BASIC_AUTH=":".join(FLOWER_AUTH),
                   METRICS_DIR=str(tmp / "metrics"))
    procs = Processes(env, tmp, tmp / "logs")
    ledger = Ledger(url, tmp / "storage")
    try:
        stack = Stack(procs, env, tmp).start(workers=0)  # API, maintenance worker, beat
        worker = procs.start("worker", "worker", "--hostname", WORKER, env={
            "ILLUSTRATIONS_WORKER_METRICS_PORT": str(metrics_port),
            "ILLUSTRATIONS_WORKER_METRICS_ADDRESS": "127.0.0.1"})
        stack.workers[WORKER] = worker
        procs.start("flower", "flower", "--port", str(flower_port))
        client_name = f"ops-client-{uuid.uuid4().hex[:6]}"
        headers = {"Authorization": f"Bearer {new_key(env, tmp, client_name)}"}
        ops_key = new_key(env, tmp, "operators", "ops")
        flower = f"http://127.0.0.1:{flower_port}"
        metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        wait_for(http_ok(metrics_url), 120, "the worker exporter")
        wait_for(http_ok(f"{flower}/healthcheck"), 60, "Flower")
        yield OpsStack(stack, procs, ledger, env, tmp, {"Authorization": f"Bearer {ops_key}"}, ops_key, client_name,
                       headers, metrics_url, flower)
    except BaseException:
        print(procs.logs())
        raise
    finally:
        procs.stop_all()
        ledger.close()


def families(text: str) -> dict[str, Any]:
    return {family.name: family for family in text_string_to_metric_families(text)}


def samples(family: Any, suffix: str = "") -> dict[tuple[tuple[str, str], ...], float]:
    return {tuple(sorted(s.labels.items())): s.value for s in family.samples if s.name == family.name + suffix}


# --- 1. Metrics, quality numbers and logs after real jobs --------------------------------------------------------
def test_prometheus_output_after_real_jobs(ops_stack: OpsStack) -> None:
    s = ops_stack
    job_ids = [s.submit() for _ in range(3)]
    assert set(s.ledger.wait_terminal(job_ids, 240).values()) == {"succeeded"}

    # The API: two gunicorn processes answered the three submits; every scrape reports all of them.
    for _ in range(3):
        response = requests.get(f"{s.stack.base}/metrics", headers=s.ops_headers, timeout=10)
        assert response.status_code == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        api = families(response.text)
        posts = samples(api["illustrations_http_requests"], "_total")
        key = (("method", "POST"), ("route", "/v1/illustrations"), ("status", "202"))
        assert posts[key] == 3
        jobs = samples(api["illustrations_jobs"])
        assert jobs[(("queue", "illustrations.interactive"), ("state", "succeeded"))] == 3
        assert samples(api["illustrations_database_up"])[()] == 1
        assert "illustrations_queue_oldest_age_seconds" in api
        assert "illustrations_unpublished_jobs" in api
        assert PROMPT not in response.text
    assert requests.get(f"{s.stack.base}/metrics", headers=s.headers, timeout=10).status_code == 403

    # The worker's exporter: outcomes, times, the pipeline load, setup health, consumed queues.
    worker = families(requests.get(s.metrics_url, timeout=10).text)
    assert samples(worker["illustrations_generations"], "_total")[(("code", ""), ("outcome", "succeeded"))] == 3
    assert samples(worker["illustrations_generation_seconds"], "_count")[(("profile", "tiny"),)] == 3
    assert samples(worker["illustrations_queue_wait_seconds"], "_count")[
        (("queue", "illustrations.interactive"),)] == 3
    assert samples(worker["illustrations_pipeline_load_seconds"], "_count")[(("profile", "tiny"),)] >= 1
    assert samples(worker["illustrations_worker_setup_failed"])[()] == 0
    consuming = samples(worker["illustrations_worker_consuming"])
    assert consuming[(("queue", "illustrations.interactive"),)] == 1
    assert consuming[(("queue", "illustrations.batch"),)] == 1
    assert "illustrations_gpu_memory_peak_bytes" not in worker  # a CPU worker has no GPU memory to report

    # Quality numbers of the same jobs, with feedback on one.
    assert requests.post(f"{s.stack.base}/v1/illustrations/{job_ids[0]}/feedback", json={"rating": 5},
                         headers=s.headers, timeout=10).status_code == 201
    quality = requests.get(f"{s.stack.base}/v1/metrics/quality?range=1h", headers=s.ops_headers, timeout=10).json()
    (tiny,) = [g for g in quality["groups"] if (g["profile"], g["variant"]) == ("tiny", "a")]
    assert tiny["succeeded"] >= 3
    assert tiny["success_rate"] == 1.0
    assert tiny["feedback"] == {"count": 1,
                                                                                            "mean_rating": 5.0}
    assert 0 < tiny["generation_s"]["p50"] <= tiny["generation_s"]["p95"]

    # Logs: JSON lines naming the job (worker) and the request (API); the prompt appears in none of them.
    def json_lines(name: str) -> list[dict[str, Any]]:
        (proc,) = [proc for proc in s.procs.started if proc.name == name]
        return [json.loads(line) for line in proc.log().splitlines() if line.startswith("{")]

    assert any(line.get("job_id") == job_ids[0] for line in json_lines("worker"))
    assert any(line.get("logger") == "gunicorn.access" and re.search(r"request_id=[0-9a-f]{32}", line["message"])
               for line in json_lines("api"))
    for proc in s.procs.started:
        assert PROMPT not in proc.log(), proc.name


# --- 2. Controls on real workers, and Flower ---------------------------------------------------------------------
def test_controls_on_real_workers_and_flower(ops_stack: OpsStack) -> None:
    s = ops_stack
    # Flower (auth on) lists the worker; without credentials its API answers 401.
    assert requests.get(f"{s.flower}/api/workers", timeout=10).status_code == 401
    wait_for(lambda: WORKER in s.flower_get("/api/workers?refresh=1"), 60, "Flower to list the worker", 1)

    # Pause the interactive queue: a new job waits in the broker; Flower shows it in the queue's length.
    assert WORKER in s.ops("pause", "illustrations.interactive")
    held = s.submit()
    broker = redis.Redis.from_url(SYSTEM_REDIS_URL)
    wait_for(lambda: broker.llen("illustrations.interactive") == 1, 30, "the message to wait in Redis")

    def flower_queue_length() -> int:
        queues = {q["name"]: q["messages"] for q in s.flower_get("/api/queues/length")["active_queues"]}
        return int(queues.get("illustrations.interactive", -1))

    wait_for(lambda: flower_queue_length() == 1, 30, "Flower to show the waiting message", 1)
    exporter = families(requests.get(s.metrics_url, timeout=10).text)
    assert samples(exporter["illustrations_worker_consuming"])[(("queue", "illustrations.interactive"),)] == 0
    api = families(requests.get(f"{s.stack.base}/metrics", headers=s.ops_headers, timeout=10).text)
    assert samples(api["illustrations_paused_queues"]) == {(("queue", "illustrations.interactive"),): 1}
    assert s.job(held).status == "queued"
    assert broker.llen("illustrations.interactive") == 1

    # While paused: one job is marked failed (as the lease sweep leaves a crashed job) and two are canceled in bulk.
    lost = s.submit()
    with s.ledger.engine.begin() as connection:
        connection.execute(sa.text("UPDATE jobs SET status = 'failed', error_code = 'worker_lost', "
                                   "finished_at = now() WHERE id = :id"), {"id": lost})
    doomed = [held, s.submit(), s.submit()]
    out = s.ops("cancel", "--client", s.client_name, "--status", "queued", "--since", "5m")
    assert "3 queued job(s) were canceled, 0 running job(s)" in out
    assert set(re.findall(r"^[0-9a-f-]{36}$", out, re.MULTILINE)) == set(doomed)
    held = s.submit()  # waits for the resume
    assert "resumed" in s.ops("resume", "illustrations.interactive")
    retried = s.ops("retry-failed", "--client", s.client_name, "--code", "worker_lost")
    ((old, new),) = re.findall(r"^([0-9a-f-]{36}) -> ([0-9a-f-]{36})$", retried, re.MULTILINE)
    assert old == lost
    assert set(s.ledger.wait_terminal([held, new], 240).values()) == {"succeeded"}
    assert s.job(lost).status == "failed"  # terminal states never change
    for job_id in doomed:
        job = s.job(job_id)
        assert job.status == "canceled"
        assert job.attempt == 0
        assert job.error_message == "canceled by an operator"

    # Flower's task list carries job ids only.
    tasks = s.flower_get("/api/tasks?limit=50")
    assert tasks
    for task in tasks.values():
        assert re.fullmatch(r"[\[(]('[0-9a-f-]{36}',?)?[\])]", task["args"]), task["args"]
        assert PROMPT not in json.dumps(task)

    # Pause a client: accepted, held in PostgreSQL (not published, not run); resumed, the relay publishes it.
    other_name = f"ops-other-{uuid.uuid4().hex[:6]}"
    other = {"Authorization": f"Bearer {new_key(s.env, s.cwd, other_name)}"}
    assert "paused" in s.ops("pause-client", s.client_name)
    assert "paused" in s.ops("pause-client", other_name)
    waiting = s.submit()
    witness = s.submit(other)
    assert s.job(waiting).published_at is None
    assert s.job(witness).published_at is None
    assert "resumed" in s.ops("resume-client", other_name)
    # Once the relay has published the other client's job, it has passed over the paused client's.
    assert s.ledger.wait_terminal([witness], 240)[witness] == "succeeded"
    job = s.job(waiting)
    assert job.status == "queued"
    assert job.published_at is None
    assert job.attempt == 0
    assert "resumed" in s.ops("resume-client", s.client_name)
    assert s.ledger.wait_terminal([waiting], 240)[waiting] == "succeeded"


# --- 3. The /ops page in Chromium --------------------------------------------------------------------------------
def test_the_ops_page_in_headless_chromium(ops_stack: OpsStack) -> None:
    from playwright.sync_api import sync_playwright

    s = ops_stack
    done, failed = s.submit(), s.submit()
    s.ledger.wait_terminal([done, failed], 240)
    with s.ledger.engine.begin() as connection:  # a failure to show (as a worker would record it)
        connection.execute(sa.text("UPDATE jobs SET status = 'failed', error_code = 'out_of_memory' WHERE id = :id"),
                           {"id": failed})
    requests.post(f"{s.stack.base}/v1/illustrations/{done}/feedback", json={"rating": 4, "comment": "warm light"},
                  headers=s.headers, timeout=10)
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", chromium_sandbox=False,
                                             args=["--headless=new", "--disable-gpu", "--disable-dev-shm-usage"])
        try:
            context = browser.new_context(http_credentials={"username": "ops", "password": s.ops_key},
                                          viewport={"width": 1280, "height": 900})
            page = context.new_page()
            response = page.goto(f"{s.stack.base}/ops", wait_until="load")
            assert response is not None
            assert response.status == 200
            card = page.locator(f'[data-job="{done}"]')
            assert card.locator(".state").inner_text().startswith("succeeded")
            assert "★★★★☆" in card.locator(".feedback").inner_text()
            width = card.locator("img.thumb").evaluate("img => img.complete ? img.naturalWidth : 0")
            assert width == 64  # the thumbnail loaded through the same Basic auth
            assert page.locator(f'[data-job="{failed}"] .code').inner_text() == "out_of_memory"
            page.screenshot(path=str(ARTIFACTS / "ops-page.png"), full_page=True)
            # Filter on failed jobs with the form.
            page.select_option("#status", "failed")
            page.click("#apply")
            page.wait_for_url(re.compile(r".*status=failed.*"))
            assert page.locator(f'[data-job="{failed}"]').count() == 1
            assert page.locator(f'[data-job="{done}"]').count() == 0
            assert all(status == "failed" for status in page.locator(".card").evaluate_all(
                "cards => cards.map(card => card.dataset.status)"))
            page.screenshot(path=str(ARTIFACTS / "ops-page-failed.png"), full_page=True)
            # No credentials: the Basic challenge (a browser then asks for them).
            challenge = browser.new_context().request.get(f"{s.stack.base}/ops")
            assert challenge.status == 401
            assert challenge.headers["www-authenticate"].startswith("Basic")
        finally:
            browser.close()
    assert (ARTIFACTS / "ops-page.png").stat().st_size > 10_000
