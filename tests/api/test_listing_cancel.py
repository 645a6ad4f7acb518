"""Listing with a cursor, cancel (queued, running, finished), and the acting user_id on every route."""

from __future__ import annotations

import uuid

from flask.testing import FlaskClient

from shared import jobs
from shared.db import Database
from shared.errors import CancelReason
from tests.helpers import load, make_key, submit


def test_list_is_newest_first_with_a_cursor_and_filters(client: FlaskClient, auth: dict[str, str],
                                                        db: Database) -> None:
    made = [submit(client, auth, user_id="lister")["id"] for _ in range(5)]
    submit(client, auth, user_id="someone-else")
    with db.begin() as session:
        claim = jobs.started(session, made[0], "w", 60)
        assert isinstance(claim, jobs.Claim)
    seen: list[str] = []
    cursor = None
    while True:
        query = {"user_id": "lister", "limit": "2", **({"cursor": cursor} if cursor else {})}
        page = client.get("/v1/illustrations", query_string=query, headers=auth)
        assert page.status_code == 200, page.json
        body = page.json
        assert body is not None
        assert len(body["items"]) <= 2
        seen += [item["id"] for item in body["items"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(made))
    everyone = client.get("/v1/illustrations", query_string={"limit": "100"}, headers=auth).json
    assert everyone is not None
    assert len(everyone["items"]) == 6
    running = client.get("/v1/illustrations", query_string={"status": "running"}, headers=auth).json
    assert running is not None
    assert [item["id"] for item in running["items"]] == [made[0]]
    assert running["items"][0]["status"] == "running"
    with db.begin() as session:  # leave no running job behind (the lease sweep tests see every job)
        jobs.canceled(session, made[0], CancelReason.CANCELED_BY_CLIENT, claim)


def test_list_refuses_bad_parameters(client: FlaskClient, auth: dict[str, str]) -> None:
    for query, field in (({"limit": "0"}, "limit"), ({"limit": "101"}, "limit"), ({"limit": "x"}, "limit"),
                         ({"status": "done"}, "status"), ({"cursor": "%%%"}, "cursor"),
                         ({"cursor": "WyJ4IiwgInkiXQ"}, "cursor"), ({"user_id": "a b"}, "user_id"),
                         ({"colour": "red"}, "colour")):
        response = client.get("/v1/illustrations", query_string=query, headers=auth)
        assert response.status_code == 422, query
        assert response.mimetype == "application/problem+json"
        assert field in [error["field"] for error in response.json["errors"]]  # type: ignore[index]


def test_cancel_a_queued_job_ends_it_at_once(client: FlaskClient, auth: dict[str, str], db: Database) -> None:
    job = submit(client, auth)
    response = client.post(f"/v1/illustrations/{job['id']}/cancel", headers=auth)
    assert response.status_code == 200
    assert response.json["status"] == "canceled"  # type: ignore[index]
    assert response.json["error"]["code"] == "canceled_by_client"  # type: ignore[index]
    # A finished job is unchanged, with 200.
    again = client.post(f"/v1/illustrations/{job['id']}/cancel", headers=auth)
    assert again.status_code == 200
    assert again.json["status"] == "canceled"  # type: ignore[index]
    # The worker that later receives the message drops it.
    with db.begin() as session:
        assert jobs.started(session, job["id"], "w", 60) == jobs.ClaimRefused.TERMINAL


def test_cancel_a_running_job_flags_it_for_the_pipeline(client: FlaskClient, auth: dict[str, str],
                                                        db: Database) -> None:
    job = submit(client, auth)
    with db.begin() as session:
        claim = jobs.started(session, job["id"], "w", 60)
    assert isinstance(claim, jobs.Claim)
    response = client.post(f"/v1/illustrations/{job['id']}/cancel", json={"user_id": "u-1"}, headers=auth)
    assert response.status_code == 202
    assert response.json["status"] == "running"  # type: ignore[index]
    with db.begin() as session:
        assert jobs.heartbeat(session, claim, 60) is True  # the step callback's next renew sees the flag
        jobs.canceled(session, job["id"], CancelReason.CANCELED_BY_CLIENT, claim)
    assert load(db, job["id"]).status == "canceled"


def test_cancel_refuses_what_is_not_yours_or_malformed(client: FlaskClient, auth: dict[str, str],
                                                       db: Database) -> None:
    job = submit(client, auth)
    other = {"Authorization": f"Bearer {make_key(db)}"}
    assert client.post(f"/v1/illustrations/{job['id']}/cancel", headers=other).status_code == 404
    wrong_user = client.post(f"/v1/illustrations/{job['id']}/cancel", json={"user_id": "u-2"}, headers=auth)
    assert wrong_user.status_code == 404
    assert client.post(f"/v1/illustrations/{uuid.uuid4()}/cancel", headers=auth).status_code == 404
    bad = client.post(f"/v1/illustrations/{job['id']}/cancel", data="x", content_type="text/plain", headers=auth)
    assert bad.status_code == 415
    unknown = client.post(f"/v1/illustrations/{job['id']}/cancel", json={"reason": "x"}, headers=auth)
    assert unknown.status_code == 422
    assert load(db, job["id"]).status == "queued"


def test_cross_client_and_cross_user_reads_are_404(client: FlaskClient, auth: dict[str, str], db: Database) -> None:
    job = submit(client, auth)
    other = {"Authorization": f"Bearer {make_key(db)}"}
    for path in (f"/v1/illustrations/{job['id']}", f"/v1/illustrations/{job['id']}/images/0",
                 f"/api/illustrations/{job['id']}"):
        assert client.get(path, headers=other).status_code == 404, path
    for path in (f"/v1/illustrations/{job['id']}?user_id=u-2", f"/v1/illustrations/{job['id']}/images/0?user_id=u-2"):
        assert client.get(path, headers=auth).status_code == 404, path
    listing = client.get("/v1/illustrations", headers=other).json
    assert listing == {"items": [], "next_cursor": None}
