"""Per-key request rate limits (flask-limiter; counts in Redis so every API process shares them) → 429.

The bucket of a request is its key's (by the key's id) when the bearer key is valid; a missing, unknown, revoked or
expired key counts against the caller's address, so a fresh made-up token per request buys no fresh bucket. The
key is looked up once per request (the process's key cache, else the database) and the scope check reuses it. The
address is the TCP peer, or the one ``trusted_proxy_hops`` proxies report (werkzeug's ProxyFix, set up here).
``/healthz``, ``/readyz``, ``/openapi.json`` and ``/docs`` are not limited (``/metrics`` and ``/ops`` are: they
check keys). When the counter store is down the request goes through (``swallow_errors``): a Redis outage must not
stop submissions, which wait in PostgreSQL.
"""

from __future__ import annotations

import math
import time

from flask import Flask, Response, request
from flask_limiter import Limiter, RequestLimit
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.middleware.proxy_fix import ProxyFix

from api.auth import authenticated
from api.errors import problem_response
from shared.errors import ProblemCode
from shared.schemas import Problem
from shared.settings import Settings

# Every route that checks a key (bearer, or /ops's Basic password): each made-up one would cost a lookup.
LIMITED_PREFIXES = ("/v1/", "/api/", "/metrics", "/ops")


def _key() -> str:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        try:
            principal = authenticated()
        except SQLAlchemyError:  # the database is down: the view answers 503; count the address meanwhile
            principal = None
        if principal is not None:
            return "key:" + principal.key_id
    return "addr:" + (request.remote_addr or "unknown")


def _exempt() -> bool:
    return not request.path.startswith(LIMITED_PREFIXES)


def _breached(limit: RequestLimit) -> Response:
    retry_after = max(1, math.ceil(limit.reset_at - time.time()))
    problem = Problem(title="Too Many Requests", status=429, code=ProblemCode.RATE_LIMITED,
                      detail=f"over the request rate ({limit.limit}) of this key, or of this address for "
                             f"requests without a valid key; retry after {retry_after} s")
    return problem_response(problem, {"Retry-After": str(retry_after)})


def init_app(app: Flask, settings: Settings) -> Limiter | None:
    if settings.trusted_proxy_hops:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=settings.trusted_proxy_hops)  # type: ignore[method-assign]
    if not settings.rate_limit.strip():
        return None
    return Limiter(
        _key,
        app=app,
        # Application limits: one count per bucket across every route (default limits would count each route apart,
        # so a key, or an address, would get the rate once per route).
        application_limits=[settings.rate_limit],
        application_limits_exempt_when=_exempt,
        storage_uri=settings.effective_rate_limit_storage_url,
        # A dead Redis must cost a request little: short socket timeouts (whole seconds, as limits takes them).
        storage_options={"socket_timeout": max(1, round(settings.broker_socket_timeout_s)),
                         "socket_connect_timeout": max(1, round(settings.publish_timeout_s))},
        strategy="fixed-window",
        key_prefix="illustrations-rate",
        swallow_errors=True,
        on_breach=_breached,
        headers_enabled=False,
    )
