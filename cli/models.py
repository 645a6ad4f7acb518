"""Model weights: ``models make-tiny``, ``make-tiny-lora``, ``download``, ``check``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from shared.settings import Settings


@click.group()
def models() -> None:
    """Model weights."""


@models.command("make-tiny")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
def models_make_tiny(directory: Path) -> None:
    """Write the random-weight `tiny` model (same layout as sdxl) into DIRECTORY."""
    from worker.pipeline.tiny import make_tiny

    make_tiny(directory)
    click.echo(str(directory))


@models.command("make-tiny-lora")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--model-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="The tiny model (default: the configured model folder).")
@click.option("--rank", type=click.IntRange(1, 64), default=4, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.pass_obj
def models_make_tiny_lora(settings: Settings, file: Path, model_dir: Path | None, rank: int, seed: int) -> None:
    """Write a random LoRA for the tiny model to FILE (to try `illustrations styles import` without training)."""
    from worker.pipeline.tiny import make_tiny_lora

    make_tiny_lora(model_dir or settings.effective_model_dir, file, rank=rank, seed=seed)
    click.echo(str(file))


@models.command("download")
@click.option("--to", "target", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder to fill (default: the configured model folder of the sdxl profile).")
@click.option("--cache", is_flag=True, help="Into the Hugging Face cache instead (HF_HUB_CACHE / HF_HOME).")
@click.option("--base-revision", default=None, help="Branch, tag or commit of the SDXL base repository.")
@click.option("--ip-adapter-revision", default=None, help="Branch, tag or commit of h94/IP-Adapter.")
@click.option("--dry-run", is_flag=True, help="List what would be fetched and where; fetch nothing.")
@click.pass_obj
def models_download(settings: Settings, target: Path | None, cache: bool, base_revision: str | None,
                    ip_adapter_revision: str | None, dry_run: bool) -> None:
    """Fetch the sdxl weights once (about 18 GB, and the draft LoRA), on a host with network. Workers never
    download."""
    from worker.pipeline.download import DownloadFailed, download_sdxl, plan
    from worker.pipeline.profiles import ModelsMissing, resolve_profile

    if cache and target is not None:
        raise click.UsageError("give --to or --cache, not both")
    revisions = {name: rev for name, rev in (("stabilityai/stable-diffusion-xl-base-1.0", base_revision),
                                               ("h94/IP-Adapter", ip_adapter_revision)) if rev}
    if cache and revisions:
        raise click.UsageError("workers look up the cache at `main`: pin revisions with --to DIR")
    folder = None if cache else (target or _sdxl_dir(settings))
    if dry_run:
        for item in plan(resolve_profile("sdxl", folder or Path("."))):
            where = "the Hugging Face cache" if folder is None else str(folder / item.local_path)
            click.echo(f"{item.repo_id}: {item.path_in_repo} -> {where}")
        return
    try:
        profile = download_sdxl(folder, revisions=revisions or None)
    except (DownloadFailed, ModelsMissing) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"sdxl weights complete ({profile.revision or folder}) at {profile.base_dir.parent}")


@models.command("check")
@click.pass_obj
def models_check(settings: Settings) -> None:
    """Say which of the configured profile's files are present and which are missing (exit 1 if any is)."""
    from worker.pipeline.profiles import draft_missing, locate_profile, missing_files, read_revision, required_files

    profile = locate_profile(settings.model_profile, settings.effective_model_dir,
                             explicit=settings.model_dir is not None)
    missing = set(missing_files(profile))
    where = str(profile.root) if profile.base_dir.parent == profile.root else "the Hugging Face cache"
    click.echo(f"profile {profile.name} at {where}")
    for path in required_files(profile):
        click.echo(f"  {'missing' if path in missing else 'present'}  {path}")
    _check_draft(profile, draft_missing(profile))
    if missing:
        raise click.ClickException(f"profile {profile.name} lacks {len(missing)} file(s) at {profile.root}; "
                                   + _fix(profile.name, profile.root))
    click.echo(f"profile {profile.name} complete (revision {read_revision(profile)})")


@models.command("sync")
@click.argument("uri")
@click.option("--target", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Default: the profile's folder (ILLUSTRATIONS_MODEL_DIR).")
@click.pass_obj
def models_sync(settings: Settings, uri: str, target: Path | None) -> None:
    """Copy the profile's weights from s3://bucket/prefix (skips files already present with the same size)."""
    from cli.model_sync import sync_from_s3

    folder = target or settings.effective_model_dir
    downloaded, skipped = sync_from_s3(settings, uri, folder)
    click.echo(f"{folder}: {downloaded} file(s) downloaded, {skipped} already present")


def _check_draft(profile: Any, missing: str | None) -> None:
    """The draft variant's LoRA (optional: without it final jobs run and draft jobs fail ``setup_failed``)."""
    shown = missing or profile.draft_file
    if profile.draft_file.is_relative_to(profile.root):
        shown = profile.draft_file.relative_to(profile.root).as_posix()
    click.echo(f"  {'missing' if missing else 'present'}  {shown}  (quality: draft; optional)")
    if missing:
        click.echo(f"draft quality unavailable: draft jobs fail setup_failed until {missing} is there; "
                   + _fix(profile.name, profile.root))


def _sdxl_dir(settings: Settings) -> Path:
    if settings.model_dir is not None:
        return settings.model_dir.resolve()
    return (settings.var_dir / "models" / "sdxl").resolve()


def _fix(profile: str, root: Path) -> str:
    if profile == "tiny":
        return f"run `illustrations models make-tiny {root}`"
    return f"run `illustrations models download --to {root}` on a host with network, or mount the weights there"


def register(group: click.Group) -> None:
    group.add_command(models)
