# The independent safety limiter: never exceeded under any command sequence, and it stops a
# scheduler that misbehaves. The truth here is an exact rolling sum over the pulse log.

from collections import deque
from fractions import Fraction as F

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from host_tests.exactness import REF_CALIB
from host_tests.gen import DataChooser, gen_bolus, gen_rx
from pump import engine as E
from pump import limits as L
from pump import reasons as R
from pump import rx as RX
from pump.limiter import Limiter, Projection

GENEROUS_LIMITS = L.ClinicianLimits(
    L.HARD_MAX_24H_NG, L.HARD_MAX_BOLUS_NG, L.HARD_MAX_RATE_NL_PER_DAY, 30
)

DAY = L.DAY_MS


class PulseLog:
    """Exact rolling 24 h dose over commanded pulses, from the calibration alone."""

    def __init__(self, calib):
        self.q_ml = F(calib.ml_num, calib.ml_den)
        self.window = deque()
        self.sum_ng = F(0)
        self.peak_ng = F(0)
        self.over_ng = F(0)  # worst excess over the limit in force at a pulse
        self.count = 0

    def add(self, t_ms, conc, limit_ng=None):
        dose = self.q_ml * conc * 1000
        self.window.append((t_ms, dose))
        self.sum_ng += dose
        while self.window[0][0] <= t_ms - DAY:
            self.sum_ng -= self.window.popleft()[1]
        self.peak_ng = max(self.peak_ng, self.sum_ng)
        if limit_ng is not None:
            self.over_ng = max(self.over_ng, self.sum_ng - limit_ng)
        self.count += 1


def _setup(lim, rx, engine_cls=E.Engine):
    limiter = Limiter(REF_CALIB, lim, rx.conc_ug_per_ml)
    eng = engine_cls(REF_CALIB, limiter, lim, rx.conc_ug_per_ml)
    log = PulseLog(REF_CALIB)
    return eng, log


