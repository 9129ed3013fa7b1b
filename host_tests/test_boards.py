# The ESP32 board files: pins that each chip allows for their use, the data the hardware layer
# reads, the rig's exact calibration, and board modules that import on a host.

import importlib
import re
from fractions import Fraction
from pathlib import Path

import pytest

import app as APP
from pump import persist
from tools import check_core
from tools.deploy import board_chips

ROOT = Path(__file__).resolve().parent.parent
BOARDS = board_chips()


def _range(a, b):
    return set(range(a, b + 1))


# Per chip, from Espressif's datasheets (ESP32-WROOM-32, ESP32-S3-WROOM-1, ESP32-C3-MINI-1) and
# the DevKit schematics: pins that exist, pins a board must not use (SPI flash and PSRAM,
# strapping, the console UART, USB, on-board LED), input-only pins and the ADC1 pins (ADC2 is
# shared with the Wi-Fi radio).
CHIPS = {
    "esp32": {
        "gpio": _range(0, 19) | _range(21, 23) | _range(25, 27) | _range(32, 39),
        "reserved": {
            **dict.fromkeys(_range(6, 11), "SPI flash"),
            **dict.fromkeys((0, 2, 5, 12, 15), "strapping"),
            **dict.fromkeys((1, 3), "UART0 console"),
            **dict.fromkeys((16, 17), "PSRAM on WROVER modules"),
        },
        "input_only": _range(34, 39),
        "adc1": _range(32, 39),
    },
    "esp32s3": {
        "gpio": _range(0, 21) | _range(26, 48),
        "reserved": {
            **dict.fromkeys(_range(26, 37), "flash and octal PSRAM"),
            **dict.fromkeys((0, 3, 45, 46), "strapping"),
            **dict.fromkeys((19, 20), "USB"),
            **dict.fromkeys((43, 44), "UART0 console"),
            **dict.fromkeys((38, 48), "DevKitC-1 RGB LED"),
        },
        "input_only": set(),
        "adc1": _range(1, 10),
    },
    "esp32c3": {
        "gpio": _range(0, 21),
        "reserved": {
            **dict.fromkeys(_range(11, 17), "SPI flash (11: VDD_SPI)"),
            **dict.fromkeys((2, 8, 9), "strapping"),
            **dict.fromkeys((18, 19), "USB"),
            **dict.fromkeys((20, 21), "UART0 console"),
        },
        "input_only": set(),
        "adc1": _range(0, 4),
    },
}
OUTPUTS = ("PIN_STEP", "PIN_DIR", "PIN_EN", "PIN_BUZZER")
INPUTS = {  # pin -> its pull-up flag
    "PIN_FAULT": "FAULT_PULL_UP",
    "PIN_ENDSTOP": "ENDSTOP_PULL_UP",
    "PIN_ENCODER": "ENCODER_PULL_UP",
    "PIN_BUTTON": "BUTTON_PULL_UP",
}


def _board(name):
    return importlib.import_module(f"boards.{name}.board")


def test_the_three_esp32_families_have_a_board():
    assert sorted(BOARDS.values()) == ["esp32", "esp32c3", "esp32s3"]


@pytest.mark.parametrize("name", sorted(BOARDS))
def test_pins_suit_the_chip(name):
    b = _board(name)
    chip = CHIPS[b.CHIP]
    used = {}
    for attr in (*OUTPUTS, *INPUTS, "PIN_BATTERY"):
        pin = getattr(b, attr)
        if pin is None:
            assert attr in ("PIN_FAULT", "PIN_ENCODER", "PIN_ENDSTOP"), attr
            continue
        assert pin in chip["gpio"], f"{attr}: GPIO {pin} does not exist on {b.CHIP}"
        assert pin not in chip["reserved"], f"{attr}: GPIO {pin} is {chip['reserved'][pin]}"
        assert pin not in used, f"{attr} and {used.get(pin)} share GPIO {pin}"
        used[pin] = attr
    for attr in OUTPUTS:
        assert getattr(b, attr) not in chip["input_only"], f"{attr} on an input-only pin"
    for attr, pull in INPUTS.items():
        if getattr(b, attr) in chip["input_only"]:
            assert not getattr(b, pull), f"{attr}: input-only pins have no internal pull-up"
    assert b.PIN_BATTERY in chip["adc1"], "the battery must be on ADC1 (ADC2 serves the radio)"


