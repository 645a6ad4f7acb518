"""The webhook delivery log and re-send (contract "Webhooks"): ``GET /v1/webhooks/deliveries?job_id=|style=`` and
``POST /v1/webhooks/deliveries/{id}/retry`` (the same ``webhook-id``, sent again now).

A key sees the deliveries its scopes cover: ``generate`` those of jobs, ``styles`` those of styles (both: all). The
list without a filter shows what the key covers; a filter (``job_id``, ``style``) or a re-send of an event the key's
scopes do not cover is a 403. Nothing of another client is visible (404).
"""

from __future__ import annotations

from collections.abc import Sequence

from flask import Blueprint, Flask, Response, jsonify
from sqlalchemy import ColumnElement, select
from sqlalchemy.orm import Session

from api.auth import current_principal, require
from api.body import query_args
from api.errors import ApiError, not_found
from api.openapi import Returns, operation
from api.pagination import newest_page
from api.services import services
from shared import tasks
from shared.models import Style, WebhookEvent
from shared.schemas import WebhookAttemptOut, WebhookDeliveryList, WebhookDeliveryOut, WebhookDeliveryQuery
from shared.webhooks import events

bp = Blueprint("webhooks", __name__, url_prefix="/v1/webhooks")
MAX_EVENT_ID = 40  # msg_ + 32 hex digits


JOBS, STYLES = "generate", "styles"  # the scope that covers the deliveries of jobs, of styles


def _need(scope: str) -> None:
    if scope not in current_principal().scopes:
        kind = "a job's" if scope == JOBS else "a style's"
        raise ApiError(403, "Forbidden", f"this key lacks the '{scope}' scope ({kind} webhook deliveries)")


def _covered() -> list[ColumnElement[bool]]:
    """The deliveries the key's scopes cover (style events are those with a style, every other one is a job's)."""
    scopes = current_principal().scopes
    if JOBS in scopes and STYLES in scopes:
        return []
    return [WebhookEvent.style_id.is_(None) if JOBS in scopes else WebhookEvent.style_id.is_not(None)]


def _out(session: Session, rows: Sequence[WebhookEvent]) -> list[WebhookDeliveryOut]:
    attempts = events.attempts_of(session, [row.id for row in rows])
    style_ids = {row.style_id for row in rows if row.style_id is not None}
    names: dict[str, str] = {}
    if style_ids:
        names = {row.id: row.name for row in session.execute(select(Style.id, Style.name)
                                                             .where(Style.id.in_(style_ids)))}
    return [
        WebhookDeliveryOut(
            id=row.id, type=row.type, url=row.url, status=row.state, job_id=row.job_id,
            style=names.get(row.style_id) if row.style_id else None, style_version=row.style_version,
            created_at=row.created_at, next_attempt_at=row.next_attempt_at, delivered_at=row.delivered_at,
            attempts=[WebhookAttemptOut(attempt=a.attempt, at=a.at, status_code=a.status_code,
                                        latency_ms=a.latency_ms, error=a.error) for a in attempts[row.id]],
        )
        for row in rows
    ]


@bp.get("/deliveries")
@require(JOBS, STYLES)
@operation(
    "List webhook deliveries and their attempts, newest first", tags=["webhooks"], query=WebhookDeliveryQuery,
    description="Each item is one event (one `webhook-id`) with every attempt: time, status code, latency, error. "
                "`job_id` (scope `generate`) or `style` (scope `styles`) narrows the list; without either, the "
                "client's recent deliveries that the key's scopes cover: `generate` sees those of jobs, `styles` "
                "those of styles.",
    responses={200: Returns("A page of deliveries.", WebhookDeliveryList)}, errors=(404,),
)
def list_deliveries() -> Response:
    args = query_args(WebhookDeliveryQuery)
    client_id = current_principal().client_id
    query = select(WebhookEvent).where(WebhookEvent.client_id == client_id, *_covered())
    with services().db.begin() as session:
        if args.job_id is not None:
            _need(JOBS)
            query = query.where(WebhookEvent.job_id == args.job_id)
        if args.style is not None:
            _need(STYLES)
            style_id = session.execute(
                select(Style.id).where(Style.client_id == client_id, Style.name == args.style)
            ).scalar_one_or_none()
            if style_id is None:
                raise not_found("style")
            query = query.where(WebhookEvent.style_id == style_id)
        page, next_cursor = newest_page(session, query, WebhookEvent, args.cursor, args.limit)
        items = _out(session, page)
    return jsonify(WebhookDeliveryList(items=items, next_cursor=next_cursor).model_dump(mode="json"))


@bp.post("/deliveries/<event_id>/retry")
@require(JOBS, STYLES)
@operation(
    "Send a webhook event again now (same webhook-id)", tags=["webhooks"],
    description="Whatever its state (delivered, stopped, failed or still retrying), the event is sent again at once, "
                "with the same `webhook-id` and body; a failure then continues the retry schedule where it was. "
                "A job's event needs the `generate` scope, a style's the `styles` scope.",
    responses={202: Returns("Queued for delivery now: the event.", WebhookDeliveryOut)}, errors=(404,),
)
def retry_delivery(event_id: str) -> tuple[Response, int]:
    svc = services()
    if len(event_id) > MAX_EVENT_ID or "\x00" in event_id:  # not an id we gave out (and no NUL for PostgreSQL)
        raise not_found("webhook delivery")
    with svc.db.begin() as session:
        event = session.execute(
            select(WebhookEvent).where(WebhookEvent.id == event_id,
                                       WebhookEvent.client_id == current_principal().client_id)
            .with_for_update()
        ).scalar_one_or_none()
        if event is None:
            raise not_found("webhook delivery")
        _need(JOBS if event.style_id is None else STYLES)
        events.resend(session, event_id, svc.settings.webhook_lease_s)
    if not svc.publisher.send(tasks.DELIVER_WEBHOOK, event_id, tasks.QUEUE_WEBHOOKS):
        with svc.db.begin() as session:
            events.release(session, [event_id])  # beat sends it within its interval
    with svc.db.begin() as session:
        (out,) = _out(session, [session.get_one(WebhookEvent, event_id)])
    return jsonify(out.model_dump(mode="json")), 202


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
