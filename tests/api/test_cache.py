"""The result cache and in-flight dedupe through the API, with no worker running: a job that succeeded (finished
here as a worker finishes it: fenced transition, images stored, its metrics row) answers identical requests."""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select, update

from shared import cache, jobs, styles
from shared.db import Database, utcnow
from shared.deletion.run import run_deletion
from shared.errors import CancelReason, ErrorCode
from shared.models import ApiKey, CacheEntry, GenerationMetric, Job, UserDeletion, WebhookEvent
from shared.settings import Settings
from shared.stored_request import StoredRequest
from tests.helpers import image_keys, load, lora, make_key, png, submit, upload
from worker.maintenance import sweep, upkeep

REVISION = "tiny-0123456789ab"
SEEDED = {"user_id": "u-1", "prompt": "grandma teaching me to ride a bike",
          "params": {"width": 64, "height": 64, "steps": 2, "seed": 42}}
WAIT = {"Prefer": "wait=5"}


@pytest.fixture
def admin(db: Database) -> dict[str, str]:
    return {"Authorization": f"Bearer {make_key(db, scopes=('generate', 'admin'))}"}


def run_like_a_worker(app: Flask, db: Database, job_id: str, *, revision: str = REVISION, color: str = "red",
                      fail: ErrorCode | None = None) -> None:
    """What a GPU worker does at the end of an attempt: store the image, finish fenced, write the metrics row."""
    storage = app.extensions["illustrations"].storage
    data = png((64, 64), color)
    with db.begin() as session:
        claim = jobs.started(session, job_id, "gpu0@test", 60)
        assert isinstance(claim, jobs.Claim)
        job = session.get_one(Job, job_id)
        if fail is not None:
            assert jobs.failed(session, claim, fail, "it broke")
        else:
            key = f"jobs/{job_id}/1/0.png"
            storage.put(key, data, "image/png")
            image = jobs.StoredImage(0, key, "image/png", 64, 64, hashlib.sha256(data).hexdigest(), len(data))
            assert jobs.succeeded(session, claim, [image], model={"profile": "tiny", "revision": revision})
        session.add(GenerationMetric(job_id=job_id, client_id=job.client_id, user_id=job.user_id, attempt=1,
                                     outcome="failed" if fail else "succeeded", queue=job.queue, queue_wait_s=0,
                                     total_s=1, steps=2, width=64, height=64, num_images=1, identity_refs=0,
                                     style_ref=False, embeddings_cached=0, profile="tiny", revision=revision))


def entries(db: Database, job_id: str) -> list[CacheEntry]:
    """The cache entries of the client of ``job_id`` (the session's database is shared by every test)."""
    with db.begin() as session:
        client_id = session.get_one(Job, job_id).client_id
        return list(session.execute(select(CacheEntry).where(CacheEntry.client_id == client_id)).scalars())


@pytest.fixture
def source(client: FlaskClient, auth: dict[str, str], app: Flask, db: Database) -> Iterator[dict[str, Any]]:
    job = submit(client, auth, SEEDED)
    run_like_a_worker(app, db, job["id"])
    yield job


def test_a_hit_is_answered_succeeded_inside_the_post_with_no_worker(
    client: FlaskClient, auth: dict[str, str], db: Database, source: dict[str, Any]
) -> None:
    response = client.post("/v1/illustrations", json={**SEEDED, "metadata": {"memory_id": "m-2"}},
                           headers={**auth, **WAIT})
    assert response.status_code == 200
    assert response.headers["Preference-Applied"] == "wait=5"
    hit: Any = response.json
    assert hit["id"] != source["id"]
    assert hit["status"] == "succeeded"
    assert hit["cached"] is True
    assert hit["metadata"] == {"memory_id": "m-2"}
    assert hit["finished_at"] is not None
    assert hit["model"]["revision"] == REVISION
    assert hit["attempts"] == 0
    assert hit["images"][0]["sha256"] == client.get(f"/v1/illustrations/{source['id']}", headers=auth).json[
        "images"][0]["sha256"]  # type: ignore[index]
    assert image_keys(db, hit["id"]) == image_keys(db, source["id"])  # the same stored object, not a copy
    download = client.get(f"/v1/illustrations/{hit['id']}/images/0", headers=auth)
    assert download.status_code == 200
    assert download.mimetype == "image/png"
    download.close()
    # GET and the list say cached; the source job does not.
    assert client.get(f"/v1/illustrations/{hit['id']}", headers=auth).json["cached"] is True  # type: ignore[index]
    listed = {item["id"]: item["cached"] for item in client.get("/v1/illustrations", headers=auth).json["items"]}  # type: ignore[index]
    assert listed == {hit["id"]: True, source["id"]: False}
    # Without Prefer: wait it is answered at once, finished, too; every hit is counted on the entry.
    again = client.post("/v1/illustrations", json=SEEDED, headers=auth)
    assert again.status_code == 202
    assert again.json["status"] == "succeeded"  # type: ignore[index]
    (entry,) = entries(db, source["id"])
    with db.begin() as session:
        assert entry.job_id == source["id"]
        assert entry.hits == 2
        assert entry.last_hit_at is not None
        assert entry.revision == REVISION
        assert jobs.transitions(session, hit["id"]) == [(None, "succeeded", 0, "cached")]
        assert session.get_one(Job, hit["id"]).published_at is None  # never sent to a queue


