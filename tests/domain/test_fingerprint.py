"""The hardware fingerprint: stable under cosmetic changes, sensitive to real ones, never raising.

The pure half (canonical components, HMAC, masking) is property-tested; the Linux probe runs on a
fake /etc, /proc and /sys tree built in a temp directory, with a fake ``nvidia-smi``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from splitvault.adapters.fixed_hardware import FixedHardware
from splitvault.adapters.linux_hardware import LinuxHardware, Run
from splitvault.domain import fingerprint as fp

APP_KEY = b"splitvault-test-app-key"

BASE: dict[str, str | Sequence[str] | None] = {
    fp.MACHINE_ID: "3d1219c7c4c5404aaa1f6d2a48adfda4",
    fp.CPU_MODEL: "Intel(R) Xeon(R) Gold 6248R CPU @ 3.00GHz",
    fp.MEMORY_GIB: "64",
    fp.GPU_PCI_IDS: ["10de:2204", "10de:1eb8", "8086:3e92"],
    fp.NVIDIA_UUIDS: ["GPU-5d7a1b2c-aaaa-bbbb-cccc-0123456789ab", "GPU-00000000-1111-2222"],
    fp.ROOT_DISK_SERIAL: "S4EWNX0N123456",
}


def value(raw: Mapping[str, str | Sequence[str] | None]) -> str:
    """The fingerprint value of raw readings."""
    return fp.fingerprint_value(APP_KEY, fp.canonical_components(raw))


whitespace = st.sampled_from([" ", "  ", "\t", "\n", " \t "])


@given(
    st.permutations(list(BASE[fp.GPU_PCI_IDS] or [])),
    st.permutations(list(BASE[fp.NVIDIA_UUIDS] or [])),
)
def test_reordered_gpus_do_not_change_the_fingerprint(gpus: list[str], uuids: list[str]) -> None:
    """GPU enumeration order (PCI ids and NVIDIA UUIDs) does not matter."""
    assert value({**BASE, fp.GPU_PCI_IDS: gpus, fp.NVIDIA_UUIDS: uuids}) == value(BASE)


@given(whitespace, whitespace, st.sampled_from([str.upper, str.lower, str.swapcase, str.title]))
def test_whitespace_and_case_do_not_change_the_fingerprint(
    before: str, after: str, recase: Callable[[str], str]
) -> None:
    """Leading/trailing whitespace, inner runs of spaces and letter case are not identity."""
    noisy = {
        name: (
            before + recase(reading).replace(" ", "  ") + after
            if isinstance(reading, str)
            else [before + recase(item) + after for item in reading or []]
        )
        for name, reading in BASE.items()
    }
    assert value(noisy) == value(BASE)


@given(st.sampled_from(sorted(BASE)), st.text(min_size=1, max_size=20))
def test_changing_a_component_changes_the_fingerprint(name: str, suffix: str) -> None:
    """Any real change to one component (after canonicalisation) yields another fingerprint."""
    reading = BASE[name]
    changed: str | list[str]
    if isinstance(reading, str):
        changed = reading + "-" + suffix
    else:
        changed = [*(reading or []), "extra-" + suffix]
    other = {**BASE, name: changed}
    if fp.canonical_components(other) != fp.canonical_components(BASE):
        assert value(other) != value(BASE)


def test_absent_differs_from_present_and_from_empty() -> None:
    """An absent source, an empty GPU list and a present one are three different fingerprints."""
    absent = value({**BASE, fp.GPU_PCI_IDS: None})
    empty = value({**BASE, fp.GPU_PCI_IDS: []})
    assert len({absent, empty, value(BASE)}) == 3


@given(
    st.lists(st.tuples(st.text(max_size=6), st.none() | st.text(max_size=6)), max_size=4),
    st.lists(st.tuples(st.text(max_size=6), st.none() | st.text(max_size=6)), max_size=4),
)
def test_encoding_is_unambiguous(
    first: list[tuple[str, str | None]], second: list[tuple[str, str | None]]
) -> None:
    """Different component tuples never encode to the same bytes (no concatenation collisions)."""
    if tuple(first) != tuple(second):
        assert fp.encode_components(tuple(first)) != fp.encode_components(tuple(second))


def test_the_key_matters_and_an_empty_key_is_refused() -> None:
    """Another app key gives another fingerprint; an empty key is a programming error."""
    components = fp.canonical_components(BASE)
    assert fp.fingerprint_value(b"other", components) != fp.fingerprint_value(APP_KEY, components)
    with pytest.raises(ValueError, match="app key"):
        fp.fingerprint_value(b"", components)


def test_mask_hides_identifiers_but_not_models() -> None:
    """machine-id, disk serial and GPU UUIDs are masked for display; CPU model and sizes are not."""
    components = dict(fp.canonical_components(BASE))
    machine = fp.mask(fp.MACHINE_ID, components[fp.MACHINE_ID])
    assert "3d1219c7" not in machine
    assert machine.endswith("fda4")
    assert set(machine[:-4]) == {"*"}
    assert "s4ewnx0n1234" not in fp.mask(fp.ROOT_DISK_SERIAL, components[fp.ROOT_DISK_SERIAL])
    assert "5d7a1b2c" not in fp.mask(fp.NVIDIA_UUIDS, components[fp.NVIDIA_UUIDS])
    assert fp.mask(fp.CPU_MODEL, components[fp.CPU_MODEL]) == components[fp.CPU_MODEL]
    assert fp.mask(fp.GPU_PCI_IDS, components[fp.GPU_PCI_IDS]) == "10de:1eb8, 10de:2204, 8086:3e92"
    assert fp.mask(fp.MACHINE_ID, None) == "(absent)"


# -- the Linux probe on a fake tree ---------------------------------------------------------------

CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Gold 6248R CPU @ 3.00GHz

processor\t: 1
model name\t: Intel(R) Xeon(R) Gold 6248R CPU @ 3.00GHz
"""

