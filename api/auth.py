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


def current_principal() -> keys.Principal:
    principal: keys.Principal = g.principal
    return principal


def require(scope: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorate a view: authenticate the key and check it carries ``scope``."""
    if scope not in keys.SCOPES:
        raise ValueError(f"unknown scope {scope}")

    def decorate(view: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(view)
        def wrapped(*args: P.args, **kwargs: P.kwargs) -> R:
            token = _bearer()
            svc = services()
            principal = svc.keys.authenticate(svc.db.begin, token)  # remembered for ILLUSTRATIONS_API_KEY_CACHE_S
            if principal is None:
                raise ApiError(401, "Unauthorized", "the API key is not valid", headers=_CHALLENGE)
            if scope not in principal.scopes:
                raise ApiError(403, "Forbidden", f"this key lacks the '{scope}' scope")
            g.principal = principal
            return view(*args, **kwargs)

        wrapped.__scope__ = scope  # type: ignore[attr-defined]  # read by the OpenAPI document
        return wrapped

    return decorate
