"""Storage: both backends through the same tests; S3 against a real server (rclone serve s3), not a mock.

rclone checks SigV4 signatures and presigned-URL expiry, so the presigned tests prove what clients will see.
"""

from __future__ import annotations

import os
import socket
import stat
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.settings import Settings
from shared.storage import MAX_KEY_LENGTH, ObjectNotFound, Storage, StorageError, open_storage, validate_key
from shared.storage.local import LocalStorage
from shared.storage.s3 import S3Storage
from tests.s3server import S3Server

BAD_KEYS = [
    "",
    "../x",
    "a/../../x",
    "/abs",
    "a//b",
    "a/",
    "./a",
    "a/./b",
    "..",
    "a b",
    "a\\b",
    "a\x00b",
    "é.png",
    "a?b",
    "a%2Fb",
    "~/x",
    "x" * (MAX_KEY_LENGTH + 1),
]


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with S3Server(tmp_path_factory.mktemp("s3")) as server:
        yield server


def make_s3(server: S3Server, prefix: str = "", **options: object) -> S3Storage:
    """Short timeouts and one attempt: a broken endpoint fails the test in well under a second."""
    defaults: dict[str, object] = {"connect_timeout": 1.0, "read_timeout": 2.0, "max_attempts": 1}
    return S3Storage(
        server.bucket,
        prefix or f"t-{uuid.uuid4().hex[:8]}",  # each test its own prefix in the shared bucket
        endpoint_url=server.endpoint,
        **server.credentials,
        **(defaults | options),  # type: ignore[arg-type]
    )


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    if request.param == "local":
        return LocalStorage(tmp_path / "store")
    return make_s3(request.getfixturevalue("s3_server"))


