"""The three create routes (``POST /v1/illustrations``, ``POST /v1/batches``, AutoBio's ``POST /api/illustrations/
generate``) go through one entry point (``api.submit.create``): the publish cap, a paused client, the quota and the
recorded idempotent answer behave the same on each."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select, update

from shared.db import Database, utcnow
from shared.models import Client, IdempotencyKey, Job
from shared.settings import Settings
from tests.helpers import make_key


@dataclass(frozen=True)
class Route:
    path: str
    body: Callable[[str], dict[str, Any]]  # a request of the user given
    job_id: Callable[[dict[str, Any]], str]  # the new job's id in the answer
    headers: dict[str, str]


ROUTES = {
    "illustrations": Route("/v1/illustrations", lambda user: {"user_id": user, "prompt": "a red kite"},
                           lambda answer: str(answer["id"]), {}),
    "batches": Route("/v1/batches", lambda user: {"requests": [{"user_id": user, "prompt": "a red kite"}]},
                     lambda answer: str(answer["job_ids"][0]), {}),
    # AutoBio's route waits for the image by default: wait=0 answers at once (nothing runs these jobs).
    "autobio": Route("/api/illustrations/generate", lambda user: {"userId": user, "prompt": "a red kite"},
                     lambda answer: str(answer["generationId"]), {"Prefer": "wait=0"}),
}


def make_app(settings: Settings, **overrides: Any) -> Iterator[Flask]:
    from api import create_app

    app = create_app(settings.model_copy(update=overrides))
    yield app
    app.extensions["illustrations"].waiter.close()
    app.extensions["illustrations"].db.engine.dispose()


@pytest.fixture
def capped_app(settings: Settings) -> Iterator[Flask]:
    yield from make_app(settings, client_publish_cap=2, max_queued_jobs_per_client=3, quota_retry_after_s=11)


def post(client: FlaskClient, route: Route, auth: dict[str, str], user: str = "u-1",
         **headers: str) -> tuple[int, dict[str, Any]]:
    response = client.post(route.path, json=route.body(user), headers={**auth, **route.headers, **headers})
    response.close()  # as a WSGI server closes it once sent: the outbox mark of a route that marks late runs here
    answer: dict[str, Any] = response.json  # type: ignore[assignment]
    return response.status_code, answer


def published(db: Database, job_ids: list[str]) -> list[bool]:
    with db.begin() as session:
        return [session.get_one(Job, job_id).published_at is not None for job_id in job_ids]


@pytest.mark.parametrize("route", ROUTES.values(), ids=ROUTES.keys())
def test_over_the_publish_cap_a_job_waits_in_postgresql(capped_app: Flask, db: Database, route: Route) -> None:
    client = capped_app.test_client()
    auth = {"Authorization": f"Bearer {make_key(db)}"}
    ids = [route.job_id(post(client, route, auth)[1]) for _ in range(3)]
    assert published(db, ids) == [True, True, False]  # the third waits for the relay


@pytest.mark.parametrize("route", ROUTES.values(), ids=ROUTES.keys())
def test_over_the_queued_quota_a_submit_is_429_and_writes_nothing(capped_app: Flask, db: Database,
                                                                  route: Route) -> None:
    client = capped_app.test_client()
    name = f"quota-{uuid.uuid4().hex[:8]}"
    auth = {"Authorization": f"Bearer {make_key(db, client_name=name)}"}
    statuses = [post(client, route, auth)[0] for _ in range(4)]
    assert statuses == [202, 202, 202, 429]
    with db.begin() as session:
        count = session.execute(select(func.count()).select_from(Job).join(Client, Client.id == Job.client_id)
                                .where(Client.name == name)).scalar_one()
    assert count == 3


@pytest.mark.parametrize("route", ROUTES.values(), ids=ROUTES.keys())
def test_a_paused_clients_jobs_are_accepted_and_not_published(capped_app: Flask, db: Database, route: Route) -> None:
    client = capped_app.test_client()
    name = f"paused-{uuid.uuid4().hex[:8]}"
    auth = {"Authorization": f"Bearer {make_key(db, client_name=name)}"}
    with db.begin() as session:
        session.execute(update(Client).where(Client.name == name).values(paused_at=utcnow()))
    status, answer = post(client, route, auth)
    assert status == 202
    assert published(db, [route.job_id(answer)]) == [False]  # the relay publishes it after resume-client


@pytest.mark.parametrize("route", ROUTES.values(), ids=ROUTES.keys())
def test_the_recorded_answer_names_the_user_and_a_retry_replays_it(capped_app: Flask, db: Database,
                                                                   route: Route) -> None:
    client = capped_app.test_client()
    name = f"idempotent-{uuid.uuid4().hex[:8]}"
    auth = {"Authorization": f"Bearer {make_key(db, client_name=name)}", "Idempotency-Key": "create-once"}
    first = post(client, route, auth, user="u-7")
    again = post(client, route, auth, user="u-7")
    assert again == first
    with db.begin() as session:
        owner = session.execute(select(IdempotencyKey.user_id).join(Client, Client.id == IdempotencyKey.client_id)
                                .where(Client.name == name, IdempotencyKey.key == "create-once")).scalar_one()
    assert owner == "u-7"  # deleting the user removes the record
