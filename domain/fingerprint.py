"""The hardware fingerprint's pure half: canonical components, their keyed hash, and masking.

A probe reads raw text from the machine (``adapters/linux_hardware.py``); the functions here make
that text stable across reboots, driver updates and device enumeration order (trimmed, whitespace
collapsed, NFKC, case-folded, lists sorted) and turn the result into an app-keyed HMAC-SHA256, the
only form that leaves the process. The encoding under the HMAC is length-prefixed, so no two
different component sets can encode to the same bytes.
"""

from __future__ import annotations

import hashlib
import hmac
import unicodedata
from collections.abc import Mapping, Sequence

MACHINE_ID = "machine_id"
CPU_MODEL = "cpu_model"
MEMORY_GIB = "memory_gib"
GPU_PCI_IDS = "gpu_pci_ids"
NVIDIA_UUIDS = "nvidia_uuids"
ROOT_DISK_SERIAL = "root_disk_serial"

COMPONENT_NAMES: tuple[str, ...] = (
    CPU_MODEL,
    GPU_PCI_IDS,
    MACHINE_ID,
    MEMORY_GIB,
    NVIDIA_UUIDS,
    ROOT_DISK_SERIAL,
)

# Identifiers that single out one machine are shown masked; models and sizes are not identifying.
MASKED_COMPONENTS = frozenset({MACHINE_ID, NVIDIA_UUIDS, ROOT_DISK_SERIAL})

LIST_SEPARATOR = "\n"  # canonical items never contain a newline (whitespace is collapsed)
_DOMAIN = b"splitvault/hardware-fingerprint/v1\x00"

Components = tuple[tuple[str, str | None], ...]


def canonical_text(value: str) -> str:
    """One reading as the fingerprint sees it: NFKC, whitespace collapsed, trimmed, case-folded."""
    return " ".join(unicodedata.normalize("NFKC", value).split()).casefold()


def canonical_components(raw: Mapping[str, str | Sequence[str] | None]) -> Components:
    """Canonicalise raw probe readings into sorted ``(name, value)`` pairs.

    A text that is empty after canonicalisation counts as absent (``None``): an empty
    ``/etc/machine-id`` in a container says nothing about the machine. A list (GPU ids) is
    canonicalised item by item, empty items dropped, sorted and joined by newlines, so enumeration
    order does not matter; an empty list is present-but-empty (``""``), not absent.
    """
    result: list[tuple[str, str | None]] = []
    for name in sorted(raw):
        value = raw[name]
        if value is None:
            result.append((name, None))
        elif isinstance(value, str):
            text = canonical_text(value)
            result.append((name, text or None))
        else:
            items = sorted({canonical_text(item) for item in value} - {""})
            result.append((name, LIST_SEPARATOR.join(items)))
    return tuple(result)


def _length_prefixed(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + data


def encode_components(components: Components) -> bytes:
    """The unambiguous byte encoding of a component set (the HMAC's message)."""
    parts = [_DOMAIN, len(components).to_bytes(4, "big")]
    for name, value in components:
        parts.append(_length_prefixed(name.encode("utf-8")))
        if value is None:
            parts.append(b"\x00")
        else:
            parts.append(b"\x01" + _length_prefixed(value.encode("utf-8")))
    return b"".join(parts)


def fingerprint_value(app_key: bytes, components: Components) -> str:
    """The fingerprint that leaves the process: hex HMAC-SHA256 of the components under the app key.

    Components are sorted by name first, so the caller's order does not matter.
    """
    if not app_key:
        raise ValueError("the fingerprint needs a non-empty app key")
    message = encode_components(tuple(sorted(components, key=lambda pair: pair[0])))
    return hmac.new(app_key, message, hashlib.sha256).hexdigest()


def mask(component_name: str, value: str | None) -> str:
    """A component as it may be shown to a person: identifying values keep only a hint."""
    if value is None:
        return "(absent)"
    if value == "":
        return "(none)"
    if component_name not in MASKED_COMPONENTS:
        return value.replace(LIST_SEPARATOR, ", ")
    return ", ".join(_mask_one(item) for item in value.split(LIST_SEPARATOR))


def _mask_one(item: str) -> str:
    # Keep the last four characters only when at least twelve stay hidden.
    if len(item) < 16:
        return "*" * len(item)
    return "*" * (len(item) - 4) + item[-4:]
