# Boundary tests for every prescription, clinician-limit and request parameter: min-1, min, max,
# max+1 (and resolution), each naming the exact refusal (code and field) or None when valid.

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from host_tests.exactness import GENEROUS, REF_CALIB
from pump import engine as E
from pump import limits as L
from pump import reasons as R
from pump import rx as RX
from pump.intmath import ceil_div
from pump.limiter import Limiter
from pump.limits import ClinicianLimits
from pump.reasons import Refusal

C = 500  # the default drug strength of the tables below
BASAL = 100_000  # ng/day, far from every limit, so that only the field under test can fail
LIM_FIELDS = ClinicianLimits.__slots__


def min_rate(conc):
    """Lowest programmable dose rate: the hard minimum flow, rounded up to the resolution."""
    ng = ceil_div(L.HARD_MIN_RATE_NL_PER_DAY * conc, 1000)
    return ceil_div(ng, L.RATE_RES_NG_PER_DAY) * L.RATE_RES_NG_PER_DAY


def lim(**changes):
    """GENEROUS (the hard limits) with some clinician limits tightened."""
    values = dict(zip(LIM_FIELDS, GENEROUS.as_tuple(), strict=True))
    values.update(changes)
    return ClinicianLimits(**values)


def rx(steps=((0, BASAL),), periodic=(), conc=C, **patient):
    return RX.Prescription(conc, steps, periodic, **patient)


def pt(dose=10_000, dur=600, lockout=3_600, n=4):
    return dict(patient_dose_ng=dose, patient_duration_s=dur, patient_lockout_s=lockout,
                patient_max_per_24h=n)  # fmt: skip


def top(rate, conc=C):
    # A maximal rate only in the last minute of the day keeps the daily dose far from its limit.
    return ((0, min_rate(conc)), (1439, rate))


def no(code, field):
    return Refusal(code, field)


def engine(conc=C, limits=GENEROUS, log=None):
    return E.Engine(REF_CALIB, Limiter(REF_CALIB, limits, conc), limits, conc, log=log)


def running(conc=C, limits=GENEROUS, rate=None, log=None):
    """An engine already running a plain programme, so a refusal can be seen to keep it."""
    eng = engine(conc, limits, log)
    base = RX.continuous(conc, rate or min_rate(conc))
    assert eng.program(base, confirm=True) is None
    return eng


ALLOWED = L.CONCENTRATIONS_UG_PER_ML

# ---- the prescription: (rx, clinician limits, expected) ----

CONC_ROWS = [pytest.param(rx(conc=c), GENEROUS, None, id="conc-%d" % c) for c in ALLOWED] + [
    pytest.param(rx(conc=c), GENEROUS, no(R.NOT_ALLOWED, "conc_ug_per_ml"), id="conc-%d" % c)
    for c in (-500, 0, 1, 49, 51, 100, 499, 501, 1500, 1999, 2001, 4000)
]

STEPS_COUNT_ROWS = [
    pytest.param(rx(steps=()), GENEROUS, no(R.BELOW_MIN, "steps"), id="steps-0"),
    pytest.param(rx(steps=((0, BASAL),)), GENEROUS, None, id="steps-1"),
    pytest.param(rx(steps=[(60 * i, BASAL) for i in range(L.MAX_STEPS)]), GENEROUS, None,
                 id="steps-max"),
    pytest.param(rx(steps=[(50 * i, BASAL) for i in range(L.MAX_STEPS + 1)]), GENEROUS,
                 no(R.TOO_MANY, "steps"), id="steps-max+1"),
]  # fmt: skip

