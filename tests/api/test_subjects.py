"""Subjects through the API: upload, versions, if_exists, ownership, refused images."""

from __future__ import annotations

import io

from flask.testing import FlaskClient
from PIL import Image
from werkzeug.test import EnvironBuilder

from tests.helpers import make_key, png, upload


def test_upload_then_get(client: FlaskClient, auth: dict[str, str], app) -> None:  # type: ignore[no-untyped-def]
    created = upload(client, auth, name="dad", data=png((30, 20)))
    assert created["version"] == 1
    assert (created["width"], created["height"]) == (30, 20)
    assert created["name"] == "dad"
    assert created["user_id"] == "u-1"
    assert created["created_at"].endswith("Z")
    fetched = client.get(f"/v1/subjects/{created['id']}", headers=auth)
    assert fetched.status_code == 200
    assert fetched.json == created
    stored = app.extensions["illustrations"].storage.get(f"subjects/{created['id']}/v1.png")
    assert Image.open(io.BytesIO(stored)).size == (30, 20)


def test_a_new_image_under_the_same_name_is_a_new_version(client: FlaskClient, auth: dict[str, str]) -> None:
    first = upload(client, auth, name="mum", data=png(color="red"))
    same = client.post("/v1/subjects", headers=auth, data={"user_id": "u-1", "name": "mum",
                                                           "image": (io.BytesIO(png(color="red")), "m.png")})
    assert same.status_code == 200
    assert same.json["version"] == 1  # type: ignore[index]
    second = upload(client, auth, name="mum", data=png(color="green"))
    assert second["id"] == first["id"]
    assert second["version"] == 2
    refused = client.post("/v1/subjects", headers=auth, data={"user_id": "u-1", "name": "mum", "if_exists": "error",
                                                              "image": (io.BytesIO(png(color="blue")), "m.png")})
    assert refused.status_code == 409
    assert refused.mimetype == "application/problem+json"


def test_bad_uploads_are_4xx_naming_the_problem(client: FlaskClient, auth: dict[str, str]) -> None:
    cases = [
        ({"user_id": "u-1", "name": "x", "image": (io.BytesIO(b"not an image at all"), "x.png")}, "image"),
        ({"user_id": "u-1", "name": "x", "image": (io.BytesIO(png()[:60]), "x.png")}, "image"),
        ({"user_id": "u-1", "name": "x"}, "image"),
        ({"name": "x", "image": (io.BytesIO(png()), "x.png")}, "user_id"),
        ({"user_id": "u-1", "name": "", "image": (io.BytesIO(png()), "x.png")}, "name"),
        ({"user_id": "u-1", "name": "x", "if_exists": "merge", "image": (io.BytesIO(png()), "x.png")}, "if_exists"),
    ]
    for data, field in cases:
        response = client.post("/v1/subjects", headers=auth, data=data)
        assert response.status_code == 422, (field, response.json)
        assert field in [error["field"] for error in response.json["errors"]]  # type: ignore[index]
    response = client.post("/v1/subjects", headers=auth, json={"user_id": "u-1", "name": "x"})
    assert response.status_code == 422
    assert "image_url" in [e["field"] for e in response.json["errors"]]  # type: ignore[index]
    response = client.post("/v1/subjects", headers=auth, data="user_id=u-1", content_type="text/plain")
    assert response.status_code == 415


def test_uploads_over_the_body_limit_are_413(client: FlaskClient, auth: dict[str, str]) -> None:
    big = b"\0" * (13 * 1024 * 1024)
    # The test client spools a body this large to a temporary file: build it ourselves to close it.
    builder = EnvironBuilder(path="/v1/subjects", method="POST", headers=auth,
                             data={"user_id": "u-1", "name": "x", "image": (io.BytesIO(big), "x.png")})
    environ = builder.get_environ()
    try:
        response = client.open(environ)
    finally:
        environ["wsgi.input"].close()
        builder.close()
    assert response.status_code == 413
    assert response.mimetype == "application/problem+json"


def test_subjects_of_others_are_404(client: FlaskClient, auth: dict[str, str], db) -> None:  # type: ignore[no-untyped-def]
    created = upload(client, auth, name="aunt")
    other = {"Authorization": f"Bearer {make_key(db)}"}
    assert client.get(f"/v1/subjects/{created['id']}", headers=other).status_code == 404
    assert client.get(f"/v1/subjects/{created['id']}?user_id=u-9", headers=auth).status_code == 404
    assert client.get(f"/v1/subjects/{created['id']}?user_id=u-1", headers=auth).status_code == 200
