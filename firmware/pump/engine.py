# The dosing engine: turns the programme and boluses into whole motor pulses at exact times.
# Tickless and drift-free; the per-pulse path is a few small-integer additions (docs/dosing.md).

from pump import limits as L
from pump import reasons as R
from pump import rx as RX
from pump.compat import const
from pump.intmath import ceil_div, gcd, lcm
from pump.limiter import Projection
from pump.reasons import Refusal

NEVER = const(0x3FFFFFFF)  # "no pulse due": above any time in the day frame, still a small int

EV_PULSE = const(1)
EV_BOUNDARY = const(2)
EV_BLOCKED = const(3)

MODE_STOPPED = const(0)
MODE_PROGRAM = const(1)
MODE_MINIMUM = const(2)

K_PERIODIC = const(1)
K_CLINICIAN = const(2)
K_PATIENT = const(3)
K_PRIME = const(4)
KIND_NAMES = {K_PERIODIC: "periodic", K_CLINICIAN: "clinician", K_PATIENT: "patient",
              K_PRIME: "priming"}  # fmt: skip

_RUMS_PER_NG = const(8_640_000)  # DAY_MS / RATE_RES: a dose of 1 ng is 8.64e6 rate-unit-ms
# A periodic bolus never starts again within this time of its last start, whatever the clock
# does (setting the clock back, or a daylight-saving change, would otherwise repeat it).
_PERIODIC_MIN_GAP_MS = const(12 * 3_600_000)
_SMALL = const(0x3FFFFFFF)

# Stream record fields (a list per running bolus).
_END = const(0)
_RATE = const(1)
_EXCESS = const(2)
_KIND = const(3)
_DOSE = const(4)


def _nolog(*_args):
    pass


