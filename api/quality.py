"""Quality numbers: ``GET /v1/metrics/quality?range=7d`` (scope ``metrics``, which ``ops`` includes), computed in the
database (``api.quality_numbers``)."""

from __future__ import annotations

from flask import Blueprint, Flask, Response, jsonify

from api import quality_numbers
from api.auth import require
from api.body import query_args
from api.errors import validation_error
from api.openapi import Returns, operation
from api.services import services
from shared import limits
from shared.errors import FieldCode
from shared.schemas import QualityOut, QualityQuery

bp = Blueprint("quality", __name__, url_prefix="/v1/metrics")


@bp.get("/quality")
@require("metrics")
@operation(
    "Quality numbers per model profile, A/B variant and quality", tags=["operations"], query=QualityQuery,
    description="Over every client, for jobs finished in the range: success rate, failures by code, p50/p95 of queue "
                "wait, time on the worker and inference (succeeded attempts), and the mean feedback rating.",
    responses={200: Returns("The numbers, one group per profile, variant and quality (final or draft).",
                            QualityOut)},
)
def get_quality() -> Response:
    args = query_args(QualityQuery)
    if quality_numbers.parse_range(args.range).days > limits.QUALITY_RANGE_MAX_DAYS:
        raise validation_error([("range", f"at most {limits.QUALITY_RANGE_MAX_DAYS} days", FieldCode.OUT_OF_RANGE)])
    with services().db.begin() as session:
        out = quality_numbers.quality(session, args.range)
    return jsonify(out.model_dump(mode="json"))


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