STEP_START_ROWS = [
    pytest.param(rx(steps=((-1, BASAL),)), GENEROUS, no(R.BELOW_MIN, "steps[0].start_min"),
                 id="first-start--1"),
    pytest.param(rx(steps=((1, BASAL),)), GENEROUS, no(R.ORDER, "steps[0].start_min"),
                 id="first-start-1-not-midnight"),
    pytest.param(rx(steps=((0, BASAL), (0, BASAL))), GENEROUS,
                 no(R.ORDER, "steps[1].start_min"), id="second-start-equal"),
    pytest.param(rx(steps=((0, BASAL), (1, BASAL))), GENEROUS, None, id="second-start-1"),
    pytest.param(rx(steps=((0, BASAL), (1439, BASAL))), GENEROUS, None, id="second-start-1439"),
    pytest.param(rx(steps=((0, BASAL), (1440, BASAL))), GENEROUS,
                 no(R.ABOVE_MAX, "steps[1].start_min"), id="second-start-1440"),
    pytest.param(rx(steps=((0, BASAL), (-1, BASAL))), GENEROUS,
                 no(R.BELOW_MIN, "steps[1].start_min"), id="second-start--1"),
    pytest.param(rx(steps=((0, BASAL), (600, BASAL), (599, BASAL))), GENEROUS,
                 no(R.ORDER, "steps[2].start_min"), id="third-start-descending"),
    pytest.param(rx(steps=((0, BASAL), (60.0, BASAL))), GENEROUS,
                 no(R.NOT_ALLOWED, "steps[1].start_min"), id="second-start-float"),
]  # fmt: skip

STEP_MIN_RATE_ROWS = []
for _c in ALLOWED:
    _m = min_rate(_c)
    STEP_MIN_RATE_ROWS += [
        pytest.param(rx(steps=((0, _m - 10),), conc=_c), GENEROUS,
                     no(R.BELOW_MIN, "steps[0].rate_ng_per_day"), id="%d-min-10" % _c),
        pytest.param(rx(steps=((0, _m - 1),), conc=_c), GENEROUS,
                     no(R.BELOW_MIN, "steps[0].rate_ng_per_day"), id="%d-min-1" % _c),
        pytest.param(rx(steps=((0, _m),), conc=_c), GENEROUS, None, id="%d-min" % _c),
        pytest.param(rx(steps=((0, _m + 1),), conc=_c), GENEROUS,
                     no(R.RESOLUTION, "steps[0].rate_ng_per_day"), id="%d-min+1" % _c),
        pytest.param(rx(steps=((0, _m + 10),), conc=_c), GENEROUS, None, id="%d-min+10" % _c),
    ]  # fmt: skip

S1 = "steps[1].rate_ng_per_day"
LIM_24H = lim(max_24h_ng=100_000)
LIM_1ML = lim(max_rate_nl_per_day=1_000_000)  # 500 ug/day at 500 ug/mL, 2 mg/day at 2000
STEP_MAX_RATE_ROWS = [
    # At 50 ug/mL the maximum flow (24 mL/day = 1.2 mg/day) binds before the 24 h dose limit.
    pytest.param(rx(steps=top(1_200_000, 50), conc=50), GENEROUS, None, id="50-max"),
    pytest.param(rx(steps=top(1_199_995, 50), conc=50), GENEROUS, no(R.RESOLUTION, S1),
                 id="50-max-5"),
    pytest.param(rx(steps=top(1_200_001, 50), conc=50), GENEROUS, no(R.RESOLUTION, S1),
                 id="50-max+1"),
    pytest.param(rx(steps=top(1_200_010, 50), conc=50), GENEROUS, no(R.RATE_LIMIT, S1),
                 id="50-max+10"),
] + [
    row
    for c in (500, 1000, 2000)
    for row in (
        pytest.param(rx(steps=top(L.HARD_MAX_24H_NG, c), conc=c), GENEROUS, None,
                     id="%d-max" % c),
        pytest.param(rx(steps=top(L.HARD_MAX_24H_NG - 5, c), conc=c), GENEROUS,
                     no(R.RESOLUTION, S1), id="%d-max-5" % c),
        pytest.param(rx(steps=top(L.HARD_MAX_24H_NG + 1, c), conc=c), GENEROUS,
                     no(R.ABOVE_MAX, S1), id="%d-max+1" % c),
        pytest.param(rx(steps=top(L.HARD_MAX_24H_NG + 10, c), conc=c), GENEROUS,
                     no(R.ABOVE_MAX, S1), id="%d-max+10" % c),
    )
] + [
    # The clinician's 24 h limit and maximum flow bound a single rate too.
    pytest.param(rx(steps=top(100_000)), LIM_24H, None, id="clin-24h-max"),
    pytest.param(rx(steps=top(100_010)), LIM_24H, no(R.ABOVE_MAX, S1), id="clin-24h-max+10"),
    pytest.param(rx(steps=top(500_000)), LIM_1ML, None, id="clin-rate-500-max"),
    pytest.param(rx(steps=top(500_010)), LIM_1ML, no(R.RATE_LIMIT, S1),
                 id="clin-rate-500-max+10"),
    pytest.param(rx(steps=top(2_000_000, 2000), conc=2000), LIM_1ML, None,
                 id="clin-rate-2000-max"),
    pytest.param(rx(steps=top(2_000_010, 2000), conc=2000), LIM_1ML, no(R.RATE_LIMIT, S1),
                 id="clin-rate-2000-max+10"),
    pytest.param(rx(steps=((0, 100_000.0),)), GENEROUS,
                 no(R.NOT_ALLOWED, "steps[0].rate_ng_per_day"), id="rate-float"),
]  # fmt: skip

