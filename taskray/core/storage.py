"""Where outputs go: a local folder or `s3://bucket/prefix`, behind one tiny interface.

Every write is atomic: a reader sees either no file or the whole file. Locally that is a temp file in the
same folder plus `os.replace`; on S3 a single PUT, or a multipart upload that boto3 aborts on failure,
only becomes visible when complete. Jobs rely on this to be resumable: "the file exists" means "the file
is finished".

S3 settings come from the standard AWS environment and config files (AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, AWS_DEFAULT_REGION, ~/.aws/...), exactly as boto3 and pyarrow
read them, so nothing taskray-specific needs configuring.

Object stores answer 500 and 503 now and then (and right after a restart), and throttle with SlowDown: every
S3 call is retried with backoff for up to `RETRY_SECONDS` before it becomes a `StorageError` that says
how long it tried. Errors that retrying cannot fix (denied, no such bucket) fail at once.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from taskray.errors import BadInput, StorageError

if TYPE_CHECKING:
    import pyarrow.fs as pafs

# boto3 switches to multipart above this size; parts are uploaded in parallel and retried one by one.
MULTIPART_THRESHOLD = 64 * 1024 * 1024
RETRY_SECONDS = float(os.environ.get("TASKRAY_STORAGE_RETRY_SECONDS", "120"))
# S3 error codes that a later attempt can succeed past; anything 5xx counts too.
_TRANSIENT_CODES = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestTimeout",
    "InternalError",
    "ServiceUnavailable",
    "RequestLimitExceeded",
    "TooManyRequests",
}
_PERMANENT_UPLOAD = re.compile(r"AccessDenied|InvalidAccessKeyId|SignatureDoesNotMatch|NoSuchBucket")
T = TypeVar("T")


def _transient(err: BaseException) -> bool:
    from boto3.exceptions import S3UploadFailedError
    from botocore.exceptions import ClientError, HTTPClientError
    from botocore.exceptions import ConnectionError as BotoConnectionError

    if isinstance(err, BotoConnectionError | HTTPClientError):
        return True
    if isinstance(err, ClientError):
        status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        return status >= 500 or status == 429 or err.response.get("Error", {}).get("Code") in _TRANSIENT_CODES
    if isinstance(err, S3UploadFailedError):  # s3transfer wraps the cause in text only
        return not _PERMANENT_UPLOAD.search(str(err))
    return False


def _umask() -> int:
    """This process's umask, read without changing it (os.umask would, for every thread at once)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    return 0o022


def _rmdir_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass  # not empty: something this store does not list (e.g. a hidden file) stays


def with_retries(what: str, call: Callable[[], T], seconds: float | None = None) -> T:
    """`call()`, retried with jittered exponential backoff while it fails transiently, for up to `seconds`
    (default RETRY_SECONDS). Gives up with a StorageError naming `what`, the attempts and the time."""
    from boto3.exceptions import Boto3Error
    from botocore.exceptions import BotoCoreError, ClientError

    deadline = time.monotonic() + (RETRY_SECONDS if seconds is None else seconds)
    started, attempt, delay = time.monotonic(), 0, 0.25
    while True:
        attempt += 1
        try:
            return call()
        except Exception as err:
            if not _transient(err):
                if isinstance(err, BotoCoreError | ClientError | Boto3Error):
                    raise StorageError(f"{what}: {err}") from err
                raise
            if time.monotonic() + delay > deadline:
                raise StorageError(
                    f"{what}: gave up after {attempt} attempts over {time.monotonic() - started:.0f}s: {err}"
                ) from err
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 8.0)


def is_s3(url: str) -> bool:
    return url.startswith("s3://")


def split_s3(url: str) -> tuple[str, str]:
    bucket, _, key = url.removeprefix("s3://").partition("/")
    if not bucket:
        raise BadInput(f"{url!r}: an S3 URL needs a bucket, like s3://bucket/prefix")
    return bucket, key.strip("/")


