"""Packaging and deployment files: the CLI, the images' COPY sources, compose settings, CPU-only processes."""

from __future__ import annotations

import re
import subprocess
import sys

from click.testing import CliRunner

from tests.helpers import ROOT

COMMANDS = {"api", "worker", "beat", "flower", "db", "keys", "models", "ops", "styles", "submit", "up", "down",
            "status", "demo", "webhooks", "openapi"}


def test_help_lists_every_subcommand() -> None:
    from cli import main

    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    commands = result.output.split("Commands:")[1]
    listed = set(re.findall(r"^  (\w[\w-]*)\s", commands, flags=re.MULTILINE))
    assert listed == COMMANDS
    groups = {"db": {"upgrade"}, "keys": {"create", "list", "revoke"},
              "models": {"make-tiny", "make-tiny-lora", "download", "check", "sync"},
              "styles": {"import", "list", "remove"}, "ops": {"drain"}, "webhooks": {"url", "secret", "reencrypt"}}
    for group, subcommands in groups.items():
        output = CliRunner().invoke(main, [group, "--help"]).output.split("Commands:")[1]
        assert subcommands <= set(re.findall(r"^  (\w[\w-]*)\s", output, flags=re.MULTILINE))


def test_dockerfile_copy_sources_exist() -> None:
    for dockerfile in ("Dockerfile.api", "Dockerfile.worker", "Dockerfile.worker-cpu"):
        for line in (ROOT / dockerfile).read_text().splitlines():
            if line.startswith("COPY "):
                for source in line.split()[1:-1]:
                    assert (ROOT / source).exists(), f"{dockerfile}: COPY {source} does not exist"


def test_cpu_processes_never_import_torch() -> None:
    code = (
        "import sys\n"
        "import cli, worker.celery_app, worker.tasks.maintenance, worker.tasks.generate, worker.pipeline\n"
        "import worker.tasks.prepare, worker.preparation, shared.fetch, shared.deletion.run\n"
        "import worker.pipeline.profiles, worker.launcher, worker.generation, shared.styles, shared.lora_files\n"
        "import worker.tasks.train, worker.tasks.prepare_style, worker.style_preparation, worker.training.stop\n"
        "import worker.maintenance, shared.training, shared.deletion.training\n"
        "heavy = [m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr
