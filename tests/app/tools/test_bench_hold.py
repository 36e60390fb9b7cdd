"""``freed_memory_held``: the bench holds back free page reporting only when told, and always
puts the kernel's value back. A directory stands in for /sys/module/page_reporting/parameters."""

from __future__ import annotations

from pathlib import Path

import pytest

from splitvault.app.tools.bench import freed_memory_held


def _parameters(tmp_path: Path, value: str) -> Path:
    (tmp_path / "min_free_ms").write_text(f"{value}\n", encoding="ascii")
    return tmp_path


def _value(parameters: Path) -> str:
    return (parameters / "min_free_ms").read_text(encoding="ascii").strip()


def test_without_free_page_reporting_nothing_is_said_or_changed(tmp_path: Path) -> None:
    with freed_memory_held(tmp_path / "absent", hold=True) as note:
        assert note == ""
    assert list(tmp_path.iterdir()) == []


def test_not_told_to_hold_it_only_says_how(tmp_path: Path) -> None:
    parameters = _parameters(tmp_path, "0")
    with freed_memory_held(parameters, hold=False) as note:
        assert _value(parameters) == "0"
    assert "free page reporting is on" in note and "--hold-freed-memory" in note


def test_held_for_the_body_and_restored_after(tmp_path: Path) -> None:
    parameters = _parameters(tmp_path, "0")
    with freed_memory_held(parameters, hold=True, hold_ms=120_000) as note:
        assert _value(parameters) == "120000"
    assert _value(parameters) == "0"
    assert "held for the run" in note and "0 -> 120000" in note


def test_restored_when_the_body_fails(tmp_path: Path) -> None:
    parameters = _parameters(tmp_path, "1500")
    with (
        pytest.raises(RuntimeError, match="row failed"),
        freed_memory_held(parameters, hold=True, hold_ms=120_000),
    ):
        assert _value(parameters) == "120000"
        raise RuntimeError("row failed")
    assert _value(parameters) == "1500"


def test_an_age_already_long_enough_is_left_alone(tmp_path: Path) -> None:
    parameters = _parameters(tmp_path, "300000")
    with freed_memory_held(parameters, hold=True, hold_ms=120_000) as note:
        assert _value(parameters) == "300000"
    assert "left as is" in note


def test_a_value_it_cannot_read_as_a_number_is_left_alone(tmp_path: Path) -> None:
    parameters = _parameters(tmp_path, "")
    with freed_memory_held(parameters, hold=True) as note:
        assert _value(parameters) == ""
    assert "not a number" in note


def test_a_value_it_may_not_write_leaves_a_note_and_the_run_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    parameters = _parameters(tmp_path, "0")
    knob = parameters / "min_free_ms"
    real_write = Path.write_text

    def refuse(self: Path, *args: object, **kwargs: object) -> int:
        if self == knob:
            raise PermissionError(13, "Permission denied")
        return real_write(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "write_text", refuse)
    with freed_memory_held(parameters, hold=True) as note:
        assert _value(parameters) == "0"
    assert "could not hold it (Permission denied)" in note