@pytest.fixture(scope="module", params=["local", "s3"])
def unused_storage(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Storage:
    """One store per module for tests that must write nothing (making an S3 client costs ~0.1 s)."""
    if request.param == "local":
        return LocalStorage(tmp_path_factory.mktemp("local"))
    return make_s3(request.getfixturevalue("s3_server"))


def fetch(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def files_under(root: Path) -> list[str]:
    return sorted(str(path.relative_to(root)) for path in root.rglob("*") if not path.is_dir())


# --- Both backends ----------------------------------------------------------------------------------------------


def test_put_get_roundtrip_and_overwrite(storage: Storage) -> None:
    storage.put("jobs/1/0.png", b"\x89PNG first", "image/png")
    assert storage.get("jobs/1/0.png") == b"\x89PNG first"
    storage.put("jobs/1/0.png", b"second", "image/png")
    assert storage.get("jobs/1/0.png") == b"second"
    storage.put("empty.bin", b"", "application/octet-stream")
    assert storage.get("empty.bin") == b""


def test_exists_and_delete(storage: Storage) -> None:
    assert not storage.exists("a/b.png")
    storage.put("a/b.png", b"x", "image/png")
    assert storage.exists("a/b.png")
    assert not storage.exists("a")  # a "folder" is not an object
    storage.delete("a/b.png")
    assert not storage.exists("a/b.png")
    storage.delete("a/b.png")  # missing is fine
    storage.delete("never/was.png")


def test_get_missing_raises_object_not_found(storage: Storage) -> None:
    with pytest.raises(ObjectNotFound) as info:
        storage.get("missing/0.png")
    assert info.value.key == "missing/0.png"
    assert not isinstance(info.value, StorageError)  # not a fault: a retry loop on StorageError must not retry it


def test_delete_prefix_removes_only_what_is_under_it(storage: Storage) -> None:
    for key in ["jobs/1/0/a.png", "jobs/1/0/b.png", "jobs/1/1/a.png", "jobs/10/0/a.png", "jobs/1.png"]:
        storage.put(key, b"x", "image/png")
    assert storage.delete_prefix("jobs/1/0/") == 2
    assert not storage.exists("jobs/1/0/a.png")
    assert storage.exists("jobs/1/1/a.png")
    assert storage.delete_prefix("jobs/1/") == 1
    assert storage.exists("jobs/10/0/a.png")  # "jobs/1/" is not a string prefix of "jobs/10/"
    assert storage.exists("jobs/1.png")
    assert storage.delete_prefix("jobs/1/") == 0
    assert storage.delete_prefix("nothing/here/") == 0
    storage.put("jobs/1/0/a.png", b"again", "image/png")  # the emptied folder can be written again
    assert storage.get("jobs/1/0/a.png") == b"again"


@pytest.mark.parametrize("prefix", ["", "/", "jobs/1", "../", "a//", "/abs/"])
def test_delete_prefix_refuses_bad_prefixes(unused_storage: Storage, prefix: str) -> None:
    with pytest.raises(ValueError, match=r"prefix|key"):
        unused_storage.delete_prefix(prefix)


@pytest.mark.parametrize("key", BAD_KEYS, ids=lambda key: repr(key)[:20])
def test_every_method_refuses_bad_keys(unused_storage: Storage, key: str) -> None:
    store = unused_storage
    calls = [
        lambda: store.put(key, b"x", "image/png"),
        lambda: store.get(key),
        lambda: store.delete(key),
        lambda: store.exists(key),
        lambda: store.presigned_url(key),
        lambda: store.local_path(key),
    ]
    for call in calls:
        with pytest.raises(ValueError, match="key"):
            call()


def test_validate_key_accepts_relative_posix_keys() -> None:
    for key in ["a", "jobs/0c2f/0.png", "A-b_c.d/e.f", "x" * MAX_KEY_LENGTH, "a/.hidden", "a/..b"]:
        assert validate_key(key) == key


def test_check_passes_on_a_usable_store(storage: Storage) -> None:
    storage.check()


# --- Local backend ----------------------------------------------------------------------------------------------


def test_local_files_are_0644_and_no_temp_files_are_left(tmp_path: Path) -> None:
    old_umask = os.umask(0o077)
    try:
        store = LocalStorage(tmp_path / "store")
        store.put("jobs/1/0.png", b"png", "image/png")
        store.put("jobs/1/0.png", b"png2", "image/png")
    finally:
        os.umask(old_umask)
    path = store.local_path("jobs/1/0.png")
    assert path == tmp_path / "store" / "jobs" / "1" / "0.png"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert path.read_bytes() == b"png2"
    assert files_under(tmp_path / "store") == ["jobs/1/0.png"]


def test_local_put_is_atomic_when_the_write_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = LocalStorage(tmp_path / "store")
    store.put("a.png", b"old", "image/png")

    def broken_replace(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(StorageError) as info:
        store.put("a.png", b"new", "image/png")
    monkeypatch.undo()
    assert not info.value.retryable
    assert b"new" not in str(info.value).encode()
    assert store.get("a.png") == b"old"  # readers never see a part
    assert files_under(tmp_path / "store") == ["a.png"]  # the temp file is gone


def test_local_cannot_write_outside_its_root(tmp_path: Path) -> None:
    root, outside = tmp_path / "store", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "link").symlink_to(outside)  # a symlink planted inside the root
    store = LocalStorage(root)
    for key in ["../outside/x", "link/x", "link/../x"]:
        with pytest.raises(ValueError):
            store.put(key, b"x", "image/png")
    with pytest.raises(ValueError):
        store.delete_prefix("link/")
    (outside / "keep.png").write_bytes(b"keep")
    (root / "jobs").mkdir()
    (root / "jobs" / "link").symlink_to(outside)  # inside a prefix: delete_prefix removes the link, not its target
    store.put("jobs/0.png", b"x", "image/png")
    assert store.delete_prefix("jobs/") == 1
    assert files_under(outside) == ["keep.png"]
    assert not (root / "jobs").exists()
    assert store.presigned_url("a.png") is None


def test_local_check_fails_when_the_root_is_not_a_folder(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(StorageError):
        LocalStorage(tmp_path / "file").check()
    LocalStorage(tmp_path / "new" / "root").check()  # a missing root is created
    assert (tmp_path / "new" / "root").is_dir()


# --- S3 backend -------------------------------------------------------------------------------------------------


def test_s3_keys_get_the_prefix_and_content_types_are_kept(s3_server: S3Server) -> None:
    store = make_s3(s3_server, "some/prefix")
    store.put("jobs/1/0.png", b"png", "image/png")
    store.put("refs/face.jpg", b"jpg", "image/jpeg")
    client = s3_server.client()
    head = client.head_object(Bucket=s3_server.bucket, Key="some/prefix/jobs/1/0.png")
    assert head["ContentType"] == "image/png"
    assert head["ContentLength"] == 3
    assert client.head_object(Bucket=s3_server.bucket, Key="some/prefix/refs/face.jpg")["ContentType"] == "image/jpeg"
    assert store.local_path("jobs/1/0.png") is None


def test_s3_delete_prefix_goes_through_every_page(s3_server: S3Server) -> None:
    store = make_s3(s3_server)
    store.page_size = 2
    for n in range(5):
        store.put(f"jobs/1/{n}.png", b"x", "image/png")
    store.put("jobs/2/0.png", b"x", "image/png")
    assert store.delete_prefix("jobs/1/") == 5
    assert [store.exists(f"jobs/1/{n}.png") for n in range(5)] == [False] * 5
    assert store.exists("jobs/2/0.png")


def test_s3_works_with_checksums_when_supported(s3_server: S3Server) -> None:
    store = make_s3(s3_server, checksum_mode="when_supported")
    store.put("d/a.png", b"abc" * 1000, "image/png")
    assert store.get("d/a.png") == b"abc" * 1000
    assert store.delete_prefix("d/") == 1  # DeleteObjects always carries a checksum


def test_presigned_get_returns_the_bytes_and_a_tampered_signature_is_refused(s3_server: S3Server) -> None:
    store = make_s3(s3_server)
    store.put("jobs/1/0.png", b"\x89PNG bytes", "image/png")
    url = store.presigned_url("jobs/1/0.png")
    assert url is not None
    assert url.startswith(s3_server.endpoint + "/")
    assert "X-Amz-Expires=3600" in url
    assert fetch(url) == (200, b"\x89PNG bytes")

    head, signature = url.split("X-Amz-Signature=")
    tampered = head + "X-Amz-Signature=" + ("0" if signature[0] != "0" else "1") + signature[1:]
    status, body = fetch(tampered)
    assert status == 403
    assert b"SignatureDoesNotMatch" in body


def test_presigned_url_is_refused_after_it_expires(s3_server: S3Server) -> None:
    store = make_s3(s3_server)
    store.put("a.png", b"x", "image/png")
    short, long = store.presigned_url("a.png", expires_in=1), store.presigned_url("a.png", expires_in=60)
    assert short is not None
    assert long is not None
    deadline = time.monotonic() + 5
    while (result := fetch(short))[0] == 200:
        assert time.monotonic() < deadline, "a URL presigned for 1 s still works after 5 s"
        time.sleep(0.1)
    status, body = result
    assert status in {400, 403}  # rclone answers 400 AccessDenied ("request time ... exceeds"); AWS answers 403
    assert b"AccessDenied" in body
    assert fetch(long) == (200, b"x")  # same object, same moment: only the lifetime differs


def test_presign_lifetime_is_a_constructor_argument(s3_server: S3Server) -> None:
    store = make_s3(s3_server, presign_seconds=120)
    assert "X-Amz-Expires=120" in (store.presigned_url("a.png") or "")
    with pytest.raises(ValueError, match="expires_in"):
        store.presigned_url("a.png", expires_in=0)
    with pytest.raises(ValueError, match="presign_seconds"):
        make_s3(s3_server, presign_seconds=8 * 24 * 3600)


def test_public_endpoint_sets_the_host_of_presigned_urls(s3_server: S3Server) -> None:
    public = f"http://localhost:{s3_server.port}"  # the same server under the name clients would use
    store = make_s3(s3_server, public_endpoint_url=public)
    store.put("a.png", b"public", "image/png")
    url = store.presigned_url("a.png")
    assert url is not None
    assert url.startswith(public + "/" + s3_server.bucket + "/")
    assert fetch(url) == (200, b"public")  # signed for the public host, and the server agrees

    cdn = make_s3(s3_server, public_endpoint_url="https://media.example.com")
    assert (cdn.presigned_url("a.png") or "").startswith("https://media.example.com/")


def test_s3_check_fails_on_a_missing_bucket(s3_server: S3Server) -> None:
    make_s3(s3_server).check()
    missing = S3Storage("no-such-bucket", endpoint_url=s3_server.endpoint, **s3_server.credentials, max_attempts=1)
    with pytest.raises(StorageError) as info:
        missing.check()
    assert not info.value.retryable
    with pytest.raises(StorageError) as info:
        missing.put("a.png", b"SECRET-BODY", "image/png")
    assert "SECRET-BODY" not in str(info.value)
    assert "NoSuchBucket" in str(info.value)


def test_s3_wrong_credentials_raise_storage_error(s3_server: S3Server) -> None:
    store = S3Storage(
        s3_server.bucket,
        endpoint_url=s3_server.endpoint,
        access_key_id=s3_server.access_key,
        secret_access_key="wrong",
        max_attempts=1,
    )
    with pytest.raises(StorageError) as info:
        store.get("a.png")
    assert not info.value.retryable
    assert "wrong" not in str(info.value)


def test_s3_stopped_endpoint_raises_storage_error_quickly(tmp_path: Path) -> None:
    with S3Server(tmp_path / "s3") as server:
        # the defaults a deployment gets (5 s connect, 30 s read, 3 attempts)
        store = S3Storage(server.bucket, endpoint_url=server.endpoint, **server.credentials)
        store.put("a.png", b"x", "image/png")
    started = time.monotonic()
    for call in [lambda: store.get("a.png"), lambda: store.exists("a.png"), store.check]:
        with pytest.raises(StorageError) as info:
            call()
        assert info.value.retryable
    assert time.monotonic() - started < 5


def test_s3_silent_endpoint_times_out_instead_of_hanging(s3_server: S3Server) -> None:
    with socket.socket() as silent:  # accepts connections (kernel backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        endpoint = f"http://127.0.0.1:{silent.getsockname()[1]}"
        store = S3Storage("b", endpoint_url=endpoint, **s3_server.credentials, read_timeout=0.5, max_attempts=1)
        started = time.monotonic()
        with pytest.raises(StorageError, match="ReadTimeoutError") as info:
            store.get("a.png")
        assert info.value.retryable
        assert time.monotonic() - started < 1.5  # one attempt of 0.5 s


# --- open_storage -----------------------------------------------------------------------------------------------


def test_open_storage_picks_s3_and_applies_the_prefix(s3_server: S3Server) -> None:
    settings = Settings(
        storage_url=f"s3://{s3_server.bucket}/deploy/one/",
        s3_endpoint_url=s3_server.endpoint,
        s3_access_key_id=s3_server.access_key,
        s3_secret_access_key=s3_server.secret_key,
        presign_expires_s=600,
    )
    store = open_storage(settings)
    assert isinstance(store, S3Storage)
    assert store.bucket == s3_server.bucket
    assert store.prefix == "deploy/one/"
    assert store.presign_seconds == 600
    store.put("jobs/1/0.png", b"x", "image/png")
    s3_server.client().head_object(Bucket=s3_server.bucket, Key="deploy/one/jobs/1/0.png")
    store.check()


def test_open_storage_picks_local_for_paths(tmp_path: Path) -> None:
    store = open_storage(Settings(storage_url=str(tmp_path / "a")))
    assert isinstance(store, LocalStorage)
    assert store.root == tmp_path / "a"
    store = open_storage(Settings(storage_url=f"file://{tmp_path / 'b'}"))
    assert isinstance(store, LocalStorage)
    assert store.root == tmp_path / "b"
    store = open_storage(Settings(storage_url="", var_dir=tmp_path / "var"))
    assert isinstance(store, LocalStorage)
    assert store.root == tmp_path / "var" / "storage"
    store.put("a.png", b"x", "image/png")
    assert (tmp_path / "var" / "storage" / "a.png").read_bytes() == b"x"
    with pytest.raises(ValueError, match="gs://"):
        open_storage(Settings(storage_url="gs://bucket/prefix"))
    with pytest.raises(ValueError, match="bucket"):
        open_storage(Settings(storage_url="s3://"))
    with pytest.raises(ValueError, match="key"):
        open_storage(Settings(storage_url="s3://bucket/../up"))
