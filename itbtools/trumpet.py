# The gravimetric accuracy maths of the bench rig (IEC 60601-2-24 method): start-up curve, overall
# error A, trumpet curve Ep(P), the stepper's pure quantisation bound, and bolus accuracy. No I/O.
"""Flow accuracy from balance readings, exact where the result is a decision.

Notation (as in the IEC 60601-2-24 trumpet method; reconstructed from manufacturers' published
test descriptions, see docs/bench-tests.md):

* W_i: balance reading (g) at t_i = t_0 + i*dt (dt the sample interval), i = 0..N;
* d: density of the test liquid (g/mL); r: set rate (uL/h here, intrathecal rates).
* Per-interval flow (the start-up curve): Q_i = (W_i - W_{i-1}) / d / dt, for i = 1..N.
* Analysis period: grid points k0..k1 (by default from 60 min to the end of the log),
  T_A = (k1 - k0)*dt. Mean rate Qbar = (W_k1 - W_k0) / d / T_A and A = 100 (Qbar - r) / r.
* Observation window P (a whole number n = P/dt of intervals): the m = (T_A - P)/dt + 1
  windows starting at k0, k0+1, ... give E_j(P) = 100 [ (W_{k0+j+n} - W_{k0+j}) / d / P - r ] / r,
  the mean of the n interval errors inside the window; Ep(max)(P) = max_j E_j, Ep(min) the min.
  Only the two end readings of a window enter E_j, so a window whose ends were both read
  counts even when readings inside it are missing.

All of these are computed from the readings as exact fractions (the balance's decimal digits
taken as written, the density and rate as given in decimal), so a synthetic log with a 1 %
bias gives A = 1 exactly and comparisons against bounds are exact. Floats appear only in the
report (JSON, plots, tables).

Pure quantisation. The rig moves in pulses of v (nL) each; at a set rate r a perfectly even
pulse train has period Tp = v / r. "Pure quantisation" is what such a train shows when nothing
else is wrong: every pulse exactly v, exactly every Tp, the rate exactly r on average, the
volume arriving at the balance the instant the pulse is made (no compliance smoothing), and a
perfect balance (no noise, infinite resolution, no evaporation) read exactly at the grid times.
The reading W(t) is then v d times the number of pulses made at or before t: a staircase.

A window (t, t + P] then holds a whole number of pulses. With x = r P / v (the pulses the set
rate puts in a window, a rational number), k = floor(x) and f = x - k:

* if f = 0 every window holds exactly k = x pulses and E = 0;
* otherwise, with the window's start at phase u in [0, 1) of a pulse period (measured from
  the pulse at or before it), the count is floor(u + x) = k + floor(u + f): k + 1 pulses when
  the start falls in the last f of the period (u >= 1 - f), k pulses when it falls earlier.

So E_j(P) can only take the two values
    E_low = 100 (k / x - 1)   and   E_high = 100 ((k + 1) / x - 1),
and the bound is the band [E_low, E_high] of width 100 / x = 100 v / (r P) (bench.md's
"|Ep| up to ~ v_step/(r P)" is this width; max |E| <= 100 v / (r P) follows from k <= x < k+1).
E_low = -100 % when a window is shorter than a pulse period (k = 0: a window with no pulse).

Sampled every dt, the windows start only at the grid times, so they see the phases
phi_j = frac(c + j * dt / Tp), j = 0..m-1 (c the unknown phase of the train at the first
window). The high value is reached iff some phi_j lies in [1 - f, 1), the low one iff some
phi_j lies in [0, 1 - f). Whatever c is, the high value is reached iff the largest gap
between the m points around the unit circle is at most f, the low one iff it is at most 1 - f
(an arc of length L holds one of the points for every rotation iff no gap exceeds L).
`phase_coverage` decides this exactly, so the report says whether a perfect pump "must" touch
each edge of the band in this log or only "may".

A real measurement sits inside the band, less what the compliance smooths (a pulse's volume
reaches the balance spread over the line's time constant), plus what the balance adds
(noise and resolution: about 100 * sqrt(2) * sigma / (d r P) per window, and evaporation, a
small negative bias). The bench figure `ep2_bound_ratio` is the measured spread
Ep(max) - Ep(min) at P = 2 min divided by the band's width: near 1 (the goal is <= 1.1, the
balance's noise adding a little) the scheduler spreads its pulses as evenly as whole pulses
allow; a pump that bunched its pulses would show a wider spread.
"""

import math
from decimal import Decimal, InvalidOperation
from fractions import Fraction