def join(url: str, *parts: str) -> str:
    return "/".join([url.rstrip("/"), *(p.strip("/") for p in parts if p)])


def _s3_endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def s3_client():
    import boto3

    return boto3.client("s3", endpoint_url=_s3_endpoint())


def arrow_filesystem(url: str) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and path for `url`, for readers that want one (Ray Data, pyarrow.parquet).

    Built explicitly (not from_uri) so a custom endpoint and plain-http servers work on every worker:
    the filesystem object pickles with its options and travels with the Ray task.
    """
    import pyarrow.fs as pafs  # here, not at the top: eval, which only writes small files, never needs it

    if is_s3(url):
        import boto3

        creds = boto3.Session().get_credentials()
        frozen = creds.get_frozen_credentials() if creds else None
        endpoint = _s3_endpoint()
        region = os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION") or "us-east-1"
        fs = pafs.S3FileSystem(
            access_key=frozen.access_key if frozen else None,
            secret_key=frozen.secret_key if frozen else None,
            session_token=frozen.token if frozen else None,
            endpoint_override=endpoint,
            scheme="http" if endpoint and endpoint.startswith("http://") else "https",
            region=region,
            # the same patience as the boto3 calls: a restarting or throttling server is waited for
            retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=10),
        )
        bucket, key = split_s3(url)
        return fs, f"{bucket}/{key}".rstrip("/")
    if url.startswith("hf://"):
        from huggingface_hub import HfFileSystem

        return pafs.PyFileSystem(pafs.FSSpecHandler(HfFileSystem())), url.removeprefix("hf://")
    return pafs.LocalFileSystem(), str(Path(url).resolve())


@dataclass
class Store:
    """A folder (local or S3) that files are written into atomically and listed from."""

    url: str

    def path(self, rel: str) -> str:
        return join(self.url, rel)

    # -- reading -------------------------------------------------------------------------------------
    def exists(self, rel: str) -> bool:
        if is_s3(self.url):
            from botocore.exceptions import ClientError

            bucket, key = split_s3(self.path(rel))

            def head() -> bool:
                try:
                    self._s3().head_object(Bucket=bucket, Key=key)
                    return True
                except ClientError as e:
                    if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                        return False
                    raise

            return with_retries(f"cannot check {self.path(rel)}", head)
        return Path(self.path(rel)).is_file()

    def list(self, prefix: str = "") -> Iterator[str]:
        """Relative names of the finished files under `prefix`, sorted."""
        if is_s3(self.url):
            bucket, root = split_s3(self.url)
            full = "/".join(p for p in (root, prefix.strip("/")) if p)

            def listing() -> list[str]:
                pages = self._s3().get_paginator("list_objects_v2")
                return [
                    obj["Key"][len(root) + 1 if root else 0 :]
                    for page in pages.paginate(Bucket=bucket, Prefix=full + "/" if full else "")
                    for obj in page.get("Contents", [])
                ]

            yield from sorted(with_retries(f"cannot list {self.path(prefix)}", listing))
            return
        base = Path(self.url)
        start = base / prefix if prefix else base
        if not start.exists():
            return
        yield from sorted(
            str(p.relative_to(base))
            for p in start.rglob("*")
            if p.is_file() and not any(part.startswith(".tmp-") for part in p.relative_to(base).parts)
        )

    def read_bytes(self, rel: str) -> bytes:
        if is_s3(self.url):
            bucket, key = split_s3(self.path(rel))
            return with_retries(
                f"cannot read {self.path(rel)}",
                lambda: self._s3().get_object(Bucket=bucket, Key=key)["Body"].read(),
            )
        return Path(self.path(rel)).read_bytes()

    # -- writing (atomic) ----------------------------------------------------------------------------
    def write_bytes(self, rel: str, data: bytes, executable: bool = False) -> None:
        """Write a file atomically. Locally it gets the usual mode under the umask (0644, or 0755 when
        `executable`): mkstemp's 0600 would hide reports from other users and strip scripts' exec bit."""
        if is_s3(self.url):
            bucket, key = split_s3(self.path(rel))
            with_retries(
                f"cannot write {self.path(rel)}",
                lambda: self._s3().put_object(Bucket=bucket, Key=key, Body=data),
            )
            return
        target = Path(self.path(rel))
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".tmp-{target.name}.")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                os.fchmod(f.fileno(), (0o777 if executable else 0o666) & ~_umask())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def put_file(
        self, rel: str, local_path: str | Path, multipart_threshold: int = MULTIPART_THRESHOLD
    ) -> None:
        """Move a finished local file into the store (multipart upload on S3 above the threshold)."""
        if is_s3(self.url):
            from boto3.s3.transfer import TransferConfig

            bucket, key = split_s3(self.path(rel))
            config = TransferConfig(multipart_threshold=multipart_threshold)
            with_retries(
                f"cannot upload {self.path(rel)}",
                lambda: self._s3().upload_file(str(local_path), bucket, key, Config=config),
            )
            return
        target = Path(self.path(rel))
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(local_path, target)

    def put_staged(
        self, rel: str, write: Callable[[Path], object], multipart_threshold: int = MULTIPART_THRESHOLD
    ) -> None:
        """`write(path)` a file in local staging, then `put_file` it: the one way big outputs arrive."""
        staging = Path(self.staging_dir())
        try:
            write(staging / Path(rel).name)
            self.put_file(rel, staging / Path(rel).name, multipart_threshold)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def delete(self, rel: str) -> None:
        if is_s3(self.url):
            bucket, key = split_s3(self.path(rel))
            with_retries(
                f"cannot delete {self.path(rel)}", lambda: self._s3().delete_object(Bucket=bucket, Key=key)
            )
            return
        Path(self.path(rel)).unlink(missing_ok=True)

    def delete_all(self) -> int:
        """Remove every file under this store (`--overwrite`); returns how many."""
        names = list(self.list())
        if is_s3(self.url):
            bucket, root = split_s3(self.url)
            keys = ["/".join(p for p in (root, n) if p) for n in names]
            for i in range(0, len(keys), 1000):  # DeleteObjects takes up to 1000 keys
                batch = {"Objects": [{"Key": k} for k in keys[i : i + 1000]]}
                with_retries(
                    f"cannot delete under {self.url}",
                    lambda b=batch: self._s3().delete_objects(Bucket=bucket, Delete=b),
                )
            return len(names)
        for name in names:
            Path(self.url, name).unlink(missing_ok=True)
        for folder in sorted((p for p in Path(self.url).rglob("*") if p.is_dir()), reverse=True):
            if folder.name.startswith(".tmp-"):
                shutil.rmtree(folder, ignore_errors=True)
            else:
                _rmdir_if_empty(folder)
        return len(names)

    def check_writable(self, flag: str) -> None:
        """Refuse, before any work, a local destination that is a file or cannot be written."""
        if is_s3(self.url):
            split_s3(self.url)
            return
        root = Path(self.url)
        for parent in (root, *root.parents):
            if parent.exists():
                if not parent.is_dir():
                    raise BadInput(f"{flag} {self.url}: {parent} is a file; expected a folder")
                if not os.access(parent, os.W_OK | os.X_OK):
                    raise BadInput(f"{flag} {self.url}: {parent} is not writable by this user")
                return

    def staging_dir(self) -> str:
        """A local folder for files on their way into the store: same filesystem when local, so
        `put_file` is a rename."""
        if is_s3(self.url):
            return tempfile.mkdtemp(prefix="taskray-")
        Path(self.url).mkdir(parents=True, exist_ok=True)
        return tempfile.mkdtemp(prefix=".tmp-", dir=self.url)

    def _s3(self):
        if not hasattr(self, "_client"):
            self._client = s3_client()
        return self._client