# Fields that do not change the images: each gives a hit.
IRRELEVANT = {
    "user_id": {"user_id": "u-2"},
    "metadata": {"metadata": {"memory_id": "m-9"}},
    "cancel_after": {"cancel_after": "2099-01-01T00:00:00Z"},
    "priority": {"priority": "batch"},
    "on_subject_error": {"on_subject_error": "text_only"},
    "memory_content": {"memory_context": {"content": "a long memoir text that never goes into the prompt"}},
}
# Fields that do: each gives a miss (a new queued job).
RELEVANT = {
    "prompt": {"prompt": "grandma teaching me to swim"},
    "negative_prompt": {"negative_prompt": "blurry"},
    "seed": {"params": {**SEEDED["params"], "seed": 43}},
    "steps": {"params": {**SEEDED["params"], "steps": 3}},
    "size": {"params": {**SEEDED["params"], "width": 72}},
    "guidance": {"params": {**SEEDED["params"], "guidance_scale": 6.0}},
    "num_images": {"params": {**SEEDED["params"], "num_images": 2}},
    "output_format": {"params": {**SEEDED["params"], "output_format": "webp"}},
    "identity_scale": {"params": {**SEEDED["params"], "identity_scale": 0.3}},
    "memory_title": {"memory_context": {"title": "Summer 1962"}},
    "artistic_style": {"style": {"artistic_style": "watercolor"}},
}


@pytest.mark.parametrize("change", IRRELEVANT, ids=list(IRRELEVANT))
def test_fields_that_do_not_change_the_images_still_hit(
    client: FlaskClient, auth: dict[str, str], source: dict[str, Any], change: str
) -> None:
    job = submit(client, auth, {**SEEDED, **IRRELEVANT[change]}, headers=WAIT)
    assert job["status"] == "succeeded"
    assert job["cached"] is True


@pytest.mark.parametrize("change", RELEVANT, ids=list(RELEVANT))
def test_fields_that_change_the_images_miss(
    client: FlaskClient, auth: dict[str, str], db: Database, source: dict[str, Any], change: str
) -> None:
    job = submit(client, auth, {**SEEDED, **RELEVANT[change]})
    assert job["status"] == "queued"
    assert job["cached"] is False
    row = load(db, job["id"])
    assert row.cache_key is not None
    assert row.cache_key != load(db, source["id"]).cache_key
    assert row.follows_job_id is None


def test_a_subject_photo_and_its_version_are_part_of_the_key(
    client: FlaskClient, auth: dict[str, str], app: Flask, db: Database
) -> None:
    upload(client, auth, user_id="u-1", name="grandma", data=png((32, 32), "red"))
    body = {**SEEDED, "subjects": [{"name": "grandma"}]}
    first = submit(client, auth, body)
    run_like_a_worker(app, db, first["id"])
    assert submit(client, auth, body)["cached"] is True
    upload(client, auth, user_id="u-1", name="grandma", data=png((32, 32), "blue"))  # a new version
    assert submit(client, auth, body)["status"] == "queued"
    # The same photo under another user's subject is the same input: a hit.
    upload(client, auth, user_id="u-2", name="grandpa", data=png((32, 32), "red"))
    assert submit(client, auth, {**body, "user_id": "u-2", "subjects": [{"name": "grandpa"}]})["cached"] is True