P0 = "periodic[0]"
LIM_BOLUS = lim(max_bolus_ng=50_000)
PERIODIC_ROWS = [
    pytest.param(rx(periodic=()), GENEROUS, None, id="periodic-count-0"),
    pytest.param(rx(periodic=((0, 1_000, 600),)), GENEROUS, None, id="periodic-count-1"),
    pytest.param(rx(periodic=[(60 * i, 1_000, 600) for i in range(L.MAX_PERIODIC)]), GENEROUS,
                 None, id="periodic-count-max"),
    pytest.param(rx(periodic=[(57 * i, 1_000, 600) for i in range(L.MAX_PERIODIC + 1)]),
                 GENEROUS, no(R.TOO_MANY, "periodic"), id="periodic-count-max+1"),
    pytest.param(rx(periodic=((-1, 1_000, 600),)), GENEROUS,
                 no(R.BELOW_MIN, P0 + ".start_min"), id="periodic-start--1"),
    pytest.param(rx(periodic=((0, 1_000, 600),)), GENEROUS, None, id="periodic-start-0"),
    pytest.param(rx(periodic=((1439, 1_000, 60),)), GENEROUS, None, id="periodic-start-1439"),
    pytest.param(rx(periodic=((1440, 1_000, 60),)), GENEROUS,
                 no(R.ABOVE_MAX, P0 + ".start_min"), id="periodic-start-1440"),
    pytest.param(rx(periodic=((0, 0, 600),)), GENEROUS, no(R.BELOW_MIN, P0 + ".dose_ng"),
                 id="periodic-dose-0"),
    # The smallest dose is bounded by the slowest allowed flow (12 ug/day over the bolus).
    pytest.param(rx(periodic=((0, 1, 600),)), GENEROUS,
                 no(R.FLOW_TOO_LOW, P0 + ".duration_s"), id="periodic-dose-1-too-slow"),
    pytest.param(rx(periodic=((0, 9, 60),)), GENEROUS, None, id="periodic-dose-9-in-1-min"),
    pytest.param(rx(periodic=((0, 8, 60),)), GENEROUS,
                 no(R.FLOW_TOO_LOW, P0 + ".duration_s"), id="periodic-dose-8-in-1-min"),
    pytest.param(rx(periodic=((0, L.HARD_MAX_BOLUS_NG, 7_200),)), GENEROUS, None,
                 id="periodic-dose-hard-max"),
    pytest.param(rx(periodic=((0, L.HARD_MAX_BOLUS_NG + 1, 7_200),)), GENEROUS,
                 no(R.ABOVE_BOLUS_LIMIT, P0 + ".dose_ng"), id="periodic-dose-hard-max+1"),
    pytest.param(rx(periodic=((0, 50_000, 7_200),)), LIM_BOLUS, None, id="periodic-dose-clin-max"),
    pytest.param(rx(periodic=((0, 50_001, 7_200),)), LIM_BOLUS,
                 no(R.ABOVE_BOLUS_LIMIT, P0 + ".dose_ng"), id="periodic-dose-clin-max+1"),
    pytest.param(rx(periodic=((0, 1_000, L.BOLUS_MIN_S - 1),)), GENEROUS,
                 no(R.BELOW_MIN, P0 + ".duration_s"), id="periodic-duration-min-1"),
    pytest.param(rx(periodic=((0, 1_000, L.BOLUS_MIN_S),)), GENEROUS,
                 None, id="periodic-duration-min"),
    pytest.param(rx(periodic=((0, 12_000, L.BOLUS_MAX_S),)), GENEROUS,
                 None, id="periodic-duration-max"),
    pytest.param(rx(periodic=((0, 11_990, L.BOLUS_MAX_S),)), GENEROUS,
                 no(R.FLOW_TOO_LOW, P0 + ".duration_s"), id="periodic-duration-max-too-slow"),
    pytest.param(rx(periodic=((0, 1_000, L.BOLUS_MAX_S + 1),)), GENEROUS,
                 no(R.ABOVE_MAX, P0 + ".duration_s"), id="periodic-duration-max+1"),
    # 100 ug in 720 s is exactly the maximum flow (12 mg/day at 500 ug/mL) on its own; with the
    # 100 ug/day basal under it, 727 s is the shortest duration that fits.
    pytest.param(rx(periodic=((0, 100_000, 719),)), GENEROUS,
                 no(R.RATE_LIMIT, P0 + ".duration_s"), id="periodic-rate-alone-too-fast"),
    pytest.param(rx(periodic=((0, 100_000, 726),)), GENEROUS, no(R.RATE_LIMIT, "periodic"),
                 id="periodic-rate-with-basal-too-fast"),
    pytest.param(rx(periodic=((0, 100_000, 727),)), GENEROUS,
                 None, id="periodic-rate-with-basal-max"),
    pytest.param(rx(periodic=((0, 1_000.0, 600),)), GENEROUS,
                 no(R.NOT_ALLOWED, P0 + ".dose_ng"), id="periodic-dose-float"),
]  # fmt: skip

