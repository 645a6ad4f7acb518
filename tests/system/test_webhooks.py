"""Webhooks end to end on real processes: a CPU Celery worker (`--queues illustrations.maintenance,
illustrations.webhooks`) and beat, started with the project's CLI, every timer in seconds; real receivers on
loopback (allowlisted). Jobs are finished here through ``shared.jobs`` (the same seam a GPU worker's finish uses), so
no model runs. Every delivery is verified with the reference library ``standardwebhooks``.

1. A receiver that answers 500 three times, then 200: delivered on the 4th attempt, one webhook-id, every attempt
   logged, the job untouched.
2. A receiver that answers 410: one attempt, then nothing more.
3. The client's default URL (set with the CLI) is down while 50 jobs finish: their finish transactions take no
   longer than without a webhook; the secret is rotated (CLI) meanwhile; when the receiver comes back every event
   is delivered, once each, and both the old and the new secret verify each delivery.
"""

from __future__ import annotations

import json
import statistics
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa
from cryptography.fernet import Fernet
from standardwebhooks import Webhook

from shared import jobs
from shared.db import Database
from shared.models import Client, Job, WebhookAttempt, WebhookEvent
from shared.settings import Settings
from tests.helpers import SYSTEM_REDIS_URL, add_job, claim, new_database, wait_for
from tests.system.faults import fast_env
from tests.system.procs import Processes, free_port, run_cli
from tests.webhook_receiver import Receiver

pytestmark = pytest.mark.system

SCHEDULE = [0.3] * 3 + [1.0] * 30  # seconds; about half a minute of retries in all
PUBLIC = "https://illustrations.test"  # webhook bodies carry absolute URLs under it


@dataclass
class HookStack:
    db: Database
    env: dict[str, str]
    cwd: Path
    procs: Processes

    def cli(self, *args: str) -> str:
        return run_cli(list(args), self.env, self.cwd).stdout.strip().splitlines()[-1]

    def event(self, job_id: str) -> WebhookEvent:
        with self.db.begin() as session:
            return session.get_one(WebhookEvent, "msg_" + job_id.replace("-", ""))

    def attempts(self, job_id: str) -> list[int | None]:
        with self.db.begin() as session:
            return list(session.execute(
                sa.select(WebhookAttempt.status_code)
                .where(WebhookAttempt.event_id == "msg_" + job_id.replace("-", "")).order_by(WebhookAttempt.id)
            ).scalars())

    def client(self, url: str | None = None) -> tuple[str, str]:
        """A new client (made by `keys create`), optionally with a default URL set by `webhooks url`."""
        name = f"hooks-{uuid.uuid4().hex[:6]}"
        self.cli("keys", "create", "--name", name)
        if url is not None:
            assert url in self.cli("webhooks", "url", "--name", name, url)
        with self.db.begin() as session:
            return name, session.execute(sa.select(Client.id).where(Client.name == name)).scalar_one()

    def finish(self, job_id: str) -> float:
        """Run the job's terminal transition as a worker does; seconds the transaction took."""
        held = claim(self.db, job_id)
        started = time.perf_counter()
        with self.db.begin() as session:
            assert jobs.succeeded(session, held, [], timings={"queued_s": 0.0, "inference_s": 0.1, "total_s": 0.1})
        return time.perf_counter() - started


@pytest.fixture(scope="module")
def hooks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HookStack]:
    redis.Redis.from_url(SYSTEM_REDIS_URL).flushdb()
    with new_database("illustrations_hooks") as url:
        yield from _hook_stack(url, tmp_path_factory.mktemp("hooks"))


def _hook_stack(url: str, tmp: Path) -> Iterator[HookStack]:
    key = Fernet.generate_key().decode()
    env = fast_env(tmp, url, SYSTEM_REDIS_URL, tmp / "no-model", FETCH_ALLOWLIST="127.0.0.1",
                   PUBLIC_BASE_URL=PUBLIC,
                   WEBHOOK_SECRET_KEYS=json.dumps([key]), WEBHOOK_DISPATCH_INTERVAL_S="0.2",
                   WEBHOOK_RETRY_SCHEDULE_S=json.dumps(SCHEDULE), WEBHOOK_TIMEOUT_S="3", WEBHOOK_LEASE_S="10")
    procs = Processes(env, tmp, tmp / "logs")
    database = Database(Settings(database_url=url, var_dir=tmp / "var", webhook_secret_keys=[key]))
    try:
        procs.start("cpu-worker", "worker", "--queues", "illustrations.maintenance,illustrations.webhooks",
                    "--pool", "threads", "--concurrency", "4", "--hostname", "cpu@hooks")
        procs.start("beat", "beat")
        yield HookStack(database, env, tmp, procs)
    except BaseException:
        print(procs.logs())
        raise
    finally:
        procs.stop_all()
        database.engine.dispose()


