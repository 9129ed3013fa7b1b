# Readable scenarios for boluses, priming, the bridge after a refill and the delivery modes:
# what is granted or refused, and what the pump then actually delivers, counted in pulses.

from fractions import Fraction as F
from itertools import pairwise

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from host_tests.exactness import GENEROUS, REF_CALIB
from host_tests.gen import DataChooser, gen_bolus, gen_timeline
from pump import engine as E
from pump import limits as L
from pump import reasons as R
from pump import rx as RX
from pump.intmath import ceil_div
from pump.limiter import Limiter
from pump.limits import ClinicianLimits
from pump.reasons import Refusal

DAY = L.DAY_MS
HOUR = 3_600_000
MIN = L.MIN_MS
RUMS_PER_NG = DAY // L.RATE_RES_NG_PER_DAY  # a dose of 1 ng, in rate-unit milliseconds
Q_NL = F(REF_CALIB.ml_num * 10**6, REF_CALIB.ml_den)  # exact volume of one pulse, in nL


def pulses_of_ng(dose_ng, conc):
    # ng / (ug/mL) = uL; one pulse is Q_NL nL.
    return F(dose_ng * 1000, conc) / Q_NL


def period_ms(nl_per_day):
    return DAY * Q_NL / nl_per_day


def nl_per_day(rate_ng_per_day, conc):
    return F(rate_ng_per_day * 1000, conc)


def limits(
    max_24h_ng=L.HARD_MAX_24H_NG,
    max_bolus_ng=L.HARD_MAX_BOLUS_NG,
    max_rate_nl_per_day=L.HARD_MAX_RATE_NL_PER_DAY,
    dose_step_pct=L.DOSE_STEP_PCT_MAX,
):
    return ClinicianLimits(max_24h_ng, max_bolus_ng, max_rate_nl_per_day, dose_step_pct)


class Rig:
    """An engine with its limiter, a pulse-time recorder and an event log stamped with time."""

    def __init__(self, conc=500, lim=GENEROUS):
        self.pulses = []
        self.events = []
        self.limiter = Limiter(REF_CALIB, lim, conc)
        self.eng = E.Engine(REF_CALIB, self.limiter, lim, conc, log=self._log)

    def _log(self, name, *args):
        self.events.append((self.eng.now_ms(), name) + args)

    def run_until(self, t_ms):
        self.eng.run_until(t_ms, self.pulses.append)

    def run_for(self, ms):
        self.run_until(self.eng.now_ms() + ms)

    def logged(self, name):
        return [e[2:] for e in self.events if e[1] == name]


def programmed(rx, lim=GENEROUS, until_ms=0):
    rig = Rig(rx.conc_ug_per_ml, lim)
    assert rig.eng.program(rx, confirm=True) is None
    rig.run_until(until_ms)
    return rig


def patient_rx(rate=200_000, dose=20_000, dur=600, lockout=3_600, n=6, conc=500):
    return RX.continuous(conc, rate, patient_dose_ng=dose, patient_duration_s=dur,
                         patient_lockout_s=lockout, patient_max_per_24h=n)  # fmt: skip


# ---- patient bolus: lockout and count ----


@pytest.mark.req("SR-05")
@pytest.mark.parametrize("lockout_s", [L.LOCKOUT_MIN_S, 3_600, L.LOCKOUT_MAX_S])
def test_patient_bolus_lockout_counts_from_the_previous_start(lockout_s):
    rig = programmed(patient_rx(lockout=lockout_s), until_ms=2 * HOUR + 123)
    eng = rig.eng
    first = eng.now_ms()
    assert eng.patient_bolus() is None
    rig.run_until(first + lockout_s * 1000 - 1000)
    assert eng.patient_bolus() == Refusal(R.LOCKOUT, "patient")
    # The refusal is logged with its reason.
    assert rig.events[-1][1:] == ("refused", "patient_bolus", R.LOCKOUT, "patient")
    assert rig.logged("bolus_start") == [("patient", 20_000)]
    rig.run_until(first + lockout_s * 1000)
    assert eng.patient_bolus() is None
    assert rig.logged("bolus_start") == [("patient", 20_000)] * 2


