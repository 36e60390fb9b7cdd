"""``CDNManager`` and ``CDNCredentials``: direct CDN transfers under the original names.

``CDNCredentials(host, downloader_access_key, downloader_access_secret, uploader_access_key,
uploader_access_secret)`` is the original's five positional fields; it builds the one CDN
credentials value, ``domain.config.CdnConfig``, in the original's layout (the bucket is the folder,
``name.big`` at its root), the downloader pair as read keys and the uploader pair as write keys.
``CDNManager(credentials).upload(bucket, filename, file_bytes)`` and ``.download(bucket,
filename)`` return ``bool`` as the original's did. What changed, on purpose:

- reads always use the downloader pair and only uploads use the uploader pair (the original used
  the uploader client for everything it could); a manager without uploader keys refuses uploads;
- a failed transfer is logged with what happened and what to do, and kept in ``last_failure``
  (the original swallowed the exception); bad names raise ``InvalidNameError`` at once;
- ``download`` still writes ``filename`` into the working directory (scripts read it from there),
  but atomically and resuming, and ``dest=`` writes it elsewhere; ``download_bytes`` returns it;
- every transfer is retried through the one retry layer (full jitter, a time budget).
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

from returns.io import IOFailure, IOResult
from returns.pipeline import is_successful
from returns.result import Failure
from returns.unsafe import unsafe_perform_io

from splitvault.adapters.s3_cdn import S3Cdn
from splitvault.adapters.system import SystemClock, SystemRandom, sleep
from splitvault.app.client.errors import to_exception, unwrap_or_raise
from splitvault.app.client.retrying import Retrier
from splitvault.app.client.usecases import write_atomically
from splitvault.domain.cdn_layout import BIG_SUFFIX
from splitvault.domain.config import CdnConfig, original_cdn_config
from splitvault.domain.errors import AccessDenied, InvalidRef, Problem, StorageFailed
from splitvault.domain.ports import Cdn
from splitvault.domain.ref import ResourceRef
from splitvault.domain.retry import RetryPolicy

log = logging.getLogger("splitvault.cdn_manager")
Bytes = bytes | bytearray | memoryview


def CDNCredentials(
    host: str,
    downloader_access_key: str,
    downloader_access_secret: str,
    uploader_access_key: str | None = None,
    uploader_access_secret: str | None = None,
) -> CdnConfig:
    """The original client's CDN credentials, as a ``CdnConfig`` (a bucket per folder).

    ``host`` is the endpoint URL or a bare host name (``https://`` is then assumed). Leave out
    the uploader pair on machines that only download. Raises ``ConfigError`` naming the field
    that is missing or malformed (values are never shown).
    """
    built = original_cdn_config(
        host,
        downloader_access_key,
        downloader_access_secret,
        uploader_access_key,
        uploader_access_secret,
    )
    if isinstance(built, Failure):
        raise to_exception(built.failure())
    return built.unwrap()


def ref_for(bucket: str, filename: str) -> ResourceRef:
    """The ref whose big part is object ``filename`` in ``bucket`` (``name.big`` → ``name``).

    The CDN holds big parts only, so an object's name always ends in ``.big``; a ``filename``
    without it names the big part of that resource (``model.bin`` → ``model.bin.big``).
    """
    name = filename.removesuffix(BIG_SUFFIX)
    parsed = ResourceRef.parse(bucket, name)
    if isinstance(parsed, Failure):
        problem = parsed.failure()
        field = "bucket" if problem.field == "folder" else "filename"
        raise to_exception(InvalidRef(field, problem.reason))
    return parsed.unwrap()


class CDNManager:
    """Direct transfers of CDN objects with the original's methods.

    Args:
        credentials: from ``CDNCredentials(...)`` (or any ``CdnConfig``).
        retry_policy: how hard to retry transient failures.

    ``upload`` and ``download`` return ``True`` or ``False``; ``last_failure`` holds the reason of
    the last ``False``. Invalid names raise ``InvalidNameError``; an upload without uploader keys
    raises ``AuthError``.
    """

    def __init__(self, credentials: CdnConfig, *, retry_policy: RetryPolicy | None = None) -> None:
        if not isinstance(credentials, CdnConfig):
            raise TypeError("CDNManager takes CDNCredentials(host, downloader_access_key, ...)")
        self._config = credentials
        self._reader: Cdn | None = None
        self._writer: Cdn | None = None
        # The S3 adapter does not retry (one retry layer, ours): this one drives it.
        self.retrier = Retrier(retry_policy or RetryPolicy(), SystemClock(), SystemRandom(), sleep)
        self.last_failure: Problem | None = None

    def __repr__(self) -> str:
        return f"CDNManager({self._config.endpoint!r}, {self._config.object_layout().describe()})"

    def _cdn(self, *, write: bool) -> Cdn:
        if write:
            if self._writer is None:
                self._writer = unwrap_or_raise(_built(self._config, write=True))
            return self._writer
        if self._reader is None:
            self._reader = unwrap_or_raise(_built(self._config, write=False))
        return self._reader

    def _outcome(self, what: str, result: IOResult[object, Problem]) -> bool:
        if is_successful(result):
            self.last_failure = None
            log.info("%s done", what)
            return True
        problem = unsafe_perform_io(result.failure())
        self.last_failure = problem
        log.error("%s failed: %s", what, problem.describe())
        return False

    def upload(
        self, bucket: str, filename: str, file_bytes: bytes | bytearray | memoryview
    ) -> bool:
        """Store ``file_bytes`` as object ``filename`` in ``bucket`` with the uploader keys."""
        ref = ref_for(bucket, filename)
        cdn = self._cdn(write=True)
        return self._outcome(
            f"upload of {ref.key}", upload_bytes(cdn, ref, file_bytes, self.retrier)
        )

    def download(
        self, bucket: str, filename: str, *, dest: str | os.PathLike[str] | None = None
    ) -> bool:
        """Fetch object ``filename`` from ``bucket`` into ``dest`` (default: ``./filename``)."""
        ref = ref_for(bucket, filename)
        target = Path(dest) if dest is not None else Path.cwd() / Path(filename).name
        cdn = self._cdn(write=False)
        return self._outcome(
            f"download of {ref.key}", download_resuming(cdn, ref, target, self.retrier)
        )

    def download_bytes(self, bucket: str, filename: str) -> bytes:
        """Object ``filename`` of ``bucket`` as bytes; raises a ``SplitvaultError`` on failure."""
        return unwrap_or_raise(
            download_bytes(self._cdn(write=False), ref_for(bucket, filename), self.retrier)
        )


def _built(config: CdnConfig, *, write: bool) -> IOResult[Cdn, Problem]:
    if write and config.write_keys is None:
        return IOFailure(
            AccessDenied("the CDN", "these credentials hold no uploader keys; uploads need them")
        )
    made = S3Cdn.from_config(config, write=write)
    if isinstance(made, Failure):
        return IOFailure(made.failure())
    cdn: Cdn = made.unwrap()
    return IOResult.from_value(cdn)


def download_resuming(
    cdn: Cdn, ref: ResourceRef, file_path: str | os.PathLike[str], retrier: Retrier
) -> IOResult[None, Problem]:
    """Download into a temp file beside ``file_path``; each retry resumes from the temp's length."""

    def fill(temp: Path) -> IOResult[None, Problem]:
        def once() -> IOResult[None, Problem]:
            try:
                start = temp.stat().st_size
            except OSError as error:
                return IOFailure(StorageFailed(str(temp), error.strerror or "cannot stat", "read"))
            return cdn.download_file(ref, temp, start=start).map(lambda _: None)

        return retrier.run(f"download of {ref.key}", once)

    return write_atomically(Path(file_path), fill)


def download_bytes(
    cdn: Cdn, ref: ResourceRef, retrier: Retrier, scratch: Path | None = None
) -> IOResult[bytes, Problem]:
    """An object's bytes, through a private temp file (the CDN port writes files) removed after."""
    try:
        directory = tempfile.mkdtemp(prefix="splitvault-cdn-", dir=scratch)
    except OSError as error:
        return IOFailure(StorageFailed(str(scratch or tempfile.gettempdir()), str(error)))
    target = Path(directory) / "object"
    try:
        return download_resuming(cdn, ref, target, retrier).bind(lambda _: _read(target))
    finally:
        target.unlink(missing_ok=True)
        os.rmdir(directory)


def upload_bytes(
    cdn: Cdn,
    ref: ResourceRef,
    data: Bytes,
    retrier: Retrier,
    scratch: Path | None = None,
) -> IOResult[None, Problem]:
    """Upload ``data`` as ``ref``'s object, through a private temp file removed after."""
    try:
        fd, name = tempfile.mkstemp(prefix="splitvault-cdn-", dir=scratch)
        with os.fdopen(fd, "wb") as sink:
            sink.write(data)
    except OSError as error:
        return IOFailure(StorageFailed(str(scratch or tempfile.gettempdir()), str(error)))
    try:
        return retrier.run(f"upload of {ref.key}", lambda: cdn.upload_file(ref, Path(name)))
    finally:
        Path(name).unlink(missing_ok=True)


def _read(path: Path) -> IOResult[bytes, Problem]:
    try:
        return IOResult.from_value(path.read_bytes())
    except OSError as error:
        return IOFailure(StorageFailed(str(path), error.strerror or "cannot read", "read"))
