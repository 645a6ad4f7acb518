"""Whose bucket a request counts against (flask-limiter on the real Redis): a valid key has its own; a missing, unknown
or revoked key counts against the caller's address, so a fresh made-up token per request buys nothing. Behind a
proxy the address is taken from `X-Forwarded-For` only as far as `trusted_proxy_hops` says.

Each test calls from addresses of its own (the counts live in Redis for the window's minute).
"""

from __future__ import annotations

import re
import secrets
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask

from shared.db import Database
from shared.settings import Settings
from tests.helpers import make_key

LIMIT = 3


def fresh_address() -> str:
    """An address no other test (or earlier run within the minute) has counted against."""
    return f"2001:db8::{uuid.uuid4().hex[:4]}:{uuid.uuid4().hex[:4]}"


@pytest.fixture
def limited_app(settings: Settings) -> Iterator[Flask]:
    yield from _app(settings)


def _app(settings: Settings, **overrides: Any) -> Iterator[Flask]:
    from api import create_app

    app = create_app(settings.model_copy(update={"rate_limit": f"{LIMIT}/minute",
                                                 "rate_limit_storage_url": settings.broker_url, **overrides}))
    yield app
    app.extensions["illustrations"].waiter.close()
    app.extensions["illustrations"].db.engine.dispose()


def fake() -> dict[str, str]:
    return {"Authorization": f"Bearer ik_{secrets.token_urlsafe(32)}"}


def test_made_up_tokens_count_against_the_address(limited_app: Flask) -> None:
    client = limited_app.test_client()
    address = {"REMOTE_ADDR": fresh_address()}
    statuses = [client.get("/v1/illustrations", headers=fake(), environ_base=address).status_code
                for _ in range(LIMIT + 2)]
    assert statuses == [401] * LIMIT + [429, 429]


def test_missing_and_made_up_keys_share_the_address_bucket(limited_app: Flask) -> None:
    client = limited_app.test_client()
    address = {"REMOTE_ADDR": fresh_address()}
    assert client.get("/v1/illustrations", environ_base=address).status_code == 401
    assert client.get("/v1/illustrations", headers=fake(), environ_base=address).status_code == 401
    assert client.get("/v1/illustrations", headers={"Authorization": "Basic eDp5"},
                      environ_base=address).status_code == 401
    refused = client.get("/v1/illustrations", headers=fake(), environ_base=address)
    assert refused.status_code == 429 and refused.mimetype == "application/problem+json"
    assert 1 <= int(refused.headers["Retry-After"]) <= 61


def test_a_valid_key_keeps_its_own_bucket_when_its_address_is_spent(limited_app: Flask, db: Database) -> None:
    client = limited_app.test_client()
    address = {"REMOTE_ADDR": fresh_address()}
    for _ in range(LIMIT + 1):
        client.get("/v1/illustrations", headers=fake(), environ_base=address)
    assert client.get("/v1/illustrations", headers=fake(), environ_base=address).status_code == 429
    valid = {"Authorization": f"Bearer {make_key(db)}"}
    assert [client.get("/v1/illustrations", headers=valid, environ_base=address).status_code
            for _ in range(LIMIT + 1)] == [200] * LIMIT + [429]


def test_a_valid_key_is_one_bucket_from_every_address(limited_app: Flask, db: Database) -> None:
    client = limited_app.test_client()
    valid = {"Authorization": f"Bearer {make_key(db)}"}
    statuses = [client.get("/v1/illustrations", headers=valid, environ_base={"REMOTE_ADDR": fresh_address()})
                .status_code for _ in range(LIMIT + 1)]
    assert statuses == [200] * LIMIT + [429]


def test_a_revoked_key_counts_against_the_address(settings: Settings, db: Database) -> None:
    from api.keys import revoke

    for app in _app(settings, api_key_cache_s=0):
        client = app.test_client()
        key = make_key(db)
        with db.begin() as session:
            assert revoke(session, key[:11])
        address = {"REMOTE_ADDR": fresh_address()}
        statuses = [client.get("/v1/illustrations", headers={"Authorization": f"Bearer {key}"},
                               environ_base=address).status_code for _ in range(LIMIT)]
        assert statuses == [401] * LIMIT
        assert client.get("/v1/illustrations", headers=fake(), environ_base=address).status_code == 429


