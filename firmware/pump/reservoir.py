# Reservoir accounting in integer nL from confirmed pulses, and the worst-case forecast of when
# the reservoir reaches its low threshold and empties. Pure: the caller supplies pulses and time.

from pump import limits as L
from pump.compat import const
from pump.intmath import ceil_div, gcd

LOW = const(1)  # on_pulse(): this pulse took the estimate to the low threshold
EMPTY = const(2)  # on_pulse(): this pulse took the estimate to zero

HORIZON_MS = 20 * 365 * L.DAY_MS  # forecasts further out than this are "not in sight"


class Reservoir:
    """The estimated drug volume: the last fill minus the confirmed pulses since, rounded so
    that the estimate is never above the model (the used volume is rounded up).

    The estimate may go below zero: that means more pulses were confirmed than the fill held,
    so the model is wrong, and it is shown as it is rather than clamped.
    """

    def __init__(self, calib, capacity_nl, low_nl, fill_nl=0):
        num = calib.ml_num * 1_000_000
        g = gcd(num, calib.ml_den)
        self.pulse_num = num // g  # one pulse is pulse_num / pulse_den nL
        self.pulse_den = calib.ml_den // g
        if capacity_nl < 1:
            raise ValueError("reservoir capacity must be positive")
        self.capacity_nl = capacity_nl
        self.low_nl = low_nl
        self.fill_nl = fill_nl
        self.pulses = 0  # confirmed pulses since the last fill
        self._low_at = 0
        self._empty_at = 0
        self._thresholds()

    def _pulses_to_use(self, volume_nl):
        # Fewest pulses whose rounded-up volume reaches volume_nl.
        if volume_nl <= 0:
            return 0
        return (volume_nl - 1) * self.pulse_den // self.pulse_num + 1

    def _thresholds(self):
        self._low_at = self._pulses_to_use(self.fill_nl - self.low_nl)
        self._empty_at = self._pulses_to_use(self.fill_nl)

    def refill(self, fill_nl, pulses_since=0):
        """A new fill; pulses_since were confirmed after it went in and before this call."""
        self.fill_nl = fill_nl
        self.pulses = pulses_since
        self._thresholds()

    def set_low(self, low_nl):
        self.low_nl = low_nl
        self._thresholds()

    def on_pulse(self):
        """Count one pulse the mechanism confirmed. Allocation-free; returns 0, LOW or EMPTY."""
        n = self.pulses + 1
        self.pulses = n
        if n == self._empty_at:
            return EMPTY
        if n == self._low_at:
            return LOW
        return 0

    def snapshot(self):
        return [self.capacity_nl, self.fill_nl, self.pulses, self.low_nl]

    def restore(self, s):
        cap, fill, pulses, low = s
        if cap != self.capacity_nl:
            raise ValueError("stored reservoir capacity differs from the board's")
        if not (0 <= fill <= cap and 0 <= low <= cap and pulses >= 0):
            raise ValueError("stored reservoir state out of range")
        self.fill_nl = fill
        self.pulses = pulses
        self.low_nl = low
        self._thresholds()

    def used_nl(self):
        return ceil_div(self.pulses * self.pulse_num, self.pulse_den)

    def remaining_nl(self):
        return self.fill_nl - self.used_nl()

    def is_low(self):
        return self.pulses >= self._low_at

    def is_empty(self):
        return self.pulses >= self._empty_at

    def pulse_volume_nl_ceil(self):
        return ceil_div(self.pulse_num, self.pulse_den)

    def volume_of_pulses_nl(self, pulses):
        return ceil_div(pulses * self.pulse_num, self.pulse_den)


def discrepancy_tolerance_nl(delivered_nl, min_nl, pct):
    """Allowed |withdrawn - expected| at a refill: the larger of min_nl and pct of the volume
    delivered since the last refill."""
    t = delivered_nl * pct // 100
    return t if t > min_nl else min_nl