STANDARD_WINDOWS_MIN = (1, 2, 5, 11, 19, 31)
# Windows that matter at intrathecal rates (insulin-pump practice reports 60..960 min).
HOUR_WINDOWS_MIN = (60, 120, 240, 480, 960)
DEFAULT_INTERVAL_S = 30
DEFAULT_DENSITY = Fraction(998, 1000)  # water at 20 degC, g/mL
DEFAULT_ANALYSIS_START_MIN = 60  # the standard test's trumpet comes from its second hour
PERCENTILES = (5, 25, 50, 75, 95)
# A grid point between two readings further apart than this many sample intervals is missing
# rather than interpolated: the staircase of a pulsed pump must not be bridged over a gap.
MAX_GAP_INTERVALS = Fraction(3, 2)
BOLUS_STANDARD_COUNT = 25
# The largest grid the analysis takes on (about 3.5 years at 30 s): each window walks the whole
# grid in exact fractions, so a log whose times jump far, or a tiny interval, must be refused
# rather than leave the tool computing for hours or running out of memory.
MAX_GRID_POINTS = 10_000_000
# Decimal exponents beyond this are no bench quantity; Fraction() of 1e999999999 would build a
# billion-digit integer, so such a number is refused before it is turned into a fraction.
_MAX_EXPONENT = 60

_S_PER_H = 3600
_NL_PER_UL = 1000


def exact(x, what="value"):
    """x (int, Fraction, Decimal, decimal string, or float as it prints) as a Fraction."""
    if isinstance(x, Fraction):
        return x
    if isinstance(x, int) and not isinstance(x, bool):
        return Fraction(x)
    if isinstance(x, float):
        if not math.isfinite(x):
            raise ValueError("the %s %r is not a finite number" % (what, x))
        x = repr(x)  # the decimal the user wrote, not the binary float's full expansion
    if isinstance(x, Decimal | str):
        try:
            d = Decimal(x.strip() if isinstance(x, str) else x)
        except InvalidOperation:
            raise ValueError("the %s %r is not a number" % (what, x)) from None
        if not d.is_finite():
            raise ValueError("the %s %r is not a finite number" % (what, x))
        if d and abs(d.adjusted()) > _MAX_EXPONENT:
            raise ValueError("the %s %r is out of range" % (what, x))
        return Fraction(d)
    raise ValueError("the %s %r is not a number" % (what, x))


def _f(x, digits=4):
    """A report float (None stays None)."""
    return None if x is None else round(float(x), digits)


# ---- the quantisation bound ----


class Bound:
    """The pure quantisation band of one window (see the module docstring); percentages exact."""

    __slots__ = ("window_min", "pulses_per_window", "k", "frac", "low_pct", "high_pct")

    def __init__(self, window_min, x):
        self.window_min = window_min
        self.pulses_per_window = x  # r P / v
        self.k = math.floor(x)
        self.frac = x - self.k
        if self.frac == 0:
            self.low_pct = self.high_pct = Fraction(0)
        else:
            self.low_pct = 100 * (Fraction(self.k) / x - 1)
            self.high_pct = 100 * (Fraction(self.k + 1) / x - 1)

    @property
    def spread_pct(self):
        return self.high_pct - self.low_pct

    def as_dict(self):
        return {"low_pct": _f(self.low_pct), "high_pct": _f(self.high_pct),
                "spread_pct": _f(self.spread_pct),
                "pulses_per_window": _f(self.pulses_per_window)}  # fmt: skip


def quantisation_bound(pulse_nl, rate_ul_h, window_min):
    """The band [low, high] (%) of E(P) for an even train of pulse_nl pulses at rate_ul_h."""
    v = exact(pulse_nl, "pulse volume")
    r = exact(rate_ul_h, "rate")
    p = exact(window_min, "window")
    if v <= 0 or r <= 0 or p <= 0:
        raise ValueError("the pulse volume, rate and window must be positive")
    x = r * _NL_PER_UL * p / 60 / v
    return Bound(p, x)


def phase_coverage(pulse_nl, rate_ul_h, window_min, interval_s, m):
    """(high, low): whether, whatever the train's phase, some of m windows starting interval_s
    apart holds k + 1 pulses (high) and some holds k (low). See the module docstring."""
    b = quantisation_bound(pulse_nl, rate_ul_h, window_min)
    if b.frac == 0 or m < 1:
        return (b.frac == 0, b.frac == 0)
    v = exact(pulse_nl)
    step = exact(interval_s) * exact(rate_ul_h) * _NL_PER_UL / _S_PER_H / v  # dt / Tp
    phases = sorted({(j * step) % 1 for j in range(m)})
    gap = phases[0] + 1 - phases[-1]
    for a, b2 in zip(phases, phases[1:], strict=False):
        if b2 - a > gap:
            gap = b2 - a
    return (gap <= b.frac, gap <= 1 - b.frac)


