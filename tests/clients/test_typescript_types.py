"""The TypeScript client's types: generated from the live ``/openapi.json`` with openapi-typescript's default options,
the same as the committed ``clients/typescript/src/schema.d.ts`` (``make client`` regenerates it), and what an
integrator writes against them compiles under ``tsc --strict`` (``clients/typescript/typecheck/contract.ts``: the
minimal request, ``params: {seed}``, the legacy request, a problem body, every webhook event; its
``@ts-expect-error`` lines prove the types refuse what the API refuses)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

from flask.testing import FlaskClient

from api import openapi_document
from shared.schemas import WEBHOOK_EVENTS
from tests.helpers import node_tool, typescript_client


def test_types_from_the_live_document_compile_and_match_the_committed_ones(client: FlaskClient,
                                                                          tmp_path: Path) -> None:
    live: Any = client.get("/openapi.json").json
    assert live == openapi_document()  # what `illustrations openapi` writes is what the API serves
    assert set(live["webhooks"]) == set(WEBHOOK_EVENTS)
    package = typescript_client()
    (tmp_path / "openapi.json").write_text(json.dumps(live))
    node_tool("openapi-typescript", tmp_path / "openapi.json", "-o", tmp_path / "schema.d.ts")  # default options
    generated = (tmp_path / "schema.d.ts").read_text()
    assert generated == (package / "src" / "schema.d.ts").read_text(), (
        "clients/typescript/src/schema.d.ts is stale: run `make client` and commit it")

    shutil.copy(package / "typecheck" / "contract.ts", tmp_path / "contract.ts")
    node_tool("tsc", "--strict", "--noEmit", "--target", "ES2022", "--module", "NodeNext", "--moduleResolution",
              "NodeNext", tmp_path / "contract.ts")
    # The client itself compiles against them (strict, as its tsconfig says).
    node_tool("tsc", "-p", package / "tsconfig.json", "--noEmit")


def test_a_wrong_request_does_not_compile(tmp_path: Path) -> None:
    """The check above can fail: the same compiler refuses a request without its prompt."""
    package = typescript_client()
    shutil.copy(package / "src" / "schema.d.ts", tmp_path / "schema.d.ts")
    (tmp_path / "wrong.ts").write_text(
        'import type { paths } from "./schema.js";\n'
        'type R = paths["/v1/illustrations"]["post"]["requestBody"]["content"]["application/json"];\n'
        'export const r: R = { user_id: "u" };\n')
    tool = package / "node_modules" / ".bin" / "tsc"
    result = subprocess.run([str(tool), "--strict", "--noEmit", "--module", "NodeNext", "--moduleResolution",
                             "NodeNext", str(tmp_path / "wrong.ts")], capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "prompt" in result.stdout and "TS2741" in result.stdout, result.stdout
