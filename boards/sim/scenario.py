# The virtual pump's scenario file (docs/sim.md): prescription, clinician settings, first fill,
# patient requests, refill plan and faults, read and checked the same way on both runtimes.

import json

from boards.sim import board
from pump import limits as L
from pump import persist as P
from pump import rx as RX

MIN_MS = 60_000
HOUR_MS = 3_600_000
DAY_MS = L.DAY_MS
# What a fault does (docs/sim.md); the argument each one takes, if any.
FAULT_KINDS = {
    "stall": None,  # the motor stops moving
    "stall_end": None,
    "occlusion": None,  # the catheter is blocked
    "occlusion_end": None,
    "power_cut": "flash ops or down time",
    "clock_jump": "signed duration",
    "rtc_lost": None,
    "hang": "task name",
    "button": None,
}
TASKS = ("dosing", "monitor", "storage", "button", "main")
REFILL_WHEN = ("reservoir_low", "refill_due")
DEFAULT_START = "2025-01-06 09:00"


class ScenarioError(Exception):
    """A problem with the scenario, the command line or a fault, as one sentence."""


# ---- numbers and times ----


def decimal(value, places, where):
    """An int, or a decimal with at most `places` decimals (a JSON number or a string), scaled
    by 10**places to an exact int: decimal(12.5, 6, ..) is 12_500_000. No float arithmetic."""
    if isinstance(value, bool):
        raise ScenarioError("%s must be a number, not %s" % (where, json.dumps(value)))
    if isinstance(value, int):
        return value * 10**places
    if isinstance(value, float):
        text = repr(value)
    elif isinstance(value, str):
        text = value.strip()
    else:
        raise ScenarioError("%s must be a number" % where)
    neg = text.startswith("-")
    digits = text[1:] if neg else text
    whole, _dot, frac = digits.partition(".")
    if not (whole.isdigit() and (frac == "" or frac.isdigit())) or len(frac) > places:
        if "e" in text.lower() or not whole.isdigit():
            raise ScenarioError("%s must be a plain decimal number, not %s" % (where, text))
        raise ScenarioError("%s has more than %d decimals: %s" % (where, places, text))
    while len(frac) < places:
        frac += "0"
    n = int(whole) * 10**places + (int(frac) if frac else 0)
    return -n if neg else n


# Units of a time, largest first; "ms" is tried before "m".
_UNITS = (("d", DAY_MS), ("h", HOUR_MS), ("m", MIN_MS), ("s", 1000), ("ms", 1))
_TRY = (4, 0, 1, 2, 3)


def duration_ms(text, where="time"):
    """'3d10h', '90m', '1h30m', '45s', '250ms' or a bare number of ms; '+'/'-' in front for a
    signed duration. Units go largest first, each at most once."""
    s = str(text).strip()
    sign = 1
    if s[:1] in ("+", "-"):
        sign = -1 if s[0] == "-" else 1
        s = s[1:]
    if s.isdigit():
        return sign * int(s)
    bad = "%s %r is not a time like 3d10h, 90m, 45s or 250ms" % (where, text)
    if not s:
        raise ScenarioError(bad)
    total = 0
    rank = -1
    while s:
        i = 0
        while i < len(s) and s[i].isdigit():
            i += 1
        if i == 0:
            raise ScenarioError(bad)
        n = int(s[:i])
        s = s[i:]
        for k in _TRY:
            unit, ms = _UNITS[k]
            if s.startswith(unit):
                break
        else:
            raise ScenarioError(bad)
        if k <= rank:
            raise ScenarioError("%s %r must give its units largest first, each once" % (
                where, text))  # fmt: skip
        rank = k
        total += n * ms
        s = s[len(unit) :]
    return sign * total


def clock_min(value, where):
    """A time of day: 'HH:MM' or minutes since midnight (an int)."""
    if isinstance(value, int) and not isinstance(value, bool):
        m = value
    elif isinstance(value, str) and len(value) == 5 and value[2] == ":":
        hh, mm = value[:2], value[3:]
        if not (hh.isdigit() and mm.isdigit()) or int(mm) > 59:
            raise ScenarioError("%s must be a time of day HH:MM, not %s" % (where, value))
        m = int(hh) * 60 + int(mm)
    else:
        raise ScenarioError("%s must be a time of day HH:MM or minutes after midnight" % where)
    if not 0 <= m < L.MINUTES_PER_DAY:
        raise ScenarioError("%s must be between 00:00 and 23:59" % where)
    return m


def days_from_civil(y, m, d):
    """Days since 1970-01-01 of a Gregorian date."""
    y -= m <= 2
    era = (y if y >= 0 else y - 399) // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def civil(days):
    """(year, month, day) of a day number since 1970-01-01."""
    z = days + 719468
    era = (z if z >= 0 else z - 146096) // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + (3 if mp < 10 else -9)
    return yoe + era * 400 + (m <= 2), m, d