# ---- readings on the sample grid ----


class Grid:
    """Readings at t_i = origin + i * interval (s): masses (Fraction g) or None where missing."""

    def __init__(self, origin_s, interval_s, masses, interpolated):
        self.origin_s = origin_s
        self.interval_s = interval_s
        self.masses = masses
        self.interpolated = interpolated  # grid points computed between two readings

    @property
    def missing(self):
        return sum(1 for w in self.masses if w is None)

    def __len__(self):
        return len(self.masses)


def to_grid(samples, interval_s=DEFAULT_INTERVAL_S, origin_s=None, max_gap_s=None):
    """Place (t_s, mass_g) readings, in strictly increasing time, on the sample grid.

    A reading exactly at a grid time is taken as it is; otherwise the grid point is the linear
    interpolation between the readings just before and just after it, if they are at most
    max_gap_s apart (default 1.5 intervals), else missing. The grid starts at origin_s (default:
    the first reading) and ends at the last reading."""
    dt = exact(interval_s, "sample interval")
    if dt <= 0:
        raise ValueError("the sample interval must be positive")
    pts = [(exact(t, "time"), exact(w, "mass")) for t, w in samples]
    for (ta, _), (tb, _) in zip(pts, pts[1:], strict=False):
        if tb <= ta:
            raise ValueError("the readings are not in increasing time order (%s s after %s s)"
                             % (tb, ta))  # fmt: skip
    if not pts:
        return Grid(Fraction(0) if origin_s is None else exact(origin_s), dt, [], 0)
    t0 = pts[0][0] if origin_s is None else exact(origin_s, "origin")
    gap = dt * MAX_GAP_INTERVALS if max_gap_s is None else exact(max_gap_s, "gap")
    n = math.floor((pts[-1][0] - t0) / dt) + 1 if pts[-1][0] >= t0 else 0
    if n > MAX_GRID_POINTS:
        raise ValueError("the log spans %s s, which at a %s s interval is %d grid points, more "
                         "than the %d this analysis takes on"
                         % (num_text(pts[-1][0] - t0), num_text(dt), n, MAX_GRID_POINTS))
    masses = []
    interp = 0
    j = 0  # pts[j] is the last reading at or before the grid time (once one exists)
    for i in range(n):
        t = t0 + i * dt
        while j + 1 < len(pts) and pts[j + 1][0] <= t:
            j += 1
        ta, wa = pts[j]
        if ta == t:
            masses.append(wa)
        elif ta < t and j + 1 < len(pts) and pts[j + 1][0] - ta <= gap:
            tb, wb = pts[j + 1]
            masses.append(wa + (wb - wa) * (t - ta) / (tb - ta))
            interp += 1
        else:
            masses.append(None)
    return Grid(t0, dt, masses, interp)


# ---- flow and errors ----


def flow_ul_h(delta_g, seconds, density):
    """Mean flow (uL/h) of delta_g grams of liquid of density g/mL over seconds."""
    return delta_g / density * _NL_PER_UL * _S_PER_H / seconds


def error_pct(delta_g, seconds, density, rate):
    return 100 * (flow_ul_h(delta_g, seconds, density) - rate) / rate


def percentile(sorted_values, p):
    """The p-th percentile (linear between closest ranks) of an ascending list."""
    if not sorted_values:
        return None
    pos = (len(sorted_values) - 1) * p / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


class Window:
    """Ep over one observation window P, or why it was skipped."""

    def __init__(self, p_min, n, m, errors, bound, coverage, skipped=None):
        self.p_min = p_min
        self.n = n  # sample intervals per window
        self.m = m  # windows in the analysis period
        self.errors = errors  # E_j (Fraction %) of every window whose end readings exist
        self.bound = bound
        self.coverage = coverage  # (high, low) reached whatever the phase, or None
        self.skipped = skipped
        self.ep_max = max(errors) if errors else None
        self.ep_min = min(errors) if errors else None

    @property
    def spread(self):
        return None if self.ep_max is None else self.ep_max - self.ep_min

    def as_dict(self):
        if self.skipped:
            return {"p_min": _f(self.p_min), "skipped": self.skipped}
        vals = sorted(float(e) for e in self.errors)
        d = {
            "p_min": _f(self.p_min),
            "n": self.n,
            "m": self.m,
            "windows_used": len(self.errors),
            "ep_max_pct": _f(self.ep_max),
            "ep_min_pct": _f(self.ep_min),
            "spread_pct": _f(self.spread),
            "percentiles_pct": {str(p): _f(percentile(vals, p)) for p in PERCENTILES},
        }
        if self.bound is not None:
            d["bound"] = self.bound.as_dict()
            d["bound"]["high_reached_whatever_phase"] = self.coverage[0]
            d["bound"]["low_reached_whatever_phase"] = self.coverage[1]
            # One window has no spread to speak of: no ratio.
            d["spread_to_bound"] = (None if len(self.errors) < 2 or not self.bound.spread_pct
                                    else _f(self.spread / self.bound.spread_pct))  # fmt: skip
        return d


