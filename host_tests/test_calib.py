# Mechanism calibration: an exact rational pulse volume derived from the board's geometry.
# Checked against hand-derived numbers, the fraction formula, and the 30-bit scheduling bounds.

import math
from fractions import Fraction as F

import pytest
from hypothesis import given
from hypothesis import strategies as st

from boards.sim import board
from pump import calib as CAL
from pump import engine as E
from pump import limits as L


@pytest.mark.req("SR-38")
def test_reference_rig_pulse_is_a_full_step_of_660_520_nl():
    cal = board.calibration()
    # pi/4 * 14.5^2 mm^2 * 0.8 mm / 200 full steps, with pi = 355/113, in mL.
    assert F(cal.ml_num, cal.ml_den) == F(355, 113) / 4 * F(145, 10) ** 2 * F(8, 10) / 200 / 1000
    assert (cal.ml_num, cal.ml_den) == (59711, 90400000)
    assert cal.pulse_pl() == 660_520
    # The pi approximation costs less than a part in ten million.
    geometric_ml = math.pi / 4 * 14.5**2 * 0.8 / 200 / 1000
    assert abs(cal.ml_num / cal.ml_den / geometric_ml - 1) < 1e-7


@pytest.mark.req("SR-38")
@given(
    bore=st.integers(1_000, 40_000),
    pitch=st.integers(100, 8_000),
    steps=st.sampled_from((200, 400)),
    micro=st.sampled_from((1, 2, 4, 8, 16, 32, 64, 256)),
    per_pulse=st.integers(1, 64),
)
def test_geometry_gives_the_exact_fraction(bore, pitch, steps, micro, per_pulse):
    cal = CAL.from_geometry(bore, pitch, steps, micro, per_pulse)
    exact = F(355, 113) * bore * bore / 4 * pitch * per_pulse / (steps * micro) / 10**12
    assert F(cal.ml_num, cal.ml_den) == exact
    assert math.gcd(cal.ml_num, cal.ml_den) == 1
    # pulses_for_nl is the exact ceiling: that many pulses cover the volume, one fewer do not.
    for nl in (0, 1, 1000, 123_456):
        n = cal.pulses_for_nl(nl)
        assert n * exact * 10**6 >= nl
        assert n == 0 or (n - 1) * exact * 10**6 < nl


@pytest.mark.req("SR-38")
@pytest.mark.parametrize(
    "args",
    [
        (0, 800, 200, 16, 16),
        (14500, -1, 200, 16, 16),
        (14500, 800, 200, 16, 0),
        (14500.0, 800, 200, 16, 16),
        (14500, 800, 200, 16.5, 16),
    ],  # fmt: skip
)
def test_geometry_refuses_non_positive_or_non_integer_terms(args):
    with pytest.raises(ValueError):
        CAL.from_geometry(*args)


@pytest.mark.req("SR-38", "SR-33")
def test_scale_refuses_a_calibration_too_fine_for_30_bit_scheduling():
    # A pulse of 1/10^12 mL with an awkward denominator cannot be scheduled in small ints.
    with pytest.raises(ValueError):
        E.Scale(CAL.from_measured(1, 999_999_937 * 10**6, 1), L.CONCENTRATIONS_UG_PER_ML)
    scale = E.Scale(board.calibration(), L.CONCENTRATIONS_UG_PER_ML)
    assert scale.max_d < 2**30 and scale.max_q + 2 * L.DAY_MS < 2**30
    assert (scale.B, scale.lcm_conc, scale.pulse_cr) == (113, 2000, 1_289_757_600_000)
