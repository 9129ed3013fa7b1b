# The ESP32 layer's host-side checks: the fakes of machine/esp32 match the published stubs (mypy's
# stubtest), `make lint`'s type check fails on an API a chip lacks, and the RTC's date arithmetic.

import datetime
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tools import typecheck
from tools.deploy import board_chips

ROOT = Path(__file__).resolve().parent.parent
FAKES = ROOT / "host_tests" / "fakes"
STUBS = Path(sys.prefix) / "stubs"
CHIPS = sorted(set(board_chips().values()))


def _stubs(chip):
    d = STUBS / chip
    if not (d / "machine.pyi").is_file():
        pytest.fail(f"the {chip} stubs are not installed in {d}; run `make venv`")
    return d


@pytest.fixture(scope="module")
def hal_esp32():
    """firmware/hal/esp32.py imported on CPython over the fakes, which are then taken off the
    import path again so no other test sees a `machine` module."""
    sys.path.insert(0, str(FAKES))
    try:
        from hal import esp32 as H
    finally:
        sys.path.remove(str(FAKES))
        for name in ("machine", "esp32"):
            sys.modules.pop(name, None)
    return H


@pytest.mark.parametrize("chip", CHIPS)
def test_fakes_have_the_stubs_names_and_signatures(chip, tmp_path):
    # stubtest imports the fakes and compares every name they define with the chip's stubs.
    # Allowed: what the fakes leave out ("not present at runtime"), and positional-only
    # markers, which MicroPython's parser does not accept in a def.
    stubs = _stubs(chip)
    cfg = tmp_path / "mypy.ini"
    cfg.write_text(
        "[mypy]\ncache_dir = {}\n[mypy-machine,vfs,_mpy_shed.*]\nignore_errors = True\n".format(
            tmp_path / "cache"
        )
    )
    env = dict(os.environ, PYTHONPATH=str(FAKES), MYPYPATH=str(stubs))
    proc = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "machine", "esp32", "--concise",
         "--ignore-positional-only", "--custom-typeshed-dir", str(stubs),
         "--mypy-config-file", str(cfg)],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    assert lines, proc.stderr  # stubtest ran and compared something
    wrong = [ln for ln in lines if not ln.endswith("is not present at runtime")]
    assert wrong == [], "\n".join(wrong + [proc.stderr])
    # The classes the HAL uses are all there (a fake missing one would be listed as absent).
    absent = {ln.split()[0] for ln in lines}
    for name in ("machine.Pin", "machine.ADC", "machine.PWM", "machine.Timer", "machine.RTC",
                 "machine.WDT", "machine.reset_cause", "machine.reset", "esp32.RMT",
                 "esp32.RMT.write_pulses", "esp32.RMT.wait_done", "machine.Pin.irq"):  # fmt: skip
        assert name not in absent, name


@given(st.dates(datetime.date(1970, 1, 1), datetime.date(2200, 12, 31)))
def test_civil_dates_round_trip(hal_esp32, d):
    H = hal_esp32
    n = H.days_from_civil(d.year, d.month, d.day)
    assert n == (d - datetime.date(1970, 1, 1)).days
    assert H.civil_from_days(n) == (d.year, d.month, d.day)


def _scratch_tree(tmp_path, boards, scratch):
    """A copy of the firmware and the named boards, with one extra HAL file."""
    for part in ("firmware", "tools"):
        shutil.copytree(ROOT / part, tmp_path / part, ignore=shutil.ignore_patterns("__pycache__"))
    for b in boards:
        shutil.copytree(ROOT / "boards" / b, tmp_path / "boards" / b)
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    (tmp_path / "firmware" / "hal" / "scratch.py").write_text(scratch)
    return tmp_path


def test_typecheck_reports_calls_the_chip_does_not_have(tmp_path, capsys):
    # A machine function that exists nowhere fails every board; esp32.wake_on_ulp exists on the
    # classic ESP32 but not on the C3, so only the C3 board fails on it.
    root = _scratch_tree(
        tmp_path,
        ["esp32_devkitc", "esp32_c3"],
        "# scratch\nimport esp32\nimport machine\n\n\ndef f():\n"
        "    machine.no_such_api()\n    esp32.wake_on_ulp(True)\n",
    )
    assert typecheck.main(["--root", str(root), "--stubs", str(STUBS)]) == 1
    out = capsys.readouterr()
    per_board = out.out.split("--- ")
    dev = next(p for p in per_board if p.startswith("esp32_devkitc"))
    c3 = next(p for p in per_board if p.startswith("esp32_c3"))
    assert 'scratch.py:7: error: Module has no attribute "no_such_api"' in dev
    assert 'scratch.py:7: error: Module has no attribute "no_such_api"' in c3
    assert "wake_on_ulp" not in dev
    assert 'scratch.py:8: error: Module has no attribute "wake_on_ulp"' in c3
    assert "typecheck: mypy found problems for esp32_c3, esp32_devkitc" in out.err


def test_typecheck_passes_on_the_firmware(tmp_path, capsys):
    root = _scratch_tree(tmp_path, ["esp32_s3"], "# scratch\nimport machine\n\nX = 1\n")
    assert typecheck.main(["--root", str(root), "--stubs", str(STUBS)]) == 0
    assert "esp32_s3 (esp32s3)" in capsys.readouterr().out


def test_typecheck_says_when_stubs_are_missing(tmp_path, capsys):
    root = _scratch_tree(tmp_path, ["esp32_s3"], "# scratch\n")
    assert typecheck.main(["--root", str(root), "--stubs", str(tmp_path / "none")]) == 1
    out = capsys.readouterr().out
    assert "the MicroPython stubs for esp32s3 are not in" in out and "make venv" in out