def test_without_a_seed_nothing_is_cached(client: FlaskClient, auth: dict[str, str], app: Flask,
                                          db: Database) -> None:
    body = copy.deepcopy(SEEDED)
    del body["params"]["seed"]
    first = submit(client, auth, body)
    assert load(db, first["id"]).cache_key is None
    run_like_a_worker(app, db, first["id"])
    second = submit(client, auth, {**body, "params": {**body["params"], "seed": load(db, first["id"]).seed}})
    assert second["status"] == "queued"  # its drawn seed made no entry either
    assert entries(db, first["id"]) == []


def test_a_reference_by_url_is_not_cacheable_at_submit(client: FlaskClient, auth: dict[str, str],
                                                      db: Database) -> None:
    body = {**SEEDED, "subjects": [{"name": "grandma", "image_url": "https://example.com/grandma.png"}]}
    job = submit(client, auth, body)
    assert load(db, job["id"]).cache_key is None


def test_another_client_never_hits(client: FlaskClient, db: Database, source: dict[str, Any]) -> None:
    other = {"Authorization": f"Bearer {make_key(db)}"}
    assert submit(client, other, SEEDED)["status"] == "queued"


def test_a_new_model_revision_misses(client: FlaskClient, auth: dict[str, str], app: Flask, db: Database,
                                     source: dict[str, Any]) -> None:
    newer = submit(client, auth, {**SEEDED, "prompt": "another picture"})
    run_like_a_worker(app, db, newer["id"], revision="tiny-fedcba987654")  # workers now run another revision
    job = submit(client, auth, SEEDED)
    assert job["status"] == "queued"
    assert job["cached"] is False
    run_like_a_worker(app, db, job["id"], revision="tiny-fedcba987654")
    assert submit(client, auth, SEEDED)["cached"] is True  # the entry now names the new run


def test_the_cache_can_be_switched_off(app: Flask, settings: Settings, db: Database, auth: dict[str, str],
                                       client: FlaskClient, source: dict[str, Any]) -> None:
    svc = app.extensions["illustrations"]
    svc.settings = settings.model_copy(update={"result_cache": False})
    job = submit(client, auth, SEEDED)
    assert job["status"] == "queued"
    assert load(db, job["id"]).cache_key is None


def test_entries_expire_after_the_retention(client: FlaskClient, auth: dict[str, str], db: Database,
                                            settings: Settings, source: dict[str, Any]) -> None:
    with db.begin() as session:
        session.execute(update(CacheEntry).values(created_at=utcnow(-settings.cache_retention_s - 1)))
    assert submit(client, auth, SEEDED)["status"] == "queued"  # expired: a miss even before upkeep runs
    upkeep(db, settings)
    assert entries(db, source["id"]) == []
    assert load(db, source["id"]).status == "succeeded"
    assert image_keys(db, source["id"])  # the job keeps its images


# --- in-flight dedupe -----------------------------------------------------------------------------------------------
def test_an_identical_request_in_flight_follows_and_finishes_with_its_leader(
    client: FlaskClient, auth: dict[str, str], app: Flask, db: Database
) -> None:
    leader = submit(client, auth, SEEDED)
    follower = submit(client, auth, {**SEEDED, "user_id": "u-2"})
    canceled = submit(client, auth, SEEDED)
    assert follower["status"] == "queued"
    row = load(db, follower["id"])
    assert row.follows_job_id == leader["id"]
    assert row.published_at is None
    with db.begin() as session:
        assert follower["id"] not in {job_id for job_id, _ in jobs.unpublished(session, -60)}  # never published
    # Canceling a follower cancels only the follower.
    assert client.post(f"/v1/illustrations/{canceled['id']}/cancel", headers=auth).status_code == 200
    assert load(db, canceled["id"]).status == "canceled"
    assert load(db, leader["id"]).status == "queued"

    run_like_a_worker(app, db, leader["id"])
    done: Any = client.get(f"/v1/illustrations/{follower['id']}", headers={**auth, **WAIT}).json
    assert done["status"] == "succeeded"
    assert done["cached"] is True
    assert done["attempts"] == 0
    assert image_keys(db, follower["id"]) == image_keys(db, leader["id"])
    assert done["progress"] == {"step": 2, "total": 2}
    with db.begin() as session:
        assert jobs.transitions(session, follower["id"]) == [(None, "queued", 0, None),
                                                              ("queued", "succeeded", 0, "follower")]
    assert [entry.job_id for entry in entries(db, leader["id"])] == [leader["id"]]


