"""Webhook events and secrets: the spec's known-answer vector through our signer, rotation, secrets encrypted at
rest, events recorded by the terminal transitions (job, batch or client URL; style versions), the dispatch claim,
the retry schedule. On PostgreSQL and SQLite where the database is involved."""

from __future__ import annotations

import datetime as dt
import json
import os
import stat
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from pydantic import TypeAdapter
from sqlalchemy import select, update
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from shared import jobs, training
from shared.db import Database
from shared.errors import CancelReason, ErrorCode
from shared.models import Batch, StyleVersion, WebhookEvent, WebhookSecret
from shared.schemas import (
    IllustrationSucceededEvent,
    JobOut,
    StyleReadyEvent,
    StyleVersionEventData,
    WebhookEventBody,
)
from shared.settings import Settings
from shared.webhooks import events, secrets
from tests.helpers import add_job, claim, new_client

VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TS = dt.datetime.fromtimestamp(1614265330, dt.UTC)
VECTOR_BODY = '{"test": 2432232314}'
VECTOR_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_the_specs_known_answer_vector_through_our_signer() -> None:
    assert secrets.signature([VECTOR_SECRET], VECTOR_ID, VECTOR_TS, VECTOR_BODY) == VECTOR_SIGNATURE
    headers = secrets.headers([VECTOR_SECRET], VECTOR_ID, VECTOR_TS, VECTOR_BODY)
    assert headers == {"webhook-id": VECTOR_ID, "webhook-timestamp": "1614265330",
                       "webhook-signature": VECTOR_SIGNATURE}


def test_during_a_rotation_both_signatures_verify_with_the_reference_library() -> None:
    old, new = secrets.new_secret(), secrets.new_secret()
    assert old.startswith("whsec_")
    assert len(old) == len("whsec_") + 32
    now = dt.datetime.now(dt.UTC)
    body = json.dumps({"type": "illustration.succeeded"})
    headers = secrets.headers([new, old], "msg_abc", now, body)
    assert headers["webhook-signature"].count("v1,") == 2
    assert " " in headers["webhook-signature"]
    for secret in (old, new):
        assert Webhook(secret).verify(body, headers) == {"type": "illustration.succeeded"}
    with pytest.raises(WebhookVerificationError):
        Webhook(secrets.new_secret()).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(new).verify(body + " ", headers)


def test_secrets_are_encrypted_at_rest_and_rotate_with_an_overlap(any_db: Database) -> None:
    if any_db.dialect == "sqlite":
        crypt = secrets.cipher(any_db.settings)  # no keys set: the embedded mode's key file
        key_file = any_db.settings.var_path / secrets.KEY_FILE
        assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
        assert secrets.cipher(any_db.settings).decrypt(crypt.encrypt(b"x")) == b"x"  # the same key, read back
    else:
        with pytest.raises(ValueError, match="ILLUSTRATIONS_WEBHOOK_SECRET_KEYS"):
            secrets.cipher(any_db.settings)  # a database URL and no keys: refused, no key file per host
        crypt = secrets.cipher(any_db.settings.model_copy(
            update={"webhook_secret_keys": [Fernet.generate_key().decode()]}))
    client_id = new_client(any_db)
    with any_db.begin() as session:
        assert secrets.live_secrets(session, client_id, crypt) == []
        (first,) = secrets.live_secrets(session, client_id, crypt, create=True)
    with any_db.begin() as session:
        assert secrets.live_secrets(session, client_id, crypt, create=True) == [first]  # made once
        stored = session.execute(select(WebhookSecret.encrypted)).scalars().all()
    assert all(first not in token and first[6:] not in token for token in stored)
    with any_db.begin() as session:
        second = secrets.rotate(session, client_id, crypt, overlap_s=3600)
    with any_db.begin() as session:
        assert secrets.live_secrets(session, client_id, crypt) == [second, first]  # current first
        third = secrets.rotate(session, client_id, crypt, overlap_s=0)
    with any_db.begin() as session:
        assert secrets.live_secrets(session, client_id, crypt) == [third, first]  # `second` expired at once


def test_keys_from_settings_and_their_rotation(tmp_path: Path) -> None:
    old_key, new_key = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    token = secrets.cipher(Settings(var_dir=tmp_path, webhook_secret_keys=[old_key])).encrypt(b"whsec_x")
    both = secrets.cipher(Settings(var_dir=tmp_path, webhook_secret_keys=[new_key, old_key]))
    assert both.decrypt(both.rotate(token)) == b"whsec_x"
    assert not (tmp_path / secrets.KEY_FILE).exists()  # keys from settings: no key file
    with pytest.raises(ValueError, match="WEBHOOK_SECRET_KEYS"):
        secrets.cipher(Settings(var_dir=tmp_path, webhook_secret_keys=["not-a-key"]))


def event_of(db: Database, job_id: str) -> WebhookEvent | None:
    with db.begin() as session:
        return session.execute(select(WebhookEvent).where(WebhookEvent.job_id == job_id)).scalar_one_or_none()