class Report:
    """Everything `analyse` finds; exact values as attributes, `as_dict()` for JSON."""

    def __init__(self):
        self.rate = None
        self.density = None
        self.interval_s = None
        self.pulse_nl = None
        self.grid = None
        self.readings = 0
        self.startup = []  # (t_min, Q uL/h or None)
        self.k0 = self.k1 = None
        self.mean_rate = None
        self.overall = None  # A, %
        self.overall_bound = None
        self.windows = []
        self.notes = []  # sentences on what could not be done and why

    @property
    def complete(self):
        return self.overall is not None and any(w.errors for w in self.windows)

    def window(self, p_min):
        for w in self.windows:
            if w.p_min == p_min:
                return w
        return None

    def as_dict(self):
        dt = self.interval_s
        g = self.grid
        d = {
            "rate_ul_h": _f(self.rate, 6),
            "density_g_ml": _f(self.density, 6),
            "interval_s": _f(dt),
            "pulse_nl": _f(self.pulse_nl, 6),
            "readings": self.readings,
            "grid_points": len(g) if g else 0,
            "grid_interpolated": g.interpolated if g else 0,
            "grid_missing": g.missing if g else 0,
            "duration_min": _f((len(g) - 1) * dt / 60) if g and len(g) else 0,
            "analysis": None,
            "overall_error_pct": _f(self.overall),
            "mean_rate_ul_h": _f(self.mean_rate, 6),
            "overall_bound": self.overall_bound.as_dict() if self.overall_bound else None,
            "windows": [w.as_dict() for w in self.windows if not w.skipped],
            "skipped_windows": [w.as_dict() for w in self.windows if w.skipped],
            "startup": [[_f(t), _f(q)] for t, q in self.startup],
            "complete": self.complete,
            "notes": list(self.notes),
        }
        if self.k0 is not None:
            d["analysis"] = {"start_min": _f(self.k0 * dt / 60), "end_min": _f(self.k1 * dt / 60),
                             "period_min": _f((self.k1 - self.k0) * dt / 60), "k0": self.k0,
                             "k1": self.k1}  # fmt: skip
        return d


def analyse(samples, rate_ul_h, density=DEFAULT_DENSITY, interval_s=DEFAULT_INTERVAL_S,
            analysis_start_min=None, analysis_end_min=None, windows_min=None, pulse_nl=None,
            origin_s=None):  # fmt: skip
    """The trumpet analysis of (t_s, mass_g) readings at set rate rate_ul_h (see the module
    docstring). Never raises on short or gappy data: what cannot be computed is None, with a
    sentence in .notes. Raises ValueError only for parameters that make no sense."""
    rep = Report()
    r = rep.rate = exact(rate_ul_h, "rate")
    d = rep.density = exact(density, "density")
    dt = rep.interval_s = exact(interval_s, "sample interval")
    if r <= 0 or d <= 0 or dt <= 0:
        raise ValueError("the rate, density and sample interval must be positive")
    rep.pulse_nl = None if pulse_nl is None else exact(pulse_nl, "pulse volume")
    # A negative start or end would index the grid from its far end: refused, not guessed at.
    start = DEFAULT_ANALYSIS_START_MIN if analysis_start_min is None else analysis_start_min
    start = exact(start, "analysis start")
    end = None if analysis_end_min is None else exact(analysis_end_min, "analysis end")
    if start < 0 or (end is not None and end < 0):
        raise ValueError("the analysis start and end must not be negative")
    wins = STANDARD_WINDOWS_MIN + HOUR_WINDOWS_MIN if windows_min is None else windows_min
    wins = [exact(p, "window") for p in wins]
    if any(p <= 0 for p in wins):
        raise ValueError("every observation window must be positive")
    samples = list(samples)
    rep.readings = len(samples)
    grid = rep.grid = to_grid(samples, dt, origin_s)
    w = grid.masses
    n_pts = len(w)
    for i in range(1, n_pts):
        q = None if w[i] is None or w[i - 1] is None else flow_ul_h(w[i] - w[i - 1], dt, d)
        rep.startup.append((i * dt / 60, q))
    if n_pts < 2:
        rep.notes.append("The log holds fewer than two readings on the %s s grid: there is "
                         "nothing to analyse." % num_text(dt))  # fmt: skip
        return rep
    k0 = math.ceil(start * 60 / dt)
    last = n_pts - 1
    if end is not None:
        last = min(last, math.floor(end * 60 / dt))
    while last > k0 and w[last] is None:
        last -= 1
    while k0 < last and w[k0] is None:
        k0 += 1
    if k0 >= last or w[k0] is None or w[last] is None:
        rep.notes.append("The log covers %s min, which leaves no analysis period after %s min: "
                         "only the start-up curve is reported." % (num_text((n_pts - 1) * dt / 60),
                                                                  num_text(start)))  # fmt: skip
        _skip_all(rep, wins, "there is no analysis period")
        return rep
    rep.k0, rep.k1 = k0, last
    if k0 != math.ceil(start * 60 / dt):
        rep.notes.append("The analysis starts at %s min, the first reading after %s min."
                         % (num_text(k0 * dt / 60), num_text(start)))  # fmt: skip
    period = (last - k0) * dt  # s
    rep.mean_rate = flow_ul_h(w[last] - w[k0], period, d)
    rep.overall = 100 * (rep.mean_rate - r) / r
    if rep.pulse_nl is not None:
        rep.overall_bound = quantisation_bound(rep.pulse_nl, r, period / 60)
    for p in wins:
        rep.windows.append(_window(rep, p, w, k0, last))
    return rep


