# A refused request changes nothing and says why (SR-32), checked on random engine states, plus
# the dose-step confirmation (SR-04) and the allowed drug strengths (SR-02).

from collections import Counter

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from host_tests.exactness import GENEROUS, REF_CALIB, _apply
from host_tests.gen import DataChooser, RandomChooser, gen_bolus, gen_rx, gen_timeline
from pump import engine as E
from pump import limits as L
from pump import reasons as R
from pump import rx as RX
from pump.limiter import Limiter
from pump.limits import ClinicianLimits
from pump.reasons import Refusal

DAY = L.DAY_MS
HOUR = 3_600_000
BAD_CONCS = (-500, 0, 49, 100, 250, 501, 1500, 3000)
# The dose step is a clinician limit; these tests use its documented default of 30 %.
STEP30 = ClinicianLimits(L.HARD_MAX_24H_NG, L.HARD_MAX_BOLUS_NG, L.HARD_MAX_RATE_NL_PER_DAY,
                         L.DOSE_STEP_PCT_DEFAULT)  # fmt: skip


# ---- complete state snapshots ----


def _plain(obj):
    """Every value reachable from obj, as nested tuples that compare by value."""
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    if isinstance(obj, list | tuple):
        return (type(obj).__name__,) + tuple(_plain(x) for x in obj)
    if isinstance(obj, dict):
        return ("dict",) + tuple(sorted((k, _plain(v)) for k, v in obj.items()))
    if hasattr(obj, "typecode"):  # array.array: the limiter's bucket ring
        return ("array", obj.typecode) + tuple(obj)
    if callable(obj):
        return ("callable",)  # the log sink is wiring, not state
    names = getattr(type(obj), "__slots__", None)
    items = {n: getattr(obj, n) for n in names} if names else vars(obj)
    return (type(obj).__name__,) + tuple(sorted((k, _plain(v)) for k, v in items.items()))


def snapshot(eng):
    """The whole engine, its limiter (bucket array included), programme, limits and calibration."""
    return _plain(eng)


# ---- random engine states and random, mostly invalid, requests ----


class Rig:
    def __init__(self, conc, limits):
        self.events = []
        self.pulses = []
        self.limiter = Limiter(REF_CALIB, limits, conc)
        self.eng = E.Engine(REF_CALIB, self.limiter, limits, conc, log=self._log)

    def _log(self, *event):
        self.events.append(event)

    def run_until(self, t_ms):
        self.eng.run_until(t_ms, self.pulses.append)