MEMINFO = "MemTotal:       65536000 kB\nMemFree:         1234567 kB\n"

MOUNTINFO = """22 1 0:21 / /proc rw - proc proc rw
25 1 259:2 / / rw,relatime shared:1 - ext4 /dev/nvme0n1p2 rw
30 25 259:1 / /boot rw - vfat /dev/nvme0n1p1 rw
"""

NVIDIA_SMI = """GPU 0: NVIDIA GeForce RTX 3090 (UUID: GPU-5d7a1b2c-aaaa-bbbb-cccc-0123456789ab)
GPU 1: NVIDIA A100-SXM4-40GB (UUID: GPU-00000000-1111-2222)
  MIG 1g.5gb      Device  0: (UUID: MIG-11111111-2222-3333-4444-555555555555)
"""


def put(root: Path, relative: str, text: str | bytes) -> None:
    """Write a file of the fake tree."""
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)


def pci_device(root: Path, address: str, device_class: str, vendor: str, device: str) -> None:
    """A fake /sys/bus/pci/devices entry."""
    base = f"sys/bus/pci/devices/{address}"
    put(root, f"{base}/class", device_class + "\n")
    put(root, f"{base}/vendor", vendor + "\n")
    put(root, f"{base}/device", device + "\n")


def fake_machine(
    root: Path, *, gpu_order: Sequence[str] = ("0000:01:00.0", "0000:02:00.0")
) -> None:
    """A whole fake machine: machine-id, cpuinfo, meminfo, two GPUs and a NIC, an NVMe root."""
    put(root, "etc/machine-id", "3d1219c7c4c5404aaa1f6d2a48adfda4\n")
    put(root, "proc/cpuinfo", CPUINFO)
    put(root, "proc/meminfo", MEMINFO)
    put(root, "proc/self/mountinfo", MOUNTINFO)
    ids = {gpu_order[0]: ("0x10de", "0x2204"), gpu_order[1]: ("0x10de", "0x1eb8")}
    for address, (vendor, device) in ids.items():
        pci_device(root, address, "0x030000", vendor, device)
    pci_device(root, "0000:03:00.0", "0x020000", "0x8086", "0x1533")  # a NIC, not a GPU
    disk = root / "sys/devices/pci0000:00/nvme/nvme0/nvme0n1"
    (disk / "nvme0n1p2").mkdir(parents=True)
    (disk / "nvme0n1p2" / "partition").write_text("2\n")
    (disk / "device").mkdir()
    (disk / "device" / "serial").write_text("S4EWNX0N123456      \n")
    (root / "sys/dev/block").mkdir(parents=True)
    (root / "sys/dev/block/259:2").symlink_to(
        "../../devices/pci0000:00/nvme/nvme0/nvme0n1/nvme0n1p2"
    )


def smi(output: str | None) -> Run:
    """A fake command runner answering ``nvidia-smi -L`` with ``output``."""

    def run(argv: Sequence[str]) -> str | None:
        assert list(argv) == ["nvidia-smi", "-L"]
        return output

    return run