def test_every_terminal_transition_records_one_event_to_the_job_batch_or_client_url(any_db: Database) -> None:
    job_id = add_job(any_db, webhook_url="https://a.example/job")
    held = claim(any_db, job_id)
    with any_db.begin() as session:
        assert jobs.succeeded(session, held, [])
    event = event_of(any_db, job_id)
    assert event is not None
    assert event.id == "msg_" + job_id.replace("-", "")
    assert len(event.id) == 36
    assert event.type == "illustration.succeeded"
    assert event.url == "https://a.example/job"
    assert event.state == "pending"
    assert event.attempts == 0
    assert event.user_id == "u1"
    assert event.next_attempt_at is not None
    assert event.payload is None  # rendered later, by the CPU worker

    # No URL on the job: its batch's, else its client's default; none at all: no event.
    with any_db.begin() as session:
        client_id = new_client(any_db, webhook_url="https://a.example/client")
        batch = Batch(client_id=client_id, webhook_url="https://a.example/batch")
        session.add(batch)
        session.flush()
        batch_id = batch.id
    in_batch = add_job(any_db, client_id=client_id, batch_id=batch_id)
    plain = add_job(any_db, client_id=client_id)
    silent = add_job(any_db)
    with any_db.begin() as session:
        assert jobs.canceled(session, in_batch, CancelReason.CANCELED_BY_CLIENT)
        assert jobs.canceled(session, plain, CancelReason.DEADLINE)
        assert jobs.canceled(session, silent, CancelReason.CANCELED_BY_CLIENT)
    assert (event_of(any_db, in_batch) or WebhookEvent()).url == "https://a.example/batch"
    assert (event_of(any_db, plain) or WebhookEvent()).type == "illustration.canceled"
    assert event_of(any_db, plain).url == "https://a.example/client"  # type: ignore[union-attr]
    assert event_of(any_db, silent) is None

    # Bulk expiries go through the same seam.
    lost = add_job(any_db, webhook_url="https://a.example/lost")
    claim(any_db, lost, lease_s=-1)
    with any_db.begin() as session:
        assert jobs.expire_leases(session, max_attempts=1)[1] == [lost]
    assert (event_of(any_db, lost) or WebhookEvent()).type == "illustration.failed"


def test_style_versions_record_ready_and_failed_but_not_canceled(any_db: Database) -> None:
    client_id = new_client(any_db, webhook_url="https://a.example/client")
    params = {"rank": 4, "alpha": 4, "steps": 2, "learning_rate": 1e-4, "resolution": 64, "seed": 1,
              "batch_size": 1}
    made = []
    for name, url in (("ink", "https://a.example/style"), ("oil", None), ("chalk", None)):
        with any_db.begin() as session:
            row = training.new_training(session, client_id, name, params, base_profile="tiny",
                                        queue="illustrations.training", webhook_url=url)
            made.append(str(row.job_id))
    held = []
    for job_id in made[:2]:
        with any_db.begin() as session:
            got = training.claim(session, job_id, "w", 60)
            assert isinstance(got, training.TrainingClaim)
            held.append(got)
    with any_db.begin() as session:
        assert training.ready(session, held[0], storage_key="k", sha256="0" * 64, size_bytes=1, rank=4, alpha=4,
                              base_profile="tiny", loss=None)
        assert training.failed(session, held[1], ErrorCode.OUT_OF_MEMORY, "too big")
        version = session.execute(select(StyleVersion).where(StyleVersion.job_id == made[2])).scalar_one()
        assert training.cancel(session, version.style_id, version.version, CancelReason.CANCELED_BY_CLIENT)
    with any_db.begin() as session:
        rows = {row.id: row for row in session.execute(select(WebhookEvent)
                                                      .where(WebhookEvent.client_id == client_id)).scalars()}
    assert sorted((row.type, row.url) for row in rows.values()) == [
        ("style.failed", "https://a.example/client"), ("style.ready", "https://a.example/style")]
    ready = rows["msg_" + made[0].replace("-", "")]
    with any_db.begin() as session:
        body = json.loads(events.render(session, session.get_one(WebhookEvent, ready.id), "") or "{}")
    assert body["type"] == "style.ready"
    assert body["timestamp"].endswith("Z")
    assert body["data"]["name"] == "ink"
    assert body["data"]["status"] == "ready"
    assert body["data"]["version"] == 1
    # The body is what the OpenAPI document's `webhooks` says (every member documented).
    assert isinstance(TypeAdapter(WebhookEventBody).validate_python(body), StyleReadyEvent)
    assert set(body["data"]) == set(StyleVersionEventData.model_fields)