class Scale:
    """The integer scale of one calibration: credits, and credits per ms per rate unit.

    A pulse costs pulse_cr credits whatever the drug; at dose rate R (rate units) and
    concentration c, credits accrue at B * R * (lcm_conc // c) per ms. Both are exact.
    """

    def __init__(self, calib, concentrations):
        # Pulse dose at concentration c in rate-unit-days is num * c * 100 / den; in
        # rate-unit-ms that is num * c * 100 * DAY_MS / den.
        top = calib.ml_num * 100 * L.DAY_MS
        g = gcd(top, calib.ml_den)
        self.B = calib.ml_den // g
        self.lcm_conc = 1
        for c in concentrations:
            self.lcm_conc = lcm(self.lcm_conc, c)
        self.pulse_cr = (top // g) * self.lcm_conc
        # Bounds that keep the per-pulse path inside 30-bit small integers (ESP32).
        fastest = self.per_ms_at_nl_per_day(L.HARD_MAX_RATE_NL_PER_DAY)
        slowest = self.per_ms_at_nl_per_day(L.HARD_MIN_RATE_NL_PER_DAY)
        self.max_d = fastest
        self.max_q = self.pulse_cr // max(1, slowest)
        if fastest >= _SMALL or self.max_q + 2 * L.DAY_MS >= _SMALL:
            raise ValueError("calibration cannot be scheduled in 30-bit integers")
        for c in concentrations:
            if (L.HARD_MIN_RATE_NL_PER_DAY * c) % 10000:
                raise ValueError("minimum rate is not a whole number of rate units")

    def per_ms_at_nl_per_day(self, nl_per_day):
        # Rate units per concentration: R / c = nl_per_day / 10000 (10 ng/day units, ug/mL).
        return self.B * nl_per_day * self.lcm_conc // 10000

    def d(self, rate_ru, conc):
        return self.B * rate_ru * (self.lcm_conc // conc)


class Engine:
    """Pulse scheduler. Time is kept as (day, t) with t in ms since the frame's midnight.

    The engine never reads a clock: fire() processes the next event at the time it is due and
    wait_ms() says how far that is from the last event. run_until() does both for simulation.
    """

    def __init__(self, calib, limiter, lim, conc_ug_per_ml, log=None):
        bad = RX.validate_limits(lim)
        if bad:
            raise ValueError("clinician limits outside the hard limits: " + bad.message())
        if not RX.conc_allowed(conc_ug_per_ml):
            raise ValueError("concentration is not an allowed strength")
        self.calib = calib
        self.scale = Scale(calib, L.CONCENTRATIONS_UG_PER_ML)
        self.limiter = limiter
        self.lim = lim
        self.log = log or _nolog
        self.mode = MODE_STOPPED
        self.rx = None
        self.conc = conc_ug_per_ml
        self._next_conc = conc_ug_per_ml
        self._bridge_left = 0
        self._bridged = 0  # the last pulse counted toward the bridge
        self.day = 0
        self._t = 0
        self.delivered = 0
        self.fault = False
        self._y = self.scale.pulse_cr  # credits still needed before the next pulse
        self._d = 0
        self._q = 0
        self._r = 0
        self._dr = 0
        self._w = 0
        self._f = 0
        self._pulse_at = NEVER
        self._bound_at = L.DAY_MS
        self._streams = []
        self._patient_starts = []  # absolute ms of granted patient boluses, newest last
        self._regimes = []  # (ended at ms, daily ng) of programmes of the last 24 h
        self._primes = []  # (started at ms, dose ng) of priming boluses of the last 24 h
        self._periodic_at = {}  # periodic bolus start minute: engine ms it last started
        # Time of day: the schedule runs on (engine time + _off) mod 24 h, so setting the clock
        # moves the schedule and never the engine's own time, which the limiter counts in.
        self._off = 0
        self.clock_set = True  # False after the clock was lost, until it is set again
        self._hold = -1  # ng/day held while the clock is unset (-1: the schedule runs)
        self.wakeups = 0
        self.boundaries = 0

    # ---- the per-pulse path: small integers only, no allocation ----

    def wait_ms(self):
        """Milliseconds from the last event to the next one."""
        p = self._pulse_at
        b = self._bound_at
        return (p if p <= b else b) - self._t

    def next_is_pulse(self):
        return self._pulse_at <= self._bound_at

    def fire(self):
        """Process the next due event; returns EV_PULSE, EV_BOUNDARY or EV_BLOCKED."""
        self.wakeups += 1
        p = self._pulse_at
        if p <= self._bound_at:
            # Pulses due at a boundary belong to the segment that is ending.
            self._t = p
            if not self.limiter.allow(self.day, p):
                self._block()
                return EV_BLOCKED
            self.delivered += 1
            # f + r could pass 2**30 near the top rate, so subtract the complement instead.
            f = self._f - self._dr
            w = self._w + self._q
            if f < 0:
                f += self._d
            else:
                w += 1
            self._f = f
            self._w = w
            self._pulse_at = w + 1 if f else w
            if self._bridge_left:
                self._bridge_left -= 1
                self._bridged = 1
                if not self._bridge_left:
                    self._bound_at = p
            else:
                self._bridged = 0
            return EV_PULSE
        self._t = self._bound_at
        self._boundary()
        return EV_BOUNDARY

    def not_moved(self):
        """The last pulse did not move the drug (failed or skipped): the old drug is still in
        the line, so the bridge is one pulse longer. The dose schedule goes on as it was."""
        if self._bridged:
            self._bridged = 0
            self._bridge_left += 1
            # A switch of strength due at this instant is called off by the boundary it set.

    # ---- time ----

    def now_ms(self):
        return self.day * L.DAY_MS + self._t

    def _sched_t(self):
        # Milliseconds since the schedule's midnight.
        t = self._t + self._off
        return t - L.DAY_MS if t >= L.DAY_MS else t

    def _step_rate(self):
        # The programme's step rate (ng/day) at the schedule's time of day now.
        return self.rx.step_rate_at(self._sched_t() // L.MIN_MS)

    def _at(self, start_min):
        # Engine time of day at which the schedule reaches start_min.
        return (start_min * L.MIN_MS - self._off) % L.DAY_MS

    def next_due_ms(self):
        p = self._pulse_at
        b = self._bound_at
        return self.day * L.DAY_MS + (p if p <= b else b)

    def run_until(self, now_ms, on_pulse=None):
        """Fire every event due at or before now_ms, then stand at now_ms. Returns pulses."""
        if now_ms < self.now_ms():
            raise ValueError("time went backwards")
        n = 0
        while self.next_due_ms() <= now_ms:
            ev = self.fire()
            if ev == EV_PULSE:
                n += 1
                if on_pulse:
                    on_pulse(self.now_ms())
        self._t = now_ms - self.day * L.DAY_MS
        return n

    # ---- segments ----

    def _needed(self):
        # Credits still needed for the next pulse at the current instant.
        if self._d:
            return (self._w - self._t) * self._d + self._f
        return self._y

    def _rate_ru(self):
        if self.fault:
            return 0
        if self.mode == MODE_PROGRAM:
            r = self._hold
            if r < 0:
                r = self._step_rate()
            rate = r // L.RATE_RES_NG_PER_DAY
        elif self.mode == MODE_MINIMUM:
            rate = L.HARD_MIN_RATE_NL_PER_DAY * self.conc // 10000
        else:
            rate = 0
        for s in self._streams:
            rate += s[_RATE]
        return rate

    def _resegment(self):
        t = self._t
        y = self._y
        d = self.scale.d(self._rate_ru(), self.conc)
        self._d = d
        if d:
            self._q, self._r = divmod(self.scale.pulse_cr, d)
            self._dr = d - self._r
            self._w = t + y // d
            self._f = y % d
            self._pulse_at = self._w + 1 if self._f else self._w
        else:
            self._pulse_at = NEVER
        bound = L.DAY_MS
        if self._scheduled():
            for start, _r in self.rx.steps:
                e = self._at(start)
                if t < e < bound:
                    bound = e
            for p in self.rx.periodic:
                e = self._at(p[0])
                if t < e < bound:
                    bound = e
        for s in self._streams:
            if s[_END] < bound:
                bound = s[_END]
        if self._bridge_left == 0 and self._next_conc != self.conc:
            bound = t
        self._bound_at = bound

    def _boundary(self):
        self.boundaries += 1
        self._y = self._needed()
        if self._t >= L.DAY_MS:
            self._t -= L.DAY_MS
            self.day += 1
            for s in self._streams:
                s[_END] -= L.DAY_MS
        t = self._t
        keep = []
        for s in self._streams:
            if s[_END] <= t:
                # The stream's last millisecond ran at its full rate; take back the excess.
                self._y += self.scale.d(s[_EXCESS], self.conc)
                self.log("bolus_end", KIND_NAMES[s[_KIND]], s[_DOSE])
            else:
                keep.append(s)
        self._streams = keep
        if self._bridge_left == 0 and self._next_conc != self.conc:
            self.log("bridge_end", self.conc, self._next_conc)
            self.conc = self._next_conc
        if self._scheduled():
            self._start_due_periodic()
        self._resegment()

    def _scheduled(self):
        # The time-of-day schedule is running (not held while the clock is unset).
        return self.mode == MODE_PROGRAM and not self.fault and self._hold < 0

    def _add_stream(self, kind, total_rums, dose_ng, duration_ms=0, rate_ru=0):
        if not rate_ru:
            rate_ru = ceil_div(total_rums, duration_ms)
        run_ms = ceil_div(total_rums, rate_ru)
        self._streams.append([self._t + run_ms, rate_ru, rate_ru * run_ms - total_rums, kind,
                              dose_ng])  # fmt: skip
        self.log("bolus_start", KIND_NAMES[kind], dose_ng)

    def _cancel_streams(self, kinds):
        keep = []
        for s in self._streams:
            if s[_KIND] in kinds:
                left = s[_RATE] * (s[_END] - self._t) - s[_EXCESS]
                self.log("bolus_cancel", KIND_NAMES[s[_KIND]], left // _RUMS_PER_NG)
            else:
                keep.append(s)
        self._streams = keep
        if K_PERIODIC in kinds:
            # A periodic bolus cancelled at the instant it started gave nothing: it may start
            # again at once (a new programme's, say).
            now = self.now_ms()
            for k in [k for k in self._periodic_at if self._periodic_at[k] == now]:
                del self._periodic_at[k]

    def _block(self):
        # An overdose risk: stop the motor, keep nothing running, and say so.
        self.fault = True
        self._y = self.scale.pulse_cr
        self._cancel_streams((K_PERIODIC, K_CLINICIAN, K_PATIENT, K_PRIME))
        self.log("limiter_block", self.day, self._t)
        self._resegment()

    # ---- requests (each refused whole, or applied at the current instant) ----

    def _logged(self, request, refusal):
        # Every refusal is an event too: what was asked, why it was refused, about which field.
        if refusal is not None:
            self.log("refused", request, refusal.code, refusal.field)
        return refusal

    def _begin(self):
        self._y = self._needed()

    def _projection_ok(self, rx, mode_rate_ng, extra_ng, peak_ng, limit_ng=0):
        tod_min = self._sched_t() // L.MIN_MS
        fut = Projection(rx, mode_rate_ng, tod_min, extra_ng + self._stream_left_ng())
        margin = self.limiter.margin_ng(peak_ng)
        return self.limiter.window_ok(self.day, self._t, fut, margin, limit_ng)

    def mode_rate_ng(self):
        # Dose rate of the minimum-rate mode (0 otherwise), for projections without a programme.
        if self.mode == MODE_MINIMUM:
            return L.HARD_MIN_RATE_NL_PER_DAY * self.conc // 1000
        return 0

    def _stream_left_ng(self):
        left = 0
        for s in self._streams:
            left += ceil_div(s[_RATE] * (s[_END] - self._t) - s[_EXCESS], _RUMS_PER_NG)
        return left

    def _streams_rate_ng(self, skip_kind=0):
        rate = 0
        for s in self._streams:
            if s[_KIND] != skip_kind:
                rate += s[_RATE] * L.RATE_RES_NG_PER_DAY
        return rate

    def program(self, rx, confirm=False):
        """Make rx the running programme (clinician). Returns None, or a Refusal."""
        return self._logged("program", self._program(rx, confirm))

    def program_refusal(self, rx, confirm=False):
        """What program() would answer now, changing nothing (to stage a programme)."""
        return self._program(rx, confirm, True)

    def _program(self, rx, confirm=False, dry=False):
        if self.fault:
            return Refusal(R.FAULTED, "mode")
        if not self.clock_set:
            return Refusal(R.CLOCK_UNSET, "clock")
        # Plain validation first: the checks after it compute with the programme's fields.
        bad = RX.validate(rx, self.lim)
        if bad:
            return bad
        if rx.conc_ug_per_ml != self._next_conc:
            return Refusal(R.NOT_ALLOWED, "conc_ug_per_ml")
        peak = RX.peak_rate_ng_per_day(rx)
        bad = RX.validate(rx, self.lim, self.limiter.margin_ng(peak))
        if bad:
            return bad
        others = self._streams_rate_ng(K_PERIODIC)
        if not RX.vol_rate_ok(peak + others, self._flow_conc(), self.lim.max_rate_nl_per_day):
            return Refusal(R.RATE_LIMIT, "steps")
        if not confirm and RX.daily_dose_ng(rx) * 100 > self._step_reference_ng() * (
            100 + self.lim.dose_step_pct
        ):
            return Refusal(R.NEEDS_CONFIRM, "steps")
        if not self._projection_ok(rx, 0, 0, peak + others):
            return Refusal(R.DAILY_LIMIT, "steps")
        if dry:
            return None
        self._begin()
        self._cancel_streams((K_PERIODIC,))
        self._end_regime()
        old = self.rx
        self.rx = rx
        self.mode = MODE_PROGRAM
        self.log("program", old, rx)
        self._start_due_periodic()
        self._resegment()
        return None

    def _end_regime(self):
        # Remember the daily dose of the programme that ran until now, for the dose-step rule.
        now = self.now_ms()
        self._regimes = [r for r in self._regimes if r[0] > now - L.DAY_MS]
        if self.mode == MODE_PROGRAM:
            self._regimes.append((now, RX.daily_dose_ng(self.rx)))

    def _step_reference_ng(self):
        """The daily dose an unconfirmed increase is measured against.

        The larger of the dose commanded in the last 24 h and the lowest daily dose of the
        programmes that ran in the last 24 h, so unconfirmed steps cannot compound within a
        day. Minimum rate and stopped do not count as programmes: restarting after them is
        measured against what was actually delivered, priming (drug filling the catheter, not
        yet reaching the patient) left out.
        """
        now = self.now_ms()
        low = RX.daily_dose_ng(self.rx) if self.mode == MODE_PROGRAM else None
        for until, daily in self._regimes:
            if until > now - L.DAY_MS and (low is None or daily < low):
                low = daily
        recent = self.limiter.recent_ng(self.day, self._t)
        for at, dose in self._primes:
            if at > now - L.DAY_MS:
                recent -= dose
        return max(recent, low or 0)

    def _flow_conc(self):
        # During a bridge both strengths will run; the weaker one gives the faster flow.
        return min(self.conc, self._next_conc)

    def _start_due_periodic(self):
        # A programme started exactly at a periodic bolus time starts that bolus now.
        now = self.now_ms()
        for start, dose, dur_s in self.rx.periodic:
            if self._at(start) == self._t:
                last = self._periodic_at.get(start, -L.DAY_MS)
                if now - last < _PERIODIC_MIN_GAP_MS:
                    # The clock was set back over this bolus's time: it has had its dose.
                    self.log("periodic_skipped", dose, now - last)
                    continue
                self._forget_periodic(now - _PERIODIC_MIN_GAP_MS)
                self._periodic_at[start] = now
                self._add_stream(K_PERIODIC, dose * _RUMS_PER_NG, dose, dur_s * 1000)

    def _forget_periodic(self, until_ms):
        # Drop the guard's entries of periodic starts at or before until_ms.
        for k in [k for k in self._periodic_at if self._periodic_at[k] <= until_ms]:
            del self._periodic_at[k]

    def set_limits(self, lim):
        """New clinician limits (clinician). The running programme must still satisfy them."""
        return self._logged("set_limits", self._set_limits(lim))

    def _set_limits(self, lim):
        if not self.clock_set:
            return Refusal(R.CLOCK_UNSET, "clock")
        bad = RX.validate_limits(lim)
        if bad:
            return bad
        # What runs now, and what was commanded in the last 24 h, must fit the new limits,
        # or accepting them would make the limiter block delivery.
        rx = self.rx if self.mode == MODE_PROGRAM else None
        peak = self._streams_rate_ng() + self.mode_rate_ng()
        if rx is not None:
            peak += RX.peak_rate_ng_per_day(rx)
            bad = RX.validate(rx, lim, self.limiter.margin_ng(peak))
            if bad:
                return bad
        if not RX.vol_rate_ok(peak, self._flow_conc(), lim.max_rate_nl_per_day):
            return Refusal(R.RATE_LIMIT, "max_rate_nl_per_day")
        if not self._projection_ok(rx, self.mode_rate_ng(), 0, peak, lim.max_24h_ng):
            return Refusal(R.DAILY_LIMIT, "max_24h_ng")
        old = self.lim
        self.lim = lim
        self.limiter.set_limits(lim)
        self.log("limits", old.as_tuple(), lim.as_tuple())
        return None

    def set_mode(self, mode):
        """Minimum rate or stopped, by explicit clinician command only."""
        return self._logged("set_mode", self._set_mode(mode))

    def _set_mode(self, mode):
        if mode not in (MODE_MINIMUM, MODE_STOPPED):
            return Refusal(R.BAD_MODE, "mode")
        if self.fault:
            return Refusal(R.FAULTED, "mode")
        self._begin()
        # Minimum rate and stopped deliver only what their name says: every bolus ends here.
        self._cancel_streams((K_PERIODIC, K_CLINICIAN, K_PATIENT, K_PRIME))
        self._end_regime()
        self.log("mode", self.mode, mode)
        self.mode = mode
        self._resegment()
        return None

    def clear_fault(self):
        """Clinician acknowledges a limiter block; delivery restarts from a fresh pulse credit."""
        return self._logged("clear_fault", self._clear_fault())

    def _clear_fault(self):
        if not self.fault:
            return Refusal(R.BAD_MODE, "fault")
        self.fault = False
        self._y = self.scale.pulse_cr
        self.log("fault_cleared")
        self._resegment()
        return None

    def _bolus_checks(self, dose_ng, duration_s, kind, field):
        if self.fault:
            return Refusal(R.FAULTED, "mode")
        if not self.clock_set:
            return Refusal(R.CLOCK_UNSET, "clock")
        for s in self._streams:
            if s[_KIND] == kind or s[_KIND] == K_PRIME:
                return Refusal(R.BOLUS_ACTIVE, field)
        bad = RX.validate_bolus(dose_ng, duration_s, self.conc, self.lim, field)
        if bad:
            return bad
        rate_ng = RX.bolus_rate_ru(dose_ng, duration_s * 1000) * L.RATE_RES_NG_PER_DAY
        rx = self.rx if self.mode == MODE_PROGRAM else None
        base = self._streams_rate_ng() + self.mode_rate_ng()
        if rx is not None:
            base += RX.peak_rate_ng_per_day(rx)
        if not RX.vol_rate_ok(base + rate_ng, self._flow_conc(), self.lim.max_rate_nl_per_day):
            return Refusal(R.RATE_LIMIT, field + ".duration_s")
        if not self._projection_ok(rx, self.mode_rate_ng(), dose_ng, base + rate_ng):
            return Refusal(R.DAILY_LIMIT, field + ".dose_ng")
        return None

    def clinician_bolus(self, dose_ng, duration_s):
        """A single bolus on top of the running programme, then back to it."""
        return self._logged("clinician_bolus", self._clinician_bolus(dose_ng, duration_s))

    def _clinician_bolus(self, dose_ng, duration_s):
        bad = self._bolus_checks(dose_ng, duration_s, K_CLINICIAN, "bolus")
        if bad:
            return bad
        self._begin()
        self._add_stream(K_CLINICIAN, dose_ng * _RUMS_PER_NG, dose_ng, duration_s * 1000)
        self._resegment()
        return None

    def patient_bolus(self):
        """A patient-remote request: the dose and duration come from the programme."""
        return self._logged("patient_bolus", self._patient_bolus())

    def _patient_bolus(self):
        bad = self._patient_checks()
        if bad:
            return bad
        rx = self.rx
        self._begin()
        self._patient_starts.append(self.now_ms())
        if len(self._patient_starts) > L.PATIENT_MAX_PER_24H:
            self._patient_starts.pop(0)
        self._add_stream(K_PATIENT, rx.patient_dose_ng * _RUMS_PER_NG, rx.patient_dose_ng,
                         rx.patient_duration_s * 1000)  # fmt: skip
        self._resegment()
        return None

    def _patient_checks(self):
        if self.fault:
            return Refusal(R.FAULTED, "mode")
        rx = self.rx
        if self.mode != MODE_PROGRAM or not rx.patient_max_per_24h:
            return Refusal(R.NOT_PERMITTED, "patient")
        now = self.now_ms()
        starts = self._patient_starts
        if starts and now - starts[-1] < rx.patient_lockout_s * 1000:
            return Refusal(R.LOCKOUT, "patient")
        recent = 0
        for s in starts:
            if now - s < L.DAY_MS:
                recent += 1
        if recent >= rx.patient_max_per_24h:
            return Refusal(R.BOLUS_COUNT, "patient")
        return self._bolus_checks(rx.patient_dose_ng, rx.patient_duration_s, K_PATIENT,
                                  "patient")  # fmt: skip

    def prime(self, volume_nl):
        """Fill the catheter's dead volume at the maximum rate; only from the stopped mode."""
        return self._logged("prime", self._prime(volume_nl))

    def _prime(self, volume_nl):
        if self.fault:
            return Refusal(R.FAULTED, "mode")
        if not self.clock_set:
            return Refusal(R.CLOCK_UNSET, "clock")
        if self.mode != MODE_STOPPED or self._streams:
            return Refusal(R.BAD_MODE, "mode")
        if self._next_conc != self.conc:
            return Refusal(R.BRIDGE_ACTIVE, "prime")
        bad = RX.check_range(volume_nl, 1, L.HARD_MAX_PRIME_NL, "prime.volume_nl")
        if bad:
            return bad
        rate_ru = self.lim.max_rate_nl_per_day * self.conc // 10000
        # Priming counts toward the rolling dose limit: the catheter may not be as empty as
        # assumed, and the limiter cannot tell drug from saline.
        dose_ng = ceil_div(volume_nl * self.conc, 1000)
        if not self._projection_ok(None, 0, dose_ng, rate_ru * L.RATE_RES_NG_PER_DAY):
            return Refusal(R.DAILY_LIMIT, "prime.volume_nl")
        self._begin()
        now = self.now_ms()
        self._primes = [p for p in self._primes if p[0] > now - L.DAY_MS]
        self._primes.append((now, dose_ng))
        self._add_stream(K_PRIME, volume_nl * self.conc * (_RUMS_PER_NG // 1000), dose_ng,
                         rate_ru=rate_ru)  # fmt: skip
        self._resegment()
        return None

    def change_concentration(self, rx, dead_volume_nl):
        """Drug of a new strength is in the reservoir; rx keeps the prescribed dose at it.

        The dead volume (pump tubing and catheter) still holds the old drug, so it is delivered
        at the old concentration (the bridge bolus) before the new concentration applies.
        """
        return self._logged("change_concentration", self._change_concentration(rx, dead_volume_nl))

    def change_strength(self, conc_ug_per_ml, dead_volume_nl):
        """As change_concentration, for the refill: the stored programme (if any) keeps its
        doses at the new strength, so its volume rates are recomputed."""
        refusal = self._change_strength(conc_ug_per_ml, dead_volume_nl, False)
        return self._logged("change_strength", refusal)

    def strength_refusal(self, conc_ug_per_ml, dead_volume_nl):
        """What change_strength would answer now, changing nothing (for the refill's checks)."""
        return self._change_strength(conc_ug_per_ml, dead_volume_nl, True)

    def _change_strength(self, conc_ug_per_ml, dead_volume_nl, dry):
        rx = None if self.rx is None else self.rx.with_concentration(conc_ug_per_ml)
        return self._change_concentration(rx, dead_volume_nl, conc_ug_per_ml, dry)

    def _change_concentration(self, rx, dead_volume_nl, conc_ug_per_ml=0, dry=False):
        if self.fault:
            return Refusal(R.FAULTED, "mode")
        if self._next_conc != self.conc:
            return Refusal(R.BRIDGE_ACTIVE, "conc_ug_per_ml")
        for s in self._streams:
            if s[_KIND] == K_PRIME:
                return Refusal(R.BOLUS_ACTIVE, "conc_ug_per_ml")
        bad = RX.check_range(dead_volume_nl, 0, L.HARD_MAX_PRIME_NL, "dead_volume_nl")
        if bad:
            return bad
        if rx is None:
            # No programme is stored: only the strength changes (checked like a programme's).
            if self.rx is not None:
                return Refusal(R.NOT_ALLOWED, "steps")
            if not RX.conc_allowed(conc_ug_per_ml):
                return Refusal(R.NOT_ALLOWED, "conc_ug_per_ml")
            new_c = conc_ug_per_ml
        else:
            bad = RX.validate(rx, self.lim)
            if bad:
                return bad
            new_c = rx.conc_ug_per_ml
            if self.rx is not None and rx.with_concentration(self.conc) != self.rx:
                return Refusal(R.NOT_ALLOWED, "steps")
        if self.mode == MODE_PROGRAM:
            bad = RX.validate(rx, self.lim, self.limiter.margin_ng(RX.peak_rate_ng_per_day(rx)))
            if bad:
                return bad
        # Boluses already running continue at the new strength: their flow must still fit.
        base = self._streams_rate_ng()
        room = self.lim.max_rate_nl_per_day
        if self.mode == MODE_PROGRAM:
            base += RX.peak_rate_ng_per_day(rx)
        elif self.mode == MODE_MINIMUM:
            room -= L.HARD_MIN_RATE_NL_PER_DAY
        if not RX.vol_rate_ok(base, min(new_c, self.conc), room):
            return Refusal(R.RATE_LIMIT, "conc_ug_per_ml")
        if dry:
            return None
        pulses = self.calib.pulses_for_nl(dead_volume_nl)
        self._begin()
        old = self.conc
        if self.rx is not None:
            self.rx = rx
        self._next_conc = new_c
        self._bridge_left = pulses
        self.limiter.on_refill(new_c, pulses)
        self.log("bridge_start", old, new_c, pulses)
        if pulses == 0:
            self.conc = new_c
        self._resegment()
        return None

    # ---- the clock ----

    def set_time_of_day(self, tod_ms):
        """Set the schedule's clock (clinician). Engine time, and so the limiter's window, runs
        on; the schedule jumps to tod_ms. Refused if the jump would take the next 24 h over
        the dose limit (a repeated morning bolus, say). Ends a hold."""
        return self._logged("set_clock", self._set_tod(tod_ms))

    def _set_tod(self, tod_ms):
        bad = RX.check_range(tod_ms, 0, L.DAY_MS - 1, "tod_ms")
        if bad:
            return bad
        old = self._off
        off = (tod_ms - self._t) % L.DAY_MS
        if self.mode == MODE_PROGRAM and not self.fault:
            self._off = off
            ok = self._projection_ok(self.rx, 0, 0, RX.peak_rate_ng_per_day(self.rx) +
                                     self._streams_rate_ng())  # fmt: skip
            self._off = old
            if not ok:
                return Refusal(R.DAILY_LIMIT, "tod_ms")
        self._begin()
        self._off = off
        self.clock_set = True
        self._hold = -1
        self.log("clock", (self._t + old) % L.DAY_MS, tod_ms)
        if self._scheduled():
            self._start_due_periodic()
        self._resegment()
        return None

    def clock_lost(self):
        """The clock is not trusted (lost at a power cut). The programme's mean basal rate is
        held, with no steps or periodic boluses, until it is set: without a time of day, the
        step that would run is unknown, and holding one step's rate could give more than the
        programme's daily dose (a day-time peak held through the night)."""
        self._begin()
        if self.clock_set or self.mode != MODE_PROGRAM:
            # Lost again before it was set: the rate held since the first loss stays.
            self._hold = -1
            if self.mode == MODE_PROGRAM:
                self._hold = RX.mean_basal_ng_per_day(self.rx)
        self.clock_set = False
        self.log("clock_lost", self._hold)
        self._resegment()

    # ---- state that survives a restart (docs/storage.md) ----

    def snapshot(self):
        """Everything needed to go on exactly from now, as a list of plain values."""
        rx = self.rx
        return [self.mode, None if rx is None else rx.key(), self.conc, self._next_conc,
                self._bridge_left, self._bridged, self.day, self._t, self.delivered,
                1 if self.fault else 0, self._needed(), [list(s) for s in self._streams],
                list(self._patient_starts), [list(r) for r in self._regimes],
                [list(p) for p in self._primes], self._off, 1 if self.clock_set else 0,
                self._hold, self.lim.as_tuple(),
                sorted([k, v] for k, v in self._periodic_at.items())]  # fmt: skip

    def restore(self, s):
        """Go on from a snapshot() list (the limiter is restored separately)."""
        (mode, rx, conc, nxt, bridge_left, bridged, day, t, delivered, fault, y, streams,
         starts, regimes, primes, off, clock_set, hold, lim, periodic_at) = s  # fmt: skip
        if lim != list(self.lim.as_tuple()):
            raise ValueError("stored limits differ from the limits given")
        if mode not in (MODE_STOPPED, MODE_PROGRAM, MODE_MINIMUM) or (mode == MODE_PROGRAM
                                                                      and rx is None):
            raise ValueError("stored mode is not valid")  # fmt: skip
        if not (RX.conc_allowed(conc) and RX.conc_allowed(nxt) and 0 <= t < L.DAY_MS
                and 0 <= off < L.DAY_MS and 0 < y <= self.scale.pulse_cr):
            raise ValueError("stored engine state out of range")  # fmt: skip
        self.mode = mode
        self.rx = None if rx is None else RX.Prescription(*rx)
        if self.rx is not None and (self.rx.conc_ug_per_ml != nxt or RX.validate(self.rx,
                                                                               self.lim)):
            raise ValueError("stored programme is not valid")  # fmt: skip
        self.conc = conc
        self._next_conc = nxt
        self._bridge_left = bridge_left
        self._bridged = bridged
        self.day = day
        self._t = t
        self.delivered = delivered
        self.fault = bool(fault)
        self._y = y
        self._streams = [list(x) for x in streams]
        self._patient_starts = list(starts)
        self._regimes = [tuple(r) for r in regimes]
        self._primes = [tuple(p) for p in primes]
        self._off = off
        self.clock_set = bool(clock_set)
        self._hold = hold
        self._periodic_at = {}
        for k, v in periodic_at:
            self._periodic_at[k] = v
        self._resegment()

    # ---- read-only views ----

    def rate_ru(self):
        return self._rate_ru()

    def streams(self):
        return [(KIND_NAMES[s[_KIND]], s[_DOSE], s[_END]) for s in self._streams]

    def bridge_pulses_left(self):
        return self._bridge_left

    def tod_ms(self):
        """Milliseconds into the engine's current day frame (not the clock's time of day)."""
        return self._t

    def schedule_tod_ms(self):
        """Time of day on the schedule's clock."""
        return self._sched_t()

    def held_rate_ng(self):
        """The dose rate held while the clock is unset, or -1 when the schedule runs."""
        return self._hold if self.mode == MODE_PROGRAM else -1

    def next_conc(self):
        """The strength delivered once any bridge bolus is done."""
        return self._next_conc

    def stream_left_ng(self):
        """Dose still to come from running boluses, rounded up."""
        return self._stream_left_ng()
