# Board definition of the reference bench rig on an ESP32-S3-DevKitC-1 with a TMC2209 driver in
# standalone STEP/DIR mode: pin map, mechanism, cell and timings. Deployed as board.py.

from pump import battery, calib, limits, persist, supervisor
from pump.compat import const

NAME = "esp32_s3"
CHIP = "esp32s3"  # esptool's --chip, the stub set `make lint` checks against (tools/deploy.py)
MICROPYTHON_BOARD = "ESP32_GENERIC_S3"  # the stock MicroPython build for this board

# ---- pins (README.md has the wiring table and why each pin) ----
PIN_STEP = const(4)  # TMC2209 STEP, driven by the RMT peripheral
PIN_DIR = const(5)  # TMC2209 DIR
PIN_EN = const(6)  # TMC2209 ENN: low enables the outputs; 10 k pull-up to 3V3 on the rig
EN_ACTIVE = const(0)
DIR_FORWARD = const(1)  # the DIR level that pushes the plunger
PIN_FAULT = const(7)  # TMC2209 DIAG: push-pull, high on a driver error
FAULT_ACTIVE = const(1)
FAULT_PULL_UP = False
PIN_ENDSTOP = const(15)  # normally-closed switch to GND: opens (reads 1) at the end of travel,
ENDSTOP_ACTIVE = const(1)  # so a broken wire also reads as "at the end" and stops the motor
ENDSTOP_PULL_UP = True
PIN_ENCODER = None  # optional: a motor-shaft encoder channel on GPIO 18 (see README.md)
ENCODER_EDGES_PER_PULSE = 0
ENCODER_TOLERANCE = 0
ENCODER_PULL_UP = False
PIN_BUZZER = const(17)  # passive piezo through a transistor, PWM
BUZZER_HZ = const(2_700)  # near a common piezo's resonance
PIN_BUTTON = const(16)  # push button to GND
BUTTON_PULL_UP = True
BUTTON_DEBOUNCE_MS = const(50)
PIN_BATTERY = const(8)  # ADC1_CH7, the cell through a 100 k / 100 k divider

# ---- one pulse on the driver (firmware/hal/esp32.py Motor has the budget) ----
STEP_HIGH_US = const(10)  # TMC2209 needs 100 ns high and 100 ns low
STEP_PERIOD_US = const(250)  # 4000 microsteps/s: 75 rpm, 1 mm/s at the plunger
EN_SETTLE_US = const(1_000)  # coil current up before the first step
HOLD_US = const(2_000)  # the rotor settles on its detent before the driver lets go

# ---- the mechanism: the reference rig, as in boards/sim ----
# A 10 mL syringe of 14.5 mm bore on an M5 lead screw (0.8 mm pitch), a 200 step/rev motor at 16
# microsteps (TMC2209 MS1 and MS2 both high; the driver interpolates to 256). One pulse is one
# full step (16 microsteps): the rotor then rests on a detent between pulses, so the driver may
# be switched off without losing position (ENN only switches the bridges off).
SYRINGE_BORE_UM = 14_500
LEAD_PITCH_UM = 800
STEPS_PER_REV = 200
MICROSTEPS = 16
USTEPS_PER_PULSE = 16
RESERVOIR_NL = 10_000_000  # the syringe's 10 mL
# Syringe tip and outlet tubing up to the catheter connector: old drug after a strength change.
PUMP_DEAD_VOLUME_NL = 250_000

# ---- the cell ----
# A 1S LiPo (rechargeable): ERI and EOS sit above the protection cut-off so the board warns
# while it can still run, and a rest voltage above full_mv means it was charged.
CELL = battery.Cell(
    "lipo-1s-1000mah",
    capacity_uah=1_000_000,
    eri_mv=3550,
    eos_mv=3400,
    hyst_mv=50,
    eos_reserve_pct=5,
    full_mv=4150,
    ocv=(
        (0, 4200),
        (100, 4050),
        (300, 3900),
        (500, 3800),
        (700, 3720),
        (850, 3650),
        (930, 3550),
        (970, 3400),
        (1000, 3000),
    ),  # fmt: skip
    r_mohm=150,
)
# A dev board's LiPo lasts about a day, so a margin in days means nothing here: ERI and EOS come
# from the voltage, and a charged reading restarts the budget.
ERI_MARGIN_DAYS = 0
# An awake ESP32-S3 with the radio off draws some 40-50 mA; measure the board to refine it.
ENERGY = battery.Energy(quiescent_ua=45_000, pulse_nc=2_000_000, radio_ua=100_000, margin_pct=20)
MOTOR_CURRENT_MA = 300
# 100k/100k divider: 4.2 V at the cell is 2.1 V at the pin, inside the 11 dB range. Replace with
# battery.two_point(...) from two meter readings for the +-20 mV the bench asks for.
ADC_CAL = battery.AdcCal(2, 1)
# A reading outside this is a broken divider or ADC, not the cell (the self test says so).
BATTERY_PLAUSIBLE_MV = (2_800, 4_400)

# ---- storage and supervision ----
DATA_PREFIX = "/data"  # the pump's files on the littlefs root; deploy never touches them
# At most this many pulses go out after a saved checkpoint (docs/storage.md).
CHECKPOINT_BATCH_PULSES = 32
LOG_SEGMENT_BYTES = 8192
LOG_SEGMENTS = 16
# Fed every 10 s by the application's supervisor while every task is on time.
WDT_TIMEOUT_MS = 30_000
# Bench commissioning settings of an empty pump, until a programmer (the BLE issue) sets them.
FIRST_BOOT = (
    limits.ClinicianLimits(
        max_24h_ng=800_000, max_bolus_ng=100_000, max_rate_nl_per_day=10_000_000,
        dose_step_pct=30,
    ),
    500,
    2_000_000,
)  # fmt: skip


def calibration():
    return calib.from_geometry(
        SYRINGE_BORE_UM, LEAD_PITCH_UM, STEPS_PER_REV, MICROSTEPS, USTEPS_PER_PULSE
    )


def settings():
    return supervisor.Settings(PUMP_DEAD_VOLUME_NL, batch_pulses=CHECKPOINT_BATCH_PULSES)


def plant():
    return persist.Plant(NAME, calibration(), RESERVOIR_NL, CELL, ENERGY, ADC_CAL,
                         ERI_MARGIN_DAYS, settings())  # fmt: skip


def make_hal():
    """The board's hardware. Imported here, not at the top, so that this module also imports on
    a host (tests, tools) for its data."""
    import sys

    from hal import esp32 as chip

    return chip.Hal(sys.modules[__name__])
