"""One dependency set from CI to the images: requirements/*.txt (``make lock``) against pyproject.toml, torch, Python,
the venv the suite runs in, and the Dockerfiles. Offline: the locks and the installed distributions' metadata."""

from __future__ import annotations

import platform
import re
from importlib import metadata

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from tests.helpers import (
    LOCKS,
    PROJECT,
    ROOT,
    canonical,
    installed_requirement_files,
    pip_installs,
    pyproject_requirements,
    read_lock,
    torch_pin,
)

# The Python the locks are compiled for (`make lock`: --python-version 3.11) and the images run (python:3.11-slim).
PYTHON = "3.11"
# Packages of torch's CUDA build: installed with torch in Dockerfile.worker, never from a lock.
CUDA_PARTS = re.compile(r"^(torch|triton|nvidia-.*|cuda-.*|pytorch-triton.*)$")
ENVIRONMENT = {**default_environment(), "python_version": PYTHON, "sys_platform": "linux",
               "platform_system": "Linux", "platform_machine": "x86_64"}


def applies(requirement: Requirement, extras: tuple[str, ...] = ("",)) -> bool:
    """The requirement holds on the images' platform (for one of ``extras``; "" stands for no extra)."""
    marker = requirement.marker
    return marker is None or any(marker.evaluate({**ENVIRONMENT, "extra": extra}) for extra in extras)


@pytest.mark.parametrize("lock", sorted(LOCKS))
def test_a_lock_pins_exactly_what_pyproject_declares(lock: str) -> None:
    """Every requirement of its extras is locked at a version it accepts; every package the lock says pyproject.toml
    asked for is declared there (nothing stale left behind)."""
    declared = {canonical(r.name): r for r in pyproject_requirements(LOCKS[lock]) if applies(r)}
    locked = read_lock(lock)
    for name, requirement in declared.items():
        if name == "torch":
            continue  # pinned in requirements/torch.txt, left out of the locks
        assert name in locked, f"{name} ({requirement}) is in pyproject.toml but not in requirements/{lock}.txt"
        assert requirement.specifier.contains(locked[name].version, prereleases=True), (lock, str(requirement),
                                                                                         locked[name].version)
    top_level = {name for name, entry in locked.items() if entry.declared}
    assert top_level == set(declared) - {"torch"}, f"run make lock: requirements/{lock}.txt is stale"


@pytest.mark.parametrize("lock", sorted(LOCKS))
def test_every_locked_file_is_checked_by_hash(lock: str) -> None:
    for name, entry in read_lock(lock).items():
        assert entry.hashes, name
        assert all(h.startswith("sha256:") and len(h) == 7 + 64 for h in entry.hashes), name


@pytest.mark.parametrize("lock", sorted(LOCKS))
def test_torch_and_its_cuda_parts_are_left_out_of_the_locks(lock: str) -> None:
    assert not [name for name in read_lock(lock) if CUDA_PARTS.match(name)]


def test_the_api_lock_has_no_ml_stack() -> None:
    heavy = {"torch", "diffusers", "transformers", "accelerate", "peft", "safetensors"} & set(read_lock("api"))
    assert not heavy


@pytest.mark.parametrize("lock", ["api", "dev"])
def test_every_lock_has_the_worker_locks_versions(lock: str) -> None:
    """api.txt and dev.txt are compiled with worker.txt as constraints: a package shared with the worker image has
    one version everywhere, so the suite (dev.txt) tests what each image ships."""
    worker, other = read_lock("worker"), read_lock(lock)
    different = {name: (entry.version, worker[name].version) for name, entry in other.items()
                 if name in worker and worker[name].version != entry.version}
    assert not different
    if lock == "dev":
        assert set(worker) <= set(other)
        assert set(read_lock("api")) <= set(other)


def test_torch_is_pinned_once_and_pyproject_accepts_it() -> None:
    (requirement,) = [r for r in pyproject_requirements(("worker",)) if canonical(r.name) == "torch"]
    assert requirement.specifier.contains(torch_pin())
    makefile = (ROOT / "Makefile").read_text()
    assert "-r $(TORCH_PIN)" in makefile
    assert "TORCH_PIN := requirements/torch.txt" in makefile
    assert not re.search(r"torch==\d", makefile + (ROOT / "Dockerfile.worker").read_text())