def draw_history(g):
    """A programme, its first day of commands, a request time and what happens just before."""
    first, cmds = gen_timeline(g, DAY, n_max=6)
    # A tighter limiter than the programme (set through the limiter's own API once the programme
    # runs) makes the engine fault before the request in some examples.
    tight = g.integer(0, 4) == 0
    t_req = g.integer(0, DAY + DAY // 2)
    pre = g.choice(("none", "patient", "bolus", "conc", "stop", "stop+prime", "minimum"))
    pre_args = None
    if pre == "bolus":
        pre_args = gen_bolus(g, first.conc_ug_per_ml)
    elif pre == "conc":
        pre_args = (g.choice(L.CONCENTRATIONS_UG_PER_ML), g.integer(0, 300_000))
    elif pre == "stop+prime":
        pre_args = g.integer(1, 300_000)
    return first, cmds, tight, t_req, pre, pre_args


def build(history):
    """Replay a drawn history on a fresh engine; two calls give two identical engines."""
    first, cmds, tight, t_req, pre, pre_args = history
    rig = Rig(first.conc_ug_per_ml, STEP30)
    eng = rig.eng
    if eng.program(first, confirm=True) is not None:
        return None
    if tight:
        limit = max(1, RX.daily_dose_ng(first) // 3)
        rig.limiter.set_limits(ClinicianLimits(limit, 1, L.HARD_MAX_RATE_NL_PER_DAY, 1))
    for t, name, args in cmds:
        if t > t_req:
            break
        rig.run_until(t)
        _apply(eng, name, args)
    rig.run_until(t_req)
    if pre == "patient":
        eng.patient_bolus()
    elif pre == "bolus":
        eng.clinician_bolus(*pre_args)
    elif pre == "conc":
        conc, dead = pre_args
        if eng.rx is not None:
            eng.change_concentration(eng.rx.with_concentration(conc), dead)
    elif pre in ("stop", "stop+prime"):
        eng.set_mode(E.MODE_STOPPED)
        if pre_args:
            eng.prime(pre_args)
    elif pre == "minimum":
        eng.set_mode(E.MODE_MINIMUM)
    return rig


def _round10(v):
    return v - v % L.RATE_RES_NG_PER_DAY


def draw_rx(g, eng):
    """A prescription, usually with one field pushed out of range or out of order."""
    which = g.integer(0, 5)
    if which == 5:
        conc = g.choice(BAD_CONCS)
    elif which == 4:
        conc = g.choice(L.CONCENTRATIONS_UG_PER_ML)
    else:
        conc = eng.conc
    base = gen_rx(g, conc if conc in L.CONCENTRATIONS_UG_PER_ML else 500)
    steps = [list(s) for s in base.steps]
    periodic = [list(p) for p in base.periodic]
    patient = dict(patient_dose_ng=base.patient_dose_ng,
                   patient_duration_s=base.patient_duration_s,
                   patient_lockout_s=base.patient_lockout_s,
                   patient_max_per_24h=base.patient_max_per_24h)  # fmt: skip
    i = g.integer(0, len(steps) - 1)
    cut = g.choice((
        "none", "scale", "rate_low", "rate_high", "rate_res", "start_first", "start_order",
        "start_range", "many_steps", "no_steps", "per_overlap", "per_dose", "per_short",
        "per_long", "many_periodic", "pt_count", "pt_lockout", "pt_dose", "pt_short",
    ))  # fmt: skip
    if cut == "scale":  # a large increase: needs confirmation, or passes the daily limit
        k = g.integer(13, 30)
        steps = [[s, _round10(r * k // 10)] for s, r in steps]
    elif cut == "rate_low":
        steps[i][1] = g.integer(-10, max(0, 6 * conc) - 1)  # below the minimum flow
    elif cut == "rate_high":
        steps[i][1] = _round10(g.integer(L.HARD_MAX_24H_NG // 2, 2 * L.HARD_MAX_24H_NG))
    elif cut == "rate_res":
        steps[i][1] += g.integer(1, 9)
    elif cut == "start_first":
        steps[0][0] = g.integer(1, L.MINUTES_PER_DAY + 5)
    elif cut == "start_order" and len(steps) > 1:
        j = g.integer(1, len(steps) - 1)
        steps[j][0] = steps[j - 1][0] - g.integer(0, 3)
    elif cut == "start_range":
        steps.append([g.choice((L.MINUTES_PER_DAY, L.MINUTES_PER_DAY + 60, -1)), steps[-1][1]])
    elif cut == "many_steps":
        steps = [[m, steps[0][1]] for m in range(L.MAX_STEPS + g.integer(1, 5))]
    elif cut == "no_steps":
        # Without periodic boluses; with them, test_malformed_programme_is_refused_not_raised.
        steps = []
        periodic = []
    elif cut == "per_overlap":
        start = g.integer(0, L.MINUTES_PER_DAY - 1)
        dur = g.integer(2, 30) * 60
        periodic = [[start, 1_000, dur], [(start + g.integer(0, dur // 60 - 1)), 1_000, 600]]
        periodic.sort()
    elif cut == "per_dose":
        periodic = [[g.integer(0, 1439), g.choice((0, -5, L.HARD_MAX_BOLUS_NG + 1)), 3_600]]
    elif cut == "per_short":
        periodic = [[g.integer(0, 1439), 1_000, g.integer(0, L.BOLUS_MIN_S - 1)]]
    elif cut == "per_long":
        periodic = [[g.integer(0, 1439), 1_000, L.BOLUS_MAX_S + g.integer(1, 1_000)]]
    elif cut == "many_periodic":
        periodic = [[57 * m, 1_000, 600] for m in range(L.MAX_PERIODIC + 1)]
    elif cut == "pt_count":
        patient.update(patient_dose_ng=1_000, patient_duration_s=600, patient_lockout_s=600,
                       patient_max_per_24h=g.choice((-1, L.PATIENT_MAX_PER_24H + 1)))  # fmt: skip
    elif cut == "pt_lockout":
        patient.update(patient_dose_ng=1_000, patient_duration_s=1_200, patient_max_per_24h=1,
                       patient_lockout_s=g.choice((599, 1_199, L.LOCKOUT_MAX_S + 1)))  # fmt: skip
    elif cut == "pt_dose":
        patient.update(patient_dose_ng=g.choice((0, L.HARD_MAX_BOLUS_NG + 1)),
                       patient_duration_s=3_600, patient_lockout_s=3_600,
                       patient_max_per_24h=1)  # fmt: skip
    elif cut == "pt_short":
        patient.update(patient_dose_ng=200_000, patient_duration_s=g.integer(60, 300),
                       patient_lockout_s=3_600, patient_max_per_24h=1)  # fmt: skip
    return RX.Prescription(conc, steps, periodic, **patient)


def draw_request(g, eng, pre, pre_args):
    """(label, call) for one request, drawn to be refused more often than not."""
    kind = g.choice(("program", "program", "program", "bolus", "patient", "mode", "prime",
                     "conc", "clear_fault", "again"))  # fmt: skip
    if kind == "again":
        # The request made just before, once more: lockouts, running boluses and bridges.
        if pre == "bolus":
            return kind, lambda: eng.clinician_bolus(*pre_args)
        if pre == "stop+prime":
            return kind, lambda: eng.prime(pre_args)
        if pre == "conc" and eng.rx is not None:
            conc = g.choice(L.CONCENTRATIONS_UG_PER_ML)
            return kind, lambda: eng.change_concentration(eng.rx.with_concentration(conc), 0)
        return kind, eng.patient_bolus
    if kind == "program":
        rx = draw_rx(g, eng)
        confirm = g.integer(0, 2) == 0
        return kind, lambda: eng.program(rx, confirm=confirm)
    if kind == "bolus":
        dose = g.choice((0, -1, 1, 2_000, 50_000, L.HARD_MAX_BOLUS_NG, L.HARD_MAX_BOLUS_NG + 1))
        dur = g.choice((0, L.BOLUS_MIN_S - 1, L.BOLUS_MIN_S, 600, 7_200, L.BOLUS_MAX_S,
                        L.BOLUS_MAX_S + 1))  # fmt: skip
        return kind, lambda: eng.clinician_bolus(dose, dur)
    if kind == "patient":
        return kind, eng.patient_bolus
    if kind == "mode":
        mode = g.integer(-1, 4)
        return kind, lambda: eng.set_mode(mode)
    if kind == "prime":
        vol = g.choice((-1, 0, 1, 100_000, L.HARD_MAX_PRIME_NL, L.HARD_MAX_PRIME_NL + 1))
        return kind, lambda: eng.prime(vol)
    if kind == "conc":
        conc = g.choice(L.CONCENTRATIONS_UG_PER_ML + BAD_CONCS[:3])
        dead = g.choice((-1, 0, 250_000, L.HARD_MAX_PRIME_NL + 1))
        if eng.rx is not None and g.integer(0, 2):
            rx = eng.rx.with_concentration(conc)
        else:
            rx = draw_rx(g, eng)
        return kind, lambda: eng.change_concentration(rx, dead)
    return kind, eng.clear_fault


def check_one_request(g, follow_up=True):
    """Build twin engines, refuse-test one request on the first; returns (kind, result)."""
    history = draw_history(g)
    rig = build(history)
    if rig is None:
        return None
    eng = rig.eng
    kind, call = draw_request(g, eng, history[4], history[5])
    before = snapshot(eng)
    result = call()
    if result is None:
        return kind, None
    assert isinstance(result, Refusal)
    assert result.code in R.NAMES, result
    assert isinstance(result.field, str) and result.field
    assert snapshot(eng) == before, "refused %s changed the engine: %r" % (kind, result)
    # ... and the refusal is logged with its reason and field.
    assert rig.events[-1][0] == "refused"
    assert rig.events[-1][2:] == (result.code, result.field)
    if follow_up:
        twin = build(history)
        assert snapshot(twin.eng) == before
        start = eng.now_ms()
        rig.pulses.clear()
        twin.pulses.clear()
        rig.events.clear()
        twin.events.clear()
        rig.run_until(start + DAY)
        twin.run_until(start + DAY)
        assert rig.pulses == twin.pulses
        assert rig.events == twin.events
        assert snapshot(eng) == snapshot(twin.eng)
    return kind, result


@pytest.mark.req("SR-32", "SR-01")
@settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(st.data())
def test_refused_request_changes_nothing_now_or_later(data):
    out = check_one_request(DataChooser(data))
    if out is not None:
        event("%s: %s" % (out[0], "accepted" if out[1] is None else R.NAMES[out[1].code]))


@pytest.mark.req("SR-32")
def test_random_requests_reach_every_kind_of_refusal():
    # Guards the property above against vacuity: its generator must produce refusals of many
    # kinds from real engine states (each refusal here gets the same snapshot check).
    codes = Counter()
    for seed in range(300):
        out = check_one_request(RandomChooser(seed), follow_up=False)
        if out is not None and out[1] is not None:
            codes[out[1].code] += 1
    wanted = {R.BELOW_MIN, R.ABOVE_MAX, R.RESOLUTION, R.NOT_ALLOWED, R.ORDER, R.TOO_MANY,
              R.OVERLAP, R.NEEDS_CONFIRM, R.ABOVE_BOLUS_LIMIT, R.BAD_MODE, R.FAULTED,
              R.RATE_LIMIT, R.BRIDGE_ACTIVE, R.BOLUS_ACTIVE, R.NOT_PERMITTED}  # fmt: skip
    assert wanted <= set(codes), sorted(R.NAMES[c] for c in wanted - set(codes))


@pytest.mark.req("SR-32")
def test_snapshot_sees_a_change():
    # The snapshot is only a witness if it notices accepted requests.
    rig = Rig(500, STEP30)
    assert rig.eng.program(RX.continuous(500, 350_000), confirm=True) is None
    rig.run_until(HOUR)
    before = snapshot(rig.eng)
    assert rig.eng.clinician_bolus(1_000, 600) is None
    assert snapshot(rig.eng) != before
    mid = snapshot(rig.eng)
    rig.run_until(HOUR + 1)
    assert snapshot(rig.eng) != mid  # engine time is state too


# ---- explicit refusals that a request must name ----


def _engine(conc=500, limits=STEP30):
    return Rig(conc, limits).eng


def _programmed(rx, t_ms=0, limits=STEP30):
    eng = _engine(rx.conc_ug_per_ml, limits)
    assert eng.program(rx, confirm=True) is None
    eng.run_until(t_ms)
    return eng


NEEDS_CONFIRM = Refusal(R.NEEDS_CONFIRM, "steps")


@pytest.mark.req("SR-04", "SR-32")
def test_first_programme_on_a_fresh_engine_needs_confirmation():
    eng = _engine()
    rx = RX.continuous(500, 100_000)
    assert eng.program(rx) == NEEDS_CONFIRM
    assert eng.mode == E.MODE_STOPPED and eng.rx is None
    assert eng.program(rx, confirm=True) is None
    assert eng.mode == E.MODE_PROGRAM and eng.rx == rx


P_REF = RX.Prescription(500, [(0, 100_000), (720, 200_000)], [(300, 30_000, 1_800)])  # 180 ug


@pytest.mark.req("SR-04", "SR-32")
@pytest.mark.parametrize(
    "new, confirm, expected",
    [
        # A continuous programme after a continuous 100 ug/day one, at the 30 % default step.
        (RX.continuous(500, 130_000), False, None),
        (RX.continuous(500, 130_010), False, NEEDS_CONFIRM),
        (RX.continuous(500, 130_010), True, None),
        (RX.continuous(500, 3_000), False, None),  # decreases never need confirmation
    ],
    ids=["plus-30pct", "plus-30pct+10", "plus-30pct+10-confirmed", "decrease"],
)
def test_dose_step_against_running_continuous_programme(new, confirm, expected):
    eng = _programmed(RX.continuous(500, 100_000), 6 * HOUR)
    old = eng.rx
    assert eng.program(new, confirm=confirm) == expected
    assert eng.rx == (new if expected is None else old)


@pytest.mark.req("SR-04", "SR-32")
@pytest.mark.parametrize(
    "new, confirm, expected",
    [
        # The daily dose counts every step for its share of the day and the periodic boluses:
        # the reference is 100 * 1/2 + 200 * 1/2 + 30 = 180 ug/day, and 30 % more is 234.
        (RX.Prescription(500, [(0, 130_000), (720, 278_000)], [(300, 30_000, 1_800)]), False,
         None),
        (RX.Prescription(500, [(0, 130_000), (720, 278_020)], [(300, 30_000, 1_800)]), False,
         NEEDS_CONFIRM),
        (RX.Prescription(500, [(0, 204_000)], [(300, 30_000, 1_800)]), False, None),
        (RX.Prescription(500, [(0, 204_000)], [(300, 30_001, 1_800)]), False, NEEDS_CONFIRM),
        (RX.Prescription(500, [(0, 204_000)], [(300, 30_001, 1_800)]), True, None),
    ],
    ids=["steps-at-step", "steps-over-step", "periodic-at-step", "periodic-over-step",
         "periodic-over-step-confirmed"],
)  # fmt: skip
def test_dose_step_counts_steps_and_periodic_boluses(new, confirm, expected):
    assert RX.daily_dose_ng(P_REF) == 180_000
    eng = _programmed(P_REF, 2 * HOUR)
    assert eng.program(new, confirm=confirm) == expected
    assert eng.rx == (new if expected is None else P_REF)


@pytest.mark.req("SR-04", "SR-32")
@pytest.mark.parametrize("pct", [L.DOSE_STEP_PCT_MIN, 10, L.DOSE_STEP_PCT_MAX])
def test_dose_step_follows_the_clinician_setting(pct):
    limits = ClinicianLimits(L.HARD_MAX_24H_NG, L.HARD_MAX_BOLUS_NG, L.HARD_MAX_RATE_NL_PER_DAY,
                             pct)  # fmt: skip
    at_step = 100_000 * (100 + pct) // 100
    for rate, expected in ((at_step, None), (at_step + 10, NEEDS_CONFIRM)):
        eng = _programmed(RX.continuous(500, 100_000), HOUR, limits)
        assert eng.program(RX.continuous(500, rate)) == expected


@pytest.mark.req("SR-04", "SR-32")
def test_dose_step_reference_is_the_rolling_24h_dose_outside_a_programme():
    # In minimum mode no programme runs, so the reference is the dose actually delivered
    # in the last 24 h, as the limiter counts it.
    eng = _programmed(RX.continuous(500, 200_000), DAY + 3 * HOUR)
    assert eng.set_mode(E.MODE_MINIMUM) is None
    ref = eng.limiter.window_ng
    assert 190_000 < ref < 210_000
    at_step = _round10(ref * 130 // 100)
    assert eng.program(RX.continuous(500, at_step + 10)) == NEEDS_CONFIRM
    assert eng.mode == E.MODE_MINIMUM
    assert eng.program(RX.continuous(500, at_step)) is None
    assert eng.mode == E.MODE_PROGRAM


@pytest.mark.req("SR-04")
def test_unconfirmed_steps_do_not_compound_within_24h():
    eng = _programmed(RX.continuous(500, 100_000), HOUR)
    assert eng.program(RX.continuous(500, 130_000)) is None
    eng.run_until(HOUR + 60_000)
    assert eng.program(RX.continuous(500, 169_000)) == NEEDS_CONFIRM


NOT_ALLOWED_CONC = Refusal(R.NOT_ALLOWED, "conc_ug_per_ml")


@pytest.mark.req("SR-02", "SR-32")
@pytest.mark.parametrize("conc", [0, 49, 51, 100, 250, 750, 1999, 2001, 2500])
def test_concentration_outside_the_allowed_set_is_refused(conc):
    rx = RX.continuous(conc, 100_000)
    assert RX.validate(rx, GENEROUS) == NOT_ALLOWED_CONC
    eng = _programmed(RX.continuous(500, 100_000), HOUR)
    before = snapshot(eng)
    assert eng.program(rx, confirm=True) == NOT_ALLOWED_CONC
    assert eng.change_concentration(rx, 0) == NOT_ALLOWED_CONC
    assert eng.change_concentration(rx, 250_000) == NOT_ALLOWED_CONC
    assert snapshot(eng) == before


@pytest.mark.req("SR-02", "SR-32")
@pytest.mark.parametrize("conc", [50, 1000, 2000])
def test_a_new_strength_only_through_a_refill(conc):
    # program() keeps the strength in the reservoir; only change_concentration() switches it,
    # and only when the prescribed dose is unchanged.
    eng = _programmed(RX.continuous(500, 100_000), HOUR)
    before = snapshot(eng)
    assert eng.program(RX.continuous(conc, 100_000), confirm=True) == NOT_ALLOWED_CONC
    assert eng.change_concentration(RX.continuous(conc, 110_000), 0) == Refusal(
        R.NOT_ALLOWED, "steps"
    )
    assert snapshot(eng) == before
    assert eng.change_concentration(RX.continuous(conc, 100_000), 0) is None
    assert eng.conc == conc


@pytest.mark.req("SR-02")
@pytest.mark.parametrize("conc", L.CONCENTRATIONS_UG_PER_ML)
def test_daily_dose_is_volume_rate_times_concentration(conc):
    # 1 mL/day at c ug/mL is c ug/day; the engine's rate in 10 ng/day units says the same.
    eng = _programmed(RX.continuous(conc, conc * 1_000))
    assert eng.rate_ru() * L.RATE_RES_NG_PER_DAY == conc * 1_000
    assert RX.vol_rate_ok(conc * 1_000, conc, 1_000_000)
    assert not RX.vol_rate_ok(conc * 1_000 + 10, conc, 1_000_000)


@pytest.mark.req("SR-32")
@pytest.mark.parametrize(
    "bad",
    [
        RX.Prescription(500, (), [(60, 1_000, 600)]),
        RX.Prescription(500, [(0, 100_000)], [(60, "1000", 600)]),
        RX.Prescription(500, [(0, None)]),
    ],
    ids=["no-steps-with-periodic", "periodic-dose-str", "rate-none"],
)
def test_malformed_programme_is_refused_not_raised(bad):
    expected = RX.validate(bad, STEP30)
    assert isinstance(expected, Refusal)
    eng = _programmed(RX.continuous(500, 100_000), HOUR)
    before = snapshot(eng)
    assert eng.program(bad, confirm=True) == expected
    assert snapshot(eng) == before