@pytest.mark.req("SR-06")
@pytest.mark.parametrize("n", [1, 3, L.PATIENT_MAX_PER_24H])
def test_patient_boluses_per_rolling_24h(n):
    rig = programmed(patient_rx(dose=1_000, dur=60, lockout=L.LOCKOUT_MIN_S, n=n), until_ms=HOUR)
    eng = rig.eng
    gap = L.LOCKOUT_MIN_S * 1000
    for i in range(n):
        rig.run_until(HOUR + i * gap)
        assert eng.patient_bolus() is None, "bolus %d of %d" % (i + 1, n)
    rig.run_until(HOUR + n * gap)
    assert eng.patient_bolus() == Refusal(R.BOLUS_COUNT, "patient")
    rig.run_until(HOUR + DAY - 1_000)
    assert eng.patient_bolus() == Refusal(R.BOLUS_COUNT, "patient")
    assert rig.logged("refused")[-1] == ("patient_bolus", R.BOLUS_COUNT, "patient")
    # Exactly 24 h after the first bolus it leaves the window, and one more is granted.
    rig.run_until(HOUR + DAY)
    assert eng.patient_bolus() is None
    if n > 1:
        rig.run_until(HOUR + DAY + gap - 1_000)
        assert eng.patient_bolus() == Refusal(R.LOCKOUT, "patient")


# ---- the rolling 24 h limit counts basal and boluses ----

LIM_1MG = limits(max_24h_ng=1_000_000)


@pytest.mark.req("SR-07")
def test_high_basal_plus_a_bolus_over_the_rolling_limit_is_refused():
    high = programmed(RX.continuous(500, 900_000), LIM_1MG, until_ms=DAY + 2 * HOUR)
    assert high.eng.clinician_bolus(100_000, 3_600) == Refusal(R.DAILY_LIMIT, "bolus.dose_ng")
    assert high.logged("refused") == [("clinician_bolus", R.DAILY_LIMIT, "bolus.dose_ng")]
    assert high.eng.streams() == []
    assert high.eng.clinician_bolus(20_000, 3_600) is None
    # The very same bolus fits when the basal is low: the refusal above came from the basal.
    low = programmed(RX.continuous(500, 100_000), LIM_1MG, until_ms=DAY + 2 * HOUR)
    assert low.eng.clinician_bolus(100_000, 3_600) is None


@pytest.mark.req("SR-07", "SR-08")
def test_patient_bolus_refused_when_basal_and_clinician_bolus_fill_the_window():
    rx = patient_rx(rate=900_000, dose=50_000, dur=3_600, lockout=3_600, n=1)
    rig = programmed(rx, LIM_1MG, until_ms=DAY + 2 * HOUR)
    eng = rig.eng
    assert eng.clinician_bolus(60_000, 3_600) is None
    assert eng.patient_bolus() == Refusal(R.DAILY_LIMIT, "patient.dose_ng")
    assert rig.logged("refused") == [("patient_bolus", R.DAILY_LIMIT, "patient.dose_ng")]
    # What was granted is delivered whole, and the independent limiter never had to step in.
    d0, t0 = eng.delivered, eng.now_ms()
    rig.run_until(t0 + 3_600_000)
    basal = pulses_of_ng(900_000, 500) * F(3_600_000, DAY)
    assert abs(eng.delivered - d0 - basal - pulses_of_ng(60_000, 500)) <= 1
    assert rig.logged("bolus_end") == [("clinician", 60_000)]
    rig.run_for(2 * DAY)
    assert not eng.fault and rig.limiter.blocked == 0


# ---- a granted bolus is delivered whole ----


