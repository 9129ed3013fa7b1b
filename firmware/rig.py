# The reference bench rig shared by the ESP32 boards (boards/esp32_*): the syringe mechanism, the
# 1S LiPo, storage, watchdog and commissioning settings. Each board.py adds its pins and driver.

from pump import battery, calib, limits, persist, supervisor

# ---- the mechanism: the reference rig, as in boards/sim ----
# A 10 mL syringe of 14.5 mm bore on an M5 lead screw (0.8 mm pitch), a 200 step/rev motor at 16
# microsteps (each board's README says how its driver is set to 16). One pulse is one full step
# (16 microsteps): the rotor then rests on a detent between pulses, so the driver may be
# switched off without losing position.
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
# Fed every 20 s by the application's supervisor while every task is on time; long enough that
# a commit blocking the event loop (up to app.COMMIT_MAX_MS) between two feeds cannot fire it.
WDT_TIMEOUT_MS = 60_000
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


def plant(name, energy):
    """The pump's fixed parts on this rig, under the board's name and energy model."""
    return persist.Plant(name, calibration(), RESERVOIR_NL, CELL, energy, ADC_CAL,
                         ERI_MARGIN_DAYS, settings())  # fmt: skip
