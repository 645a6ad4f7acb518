"""Path parameters: every ``<int:...>`` of every route is bounded by ``limits.PATH_INTEGER_MAX``.

The app's ``int`` converter is replaced before any blueprint is registered, so no route (present or future) can
hand a view a number no INTEGER column holds: past the bound the URL matches no route and the answer is a 404
(problem+json), as for any id that does not exist, instead of a database error (SQLite cannot bind a number past
2**63 at all).
"""

from __future__ import annotations

from typing import Any

from flask import Flask
from werkzeug.routing import IntegerConverter, Map

from shared import limits


class BoundedInt(IntegerConverter):
    """Werkzeug's ``int`` converter (digits only, no sign), at most ``limits.PATH_INTEGER_MAX`` unless a route
    names a lower ``max``."""

    def __init__(self, map: Map, *args: Any, **kwargs: Any) -> None:
        kwargs["max"] = min(kwargs.get("max", limits.PATH_INTEGER_MAX), limits.PATH_INTEGER_MAX)
        super().__init__(map, *args, **kwargs)


def init_app(app: Flask) -> None:
    """Before the blueprints: rules take their converters when they are added to the map."""
    app.url_map.converters["int"] = BoundedInt