def _skip_all(rep, wins, why):
    for p in wins:
        rep.windows.append(Window(p, 0, 0, [], None, None, skipped=why))


def _window(rep, p, w, k0, k1):
    dt = rep.interval_s
    span = p * 60 / dt
    if span.denominator != 1 or span < 1:
        return Window(p, 0, 0, [], None, None,
                      skipped="not a whole number of %s s sample intervals" % num_text(dt))
    n = int(span)
    m = (k1 - k0) - n + 1
    if m < 1:
        return Window(p, n, 0, [], None, None,
                      skipped="longer than the %s min analysis period"
                      % num_text((k1 - k0) * dt / 60))  # fmt: skip
    seconds = p * 60
    # E_j = c * dW - 100, with c fixed for the window: one exact multiply per window.
    c = 100 * _NL_PER_UL * _S_PER_H / (rep.density * seconds * rep.rate)
    errs = []
    for j in range(m):
        a = w[k0 + j]
        b = w[k0 + j + n]
        if a is not None and b is not None:
            errs.append(c * (b - a) - 100)
    bound = cov = None
    if rep.pulse_nl is not None:
        bound = quantisation_bound(rep.pulse_nl, rep.rate, p)
        cov = phase_coverage(rep.pulse_nl, rep.rate, p, dt, m)
    if not errs:
        return Window(p, n, m, [], bound, cov, skipped="no window has both its end readings")
    return Window(p, n, m, errs, bound, cov)


def num_text(x, places=3):
    """A number as a short decimal for people (at most `places` decimals, no trailing zeros)."""
    return ("%.*f" % (places, float(x))).rstrip("0").rstrip(".")


# ---- bolus accuracy ----


class BolusReport:
    def __init__(self, volume_ul, density, errors):
        self.volume_ul = volume_ul
        self.density = density
        self.errors = errors  # % per bolus, exact
        self.n = len(errors)
        self.mean = sum(errors, Fraction(0)) / self.n if errors else None
        self.max = max(errors) if errors else None
        self.min = min(errors) if errors else None

    def as_dict(self):
        return {
            "volume_ul": _f(self.volume_ul, 6),
            "density_g_ml": _f(self.density, 6),
            "boluses": self.n,
            "standard_count": BOLUS_STANDARD_COUNT,
            "mean_error_pct": _f(self.mean),
            "max_error_pct": _f(self.max),
            "min_error_pct": _f(self.min),
            "errors_pct": [_f(e) for e in self.errors],
        }


def bolus_accuracy(weighings, volume_ul, density=DEFAULT_DENSITY):
    """Bolus accuracy from (mass before, mass after) in g of each bolus of set volume_ul: the
    error of each (%), their mean, and the largest and smallest single errors."""
    v = exact(volume_ul, "bolus volume")
    d = exact(density, "density")
    if v <= 0 or d <= 0:
        raise ValueError("the bolus volume and density must be positive")
    errs = []
    for before, after in weighings:
        got_ul = (exact(after, "mass") - exact(before, "mass")) / d * _NL_PER_UL
        errs.append(100 * (got_ul - v) / v)
    return BolusReport(v, d, errs)