def verify_all(receiver: Receiver, *secrets: str) -> dict[str, set[str]]:
    """Every request verifies with each secret; returns the bodies seen per webhook-id."""
    bodies: dict[str, set[str]] = {}
    for got in list(receiver.received):
        for secret in secrets:
            Webhook(secret).verify(got.body, got.headers)
        bodies.setdefault(got.headers["webhook-id"], set()).add(got.body)
    return bodies


def test_500_three_times_then_200_is_delivered_and_the_job_is_untouched(hooks: HookStack) -> None:
    name, client_id = hooks.client()
    with Receiver([500, 500, 500, 200]) as receiver:
        job_id = add_job(hooks.db, client_id=client_id, webhook_url=receiver.url())
        hooks.finish(job_id)
        with hooks.db.begin() as session:
            finished_at = session.get_one(Job, job_id).finished_at
        wait_for(lambda: hooks.event(job_id).state == "delivered", 60, "the delivery", interval_s=0.2)
        secret = hooks.cli("webhooks", "secret", "--name", name)
        bodies = verify_all(receiver, secret)
    assert list(bodies) == ["msg_" + job_id.replace("-", "")]
    assert len(next(iter(bodies.values()))) == 1
    assert len(receiver.received) == 4
    body = json.loads(receiver.received[0].body)
    assert body["type"] == "illustration.succeeded"
    assert body["data"]["id"] == job_id
    assert body["data"]["status"] == "succeeded"
    assert body["data"]["links"] == {"self": f"{PUBLIC}/v1/illustrations/{job_id}"}
    assert hooks.attempts(job_id) == [500, 500, 500, 200]
    with hooks.db.begin() as session:
        job = session.get_one(Job, job_id)
        assert (job.status, job.finished_at) == ("succeeded", finished_at)  # the job is not touched


def test_410_stops_retrying(hooks: HookStack) -> None:
    _, client_id = hooks.client()
    with Receiver([410]) as receiver:
        job_id = add_job(hooks.db, client_id=client_id, webhook_url=receiver.url())
        hooks.finish(job_id)
        wait_for(lambda: hooks.event(job_id).state == "stopped", 60, "the 410", interval_s=0.2)
        time.sleep(2 * SCHEDULE[0] + 0.5)  # longer than the next retry would wait: nothing more comes
        assert len(receiver.received) == 1
    assert hooks.attempts(job_id) == [410]


def test_a_dead_receiver_delays_no_job_and_gets_every_event_when_it_is_back(hooks: HookStack) -> None:
    port = free_port()  # nothing listens there yet
    name, client_id = hooks.client(url=f"http://127.0.0.1:{port}/hooks")
    _, quiet_client = hooks.client()
    old_secret = hooks.cli("webhooks", "secret", "--name", name)

    baseline = [hooks.finish(add_job(hooks.db, client_id=quiet_client)) for _ in range(50)]  # no webhook
    job_ids = [add_job(hooks.db, client_id=client_id) for _ in range(50)]
    with_hooks = [hooks.finish(job_id) for job_id in job_ids]  # the receiver is down meanwhile
    wait_for(lambda: all(hooks.attempts(job_id) for job_id in job_ids), 60, "a failed attempt of every event",
             interval_s=0.3)
    assert all(code is None for job_id in job_ids for code in hooks.attempts(job_id))  # refused: no answer
    assert max(with_hooks) < 1.0
    assert statistics.median(with_hooks) < 3 * statistics.median(baseline) + 0.02, (with_hooks, baseline)

    new_secret = hooks.cli("webhooks", "secret", "--name", name, "--rotate")
    assert new_secret != old_secret
    assert new_secret.startswith("whsec_")
    with Receiver([200], port=port) as receiver:
        wait_for(lambda: all(hooks.event(job_id).state == "delivered" for job_id in job_ids), 90,
                 "every event delivered", interval_s=0.3)
        bodies = verify_all(receiver, old_secret, new_secret)  # both signatures, each verifies
    assert set(bodies) == {"msg_" + job_id.replace("-", "") for job_id in job_ids}
    assert all(len(seen) == 1 for seen in bodies.values())
    assert len(receiver.received) == 50  # each delivered once