class Usage:
    """Worst-case consumption from an instant on, for the forecast: the programme as it is,
    every patient bolus taken as soon as it is allowed, boluses counted whole when they start.

    tod_ms: time of day now. steps, periodic: the programme (empty when none runs).
    patient: (dose_ng, lockout_ms, max_per_24h): boluses at 0, lockout, 2 * lockout, ... as
    long as fewer than max_per_24h started in the last 24 h, as the engine allows them.
    upfront_ng: doses already started (running boluses). extra_nl: volume not covered by the
    dose at conc (the rest of a bridge).
    flow_nl_per_day: a volume rate that runs without a programme (the minimum-rate mode).
    """

    __slots__ = ("tod_ms", "steps", "periodic", "patient", "conc", "upfront_ng", "extra_nl",
                 "flow_nl_per_day")  # fmt: skip

    def __init__(self, tod_ms, conc, steps=(), periodic=(), patient=(0, 0, 0), upfront_ng=0,
                 extra_nl=0, flow_nl_per_day=0):  # fmt: skip
        self.tod_ms = tod_ms
        self.conc = conc
        self.steps = steps
        self.periodic = periodic
        self.patient = patient
        self.upfront_ng = upfront_ng
        self.extra_nl = extra_nl
        self.flow_nl_per_day = flow_nl_per_day

    def _prefix(self, t_ms):
        # Integral of the step rate from midnight to t_ms (0..DAY_MS), in ng/day * ms.
        acc = 0
        steps = self.steps
        for i in range(len(steps)):
            a = steps[i][0] * L.MIN_MS
            b = steps[i + 1][0] * L.MIN_MS if i + 1 < len(steps) else L.DAY_MS
            if t_ms <= a:
                break
            acc += steps[i][1] * ((b if b < t_ms else t_ms) - a)
        return acc

    def _steps_x(self, span_ms):
        # Integral of the step rate over [tod, tod + span), in ng/day * ms.
        if not self.steps:
            return 0
        days, rem = divmod(span_ms, L.DAY_MS)
        a = self.tod_ms
        b = a + rem
        x = days * self._prefix(L.DAY_MS)
        if b <= L.DAY_MS:
            return x + self._prefix(b) - self._prefix(a)
        return x + self._prefix(L.DAY_MS) - self._prefix(a) + self._prefix(b - L.DAY_MS)

    def _periodic_ng(self, span_ms):
        # Periodic boluses starting in (tod, tod + span], each counted whole.
        total = 0
        for start_min, dose, _dur in self.periodic:
            first = start_min * L.MIN_MS - self.tod_ms
            if first <= 0:
                first += L.DAY_MS
            if first <= span_ms:
                total += dose * ((span_ms - first) // L.DAY_MS + 1)
        return total

    def _patient_ng(self, span_ms):
        # The earliest schedule the engine allows: bolus i at max(previous + lockout, the n-th
        # before it + 24 h). With n * lockout < 24 h that is n at the start of every day,
        # spaced by the lockout. Counted whole when they start.
        dose, lockout_ms, n = self.patient
        if not n or not dose:
            return 0
        if lockout_ms * n >= L.DAY_MS:
            # The lockout alone keeps any 24 h to n boluses: one every lockout.
            return dose * (span_ms // lockout_ms + 1)
        days, rem = divmod(span_ms, L.DAY_MS)
        k = rem // lockout_ms + 1 if lockout_ms else n
        return dose * (n * days + (k if k < n else n))

    def used_nl(self, span_ms):
        """Worst-case volume used over the next span_ms, rounded up."""
        ng = self.upfront_ng + self._periodic_ng(span_ms) + self._patient_ng(span_ms)
        ng_x = ng * L.DAY_MS + self._steps_x(span_ms)
        # ng/day*ms -> nL: divide by DAY_MS for ng, then nL = ng * 1000 / conc.
        nl = ceil_div(ng_x * 1000, L.DAY_MS * self.conc)
        return nl + self.extra_nl + ceil_div(self.flow_nl_per_day * span_ms, L.DAY_MS)

    def time_to_use_ms(self, volume_nl):
        """Fewest ms after which the worst case has used volume_nl; None if not within the
        horizon (nothing is running, or it would take over 20 years)."""
        if volume_nl <= 0:
            return 0
        if self.used_nl(HORIZON_MS) < volume_nl:
            return None
        lo, hi = 0, HORIZON_MS  # used(lo) < volume <= used(hi), lo excluded unless volume <= 0
        if self.used_nl(0) >= volume_nl:
            return 0
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self.used_nl(mid) >= volume_nl:
                hi = mid
            else:
                lo = mid
        return hi
