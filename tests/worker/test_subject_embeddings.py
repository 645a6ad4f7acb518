"""Deleting a subject removes the reference embeddings computed from its photos, unless another subject (of any user
or client) still has the same image: real PostgreSQL and storage, the keys laid out by ``worker.embeddings``."""

from __future__ import annotations

import io
from typing import Any

import pytest
from flask.testing import FlaskClient
from PIL import Image

from shared.db import Database
from shared.storage import Storage
from tests.helpers import make_key
from worker.embeddings import embedding_keys

# Two encoder revisions: a deletion covers every revision an image was ever encoded under.
REVISIONS = ("tiny-1-float32", "sdxl-2-bfloat16")


def png(color: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 48), color).save(buffer, format="PNG")
    return buffer.getvalue()


def upload(client: FlaskClient, auth: dict[str, str], user_id: str, name: str, color: str) -> dict[str, Any]:
    response = client.post("/v1/subjects", headers=auth,
                           data={"user_id": user_id, "name": name, "image": (io.BytesIO(png(color)), "p.png")})
    assert response.status_code in (200, 201), response.json
    body: dict[str, Any] = response.json  # type: ignore[assignment]
    return body


def cache_embeddings(storage: Storage, sha256: str) -> list[str]:
    """What generations would have cached for this image (both adapters, every revision)."""
    keys = [key for revision in REVISIONS for key in embedding_keys(revision, sha256)]
    for key in keys:
        storage.put(key, b"embedding", "application/octet-stream")
    return keys


def delete(client: FlaskClient, auth: dict[str, str], subject: dict[str, Any]) -> None:
    response = client.delete(f"/v1/subjects/{subject['id']}?user_id={subject['user_id']}", headers=auth)
    assert response.status_code == 204


@pytest.fixture
def storage(app: Any) -> Storage:
    store: Storage = app.extensions["illustrations"].storage
    return store


def test_deleting_a_subject_removes_the_embeddings_of_every_version(
    client: FlaskClient, auth: dict[str, str], storage: Storage
) -> None:
    first = upload(client, auth, "u-emb", "grandma", "olive")
    second = upload(client, auth, "u-emb", "grandma", "plum")  # a new photo: version 2
    assert second["version"] == 2
    other = upload(client, auth, "u-emb", "grandpa", "navy")
    removed = cache_embeddings(storage, first["sha256"]) + cache_embeddings(storage, second["sha256"])
    untouched = cache_embeddings(storage, other["sha256"])
    delete(client, auth, second)
    assert [key for key in removed if storage.exists(key)] == []
    assert all(storage.exists(key) for key in untouched)


def test_embeddings_another_subject_still_uses_stay_until_the_last_one_goes(
    client: FlaskClient, auth: dict[str, str], db: Database, storage: Storage
) -> None:
    other_client = {"Authorization": f"Bearer {make_key(db)}"}
    mine = upload(client, auth, "u-same", "mum", "teal")
    same_user = upload(client, auth, "u-same", "mother", "teal")  # the same photo under another name
    theirs = upload(client, other_client, "u-else", "aunt", "teal")  # and in another client
    assert mine["sha256"] == same_user["sha256"] == theirs["sha256"]
    keys = cache_embeddings(storage, mine["sha256"])
    delete(client, auth, mine)
    assert all(storage.exists(key) for key in keys)
    delete(client, auth, same_user)
    assert all(storage.exists(key) for key in keys)
    delete(client, other_client, theirs)
    assert [key for key in keys if storage.exists(key)] == []