class LimiterMachine(RuleBasedStateMachine):
    """Random clinician and patient commands with time passing in between."""

    engine_cls = E.Engine

    @initialize(data=st.data(), max_24h_ug=st.integers(200, 3000))
    def setup(self, data, max_24h_ug):
        self.lim = L.ClinicianLimits(
            max_24h_ug * 1000, L.HARD_MAX_BOLUS_NG, L.HARD_MAX_RATE_NL_PER_DAY, 30
        )
        self.g = DataChooser(data)
        rx = gen_rx(self.g, max_rate_ng=max_24h_ug * 1000)
        self.eng, self.log = _setup(self.lim, rx, self.engine_cls)
        self.eng.program(rx, confirm=True)
        self.refused = 0

    def _on_pulse(self, t):
        self.log.add(t, self.eng.conc, self.lim.max_24h_ng)

    # Time is drawn in hours plus milliseconds: plain integer draws favour tiny values, and
    # the limit is only met when days of delivery pile up.
    @rule(hours=st.integers(0, 30), ms=st.integers(1, 3_599_999))
    def advance(self, hours, ms):
        self.eng.run_until(self.eng.now_ms() + hours * 3_600_000 + ms, self._on_pulse)

    @rule(days=st.integers(1, 3))
    def advance_days(self, days):
        self.eng.run_until(self.eng.now_ms() + days * DAY, self._on_pulse)

    @rule(confirm=st.booleans())
    def program(self, confirm):
        rx = gen_rx(self.g, self.eng._next_conc, max_rate_ng=self.lim.max_24h_ng)
        self._count(self.eng.program(rx, confirm=confirm))

    @rule(pct=st.integers(50, 100), confirm=st.booleans(), patient=st.integers(0, 4))
    def program_near_limit(self, pct, confirm, patient):
        # Basal alone close to the limit, so boluses and programme changes meet the limit.
        conc = self.eng._next_conc
        rate = self.lim.max_24h_ng * pct // 100 // 10 * 10
        extra = {}
        if patient:
            extra = dict(patient_dose_ng=self.lim.max_24h_ng // 20, patient_duration_s=600,
                         patient_lockout_s=1800, patient_max_per_24h=patient)  # fmt: skip
        self._count(self.eng.program(RX.continuous(conc, rate, **extra), confirm=confirm))

    @rule(pct=st.integers(1, 30))
    def large_bolus(self, pct):
        dose = min(self.lim.max_24h_ng * pct // 100, L.HARD_MAX_BOLUS_NG)
        self._count(self.eng.clinician_bolus(dose, 3600))

    @rule()
    def clinician_bolus(self):
        self._count(self.eng.clinician_bolus(*gen_bolus(self.g, self.eng.conc)))

    @rule()
    def patient_bolus(self):
        self._count(self.eng.patient_bolus())

    @rule(mode=st.sampled_from((E.MODE_MINIMUM, E.MODE_STOPPED)))
    def set_mode(self, mode):
        self._count(self.eng.set_mode(mode))

    @rule(conc=st.sampled_from(L.CONCENTRATIONS_UG_PER_ML), dead=st.integers(0, 300_000))
    def change_concentration(self, conc, dead):
        rx = self.eng.rx.with_concentration(conc) if self.eng.rx else RX.continuous(conc, 0)
        self._count(self.eng.change_concentration(rx, dead))

    @rule(volume=st.integers(1, 300_000))
    def prime(self, volume):
        self._count(self.eng.prime(volume))

    @rule(copy=st.booleans())
    def snapshot(self, copy):
        # A commit's snapshot turns the ring in place (oldest bucket first); the window it
        # lists is the one before, and the limiter goes on exactly as if nothing happened (the
        # machine's invariants keep checking it against the pulse log).
        li = self.eng.limiter
        p = li._pos + 1
        oldest_first = list(li._buckets[p:]) + list(li._buckets[:p])
        window = li.window_ng
        ring = li.snapshot(copy)[15]
        assert list(ring) == oldest_first
        assert (ring is li._buckets) is not copy
        assert li.window_ng == window and li._pos == len(oldest_first) - 1

    @rule(pct=st.integers(30, 150))
    def set_limits(self, pct):
        # Limits that would make the limiter block what runs must be refused, not accepted.
        new = L.ClinicianLimits(
            min(L.HARD_MAX_24H_NG, self.lim.max_24h_ng * pct // 100),
            L.HARD_MAX_BOLUS_NG,
            L.HARD_MAX_RATE_NL_PER_DAY * pct // 150,
            30,
        )
        if self.eng.set_limits(new) is None:
            self.lim = new
        else:
            self.refused += 1

    def _count(self, result):
        if result is not None:
            self.refused += 1

    @invariant()
    def rolling_limit_never_exceeded(self):
        # Against the limit in force at each pulse: set_limits may lower it later.
        if hasattr(self, "log"):
            assert self.log.over_ng <= 0

    @invariant()
    def accepted_commands_never_trip_the_limiter(self):
        # The limiter's margin is reserved at validation, so a correct schedule never meets it.
        if hasattr(self, "eng"):
            assert self.eng.limiter.blocked == 0
            assert not self.eng.fault


LimiterMachine.TestCase.settings = settings(
    max_examples=max(20, settings.default.max_examples // 2),
    stateful_step_count=40,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestLimiterMachine = pytest.mark.req("SR-31", "SR-07")(LimiterMachine.TestCase)


class FaultyEngine(E.Engine):
    """A scheduler whose bug can be switched on: it runs `factor` times the programmed rate."""

    factor = 1

    def _rate_ru(self):
        return self.factor * E.Engine._rate_ru(self)


class FaultyLimiterMachine(LimiterMachine):
    """The same commands, plus injected scheduler faults: only the limiter stands in the way."""

    engine_cls = FaultyEngine

    @rule(factor=st.sampled_from((1, 2, 3, 10)))
    def inject(self, factor):
        self.eng.factor = factor
        self.eng._begin()
        self.eng._resegment()

    @rule()
    def clear_fault(self):
        self._count(self.eng.clear_fault())

    @invariant()
    def accepted_commands_never_trip_the_limiter(self):
        pass  # injected faults trip it on purpose; the rolling limit is what must hold


FaultyLimiterMachine.TestCase.settings = LimiterMachine.TestCase.settings
TestFaultyLimiterMachine = pytest.mark.req("SR-31")(FaultyLimiterMachine.TestCase)


class RunawayEngine(E.Engine):
    """A scheduler with a bug: it runs three times the programmed rate."""

    def _rate_ru(self):
        return 3 * E.Engine._rate_ru(self)


@pytest.mark.req("SR-31")
def test_limiter_stops_a_runaway_scheduler_at_the_daily_limit():
    lim = L.ClinicianLimits(800_000, 100_000, L.HARD_MAX_RATE_NL_PER_DAY, 30)
    rx = RX.continuous(500, 500_000)
    eng, log = _setup(lim, rx, RunawayEngine)
    assert eng.program(rx, confirm=True) is None
    eng.run_until(3 * DAY, lambda t: log.add(t, eng.conc))
    assert eng.fault and eng.limiter.blocked == 1
    assert log.peak_ng <= lim.max_24h_ng
    # Blocked means stopped: no further pulses however long we wait, mode unchanged.
    n = eng.delivered
    eng.run_until(5 * DAY)
    assert eng.delivered == n
    assert eng.mode == E.MODE_PROGRAM
    assert eng.wait_ms() > 0


@pytest.mark.req("SR-31")
def test_limiter_blocks_pulses_closer_than_the_maximum_rate_allows():
    lim = L.ClinicianLimits(3_000_000, 100_000, 1_000_000, 30)
    li = Limiter(REF_CALIB, lim, 500)
    # 660.52 nL per pulse at 1 mL/day is one pulse per 57,068.9 ms.
    assert li.min_gap_ms == 57_068
    assert li.allow(0, 1_000)
    assert not li.allow(0, 1_000 + 57_067)
    assert li.allow(0, 1_000 + 57_068)
    assert li.blocked == 1 and li.pulses == 2


@pytest.mark.req("SR-31")
def test_limiter_counts_bridge_pulses_at_the_old_strength():
    lim = L.ClinicianLimits(3_000_000, 100_000, L.HARD_MAX_RATE_NL_PER_DAY, 30)
    li = Limiter(REF_CALIB, lim, 500)
    li.on_refill(2000, 2)
    for i in range(3):
        assert li.allow(0, i * 10_000)
    # Two pulses at 500 ug/mL (330.26 ng each), then one at 2000 ug/mL (1321.04 ng); each
    # whole-ng step is exact to within the carried remainder.
    exact = 2 * F(59711 * 500 * 1000, 90_400_000) + F(59711 * 2000 * 1000, 90_400_000)
    assert exact - 1 < li.window_ng <= exact


@pytest.mark.req("SR-31")
def test_window_check_refuses_what_the_gate_would_block_and_changes_nothing():
    lim = L.ClinicianLimits(100_000, 100_000, L.HARD_MAX_RATE_NL_PER_DAY, 30)
    li = Limiter(REF_CALIB, lim, 500)
    t = 0
    while li.window_ng < 90_000:
        assert li.allow(0, t)
        t += 3_000
    before = (li.window_ng, list(li._buckets), li._cur, li._pos)
    future = [0] * 1441
    future[0] = 100_000 - li.window_ng  # exactly fills the limit: no margin left
    assert not li.window_ok(0, t, future, li.margin_ng(0))
    future[0] = 1_000
    assert li.window_ok(0, t, future, li.margin_ng(0))
    # A window ending 24 h from now holds only the current minute of the past (counted whole).
    future = [0] * 1441
    future[1440] = 100_000 - li.margin_ng(0) - li._buckets[li._pos]
    assert li.window_ok(0, t, future, li.margin_ng(0))
    future[1440] += 1
    assert not li.window_ok(0, t, future, li.margin_ng(0))
    assert (li.window_ng, list(li._buckets), li._cur, li._pos) == before


@pytest.mark.req("SR-31")
@settings(max_examples=60)
@given(data=st.data(), tod_min=st.integers(0, L.MINUTES_PER_DAY - 1),
       extra_ng=st.integers(0, 1_000_000), fixed=st.booleans())  # fmt: skip
def test_projection_is_each_minutes_dose_counted_early(data, tod_min, extra_ng, fixed):
    # Read from the programme's own steps, not through step_rate_at(): minute m of the day
    # runs the last step starting at or before m, rounded up to whole ng a minute, plus every
    # periodic bolus starting in m (whole), plus extra in the first minute only.
    rx = None if fixed else gen_rx(DataChooser(data))
    mode_rate = data.draw(st.integers(0, 2_000_000))
    p = Projection(rx, mode_rate, tod_min, extra_ng)
    assert len(p) == 1441
    for k in range(1441):
        m = (tod_min + k) % 1440
        if rx is None:
            rate = mode_rate
        else:
            rate = [r for start, r in rx.steps if start <= m][-1]
        want = -(-rate // 1440) + (extra_ng if k == 0 else 0)
        if rx is not None:
            want += sum(d for start, d, _ in rx.periodic if start == m)
        assert p[k] == want, k
    with pytest.raises(IndexError):
        p[1441]


@pytest.mark.req("SR-01", "SR-32")
def test_new_limits_must_still_hold_the_running_programme():
    lim = L.ClinicianLimits(1_000_000, 100_000, L.HARD_MAX_RATE_NL_PER_DAY, 30)
    rx = RX.continuous(500, 600_000)
    eng, _log = _setup(lim, rx)
    assert eng.program(rx, confirm=True) is None
    tight = L.ClinicianLimits(500_000, 100_000, L.HARD_MAX_RATE_NL_PER_DAY, 30)
    assert eng.set_limits(tight) is not None
    assert eng.lim is lim and eng.limiter.max_24h_ng == 1_000_000
    looser = L.ClinicianLimits(2_000_000, 50_000, 2_000_000, 20)
    assert eng.set_limits(looser) is None
    assert eng.lim is looser
    # The limiter takes the new limits too: its rate gate follows the new maximum flow.
    assert eng.limiter.max_24h_ng == 2_000_000
    assert eng.limiter.min_gap_ms == 660_520 * L.DAY_MS // (2_000_000 * 1000)


@pytest.mark.req("SR-31", "SR-32")
def test_limits_that_would_trip_the_limiter_are_refused():
    lim = L.ClinicianLimits(1_000_000, L.HARD_MAX_BOLUS_NG, L.HARD_MAX_RATE_NL_PER_DAY, 30)
    rx = RX.continuous(500, 300_000)
    eng, _log = _setup(lim, rx)
    assert eng.program(rx, confirm=True) is None
    eng.run_until(6 * 3_600_000)
    assert eng.clinician_bolus(400_000, 3600) is None
    eng.run_until(6 * 3_600_000 + 1_800_000)  # half-way through the bolus
    # 400 ug of bolus plus the basal already count in the window: 600 ug/24 h is too tight.
    tight = L.ClinicianLimits(600_000, L.HARD_MAX_BOLUS_NG, L.HARD_MAX_RATE_NL_PER_DAY, 30)
    assert eng.set_limits(tight) == R.Refusal(R.DAILY_LIMIT, "max_24h_ng")
    # Nor may the maximum flow drop below what the running bolus needs.
    slow = L.ClinicianLimits(1_000_000, L.HARD_MAX_BOLUS_NG, 1_000_000, 30)
    assert eng.set_limits(slow) == R.Refusal(R.RATE_LIMIT, "max_rate_nl_per_day")
    assert eng.lim is lim
    eng.run_until(3 * DAY)
    assert eng.limiter.blocked == 0 and not eng.fault


@pytest.mark.req("SR-04")
def test_restart_after_a_long_stop_is_measured_against_what_was_delivered():
    lim = L.ClinicianLimits(3_000_000, L.HARD_MAX_BOLUS_NG, L.HARD_MAX_RATE_NL_PER_DAY, 30)
    rx = RX.continuous(500, 1_000_000)
    eng, _log = _setup(lim, rx)
    assert eng.program(rx, confirm=True) is None
    eng.run_until(2 * DAY)
    assert eng.set_mode(E.MODE_STOPPED) is None
    eng.run_until(7 * DAY)
    # Five days without a pulse: nothing was delivered in the last 24 h.
    assert eng.limiter.recent_ng(eng.day, 0) == 0
    assert eng.program(RX.continuous(500, 1_300_000)) == R.Refusal(R.NEEDS_CONFIRM, "steps")


@pytest.mark.req("SR-04", "SR-36")
def test_priming_dose_is_not_a_reference_for_the_first_programme():
    lim = L.ClinicianLimits(3_000_000, L.HARD_MAX_BOLUS_NG, L.HARD_MAX_RATE_NL_PER_DAY, 30)
    eng, _log = _setup(lim, RX.continuous(2000, 100_000))
    assert eng.prime(250_000) is None
    eng.run_until(2 * 3_600_000)
    assert eng.limiter.window_ng > 490_000  # the priming dose is counted by the limiter
    assert eng.program(RX.continuous(2000, 600_000)) == R.Refusal(R.NEEDS_CONFIRM, "steps")


@pytest.mark.req("SR-33")
def test_slowest_bolus_alone_keeps_the_pulse_path_in_30_bits():
    eng, _log = _setup(GENEROUS_LIMITS, RX.continuous(2000, 100_000))
    assert eng.clinician_bolus(12_000, 86_400) is None
    assert eng._q < 2**30 and eng._w < 2**30 and eng._pulse_at < E.NEVER
    eng2, _log = _setup(GENEROUS_LIMITS, RX.continuous(2000, 100_000))
    assert eng2.clinician_bolus(11_990, 86_400) == R.Refusal(R.FLOW_TOO_LOW, "bolus.duration_s")


@pytest.mark.req("SR-31")
def test_limiter_refuses_time_running_backwards_and_unknown_strengths():
    li = Limiter(REF_CALIB, GENEROUS_LIMITS, 500)
    assert li.allow(3, 5_000_000)
    assert not li.allow(3, 4_999_999)
    assert not li.allow(2, 80_000_000)
    assert li.allow(3, 5_000_000 + li.min_gap_ms)
    with pytest.raises(ValueError):
        li.on_refill(750, 10)
    with pytest.raises(ValueError):
        Limiter(REF_CALIB, GENEROUS_LIMITS, 500.0)
