"""Per-key request rate limits (flask-limiter; counts in Redis so every API process shares them) → 429.

The key of a request is a hash of its bearer key (never the key itself), or the client address without one.
``/healthz``, ``/readyz``, ``/openapi.json`` and ``/docs`` are not limited. When the counter store is down the
request goes through (``swallow_errors``): a Redis outage must not stop submissions, which wait in PostgreSQL.
"""

from __future__ import annotations

import hashlib
import math
import time

from flask import Flask, Response, request
from flask_limiter import Limiter, RequestLimit

from api.errors import problem_response
from shared.schemas import Problem
from shared.settings import Settings

LIMITED_PREFIXES = ("/v1/", "/api/")


def _key() -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return "key:" + hashlib.sha256(token.strip().encode()).hexdigest()[:32]
    return "addr:" + (request.remote_addr or "unknown")


def _exempt() -> bool:
    return not request.path.startswith(LIMITED_PREFIXES)


def _breached(limit: RequestLimit) -> Response:
    retry_after = max(1, math.ceil(limit.reset_at - time.time()))
    problem = Problem(title="Too Many Requests", status=429,
                      detail=f"over this key's request rate ({limit.limit}); retry after {retry_after} s")
    return problem_response(problem, {"Retry-After": str(retry_after)})


def init_app(app: Flask, settings: Settings) -> Limiter | None:
    if not settings.rate_limit.strip():
        return None
    return Limiter(
        _key,
        app=app,
        default_limits=[settings.rate_limit],
        default_limits_exempt_when=_exempt,
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
