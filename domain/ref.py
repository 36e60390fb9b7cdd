"""Resource references: the only way a folder or name reaches a path, a URL or an object key.

A ``ResourceRef`` is validated when it is built, so code holding one never has to ask whether the
name is safe to join onto a directory. Use ``ResourceRef.parse`` for input from people or peers
(it returns a ``Result``); the constructor raises ``ValueError`` for programming errors.
"""

from __future__ import annotations

import unicodedata

import attrs
from returns.result import Failure, Result, Success

from splitvault.domain.errors import InvalidRef

MAX_NAME_BYTES = 200  # leaves room under NAME_MAX (255) for ".big" and temp-file suffixes


def check_name(field: str, value: object) -> InvalidRef | None:
    """Return why ``value`` cannot be a folder or resource name, or ``None`` when it can."""
    if not isinstance(value, str):
        return InvalidRef(field, f"expected text, got {type(value).__name__}")
    if not value:
        return InvalidRef(field, "must not be empty")
    if len(value.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        return InvalidRef(field, f"longer than {MAX_NAME_BYTES} bytes in UTF-8")
    if value in {".", ".."}:
        return InvalidRef(field, f"{value!r} is a path component, not a name")
    if "/" in value or "\\" in value:
        return InvalidRef(field, "must not contain a path separator")
    if value.startswith("."):
        return InvalidRef(field, "must not start with a dot (reserved for temp and lock files)")
    if value != value.strip():
        return InvalidRef(field, "must not start or end with whitespace")
    if "\ufffd" in value:
        # U+FFFD is what a lossy decoder leaves for invalid UTF-8 (a server decoding a URL, a
        # terminal): different byte strings would collide on one name.
        return InvalidRef(field, "contains U+FFFD, the mark of bytes that were not valid UTF-8")
    for char in value:
        category = unicodedata.category(char)
        if category.startswith("C"):
            return InvalidRef(field, f"contains the control character U+{ord(char):04X}")
        if category in {"Zl", "Zp"} or (category == "Zs" and char != " "):
            return InvalidRef(field, f"contains the unusual space U+{ord(char):04X}")
    if unicodedata.normalize("NFKC", value) != value:
        # Full-width letters, ligatures and other compatibility forms look like plain names.
        return InvalidRef(field, "is not in NFKC normal form (look-alike characters)")
    return None


def _validate(_instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    problem = check_name(attribute.name, value)
    if problem is not None:
        raise ValueError(problem.describe())


@attrs.frozen
class ResourceRef:
    """A validated (folder, name) pair naming one resource.

    Args:
        folder: the API folder the resource lives in.
        name: the resource's file name within the folder.

    Raises:
        ValueError: when either part is unsafe; use ``parse`` for untrusted input.
    """

    folder: str = attrs.field(validator=_validate)
    name: str = attrs.field(validator=_validate)
    # The big part's version (the header's file id, hex) when the ref names one object of it:
    # versioned object keys let a re-publish write beside the current version, never over it.
    version: str | None = attrs.field(
        default=None, kw_only=True, validator=attrs.validators.optional(_validate)
    )

    @classmethod
    def parse(cls, folder: object, name: object) -> Result[ResourceRef, InvalidRef]:
        """Build a ref from untrusted input, or say which part is wrong."""
        problem = check_name("folder", folder) or check_name("name", name)
        if problem is not None:
            return Failure(problem)
        assert isinstance(folder, str)
        assert isinstance(name, str)
        return Success(cls(folder, name))

    def at(self, version: str) -> ResourceRef:
        """This resource's big part of ``version``: its object key names the version."""
        return ResourceRef(self.folder, self.name, version=version)

    @property
    def unversioned(self) -> ResourceRef:
        """The resource itself (what the API and the cache are keyed by)."""
        return ResourceRef(self.folder, self.name)

    @property
    def key(self) -> str:
        """The object key and relative path of the big part: ``folder/name/<version>.big`` for
        a version, ``folder/name.big`` (the original's key) without one."""
        if self.version is not None:
            return f"{self.folder}/{self.name}/{self.version}.big"
        return f"{self.folder}/{self.name}.big"

    def __str__(self) -> str:
        return f"{self.folder}/{self.name}"


def parse_folder(folder: object) -> Result[str, InvalidRef]:
    """Validate a folder on its own (listing a folder takes no name)."""
    problem = check_name("folder", folder)
    if problem is not None:
        return Failure(problem)
    assert isinstance(folder, str)
    return Success(folder)
