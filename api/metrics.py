"""``GET /metrics`` (scope ``metrics``, which ``ops`` includes): Prometheus text of every API process, plus the job
numbers read from PostgreSQL.

Requests are counted by route template (``/v1/illustrations/<job_id>``, never a concrete path, so labels hold no
ids), method and status, with their latency. Under gunicorn each worker process writes its samples to the
multiprocess folder that ``illustrations api`` set up (``shared.prometheus``), so any process answering a scrape
reports all of them; gunicorn's ``child_exit`` marks a dead worker. Queue depth, oldest queued age, jobs by state,
the relay's backlog and paused queues come from the database at scrape time (``api.ops_metrics``).
"""

from __future__ import annotations

import time
from typing import Final

from flask import Blueprint, Flask, Response, g, request
from prometheus_client import Counter, Histogram

from api.auth import require
from api.openapi import Returns, operation
from api.ops_metrics import DatabaseCollector
from api.services import services
from shared import cache, prometheus

REQUESTS = Counter("illustrations_http_requests", "HTTP requests answered, by route template, method and status.",
                   ["route", "method", "status"])
LATENCY = Histogram("illustrations_http_request_duration_seconds", "Time to answer an HTTP request.",
                    ["route", "method"],
                    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0))
# Names of the metrics this module exports (checked against the alert rules and dashboards).
NAMES: Final = ("illustrations_http_requests_total", "illustrations_http_request_duration_seconds", *cache.NAMES)
UNMATCHED: Final = "<unmatched>"

bp = Blueprint("metrics", __name__)


def _started() -> None:
    g.metrics_started = time.perf_counter()


def _finished(response: Response) -> Response:
    started = g.pop("metrics_started", None)
    if started is not None:
        route = request.url_rule.rule if request.url_rule is not None else UNMATCHED
        REQUESTS.labels(route, request.method, str(response.status_code)).inc()
        LATENCY.labels(route, request.method).observe(time.perf_counter() - started)
    return response


@bp.get("/metrics")
@require("metrics")
@operation(
    "Prometheus metrics", tags=["operations"],
    description="Prometheus text format: requests by route and status with latency (every API process), jobs by "
                "state, queue depth and oldest queued age, the relay's backlog, paused queues and clients (read from "
                "PostgreSQL at scrape time). Workers export their own (pipeline load time, GPU memory) on "
                "`ILLUSTRATIONS_WORKER_METRICS_PORT`.",
    responses={200: Returns("The metrics.", binary=("text/plain",))},
)
def metrics() -> Response:
    body = prometheus.render([DatabaseCollector(services().db)])
    return Response(body, mimetype="text/plain", headers={"Content-Type": prometheus.CONTENT_TYPE})


def init_app(app: Flask) -> None:
    app.before_request(_started)
    app.after_request(_finished)
    app.register_blueprint(bp)