def test_followers_fail_with_a_failed_leader(client: FlaskClient, auth: dict[str, str], app: Flask,
                                             db: Database) -> None:
    leader = submit(client, auth, SEEDED)
    follower = submit(client, auth, SEEDED)
    run_like_a_worker(app, db, leader["id"], fail=ErrorCode.REFERENCE_INVALID)
    job = load(db, follower["id"])
    assert job.status == "failed"
    assert job.error_code == "reference_invalid"
    assert job.error_message == "it broke"


@pytest.mark.parametrize("end", ["canceled", "worker_lost", "deleted"])
def test_followers_of_a_canceled_lost_or_vanished_leader_run_themselves(
    client: FlaskClient, auth: dict[str, str], db: Database, settings: Settings, end: str
) -> None:
    leader = submit(client, auth, SEEDED)
    follower = submit(client, auth, SEEDED)
    with db.begin() as session:
        if end == "canceled":
            assert jobs.canceled(session, leader["id"], CancelReason.CANCELED_BY_CLIENT)
        elif end == "worker_lost":
            claim = jobs.started(session, leader["id"], "w", 60)
            assert isinstance(claim, jobs.Claim)
            assert jobs.failed(session, claim, ErrorCode.WORKER_LOST, "gone")
        else:  # a row removed under its follower (a race the locks do not cover): the sweep settles it
            session.execute(update(Job).where(Job.id == leader["id"]).values(status="canceled"))
            session.execute(Job.__table__.delete().where(Job.id == leader["id"]))
    if end == "deleted":
        assert sweep(db, settings).followers == [follower["id"]]
    job = load(db, follower["id"])
    assert job.status == "queued"
    assert job.follows_job_id is None
    assert job.published_at is None
    with db.begin() as session:
        assert follower["id"] in {job_id for job_id, _ in jobs.unpublished(session, -60)}  # the relay sends it


def test_a_batch_of_identical_requests_runs_once(client: FlaskClient, auth: dict[str, str], app: Flask,
                                                 db: Database) -> None:
    response = client.post("/v1/batches", json={"requests": [SEEDED, SEEDED, SEEDED]}, headers=auth)
    assert response.status_code == 202, response.json
    ids = response.json["job_ids"]  # type: ignore[index]
    rows = [load(db, job_id) for job_id in ids]
    leaders = [row for row in rows if row.follows_job_id is None]
    assert len(leaders) == 1
    assert all(row.follows_job_id == leaders[0].id for row in rows if row is not leaders[0])
    run_like_a_worker(app, db, leaders[0].id)
    assert {load(db, job_id).status for job_id in ids} == {"succeeded"}


# --- deletion ---------------------------------------------------------------------------------------------------------
def test_deleting_a_user_removes_their_entries_and_keeps_images_another_job_shares(
    client: FlaskClient, admin: dict[str, str], app: Flask, db: Database, settings: Settings
) -> None:
    storage = app.extensions["illustrations"].storage
    source = submit(client, admin, SEEDED)
    run_like_a_worker(app, db, source["id"])
    other = submit(client, admin, {**SEEDED, "user_id": "u-2"}, headers=WAIT)
    assert other["cached"] is True
    (key,) = image_keys(db, source["id"])

    def delete_user(user_id: str) -> dict[str, int]:
        deletion: Any = client.delete(f"/v1/users/{user_id}", headers=admin).json
        assert run_deletion(db, storage, settings, deletion["id"]) == "succeeded"
        with db.begin() as session:
            parts: dict[str, int] = session.get_one(UserDeletion, deletion["id"]).parts
        return parts

    parts = delete_user("u-1")
    assert parts["cache_entries"] == 1
    assert parts["jobs"] == 1
    assert entries(db, other["id"]) == []
    assert storage.exists(key)  # u-2's cached job still lists it
    download = client.get(f"/v1/illustrations/{other['id']}/images/0", headers=admin)
    assert download.status_code == 200
    download.close()
    assert submit(client, admin, {**SEEDED, "user_id": "u-3"})["status"] == "queued"  # no entry left: a miss
    delete_user("u-2")
    assert not storage.exists(key)  # nobody lists it any more


