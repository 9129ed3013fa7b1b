# Exactness and ticklessness of the dosing engine, against the independent fraction model.
# |delivered - programmed| must stay within one pulse at every instant, over 180-day horizons.

import ast
import pathlib
from fractions import Fraction as F

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from host_tests.exactness import GENEROUS, REF_CALIB, run_timeline, rx_valid
from host_tests.gen import DataChooser, gen_timeline
from pump import engine as E
from pump import limits as L
from pump import rx as RX
from pump.limiter import Limiter

DAY = L.DAY_MS
FIRMWARE = pathlib.Path(__file__).resolve().parent.parent / "firmware"
# Heavy properties scale with the active profile: a few in CI, hundreds in `make test-long`.
HEAVY = max(4, settings.default.max_examples // 16)


def _engine(rx, lim=GENEROUS, calib=REF_CALIB):
    limiter = Limiter(calib, lim, rx.conc_ug_per_ml)
    eng = E.Engine(calib, limiter, lim, rx.conc_ug_per_ml)
    assert eng.program(rx, confirm=True) is None
    return eng


def _pulses_per_day(rate_ng_per_day, conc, calib=REF_CALIB):
    return F(rate_ng_per_day, 1000 * conc) / F(calib.ml_num, calib.ml_den)


@pytest.mark.req("SR-29", "SR-11")
@settings(max_examples=HEAVY, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_random_180_day_programmes_stay_within_one_quantum(data):
    g = DataChooser(data)
    first, cmds = gen_timeline(g, 180 * DAY, n_max=20)
    assume(rx_valid(first))
    out = run_timeline(first, cmds, 180 * DAY)
    assert out.blocked == 0
    assert out.max_error <= 1


@pytest.mark.req("SR-29")
@settings(suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_random_busy_weeks_stay_within_one_quantum(data):
    # Short horizons with many commands: dense overlaps of boluses, bridges and mode changes.
    g = DataChooser(data)
    first, cmds = gen_timeline(g, 5 * DAY, n_max=40)
    assume(rx_valid(first))
    out = run_timeline(first, cmds, 5 * DAY)
    assert out.blocked == 0
    assert out.max_error <= 1


@pytest.mark.req("SR-29", "SR-11")
def test_reference_programme_180_days_is_exact_to_the_pulse():
    eng = _engine(RX.continuous(500, 350_000))
    eng.run_until(180 * DAY)
    exact = 180 * _pulses_per_day(350_000, 500)
    assert eng.delivered == exact.numerator // exact.denominator


@pytest.mark.req("SR-11")
def test_minimum_rate_for_30_days_errs_by_less_than_one_pulse():
    rx = RX.continuous(50, 300)  # 300 ng/day at 50 ug/mL = 6 uL/day, the minimum flow
    eng = _engine(rx)
    for day in range(1, 31):
        eng.run_until(day * DAY)
        exact = day * _pulses_per_day(300, 50)
        assert 0 <= exact - eng.delivered < 1


@pytest.mark.req("SR-30")
def test_wakeups_are_exactly_pulses_plus_programme_boundaries():
    steps = [(i * 144, 200_000 + 10_000 * i) for i in range(10)]
    rx = RX.Prescription(500, steps, [(300, 20_000, 600), (1000, 10_000, 1200)])
    eng = _engine(rx)
    times = []
    while eng.now_ms() < 3 * DAY:
        wait = eng.wait_ms()
        assert wait >= 0
        due = eng.next_due_ms()
        eng.fire()
        assert eng.now_ms() == due  # nothing fires early or late
        times.append(due)
    assert eng.wakeups == eng.delivered + eng.boundaries
    # Per day: 9 step starts, the midnight rollover (also step 1), 2 bolus starts and 2 ends.
    assert eng.boundaries == 3 * 14
    assert times == sorted(times)


@pytest.mark.req("SR-30")
def test_reference_programme_needs_under_1_05_wakeups_per_pulse():
    eng = _engine(RX.continuous(500, 350_000))
    eng.run_until(30 * DAY)
    assert eng.wakeups <= eng.delivered * 105 // 100


@pytest.mark.req("SR-29")
def test_core_has_no_float_literals_or_true_division():
    # Accounting must be integer: a float literal or '/' anywhere in the core is a defect.
    found = []
    for path in sorted((FIRMWARE / "pump").glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, float):
                found.append("%s:%d float literal" % (path.name, node.lineno))
            if isinstance(node, ast.BinOp | ast.AugAssign) and isinstance(node.op, ast.Div):
                found.append("%s:%d true division" % (path.name, node.lineno))
    assert found == []
