"""Blobs (recordings, checkpoints, ONNX models) addressed by key in one store, by URL.

`file:///path` (the default: the data dir, so the layout is the one Heimdall always had) or
`s3://bucket/prefix` for any S3-compatible store (AWS, MinIO, Ceph, R2), with the standard
`AWS_*` credentials passed in through the settings. Both go through obstore, one client for
both, so there is one code path: keys are `/`-separated paths relative to the store's root
(`jobs/<job id>/best.pt`, `datasets/<name>/...`).

Writes are whole objects (uploads of a file are multipart above obstore's chunk size);
downloads land in a temporary file renamed into place, so a reader never sees half a file;
the API streams an object in chunks, never holding it whole.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

import obstore
import obstore.exceptions
from obstore.store import LocalStore, S3Store

from shared.errors import ConfigurationError, NotFound, Unavailable

if TYPE_CHECKING:
    from shared.settings import Settings

CHUNK = 1 << 20
"""Bytes per chunk of a streamed download."""


@dataclass(frozen=True, slots=True)
class StorageConfig:
    """Where blobs live and how to reach them; picklable (it crosses into training processes).
    Credentials and the endpoint stay out of `repr`."""

    url: str
    """`file:///abs/path` or `s3://bucket/prefix`."""
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)
    region: str | None = None
    endpoint_url: str | None = field(default=None, repr=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> StorageConfig:
        """The settings' store: `storage_url`, or `file://<data dir>` when unset."""
        url = settings.storage_url or settings.data_dir.resolve().as_uri()
        return cls(
            url=url,
            access_key_id=settings.aws_access_key_id,
            secret_access_key=settings.aws_secret_access_key,
            region=settings.aws_region,
            endpoint_url=settings.aws_endpoint_url,
        )


def check_storage_url(url: str) -> str:
    """`url` if it is a `file://` URL with an absolute path or an `s3://bucket[/prefix]` URL;
    raises ConfigurationError naming HEIMDALL_STORAGE_URL otherwise."""
    parsed = urlparse(url)
    ok = (parsed.scheme == "file" and parsed.path.startswith("/") and not parsed.netloc) or (
        parsed.scheme == "s3" and bool(parsed.netloc)
    )
    if not ok:
        raise ConfigurationError(
            f"HEIMDALL_STORAGE_URL={url!r} is not valid: expected file:///absolute/path or"
            " s3://bucket/prefix",
            "HEIMDALL_STORAGE_URL",
        )
    return url


def check_key(key: str) -> str:
    """A relative `/`-separated key with no empty, `.` or `..` part (nothing escapes the root)."""
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"invalid storage key {key!r}")
    return key


def job_key(job_id: str, name: str = "") -> str:
    """A job's object `name` (`best.pt`, `model.onnx`...), or with no name its prefix."""
    return f"jobs/{job_id}/{name}"


TENSORBOARD_PREFIX = "tensorboard/"
"""Where every job's TensorBoard event files are, in the store as under the data dir."""


def tensorboard_key(job_id: str, name: str = "") -> str:
    """A job's TensorBoard event file `name`, or with no name their prefix: the path they have
    under the data dir, so a `file://` store on the data dir holds them where they are written."""
    return f"{TENSORBOARD_PREFIX}{job_id}/{name}"


def job_prefixes(job_id: str) -> tuple[str, ...]:
    """Every prefix under which the store keeps a job's objects."""
    return (job_key(job_id), tensorboard_key(job_id))


