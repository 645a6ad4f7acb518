"""Styles: train a new version of a named LoRA style from captioned pictures, read styles, cancel a training.

``POST /v1/styles`` takes multipart (``name``, repeated ``image`` files and ``caption`` fields in the same order,
optional ``params`` as a JSON string, ``user_id``) or JSON (``name``, ``images`` by URL, subject or illustration,
``captions``, ``params``, ``user_id``); either way the whole request is checked first (422 naming each problem:
too few or too many pictures, a caption count that differs, an unreadable upload, an unknown subject), then the
version is written ``queued`` with its training set, committed, and its job id published (outbox: the relay sends
what fails) to the preparation step (CPU worker), which copies the pictures named by URL, subject or illustration
into the set and normalises every picture before the training queue sees the version. Uploads are checked from their
headers and stored here as sent: the API decodes no pixel (``api.training_sets``).
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Any

from flask import Blueprint, Flask, Response, jsonify, request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import func, select
from sqlalchemy.orm import Session, joinedload

from api import training_sets
from api.auth import current_principal, require
from api.body import json_body, query_args
from api.errors import ApiError, FieldError, fields_of, not_found, validation_error
from api.openapi import Returns, operation
from api.pagination import newest_page
from api.services import Services, services
from api.submit import check_webhook_url, refuse_if_deleting
from shared import limits, tasks, training
from shared.errors import CancelReason
from shared.models import Style, StyleVersion, TrainingImage
from shared.schemas import (
    Caption,
    HttpUrl,
    StyleCreated,
    StyleList,
    StyleListQuery,
    StyleName,
    StyleOut,
    StyleTrainingRequest,
    StyleUpload,
    StyleVersionOut,
    TrainingParams,
    UserId,
)
from shared.views import style_version_out

bp = Blueprint("styles", __name__, url_prefix="/v1/styles")

MULTIPART = ("multipart/form-data", "application/x-www-form-urlencoded")


class StyleForm(BaseModel):
    """The multipart fields besides the files (``caption`` repeats)."""

    model_config = ConfigDict(extra="forbid")

    name: StyleName
    caption: list[Caption] = Field(default_factory=list, max_length=limits.TRAINING_IMAGES_MAX)
    params: str | None = None
    webhook_url: HttpUrl | None = None
    user_id: UserId | None = None


def _single(form: dict[str, list[str]], errors: list[FieldError]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for key, items in form.items():
        if key == "caption":
            values[key] = items
        elif len(items) > 1:
            errors.append((key, "give this field once"))
        else:
            values[key] = items[0]
    return values


def _from_form(svc: Services) -> tuple[StyleForm, TrainingParams, list[training_sets.Picture]]:
    errors: list[FieldError] = []
    fields = _single(request.form.to_dict(flat=False), errors)
    if errors:
        raise validation_error(errors)
    try:
        form = StyleForm.model_validate(fields)
    except ValidationError as exc:
        raise validation_error(fields_of(exc)) from None
    files = request.files.getlist("image")
    unknown = sorted(set(request.files) - {"image"})
    if unknown:
        raise validation_error([(name, "unknown file field; send the pictures as `image`") for name in unknown])
    params = TrainingParams()
    if form.params is not None:
        try:
            params = TrainingParams.model_validate_json(form.params)
        except ValidationError as exc:
            if any(item["type"] == "json_invalid" for item in exc.errors()):
                errors.append(("params", "must be a JSON object"))
            else:
                errors += fields_of(exc, "params.")
    if not limits.TRAINING_IMAGES_MIN <= len(files) <= limits.TRAINING_IMAGES_MAX:
        errors.append(("image", f"give {limits.TRAINING_IMAGES_MIN} to {limits.TRAINING_IMAGES_MAX} pictures, "
                                f"got {len(files)}"))
    if len(form.caption) != len(files):
        errors.append(("caption", f"give one caption per image: {len(files)} images, {len(form.caption)} captions"))
    check_webhook_url(form.webhook_url, "webhook_url", svc, errors)
    if errors:
        raise validation_error(errors)
    pictures = training_sets.uploads(files, form.caption, form.user_id, errors)
    if errors:
        raise validation_error(errors, "some pictures cannot be used")
    return form, params, pictures


def _params(params: TrainingParams) -> dict[str, Any]:
    """The params a version records: every default filled in, the seed drawn when absent."""
    values = params.model_dump()
    values["alpha"] = params.alpha if params.alpha is not None else params.rank
    if params.seed is None:
        values["seed"] = secrets.randbelow(limits.SEED_MAX + 1)
    return values


def _create(session: Session, svc: Services, name: str, params: TrainingParams,
            pictures: Sequence[training_sets.Picture], user_id: str | None, webhook_url: str | None) -> StyleVersion:
    client_id = current_principal().client_id
    users = {p.user_id for p in pictures if p.user_id is not None} | ({user_id} if user_id else set())
    refuse_if_deleting(session, client_id, users)
    row = training.new_training(session, client_id, name, _params(params), base_profile=svc.settings.model_profile,
                                queue=tasks.QUEUE_PREPARE, webhook_url=webhook_url)
    training_sets.add_pictures(session, svc.storage, row.style_id, row.version, list(pictures))
    return row


@bp.post("")
@require("styles")
@operation(
    "Train a new version of a style", tags=["styles"],
    body={"multipart/form-data": StyleUpload, "application/json": StyleTrainingRequest},
    description="The version is queued; it becomes the style's active version when it is ready (a failed or "
                "canceled one leaves the active version as it was). `webhook_url` (else the client's default) "
                "gets `style.ready` or `style.failed` (Standard Webhooks); a literally private address is a 422.",
    responses={202: Returns("Accepted: the version, queued.", StyleCreated, headers=("Location",))},
    errors=(409,),
)
def create_style() -> tuple[Response, int, dict[str, str]]:
    svc = services()
    if request.mimetype == "application/json":
        body = json_body(StyleTrainingRequest)
        name, params, user_id = body.name, body.params, body.user_id
        errors: list[FieldError] = []
        check_webhook_url(body.webhook_url, "webhook_url", svc, errors)
        with svc.db.begin() as session:
            pictures = training_sets.references(session, current_principal().client_id, body.images, body.captions,
                                                body.user_id, svc.settings.fetch_allowlist, errors)
            if errors:
                raise validation_error(errors)
            row = _create(session, svc, name, params, pictures, user_id, body.webhook_url)
            created = _created(name, row)
    elif request.mimetype in MULTIPART:
        form, params, pictures = _from_form(svc)
        with svc.db.begin() as session:
            row = _create(session, svc, form.name, params, pictures, form.user_id, form.webhook_url)
            created = _created(form.name, row)
    else:
        raise ApiError(415, "Unsupported Media Type", "upload the pictures as multipart/form-data, or send JSON")
    publish(svc, created.job_id, tasks.QUEUE_PREPARE)
    return jsonify(created.model_dump(mode="json")), 202, {"Location": created.links["self"]}


def _created(name: str, row: StyleVersion) -> StyleCreated:
    assert row.job_id is not None
    return StyleCreated(name=name, version=row.version, status="queued", job_id=row.job_id,
                        links={"self": style_path(name)})


def publish(svc: Services, job_id: str, queue: str) -> None:
    """After the commit: send the job id to its queue; what fails waits for the relay."""
    if svc.publisher.send(tasks.STYLE_TASK_BY_QUEUE[queue], job_id, queue):
        with svc.db.begin() as session:
            training.mark_published(session, job_id)


# --- Reading -------------------------------------------------------------------------------------------------------
def style_path(name: str) -> str:
    return f"/v1/styles/{name}"


def _version_out(row: StyleVersion, images: int) -> StyleVersionOut:
    return style_version_out(row, images)


def styles_out(session: Session, rows: Sequence[Style]) -> list[StyleOut]:
    ids = [style.id for style in rows]
    counts = {(style_id, version): count for style_id, version, count in session.execute(
        select(TrainingImage.style_id, TrainingImage.version, func.count())
        .where(TrainingImage.style_id.in_(ids)).group_by(TrainingImage.style_id, TrainingImage.version)
    )} if ids else {}
    return [
        StyleOut(name=style.name, active_version=style.active_version, created_at=style.created_at,
                 versions=[_version_out(v, counts.get((style.id, v.version), 0)) for v in style.versions],
                 links={"self": style_path(style.name)})
        for style in rows
    ]


def _owned(session: Session, name: str) -> Style:
    """The client's style ``name`` with its versions, read in one statement: under READ COMMITTED a second statement
    could see a version made ready (and active) after the style row was read, and answer a ready version that is not
    the active one."""
    style = session.execute(
        select(Style).options(joinedload(Style.versions))
        .where(Style.client_id == current_principal().client_id, Style.name == name)
    ).unique().scalar_one_or_none()
    if style is None:
        raise not_found("style")
    return style


@bp.get("")
@require("styles")
@operation("List styles, newest first", tags=["styles"], query=StyleListQuery,
           responses={200: Returns("A page of styles with their versions.", StyleList)})
def list_styles() -> Response:
    args = query_args(StyleListQuery)
    query = select(Style).where(Style.client_id == current_principal().client_id)
    with services().db.begin() as session:
        page, next_cursor = newest_page(session, query, Style, args.cursor, args.limit)
        items = styles_out(session, page)
    return jsonify(StyleList(items=items, next_cursor=next_cursor).model_dump(mode="json"))


@bp.get("/<name>")
@require("styles")
@operation("Read a style and its versions", tags=["styles"], responses={200: Returns("The style.", StyleOut)},
           errors=(404,))
def get_style(name: str) -> Response:
    with services().db.begin() as session:
        (out,) = styles_out(session, [_owned(session, name)])
    return jsonify(out.model_dump(mode="json"))


@bp.post("/<name>/versions/<int:version>/cancel")
@require("styles")
@operation(
    "Cancel the training of a version", tags=["styles"],
    description="A queued version is canceled at once (200). A running training stops at its next step (202; it "
                "then ends `canceled`). A finished or imported version is unchanged (200). The active version stays "
                "as it was.",
    responses={200: Returns("Canceled now, or already finished (unchanged): the style.", StyleOut),
               202: Returns("Running: it stops at its next step. The style.", StyleOut)},
    errors=(404,),
)
def cancel_version(name: str, version: int) -> tuple[Response, int]:
    with services().db.begin() as session:
        style = _owned(session, name)
        if session.get(StyleVersion, (style.id, version)) is None:
            raise not_found("version")
        outcome = training.cancel(session, style.id, version, CancelReason.CANCELED_BY_CLIENT)
    with services().db.begin() as session:
        (out,) = styles_out(session, [_owned(session, name)])
    return jsonify(out.model_dump(mode="json")), 202 if outcome == "flagged" else 200


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)

