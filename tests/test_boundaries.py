"""The rooms and the arrows between them: cli -> api, worker, shared; api -> shared; worker -> shared; shared -> none
of ours; and no import cycles. ``make lint`` enforces them with import-linter (the contracts in pyproject.toml);
these tests prove the contracts bite, read the arrows from the code themselves, and look for cycles that
import-linter's sibling check does not see (a package and its own modules)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

from tests.helpers import ROOT, imports_in

ALLOWED = {"cli": {"api", "worker", "shared"}, "api": {"shared"}, "worker": {"shared"}, "shared": set()}
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"

SHARED_CONTRACT = "shared imports none of api, worker, cli"
API_CONTRACT = "api imports neither worker, cli nor the ML stack"
WORKER_CONTRACT = "worker imports neither api nor cli"
CYCLES_CONTRACT = "no import cycles between the modules of a package"


# --- import-linter, as `make lint` runs it ---------------------------------------------------------------------------
def test_make_lint_runs_the_import_contracts() -> None:
    planned = subprocess.run(["make", "-n", "lint"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert planned.returncode == 0, planned.stderr
    assert any(line.split()[0].endswith("/lint-imports") for line in planned.stdout.splitlines() if line.strip())


@pytest.fixture
def copy_of_the_project(tmp_path: Path) -> Path:
    """The four packages and pyproject.toml (the contracts), where a test may break them."""
    for package in ALLOWED:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def lint_imports(where: Path) -> subprocess.CompletedProcess[str]:
    """import-linter with the project's contracts, on the packages under ``where`` (it puts the cwd first)."""
    return subprocess.run([str(LINT_IMPORTS), "--no-logo", "--no-cache"], capture_output=True, text=True,
                          timeout=120, cwd=where)


def test_the_unchanged_packages_keep_every_contract(copy_of_the_project: Path) -> None:
    result = lint_imports(copy_of_the_project)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 4 kept, 0 broken." in result.stdout


@pytest.mark.parametrize(("module", "added", "contract"), [
    # An import inside a function counts as much as one at the top.
    ("shared/limits.py", "\n\ndef _late() -> None:\n    import api  # noqa: F401\n", SHARED_CONTRACT),
    ("shared/states.py", "\nfrom cli import main  # noqa: F401\n", SHARED_CONTRACT),
    ("api/views.py", "\nimport worker.node  # noqa: F401\n", API_CONTRACT),
    ("api/views.py", "\nimport torch  # noqa: F401\n", API_CONTRACT),
    ("worker/node.py", "\nfrom api import keys  # noqa: F401\n", WORKER_CONTRACT),
    ("shared/jobs.py", "\n\ndef _late() -> None:\n    from shared import cache  # noqa: F401\n", CYCLES_CONTRACT),
    ("worker/lifecycle.py", "\nfrom worker.celery_app import app  # noqa: F401\n", CYCLES_CONTRACT),
], ids=["shared-api-lazily", "shared-cli", "api-worker", "api-torch", "worker-api", "jobs-cache", "celery-app"])
def test_a_broken_arrow_fails_the_lint_naming_its_contract(copy_of_the_project: Path, module: str, added: str,
                                                          contract: str) -> None:
    with (copy_of_the_project / module).open("a") as source:
        source.write(added)
    result = lint_imports(copy_of_the_project)
    assert result.returncode != 0
    assert f"{contract} BROKEN" in result.stdout, result.stdout


# --- the arrows, read from the code ----------------------------------------------------------------------------------
def arrows_from(package: str) -> dict[str, list[str]]:
    """Our other packages that ``package`` imports, each with the places that do."""
    found: dict[str, list[str]] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        for name, line in imports_in(path):
            target = name.partition(".")[0]
            if target in ALLOWED and target != package:
                found.setdefault(target, []).append(f"{path.relative_to(ROOT)}:{line}")
    return found


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_a_package_imports_only_the_rooms_below_it(package: str) -> None:
    found = arrows_from(package)
    wrong = {target: places for target, places in found.items() if target not in ALLOWED[package]}
    assert not wrong, f"{package} must not import {sorted(wrong)}: {wrong}"


def test_the_reading_sees_imports_inside_functions() -> None:
    # The command line imports api and worker only inside its commands, so they are found only if those count.
    assert set(arrows_from("cli")) == {"api", "worker", "shared"}


# --- no cycles at all, a package's own __init__ included -------------------------------------------------------------
def strongly_connected(graph: grimp.ImportGraph) -> list[list[str]]:
    """The import cycles: strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            module, targets = work[-1]
            for target in targets:
                if target not in index:
                    index[target] = low[target] = len(index)
                    stack.append(target)
                    on_stack.add(target)
                    work.append((target, iter(sorted(graph.find_modules_directly_imported_by(target)))))
                    break
                if target in on_stack:
                    low[module] = min(low[module], index[target])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[module])
                if low[module] == index[module]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == module:
                            break
                    if len(component) > 1:
                        cycles.append(sorted(component))
    return cycles


def test_no_import_cycles_among_our_modules() -> None:
    graph = grimp.build_graph(*sorted(ALLOWED), cache_dir=None)
    assert strongly_connected(graph) == []


def test_the_cycle_search_finds_a_package_and_its_own_module() -> None:
    graph = grimp.ImportGraph()
    for module in ("pkg", "pkg.base", "pkg.local", "other"):
        graph.add_module(module)
    graph.add_import(importer="pkg", imported="pkg.local")
    graph.add_import(importer="pkg.local", imported="pkg")
    graph.add_import(importer="pkg.local", imported="pkg.base")
    graph.add_import(importer="other", imported="pkg")
    assert strongly_connected(graph) == [["pkg", "pkg.local"]]