def key(client_id: str, profile: str, request: dict[str, Any], prompt_used: str,
        lora: styles.ResolvedStyle | None) -> str:
    """The key of a stored request given as the JSON a job row keeps."""
    return cache.compute_key(client_id, profile, StoredRequest.model_validate(request), prompt_used, lora)


def test_the_key_ignores_how_a_float_is_written() -> None:
    request = copy.deepcopy(KEY_REQUEST)
    request["params"]["guidance_scale"] = 7
    same = copy.deepcopy(KEY_REQUEST)
    same["params"]["guidance_scale"] = 7.0
    assert key("c", "tiny", request, "p", None) == key("c", "tiny", same, "p", None)


def test_the_key_of_a_stored_request_is_the_one_its_json_had() -> None:
    """The key of a request, now computed from the typed stored request, is the one computed from its JSON before
    (this digest): entries written before still answer (``KEY_VERSION`` changes only on purpose)."""
    request = {
        "prompt": "grandma", "negative_prompt": None,
        "params": {"width": 64, "height": 64, "steps": 2, "guidance_scale": 7.5, "seed": 1, "num_images": 1,
                   "identity_scale": 0.6, "style_scale": 0.8, "content_scale": 1.0, "lora_scale": 0.8,
                   "output_format": "png", "style_lora": "ink"},
        "resolved": {"identity": [{"subject_id": "s-1", "name": "grandma", "version": 1,
                                   "storage_key": "subjects/s-1/v1.png", "sha256": "a" * 64}],
                     "style": {"storage_key": "jobs/j-1/references/style.png", "sha256": "c" * 64},
                     "style_lora": {"name": "ink", "version": 1}},
        "variant": "b", "experiment": "steps-test",
    }
    ink = styles.ResolvedStyle("s", "ink", 1, "k", "d" * 64, "tiny")
    # KEY_VERSION 2 (face crops and regions in the key) changed it on purpose: version 1 entries miss.
    assert key("c", "tiny", request, "grandma, watercolor", ink) == (
        "c27bcb8ee74c6c3e63c952e3d77acef5a0b4e6a6d461543608bb72f18763d368")


def test_a_style_lora_counts_as_name_at_version_resolved_at_submit(
    client: FlaskClient, auth: dict[str, str], app: Flask, db: Database, tmp_path: Path
) -> None:
    storage = app.extensions["illustrations"].storage
    with db.begin() as session:
        client_id = session.execute(select(ApiKey.client_id).where(
            ApiKey.key_hash == hashlib.sha256(auth["Authorization"].split()[1].encode()).hexdigest())).scalar_one()
        styles.import_version(session, storage, client_id, "ink", lora(tmp_path / "a.safetensors", rank=4), "tiny")
    bare = {**SEEDED, "params": {**SEEDED["params"], "style_lora": "ink"}}
    first = submit(client, auth, bare)
    assert load(db, first["id"]).request["resolved"]["style_lora"] == {"name": "ink", "version": 1}  # pinned
    run_like_a_worker(app, db, first["id"])
    assert submit(client, auth, bare)["cached"] is True
    pinned = submit(client, auth, {**SEEDED, "params": {**SEEDED["params"], "style_lora": "ink@1"}})
    assert pinned["cached"] is True  # the same version, named either way
    assert submit(client, auth, {**SEEDED, "params": {**bare["params"], "lora_scale": 0.5}})["status"] == "queued"
    with db.begin() as session:
        styles.import_version(session, storage, client_id, "ink", lora(tmp_path / "b.safetensors", rank=8), "tiny")
    assert submit(client, auth, bare)["status"] == "queued"  # "ink" is version 2 now


def ref(sha256: str) -> dict[str, str]:
    return {"storage_key": f"subjects/{sha256[:8]}/v1.png", "sha256": sha256}


KEY_REQUEST: dict[str, Any] = {
    "prompt": "p",
    "negative_prompt": None,
    "params": {"width": 64, "height": 64, "steps": 2, "guidance_scale": 7.5, "seed": 1, "num_images": 1,
               "identity_scale": 0.6, "style_scale": 0.8, "content_scale": 1.0, "lora_scale": 0.8,
               "output_format": "png", "style_lora": None},
    "resolved": {"identity": [ref("a" * 64), ref("b" * 64)], "style": ref("c" * 64)},
    "variant": "a",
    "experiment": None,
}


