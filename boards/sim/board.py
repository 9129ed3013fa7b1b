# Board definition of the simulated pump: the reference bench rig's mechanism, as plain data.
# Geometry is kept as measured integers so the calibration can be derived exactly from it.

from pump import calib

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

RESERVOIR_UL = 10_000


def calibration():
    return calib.from_geometry(
        SYRINGE_BORE_UM, LEAD_PITCH_UM, STEPS_PER_REV, MICROSTEPS, USTEPS_PER_PULSE
    )