@pytest.mark.req("SR-08")
@settings(suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_granted_bolus_delivers_its_whole_dose(data):
    g = DataChooser(data)
    conc = g.choice(L.CONCENTRATIONS_UG_PER_ML)
    min_rate = ceil_div(L.HARD_MIN_RATE_NL_PER_DAY * conc, 1000)
    top = min(1_000_000, L.HARD_MAX_RATE_NL_PER_DAY // 4 * conc // 1000)
    basal = g.integer(min_rate // 10, top // 10) * 10
    dose, dur_s = gen_bolus(g, conc)
    rig = programmed(RX.continuous(conc, basal), until_ms=g.integer(0, 2 * DAY))
    eng = rig.eng
    assert eng.clinician_bolus(dose, dur_s) is None
    d0, t0 = eng.delivered, eng.now_ms()
    rig.run_until(t0 + dur_s * 1000)
    # The bolus has ended by its nominal duration, and nothing of it was dropped.
    assert eng.streams() == []
    assert rig.logged("bolus_end") == [("clinician", dose)]
    basal_pulses = pulses_of_ng(basal, conc) * F(dur_s * 1000, DAY)
    assert abs(eng.delivered - d0 - basal_pulses - pulses_of_ng(dose, conc)) <= 1


# ---- cancelling ----

WITH_PERIODIC = RX.Prescription(500, [(0, 100_000)], [(60, 30_000, 3_600)])


@pytest.mark.req("SR-09")
@pytest.mark.parametrize("how", ["program", "minimum", "stopped"])
def test_cancelling_during_a_periodic_bolus_drops_and_reports_the_rest(how):
    t_cancel = 80 * MIN + 12_345  # 20 minutes into the 60-minute bolus
    rig = programmed(WITH_PERIODIC, until_ms=t_cancel)
    eng = rig.eng
    assert [s[:2] for s in eng.streams()] == [("periodic", 30_000)]
    # Undelivered = dose - what its rate has pushed so far, in whole ng.
    rate_ru = RX.bolus_rate_ru(30_000, 3_600_000)
    left_ng = (30_000 * RUMS_PER_NG - rate_ru * (t_cancel - 60 * MIN)) // RUMS_PER_NG
    assert 19_000 < left_ng < 21_000
    if how == "program":
        assert eng.program(RX.continuous(500, 100_000)) is None
        after_nl = nl_per_day(100_000, 500)
    elif how == "minimum":
        assert eng.set_mode(E.MODE_MINIMUM) is None
        after_nl = L.HARD_MIN_RATE_NL_PER_DAY
    else:
        assert eng.set_mode(E.MODE_STOPPED) is None
        after_nl = 0
    assert rig.logged("bolus_cancel") == [("periodic", left_ng)]
    assert eng.streams() == []
    d0 = eng.delivered
    rig.run_for(2 * HOUR)
    assert abs(eng.delivered - d0 - after_nl / Q_NL * F(2 * HOUR, DAY)) <= 1


@pytest.mark.req("SR-09", "SR-37")
@pytest.mark.parametrize("kind", ["patient", "clinician"])
def test_stopping_drops_a_running_patient_or_clinician_bolus(kind):
    rig = programmed(patient_rx(rate=100_000, dose=50_000, dur=3_600), until_ms=HOUR)
    eng = rig.eng
    if kind == "patient":
        assert eng.patient_bolus() is None
    else:
        assert eng.clinician_bolus(50_000, 3_600) is None
    rig.run_for(10 * MIN)
    assert eng.set_mode(E.MODE_STOPPED) is None
    d0 = eng.delivered
    rig.run_for(2 * HOUR)
    assert eng.delivered == d0
    assert [c[0] for c in rig.logged("bolus_cancel")] == [kind]


# ---- clinician bolus ----


@pytest.mark.req("SR-08")
def test_clinician_bolus_runs_on_top_of_the_programme_then_returns_to_it():
    rx = RX.Prescription(500, [(0, 100_000), (120, 250_000)])
    rig = programmed(rx, until_ms=100 * MIN)
    eng = rig.eng
    bolus_ru = RX.bolus_rate_ru(20_000, 1_800_000)
    assert eng.clinician_bolus(20_000, 1_800) is None
    assert eng.rate_ru() == 10_000 + bolus_ru
    assert eng.clinician_bolus(5_000, 600) == Refusal(R.BOLUS_ACTIVE, "bolus")
    rig.run_until(125 * MIN)  # the schedule's step at 02:00 happens under the bolus
    assert eng.rate_ru() == 25_000 + bolus_ru
    rig.run_until(130 * MIN)
    assert eng.rate_ru() == 25_000
    assert eng.streams() == [] and eng.mode == E.MODE_PROGRAM and eng.rx == rx
    assert rig.logged("bolus_end") == [("clinician", 20_000)]
    assert eng.clinician_bolus(5_000, 600) is None


# ---- bridge bolus after a refill ----

DEAD_NL = 250_000


@pytest.mark.req("SR-35", "SR-02")
@pytest.mark.parametrize(
    "old, new, rate", [(500, 2000, 350_000), (2000, 500, 350_000), (1000, 50, 100_000)]
)
def test_bridge_delivers_the_dead_volume_at_the_old_strength(old, new, rate):
    rig = programmed(RX.continuous(old, rate), until_ms=DAY + 6 * HOUR)
    eng = rig.eng
    assert rig.limiter.pulse_ng_ceil() == ceil_div(Q_NL.numerator * old, Q_NL.denominator * 1000)
    last_before = len(rig.pulses) - 1
    assert eng.change_concentration(RX.continuous(new, rate), DEAD_NL) is None
    bridge = REF_CALIB.pulses_for_nl(DEAD_NL)
    assert eng.bridge_pulses_left() == bridge
    assert eng.rate_ru() * L.RATE_RES_NG_PER_DAY == rate  # the dose rate does not change
    while eng.bridge_pulses_left():
        assert eng.conc == old
        rig.run_until(eng.next_due_ms())
    rig.run_for(2 * DAY)
    assert eng.conc == new and eng.rate_ru() * L.RATE_RES_NG_PER_DAY == rate
    assert rig.limiter.pulse_ng_ceil() == ceil_div(Q_NL.numerator * new, Q_NL.denominator * 1000)

    times = rig.pulses[last_before:]
    old_period = period_ms(nl_per_day(rate, old))
    new_period = period_ms(nl_per_day(rate, new))
    steps = [b - a for a, b in pairwise(times)]
    bridge_steps, first_new, new_steps = steps[:bridge], steps[bridge], steps[bridge + 1 :]
    assert set(bridge_steps) <= {int(old_period), -(-old_period // 1)}
    # The switch falls on the last old-strength pulse: at most one old-rate millisecond of
    # credit carries into the first new interval.
    assert new_period - F(new, old) - 1 < first_new <= -(-new_period // 1)
    assert set(new_steps) <= {int(new_period), -(-new_period // 1)}
    assert rig.logged("bridge_end") == [(old, new)]
    assert [e[0] for e in rig.events if e[1] == "bridge_end"] == [times[bridge]]
    # Same ug/day: a day's pulses are the rate's volume at each strength, within one pulse.
    before = [t for t in rig.pulses if 5 * HOUR <= t < DAY + 5 * HOUR]
    after = [t for t in rig.pulses if times[bridge] <= t < times[bridge] + DAY]
    assert abs(len(before) - pulses_of_ng(rate, old)) <= 1
    assert abs(len(after) - pulses_of_ng(rate, new)) <= 1


# ---- priming ----


@pytest.mark.req("SR-36", "SR-37")
@pytest.mark.parametrize("mode", [E.MODE_PROGRAM, E.MODE_MINIMUM])
def test_priming_only_from_the_stopped_mode(mode):
    rig = programmed(RX.continuous(500, 350_000), until_ms=HOUR)
    if mode == E.MODE_MINIMUM:
        assert rig.eng.set_mode(E.MODE_MINIMUM) is None
    assert rig.eng.prime(150_000) == Refusal(R.BAD_MODE, "mode")
    assert rig.eng.mode == mode and rig.eng.streams() == []
    assert rig.eng.set_mode(E.MODE_STOPPED) is None
    assert rig.eng.prime(150_000) is None


@pytest.mark.req("SR-36")
@pytest.mark.parametrize(
    "conc, max_rate_nl, volume_nl",
    [
        (500, L.HARD_MAX_RATE_NL_PER_DAY, 150_000),
        (2000, 6_000_000, 40_000),
        (50, L.HARD_MAX_RATE_NL_PER_DAY, 1_000),
        (1000, 1_000_000, 7_777),
    ],
)
def test_priming_delivers_the_volume_at_the_maximum_rate_and_counts_it(conc, max_rate_nl,
                                                                        volume_nl):  # fmt: skip
    rig = Rig(conc, limits(max_rate_nl_per_day=max_rate_nl))
    eng = rig.eng
    rig.run_until(5 * HOUR + 17)
    t0 = eng.now_ms()
    assert eng.prime(volume_nl) is None
    assert eng.rate_ru() * L.RATE_RES_NG_PER_DAY * 1000 == max_rate_nl * conc
    dose_ng = ceil_div(volume_nl * conc, 1000)
    assert rig.logged("bolus_start") == [("priming", dose_ng)]
    while eng.streams():
        rig.run_until(eng.next_due_ms())
    needed = REF_CALIB.pulses_for_nl(volume_nl)
    assert needed - 1 <= len(rig.pulses) <= needed
    period = period_ms(max_rate_nl)
    steps = [b - a for a, b in pairwise([t0] + rig.pulses)]
    assert all(abs(s - period) <= 1 for s in steps), (period, sorted(set(steps)))
    # The limiter counted every primed pulse as drug: exactly their dose, rounded down.
    exact_ng = len(rig.pulses) * Q_NL * conc / 1000
    assert rig.limiter.window_ng == int(exact_ng)
    assert abs(rig.limiter.window_ng - dose_ng) <= rig.limiter.pulse_ng_ceil()
    rig.run_for(DAY)
    assert eng.delivered == len(rig.pulses) and eng.mode == E.MODE_STOPPED


@pytest.mark.req("SR-36", "SR-07")
def test_priming_is_refused_when_its_dose_would_pass_the_rolling_limit():
    rig = Rig(2000, limits(max_24h_ng=500_000))
    assert rig.eng.prime(L.HARD_MAX_PRIME_NL) == Refusal(R.DAILY_LIMIT, "prime.volume_nl")
    assert rig.eng.prime(100_000) is None


# ---- modes ----


@pytest.mark.req("SR-37", "SR-02")
@pytest.mark.parametrize("conc", L.CONCENTRATIONS_UG_PER_ML)
def test_minimum_rate_mode_delivers_the_hard_minimum_flow(conc):
    rig = programmed(RX.continuous(conc, conc * 100), until_ms=HOUR)
    eng = rig.eng
    assert eng.set_mode(E.MODE_MINIMUM) is None
    assert eng.rate_ru() * L.RATE_RES_NG_PER_DAY * 1000 == L.HARD_MIN_RATE_NL_PER_DAY * conc
    d0 = eng.delivered
    rig.run_for(10 * DAY)
    assert abs(eng.delivered - d0 - 10 * L.HARD_MIN_RATE_NL_PER_DAY / Q_NL) <= 1
    assert eng.mode == E.MODE_MINIMUM


@pytest.mark.req("SR-37")
def test_stopped_mode_delivers_nothing():
    rig = programmed(RX.continuous(500, 350_000), until_ms=HOUR)
    eng = rig.eng
    assert eng.set_mode(E.MODE_STOPPED) is None
    d0 = eng.delivered
    rig.run_for(3 * DAY)
    assert eng.delivered == d0 and eng.rate_ru() == 0 and eng.mode == E.MODE_STOPPED


@pytest.mark.req("SR-37", "SR-32")
@pytest.mark.parametrize("mode", [E.MODE_PROGRAM, -1, 3, 99])
def test_set_mode_accepts_only_minimum_or_stopped(mode):
    rig = programmed(RX.continuous(500, 350_000), until_ms=HOUR)
    assert rig.eng.set_mode(E.MODE_MINIMUM) is None
    assert rig.eng.set_mode(mode) == Refusal(R.BAD_MODE, "mode")
    assert rig.eng.mode == E.MODE_MINIMUM


def _tighten(rig, max_24h_ng):
    # Lower only the limiter's own limit, as if the scheduler had a bug the limiter must catch.
    tight = ClinicianLimits(max_24h_ng, 1, L.HARD_MAX_RATE_NL_PER_DAY, 1)
    rig.limiter.set_limits(tight)


@pytest.mark.req("SR-37", "SR-31")
@pytest.mark.parametrize("mode", ["program", "minimum", "priming"])
def test_limiter_block_faults_but_never_changes_the_mode(mode):
    rig = programmed(RX.continuous(2000, 350_000), until_ms=HOUR)
    eng = rig.eng
    if mode == "minimum":
        assert eng.set_mode(E.MODE_MINIMUM) is None
        expected = E.MODE_MINIMUM
    elif mode == "priming":
        assert eng.set_mode(E.MODE_STOPPED) is None
        assert eng.prime(200_000) is None
        expected = E.MODE_STOPPED
    else:
        expected = E.MODE_PROGRAM
    _tighten(rig, rig.limiter.window_ng + 5_000)
    rig.run_for(2 * DAY)
    assert eng.fault and eng.mode == expected
    blocked_at = rig.logged("limiter_block")
    assert len(blocked_at) == 1
    # Nothing after the block, and no request but clear_fault() gets through.
    assert rig.pulses[-1] <= blocked_at[0][0] * DAY + blocked_at[0][1]
    assert eng.set_mode(E.MODE_STOPPED) == Refusal(R.FAULTED, "mode")
    assert eng.clinician_bolus(1_000, 600) == Refusal(R.FAULTED, "mode")
    assert eng.streams() == [] and eng.rate_ru() == 0
    assert eng.clear_fault() is None
    assert eng.mode == expected and not eng.fault


@pytest.mark.req("SR-37")
@settings(max_examples=max(4, settings.default.max_examples // 4),
          suppress_health_check=[HealthCheck.too_slow])  # fmt: skip
@given(st.data())
def test_mode_changes_only_on_an_accepted_clinician_command(data):
    # Random programmes, boluses, refills, primes and mode requests, sometimes with a limiter
    # tighter than the programme: the mode is always the one the last accepted command set.
    g = DataChooser(data)
    first, cmds = gen_timeline(g, 3 * DAY, n_max=15)
    rig = Rig(first.conc_ug_per_ml)
    eng = rig.eng
    if eng.program(first, confirm=True) is not None:
        return
    expected = E.MODE_PROGRAM
    if g.integer(0, 2) == 0:
        _tighten(rig, max(1, RX.daily_dose_ng(first) * g.integer(1, 9) // 10))
    for t, name, args in cmds:
        rig.run_until(t)
        assert eng.mode == expected
        if name == "program":
            if eng.program(args[0], confirm=True) is None:
                expected = E.MODE_PROGRAM
        elif name == "mode":
            if eng.set_mode(args[0]) is None:
                expected = args[0]
        elif name == "bolus":
            eng.clinician_bolus(*args)
        elif name == "patient":
            eng.patient_bolus()
        elif name == "conc":
            eng.change_concentration(*args)
        else:
            eng.prime(*args)
        assert eng.mode == expected
    rig.run_until(3 * DAY)
    assert eng.mode == expected