def test_every_input_of_the_key_changes_it() -> None:
    ink = styles.ResolvedStyle("s", "ink", 1, "k", "d" * 64, "tiny")
    base = key("c", "tiny", KEY_REQUEST, "p", ink)

    def changed(path: tuple[str, ...], value: Any) -> dict[str, Any]:
        request = copy.deepcopy(KEY_REQUEST)
        target = request
        for name in path[:-1]:
            target = target[name]
        target[path[-1]] = value
        return request

    variants = [
        key("other", "tiny", KEY_REQUEST, "p", ink),
        key("c", "sdxl", KEY_REQUEST, "p", ink),
        key("c", "tiny", KEY_REQUEST, "p2", ink),
        key("c", "tiny", KEY_REQUEST, "p", None),
        key("c", "tiny", KEY_REQUEST, "p", styles.ResolvedStyle("s", "ink", 2, "k", "d" * 64, "tiny")),
        key("c", "tiny", KEY_REQUEST, "p", styles.ResolvedStyle("s", "ink", 1, "k", "e" * 64, "tiny")),
        key("c", "tiny", changed(("negative_prompt",), "blurry"), "p", ink),
        key("c", "tiny", changed(("variant",), "b"), "p", ink),
        key("c", "tiny", changed(("experiment",), "steps-test"), "p", ink),
        key("c", "tiny", changed(("resolved", "style"), None), "p", ink),
        key("c", "tiny", changed(("resolved", "identity"), [ref("b" * 64), ref("a" * 64)]), "p", ink),
        key("c", "tiny", changed(("resolved", "identity"), [ref("a" * 64)]), "p", ink),
    ]
    for name, value in KEY_REQUEST["params"].items():
        if name == "style_lora":
            continue
        other = "jpeg" if name == "output_format" else value + 1
        variants.append(key("c", "tiny", changed(("params", name), other), "p", ink))
    assert base not in variants
    assert len(set(variants)) == len(variants)
    # Left out: what does not change the pixels (the stored request's bookkeeping).
    extra = {**copy.deepcopy(KEY_REQUEST), "priority": "batch", "batch_index": 3, "user_id": "u-9",
             "memory_context": {"content": "x"}, "on_subject_error": "text_only", "prompt": "as given"}
    extra["resolved"]["identity"][0]["storage_key"] = "subjects/x/v1.png"
    assert key("c", "tiny", extra, "p", ink) == base


def test_images_of_a_user_being_deleted_answer_nobody(client: FlaskClient, admin: dict[str, str], app: Flask,
                                                     db: Database) -> None:
    source = submit(client, admin, SEEDED)
    run_like_a_worker(app, db, source["id"])
    assert client.delete("/v1/users/u-1", headers=admin).status_code == 202  # requested, not run yet
    job = submit(client, admin, {**SEEDED, "user_id": "u-2"})
    assert job["status"] == "queued"
    assert job["cached"] is False  # a miss: those objects may be going
    refused = client.post("/v1/illustrations", json=SEEDED, headers=admin)
    assert refused.status_code == 409  # the user being deleted submits nothing


def test_hits_and_followers_record_their_webhook_events(client: FlaskClient, auth: dict[str, str], app: Flask,
                                                        db: Database) -> None:
    """A job born succeeded from the cache, and a follower finishing with its leader, end like any other job: each
    records its own event (its own webhook-id) in the transaction that made it terminal."""
    hook = "https://autobio.example/hooks/illustrations"
    body = {**SEEDED, "prompt": "the lake house in the summer of 1972", "webhook_url": hook}
    leader = submit(client, auth, body)
    follower = submit(client, auth, {**body, "user_id": "u-2"})
    assert load(db, follower["id"]).follows_job_id == leader["id"]
    run_like_a_worker(app, db, leader["id"])
    hit = submit(client, auth, body, headers=WAIT)
    assert hit["status"] == "succeeded"
    assert hit["cached"] is True
    with db.begin() as session:
        events = {event.job_id: event for event in session.execute(
            select(WebhookEvent).where(WebhookEvent.job_id.in_([leader["id"], follower["id"], hit["id"]]))
        ).scalars()}
    assert set(events) == {leader["id"], follower["id"], hit["id"]}
    assert {event.type for event in events.values()} == {"illustration.succeeded"}
    assert {event.url for event in events.values()} == {hook}
    assert len({event.id for event in events.values()}) == 3