def test_probe_reads_every_source_of_a_fake_tree(tmp_path: Path) -> None:
    """Every component is read from the fake tree; MIG instances and NICs are left out."""
    fake_machine(tmp_path)
    raw = LinuxHardware(APP_KEY, root=tmp_path, run=smi(NVIDIA_SMI)).raw_components()
    assert raw == {
        fp.MACHINE_ID: "3d1219c7c4c5404aaa1f6d2a48adfda4\n",
        fp.CPU_MODEL: "Intel(R) Xeon(R) Gold 6248R CPU @ 3.00GHz",
        fp.MEMORY_GIB: "63",  # 65536000 kB is 62.5 GiB: rounded up
        fp.GPU_PCI_IDS: ["10de:2204", "10de:1eb8"],
        fp.NVIDIA_UUIDS: ["GPU-5d7a1b2c-aaaa-bbbb-cccc-0123456789ab", "GPU-00000000-1111-2222"],
        fp.ROOT_DISK_SERIAL: "S4EWNX0N123456      \n",
    }


def test_probe_is_stable_when_gpus_enumerate_in_another_order(tmp_path: Path) -> None:
    """The same machine with its GPUs on swapped PCI addresses has the same fingerprint."""
    fake_machine(tmp_path / "a")
    fake_machine(tmp_path / "b", gpu_order=("0000:02:00.0", "0000:01:00.0"))
    first = LinuxHardware(APP_KEY, root=tmp_path / "a", run=smi(NVIDIA_SMI)).fingerprint()
    second = LinuxHardware(APP_KEY, root=tmp_path / "b", run=smi(NVIDIA_SMI)).fingerprint()
    assert first == second
    assert len(first.value) == 64


def test_probe_changes_when_the_machine_id_changes(tmp_path: Path) -> None:
    """Another machine-id is another machine."""
    fake_machine(tmp_path)
    before = LinuxHardware(APP_KEY, root=tmp_path, run=smi(None)).fingerprint()
    put(tmp_path, "etc/machine-id", "ffffffffffffffffffffffffffffffff\n")
    after = LinuxHardware(APP_KEY, root=tmp_path, run=smi(None)).fingerprint()
    assert before.value != after.value


def test_missing_sources_are_recorded_as_absent(tmp_path: Path) -> None:
    """An empty root (a bare container) yields every component absent, and still a fingerprint."""
    put(tmp_path, "etc/machine-id", "\n")  # containers often ship an empty machine-id
    put(tmp_path, "proc/self/mountinfo", "1 0 0:50 / / rw - overlay overlay rw\n")
    hardware = LinuxHardware(APP_KEY, root=tmp_path, run=smi(None))
    printed = hardware.fingerprint()
    assert dict(printed.components) == dict.fromkeys(fp.COMPONENT_NAMES)
    assert len(printed.value) == 64
    assert "components" not in repr(printed)


def test_root_disk_serial_from_scsi_vpd_page(tmp_path: Path) -> None:
    """A SATA/SCSI disk's serial comes from VPD page 0x80 when there is no serial file."""
    put(tmp_path, "proc/self/mountinfo", "25 1 8:1 / / rw - ext4 /dev/sda1 rw\n")
    disk = tmp_path / "sys/block/sda"
    (disk / "sda1").mkdir(parents=True)
    (disk / "sda1" / "partition").write_text("1\n")
    serial = b"WD-WCC4N1234567"
    put(tmp_path, "sys/block/sda/device/vpd_pg80", bytes([0, 0x80, 0, len(serial)]) + serial)
    (tmp_path / "sys/dev/block").mkdir(parents=True)
    (tmp_path / "sys/dev/block/8:1").symlink_to("../../block/sda/sda1")
    raw = LinuxHardware(APP_KEY, root=tmp_path, run=smi(None)).raw_components()
    assert raw[fp.ROOT_DISK_SERIAL] == "WD-WCC4N1234567"


def test_arm_cpuinfo_falls_back_to_other_model_fields(tmp_path: Path) -> None:
    """Without "model name", the first descriptive CPU field is used; a bare index is not."""
    put(tmp_path, "proc/cpuinfo", "processor : 0\nHardware : BCM2835\n")
    raw = LinuxHardware(APP_KEY, root=tmp_path, run=smi(None)).raw_components()
    assert raw[fp.CPU_MODEL] == "BCM2835"


def test_fixed_hardware_answers_its_value() -> None:
    """FixedHardware reports the value it was given, every time."""
    hardware = FixedHardware("f" * 64)
    assert hardware.fingerprint().value == "f" * 64
    assert hardware.fingerprint() == hardware.fingerprint()
    with pytest.raises(ValueError, match="non-empty"):
        FixedHardware("")