def test_the_body_is_the_job_as_the_api_returns_it(any_db: Database) -> None:
    job_id = add_job(any_db, webhook_url="https://a.example/job", meta={"memory_id": "m-9"})
    held = claim(any_db, job_id)
    image = jobs.StoredImage(index=0, storage_key="k", content_type="image/png", width=64, height=64,
                             sha256="1" * 64, size_bytes=3)
    with any_db.begin() as session:
        assert jobs.succeeded(session, held, [image], timings={"queued_s": 0.1, "inference_s": 1, "total_s": 1.2})
    with any_db.begin() as session:
        event = session.get_one(WebhookEvent, "msg_" + job_id.replace("-", ""))
        body = json.loads(events.render(session, event, "https://api.example") or "{}")
    assert set(body) == {"type", "timestamp", "data"}
    assert isinstance(TypeAdapter(WebhookEventBody).validate_python(body), IllustrationSucceededEvent)
    data = body["data"]
    assert set(data) == set(JobOut.model_fields)
    assert data["id"] == job_id
    assert data["status"] == "succeeded"
    assert data["metadata"] == {"memory_id": "m-9"}
    assert data["images"][0]["url"] == f"https://api.example/v1/illustrations/{job_id}/images/0"
    assert data["links"] == {"self": f"https://api.example/v1/illustrations/{job_id}"}


def test_due_events_are_claimed_once_until_their_lease_ends(any_db: Database) -> None:
    ids = []
    for _ in range(3):
        job_id = add_job(any_db, webhook_url="https://a.example/x")
        with any_db.begin() as session:
            jobs.canceled(session, job_id, CancelReason.CANCELED_BY_CLIENT)
        ids.append("msg_" + job_id.replace("-", ""))
    with any_db.begin() as session:
        assert events.backlog(session) >= 3
        first = events.claim_due(session, lease_s=60, limit=10_000)
    assert set(ids) <= set(first)
    with any_db.begin() as session:
        assert not set(ids) & set(events.claim_due(session, lease_s=60, limit=10_000))
        events.release(session, ids[:1])
        session.execute(update(WebhookEvent).where(WebhookEvent.id == ids[1]).values(
            next_attempt_at=dt.datetime.now(dt.UTC) + dt.timedelta(hours=1), lease_until=None))
    with any_db.begin() as session:
        again = events.claim_due(session, lease_s=60, limit=10_000)
    assert ids[0] in again
    assert ids[1] not in again
    assert ids[2] not in again


def test_the_retry_schedule_with_jitter_and_retry_after() -> None:
    schedule = [5.0, 300.0, 1800.0]
    for _ in range(50):
        assert 4.5 <= (events.next_wait(schedule, 1, 0.1, None, 3600) or 0) <= 5.5
        assert 270 <= (events.next_wait(schedule, 2, 0.1, None, 3600) or 0) <= 330
    assert events.next_wait(schedule, 4, 0.1, None, 3600) is None  # the schedule ran out: failed
    assert events.next_wait(schedule, 1, 0.0, 120, 3600) == 120  # Retry-After asks for longer: honoured
    assert events.next_wait(schedule, 1, 0.0, 99_999, 3600) == 3600  # ... up to the cap
    assert events.next_wait(schedule, 2, 0.0, 1, 3600) == 300  # never sooner than the schedule


def test_the_cli_sets_a_default_url_and_prints_and_rotates_the_secret(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from cli import main
    from shared.settings import get_settings

    monkeypatch.setenv("ILLUSTRATIONS_VAR_DIR", str(tmp_path / "var"))  # the embedded mode: SQLite, a key file
    get_settings.cache_clear()
    try:
        runner = CliRunner()

        def run(*args: str) -> str:
            result = runner.invoke(main, list(args))
            assert result.exit_code == 0, result.output
            return result.output.strip().splitlines()[-1]

        run("keys", "create", "--name", "autobio")
        refused = runner.invoke(main, ["webhooks", "url", "--name", "autobio", "http://10.0.0.1/hooks"])
        assert refused.exit_code != 0
        assert "private address" in refused.output
        by_name = runner.invoke(main, ["webhooks", "url", "--name", "autobio", "http://localhost:9999/hooks"])
        assert by_name.exit_code != 0  # resolved, as the API resolves a webhook URL at submit
        assert "loopback" in by_name.output and "ILLUSTRATIONS_FETCH_ALLOWLIST" in by_name.output
        assert runner.invoke(main, ["webhooks", "url", "--name", "nobody", "https://a.example/h"]).exit_code != 0
        assert run("webhooks", "url", "--name", "autobio", "https://a.example/h").endswith("https://a.example/h")
        assert run("webhooks", "url", "--name", "autobio").endswith("https://a.example/h")
        assert run("webhooks", "url", "--name", "autobio", "--clear").endswith("(none)")
        first = run("webhooks", "secret", "--name", "autobio")
        assert first.startswith("whsec_")
        assert run("webhooks", "secret", "--name", "autobio") == first
        rotated = run("webhooks", "secret", "--name", "autobio", "--rotate")
        assert rotated != first
        assert run("webhooks", "secret", "--name", "autobio") == rotated
        assert run("webhooks", "reencrypt") == "re-encrypted 2 secret(s)"
    finally:
        get_settings.cache_clear()
