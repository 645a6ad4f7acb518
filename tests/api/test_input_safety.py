"""Input that PostgreSQL cannot store (NUL characters) is a named 4xx wherever it comes in, never a 500."""

from __future__ import annotations

import io

from flask.testing import FlaskClient

from shared.db import Database
from tests.helpers import VALID, count_jobs, png
from tests.image_files import png_header


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


def test_a_subject_photo_is_judged_by_its_header_before_any_decoding(client: FlaskClient,
                                                                    auth: dict[str, str]) -> None:
    """Headers over the limit whose pixel data is junk: the pixel limit answers, so nothing was decoded (decoding
    would have found the junk first). 25 megapixels is the most a subject photo may have; each small body costs at
    most that much decoding (bench/style_upload.py measures it)."""
    for width, height in ((5001, 5000), (20_000, 20_000), (1, 25_000_001)):
        response = client.post("/v1/subjects", headers=auth, data={
            "user_id": "u-1", "name": "bomb", "image": (io.BytesIO(png_header(width, height)), "b.png")})
        assert response.status_code == 422, (width, height)
        error = response.json["errors"][0]  # type: ignore[index]
        assert error["field"] == "image", (width, height, error)
        assert "pixels" in error["message"], (width, height, error)
    at_limit = client.post("/v1/subjects", headers=auth, data={
        "user_id": "u-1", "name": "bomb", "image": (io.BytesIO(png_header(5000, 5000)), "b.png")})
    assert at_limit.status_code == 422  # within the limit, so decoded: and the junk is found
    assert "corrupt" in at_limit.json["errors"][0]["message"]  # type: ignore[index]
