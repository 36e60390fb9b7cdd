"""``CDNManager`` and ``CDNCredentials``: direct big-part transfers, under the original names.

A manager built with read keys cannot upload; every call retries through our one retry layer and
raises a ``SplitvaultError`` subclass on failure.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import attrs
from returns.io import IOFailure, IOResult
from returns.result import Failure

from splitvault.adapters.s3_cdn import S3Cdn
from splitvault.adapters.system import SystemClock, SystemRandom, sleep
from splitvault.app.client.errors import to_exception, unwrap_or_raise
from splitvault.app.client.retrying import Retrier
from splitvault.app.client.usecases import write_atomically
from splitvault.domain.config import S3Keys
from splitvault.domain.errors import ConfigInvalid, Problem, StorageFailed
from splitvault.domain.ports import Cdn
from splitvault.domain.ref import ResourceRef
from splitvault.domain.retry import RetryPolicy


@attrs.frozen
class CDNCredentials:
    """Keys for the S3-compatible CDN; the secret is hidden from reprs."""

    endpoint_url: str
    bucket: str
    access_key_id: str
    secret_access_key: str = attrs.field(repr=False)
    region: str = "us-east-1"

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> CDNCredentials:
        """Build from the original client's dict (``endpoint_url``/``endpoint``, ``bucket``...)."""
        aliases = {
            "endpoint_url": ("endpoint_url", "endpoint"),
            "bucket": ("bucket", "bucket_name"),
            "access_key_id": ("access_key_id", "aws_access_key_id", "access_key"),
            "secret_access_key": ("secret_access_key", "aws_secret_access_key", "secret_key"),
            "region": ("region", "region_name"),
        }
        values: dict[str, str] = {}
        for field, names in aliases.items():
            for name in names:
                value = data.get(name)
                if isinstance(value, str) and value:
                    values[field] = value
                    break
            else:
                if field != "region":
                    raise to_exception(ConfigInvalid(field, "missing from the CDN credentials"))
        return cls(**values)


def ref_from_key(key: str) -> ResourceRef:
    """``folder/name`` or ``folder/name.big`` → a ref, or ``InvalidNameError``."""
    stripped = key.removesuffix(".big")
    folder, _, name = stripped.partition("/")
    parsed = ResourceRef.parse(folder, name)
    if isinstance(parsed, Failure):
        raise to_exception(parsed.failure())
    return parsed.unwrap()


class CDNManager:
    """Direct big-part transfers to and from the CDN by key (``folder/name.big``).

    Args:
        credentials: the CDN keys; a manager built with read keys cannot upload.
        writable: whether ``credentials`` are write keys.
    """

    def __init__(self, credentials: CDNCredentials, *, writable: bool = False) -> None:
        keys = S3Keys(credentials.access_key_id, credentials.secret_access_key)
        build = S3Cdn.writer if writable else S3Cdn.reader
        self.cdn: Cdn = build(
            credentials.endpoint_url, credentials.bucket, keys, region=credentials.region
        )
        # The S3 adapter does not retry (one retry layer, ours): this one drives it.
        self.retrier = Retrier(RetryPolicy(), SystemClock(), SystemRandom(), sleep)

    def __repr__(self) -> str:
        return f"CDNManager({self.cdn!r})"

    def upload_to_cdn(self, file_path: str | os.PathLike[str], key: str) -> None:
        """Upload a file as the big part under ``key``."""
        ref = ref_from_key(key)
        unwrap_or_raise(
            self.retrier.run(f"upload of {key}", lambda: self.cdn.upload_file(ref, Path(file_path)))
        )

    def download_from_cdn(self, key: str, file_path: str | os.PathLike[str]) -> None:
        """Download the big part under ``key`` into ``file_path`` (atomically)."""
        unwrap_or_raise(download_resuming(self.cdn, ref_from_key(key), file_path, self.retrier))


def download_resuming(
    cdn: Cdn, ref: ResourceRef, file_path: str | os.PathLike[str], retrier: Retrier
) -> IOResult[None, Problem]:
    """Download into a temp file beside ``file_path``; each retry resumes from the temp's length."""

    def fill(temp: Path) -> IOResult[None, Problem]:
        def once() -> IOResult[None, Problem]:
            try:
                start = temp.stat().st_size
            except OSError as error:
                return IOFailure(StorageFailed(str(temp), error.strerror or "cannot stat"))
            return cdn.download_file(ref, temp, start=start).map(lambda _: None)

        return retrier.run(f"download of {ref.key}", once)

    return write_atomically(Path(file_path), fill)
