# Board definition of the reference bench rig on an ESP32-C3-DevKitM-1 with an A4988 driver: pin
# map, mechanism, cell and timings. Deployed as board.py. The A4988 has no fault output.

import rig
from pump import battery
from pump.compat import const
from rig import (  # noqa: F401 - the rig's data, read by the app and the hardware layer
    ADC_CAL,
    BATTERY_PLAUSIBLE_MV,
    CELL,
    CHECKPOINT_BATCH_PULSES,
    DATA_PREFIX,
    ERI_MARGIN_DAYS,
    FIRST_BOOT,
    LEAD_PITCH_UM,
    LOG_SEGMENT_BYTES,
    LOG_SEGMENTS,
    MICROSTEPS,
    MOTOR_CURRENT_MA,
    PUMP_DEAD_VOLUME_NL,
    RESERVOIR_NL,
    STEPS_PER_REV,
    SYRINGE_BORE_UM,
    USTEPS_PER_PULSE,
    WDT_TIMEOUT_MS,
    calibration,
    settings,
)

NAME = "esp32_c3"
CHIP = "esp32c3"  # esptool's --chip, the stub set `make lint` checks against (tools/deploy.py)
MICROPYTHON_BOARD = "ESP32_GENERIC_C3"  # the stock MicroPython build for this board

# ---- pins (README.md has the wiring table and why each pin) ----
PIN_STEP = const(4)  # A4988 STEP, driven by the RMT peripheral
PIN_DIR = const(5)  # A4988 DIR
PIN_EN = const(6)  # A4988 ENABLE: low enables the outputs; 10 k pull-up to 3V3 on the rig
EN_ACTIVE = const(0)
DIR_FORWARD = const(1)  # the DIR level that pushes the plunger
PIN_FAULT = None  # the A4988 reports no fault: a jam shows only with the encoder fitted
FAULT_ACTIVE = const(0)
FAULT_PULL_UP = False
PIN_ENDSTOP = const(10)  # normally-closed switch to GND: opens (reads 1) at the end of travel,
ENDSTOP_ACTIVE = const(1)  # so a broken wire also reads as "at the end" and stops the motor
ENDSTOP_PULL_UP = True
PIN_ENCODER = None  # optional: a motor-shaft encoder channel on GPIO 0 (see README.md)
ENCODER_EDGES_PER_PULSE = 0
ENCODER_TOLERANCE = 0
ENCODER_PULL_UP = False
PIN_BUZZER = const(7)  # passive piezo through a transistor, PWM
BUZZER_HZ = const(2_700)  # near a common piezo's resonance
PIN_BUTTON = const(1)  # push button to GND
BUTTON_PULL_UP = True
BUTTON_DEBOUNCE_MS = const(50)
PIN_BATTERY = const(3)  # ADC1_CH3, the cell through a 100 k / 100 k divider

# ---- one pulse on the driver (firmware/hal/esp32.py Motor has the budget) ----
STEP_HIGH_US = const(10)  # A4988 needs 1 us high and 1 us low
STEP_PERIOD_US = const(250)  # 4000 microsteps/s: 75 rpm, 1 mm/s at the plunger
EN_SETTLE_US = const(1_000)  # coil current up before the first step
HOLD_US = const(2_000)  # the rotor settles on its detent before the driver lets go

# ---- the mechanism, cell, storage and commissioning: the reference rig (firmware/rig.py) ----
# An awake ESP32-C3 with the radio off draws some 20-25 mA; measure the board to refine it.
ENERGY = battery.Energy(quiescent_ua=25_000, pulse_nc=2_000_000, radio_ua=100_000, margin_pct=20)


def plant():
    return rig.plant(NAME, ENERGY)


def make_hal():
    """The board's hardware. Imported here, not at the top, so that this module also imports on
    a host (tests, tools) for its data."""
    import sys

    from hal import esp32 as chip

    return chip.Hal(sys.modules[__name__])