P1S = "periodic[1].start_min"
OVERLAP_ROWS = [
    pytest.param(rx(periodic=((0, 1_000, 3_600), (60, 1_000, 600))), GENEROUS, None,
                 id="periodic-touching"),
    pytest.param(rx(periodic=((0, 1_000, 3_600), (59, 1_000, 600))), GENEROUS,
                 no(R.OVERLAP, P1S), id="periodic-overlap-1-min"),
    # A duration counts in whole minutes, rounded up: 3601 s reaches into minute 60.
    pytest.param(rx(periodic=((0, 1_000, 3_601), (60, 1_000, 600))), GENEROUS,
                 no(R.OVERLAP, P1S), id="periodic-overlap-1-s"),
    pytest.param(rx(periodic=((60, 1_000, 600), (0, 1_000, 600))), GENEROUS, no(R.ORDER, P1S),
                 id="periodic-descending"),
    pytest.param(rx(periodic=((60, 1_000, 600), (60, 1_000, 600))), GENEROUS,
                 no(R.ORDER, P1S), id="periodic-same-start"),
    # The last bolus of the day may run past midnight up to the first one's start.
    pytest.param(rx(periodic=((10, 1_000, 600), (1400, 1_000, 3_000))), GENEROUS, None,
                 id="periodic-wrap-touching"),
    pytest.param(rx(periodic=((10, 1_000, 600), (1400, 1_000, 3_001))), GENEROUS,
                 no(R.OVERLAP, P1S), id="periodic-wrap-overlap"),
    pytest.param(rx(periodic=((1439, 12_000, L.BOLUS_MAX_S),)), GENEROUS, None,
                 id="periodic-single-whole-day-past-midnight"),
]  # fmt: skip

