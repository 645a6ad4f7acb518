"""The suite's own layout: what several test modules share lives in ``tests/helpers.py`` and the conftests, and no
module of the suite imports a test module (or a conftest, which pytest loads itself). Read from the code with ast,
so an import inside a function or a relative one counts too."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import ROOT, imports_in


def is_test_module(name: str) -> bool:
    """Whether the dotted ``name`` is (or is inside) a test module or a conftest of the suite."""
    package, *rest = name.split(".")
    return package == "tests" and any(part.startswith("test_") or part == "conftest" for part in rest)


def imports_of_test_modules(root: Path) -> list[str]:
    """Each place under ``root/tests`` that imports a test module or a conftest: ``path:line imports name``."""
    return [f"{path.relative_to(root)}:{line} imports {name}"
            for path in sorted((root / "tests").rglob("*.py"))
            for name, line in imports_in(path, root)
            if is_test_module(name)]


def test_no_module_of_the_suite_imports_a_test_module() -> None:
    offenders = imports_of_test_modules(ROOT)
    assert offenders == [], "move what is shared to tests/helpers.py or a conftest:\n" + "\n".join(offenders)


@pytest.fixture
def suite(tmp_path: Path) -> Path:
    """A small suite under ``tmp_path``: tests/api/test_b.py with a helper, tests/helpers.py, an empty test_a.py."""
    for package in ("tests", "tests/api"):
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "tests" / "conftest.py").write_text("def make_key() -> str:\n    return 'k'\n")
    (tmp_path / "tests" / "helpers.py").write_text("def helper() -> int:\n    return 1\n")
    (tmp_path / "tests" / "api" / "test_b.py").write_text("def helper() -> int:\n    return 1\n")
    (tmp_path / "tests" / "api" / "test_a.py").write_text("")
    return tmp_path


@pytest.mark.parametrize(("source", "line", "name"), [
    ("from tests.api.test_b import helper\n", 1, "tests.api.test_b.helper"),
    ("import tests.api.test_b\n", 1, "tests.api.test_b"),
    ("from tests.api import test_b\n", 1, "tests.api.test_b"),
    ("from .test_b import helper\n", 1, "tests.api.test_b.helper"),
    ("from . import test_b\n", 1, "tests.api.test_b"),
    ("\n\ndef test_x() -> None:\n    from tests.api.test_b import helper\n", 4, "tests.api.test_b.helper"),
    ("from tests.conftest import make_key\n", 1, "tests.conftest.make_key"),
    ("from ..conftest import make_key\n", 1, "tests.conftest.make_key"),
], ids=["from-module", "import", "from-package", "relative", "relative-package", "in-a-function", "conftest",
        "relative-conftest"])
def test_an_import_of_a_test_module_is_named_with_its_place(suite: Path, source: str, line: int, name: str) -> None:
    (suite / "tests" / "api" / "test_a.py").write_text(source)
    assert imports_of_test_modules(suite) == [f"tests/api/test_a.py:{line} imports {name}"]


def test_a_helper_module_may_be_imported(suite: Path) -> None:
    (suite / "tests" / "api" / "test_a.py").write_text("from tests.helpers import helper\nfrom tests import helpers\n")
    assert imports_of_test_modules(suite) == []
