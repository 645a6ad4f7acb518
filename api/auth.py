"""Bearer API keys and scopes: 401 without a valid key, 403 without the scope a route needs."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from flask import g, request

from api import keys
from api.errors import ApiError
from api.services import services

P = ParamSpec("P")
R = TypeVar("R")

_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="illustrations"'}


def _bearer() -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "Unauthorized", "an API key is required: Authorization: Bearer <key>", headers=_CHALLENGE)
    return token.strip()


def authenticated() -> keys.Principal | None:
    """The principal of the request's bearer key, or None when it is not a valid key (401 without a bearer). Looked
    up once per request (the rate limiter's bucket and the scope check share it), through the process's key cache."""
    if "bearer_principal" not in g:
        token = _bearer()
        svc = services()
        g.bearer_principal = svc.keys.authenticate(svc.db.begin, token)  # remembered for API_KEY_CACHE_S
    found: keys.Principal | None = g.bearer_principal
    return found


def current_principal() -> keys.Principal:
    principal: keys.Principal = g.principal
    return principal


def require(*scopes: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorate a view: authenticate the key and check it carries one of ``scopes`` (a view that serves several
    scopes narrows what it shows by ``current_principal().scopes``)."""
    if not scopes or set(scopes) - set(keys.SCOPES):
        raise ValueError(f"unknown scope in {scopes}")

    def decorate(view: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(view)
        def wrapped(*args: P.args, **kwargs: P.kwargs) -> R:
            principal = authenticated()
            if principal is None:
                raise ApiError(401, "Unauthorized", "the API key is not valid", headers=_CHALLENGE)
            if principal.scopes.isdisjoint(scopes):
                raise ApiError(403, "Forbidden", f"this key lacks the {_named(scopes)} scope")
            g.principal = principal
            return view(*args, **kwargs)

        wrapped.__scope__ = scopes  # type: ignore[attr-defined]  # read by the OpenAPI document
        return wrapped

    return decorate


def _named(scopes: tuple[str, ...]) -> str:
    return " or ".join(f"'{scope}'" for scope in scopes)
