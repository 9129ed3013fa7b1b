# Mechanism calibration: the exact volume of one motor pulse, as a rational number of millilitres.
# Derived from the rig's geometry (or a gravimetric measurement); no float ever enters it.

from pump.intmath import gcd

# pi as 355/113: its relative error (8.5e-8) is five orders of magnitude below the
# tolerance of a syringe bore, so geometry-derived calibration is limited by the syringe, not pi.
PI_NUM = 355
PI_DEN = 113

_UM3_PER_ML = 10**12  # 1 mL = 1 cm^3 = 10^12 cubic micrometres


class Calibration:
    """Volume of one pulse = ml_num / ml_den mL, and how many microsteps make a pulse."""

    __slots__ = ("ml_num", "ml_den", "usteps_per_pulse", "source")

    def __init__(self, ml_num, ml_den, usteps_per_pulse, source):
        if ml_num <= 0 or ml_den <= 0 or usteps_per_pulse <= 0:
            raise ValueError("calibration terms must be positive integers")
        g = gcd(ml_num, ml_den)
        self.ml_num = ml_num // g
        self.ml_den = ml_den // g
        self.usteps_per_pulse = usteps_per_pulse
        self.source = source

    def pulse_pl(self):
        """Pulse volume rounded to the nearest picolitre, for display only."""
        return (self.ml_num * 10**9 * 2 + self.ml_den) // (2 * self.ml_den)

    def pulses_for_nl(self, volume_nl):
        """Whole pulses needed so that at least volume_nl has been pushed (exact ceiling)."""
        # pulses = volume_nl * 1e-6 mL / (num/den mL)
        n = volume_nl * self.ml_den
        d = self.ml_num * 10**6
        return -((-n) // d)


def from_geometry(bore_um, pitch_um, steps_per_rev, microsteps, usteps_per_pulse):
    """Pulse volume of a syringe (bore) driven by a lead screw (pitch) and a stepper.

    One microstep advances the plunger pitch / (steps_per_rev * microsteps) and sweeps
    pi * bore^2 / 4 of cross-section.
    """
    for v in (bore_um, pitch_um, steps_per_rev, microsteps, usteps_per_pulse):
        if not isinstance(v, int) or v <= 0:
            raise ValueError("geometry terms must be positive integers")
    num = PI_NUM * bore_um * bore_um * pitch_um * usteps_per_pulse
    den = PI_DEN * 4 * steps_per_rev * microsteps * _UM3_PER_ML
    src = "geometry: bore %d um, pitch %d um, %d steps/rev x %d microsteps, %d per pulse" % (
        bore_um,
        pitch_um,
        steps_per_rev,
        microsteps,
        usteps_per_pulse,
    )
    return Calibration(num, den, usteps_per_pulse, src)


def from_measured(ml_num, ml_den, usteps_per_pulse):
    """Calibration from a gravimetric measurement: pulse volume ml_num/ml_den mL."""
    return Calibration(ml_num, ml_den, usteps_per_pulse, "measured")
