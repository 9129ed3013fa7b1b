# Reservoir accounting, the worst-case forecast and the refill procedure, through the Reservoir
# and Usage classes and through a Supervisor driven the way the shell drives it.

import copy
from fractions import Fraction as F

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from boards.sim import board, hw
from pump import alarms as A
from pump import battery as B
from pump import calib as CAL
from pump import engine as E
from pump import limits as L
from pump import reasons as R
from pump import reservoir as RS
from pump import rx as RX
from pump import supervisor as S
from pump.limiter import Limiter

DAY = L.DAY_MS
HOUR = 3_600_000
MIN = L.MIN_MS
ML = 1_000_000
CALIB = board.calibration()
Q_NL = F(CALIB.ml_num * 10**6, CALIB.ml_den)  # exact volume of one pulse of the sim rig, nL
GENEROUS = L.ClinicianLimits(
    L.HARD_MAX_24H_NG, L.HARD_MAX_BOLUS_NG, L.HARD_MAX_RATE_NL_PER_DAY, L.DOSE_STEP_PCT_MAX
)
HEALTHY_UV = 1_500_000  # at the ADC pin: 3.0 V at the cell behind the 1:1 divider


# ---------------------------------------------------------------- the shell, as a test rig


class Pump:
    """A supervisor with the sim board's fakes, driven at exactly the times it asks for."""

    def __init__(self, conc=500, fill=20 * ML, low=2 * ML, capacity=20 * ML, **settings):
        self.log = []  # (engine ms, name, args)
        self.t = 0  # the shell's clock
        self.limiter = Limiter(CALIB, GENEROUS, conc)
        self.eng = E.Engine(CALIB, self.limiter, GENEROUS, conc, log=self._log)
        self.res = RS.Reservoir(CALIB, capacity, low, fill)
        self.bat = B.Monitor(board.CELL, board.ENERGY, board.ADC_CAL, log=self._log)
        self.alarms = A.Alarms(log=self._log)
        st_ = S.Settings(board.PUMP_DEAD_VOLUME_NL, **settings)
        self.sup = S.Supervisor(self.eng, self.res, self.bat, self.alarms, st_, log=self._log)
        self.mech = hw.Mechanism()
        self.buzzer = hw.RecordingBuzzer(lambda: self.t)

    def _log(self, name, *args):
        self.log.append((self.eng.now_ms(), name, args))

    def step(self):
        self.t = self.sup.next_wake_ms()
        n = self.sup.advance(self.t, self.mech, self.buzzer)
        if self.sup.battery_due(self.t):
            self.sup.battery_sample(self.t, HEALTHY_UV * 16, 16)
        return n

    def run_to(self, until):
        """Advance at every wake-up up to until, then stand at until. Returns pulses done."""
        n = 0
        while self.sup.next_wake_ms() <= until:
            n += self.step()
        self.t = until
        n += self.sup.advance(until, self.mech, self.buzzer)
        return n

    def ok(self, result):
        assert result is None, "refused: %d %s" % (result.code, result.field)

    def events(self, name):
        return [(t, args) for t, n, args in self.log if n == name]

    def alarm(self, cid):
        for row in self.alarms.active():
            if row[0] == cid:
                return row
        return None

    def state(self):
        """Everything a refill that changes nothing must leave as it was."""
        eng, res, sup = self.eng, self.res, self.sup
        return (
            eng.mode, eng.conc, eng.next_conc(), None if eng.rx is None else eng.rx.key(),
            eng.delivered, eng.next_due_ms(), eng.rate_ru(), eng.bridge_pulses_left(),
            tuple(eng.streams()), self.limiter.pulses, self.limiter.window_ng,
            res.fill_nl, res.pulses, res.low_nl, res.remaining_nl(),
            tuple(self.alarms.active()), sup.low_at_ms, sup.empty_at_ms, sup.refill_status(),
            self.mech.done, self.mech.attempts,
        )  # fmt: skip


def scheduled(rx, conc, until, first_at=0):
    """Pulse times of rx on a bare engine and limiter (no supervisor): the schedule."""
    li = Limiter(CALIB, GENEROUS, conc)
    eng = E.Engine(CALIB, li, GENEROUS, conc)
    eng.run_until(first_at)
    assert eng.program(rx, confirm=True) is None
    times = []
    eng.run_until(until, times.append)
    return times


