"""Bare baselines the benchmarks compare the service with, side by side on the same machine and servers.

- ``app``: a Celery app with Celery's defaults (JSON) and one trivial task, ``bench.bare.started``, that returns the
  wall-clock time at which it started. Its broker (and result backend) is ``BENCH_BARE_BROKER_URL``: the same Redis
  the service uses. ``bench/latency.py`` runs its worker as ``celery -A bench.bare worker -Q bench.bare`` with the
  flags the project's workers use (prefork, concurrency 1, ``--without-mingle --without-gossip``). With
  ``BENCH_BARE_CONFIG=project`` the app takes the project's Celery settings instead (``shared.queue.celery_config``:
  acks late, no prefetch, task events on, ...), results aside: that worker tells what our Celery configuration
  costs apart from our code.
- ``python -m bench.bare flask --bind HOST:PORT``: a bare Flask app with one JSON endpoint
  (``POST /v1/illustrations``: parse the body, answer 202 with an id) served by gunicorn with the options the API is
  served with (``cli.serve.gunicorn_options``, settings from the same ``ILLUSTRATIONS_*`` environment).
"""

from __future__ import annotations

import argparse
import os
import time
import uuid
from typing import Any

from celery import Celery

QUEUE = "bench.bare"

BROKER = os.environ.get("BENCH_BARE_BROKER_URL", "redis://127.0.0.1:6379/15")

app = Celery("bench_bare", broker=BROKER, backend=BROKER)
if os.environ.get("BENCH_BARE_CONFIG") == "project":
    from shared.queue import celery_config
    from shared.settings import Settings

    app.conf.update({**celery_config(Settings()), "beat_schedule": {}})
app.conf.update(task_default_queue=QUEUE, task_serializer="json", result_serializer="json", accept_content=["json"],
                worker_hijack_root_logger=False, broker_connection_retry_on_startup=True, task_ignore_result=False,
                broker_url=BROKER, result_backend=BROKER)


@app.task(name="bench.bare.started")
def started() -> float:
    """The time this task began (the publisher subtracts the time it published)."""
    return time.time()


def flask_app() -> Any:
    from flask import Flask, jsonify, request

    bare = Flask("bench_bare")

    @bare.post("/v1/illustrations")
    def submit() -> Any:
        body = request.get_json()
        if not isinstance(body, dict):
            return jsonify({"title": "the body must be a JSON object"}), 400
        return jsonify({"id": uuid.uuid4().hex, "status": "queued"}), 202

    @bare.get("/healthz")
    def healthz() -> Any:
        return jsonify({"status": "ok"})

    return bare


def serve_flask(bind: str) -> None:
    from gunicorn.app.base import BaseApplication

    from cli.serve import gunicorn_options
    from shared.settings import Settings

    options = gunicorn_options(Settings(), bind)
    options.pop("child_exit")  # the API's hook marks dead workers' metric files; the bare app has none

    class Server(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            for key, value in options.items():
                self.cfg.set(key, value)

        def load(self) -> Any:
            return flask_app()

    Server().run()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("flask",))
    parser.add_argument("--bind", required=True)
    serve_flask(parser.parse_args().bind)
