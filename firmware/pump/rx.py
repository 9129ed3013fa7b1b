# The prescription model (programmed in dose, converted to volume by the pump) and its validation.
# validate() range-checks every field against the hard and clinician limits and returns a Refusal.

from pump import limits as L
from pump import reasons as R
from pump.intmath import ceil_div
from pump.reasons import Refusal


class Prescription:
    """A daily programme at one drug concentration.

    steps: [(start_min, rate_ng_per_day)], ascending, the first at minute 0; a simple continuous
      rate is one step. periodic: [(start_min, dose_ng, duration_s)] boluses repeated daily.
    The patient bolus is permitted when patient_max_per_24h > 0.
    """

    __slots__ = (
        "conc_ug_per_ml",
        "steps",
        "periodic",
        "patient_dose_ng",
        "patient_duration_s",
        "patient_lockout_s",
        "patient_max_per_24h",
    )

    def __init__(
        self,
        conc_ug_per_ml,
        steps,
        periodic=(),
        patient_dose_ng=0,
        patient_duration_s=0,
        patient_lockout_s=0,
        patient_max_per_24h=0,
    ):
        self.conc_ug_per_ml = conc_ug_per_ml
        self.steps = tuple(tuple(s) for s in steps)
        self.periodic = tuple(tuple(p) for p in periodic)
        self.patient_dose_ng = patient_dose_ng
        self.patient_duration_s = patient_duration_s
        self.patient_lockout_s = patient_lockout_s
        self.patient_max_per_24h = patient_max_per_24h

    def key(self):
        return (
            self.conc_ug_per_ml,
            self.steps,
            self.periodic,
            self.patient_dose_ng,
            self.patient_duration_s,
            self.patient_lockout_s,
            self.patient_max_per_24h,
        )

    def __eq__(self, other):
        return isinstance(other, Prescription) and self.key() == other.key()

    def with_concentration(self, conc_ug_per_ml):
        p = Prescription(conc_ug_per_ml, self.steps, self.periodic)
        p.patient_dose_ng = self.patient_dose_ng
        p.patient_duration_s = self.patient_duration_s
        p.patient_lockout_s = self.patient_lockout_s
        p.patient_max_per_24h = self.patient_max_per_24h
        return p

    def step_rate_at(self, minute_of_day):
        rate = self.steps[0][1]
        for start, r in self.steps:
            if start <= minute_of_day:
                rate = r
        return rate


def continuous(conc_ug_per_ml, rate_ng_per_day, **patient):
    """A simple continuous programme (one step at 00:00)."""
    return Prescription(conc_ug_per_ml, ((0, rate_ng_per_day),), (), **patient)


