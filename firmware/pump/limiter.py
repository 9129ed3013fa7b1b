# Independent safety limiter: asked before every pulse, it counts only pulses actually commanded.
# It shares no code with the scheduler, so a scheduler bug cannot push delivery past a limit.

from array import array

from pump import limits as L
from pump.compat import const
from pump.intmath import ceil_div

_BUCKETS = const(1441)  # one-minute buckets: 24 h plus the current minute, counted whole
_SMALL = const(0x3FFFFFFF)  # largest ESP32 small int; the pulse path stays below it


class Limiter:
    """Rolling 24 h dose and maximum-rate gate over commanded pulses.

    The window is kept in one-minute buckets and the oldest bucket is counted whole, so the
    count can only be higher than the true rolling dose: the limiter errs on the side of
    blocking. Doses per pulse are exact (whole ng plus a carried remainder).
    """

    def __init__(self, calib, lim, conc_ug_per_ml):
        _check_conc(conc_ug_per_ml)
        self._num = calib.ml_num
        self._den = calib.ml_den
        if self._den > _SMALL:
            raise ValueError("calibration denominator too large for the limiter")
        self.set_limits(lim)
        # Zeroed from a zeroed buffer ("i" is 4 bytes on both runtimes): a list of 1,441 zeros
        # was the largest block the pump ever allocated, at boot.
        self._buckets = array("i", bytes(4 * _BUCKETS))
        self._cur = -1  # absolute minute index of the newest bucket
        self._pos = 0  # its slot in the ring
        self.window_ng = 0
        self._acc = 0  # carried dose remainder, in 1/den ng
        self._last_day = -1
        self._last_t = 0
        self.blocked = 0
        self.pulses = 0
        self._bridge_left = 0
        self._bridged = 0  # the last allowed pulse counted toward the bridge
        self._set_dose(conc_ug_per_ml)
        self._old_whole = self._whole
        self._old_remc = self._remc
        self._next_whole = self._whole
        self._next_remc = self._remc

    def _dose_of(self, conc):
        # Exact dose of one pulse: whole ng, and the complement (den - remainder) of the rest.
        per = self._num * conc * 1000
        return per // self._den, self._den - per % self._den

    def _set_dose(self, conc):
        self._whole, self._remc = self._dose_of(conc)

    @staticmethod
    def _check(lim):
        # The limiter's own check, not the scheduler's: it never enforces more than the hard
        # limits allow, whatever it is given.
        if not 0 < lim.max_24h_ng <= L.HARD_MAX_24H_NG:
            raise ValueError("24 h dose limit outside the hard limit")
        if not 0 < lim.max_rate_nl_per_day <= L.HARD_MAX_RATE_NL_PER_DAY:
            raise ValueError("rate limit outside the hard limit")

    def set_limits(self, lim):
        self._check(lim)
        self.max_24h_ng = lim.max_24h_ng
        self.max_rate_nl_per_day = lim.max_rate_nl_per_day
        # Shortest gap between pulses at the maximum rate, in whole ms (rounded down: pulses
        # land on millisecond edges, so a correct schedule can be up to 1 ms early).
        self.min_gap_ms = (self._num * 10**6 * L.DAY_MS) // (self._den * lim.max_rate_nl_per_day)

    def on_refill(self, new_conc, bridge_pulses):
        """A concentration change: the next bridge_pulses pulses still carry the old drug."""
        _check_conc(new_conc)
        # Worked out now: the pulse path must not multiply big numbers when the bridge ends.
        self._next_whole, self._next_remc = self._dose_of(new_conc)
        self._old_whole, self._old_remc = self._whole, self._remc
        self._bridge_left = bridge_pulses
        if bridge_pulses == 0:
            self._set_dose(new_conc)

    def pulse_ng_ceil(self):
        return self._whole + (1 if self._remc != self._den else 0)

    def _roll(self, minute):
        # Retire buckets older than the window; loops at most _BUCKETS times, allocates nothing.
        if self._cur < 0:
            self._cur = minute
            return
        steps = minute - self._cur
        if steps <= 0:
            return
        if steps >= _BUCKETS:
            b = self._buckets
            for i in range(_BUCKETS):
                b[i] = 0
            self.window_ng = 0
            self._cur = minute
            return
        b = self._buckets
        pos = self._pos
        while steps:
            pos += 1
            if pos == _BUCKETS:
                pos = 0
            self.window_ng -= b[pos]
            b[pos] = 0
            steps -= 1
        self._pos = pos
        self._cur = minute

    def allow(self, day, t_ms):
        """Ask before a pulse at (day, t_ms); True records it as commanded, False blocks it."""
        if self._last_day >= 0:
            dd = day - self._last_day
            if dd < 0 or (dd == 0 and t_ms < self._last_t):
                # Time running backwards would let the window forget pulses: refuse.
                self.blocked += 1
                return False
            if dd < 2:
                gap = t_ms - self._last_t + (L.DAY_MS if dd else 0)
                if gap < self.min_gap_ms:
                    self.blocked += 1
                    return False
        self._roll(day * L.MINUTES_PER_DAY + t_ms // L.MIN_MS)
        # acc + rem could pass 2**30 for a large denominator; subtract the complement instead.
        inc = self._whole
        acc = self._acc - self._remc
        if acc < 0:
            acc += self._den
        else:
            inc += 1
        # +1 ng: the carried remainder means the true dose may sit just above the whole count.
        if self.window_ng + inc + 1 > self.max_24h_ng:
            self.blocked += 1
            return False
        self._acc = acc
        self.window_ng += inc
        self._buckets[self._pos] += inc
        self._last_day = day
        self._last_t = t_ms
        self.pulses += 1
        if self._bridge_left:
            self._bridge_left -= 1
            self._bridged = 1
            if not self._bridge_left:
                self._whole = self._next_whole
                self._remc = self._next_remc
        else:
            self._bridged = 0
        return True

    def not_moved(self):
        """The last allowed pulse did not move the drug. Its dose stays counted (erring high),
        but the old drug is still in the line: the bridge at the old strength is one longer."""
        if self._bridged:
            self._bridged = 0
            if not self._bridge_left:
                self._whole = self._old_whole
                self._remc = self._old_remc
            self._bridge_left += 1

    # ---- state that survives a restart ----

    def snapshot(self, copy=True):
        """The window and the dose bookkeeping as plain values. Buckets are listed oldest
        first, so the ring position need not be stored. copy=False gives the live bucket array
        itself, for a caller that encodes it at once (a commit): a copy of 1,441 buckets would
        be the largest block the pump asks of the heap."""
        b = self._buckets
        p = self._pos + 1
        if p != _BUCKETS:
            # Oldest first in place: the ring turned so that its newest bucket is the last.
            _rotate(b, p)
            self._pos = _BUCKETS - 1
        ring = b[:] if copy else b
        return [self._cur, self.window_ng, self._acc, self._last_day, self._last_t, self.blocked,
                self.pulses, self._bridge_left, self._bridged, self._whole, self._remc,
                self._old_whole, self._old_remc, self._next_whole, self._next_remc, ring,
                self.max_24h_ng, self.max_rate_nl_per_day]  # fmt: skip

    def restore(self, s):
        (cur, window, acc, last_day, last_t, blocked, pulses, bridge_left, bridged, whole, remc,
         old_whole, old_remc, next_whole, next_remc, ring, max_24h, max_rate) = s  # fmt: skip
        if max_24h != self.max_24h_ng or max_rate != self.max_rate_nl_per_day:
            raise ValueError("stored limiter limits differ from the limits given")
        if len(ring) != _BUCKETS or sum(ring) != window or min(ring) < 0:
            raise ValueError("stored dose window is inconsistent")
        doses = [self._dose_of(c) for c in L.CONCENTRATIONS_UG_PER_ML]
        for w, r in ((whole, remc), (old_whole, old_remc), (next_whole, next_remc)):
            if (w, r) not in doses:
                raise ValueError("stored pulse dose matches no strength")
        b = self._buckets
        for k in range(_BUCKETS):
            b[k] = ring[k]
        self._pos = _BUCKETS - 1
        self._cur = cur
        self.window_ng = window
        self._acc = acc
        self._last_day = last_day
        self._last_t = last_t
        self.blocked = blocked
        self.pulses = pulses
        self._bridge_left = bridge_left
        self._bridged = bridged
        self._whole, self._remc = whole, remc
        self._old_whole, self._old_remc = old_whole, old_remc
        self._next_whole, self._next_remc = next_whole, next_remc

    def preload(self, day, t_ms, past_ng):
        """Count past_ng[k] as delivered in the minute k + 1 minutes before now (k = 0..1439),
        for a restart whose own window was lost: the caller passes a conservative estimate."""
        now = day * L.MINUTES_PER_DAY + t_ms // L.MIN_MS
        self._roll(now)
        b = self._buckets
        for k in range(min(len(past_ng), _BUCKETS - 1)):
            slot = (self._pos - 1 - k) % _BUCKETS
            b[slot] += past_ng[k]
            self.window_ng += past_ng[k]

    def margin_ng(self, peak_rate_ng_per_day):
        """Dose a correct programme must leave free below the limit (see the class docstring).

        One pulse (credit carried from before a window), one extra minute at the peak rate
        (the whole oldest bucket) and 2 ng of rounding.
        """
        return self.pulse_ng_ceil() + ceil_div(peak_rate_ng_per_day, L.MINUTES_PER_DAY) + 2

    def recent_ng(self, day, t_ms):
        """Dose counted in the window that ends now (pulses or not since); changes nothing."""
        past = self.window_ng
        if self._cur < 0:
            return 0
        drop = day * L.MINUTES_PER_DAY + t_ms // L.MIN_MS - self._cur
        if drop >= _BUCKETS:
            return 0
        b = self._buckets
        for k in range(1, drop + 1):
            past -= b[(self._pos + k) % _BUCKETS]
        return past

    def window_ok(self, day, t_ms, future_ng, margin_ng, limit_ng=0):
        """Would every rolling window ending in the next 24 h stay within the limit?

        future_ng[k] is the dose expected in minute (now + k) for k = 0..1440, counted early
        (a bolus's whole dose in its first minute), which only makes this check stricter.
        limit_ng, when given, replaces the 24 h limit (to try new limits). Changes nothing.
        """
        now = day * L.MINUTES_PER_DAY + t_ms // L.MIN_MS
        b = self._buckets
        past = self.window_ng
        shift = now - self._cur if self._cur >= 0 else _BUCKETS
        dropped = 0
        fut = 0
        limit = (limit_ng or self.max_24h_ng) - margin_ng
        for k in range(_BUCKETS):
            # A window ending at minute now+k no longer holds the (shift + k) oldest buckets.
            want = shift + k
            while dropped < want and dropped < _BUCKETS:
                dropped += 1
                past -= b[(self._pos + dropped) % _BUCKETS]
            fut += future_ng[k]
            if past + fut > limit:
                return False
        return True


def _check_conc(conc):
    # The limiter's own copy of the rule: it counts doses only at strengths that exist.
    if not isinstance(conc, int) or conc not in L.CONCENTRATIONS_UG_PER_ML:
        raise ValueError("concentration is not an allowed strength")


def _reverse(a, i, j):
    j -= 1
    while i < j:
        t = a[i]
        a[i] = a[j]
        a[j] = t
        i += 1
        j -= 1


def _rotate(a, p):
    """Rotate a left by p in place (a[p] becomes a[0])."""
    n = len(a)
    _reverse(a, 0, p)
    _reverse(a, p, n)
    _reverse(a, 0, n)


class Projection:
    """Expected dose per minute for the next 24 h + 1 min, from the programme alone, computed
    minute by minute as window_ok() reads it: p[k] is the dose of minute (now + k).

    rx is the active prescription, or None when only a fixed rate runs (minimum or stopped,
    given as mode_rate_ng_per_day). tod_min is the current minute of the day. extra_ng (active
    and requested boluses) is placed in the first minute. Nothing is stored per minute: a
    table of 1,441 would be the largest block the pump ever asks of the heap.
    """

    def __init__(self, rx, mode_rate_ng_per_day, tod_min, extra_ng=0):
        self.rx = rx
        self.mode_rate_ng_per_day = mode_rate_ng_per_day
        self.tod_min = tod_min
        self.extra_ng = extra_ng

    def __len__(self):
        return _BUCKETS

    def __getitem__(self, k):
        if not 0 <= k < _BUCKETS:
            raise IndexError("a projection covers 1,441 minutes")
        rx = self.rx
        m = (self.tod_min + k) % L.MINUTES_PER_DAY
        rate = self.mode_rate_ng_per_day if rx is None else rx.step_rate_at(m)
        dose = ceil_div(rate, L.MINUTES_PER_DAY)
        if rx is not None:
            for start, bolus_ng, _dur in rx.periodic:
                if start == m:
                    dose += bolus_ng
        if k == 0:
            dose += self.extra_ng
        return dose
