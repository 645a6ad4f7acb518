"""Integer path parameters are bounded on every route: a number no row can hold is a 404, never a database error.

The routes are found in the app's URL map (a new route with an integer parameter is tested without editing this
file, as long as its other parameters are named below), on PostgreSQL and on SQLite (where a number past 2**63
cannot even be bound: it was a 500).
"""

from __future__ import annotations

import base64
import io
import re
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask

from shared import limits
from shared.settings import Settings
from tests.helpers import make_key

INT_PARAM = re.compile(r"<int(?:\([^)]*\))?:(?P<name>\w+)>")
OTHER_PARAM = re.compile(r"<(?:(?!int)\w+(?:\([^)]*\))?:)?(?P<name>\w+)>")
HUGE = ("99999999999999999999", str(2**63), str(limits.PATH_INTEGER_MAX + 1))


@pytest.fixture(params=["postgresql", "sqlite"])
def any_app(request: pytest.FixtureRequest) -> Iterator[Flask]:
    from api import create_app

    settings: Settings = request.getfixturevalue("settings" if request.param == "postgresql" else "sqlite_settings")
    app = create_app(settings.model_copy(update={"rate_limit": ""}))
    yield app
    app.extensions["illustrations"].waiter.close()
    app.extensions["illustrations"].db.engine.dispose()


def int_routes(app: Flask) -> list[tuple[str, str]]:
    return sorted((rule.rule, method) for rule in app.url_map.iter_rules() if INT_PARAM.search(rule.rule)
                  for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}))


def test_every_integer_path_parameter_out_of_range_is_404(any_app: Flask) -> None:
    client = any_app.test_client()
    key = make_key(any_app.extensions["illustrations"].db, scopes=("generate", "styles", "ops"))
    bearer = {"Authorization": f"Bearer {key}"}
    basic = {"Authorization": "Basic " + base64.b64encode(f"ops:{key}".encode()).decode()}
    job: Any = client.post("/v1/illustrations", headers=bearer,
                           json={"user_id": "u-1", "prompt": "a lighthouse", "params": {"width": 64, "height": 64}})
    assert job.status_code == 202, job.json
    from PIL import Image

    pictures = []
    for index in range(4):
        buffer = io.BytesIO()
        Image.new("RGB", (32, 32), ("red", "green", "blue", "white")[index]).save(buffer, format="PNG")
        pictures.append((io.BytesIO(buffer.getvalue()), f"{index}.png"))
    style = client.post("/v1/styles", headers=bearer, data={"name": "ink", "image": pictures,
                                                            "caption": ["a", "b", "c", "d"]})
    assert style.status_code == 202, style.json
    known = {"job_id": job.json["id"], "name": "ink"}

    routes = int_routes(any_app)
    assert routes, "no route with an integer parameter found: the pattern above is stale"
    for rule, method in routes:
        others = [m["name"] for m in OTHER_PARAM.finditer(INT_PARAM.sub("", rule))]
        assert set(others) <= set(known), f"{rule}: name a value for {set(others) - set(known)} in this test"
        for huge in HUGE:
            path = INT_PARAM.sub(huge, rule)
            for name, value in known.items():
                path = path.replace(f"<{name}>", value)
            headers = basic if rule.startswith("/ops") else bearer
            response = client.open(path, method=method, headers=headers)
            assert response.status_code == 404, (method, path, response.status_code, response.data[:300])
            assert response.mimetype == "application/problem+json", (method, path)


def test_the_largest_integer_still_reaches_the_route(any_app: Flask) -> None:
    """The bound is on the number, not the route: the largest allowed one is looked up (and not found)."""
    client = any_app.test_client()
    bearer = {"Authorization": f"Bearer {make_key(any_app.extensions['illustrations'].db)}"}
    job: Any = client.post("/v1/illustrations", headers=bearer,
                           json={"user_id": "u-1", "prompt": "a lighthouse", "params": {"width": 64, "height": 64}})
    response = client.get(f"/v1/illustrations/{job.json['id']}/images/{limits.PATH_INTEGER_MAX}", headers=bearer)
    assert response.status_code == 404
    assert response.json["detail"] == "no such image"  # type: ignore[index]  # the view answered, not the router


def test_the_openapi_document_publishes_the_bound(any_app: Flask) -> None:
    document: Any = any_app.test_client().get("/openapi.json").json
    parameter = next(p for p in document["paths"]["/v1/illustrations/{job_id}/images/{index}"]["get"]["parameters"]
                     if p["name"] == "index")
    assert parameter["schema"] == {"type": "integer", "minimum": 0, "maximum": limits.PATH_INTEGER_MAX}
