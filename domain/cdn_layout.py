"""Where a resource's big part lives in S3-compatible storage: the bucket and the object key.

Two layouts exist. ``SharedBucket`` is splitvault's: one bucket, keys ``folder/name.big``.
``BucketPerFolder`` is the original client's: the folder is the bucket and ``name.big`` sits at its
root, so objects the original published are reachable without copying them. Pure: the S3 adapter
asks a layout for ``(bucket, key)`` and never builds either itself.
"""

from __future__ import annotations

import attrs

from splitvault.domain.ref import ResourceRef

BIG_SUFFIX = ".big"


@attrs.frozen
class SharedBucket:
    """Every big part in ``bucket`` under ``folder/name.big`` (the default)."""

    bucket: str

    def locate(self, ref: ResourceRef) -> tuple[str, str]:
        """``(bucket, key)`` of the big part of ``ref``."""
        return self.bucket, ref.key

    def describe(self) -> str:
        return f"bucket {self.bucket}"


@attrs.frozen
class BucketPerFolder:
    """The original layout: bucket ``folder``, key ``name.big``."""

    def locate(self, ref: ResourceRef) -> tuple[str, str]:
        """``(bucket, key)`` of the big part of ``ref``."""
        return ref.folder, ref.name + BIG_SUFFIX

    def describe(self) -> str:
        return "a bucket per folder"


ObjectLayout = SharedBucket | BucketPerFolder
