"""Stable codes in every problem+json answer (Flask's client, real PostgreSQL and Redis): the problem's `code` and
`instance` (the request id, as in `X-Request-ID`), a `code` on every field error (pydantic's error types mapped onto
``shared.errors.FieldCode``), and AutoBio's route naming its own fields in `field` and message, a failed job's
detail included."""

from __future__ import annotations

from typing import Any

import pytest
from flask.testing import FlaskClient

from shared import jobs
from shared.db import Database
from shared.errors import ErrorCode, FieldCode, ProblemCode, field_code
from tests.helpers import VALID, make_key


def problem(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.json
    assert response.mimetype == "application/problem+json"
    body: dict[str, Any] = response.json
    assert body["code"] == code, body
    assert body["instance"] == response.headers["X-Request-ID"]
    return body


def codes(body: dict[str, Any]) -> dict[str, str]:
    return {error["field"]: error["code"] for error in body["errors"]}


def test_each_bad_field_has_its_own_code(client: FlaskClient, auth: dict[str, str]) -> None:
    sent = {"prompt": "x" * 2001, "params": {"width": 100, "height": 4096, "steps": 0, "output_format": "gif",
                                             "seed": "42"},
            "priority": "urgent", "colour": "red"}
    body = problem(client.post("/v1/illustrations", json=sent, headers=auth), 422, "validation_failed")
    assert codes(body) == {
        "user_id": "missing",
        "prompt": "too_long",
        "params.width": "multiple_of",
        "params.height": "out_of_range",
        "params.steps": "out_of_range",
        "params.output_format": "invalid_choice",
        "params.seed": "invalid_type",
        "priority": "invalid_choice",
        "colour": "extra_forbidden",
    }
    assert all(error["message"] for error in body["errors"])
    nul = problem(client.post("/v1/illustrations", json={**VALID, "metadata": {"k": "a\x00b"}}, headers=auth), 422,
                  "validation_failed")
    assert codes(nul) == {"metadata.k": "nul_character"}
    bad_user = problem(client.post("/v1/illustrations", json={**VALID, "user_id": "u 1"}, headers=auth), 422,
                       "validation_failed")
    assert codes(bad_user) == {"user_id": "pattern_mismatch"}
    unknown = problem(client.post("/v1/illustrations", json={**VALID, "subjects": [{"subject_id": "nope"}]},
                                  headers=auth), 422, "validation_failed")
    assert codes(unknown) == {"subjects.0": "not_found"}


def test_the_request_id_given_is_the_instance(client: FlaskClient, auth: dict[str, str]) -> None:
    response = client.get("/v1/illustrations/nope", headers={**auth, "X-Request-ID": "trace-42"})
    assert problem(response, 404, "not_found")["instance"] == "trace-42"


def test_every_kind_of_problem_has_a_code(client: FlaskClient, auth: dict[str, str]) -> None:
    problem(client.get("/v1/illustrations"), 401, "unauthorized")
    problem(client.post("/v1/illustrations", data="{", content_type="application/json", headers=auth), 400,
            "malformed_request")
    problem(client.post("/v1/illustrations", data="x", content_type="text/plain", headers=auth), 415,
            "unsupported_media_type")
    problem(client.put("/v1/illustrations", json=VALID, headers=auth), 405, "method_not_allowed")
    problem(client.get("/nowhere", headers=auth), 404, "not_found")
    problem(client.post("/v1/illustrations", data=b"x" * (13 * 1024 * 1024), content_type="application/json",
                        headers=auth), 413, "body_too_large")
    problem(client.get("/v1/metrics/quality", headers=auth), 403, "forbidden")
    first = client.post("/v1/illustrations", json=VALID, headers={**auth, "Idempotency-Key": "codes-1"})
    assert first.status_code == 202
    reused = problem(client.post("/v1/illustrations", json={**VALID, "prompt": "another"},
                                 headers={**auth, "Idempotency-Key": "codes-1"}), 422, "idempotency_key_reused")
    assert codes(reused) == {"Idempotency-Key": "invalid_value"}


def test_pydantic_types_map_onto_the_closed_set() -> None:
    assert field_code("string_too_short") == FieldCode.TOO_SHORT
    assert field_code("int_parsing") == FieldCode.INVALID_TYPE
    assert field_code("datetime_from_date_parsing") == FieldCode.INVALID_FORMAT
    assert field_code("value_error") == FieldCode.INVALID_VALUE
    assert field_code("a_type_pydantic_adds_later") == FieldCode.INVALID_VALUE
    assert {code.value for code in ErrorCode} - {code.value for code in FieldCode} == {
        "out_of_memory", "time_limit", "worker_lost", "setup_failed", "internal"}  # the input ones are field codes
    assert all(code.value.islower() and " " not in code.value for code in [*ProblemCode, *FieldCode])


LEGACY = {"prompt": "grandma teaching me to ride a bike", "userId": "autobio-user-7"}


def test_autobios_route_names_its_own_fields_with_codes(client: FlaskClient, auth: dict[str, str]) -> None:
    refused = problem(client.post("/api/illustrations/generate", headers=auth, json={
        **LEGACY, "subjectReferences": [{"name": "a", "imageUrl": "http://127.0.0.1/x.png"}, {"name": "nobody"}]}),
        422, "validation_failed")
    assert codes(refused) == {"subjectReferences.0.imageUrl": "blocked_url", "subjectReferences.1": "not_found"}
    assert not any("subjects" in error["message"] or "image_url" in error["message"] for error in refused["errors"])
    missing = problem(client.post("/api/illustrations/generate", headers=auth, json={"userId": "u-1"}), 422,
                      "validation_failed")
    assert codes(missing) == {"prompt": "missing"}


@pytest.mark.parametrize(("code", "status", "problem_code"), [
    (ErrorCode.REFERENCE_BLOCKED, 422, "generation_failed"),
    (ErrorCode.OUT_OF_MEMORY, 503, "generation_failed"),
])
def test_a_failed_generation_names_autobios_field_in_field_detail_and_message(
    client: FlaskClient, db: Database, code: ErrorCode, status: int, problem_code: str
) -> None:
    auth = {"Authorization": f"Bearer {make_key(db)}"}
    accepted: Any = client.post("/api/illustrations/generate", json=LEGACY,
                                headers={**auth, "Prefer": "wait=0"}).json
    with db.begin() as session:
        claim = jobs.started(session, accepted["generationId"], "w", 60)
        assert isinstance(claim, jobs.Claim)
    with db.begin() as session:  # as the preparation step words it: the v1 field first
        jobs.failed(session, claim, code, "subjects.0: the URL resolves to a loopback address")
    body = problem(client.get(accepted["statusUrl"], headers=auth), status, problem_code)
    assert "subjectReferences.0: the URL resolves to a loopback address" in body["detail"]
    assert "subjects.0" not in body["detail"]
    if status == 422:
        assert body["errors"] == [{"field": "subjectReferences.0", "code": "reference_blocked",
                                   "message": "subjectReferences.0: the URL resolves to a loopback address"}]