def test_forwarded_for_is_ignored_unless_a_proxy_is_trusted(limited_app: Flask) -> None:
    client = limited_app.test_client()
    proxy = {"REMOTE_ADDR": fresh_address()}
    statuses = [client.get("/v1/illustrations", environ_base=proxy,
                           headers={**fake(), "X-Forwarded-For": fresh_address()}).status_code
                for _ in range(LIMIT + 1)]
    assert statuses == [401] * LIMIT + [429]  # a made-up X-Forwarded-For does not buy a fresh bucket


def test_behind_a_trusted_proxy_each_forwarded_address_has_its_bucket(settings: Settings) -> None:
    for app in _app(settings, trusted_proxy_hops=1):
        client = app.test_client()
        proxy = {"REMOTE_ADDR": fresh_address()}
        one, two = fresh_address(), fresh_address()
        first = [client.get("/v1/illustrations", environ_base=proxy,
                            headers={**fake(), "X-Forwarded-For": one}).status_code for _ in range(LIMIT + 1)]
        assert first == [401] * LIMIT + [429]
        assert client.get("/v1/illustrations", environ_base=proxy,
                          headers={**fake(), "X-Forwarded-For": two}).status_code == 401
        # Only the last hop is trusted: what the client put in front of it does not move it to another bucket.
        assert client.get("/v1/illustrations", environ_base=proxy,
                          headers={**fake(), "X-Forwarded-For": f"{fresh_address()}, {one}"}).status_code == 429


def test_the_operator_routes_are_limited_too(limited_app: Flask, db: Database) -> None:
    """`/metrics` (bearer) and `/ops` (Basic: no bearer, so the address) look keys up as well."""
    client = limited_app.test_client()
    address = {"REMOTE_ADDR": fresh_address()}
    statuses = [client.get("/metrics", headers=fake(), environ_base=address).status_code for _ in range(LIMIT)]
    assert statuses == [401] * LIMIT
    assert client.get("/ops", headers={"Authorization": "Basic b3BzOmlrX25vcGU="},
                      environ_base=address).status_code == 429
    assert client.get("/healthz", environ_base=address).status_code == 200  # the open routes are not limited
    metrics_key = {"Authorization": f"Bearer {make_key(db, scopes=('metrics',))}"}
    assert client.get("/metrics", headers=metrics_key, environ_base=address).status_code == 200


def test_a_key_has_one_count_across_every_route(limited_app: Flask, db: Database) -> None:
    client = limited_app.test_client()
    valid = {"Authorization": f"Bearer {make_key(db, scopes=('generate', 'styles'))}"}
    paths = ["/v1/illustrations", "/v1/subjects", "/v1/styles", "/v1/webhooks/deliveries"]
    statuses = [client.get(path, headers=valid).status_code for path in paths]
    assert statuses == [200] * LIMIT + [429]


def test_limited_answers_carry_the_ietf_ratelimit_headers(limited_app: Flask, db: Database) -> None:
    """`RateLimit-Policy: "requests";q=<quota>;w=<window>` and `RateLimit: "requests";r=<remaining>;t=<reset>` on
    every limited answer (the 429 and a 401 too); none on the routes no limit applies to."""
    client = limited_app.test_client()
    valid = {"Authorization": f"Bearer {make_key(db)}"}
    answers = [client.get("/v1/illustrations", headers=valid) for _ in range(LIMIT + 1)]
    assert [answer.status_code for answer in answers] == [200] * LIMIT + [429]
    for answer in answers:
        assert answer.headers["RateLimit-Policy"] == f'"requests";q={LIMIT};w=60'
    seen = [re.fullmatch(r'"requests";r=(\d+);t=(\d+)', answer.headers["RateLimit"]) for answer in answers]
    assert all(seen), [answer.headers["RateLimit"] for answer in answers]
    assert [int(match.group(1)) for match in seen if match] == [2, 1, 0, 0]
    assert all(0 <= int(match.group(2)) <= 60 for match in seen if match)
    refused = client.get("/v1/illustrations", headers=fake(), environ_base={"REMOTE_ADDR": fresh_address()})
    assert refused.status_code == 401 and refused.headers["RateLimit"].startswith('"requests";r=2;')
    open_route = client.get("/healthz")
    assert "RateLimit" not in open_route.headers and "RateLimit-Policy" not in open_route.headers