class BlobStore:
    """One store: put, get (to a file or as a stream), list and delete by prefix."""

    def __init__(self, config: StorageConfig) -> None:
        self.config = config
        parsed = urlparse(check_storage_url(config.url))
        self.local_root: Path | None = None
        """The root folder of a `file://` store (None for object storage)."""
        self._store: Any
        if parsed.scheme == "file":
            self.local_root = Path(unquote(parsed.path))
            self._store = LocalStore(self.local_root, mkdir=True)
        else:
            options: dict[str, Any] = {}
            endpoint = config.endpoint_url
            if endpoint:
                options["endpoint"] = endpoint
                options["client_options"] = {"allow_http": endpoint.startswith("http://")}
            self._store = S3Store(
                parsed.netloc,
                prefix=parsed.path.strip("/") or None,
                region=config.region,
                access_key_id=config.access_key_id,
                secret_access_key=config.secret_access_key,
                **options,
            )

    def __repr__(self) -> str:
        return f"BlobStore({self.config.url!r})"

    @property
    def is_local(self) -> bool:
        return self.local_root is not None

    def local_path(self, key: str) -> Path | None:
        """Where a `file://` store keeps `key` (None for object storage)."""
        return None if self.local_root is None else self.local_root / check_key(key)

    def put_file(self, key: str, src: Path) -> None:
        """Upload `src` as `key` (nothing to do when `src` already is that object)."""
        here = self.local_path(key)
        if here is not None and here.exists() and here.resolve() == src.resolve():
            return
        with _errors(key):
            obstore.put(self._store, check_key(key), src)

    def put_bytes(self, key: str, data: bytes) -> None:
        with _errors(key):
            obstore.put(self._store, check_key(key), data)

    def get_file(self, key: str, dest: Path) -> Path:
        """Download `key` to `dest` (through a temporary file beside it); NotFound if absent."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
        try:
            with os.fdopen(fd, "wb") as out, _errors(key):
                for chunk in obstore.get(self._store, check_key(key)).stream(CHUNK * 8):
                    out.write(chunk)
            os.replace(tmp, dest)
        finally:
            Path(tmp).unlink(missing_ok=True)
        return dest

    def get_bytes(self, key: str) -> bytes:
        with _errors(key):
            return bytes(obstore.get(self._store, check_key(key)).bytes())

    def exists(self, key: str) -> bool:
        try:
            with _errors(key):
                obstore.head(self._store, check_key(key))
        except NotFound:
            return False
        return True

    def list(self, prefix: str) -> list[str]:
        """Every key under `prefix` (a `/`-terminated folder-like prefix), sorted."""
        return sorted(self.sizes(prefix))

    def sizes(self, prefix: str) -> dict[str, int]:
        """Every key under `prefix` with its size in bytes."""
        found: dict[str, int] = {}
        with _errors(prefix):
            for batch in obstore.list(self._store, prefix or None):
                found.update((meta["path"], int(meta["size"])) for meta in batch)
        return found

    def delete(self, key: str) -> None:
        """Delete one object; an absent one is no error."""
        with contextlib.suppress(NotFound), _errors(key):
            obstore.delete(self._store, check_key(key))

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under `prefix` (`jobs/<id>/`); returns how many there were."""
        check_key(prefix.rstrip("/"))
        keys = self.list(prefix)
        if keys:
            with _errors(prefix):
                obstore.delete(self._store, keys)
        if self.local_root is not None:  # a file store keeps the emptied folders otherwise
            shutil.rmtree(self.local_root / prefix, ignore_errors=True)
        return len(keys)

    def delete_job(self, job_id: str) -> int:
        """Delete every object of the job (artifacts, evaluations, TensorBoard files)."""
        return sum(self.delete_prefix(prefix) for prefix in job_prefixes(job_id))

    async def size_async(self, key: str) -> int:
        with _errors(key):
            meta = await obstore.head_async(self._store, check_key(key))
        return int(meta["size"])

    async def stream_async(self, key: str) -> AsyncIterator[bytes]:
        """The object's bytes in chunks of about CHUNK; NotFound if absent."""
        with _errors(key):
            result = await obstore.get_async(self._store, check_key(key))
            async for chunk in result.stream(CHUNK):
                yield bytes(chunk)


@contextlib.contextmanager
def _errors(key: str) -> Iterator[None]:
    """obstore's errors as domain errors: an absent object NotFound, the rest Unavailable."""
    try:
        yield
    except (FileNotFoundError, obstore.exceptions.NotFoundError):
        raise NotFound(f"no object {key!r} in the store") from None
    except (OSError, obstore.exceptions.BaseError) as exc:
        raise Unavailable(f"object storage failed on {key!r}: {type(exc).__name__}") from exc


def open_store(settings: Settings) -> BlobStore:
    """The blob store the settings name (`storage_url`, default the data dir)."""
    return BlobStore(StorageConfig.from_settings(settings))