LIM_PT_BOLUS = lim(max_bolus_ng=50_000)
PATIENT_ROWS = [
    pytest.param(rx(**pt(n=-1)), GENEROUS,
                 no(R.BELOW_MIN, "patient_max_per_24h"), id="patient-n--1"),
    pytest.param(rx(**pt(n=0)), GENEROUS, None, id="patient-n-0"),
    # With the patient bolus not permitted, its other fields are not used and not checked.
    pytest.param(rx(**pt(dose=0, dur=0, lockout=0, n=0)), GENEROUS, None, id="patient-n-0-unused"),
    pytest.param(rx(**pt(n=1)), GENEROUS, None, id="patient-n-1"),
    pytest.param(rx(**pt(n=L.PATIENT_MAX_PER_24H)), GENEROUS, None, id="patient-n-max"),
    pytest.param(rx(**pt(n=L.PATIENT_MAX_PER_24H + 1)), GENEROUS,
                 no(R.ABOVE_MAX, "patient_max_per_24h"), id="patient-n-max+1"),
    pytest.param(rx(**pt(n=1.0)), GENEROUS, no(R.NOT_ALLOWED, "patient_max_per_24h"),
                 id="patient-n-float"),
    pytest.param(rx(**pt(dose=0)), GENEROUS,
                 no(R.BELOW_MIN, "patient.dose_ng"), id="patient-dose-0"),
    pytest.param(rx(**pt(dose=1)), GENEROUS,
                 no(R.FLOW_TOO_LOW, "patient.duration_s"), id="patient-dose-1-too-slow"),
    pytest.param(rx(**pt(dose=9, dur=60)), GENEROUS, None, id="patient-dose-9-in-1-min"),
    pytest.param(rx(**pt(dose=L.HARD_MAX_BOLUS_NG, dur=7_200, lockout=7_200, n=1)), GENEROUS,
                 None, id="patient-dose-hard-max"),
    pytest.param(rx(**pt(dose=L.HARD_MAX_BOLUS_NG + 1, dur=7_200, lockout=7_200, n=1)),
                 GENEROUS, no(R.ABOVE_BOLUS_LIMIT, "patient.dose_ng"),
                 id="patient-dose-hard-max+1"),
    pytest.param(rx(**pt(dose=50_000, dur=3_600)), LIM_PT_BOLUS, None, id="patient-dose-clin-max"),
    pytest.param(rx(**pt(dose=50_001, dur=3_600)), LIM_PT_BOLUS,
                 no(R.ABOVE_BOLUS_LIMIT, "patient.dose_ng"), id="patient-dose-clin-max+1"),
    pytest.param(rx(**pt(dose=1_000, dur=L.BOLUS_MIN_S - 1)), GENEROUS,
                 no(R.BELOW_MIN, "patient.duration_s"), id="patient-duration-min-1"),
    pytest.param(rx(**pt(dose=1_000, dur=L.BOLUS_MIN_S)), GENEROUS,
                 None, id="patient-duration-min"),
    pytest.param(rx(**pt(dose=12_000, dur=L.BOLUS_MAX_S, lockout=L.LOCKOUT_MAX_S)), GENEROUS, None,
                 id="patient-duration-max"),
    pytest.param(rx(**pt(dur=L.BOLUS_MAX_S + 1, lockout=L.LOCKOUT_MAX_S)), GENEROUS,
                 no(R.ABOVE_MAX, "patient.duration_s"), id="patient-duration-max+1"),
    pytest.param(rx(**pt(dose=100_000, dur=719)), GENEROUS,
                 no(R.RATE_LIMIT, "patient.duration_s"), id="patient-rate-alone-too-fast"),
    pytest.param(rx(**pt(dose=100_000, dur=726)), GENEROUS,
                 no(R.RATE_LIMIT, "patient.duration_s"), id="patient-rate-with-basal-too-fast"),
    pytest.param(rx(**pt(dose=100_000, dur=727)), GENEROUS,
                 None, id="patient-rate-with-basal-max"),
    pytest.param(rx(**pt(dose=1_000, dur=60, lockout=L.LOCKOUT_MIN_S - 1)), GENEROUS,
                 no(R.BELOW_MIN, "patient.lockout_s"), id="patient-lockout-min-1"),
    pytest.param(rx(**pt(dose=1_000, dur=60, lockout=L.LOCKOUT_MIN_S)), GENEROUS,
                 None, id="patient-lockout-min"),
    pytest.param(rx(**pt(lockout=L.LOCKOUT_MAX_S)), GENEROUS, None, id="patient-lockout-max"),
    pytest.param(rx(**pt(lockout=L.LOCKOUT_MAX_S + 1)), GENEROUS,
                 no(R.ABOVE_MAX, "patient.lockout_s"), id="patient-lockout-max+1"),
    # The lockout may not end before the bolus it follows has finished.
    pytest.param(rx(**pt(dur=1_200, lockout=1_199)), GENEROUS,
                 no(R.BELOW_MIN, "patient.lockout_s"), id="patient-lockout-duration-1"),
    pytest.param(rx(**pt(dur=1_200, lockout=1_200)), GENEROUS,
                 None, id="patient-lockout-duration"),
]  # fmt: skip