@pytest.mark.parametrize("name", sorted(BOARDS))
def test_the_board_has_everything_the_hardware_layer_reads(name):
    b = _board(name)
    src = (ROOT / "firmware" / "hal" / "esp32.py").read_text()
    names = set(re.findall(r"\bb\.([A-Z][A-Z0-9_]+)", src))
    names |= set(re.findall(r"self\.board\.([A-Z][A-Z0-9_]+)", src))
    assert len(names) > 25  # the pattern really finds them
    missing = sorted(n for n in names if not hasattr(b, n))
    assert missing == []
    for n in ("WDT_TIMEOUT_MS", "LOG_SEGMENT_BYTES", "LOG_SEGMENTS", "FIRST_BOOT", "NAME"):
        assert hasattr(b, n), n
    assert b.NAME == name and callable(b.make_hal)


@pytest.mark.req("SR-33")
@pytest.mark.parametrize("name", sorted(BOARDS))
def test_a_pulse_is_one_short_burst_of_small_ints(name):
    b = _board(name)
    assert b.USTEPS_PER_PULSE == b.MICROSTEPS  # a full step: the rotor rests on a detent
    assert 0 < b.STEP_HIGH_US < b.STEP_PERIOD_US <= 32_767  # one RMT duration each
    busy_us = b.EN_SETTLE_US + b.USTEPS_PER_PULSE * b.STEP_PERIOD_US + b.HOLD_US
    assert busy_us <= 10_000  # the longest the motor holds up the event loop
    if b.PIN_ENCODER is not None:
        assert 0 <= b.ENCODER_TOLERANCE < b.ENCODER_EDGES_PER_PULSE


@pytest.mark.req("SR-38")
@pytest.mark.parametrize("name", sorted(BOARDS))
def test_the_reference_rig_calibration_is_exact(name):
    b = _board(name)
    c = b.calibration()
    pulse_ml = Fraction(c.ml_num, c.ml_den)
    pi = Fraction(355, 113)
    bore_mm = Fraction(b.SYRINGE_BORE_UM, 1000)
    advance_mm = Fraction(b.LEAD_PITCH_UM, 1000) * b.USTEPS_PER_PULSE / (
        b.STEPS_PER_REV * b.MICROSTEPS
    )
    assert pulse_ml == pi / 4 * bore_mm**2 * advance_mm / 1000
    assert pulse_ml == Fraction(59_711, 90_400_000)  # README's worked example
    assert c.pulse_pl() == 660_520
    p = b.plant()
    assert isinstance(p, persist.Plant) and p.capacity_nl == b.RESERVOIR_NL == 10_000_000


@pytest.mark.parametrize("name", sorted(BOARDS))
def test_the_watchdog_outlasts_a_late_task_and_a_commit(name):
    b = _board(name)
    # The supervisor feeds every third of the timeout, and a task is late only after a commit
    # plus its grace: the watchdog must not fire before the supervisor could notice.
    assert b.WDT_TIMEOUT_MS >= 3 * (APP.COMMIT_MAX_MS + APP.GRACE_MS)
    lo, hi = b.BATTERY_PLAUSIBLE_MV
    assert lo < b.CELL.eos_mv < b.CELL.full_mv < hi


@pytest.mark.parametrize("name", sorted(BOARDS))
def test_the_readme_wires_every_pin(name):
    b = _board(name)
    text = (ROOT / "boards" / name / "README.md").read_text()
    for attr in (*OUTPUTS, *INPUTS, "PIN_BATTERY"):
        pin = getattr(b, attr)
        if pin is not None:
            assert re.search(rf"\bGPIO ?{pin}\b", text), f"{attr} (GPIO {pin}) not in README"
    assert "| " in text  # a wiring table


def test_board_files_keep_the_hardware_inside_make_hal(tmp_path):
    for path in sorted((ROOT / "boards").glob("*/board.py")):
        assert check_core.check_board(path, ROOT) == []
    bad = tmp_path / "boards" / "x" / "board.py"
    bad.parent.mkdir(parents=True)
    bad.write_text(
        "import machine\nfrom hal import esp32\n\n\ndef make_hal():\n    import esp32\n"
        "    from hal import esp32 as chip\n    return chip\n"
    )
    found = check_core.check_board(bad, tmp_path)
    assert [p.split(": ")[0] for p in found] == ["boards/x/board.py:1", "boards/x/board.py:2"]
    assert check_core.main(["--root", str(tmp_path)]) == 1
