"""``illustrations submit``: a small client of the HTTP API, with a progress bar."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click
import requests
from tqdm import tqdm

TERMINAL = ("succeeded", "failed", "canceled")


class ApiClient:
    def __init__(self, base_url: str, key: str, timeout_s: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {key}"
        self.timeout_s = timeout_s

    def _check(self, response: requests.Response) -> dict[str, Any]:
        if response.status_code >= 400:
            raise click.ClickException(
                f"{response.request.method} {response.url}: {response.status_code} {response.text}"
            )
        body: dict[str, Any] = response.json()
        return body

    def upload_subject(self, user_id: str, name: str, image: Path) -> dict[str, Any]:
        with image.open("rb") as handle:
            response = self.session.post(
                f"{self.base_url}/v1/subjects",
                data={"user_id": user_id, "name": name},
                files={"image": (image.name, handle)},
                timeout=self.timeout_s,
            )
        return self._check(response)

    def submit(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._check(self.session.post(f"{self.base_url}/v1/illustrations", json=body, timeout=self.timeout_s))

    def job(self, job_id: str) -> dict[str, Any]:
        return self._check(self.session.get(f"{self.base_url}/v1/illustrations/{job_id}", timeout=self.timeout_s))

    def download(self, url: str, target: Path) -> Path:
        response = self.session.get(url, timeout=self.timeout_s, allow_redirects=False)
        if response.status_code in (301, 302, 303, 307, 308):  # presigned S3 URL: no bearer header to a third party
            response = requests.get(response.headers["Location"], timeout=self.timeout_s)
        if response.status_code != 200:
            raise click.ClickException(f"GET {url}: {response.status_code}")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(response.content)
        return target

    def wait(self, job_id: str, timeout_s: float, show_progress: bool = True) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        with tqdm(total=None, desc="queued", unit="step", disable=not show_progress, leave=True) as bar:
            while True:
                job = self.job(job_id)
                bar.set_description(job["status"])
                progress = job.get("progress")
                if progress:
                    bar.total = progress["total"]
                    bar.n = progress["step"]
                    bar.refresh()
                if job["status"] in TERMINAL:
                    return job
                if time.monotonic() > deadline:
                    raise click.ClickException(f"job {job_id} not finished after {timeout_s:.0f} s")
                time.sleep(0.25)


def submit_and_wait(client: ApiClient, prompt: str, user_id: str, subjects: list[Path], params: dict[str, Any],
                    wait: bool, timeout_s: float, download_dir: Path | None) -> tuple[dict[str, Any], list[Path]]:
    refs = []
    for i, image in enumerate(subjects):
        subject = client.upload_subject(user_id, f"subject-{i + 1}", image)
        refs.append({"subject_id": subject["id"]})
    job = client.submit({"user_id": user_id, "prompt": prompt, "subjects": refs, "params": params})
    paths: list[Path] = []
    if not wait:
        return job, paths
    job = client.wait(job["id"], timeout_s)
    if download_dir is not None and job["status"] == "succeeded":
        for image in job["images"]:
            suffix = image["content_type"].split("/")[-1].replace("jpeg", "jpg")
            index = image["url"].rsplit("/", 1)[-1]
            paths.append(client.download(image["url"], download_dir / f"{job['id']}-{index}.{suffix}"))
    return job, paths


@click.command()
@click.argument("prompt")
@click.option("--subject", "subjects", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Reference photo of a person (repeatable, at most 4).")
@click.option("--user-id", default="cli-user", show_default=True)
@click.option("--wait/--no-wait", default=False, help="Wait for the result, showing progress.")
@click.option("--timeout", "timeout_s", default=600.0, show_default=True)
@click.option("--width", type=int, default=None)
@click.option("--height", type=int, default=None)
@click.option("--steps", type=int, default=None)
@click.option("--seed", type=int, default=None)
@click.option("--download-dir", type=click.Path(file_okay=False, path_type=Path), default=None)
@click.option("--api-url", envvar="AUTOBIO_API_URL", default="http://127.0.0.1:8000", show_default=True)
@click.option("--key", envvar="AUTOBIO_API_KEY", required=True, help="API key (or AUTOBIO_API_KEY).")
def submit(prompt: str, subjects: tuple[Path, ...], user_id: str, wait: bool, timeout_s: float, width: int | None,
           height: int | None, steps: int | None, seed: int | None, download_dir: Path | None, api_url: str,
           key: str) -> None:
    """Submit PROMPT (with optional subject photos) and print the job as JSON."""
    params = {name: value for name, value in
              (("width", width), ("height", height), ("steps", steps), ("seed", seed)) if value is not None}
    job, paths = submit_and_wait(ApiClient(api_url, key), prompt, user_id, list(subjects), params, wait, timeout_s,
                                 download_dir)
    click.echo(json.dumps(job, indent=2))
    for path in paths:
        click.echo(f"image: {path}")
    if wait and job["status"] != "succeeded":
        raise SystemExit(1)


def register(group: click.Group) -> None:
    group.add_command(submit)