def bolus_rate_ru(dose_ng, duration_ms):
    """Rate of a bolus in engine rate units (RATE_RES ng/day), rounded up.

    Rounding up keeps the dose exact: the bolus then ends as soon as its full dose is in,
    at most a fraction of a per-mille before its nominal duration.
    """
    return ceil_div(dose_ng * (L.DAY_MS // L.RATE_RES_NG_PER_DAY), duration_ms)


def conc_allowed(conc_ug_per_ml):
    # An int check first: 500.0 == 500 would pass the membership test.
    return isinstance(conc_ug_per_ml, int) and conc_ug_per_ml in L.CONCENTRATIONS_UG_PER_ML


def vol_rate_ok(rate_ng_per_day, conc_ug_per_ml, max_nl_per_day):
    # nL/day = ng/day * 1000 / (ug/mL); compared without division.
    return rate_ng_per_day * 1000 <= max_nl_per_day * conc_ug_per_ml


def _basal_ng_min(rx):
    # The day's basal dose times 1440: each step's rate over its minutes.
    steps = rx.steps
    total = 0
    for i in range(len(steps)):
        end = steps[i + 1][0] if i + 1 < len(steps) else L.MINUTES_PER_DAY
        total += steps[i][1] * (end - steps[i][0])
    return total


def daily_dose_ng(rx):
    """Dose of basal and periodic boluses over one day, rounded up (exactly: over any 24 h)."""
    dose = ceil_div(_basal_ng_min(rx), L.MINUTES_PER_DAY)
    for p in rx.periodic:
        dose += p[1]
    return dose


def mean_basal_ng_per_day(rx):
    """The day's basal dose spread evenly over the day, rounded down: the rate that, held for
    any 24 h, gives no more than the programme's basal over those 24 h."""
    return _basal_ng_min(rx) // L.MINUTES_PER_DAY


def peak_rate_ng_per_day(rx, extra_ng_per_day=0):
    """Highest total basal + periodic (+ extra) dose rate at any time of day, in ng/day."""
    peak = 0
    times = [s[0] for s in rx.steps] + [p[0] for p in rx.periodic]
    for t in times:
        rate = rx.step_rate_at(t)
        # A periodic bolus active at t contributes; non-overlap means at most one.
        for start, dose, dur_s in rx.periodic:
            end = start + ceil_div(dur_s, 60)
            if _within(t, start, end):
                rate += bolus_rate_ru(dose, dur_s * 1000) * L.RATE_RES_NG_PER_DAY
        if rate > peak:
            peak = rate
    # A step that starts during a bolus is covered above; a bolus start covered by its step.
    return peak + extra_ng_per_day


def _within(t, start, end):
    # Minute t inside [start, end) on a 24 h circle.
    if end <= L.MINUTES_PER_DAY:
        return start <= t < end
    return t >= start or t < end - L.MINUTES_PER_DAY


def check_range(value, low, high, field, resolution=1):
    if not isinstance(value, int) or isinstance(value, bool):
        return Refusal(R.NOT_ALLOWED, field)
    if value < low:
        return Refusal(R.BELOW_MIN, field)
    if value > high:
        return Refusal(R.ABOVE_MAX, field)
    if value % resolution:
        return Refusal(R.RESOLUTION, field)
    return None


def validate_limits(lim):
    for field, low, high in L.LIMIT_RANGES:
        bad = check_range(getattr(lim, field), low, high, field)
        if bad:
            return bad
    return None


def validate_bolus(dose_ng, duration_s, conc, lim, field="bolus"):
    """Range checks shared by every bolus kind (dose, duration, resulting rate)."""
    bad = check_range(dose_ng, 1, lim.max_bolus_ng, field + ".dose_ng")
    if bad:
        if bad.code == R.ABOVE_MAX:
            bad.code = R.ABOVE_BOLUS_LIMIT
        return bad
    bad = check_range(duration_s, L.BOLUS_MIN_S, L.BOLUS_MAX_S, field + ".duration_s")
    if bad:
        return bad
    rate_ng = bolus_rate_ru(dose_ng, duration_s * 1000) * L.RATE_RES_NG_PER_DAY
    if not vol_rate_ok(rate_ng, conc, lim.max_rate_nl_per_day):
        return Refusal(R.RATE_LIMIT, field + ".duration_s")
    if rate_ng < L.MIN_BOLUS_NG_PER_DAY:
        return Refusal(R.FLOW_TOO_LOW, field + ".duration_s")
    return None


def validate(rx, lim, margin_ng=0):
    """Check a prescription against the hard limits and the clinician limits.

    margin_ng is the safety limiter's counting margin (see limiter.margin_ng): a programme
    must leave it free so that the limiter never trips on a correct programme.
    Returns None when valid, else the first Refusal found.
    """
    bad = validate_limits(lim)
    if bad:
        return bad
    conc = rx.conc_ug_per_ml
    if not conc_allowed(conc):
        return Refusal(R.NOT_ALLOWED, "conc_ug_per_ml")
    steps = rx.steps
    if not steps:
        return Refusal(R.BELOW_MIN, "steps")
    if len(steps) > L.MAX_STEPS:
        return Refusal(R.TOO_MANY, "steps")
    # Lowest dose rate that still gives the minimum flow at this concentration.
    min_rate = ceil_div(L.HARD_MIN_RATE_NL_PER_DAY * conc, 1000)
    prev = -1
    for i in range(len(steps)):
        start, rate = steps[i]
        field = "steps[%d]" % i
        bad = check_range(start, 0, L.MINUTES_PER_DAY - 1, field + ".start_min")
        if bad:
            return bad
        if (i == 0 and start != 0) or start <= prev:
            return Refusal(R.ORDER, field + ".start_min")
        prev = start
        bad = check_range(rate, min_rate, lim.max_24h_ng, field + ".rate_ng_per_day")
        if bad:
            return bad
        if rate % L.RATE_RES_NG_PER_DAY:
            return Refusal(R.RESOLUTION, field + ".rate_ng_per_day")
        if not vol_rate_ok(rate, conc, lim.max_rate_nl_per_day):
            return Refusal(R.RATE_LIMIT, field + ".rate_ng_per_day")
    per = rx.periodic
    if len(per) > L.MAX_PERIODIC:
        return Refusal(R.TOO_MANY, "periodic")
    prev_end = None
    for i in range(len(per)):
        start, dose, dur_s = per[i]
        field = "periodic[%d]" % i
        bad = check_range(start, 0, L.MINUTES_PER_DAY - 1, field + ".start_min")
        if bad:
            return bad
        if prev_end is not None and start < prev_end:
            return Refusal(R.OVERLAP if start > per[i - 1][0] else R.ORDER, field + ".start_min")
        bad = validate_bolus(dose, dur_s, conc, lim, field)
        if bad:
            return bad
        prev_end = start + ceil_div(dur_s, 60)
    if per and prev_end > L.MINUTES_PER_DAY + per[0][0]:
        return Refusal(R.OVERLAP, "periodic[%d].start_min" % (len(per) - 1))
    n_pt = rx.patient_max_per_24h
    bad = check_range(n_pt, 0, L.PATIENT_MAX_PER_24H, "patient_max_per_24h")
    if bad:
        return bad
    patient_rate = 0
    if n_pt:
        bad = validate_bolus(rx.patient_dose_ng, rx.patient_duration_s, conc, lim, "patient")
        if bad:
            return bad
        bad = check_range(
            rx.patient_lockout_s, L.LOCKOUT_MIN_S, L.LOCKOUT_MAX_S, "patient.lockout_s"
        )
        if bad:
            return bad
        if rx.patient_lockout_s < rx.patient_duration_s:
            return Refusal(R.BELOW_MIN, "patient.lockout_s")
        patient_rate = (
            bolus_rate_ru(rx.patient_dose_ng, rx.patient_duration_s * 1000) * L.RATE_RES_NG_PER_DAY
        )
    if not vol_rate_ok(peak_rate_ng_per_day(rx, patient_rate), conc, lim.max_rate_nl_per_day):
        return Refusal(R.RATE_LIMIT, "patient.duration_s" if n_pt else "periodic")
    worst = daily_dose_ng(rx) + n_pt * rx.patient_dose_ng
    if worst + margin_ng > lim.max_24h_ng:
        return Refusal(R.DAILY_LIMIT, "steps")
    return None
