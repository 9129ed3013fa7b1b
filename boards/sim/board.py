# Board definition of the simulated pump: the reference bench rig's mechanism, as plain data.
# Geometry is kept as measured integers so the calibration can be derived exactly from it.

from pump import battery, calib, limits, persist, supervisor

NAME = "sim"

# The reference rig: a 10 mL syringe of 14.5 mm bore on an M5 lead screw (0.8 mm pitch),
# a 200 step/rev motor at 16 microsteps. One pulse is one full step (16 microsteps): the rotor
# then rests on a detent between pulses, so the driver may be de-energised without losing
# position (a microstep position would fall back to the nearest detent).
SYRINGE_BORE_UM = 14_500
LEAD_PITCH_UM = 800
STEPS_PER_REV = 200
MICROSTEPS = 16
USTEPS_PER_PULSE = 16

# The simulated implant comes in the two reservoir sizes of commercial pumps.
RESERVOIR_NL = {"20ml": 20_000_000, "40ml": 40_000_000}
VARIANT = "20ml"
# Volume between the reservoir and the catheter tip inside the pump; the catheter's own volume
# is added by the clinician's settings. Both hold old drug after a change of strength.
PUMP_DEAD_VOLUME_NL = 250_000

# An implant-style lithium primary cell (a Li/CFx-like flat discharge curve that falls off near
# the end). The numbers are a plausible model for simulation, not a datasheet.
CELL = battery.Cell(
    "sim-li-cfx",
    capacity_uah=2_000_000,
    eri_mv=2680,
    eos_mv=2450,
    hyst_mv=50,
    eos_reserve_pct=2,
    ocv=(
        (0, 3150),
        (20, 3000),
        (100, 2950),
        (300, 2900),
        (600, 2850),
        (800, 2780),
        (900, 2700),
        (950, 2620),
        (975, 2520),
        (990, 2400),
        (1000, 2200),
    ),  # fmt: skip
    r_mohm=5000,
)
# ERI is raised when the projected life falls under this margin (or the voltage under eri_mv).
# 2680 mV sits at about 91 % depth of discharge on the curve above, EOS (2450 mV) at about 98 %:
# more than 90 days apart even when the cell drains 10 % faster than the charge model says.
ERI_MARGIN_DAYS = 90
# Charge model: sleeping draw, one motor pulse (16 microsteps at about 40 mA for 25 ms), and the
# radio while on. The budget is derated by 10 % for the model's own error.
ENERGY = battery.Energy(quiescent_ua=20, pulse_nc=1_000_000, radio_ua=8_000, margin_pct=10)
MOTOR_CURRENT_MA = 40
# A 1:1 divider halves the cell voltage into the ADC's 11 dB range (150-2450 mV).
ADC_CAL = battery.AdcCal(2, 1)


def calibration():
    return calib.from_geometry(
        SYRINGE_BORE_UM, LEAD_PITCH_UM, STEPS_PER_REV, MICROSTEPS, USTEPS_PER_PULSE
    )

# At most this many pulses go out after a saved checkpoint (docs/storage.md): one batch of
# 660 nL pulses is 21 uL, the most the accounting can be unsure of after a power cut. `make
# bench` measures the saves a day and the flash erases they cost (storage.*).
CHECKPOINT_BATCH_PULSES = 32

# The commissioning settings of a new pump (its flash empty): hard-coded only here, for the
# simulation; a real board gets them from the clinician's first session.
FIRST_BOOT = (
    limits.ClinicianLimits(
        max_24h_ng=800_000, max_bolus_ng=100_000, max_rate_nl_per_day=10_000_000,
        dose_step_pct=30,
    ),
    500,
    2_000_000,
)  # fmt: skip
# The event log's segments on flash (docs/storage.md).
LOG_SEGMENT_BYTES = 8192
LOG_SEGMENTS = 16
# The watchdog's timeout. The sim's is long in simulated time so that feeding it costs few
# wake-ups; what it must show is that an unfed watchdog restarts the application.
WDT_TIMEOUT_MS = 180_000


def settings():
    return supervisor.Settings(PUMP_DEAD_VOLUME_NL, batch_pulses=CHECKPOINT_BATCH_PULSES)


def plant():
    return persist.Plant(NAME, calibration(), RESERVOIR_NL[VARIANT], CELL, ENERGY, ADC_CAL,
                         ERI_MARGIN_DAYS, settings())  # fmt: skip