def wall_text(wall_ms):
    """'YYYY-MM-DD HH:MM' of a wall time in ms."""
    y, m, d = civil(wall_ms // DAY_MS)
    mins = wall_ms % DAY_MS // MIN_MS
    return "%04d-%02d-%02d %02d:%02d" % (y, m, d, mins // 60, mins % 60)


def parse_start(text, where="start"):
    s = str(text).strip().replace("T", " ")
    ok = len(s) == 16 and s[4] == "-" and s[7] == "-" and s[10] == " " and s[13] == ":"
    if ok:
        parts = (s[:4], s[5:7], s[8:10])
        ok = all(p.isdigit() for p in parts)
    if not ok:
        raise ScenarioError("%s must be a date and time like 2025-01-06 09:00" % where)
    y, mo, d = int(s[:4]), int(s[5:7]), int(s[8:10])
    if not (1 <= mo <= 12 and 1 <= d <= 31 and civil(days_from_civil(y, mo, d)) == (y, mo, d)):
        raise ScenarioError("%s is not a real date: %s" % (where, text))
    if y < 2000:
        raise ScenarioError("%s must be in the year 2000 or later" % where)
    return days_from_civil(y, mo, d) * DAY_MS + clock_min(s[11:], where) * MIN_MS


# ---- faults ----


def parse_fault(spec, where="fault"):
    """'TIME:KIND[:ARG]' -> (t_ms, kind, arg). TIME is counted from the start of the run."""
    parts = str(spec).split(":")
    if len(parts) < 2 or len(parts) > 3:
        raise ScenarioError("%s %r must be TIME:KIND or TIME:KIND:ARG, e.g. 3d10h:stall" % (
            where, spec))  # fmt: skip
    t = duration_ms(parts[0], where + " time")
    if t < 0:
        raise ScenarioError("%s %r has a time before the start" % (where, spec))
    kind = parts[1].strip()
    if kind not in FAULT_KINDS:
        raise ScenarioError("%s %r: unknown kind %r (one of %s)" % (
            where, spec, kind, ", ".join(sorted(FAULT_KINDS))))  # fmt: skip
    arg = parts[2].strip() if len(parts) == 3 else None
    want = FAULT_KINDS[kind]
    if want is None and arg is not None:
        raise ScenarioError("%s %r: %s takes no argument" % (where, spec, kind))
    if kind == "power_cut":
        if arg is None:
            arg = ("down", 0)
        elif arg.isdigit():
            if int(arg) < 1:
                raise ScenarioError("%s %r: the flash op count must be at least 1" % (where, spec))
            arg = ("ops", int(arg))
        else:
            arg = ("down", duration_ms(arg, where + " down time"))
            if arg[1] < 0:
                raise ScenarioError("%s %r: the power cannot be off for a negative time" % (
                    where, spec))  # fmt: skip
    elif kind == "clock_jump":
        if arg is None:
            raise ScenarioError("%s %r: clock_jump needs a signed time, e.g. :+2d" % (where, spec))
        arg = duration_ms(arg, where + " jump")
    elif kind == "hang":
        if arg not in TASKS:
            raise ScenarioError("%s %r: hang needs a task name (one of %s)" % (
                where, spec, ", ".join(TASKS)))  # fmt: skip
    return (t, kind, arg)


# ---- the file ----


class Scenario:
    """A parsed scenario: everything the runner needs, in the pump's integer units."""

    def __init__(self):
        self.name = ""
        self.title = ""
        self.start_wall_ms = 0
        self.conc = 0
        self.limits = None
        self.low_nl = 0
        self.first_fill_nl = 0
        self.rx = None
        self.requests_min = ()  # patient bolus requests, minutes after midnight, daily
        self.jitter_min = 0
        self.button_min = ()
        self.refill_at_min = None
        self.refill_when = "reservoir_low"
        self.fills = []  # [(fill_nl, conc)], used in turn; the last one repeats
        self.faults = []


_TOP = ("title", "start", "strength_ug_per_ml", "limits", "low_threshold_ml", "first_fill_ml",
        "programme", "patient_requests", "button", "refill", "faults", "comment")  # fmt: skip


def _obj(v, where, keys):
    if not isinstance(v, dict):
        raise ScenarioError("%s must be a JSON object" % where)
    for k in v:
        if k not in keys:
            raise ScenarioError("%s has an unknown field %r (known: %s)" % (
                where, k, ", ".join(keys)))  # fmt: skip
    return v


def _need(v, key, where):
    if key not in v:
        raise ScenarioError("%s needs %r" % (where, key))
    return v[key]


def _int(v, where, low, high):
    if not isinstance(v, int) or isinstance(v, bool):
        raise ScenarioError("%s must be a whole number" % where)
    if not low <= v <= high:
        raise ScenarioError("%s must be between %d and %d" % (where, low, high))
    return v


def _list(v, where):
    if not isinstance(v, list):
        raise ScenarioError("%s must be a JSON list" % where)
    return v


def load(path):
    """Read and check a scenario file. Raises ScenarioError with one sentence."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        raise ScenarioError("cannot read the prescription file %s" % path) from None
    try:
        obj = json.loads(text)
    except ValueError:
        raise ScenarioError("%s is not valid JSON" % path) from None
    name = path.replace("\\", "/").split("/")[-1]
    if name.endswith(".json"):
        name = name[:-5]
    return parse(obj, name)


def parse(obj, name="scenario"):
    sc = Scenario()
    sc.name = name
    _obj(obj, "the file", _TOP)
    sc.title = obj.get("title", name)
    if not isinstance(sc.title, str):
        raise ScenarioError("title must be a string")
    sc.start_wall_ms = parse_start(obj.get("start", DEFAULT_START))
    lim0, conc0, low0 = board.FIRST_BOOT
    sc.conc = obj.get("strength_ug_per_ml", conc0)
    if not RX.conc_allowed(sc.conc):
        raise ScenarioError("strength_ug_per_ml must be one of %s" % ", ".join(
            str(c) for c in L.CONCENTRATIONS_UG_PER_ML))  # fmt: skip
    sc.limits = _limits(obj.get("limits"), lim0)
    cap = board.RESERVOIR_NL[board.VARIANT]
    sc.low_nl = low0
    if "low_threshold_ml" in obj:
        sc.low_nl = decimal(obj["low_threshold_ml"], 6, "low_threshold_ml")
    if not 0 <= sc.low_nl <= cap:
        raise ScenarioError("low_threshold_ml must be between 0 and the reservoir's %d mL" % (
            cap // 1_000_000))  # fmt: skip
    sc.first_fill_nl = decimal(_need(obj, "first_fill_ml", "the file"), 6, "first_fill_ml")
    if not 0 < sc.first_fill_nl <= cap:
        raise ScenarioError("first_fill_ml must be above 0 and at most the reservoir's %d mL" % (
            cap // 1_000_000))  # fmt: skip
    sc.rx = _programme(_need(obj, "programme", "the file"), sc.conc)
    _requests(obj.get("patient_requests", []), sc)
    sc.button_min = tuple(clock_min(v, "button[%d]" % i)
                          for i, v in enumerate(_list(obj.get("button", []), "button")))
    _refill(obj.get("refill"), sc, cap)
    faults = _list(obj.get("faults", []), "faults")
    sc.faults = [parse_fault(f, "faults[%d]" % i) for i, f in enumerate(faults)]
    return sc


def _limits(v, lim0):
    if v is None:
        return lim0
    keys = ("max_24h_ug", "max_bolus_ug", "max_rate_ml_per_day", "dose_step_pct")
    _obj(v, "limits", keys)
    lim = L.ClinicianLimits(
        decimal(v["max_24h_ug"], 3, "limits.max_24h_ug") if "max_24h_ug" in v
        else lim0.max_24h_ng,
        decimal(v["max_bolus_ug"], 3, "limits.max_bolus_ug") if "max_bolus_ug" in v
        else lim0.max_bolus_ng,
        decimal(v["max_rate_ml_per_day"], 6, "limits.max_rate_ml_per_day")
        if "max_rate_ml_per_day" in v else lim0.max_rate_nl_per_day,
        _int(v["dose_step_pct"], "limits.dose_step_pct", 0, 1000) if "dose_step_pct" in v
        else lim0.dose_step_pct,
    )  # fmt: skip
    bad = RX.validate_limits(lim)
    if bad:
        raise ScenarioError("the pump refuses the limits: " + bad.message())
    return lim


def _programme(v, conc):
    _obj(v, "programme", ("steps", "periodic", "patient"))
    steps = []
    for i, s in enumerate(_list(_need(v, "steps", "programme"), "programme.steps")):
        w = "programme.steps[%d]" % i
        _obj(s, w, ("start", "ug_per_day"))
        steps.append((clock_min(_need(s, "start", w), w + ".start"),
                      decimal(_need(s, "ug_per_day", w), 3, w + ".ug_per_day")))  # fmt: skip
    periodic = []
    for i, p in enumerate(_list(v.get("periodic", []), "programme.periodic")):
        w = "programme.periodic[%d]" % i
        _obj(p, w, ("start", "dose_ug", "duration_min"))
        periodic.append((clock_min(_need(p, "start", w), w + ".start"),
                         decimal(_need(p, "dose_ug", w), 3, w + ".dose_ug"),
                         _int(_need(p, "duration_min", w), w + ".duration_min", 1, 1440) * 60))
    pt = v.get("patient")
    kw = {}
    if pt is not None:
        w = "programme.patient"
        _obj(pt, w, ("dose_ug", "duration_min", "lockout_min", "max_per_24h"))
        kw = {
            "patient_dose_ng": decimal(_need(pt, "dose_ug", w), 3, w + ".dose_ug"),
            "patient_duration_s": _int(_need(pt, "duration_min", w), w + ".duration_min", 1,
                                       1440) * 60,
            "patient_lockout_s": _int(_need(pt, "lockout_min", w), w + ".lockout_min", 1,
                                      1440) * 60,
            "patient_max_per_24h": _int(_need(pt, "max_per_24h", w), w + ".max_per_24h", 0,
                                        1000),
        }  # fmt: skip
    return RX.Prescription(conc, steps, periodic, **kw)


def _requests(v, sc):
    if isinstance(v, list):
        v = {"times": v}
    _obj(v, "patient_requests", ("times", "jitter_min"))
    times = _list(v.get("times", []), "patient_requests.times")
    sc.requests_min = tuple(clock_min(t, "patient_requests.times[%d]" % i)
                            for i, t in enumerate(times))  # fmt: skip
    sc.jitter_min = _int(v.get("jitter_min", 0), "patient_requests.jitter_min", 0, 120)


def _refill(v, sc, cap):
    if v is None:
        return
    _obj(v, "refill", ("check_at", "when", "fills"))
    sc.refill_at_min = clock_min(v.get("check_at", "14:00"), "refill.check_at")
    sc.refill_when = v.get("when", "reservoir_low")
    if sc.refill_when not in REFILL_WHEN:
        raise ScenarioError("refill.when must be one of %s" % ", ".join(REFILL_WHEN))
    fills = _list(_need(v, "fills", "refill"), "refill.fills")
    if not fills:
        raise ScenarioError("refill.fills must list at least one fill")
    for i, f in enumerate(fills):
        w = "refill.fills[%d]" % i
        _obj(f, w, ("fill_ml", "strength_ug_per_ml"))
        fill = decimal(_need(f, "fill_ml", w), 6, w + ".fill_ml")
        if not 0 < fill <= cap:
            raise ScenarioError("%s.fill_ml must be above 0 and at most the reservoir's %d mL" % (
                w, cap // 1_000_000))  # fmt: skip
        conc = f.get("strength_ug_per_ml", sc.conc)
        if not RX.conc_allowed(conc):
            raise ScenarioError("%s.strength_ug_per_ml must be one of %s" % (w, ", ".join(
                str(c) for c in L.CONCENTRATIONS_UG_PER_ML)))  # fmt: skip
        sc.fills.append((fill, conc))


# ---- the firmware's own checks ----


def commissioning(sc, wall_ms):
    """The clinician's first session, as [(what, request, args)] in order: the clock, the limits
    and threshold if they differ from the board's commissioning settings, the first fill, the
    programme. The runner submits them to the pump; check() to a scratch supervisor."""
    lim0, _conc0, low0 = board.FIRST_BOOT
    out = [("the clock", "set_clock", (wall_ms,))]
    if sc.limits.as_tuple() != lim0.as_tuple():
        out.append(("the limits", "set_limits", (sc.limits,)))
    if sc.low_nl != low0:
        out.append(("the low-reservoir threshold", "set_low_threshold", (sc.low_nl,)))
    out += [
        ("the first fill", "refill_begin", (0,)),
        ("the first fill", "refill_fill", (sc.first_fill_nl, sc.conc)),
        ("the first fill", "refill_commit", ()),
        ("the programme", "program", (sc.rx, True)),
    ]
    return out


def check(sc):
    """Commission a scratch pump (no flash) as the runner will, so that the firmware itself
    judges the limits, the programme and the refills' strengths. Raises ScenarioError with the
    firmware's refusal."""
    lim0, conc0, low0 = board.FIRST_BOOT
    sup = board.plant().build(lim0, conc0, low0, 0, P.Journal())
    for what, name, args in commissioning(sc, sc.start_wall_ms):
        bad = getattr(sup, name)(*args)
        if bad is not None:
            raise ScenarioError("the pump refuses %s: %s" % (what, bad.message()))
    for i, (_fill, conc) in enumerate(sc.fills):
        if conc != sup.engine.next_conc():
            bad = sup.engine.strength_refusal(conc, sup.settings.dead_volume_nl)
            if bad is not None:
                raise ScenarioError("the pump refuses refill.fills[%d]'s strength: %s" % (
                    i, bad.message()))  # fmt: skip
    return sup
