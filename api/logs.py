"""The request id: taken from a sane ``X-Request-ID`` header (a proxy's) or made up, set for the request's log
lines (``shared.logs``) and sent back in ``X-Request-ID``."""

from __future__ import annotations

import re
import uuid
from typing import Final

from flask import Flask, Response, g, request

from shared.logs import request_id_var

HEADER: Final = "X-Request-ID"
_SANE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def _begin() -> None:
    given = request.headers.get(HEADER, "")
    request_id = given if _SANE.match(given) else uuid.uuid4().hex
    g.request_id = request_id
    g.request_id_token = request_id_var.set(request_id)


def _end(response: Response) -> Response:
    request_id = g.get("request_id")
    if request_id:
        response.headers[HEADER] = request_id
    return response


def _teardown(_: BaseException | None) -> None:
    token = g.pop("request_id_token", None)
    if token is not None:
        request_id_var.reset(token)


def init_app(app: Flask) -> None:
    app.before_request(_begin)
    app.after_request(_end)
    app.teardown_request(_teardown)
