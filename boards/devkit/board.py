# Board definition of an ESP32 development board on a single LiPo cell, as plain data.
# The hardware pins and drivers come with the hardware layer; here is what the core needs.

from pump import battery

NAME = "devkit"

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
# An awake ESP32 with the radio off draws tens of mA; the model is what a dev board really costs.
ENERGY = battery.Energy(quiescent_ua=40_000, pulse_nc=2_000_000, radio_ua=100_000, margin_pct=20)
MOTOR_CURRENT_MA = 300
# 100k/100k divider: 4.2 V at the cell is 2.1 V at the pin, inside the 11 dB range.
ADC_CAL = battery.AdcCal(2, 1)

# At most this many pulses go out after a saved checkpoint (docs/storage.md).
CHECKPOINT_BATCH_PULSES = 32
