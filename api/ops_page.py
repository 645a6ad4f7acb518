"""``GET /ops``: the operators' gallery, server-rendered (Jinja, no front-end build), HTTP Basic with an ``ops`` key
as the password (a browser cannot send a bearer header; the user name is not checked).

Recent jobs of every client, newest first, with a thumbnail, state, queue, attempts, timings, the failure code,
the A/B variant, the quality (final or draft) and the user's feedback; filters by state, client, failure code,
variant and quality, and a cursor for the next page. No prompt or memoir text is shown. Thumbnails come from
``/ops/images/<job id>/<n>`` (same auth): a redirect to a presigned URL on S3, or the file from a local store.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any, Final, Literal

from flask import Blueprint, Flask, Response, redirect, render_template, request, send_file
from pydantic import Field, model_validator
from sqlalchemy import func, select
from werkzeug.wrappers import Response as WerkzeugResponse

from api import keys
from api.body import query_args
from api.errors import ApiError, not_found
from api.openapi import Returns, operation
from api.pagination import after_cursor, make_cursor
from api.services import services
from shared import limits
from shared.models import Client, Feedback, Job, JobImage
from shared.schemas import Cursor, JobState, Query
from shared.stored_request import RequestOutline

REALM: Final = 'Basic realm="illustrations ops", charset="UTF-8"'
# The page runs no script; images and styles come from this origin (S3 thumbnails: the presigned redirect).
CSP: Final = "default-src 'none'; img-src 'self' https: http:; style-src 'unsafe-inline'; form-action 'self'"

bp = Blueprint("ops_page", __name__, template_folder="templates")


class OpsPageQuery(Query):
    status: JobState | None = None
    client: str | None = Field(None, max_length=100, description="A client's name.")
    code: str | None = Field(None, max_length=32, pattern=r"^[a-z_]+$", description="An error code.")
    variant: str | None = Field(None, max_length=16, pattern=r"^[A-Za-z0-9._-]+$")
    quality: Literal["final", "draft"] | None = None
    cursor: Cursor | None = Field(None, description="The next page's cursor.")

    @model_validator(mode="before")
    @classmethod
    def _blank_is_absent(cls, data: Any) -> Any:
        """The page's form sends every field; an empty one means "any"."""
        if isinstance(data, dict):
            return {name: value for name, value in data.items() if value != ""}
        return data


def _authenticate() -> None:
    """HTTP Basic: the password is an API key with the ``ops`` scope (401 with a challenge otherwise)."""
    header = request.headers.get("Authorization", "")
    scheme, _, encoded = header.partition(" ")
    password = None
    if scheme.lower() == "basic":
        try:
            _, _, password = base64.b64decode(encoded.strip(), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            password = None
    if not password:
        raise ApiError(401, "Unauthorized", "sign in with an ops API key as the password",
                       headers={"WWW-Authenticate": REALM})
    with services().db.begin() as session:
        principal = keys.authenticate(session, password)
        if principal is not None:
            keys.touch(session, principal.key_id)
    if principal is None:
        raise ApiError(401, "Unauthorized", "the API key is not valid", headers={"WWW-Authenticate": REALM})
    if "ops" not in principal.scopes:
        raise ApiError(403, "Forbidden", "this key lacks the 'ops' scope")


def _rows(args: OpsPageQuery, limit: int) -> tuple[list[dict[str, Any]], str | None]:
    query = (
        select(Job, Client.name, Feedback.rating, Feedback.comment)
        .join(Client, Client.id == Job.client_id)
        .outerjoin(Feedback, Feedback.job_id == Job.id)
    )
    if args.status is not None:
        query = query.where(Job.status == args.status)
    if args.client is not None:
        query = query.where(Client.name == args.client)
    if args.code is not None:
        query = query.where(Job.error_code == args.code)
    if args.variant is not None:
        query = query.where(Job.request["variant"].as_string() == args.variant)
    if args.quality is not None:  # a row from before qualities is final
        quality = func.coalesce(Job.request[("params", "quality")].as_string(), limits.DEFAULT_QUALITY)
        query = query.where(quality == args.quality)
    query = query.where(*after_cursor(Job.created_at, Job.id, args.cursor))
    with services().db.begin() as session:
        found = session.execute(query.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)).all()
        rows = [{
            "id": job.id, "client": client, "user_id": job.user_id, "status": job.status, "queue": job.queue,
            "attempts": job.attempt, "created_at": job.created_at, "timings": job.timings or {},
            "error_code": job.error_code, "variant": RequestOutline.model_validate(job.request).variant_or_control,
            "profile": (job.model or {}).get("profile"), "images": [image.index for image in job.images],
            "rating": rating, "comment": comment, "cached": job.cached, "quality": _quality(job),
        } for job, client, rating, comment in found[:limit]]
    more = len(found) > limit
    cursor = make_cursor(found[limit - 1][0].created_at, found[limit - 1][0].id) if more else None
    return rows, cursor


def _quality(job: Job) -> str:
    """final or draft, as the request asked (any row reads: a malformed one shows as final)."""
    params = job.request.get("params") if isinstance(job.request, dict) else None
    quality = params.get("quality") if isinstance(params, dict) else None
    return quality if quality in limits.QUALITIES else limits.DEFAULT_QUALITY


@bp.get("/ops")
@operation(
    "The operators' gallery (HTML)", tags=["operations"], query=OpsPageQuery,
    description="Recent jobs with thumbnails, states, timings, failure codes, variants, qualities and feedback. "
                "HTTP Basic: the password is an API key with the `ops` scope.",
    responses={200: Returns("The page.", binary=("text/html",))}, errors=(401, 403),
)
def ops_page() -> Response:
    _authenticate()
    args = query_args(OpsPageQuery)
    rows, cursor = _rows(args, services().settings.ops_page_size)
    filters = args.model_dump(exclude={"cursor"}, exclude_none=True)
    page = render_template("ops.html", rows=rows, filters=filters, cursor=cursor,
                           states=["queued", "running", "succeeded", "failed", "canceled"],
                           qualities=limits.QUALITIES)
    return Response(page, mimetype="text/html", headers={"Content-Security-Policy": CSP, "Cache-Control": "no-store"})


@bp.get("/ops/images/<job_id>/<int:index>")
@operation("A thumbnail of the operators' gallery", tags=["operations"],
           responses={200: Returns("The image (local store).", binary=("image/png", "image/jpeg", "image/webp")),
                      302: Returns("A presigned URL of the image (S3).", headers=("Location",))},
           errors=(401, 403, 404))
def ops_image(job_id: str, index: int) -> WerkzeugResponse:
    _authenticate()
    svc = services()
    with svc.db.begin() as session:
        image = session.execute(
            select(JobImage).where(JobImage.job_id == job_id, JobImage.index == index)
        ).scalar_one_or_none()
    if image is None:
        raise not_found("image")
    url = svc.storage.presigned_url(image.storage_key)
    if url is not None:
        return redirect(url, code=302)
    path = svc.storage.local_path(image.storage_key)
    if path is None or not path.is_file():
        raise not_found("image")
    return send_file(path, mimetype=image.content_type, max_age=300, etag=image.sha256)


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