REF_RX = RX.continuous(500, 350_000)


# ---------------------------------------------------------------- reservoir estimate


def calibrations():
    measured = st.integers(10**3, 10**10).flatmap(
        lambda den: st.integers(max(1, -(-10 * den // 10**6)), 5000 * den // 10**6).map(
            lambda num: CAL.from_measured(num, den, 16)
        )
    )
    geometry = st.builds(
        CAL.from_geometry,
        st.integers(3_000, 30_000),
        st.integers(300, 2_000),
        st.sampled_from((200, 400)),
        st.sampled_from((1, 8, 16, 32)),
        st.sampled_from((1, 4, 16)),
    )
    return st.one_of(measured, geometry)


def first_pulse_at_or_below(q, fill, level):
    # Fewest n with fill - ceil(n q) <= level, i.e. n q > fill - level - 1 (0 when already so).
    if fill - level <= 0:
        return 0
    return int((fill - level - 1) / q) + 1


@pytest.mark.req("SR-15", "SR-18")
@settings(max_examples=60)
@given(cal=calibrations(), data=st.data())
def test_estimate_and_threshold_crossings(cal, data):
    q = F(cal.ml_num * 10**6, cal.ml_den)
    # At most ~6000 pulses to empty, so every pulse can be walked.
    fill = data.draw(st.integers(1, min(40 * ML, int(6000 * q))), label="fill")
    low = data.draw(st.integers(0, fill + int(q)), label="low")
    res = RS.Reservoir(cal, 40 * ML, low, fill)
    low_n = first_pulse_at_or_below(q, fill, low)
    empty_n = first_pulse_at_or_below(q, fill, 0)
    for n in range(1, empty_n + 30):
        ev = res.on_pulse()
        exact = fill - q * n
        remaining = res.remaining_nl()
        assert remaining == fill - -(-(q * n).numerator // (q * n).denominator)
        assert remaining <= exact  # never above the model
        assert exact - remaining < 1
        if n == empty_n:
            assert ev == RS.EMPTY, (n, remaining)
        elif n == low_n:
            assert ev == RS.LOW, (n, remaining)
        else:
            assert ev == 0, (n, remaining, low_n, empty_n)
        assert res.is_low() == (remaining <= low)
        assert res.is_empty() == (remaining <= 0)
    # Past empty the estimate keeps going down: it is shown as it is, not clamped at zero.
    assert res.remaining_nl() < 0
    assert res.remaining_nl() == fill - res.volume_of_pulses_nl(res.pulses)


@pytest.mark.req("SR-15")
def test_estimate_counts_only_confirmed_pulses():
    p = Pump()
    p.ok(p.sup.program(REF_RX, confirm=True))
    p.run_to(DAY)
    p.mech.fail_next(1)
    p.run_to(2 * DAY)
    assert p.sup.failed_pulses == 1
    assert p.res.pulses == p.mech.done == p.eng.delivered - 1
    assert p.res.remaining_nl() == 20 * ML - -(-p.res.pulses * Q_NL.numerator // Q_NL.denominator)


@pytest.mark.req("SR-15")
def test_low_alarm_at_the_exact_pulse_and_threshold_setting():
    p = Pump(fill=3 * ML, low=2 * ML)
    p.ok(p.sup.program(REF_RX, confirm=True))
    low_n = first_pulse_at_or_below(Q_NL, 3 * ML, 2 * ML)
    while p.mech.done < low_n - 1:
        p.step()
    assert p.alarm(A.RES_LOW) is None
    while p.mech.done < low_n:
        p.step()
    row = p.alarm(A.RES_LOW)
    assert row is not None and row[2] == A.MEDIUM and row[3]
    assert p.res.remaining_nl() <= 2 * ML < p.res.remaining_nl() + p.res.pulse_volume_nl_ceil()
    # The clinician lowers the threshold below the estimate: the condition clears at once.
    before = p.sup.low_at_ms
    p.ok(p.sup.set_low_threshold(1 * ML))
    assert not p.alarm(A.RES_LOW)[3]
    assert p.sup.low_at_ms > before
    assert p.events("low_threshold")[-1][1] == (2 * ML, 1 * ML)
    # Above the capacity it is refused and nothing changes.
    s = p.state()
    bad = p.sup.set_low_threshold(20 * ML + 1)
    assert bad is not None and bad.code == R.ABOVE_MAX
    assert p.state() == s


@pytest.mark.req("SR-18", "SR-14")
def test_empty_is_high_alarm_logged_and_delivery_goes_on():
    fill = 3 * ML
    p = Pump(fill=fill, low=2 * ML)
    p.ok(p.sup.program(REF_RX, confirm=True))
    empty_n = first_pulse_at_or_below(Q_NL, fill, 0)
    while p.mech.done < empty_n - 1:
        p.step()
    assert p.alarm(A.RES_EMPTY) is None
    while p.mech.done < empty_n:
        p.step()
    row = p.alarm(A.RES_EMPTY)
    assert row is not None and row[2] == A.HIGH and row[3]
    assert p.res.remaining_nl() <= 0
    raised = [a for t, a in p.events("alarm_raise") if a[0] == "reservoir_empty"]
    assert raised == [("reservoir_empty", "high")]
    # The following day delivers exactly the scheduled pulses.
    t0 = p.eng.now_ms()
    sched = scheduled(REF_RX, 500, t0 + DAY)
    want = sum(1 for x in sched if t0 < x <= t0 + DAY)
    done0 = p.mech.done
    p.run_to(t0 + DAY)
    assert p.mech.done - done0 == want
    assert p.res.remaining_nl() < -ML // 2  # negative, not clamped
    assert p.alarms.highest() == A.HIGH


# ---------------------------------------------------------------- forecast


def step_rate(steps, tod):
    r = steps[0][1]
    for s, v in steps:
        if s * MIN <= tod:
            r = v
    return r


def greedy_patient_starts(n, lockout_ms, until):
    """Every patient bolus taken as soon as both the lockout and the n-per-rolling-24 h rule
    allow (the engine refuses one at now - start < lockout, or with n starts in (now-24h,
    now]). Taking each at the earliest instant maximises the count by any time."""
    starts = []
    c = 0
    while c <= until:
        if len(starts) >= n and starts[-n] > c - DAY:
            c = starts[-n] + DAY
            continue
        starts.append(c)
        c += lockout_ms
    return starts


def worst_case_ms(tod0, conc, steps, periodic, patient, volume_nl, horizon_ms):
    """First ms at which the worst case has used volume_nl: an event-by-event walk with exact
    fractions. Boluses are counted whole when they start; the basal is integrated exactly."""
    if volume_nl <= 0:
        return 0
    dose, lockout_ms, n = patient
    jumps = {}  # span ms -> ng starting then
    if n and dose:
        for s in greedy_patient_starts(n, lockout_ms, horizon_ms):
            jumps[s] = jumps.get(s, 0) + dose
    for start_min, pdose, _dur in periodic:
        first = start_min * MIN - tod0
        if first <= 0:
            first += DAY
        while first <= horizon_ms:
            jumps[first] = jumps.get(first, 0) + pdose
            first += DAY
    cuts = set(jumps)
    if steps:
        for day in range(horizon_ms // DAY + 2):
            for s, _r in steps:
                x = day * DAY + s * MIN - tod0
                if 0 < x <= horizon_ms:
                    cuts.add(x)
    cuts.add(horizon_ms)
    ng = F(jumps.get(0, 0))
    target = F(volume_nl) * conc / 1000  # the volume as a dose at conc
    cur = 0
    for e in sorted(cuts):
        if e == 0:
            continue
        rate = step_rate(steps, (tod0 + cur) % DAY) if steps else 0
        if ng >= target:
            return cur
        if rate and ng + F(rate * (e - cur), DAY) >= target:
            need = (target - ng) * DAY / rate
            return cur + -(-need.numerator // need.denominator)
        ng += F(rate * (e - cur), DAY) + jumps.get(e, 0)
        cur = e
    return cur if ng >= target else None


def programmes(long_lockout):
    conc = st.sampled_from(L.CONCENTRATIONS_UG_PER_ML)

    def build(c, data):
        n_steps = data.draw(st.integers(1, 5))
        starts = sorted({0} | set(data.draw(st.lists(st.integers(1, 1439), max_size=n_steps))))
        # Valid basal rates: at least the minimum flow, at most a quarter of the maximum.
        lo = -(-L.HARD_MIN_RATE_NL_PER_DAY * c // 1000 // 10) + 1
        hi = min(L.HARD_MAX_RATE_NL_PER_DAY // 4 * c // 1000, 1_000_000) // 10
        steps = tuple((s, data.draw(st.integers(lo, hi)) * 10) for s in starts)
        periodic = []
        for k in range(data.draw(st.integers(0, 3))):
            periodic.append((k * 480 + data.draw(st.integers(0, 400)),
                             data.draw(st.integers(1, 200_000)), 600))  # fmt: skip
        n = data.draw(st.integers(0, 8))
        if long_lockout:
            n = max(n, 2)
            # (n - 1) lockouts reach past a day: the daily count is never the binding rule.
            lo = -(-DAY // (n - 1)) // 1000
            lockout_s = data.draw(st.integers(lo, L.LOCKOUT_MAX_S))
        else:
            hi = L.LOCKOUT_MAX_S if n <= 1 else (DAY - 1) // (n - 1) // 1000
            lockout_s = data.draw(st.integers(L.LOCKOUT_MIN_S, max(L.LOCKOUT_MIN_S, hi)))
        patient = (data.draw(st.integers(1, 100_000)), lockout_s * 1000, n)
        tod = data.draw(st.integers(0, DAY - 1))
        return c, tod, steps, tuple(periodic), patient

    return st.tuples(conc, st.data()).map(lambda a: build(*a))


def check_forecast(prog, data):
    conc, tod, steps, periodic, patient = prog
    u = RS.Usage(tod, conc, steps=steps, periodic=periodic, patient=patient)
    # A volume used within about 60 days, so the brute force stays short.
    per_day = u.used_nl(DAY)
    vol = data.draw(st.integers(1, max(1, min(40 * ML, 60 * per_day))), label="volume_nl")
    got = u.time_to_use_ms(vol)
    assert got is not None
    horizon = 3 * got + 2 * DAY
    truth = worst_case_ms(tod, conc, steps, periodic, patient, vol, horizon)
    assert truth is not None, "worst case uses the volume after %d ms, forecast %d" % (
        horizon, got)  # fmt: skip
    assert got <= truth, "forecast later than the worst case by %d ms" % (got - truth)
    assert truth - got <= MIN, "forecast %d ms earlier than the worst case" % (truth - got)


@pytest.mark.req("SR-17")
@settings(max_examples=80)
@given(prog=programmes(long_lockout=False), data=st.data())
def test_forecast_matches_brute_force_worst_case(prog, data):
    check_forecast(prog, data)


@pytest.mark.req("SR-17")
@settings(max_examples=30)
@given(prog=programmes(long_lockout=True), data=st.data())
def test_forecast_matches_worst_case_with_long_lockouts(prog, data):
    # Lockouts long enough that (n - 1) of them pass a day: the lockout alone limits boluses.
    check_forecast(prog, data)


@pytest.mark.req("SR-17")
def test_forecast_long_lockout_example():
    # 4 patient boluses allowed a day but an 8 h lockout: at most 0, 8, 16, 24, ... h, i.e.
    # 3 a day, so over 10 days the worst case takes 31 boluses (t = 0 .. 240 h), not 41.
    u = RS.Usage(0, 500, steps=((0, 350_000),), patient=(25_000, 8 * HOUR, 4))
    assert greedy_patient_starts(4, 8 * HOUR, 10 * DAY)[-1] == 10 * DAY
    assert len(greedy_patient_starts(4, 8 * HOUR, 10 * DAY)) == 31
    assert u.used_nl(10 * DAY) == 7 * ML + 31 * 50_000


@pytest.mark.req("SR-17")
def test_worst_case_empty_date_by_hand():
    # 350 ug/day at 500 ug/mL is 700,000 nL/day; each 25 ug patient bolus is 50,000 nL, and the
    # worst case takes 4 a day at 0, 1, 2 and 3 h of each day from now.
    # Empty (20 mL): after 22 days 15.4 mL basal + 89 boluses (4.45 mL) = 19.85 mL; on day 23
    # the boluses at 1 h and 2 h bring it to 19.95 mL + basal, which first reaches 20 mL at the
    # bolus of 22 d 2 h (basal then 58,333 nL > 50,000 nL still needed): 22 d 2 h exactly.
    # Low (18 mL used): 80 boluses (4 mL) + 14 mL basal at 20 d; the estimate is whole nL
    # rounded up, so it shows 18 mL used once the basal passes 13,999,999 nL:
    # 20 d - DAY / 700,000 = 20 d - 123.4 ms, the first whole ms 20 d - 123.
    p = Pump()
    rx = RX.continuous(500, 350_000, patient_dose_ng=25_000, patient_duration_s=600,
                       patient_lockout_s=3600, patient_max_per_24h=4)  # fmt: skip
    n0 = len(p.events("forecast"))
    p.ok(p.sup.program(rx, confirm=True))
    assert p.sup.empty_at_ms == 22 * DAY + 2 * HOUR
    assert p.sup.low_at_ms == 20 * DAY - 123
    fc = p.events("forecast")
    assert len(fc) == n0 + 1 and fc[-1][1] == (20 * DAY - 123, 22 * DAY + 2 * HOUR)


@pytest.mark.req("SR-17")
def test_forecast_recomputed_at_programme_change_and_refill():
    p = Pump()
    p.ok(p.sup.program(REF_RX, confirm=True))
    first = (p.sup.low_at_ms, p.sup.empty_at_ms)
    # 0.7 mL/day from 20 mL: 18 mL and 20 mL used, less up to one nL of rounding (123 ms).
    assert 0 <= 18 * ML * DAY // 700_000 - first[0] <= 124
    assert 0 <= 20 * ML * DAY // 700_000 - first[1] <= 124
    p.run_to(5 * DAY)
    n = len(p.events("forecast"))
    p.ok(p.sup.program(RX.continuous(500, 300_000), confirm=True))
    second = (p.sup.low_at_ms, p.sup.empty_at_ms)
    assert len(p.events("forecast")) == n + 1
    assert second[0] > first[0] and second[1] > first[1]
    # Empty: the remaining volume at 600,000 nL/day from now (within one nL of rounding).
    left = p.res.remaining_nl()
    assert abs(second[1] - (p.eng.now_ms() + left * DAY // 600_000)) <= 200
    p.run_to(6 * DAY)
    p.ok(p.sup.refill_begin(p.res.remaining_nl()))
    p.ok(p.sup.refill_fill(20 * ML, 500))
    p.ok(p.sup.refill_commit())
    third = (p.sup.low_at_ms, p.sup.empty_at_ms)
    assert len(p.events("forecast")) == n + 2
    assert third[1] > second[1]
    assert abs(third[1] - (6 * DAY + 20 * ML * DAY // 600_000)) <= 200
    assert p.events("forecast")[-1][1] == third


@pytest.mark.req("SR-17")
def test_nothing_running_is_not_in_sight():
    p = Pump()
    assert p.sup.low_at_ms is None and p.sup.empty_at_ms is None
    assert RS.Usage(0, 500).time_to_use_ms(1) is None


# ---------------------------------------------------------------- refill


def refill(p, withdrawn, fill=20 * ML, conc=None):
    conc = p.eng.next_conc() if conc is None else conc
    p.ok(p.sup.refill_begin(withdrawn))
    p.ok(p.sup.refill_fill(fill, conc))
    p.ok(p.sup.refill_commit())


_CHECKPOINTS = {}


def checkpoint(days):
    """A pump that ran the reference programme from a 20 mL fill for `days` (a fresh copy)."""
    if days not in _CHECKPOINTS:
        p = Pump()
        p.ok(p.sup.program(REF_RX, confirm=True))
        p.run_to(days * DAY)
        _CHECKPOINTS[days] = p
    return copy.deepcopy(_CHECKPOINTS[days])


@pytest.mark.req("SR-16")
def test_minus_20_percent_residual_alarms():
    # After 8 days: delivered ~5.6 mL, so the tolerance is max(1 mL, 1.12 mL) = 1.12 mL, and
    # 20 % of the ~14.4 mL residual (2.88 mL) is well beyond it.
    p = checkpoint(8)
    expected = p.res.remaining_nl()
    delivered = p.res.used_nl()
    tol = max(ML, delivered * 20 // 100)
    assert expected // 5 > tol
    withdrawn = expected * 80 // 100
    p.ok(p.sup.refill_begin(withdrawn))
    st_ = p.sup.refill_status()
    assert st_[:4] == (withdrawn, expected, tol, True)
    p.ok(p.sup.refill_fill(20 * ML, 500))
    p.ok(p.sup.refill_commit())
    row = p.alarm(A.DISCREPANCY)
    assert row is not None and row[2] == A.MEDIUM
    raised = [a for _t, a in p.events("alarm_raise") if a[0] == "accounting_discrepancy"]
    assert raised == [("accounting_discrepancy", "medium", withdrawn, expected)]
    (ev,) = p.events("refill")
    assert ev[1][:2] == (withdrawn, expected) and ev[1][-1] == 1


@pytest.mark.req("SR-16")
def test_residual_within_tolerance_does_not_alarm():
    p = checkpoint(8)
    expected = p.res.remaining_nl()
    tol = max(ML, p.res.used_nl() * 20 // 100)
    refill(p, expected - tol)
    assert p.alarm(A.DISCREPANCY) is None
    (ev,) = p.events("refill")
    assert ev[1][-1] == 0 and ev[1][:2] == (expected - tol, expected)


@pytest.mark.req("SR-16", "SR-42")
@settings(max_examples=60)
@given(
    days=st.sampled_from((1, 8, 26)),
    offset=st.one_of(
        st.integers(-6 * ML, 6 * ML),
        st.sampled_from((-1, 0, 1)).flatmap(
            lambda e: st.sampled_from(("tol", "-tol")).map(lambda s: (s, e))
        ),  # fmt: skip
    ),
)
def test_discrepancy_alarm_iff_beyond_tolerance(days, offset):
    # 1 day: 0.7 mL delivered (the 1 mL floor applies); 8 days: 20 % of 5.6 mL; 26 days: the
    # reservoir is past its low threshold (18.2 mL delivered).
    p = checkpoint(days)
    expected = p.res.remaining_nl()
    delivered = F(p.res.used_nl())
    tol = max(F(ML), delivered * 20 / 100)
    if isinstance(offset, tuple):
        sign = 1 if offset[0] == "tol" else -1
        offset = sign * int(tol) + offset[1]
    withdrawn = expected + offset
    if not 0 <= withdrawn <= 20 * ML:
        bad = p.sup.refill_begin(withdrawn)
        assert bad is not None and p.sup.refill_status() is None
        return
    refill(p, withdrawn)
    alarmed = p.alarm(A.DISCREPANCY) is not None
    assert alarmed == (abs(withdrawn - expected) > tol)
    (ev,) = p.events("refill")
    assert ev[1][-1] == (1 if alarmed else 0)


@pytest.mark.req("SR-42")
def test_overfill_refused_and_changes_nothing():
    p = checkpoint(8)
    p.ok(p.sup.refill_begin(p.res.remaining_nl()))
    s = p.state()
    bad = p.sup.refill_fill(20 * ML + 1, 500)
    assert bad is not None and (bad.code, bad.field) == (R.OVER_CAPACITY, "fill_nl")
    assert p.state() == s
    assert p.events("refused")[-1][1] == ("refill_fill", R.OVER_CAPACITY, "fill_nl")
    bad = p.sup.refill_fill(0, 500)
    assert bad is not None and bad.code == R.BELOW_MIN and p.state() == s
    # The step can be retried with a correct volume.
    p.ok(p.sup.refill_fill(20 * ML, 500))
    p.ok(p.sup.refill_commit())
    assert p.res.remaining_nl() == 20 * ML


@pytest.mark.req("SR-42")
def test_withdrawn_above_capacity_refused():
    p = checkpoint(1)
    s = p.state()
    bad = p.sup.refill_begin(20 * ML + 1)
    assert bad is not None and bad.code == R.OVER_CAPACITY
    assert p.state() == s


@pytest.mark.req("SR-42")
@pytest.mark.parametrize("conc", (400, 0, -500, 500.0, 5000))
def test_disallowed_concentration_refused(conc):
    p = checkpoint(1)
    p.ok(p.sup.refill_begin(p.res.remaining_nl()))
    s = p.state()
    bad = p.sup.refill_fill(20 * ML, conc)
    assert bad is not None and (bad.code, bad.field) == (R.NOT_ALLOWED, "conc_ug_per_ml")
    assert p.state() == s


@pytest.mark.req("SR-42")
def test_steps_out_of_order_refused():
    p = checkpoint(1)
    s = p.state()
    for call in (lambda: p.sup.refill_fill(20 * ML, 500), p.sup.refill_commit):
        bad = call()
        assert bad is not None and bad.code == R.STEP_ORDER
        assert p.state() == s
    bad = p.sup.refill_abandon()
    assert bad is not None and bad.code == R.NOT_ACTIVE
    p.ok(p.sup.refill_begin(ML))
    s = p.state()
    for call in (lambda: p.sup.refill_begin(ML), p.sup.refill_commit):
        bad = call()
        assert bad is not None and bad.code == R.STEP_ORDER
        assert p.state() == s
    p.ok(p.sup.refill_fill(20 * ML, 500))
    s = p.state()
    bad = p.sup.refill_fill(10 * ML, 500)
    assert bad is not None and bad.code == R.STEP_ORDER and p.state() == s
    p.ok(p.sup.refill_commit())
    assert p.events("refill") and p.sup.refill_status() is None


@pytest.mark.req("SR-42", "SR-35")
def test_concentration_change_schedules_bridge_and_keeps_dose():
    p = checkpoint(8)
    rx_before = p.eng.rx
    bridge = -(-board.PUMP_DEAD_VOLUME_NL // Q_NL)
    refill(p, p.res.remaining_nl(), 20 * ML, 1000)
    assert p.eng.bridge_pulses_left() == bridge == CALIB.pulses_for_nl(board.PUMP_DEAD_VOLUME_NL)
    assert p.eng.rx.steps == rx_before.steps and p.eng.rx.conc_ug_per_ml == 1000
    assert p.eng.next_conc() == 1000 and p.eng.conc == 500
    (ev,) = p.events("refill")
    assert ev[1][3:6] == (500, 1000, bridge)
    # The bridge goes out at the old rate, then the programme at the new strength: 350 ug/day
    # at 1000 ug/mL is 350,000 nL/day.
    while p.eng.bridge_pulses_left():
        p.step()
    p.step()
    assert p.eng.conc == 1000
    t0 = p.eng.now_ms()
    d0 = p.mech.done
    p.run_to(t0 + 5 * DAY)
    delivered_nl = (p.mech.done - d0) * Q_NL
    assert abs(delivered_nl - 5 * 350_000) <= Q_NL  # within a pulse of the programme
    assert p.eng.rx.steps == ((0, 350_000),)


@pytest.mark.req("SR-42")
def test_refill_in_stopped_mode():
    p = Pump(fill=10 * ML)
    assert p.eng.mode == E.MODE_STOPPED and p.eng.rx is None
    p.ok(p.sup.refill_begin(10 * ML))
    p.ok(p.sup.refill_fill(15 * ML, 2000))
    p.ok(p.sup.refill_commit())
    assert p.res.remaining_nl() == 15 * ML
    assert p.eng.next_conc() == 2000
    assert p.eng.bridge_pulses_left() == CALIB.pulses_for_nl(board.PUMP_DEAD_VOLUME_NL)
    assert p.alarm(A.DISCREPANCY) is None
    assert len(p.events("refill")) == 1
    # A programme at the new strength is then accepted.
    p.ok(p.sup.program(RX.continuous(2000, 350_000), confirm=True))
    assert p.sup.empty_at_ms is not None


@pytest.mark.req("SR-42", "SR-14")
def test_abandoned_refill_changes_nothing_and_therapy_goes_on():
    # Delivery and accounting stay exactly as they were. Once the fill step was entered, drug
    # may have been exchanged, so the accounting-discrepancy alarm says so (nothing else).
    ALARMS = 15  # index of the alarm list in Pump.state()
    for how in ("user", "timeout"):
        p = checkpoint(8)
        twin = copy.deepcopy(p)
        t0 = p.eng.now_ms()
        done0 = p.mech.done
        p.ok(p.sup.refill_begin(p.res.remaining_nl() // 2))
        p.run_to(t0 + 10 * MIN)
        p.ok(p.sup.refill_fill(20 * ML, 1000))
        p.run_to(t0 + 20 * MIN)
        if how == "user":
            p.ok(p.sup.refill_abandon())
        p.run_to(t0 + 2 * HOUR)
        twin.run_to(t0 + 2 * HOUR)
        assert p.mech.done > done0  # pulses kept coming during the open refill
        a, b = p.state(), twin.state()
        assert a[:ALARMS] == b[:ALARMS] and a[ALARMS + 1 :] == b[ALARMS + 1 :], how
        assert [r[0] for r in a[ALARMS]] == [A.DISCREPANCY] and b[ALARMS] == ()
        assert p.sup.refill_status() is None
        assert not p.events("refill")
        (ab,) = p.events("refill_abandoned")
        assert ab[1][0] == how and ab[1][3:] == (20 * ML, 1000)
        extra = [e for e in p.log if e not in twin.log]
        assert [e[1] for e in extra] == [
            "refill_begin", "refill_fill", "refill_abandoned", "alarm_raise",
            "alarm_condition_cleared"
        ]  # fmt: skip


@pytest.mark.req("SR-42")
def test_refill_abandoned_after_a_matching_withdrawal_changes_nothing_at_all():
    p = checkpoint(8)
    twin = copy.deepcopy(p)
    t0 = p.eng.now_ms()
    p.ok(p.sup.refill_begin(p.res.remaining_nl()))
    p.run_to(t0 + 10 * MIN)
    p.ok(p.sup.refill_abandon())
    p.run_to(t0 + HOUR)
    twin.run_to(t0 + HOUR)
    assert p.state() == twin.state()
    extra = [e for e in p.log if e not in twin.log]
    assert [e[1] for e in extra] == ["refill_begin", "refill_abandoned"]


@pytest.mark.req("SR-42")
def test_a_strength_the_engine_would_refuse_is_refused_at_the_fill_step():
    # During a bridge no new strength can be taken: say so before the drug goes in.
    p = checkpoint(8)
    p.ok(p.sup.refill_begin(p.res.remaining_nl()))
    p.ok(p.sup.refill_fill(20 * ML, 1000))
    p.ok(p.sup.refill_commit())
    assert p.eng.bridge_pulses_left() > 0
    p.ok(p.sup.refill_begin(p.res.remaining_nl()))
    before = p.state()
    bad = p.sup.refill_fill(20 * ML, 500)
    assert bad is not None and bad.code == R.BRIDGE_ACTIVE
    assert p.state() == before
    assert p.events("refused")[-1][1][0] == "refill_fill"


@pytest.mark.req("SR-42", "SR-14")
def test_therapy_continues_during_refill_and_it_is_one_event():
    p = checkpoint(8)
    t0 = p.eng.now_ms()
    done0 = p.mech.done
    p.ok(p.sup.refill_begin(p.res.remaining_nl()))
    p.run_to(t0 + 15 * MIN)
    p.ok(p.sup.refill_fill(20 * ML, 500))
    p.run_to(t0 + 30 * MIN)
    mark = len(p.log)
    p.ok(p.sup.refill_commit())
    sched = scheduled(REF_RX, 500, t0 + 30 * MIN)
    assert p.mech.done - done0 == sum(1 for x in sched if t0 < x <= t0 + 30 * MIN)
    names = [e[1] for e in p.log[mark:]]
    assert names.count("refill") == 1 and "forecast" in names
    assert len(p.events("refill")) == 1


@pytest.mark.req("SR-15", "SR-18", "SR-42")
def test_low_and_empty_alarms_clear_after_refill():
    p = Pump(fill=3 * ML)
    p.ok(p.sup.program(REF_RX, confirm=True))
    p.run_to(5 * DAY)
    assert p.alarm(A.RES_EMPTY)[3] and p.alarm(A.RES_LOW)[3]
    refill(p, 0)
    assert not p.alarm(A.RES_EMPTY)[3] and not p.alarm(A.RES_LOW)[3]
    assert p.sup.acknowledge(A.RES_EMPTY) is None and p.sup.acknowledge(A.RES_LOW) is None
    assert p.alarm(A.RES_EMPTY) is None and p.alarm(A.RES_LOW) is None
    assert p.res.remaining_nl() == 20 * ML and not p.res.is_low()


@pytest.mark.req("SR-15", "SR-18")
@pytest.mark.parametrize("fill,want", [(0, [A.RES_EMPTY, A.RES_LOW]), (ML + ML // 2, [A.RES_LOW]),
                                       (2 * ML, [A.RES_LOW]), (2 * ML + 1, [])])  # fmt: skip
def test_a_reservoir_that_starts_low_or_empty_alarms_at_once(fill, want):
    # No pulse ever crosses a threshold the estimate is already at, so the start must say it.
    p = Pump(fill=fill)
    assert [r[0] for r in p.alarms.active() if r[0] in (A.RES_EMPTY, A.RES_LOW)] == want