def test_the_suite_runs_the_locked_versions_and_the_pinned_torch() -> None:
    """`make venv` installed dev.txt (and torch's pinned CPU wheel): what the tests import is what the locks ship."""
    assert metadata.version("torch").split("+")[0] == torch_pin()
    wrong = {}
    for name, entry in read_lock("dev").items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            installed = None
        if installed != entry.version:
            wrong[name] = (entry.version, installed)
    assert not wrong, f"the venv is not the lock (locked, installed): {wrong}; run make venv"


def _installed_requirements(name: str) -> list[Requirement]:
    return [Requirement(text) for text in metadata.requires(name) or []]


def test_every_locked_package_accepts_the_pinned_torch_and_python() -> None:
    """Each locked package's own metadata (Requires-Python, Requires-Dist on torch) accepts torch's pin and the
    images' Python, and torch's own requirements accept the locked versions: pip has no reason to replace torch in
    Dockerfile.worker, nor anything torch needs."""
    torch, python = torch_pin(), f"{PYTHON}.0"
    assert platform.python_version().startswith(f"{PYTHON}.")
    everything = {name for lock in LOCKS for name in read_lock(lock)} | {PROJECT, "torch"}
    refused = []
    for name in sorted(everything):
        requires_python = metadata.metadata(name).get("Requires-Python")
        if requires_python and not SpecifierSet(requires_python).contains(python, prereleases=True):
            refused.append(f"{name}: Requires-Python {requires_python}")
        for requirement in _installed_requirements(name):
            if canonical(requirement.name) == "torch" and applies(requirement) and not requirement.specifier.contains(
                    torch, prereleases=True):
                refused.append(f"{name}: {requirement}")
    assert not refused
    for lock in ("worker", "dev"):
        locked = read_lock(lock)
        for requirement in _installed_requirements("torch"):
            name = canonical(requirement.name)
            if applies(requirement) and not CUDA_PARTS.match(name):
                assert name in locked, (lock, str(requirement))
                assert requirement.specifier.contains(locked[name].version, prereleases=True), (lock, str(requirement))


def test_the_accepted_check_can_refuse() -> None:
    """The checks above read real bounds: a torch below every floor is refused by the installed metadata."""
    accelerate = [r for r in _installed_requirements("accelerate") if canonical(r.name) == "torch" and applies(r)]
    assert accelerate
    assert not all(r.specifier.contains("1.0.0") for r in accelerate)


@pytest.mark.parametrize(("dockerfile", "lock"), [("Dockerfile.api", "api"), ("Dockerfile.worker-cpu", "api"),
                                                  ("Dockerfile.worker", "worker")])
def test_each_image_installs_its_lock_with_hashes_and_resolves_nothing(dockerfile: str, lock: str) -> None:
    installs = pip_installs(dockerfile)
    assert f"requirements/{lock}.txt" in installed_requirement_files(dockerfile)
    for args in installs:
        files = [args[i + 1] for i, arg in enumerate(args[:-1]) if arg == "-r"]
        if files == ["requirements/torch.txt"]:
            continue  # the one pin, checked below
        if files:
            assert files == [f"requirements/{lock}.txt"], args
            assert "--require-hashes" in args, args
        else:  # the project itself, from the copied sources
            assert args[-1] == ".", args
            assert "--no-deps" in args, args
    text = (ROOT / dockerfile).read_text()
    assert f"COPY requirements/{lock}.txt" in text or f"requirements/{lock}.txt ./requirements/" in text


def test_the_worker_image_installs_the_cuda_build_of_the_pinned_torch_first() -> None:
    installs = pip_installs("Dockerfile.worker")
    assert installed_requirement_files("Dockerfile.worker") == ["requirements/torch.txt", "requirements/worker.txt"]
    torch_args = installs[0]
    assert "--index-url" in torch_args
    text = (ROOT / "Dockerfile.worker").read_text()
    index = re.search(r"^ARG TORCH_INDEX_URL=(\S+)$", text, re.M)
    assert index
    assert re.fullmatch(r"https://download\.pytorch\.org/whl/cu1\d+", index.group(1))
    assert "torch.version.cuda" in text  # the build fails when pip replaced torch or it has no CUDA
    assert re.search(r"^FROM python:3\.11-slim$", text, re.M)
