"""Subjects by URL (through the safe fetcher), listing with a cursor, and deletion."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from shared.db import Database
from shared.settings import Settings
from tests.helpers import make_key, png, upload
from tests.httpservers import Server


@pytest.fixture
def photos() -> Iterator[Server]:
    server = Server({"/grandma.png": (200, {"Content-Type": "image/png"}, png((40, 30), "purple")),
                     "/other.png": (200, {"Content-Type": "image/png"}, png((40, 30), "orange")),
                     "/text.png": (200, {"Content-Type": "image/png"}, b"not a picture"),
                     "/moved": (302, {"Location": "/grandma.png"}, b"")})
    yield server
    server.close()


@pytest.fixture
def url_app(settings: Settings) -> Iterator[Flask]:
    from api import create_app

    app = create_app(settings.model_copy(update={"fetch_allowlist": ["127.0.0.1/32"], "fetch_timeout_s": 5.0}))
    yield app
    app.extensions["illustrations"].db.engine.dispose()


def test_a_subject_from_a_url_is_fetched_checked_and_versioned(url_app: Flask, photos: Server) -> None:
    client = url_app.test_client()
    auth = {"Authorization": f"Bearer {make_key(url_app.extensions['illustrations'].db)}"}
    base = f"http://127.0.0.1:{photos.port}"
    created = client.post("/v1/subjects", json={"user_id": "u-1", "name": "grandma", "image_url": f"{base}/moved"},
                          headers=auth)
    assert created.status_code == 201, created.json
    body: Any = created.json
    assert body["width"] == 40
    assert body["height"] == 30
    assert body["version"] == 1
    assert url_app.extensions["illustrations"].storage.exists(f"subjects/{body['id']}/v1.png")
    same = client.post("/v1/subjects", json={"user_id": "u-1", "name": "grandma", "image_url": f"{base}/grandma.png"},
                       headers=auth)
    assert same.status_code == 200
    assert same.json["version"] == 1  # type: ignore[index]
    newer = client.post("/v1/subjects", json={"user_id": "u-1", "name": "grandma", "image_url": f"{base}/other.png"},
                        headers=auth)
    assert newer.status_code == 201
    assert newer.json["version"] == 2  # type: ignore[index]
    exists = client.post("/v1/subjects", json={"user_id": "u-1", "name": "grandma", "if_exists": "error",
                                               "image_url": f"{base}/other.png"}, headers=auth)
    assert exists.status_code == 409
    for path, code in (("/text.png", "reference_invalid"), ("/missing.png", "reference_unreachable")):
        bad = client.post("/v1/subjects", json={"user_id": "u-1", "name": "x", "image_url": base + path},
                          headers=auth)
        assert bad.status_code == 422, path
        assert bad.json["errors"][0]["field"] == "image_url"  # type: ignore[index]
        assert code in bad.json["errors"][0]["message"]  # type: ignore[index]


def test_a_url_to_a_blocked_address_is_refused(client: FlaskClient, auth: dict[str, str], photos: Server) -> None:
    for url in (f"http://127.0.0.1:{photos.port}/grandma.png", "http://169.254.169.254/latest/meta-data",
                "http://[::1]/x.png", "ftp://example.com/x.png"):
        response = client.post("/v1/subjects", json={"user_id": "u-1", "name": "x", "image_url": url}, headers=auth)
        assert response.status_code == 422, url
        assert response.json["errors"][0]["field"] == "image_url"  # type: ignore[index]
    assert photos.requests == []


def test_list_subjects_with_a_cursor_and_delete(client: FlaskClient, auth: dict[str, str], db: Database,
                                                app: Flask) -> None:
    made = [upload(client, auth, user_id="lister", name=f"person-{i}", data=png(color=c))["id"]
            for i, c in enumerate(("red", "green", "blue"))]
    upload(client, auth, user_id="other-user", name="person")
    first: Any = client.get("/v1/subjects", query_string={"user_id": "lister", "limit": "2"}, headers=auth).json
    second: Any = client.get("/v1/subjects", query_string={"user_id": "lister", "limit": "2",
                                                           "cursor": first["next_cursor"]}, headers=auth).json
    assert [s["id"] for s in first["items"] + second["items"]] == list(reversed(made))
    assert second["next_cursor"] is None
    other = {"Authorization": f"Bearer {make_key(db)}"}
    assert client.get("/v1/subjects", headers=other).json == {"items": [], "next_cursor": None}
    assert client.delete(f"/v1/subjects/{made[0]}", headers=other).status_code == 404
    assert client.delete(f"/v1/subjects/{made[0]}?user_id=someone", headers=auth).status_code == 404
    assert client.delete(f"/v1/subjects/{made[0]}?user_id=lister", headers=auth).status_code == 204
    assert client.get(f"/v1/subjects/{made[0]}", headers=auth).status_code == 404
    assert client.delete(f"/v1/subjects/{made[0]}", headers=auth).status_code == 404
    assert not app.extensions["illustrations"].storage.exists(f"subjects/{made[0]}/v1.png")
    assert client.get(f"/v1/subjects/{made[1]}", headers=auth).status_code == 200
