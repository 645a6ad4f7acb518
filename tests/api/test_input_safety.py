"""Input that PostgreSQL cannot store (NUL characters) is a named 4xx wherever it comes in, never a 500."""

from __future__ import annotations

import io

from flask.testing import FlaskClient

from shared.db import Database
from tests.helpers import VALID, count_jobs, png


def test_nul_characters_are_refused_everywhere(client: FlaskClient, auth: dict[str, str], db: Database) -> None:
    before = count_jobs(db)
    for body, field in (({**VALID, "prompt": "a\u0000b"}, "prompt"),
                        ({**VALID, "metadata": {"k\u0000": "v"}}, "metadata.k\u0000"),
                        ({**VALID, "metadata": {"k": ["x", "\u0000"]}}, "metadata.k.1"),
                        ({**VALID, "subjects": [{"name": "gr\u0000an"}]}, "subjects.0.name")):
        response = client.post("/v1/illustrations", json=body, headers=auth)
        assert response.status_code == 422, response.json
        assert field in [e["field"] for e in response.json["errors"]]  # type: ignore[index]
    compat = client.post("/api/illustrations/generate", json={"prompt": "x", "userId": "u", "memoryContext": {
        "title": "\u0000"}}, headers=auth)
    assert compat.status_code == 422
    assert client.get("/v1/illustrations", query_string={"cursor": "a\u0000"}, headers=auth).status_code == 422
    assert client.get("/v1/illustrations/a%00b", headers=auth).status_code == 404
    assert client.get("/api/illustrations/a%00b", headers=auth).status_code == 404
    form = client.post("/v1/subjects", headers=auth, data={"user_id": "u-1", "name": "a\u0000",
                                                           "image": (io.BytesIO(png()), "x.png")})
    assert form.status_code == 422
    assert form.json["errors"][0]["field"] == "name"  # type: ignore[index]
    assert count_jobs(db) == before


def test_a_decompression_bomb_upload_is_422_naming_the_image(client: FlaskClient, auth: dict[str, str]) -> None:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("1", (6000, 5000)).save(buffer, format="PNG")  # 30 megapixels in a few kilobytes
    assert len(buffer.getvalue()) < 100_000
    response = client.post("/v1/subjects", headers=auth, data={"user_id": "u-1", "name": "bomb",
                                                               "image": (io.BytesIO(buffer.getvalue()), "b.png")})
    assert response.status_code == 422
    error = response.json["errors"][0]  # type: ignore[index]
    assert error["field"] == "image"
    assert "pixels" in error["message"]
