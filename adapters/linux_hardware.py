"""The Linux hardware probe behind the ``Hardware`` port.

It reads the machine-id, the CPU model (``/proc/cpuinfo``), the memory size rounded up to whole GiB
(``/proc/meminfo``), the PCI vendor:device ids of display controllers (``/sys/bus/pci``), NVIDIA
GPU UUIDs (``nvidia-smi -L``, when the binary exists) and the serial number of the disk holding
``/`` (via ``/proc/self/mountinfo`` and ``/sys/dev/block``). A source that is missing or unreadable
(common in containers) is recorded as absent, never raised. Canonicalisation and the app-keyed HMAC
are the pure functions of ``domain.fingerprint``; only the HMAC is meant to leave the process.
"""

from __future__ import annotations

import logging
import math
import re
import shutil
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

from splitvault.domain import fingerprint as fp
from splitvault.domain.ports import Fingerprint

log = logging.getLogger("splitvault.linux_hardware")

Run = Callable[[Sequence[str]], str | None]
"""Run a command and return its standard output, or ``None`` when it is absent or fails."""

COMMAND_TIMEOUT_SECONDS = 10.0
KIB_PER_GIB = 1024 * 1024
_CPU_MODEL_KEYS = ("model name", "processor", "cpu model", "hardware")
_GPU_UUID = re.compile(r"\(UUID:\s*(GPU-[^\s)]+)\)")


def run_command(argv: Sequence[str]) -> str | None:
    """Run ``argv`` (found on ``PATH``) with a timeout; ``None`` when missing, failing or stuck."""
    binary = shutil.which(argv[0])
    if binary is None:
        return None
    try:
        completed = subprocess.run(  # noqa: S603 -- fixed argv, no shell
            [binary, *argv[1:]],
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_SECONDS,
            check=True,
        )
    except (OSError, subprocess.SubprocessError) as error:
        log.debug("%s failed: %s", argv[0], type(error).__name__)
        return None
    return completed.stdout


class LinuxHardware:
    """Probe a Linux machine for its hardware fingerprint.

    Args:
        app_key: the application's HMAC key; the fingerprint is meaningless without it.
        root: the file system root to read ``/etc``, ``/proc`` and ``/sys`` under (tests pass a
            fake tree).
        run: how to run ``nvidia-smi``; tests pass a fake.

    Never fails: every unreadable source becomes an absent component.
    """

    def __init__(self, app_key: bytes, *, root: Path = Path("/"), run: Run = run_command) -> None:
        if not app_key:
            raise ValueError("LinuxHardware needs a non-empty app key")
        self._app_key = app_key
        self._root = root
        self._run = run

    def __repr__(self) -> str:
        return f"LinuxHardware(root={str(self._root)!r})"

    def fingerprint(self) -> Fingerprint:
        """Probe every source and return the canonical components with their HMAC."""
        components = fp.canonical_components(self.raw_components())
        return Fingerprint(components, fp.fingerprint_value(self._app_key, components))

    def raw_components(self) -> dict[str, str | Sequence[str] | None]:
        """The readings before canonicalisation (``None`` where a source is absent)."""
        return {
            fp.MACHINE_ID: self._machine_id(),
            fp.CPU_MODEL: self._cpu_model(),
            fp.MEMORY_GIB: self._memory_gib(),
            fp.GPU_PCI_IDS: self._gpu_pci_ids(),
            fp.NVIDIA_UUIDS: self._nvidia_uuids(),
            fp.ROOT_DISK_SERIAL: self._root_disk_serial(),
        }

    def _path(self, absolute: str) -> Path:
        return self._root / absolute.lstrip("/")

    def _read(self, absolute: str | Path) -> str | None:
        path = absolute if isinstance(absolute, Path) else self._path(absolute)
        try:
            return path.read_text(encoding="utf-8", errors="replace")
        except OSError as error:
            log.debug("hardware source %s unreadable: %s", path, error.strerror)
            return None

    def _machine_id(self) -> str | None:
        for candidate in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
            text = self._read(candidate)
            if text is not None and text.strip():
                return text
        return None

    def _cpu_model(self) -> str | None:
        text = self._read("/proc/cpuinfo")
        if text is None:
            return None
        fields: dict[str, str] = {}
        for line in text.splitlines():
            key, sep, value = line.partition(":")
            if sep:
                # setdefault: the first CPU's line wins; the others repeat it.
                fields.setdefault(key.strip().casefold(), value.strip())
        for key in _CPU_MODEL_KEYS:
            value = fields.get(key, "")
            if value and not value.isdigit():  # "processor: 0" on x86 is an index, not a model
                return value
        return None

    def _memory_gib(self) -> str | None:
        text = self._read("/proc/meminfo")
        if text is None:
            return None
        for line in text.splitlines():
            if line.startswith("MemTotal:"):
                parts = line.split()
                if len(parts) >= 2 and parts[1].isdigit():
                    # MemTotal is physical memory minus what the kernel reserves, which moves
                    # between kernel versions; rounding up lands back on the installed size.
                    return str(math.ceil(int(parts[1]) / KIB_PER_GIB))
        return None

    def _gpu_pci_ids(self) -> list[str] | None:
        devices = self._path("/sys/bus/pci/devices")
        try:
            entries = sorted(devices.iterdir())
        except OSError:
            log.debug("hardware source %s unreadable", devices)
            return None
        ids: list[str] = []
        for device in entries:
            device_class = self._read(device / "class")
            # PCI base class 0x03 is "display controller" (VGA, 3D, other).
            if device_class is None or not device_class.strip().lower().startswith("0x03"):
                continue
            vendor = self._read(device / "vendor")
            product = self._read(device / "device")
            if vendor is None or product is None:
                continue
            ids.append(f"{_hex_id(vendor)}:{_hex_id(product)}")
        return ids

    def _nvidia_uuids(self) -> list[str] | None:
        output = self._run(["nvidia-smi", "-L"])
        if output is None:
            return None
        # MIG instances are left out: they come and go with reconfiguration.
        return _GPU_UUID.findall(output)

    def _root_disk_serial(self) -> str | None:
        device = self._root_device_number()
        if device is None:
            return None
        try:
            block = self._path(f"/sys/dev/block/{device}").resolve(strict=True)
        except OSError:
            log.debug("no block device %s for / (overlay or network root?)", device)
            return None
        if (block / "partition").exists():
            block = block.parent
        for candidate in (block / "serial", block / "device" / "serial"):
            text = self._read(candidate)
            if text is not None and text.strip():
                return text
        return self._vpd_serial(block / "device" / "vpd_pg80")

    def _vpd_serial(self, path: Path) -> str | None:
        try:
            page = path.read_bytes()
        except OSError:
            return None
        # SCSI VPD page 0x80: a 4-byte header (length in byte 3), then the serial number in ASCII.
        if len(page) < 4:
            return None
        serial = page[4 : 4 + page[3]].decode("ascii", errors="replace").strip()
        return serial or None

    def _root_device_number(self) -> str | None:
        text = self._read("/proc/self/mountinfo")
        if text is None:
            return None
        device: str | None = None
        for line in text.splitlines():
            fields = line.split()
            if len(fields) >= 5 and fields[4] == "/":
                device = fields[2]  # the last mount on / is the one in effect
        return device


def _hex_id(text: str) -> str:
    value = text.strip().lower()
    return value.removeprefix("0x")