@pytest.mark.req("SR-01", "SR-02", "SR-32")
@pytest.mark.parametrize(
    "prescription, limits, expected",
    CONC_ROWS
    + STEPS_COUNT_ROWS
    + STEP_START_ROWS
    + STEP_MIN_RATE_ROWS
    + STEP_MAX_RATE_ROWS
    + PERIODIC_ROWS
    + OVERLAP_ROWS
    + PATIENT_ROWS,
)
def test_prescription_boundary(prescription, limits, expected):
    assert RX.validate(prescription, limits) == expected
    # The engine gives the same answer, and a refusal leaves the running programme in force.
    conc = prescription.conc_ug_per_ml
    events = []
    eng = running(conc if conc in ALLOWED else C, limits, log=lambda *e: events.append(e))
    before = eng.rx
    assert eng.program(prescription, confirm=True) == expected
    assert eng.mode == E.MODE_PROGRAM
    if expected is None:
        assert eng.rx == prescription
    else:
        assert eng.rx == before
        assert events[-1] == ("refused", "program", expected.code, expected.field)


@pytest.mark.req("SR-01")
@settings(max_examples=max(20, settings.default.max_examples // 2))
@given(conc=st.sampled_from(ALLOWED), rate=st.integers(-100, 2 * L.HARD_MAX_24H_NG))
def test_step_rate_is_accepted_exactly_inside_its_range(conc, rate):
    # The tables above probe the edges; this checks there is no hole between them.
    highest = min(L.HARD_MAX_24H_NG, L.HARD_MAX_RATE_NL_PER_DAY * conc // 1000)
    inside = min_rate(conc) <= rate <= highest and rate % L.RATE_RES_NG_PER_DAY == 0
    bad = RX.validate(rx(steps=top(rate, conc), conc=conc), GENEROUS)
    assert (bad is None) == inside
    assert bad is None or bad.field == S1


@pytest.mark.req("SR-01", "SR-07", "SR-32")
@pytest.mark.parametrize("slack, expected", [(0, None), (-1, no(R.DAILY_LIMIT, "steps"))])
def test_worst_case_daily_dose_boundary(slack, expected):
    # Basal plus every permitted patient bolus, plus the limiter's counting margin, must fit.
    prescription = rx(steps=((0, 900_000),), **pt(dose=50_000, dur=3_600, n=2))
    worst = 900_000 + 2 * 50_000
    assert RX.validate(prescription, lim(max_24h_ng=worst + slack)) == expected
    probe = Limiter(REF_CALIB, GENEROUS, C)
    margin = probe.margin_ng(RX.peak_rate_ng_per_day(prescription))
    limits = lim(max_24h_ng=worst + margin + slack)
    assert RX.validate(prescription, limits, margin) == expected
    eng = engine(C, limits)
    assert eng.program(prescription, confirm=True) == expected
    assert eng.mode == (E.MODE_PROGRAM if expected is None else E.MODE_STOPPED)


# ---- clinician limits ----

LIMIT_ROWS = []
for _field, _low, _high in L.LIMIT_RANGES:
    LIMIT_ROWS += [
        pytest.param(_field, _low - 1, no(R.BELOW_MIN, _field), id="%s-min-1" % _field),
        pytest.param(_field, _low, None, id="%s-min" % _field),
        pytest.param(_field, _high, None, id="%s-max" % _field),
        pytest.param(_field, _high + 1, no(R.ABOVE_MAX, _field), id="%s-max+1" % _field),
        pytest.param(_field, float(_low), no(R.NOT_ALLOWED, _field), id="%s-float" % _field),
    ]


@pytest.mark.req("SR-01", "SR-32")
@pytest.mark.parametrize("field, value, expected", LIMIT_ROWS)
def test_clinician_limit_boundary(field, value, expected):
    limits = lim(**{field: value})
    assert RX.validate_limits(limits) == expected
    smallest = RX.continuous(50, min_rate(50))
    if expected is None:
        eng = engine(50, limits)
        # Valid limits are never what a programme is refused for.
        bad = RX.validate(smallest, limits)
        assert bad is None or bad.field != field
        assert eng.program(smallest, confirm=True) == bad
    else:
        assert RX.validate(smallest, limits) == expected
        # An engine cannot be built on them, and a running one refuses them unchanged.
        with pytest.raises(ValueError):
            engine(50, limits)
        eng = engine(50, GENEROUS)
        assert eng.set_limits(limits) == expected
        assert eng.lim is GENEROUS and eng.limiter.max_24h_ng == GENEROUS.max_24h_ng
        assert eng.mode == E.MODE_STOPPED and eng.rx is None


# ---- requests carrying their own values ----

PV = "prime.volume_nl"


@pytest.mark.req("SR-01", "SR-32", "SR-36")
@pytest.mark.parametrize(
    "conc, volume_nl, expected",
    [
        (C, -1, no(R.BELOW_MIN, PV)),
        (C, 0, no(R.BELOW_MIN, PV)),
        (C, 1, None),
        (C, L.HARD_MAX_PRIME_NL, None),
        (C, L.HARD_MAX_PRIME_NL + 1, no(R.ABOVE_MAX, PV)),
        (2000, L.HARD_MAX_PRIME_NL, None),
        (2000, L.HARD_MAX_PRIME_NL + 1, no(R.ABOVE_MAX, PV)),
    ],
)
def test_prime_volume_boundary(conc, volume_nl, expected):
    eng = engine(conc)
    assert eng.prime(volume_nl) == expected
    if expected is None:
        assert [s[:2] for s in eng.streams()] == [("priming", ceil_div(volume_nl * conc, 1000))]
    else:
        assert eng.streams() == [] and eng.rate_ru() == 0


@pytest.mark.req("SR-01", "SR-32", "SR-35")
@pytest.mark.parametrize(
    "dead_nl, expected",
    [
        (-1, no(R.BELOW_MIN, "dead_volume_nl")),
        (0, None),
        (1, None),
        (L.HARD_MAX_PRIME_NL, None),
        (L.HARD_MAX_PRIME_NL + 1, no(R.ABOVE_MAX, "dead_volume_nl")),
    ],
)
def test_dead_volume_boundary(dead_nl, expected):
    eng = running(C, rate=350_000)
    assert eng.change_concentration(RX.continuous(1000, 350_000), dead_nl) == expected
    if expected is None:
        assert eng.bridge_pulses_left() == REF_CALIB.pulses_for_nl(dead_nl)
        assert eng.conc == (1000 if dead_nl == 0 else C)
    else:
        assert eng.bridge_pulses_left() == 0 and eng.conc == C
        assert eng.rx == RX.continuous(C, 350_000)


BD = "bolus.dose_ng"
BT = "bolus.duration_s"


@pytest.mark.req("SR-01", "SR-32")
@pytest.mark.parametrize(
    "dose_ng, duration_s, limits, expected",
    [
        (0, 600, GENEROUS, no(R.BELOW_MIN, BD)),
        (1, 600, GENEROUS, no(R.FLOW_TOO_LOW, BT)),
        (8, 60, GENEROUS, no(R.FLOW_TOO_LOW, BT)),
        (9, 60, GENEROUS, None),
        (L.HARD_MAX_BOLUS_NG, 7_200, GENEROUS, None),
        (L.HARD_MAX_BOLUS_NG + 1, 7_200, GENEROUS, no(R.ABOVE_BOLUS_LIMIT, BD)),
        (50_000, 7_200, LIM_BOLUS, None),
        (50_001, 7_200, LIM_BOLUS, no(R.ABOVE_BOLUS_LIMIT, BD)),
        (1_000.0, 600, GENEROUS, no(R.NOT_ALLOWED, BD)),
        (1_000, L.BOLUS_MIN_S - 1, GENEROUS, no(R.BELOW_MIN, BT)),
        (1_000, L.BOLUS_MIN_S, GENEROUS, None),
        (12_000, L.BOLUS_MAX_S, GENEROUS, None),
        (11_990, L.BOLUS_MAX_S, GENEROUS, no(R.FLOW_TOO_LOW, BT)),
        (1_000, L.BOLUS_MAX_S + 1, GENEROUS, no(R.ABOVE_MAX, BT)),
        (1_000, 600.0, GENEROUS, no(R.NOT_ALLOWED, BT)),
        # The bolus on top of the 100 ug/day basal must stay within the maximum flow.
        (100_000, 719, GENEROUS, no(R.RATE_LIMIT, BT)),
        (100_000, 726, GENEROUS, no(R.RATE_LIMIT, BT)),
        (100_000, 727, GENEROUS, None),
    ],
)
def test_clinician_bolus_boundary(dose_ng, duration_s, limits, expected):
    events = []
    eng = running(C, limits, rate=BASAL, log=lambda *e: events.append(e))
    assert eng.clinician_bolus(dose_ng, duration_s) == expected
    if expected is None:
        assert [s[:2] for s in eng.streams()] == [("clinician", dose_ng)]
        assert eng.rate_ru() == BASAL // 10 + RX.bolus_rate_ru(dose_ng, duration_s * 1000)
    else:
        assert eng.streams() == [] and eng.rate_ru() == BASAL // 10
        assert events[-1] == ("refused", "clinician_bolus", expected.code, expected.field)


# ---- defects found while writing these tests, fixed in the firmware ----


@pytest.mark.req("SR-02", "SR-32")
def test_float_concentration_is_refused():
    assert RX.validate(rx(conc=500.0), GENEROUS) == no(R.NOT_ALLOWED, "conc_ug_per_ml")
    eng = running(C, rate=350_000)
    bad = eng.change_concentration(RX.continuous(1000.0, 350_000), 0)
    assert bad == no(R.NOT_ALLOWED, "conc_ug_per_ml")


@pytest.mark.req("SR-01")
def test_limits_beyond_the_hard_limits_never_reach_delivery():
    # Neither the engine nor the independent limiter can be built on them.
    beyond = lim(max_bolus_ng=2 * L.HARD_MAX_BOLUS_NG,
                 max_rate_nl_per_day=2 * L.HARD_MAX_RATE_NL_PER_DAY)  # fmt: skip
    with pytest.raises(ValueError):
        engine(C, beyond)
    with pytest.raises(ValueError):
        Limiter(REF_CALIB, lim(max_rate_nl_per_day=2 * L.HARD_MAX_RATE_NL_PER_DAY), C)
