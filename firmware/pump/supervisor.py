# The supervisor: drives the dosing engine against a mechanism and keeps reservoir, battery,
# stall detection, refill and alarms consistent with it. Pure: time and hardware come in.

from pump import alarms as A
from pump import battery as B
from pump import engine as E
from pump import limits as L
from pump import reasons as R
from pump import reservoir as RS
from pump import rx as RX
from pump.reasons import Refusal

_MAX_STORED = 1 << 62  # counters and clock values beyond this could not be stored
# After a restart, pulses due up to this long after the trusted clock's "now" stay uncertain:
# 5 s, plus 200 ppm of the time since the save (crystal drift between the clock and the pump's
# own time).
DRIFT_MS = 5_000
DRIFT_PPM_DIV = 5_000


def _nolog(*_args):
    pass


class Settings:
    """Clinician- and board-set parameters of the supervisor. All volumes in nL, times in ms."""

    __slots__ = ("dead_volume_nl", "tol_min_nl", "tol_pct", "stall_count", "backoff_min_ms",
                 "backoff_max_ms", "late_ms", "refill_notice_ms", "refill_timeout_ms",
                 "settle_ms", "batch_pulses", "checkpoint_ms")  # fmt: skip

    def __init__(self, dead_volume_nl, tol_min_nl=1_000_000, tol_pct=20,
                 stall_count=2, backoff_min_ms=60_000, backoff_max_ms=3_600_000, late_ms=10_000,
                 refill_notice_ms=7 * L.DAY_MS, refill_timeout_ms=3_600_000,
                 settle_ms=2_000, batch_pulses=0, checkpoint_ms=6 * 3_600_000):  # fmt: skip
        self.dead_volume_nl = dead_volume_nl  # pump tubing + catheter: the bridge bolus volume
        self.tol_min_nl = tol_min_nl  # refill discrepancy tolerance: at least this,
        self.tol_pct = tol_pct  # or this share of the volume delivered since the last refill
        self.stall_count = stall_count  # consecutive failed pulses that make a stall
        self.backoff_min_ms = backoff_min_ms  # first retry after a stall, doubling up to max
        self.backoff_max_ms = backoff_max_ms
        self.late_ms = late_ms  # a pulse later than this is skipped, not delivered in a burst
        self.refill_notice_ms = refill_notice_ms
        self.refill_timeout_ms = refill_timeout_ms  # an open refill is abandoned after this
        self.settle_ms = settle_ms  # motor-idle time around a battery sample
        # At most this many pulses go out between two saved checkpoints (docs/storage.md);
        # a checkpoint is also due this long after the last, if any pulse went out since.
        # 0: no storage is attached (core tests); the storage layer refuses to work with 0.
        self.batch_pulses = batch_pulses
        self.checkpoint_ms = checkpoint_ms
        bad = self.problem()
        if bad:
            raise ValueError("supervisor settings: " + bad)

    def problem(self):
        """The first setting out of its sensible range, as a phrase, or None."""
        if not 0 <= self.dead_volume_nl <= L.HARD_MAX_PRIME_NL:
            return "dead volume outside 0 .. the priming limit"
        if self.tol_min_nl < 0 or not 0 <= self.tol_pct <= 100:
            return "negative volume or a percentage outside 0..100"
        if self.stall_count < 1:
            return "a stall needs at least one failed pulse"
        if not 1 <= self.backoff_min_ms <= self.backoff_max_ms:
            return "back-off must be at least 1 ms and the minimum not above the maximum"
        if self.late_ms < 0 or self.refill_notice_ms < 0 or self.settle_ms < 0:
            return "negative time"
        if self.refill_timeout_ms < 1:
            return "refill timeout must be positive"
        if self.batch_pulses < 0 or self.checkpoint_ms < 1:
            return "checkpoint batch must not be negative, nor the interval below 1 ms"
        return None

    def as_tuple(self):
        return tuple(getattr(self, k) for k in self.__slots__)


class _Refill:
    __slots__ = ("started_ms", "withdrawn_nl", "expected_nl", "tolerance_nl", "fill_nl", "conc",
                 "pulses_at_fill")  # fmt: skip

    def __init__(self, started_ms, withdrawn_nl, expected_nl, tolerance_nl):
        self.started_ms = started_ms
        self.withdrawn_nl = withdrawn_nl
        self.expected_nl = expected_nl
        self.tolerance_nl = tolerance_nl
        self.fill_nl = -1
        self.conc = 0
        self.pulses_at_fill = 0  # reservoir pulses when the new fill went in

    def discrepancy(self):
        d = self.withdrawn_nl - self.expected_nl
        return d > self.tolerance_nl or -d > self.tolerance_nl


class Supervisor:
    """One pump: engine, reservoir, battery monitor and alarms, advanced together in time.

    The shell calls advance(now_ms, mech, buzzer) at or after next_wake_ms(), samples the
    battery when battery_due() says the motor is idle, and passes requests through. Every
    request returns None or a Refusal, and a refused request changes nothing.
    """

    def __init__(self, engine, reservoir, battery, alarms, settings, log=None):
        self.engine = engine
        self.reservoir = reservoir
        self.battery = battery
        self.alarms = alarms
        self.settings = settings
        self.log = log or _nolog
        self._offset = 0  # added to the shell's time after the clock ran backwards
        self._last = engine.now_ms()
        self._fails = 0  # consecutive failed pulses
        self._stalled = False
        self._backoff = 0
        self._retry_at = 0
        self._stall_lost = 0  # pulses not delivered since this stall began
        self._late = 0  # pulses skipped late in this advance
        self.undelivered_pulses = 0  # failed, skipped in a stall, or skipped late: all time
        self.failed_pulses = 0
        self.moved_pulses = 0  # confirmed (or, after a power cut, assumed) since commissioning
        self._pulse_day = -1  # when the motor last moved, in the engine's day frame
        self._pulse_tod = 0
        self._refill = None
        self.low_at_ms = None  # worst-case forecast, absolute engine ms; None: not in sight
        self.empty_at_ms = None
        self._refill_due_at = None
        self.staged = None  # a programme validated and waiting for its commit
        self.counters = {}  # name: the last value used (the radio protocol's replay counters)
        self.wall_off_ms = 0  # wall-clock ms (local time) at engine time 0
        self._fired = 0  # pulses fired since the last checkpoint
        self._held = False  # stopped before a pulse until a checkpoint is saved
        self._ckpt_due_at = engine.now_ms() + settings.checkpoint_ms
        self._uncertain = 0  # next pulses that may have gone out before a power cut
        self._uncertain_until = 0  # ... if due no later than this
        self.storage_ok = True
        now = engine.now_ms()
        # A reservoir that starts low or empty never crosses its threshold: say so now.
        if reservoir.is_empty():
            alarms.condition(A.RES_EMPTY, True, now)
        if reservoir.is_low():
            alarms.condition(A.RES_LOW, True, now)
        self.forecast()

    # ---- time ----

    def now_ms(self):
        return self.engine.now_ms()

    def last_advance_ms(self):
        """The shell's time of the last advance(): what a saved state stands at."""
        return self._last - self._offset

    def next_wake_ms(self):
        """When advance() must next run, in the shell's time."""
        t = self.engine.next_due_ms()
        x = self.alarms.next_wake_ms()
        if x < t:
            t = x
        x = self._refill_due_at
        if x is not None and x < t:
            t = x
        if self._refill is not None:
            x = self._refill_deadline()
            if x < t:
                t = x
        x = self._battery_due_at()
        if x < t:
            t = x
        # Never before the last advance: the shell would take that for a clock running back.
        if t < self._last or self._held:
            t = self._last
        return t - self._offset

    def _refill_deadline(self):
        if self._refill is None:
            return None
        return self._refill.started_ms + self.settings.refill_timeout_ms

    def _battery_due_at(self):
        # The first instant a due sample finds the motor idle for settle_ms on both sides.
        st = self.settings.settle_ms
        t = self.battery.next_due_ms()
        if self._pulse_day >= 0:
            quiet = self._pulse_day * L.DAY_MS + self._pulse_tod + st
            if quiet > t:
                t = quiet
        nxt = self.engine.next_due_ms()
        if nxt - t < st:
            t = nxt + st
        if t <= self._last:
            # Due at the last advance but not taken (an ADC read failed?): ask again in a while
            # rather than at once, so a missing sample cannot spin the loop.
            t = self._last + st
        return t

    def advance(self, now_ms, mech, buzzer):
        """Deliver every pulse due up to now_ms through mech, then update alarms and the
        buzzer. Returns the number of pulses the mechanism confirmed."""
        t = now_ms + self._offset
        if t < self._last:
            # The clock ran backwards: keep the engine's time going on from where it was, so
            # therapy neither stops nor repeats, and say so.
            self.alarms.event(A.CLOCK, self._last, "backwards", self._last - t)
            self._offset += self._last - t
            t = self._last
        self._last = t
        done = self._deliver(t // L.DAY_MS, t % L.DAY_MS, mech)  # divmod() would make a tuple
        if not self._held:
            self.engine.run_until(t)
        if self._late:
            self.alarms.event(A.CLOCK, t, "late", self._late)
            self.log("pulses_skipped_late", self._late)
            self._late = 0
        self._timers(t)
        self.alarms.tick(t, buzzer)
        return done

    def _deliver(self, day, tod, mech):
        # The per-pulse loop works in the engine's day frame, so on the ESP32 (31-bit small
        # ints) it makes no long ints: nothing here allocates unless something goes wrong.
        eng = self.engine
        done = 0
        if self._held:
            return 0  # a request or a batch waits for its checkpoint to be saved
        b = self.settings.batch_pulses
        while True:
            lag = (day - eng.day) * L.DAY_MS + tod - eng.tod_ms() - eng.wait_ms()
            if lag < 0:
                return done
            if b and self._fired and eng.next_is_pulse() and (
                    self._fired >= b or self._last >= self._ckpt_due_at):  # fmt: skip
                if self.storage_ok:
                    # The last checkpoint covers no more pulses (the batch is used up, or it is
                    # too old): wait for the next one.
                    self._held = True
                    return done
                self._fired = 0  # no storage: therapy goes on, the alarm says why
            ev = eng.fire()
            if ev == E.EV_PULSE:
                self._fired += 1
                done += self._pulse(lag, mech)
            elif ev == E.EV_BLOCKED:
                self.alarms.condition(A.LIMITER_BLOCK, True, eng.now_ms())
                self.forecast()

    def _pulse(self, lag, mech):
        # lag: how long ago this pulse was due.
        if self._uncertain:
            if self.engine.now_ms() <= self._uncertain_until:
                # It may have gone out before the power cut: count it, do not send it again.
                self._uncertain -= 1
                self._assume_delivered()
                return 0
            self._uncertain = 0  # due after anything that could have gone out before the cut
        if lag > self.settings.late_ms:
            # Delivering every overdue pulse at once would be a bolus nobody ordered.
            self._late += 1
            self._not_moved()
            return 0
        if self._stalled and self._before_retry():
            self._stall_lost += 1
            self._not_moved()
            return 0
        self.battery.on_pulse()
        eng = self.engine
        self._pulse_day = eng.day
        self._pulse_tod = eng.tod_ms()
        if mech.pulse():
            self._fails = 0
            self._moved()
            if self._stalled:
                self._stall_end(eng.now_ms())
            else:
                self._stall_lost = 0
            return 1
        self._not_moved()
        self._failed(eng.now_ms())
        return 0

    def _moved(self):
        # Drug went down the line (or, after a power cut, may have): count it.
        self.moved_pulses += 1
        ev = self.reservoir.on_pulse()
        if ev:
            self._reservoir_crossed(ev, self.engine.now_ms())

    def _assume_delivered(self):
        self.battery.on_pulse()
        self._moved()

    def _not_moved(self):
        # Nothing went down the line: a bridge bolus must not be counted as done by a pulse
        # that never pushed the old drug out (the engine and the limiter both keep track).
        self.undelivered_pulses += 1
        self.engine.not_moved()
        self.engine.limiter.not_moved()

    def _before_retry(self):
        return self.engine.now_ms() < self._retry_at

    def _failed(self, due):
        s = self.settings
        self._fails += 1
        self.failed_pulses += 1
        self._stall_lost += 1
        self.log("pulse_failed", self._fails, self.reservoir.pulse_volume_nl_ceil())
        if self._stalled:
            b = self._backoff * 2
            self._backoff = b if b < s.backoff_max_ms else s.backoff_max_ms
            self._retry_at = due + self._backoff
            self.log("stall_retry_failed", self._backoff, self._stall_lost)
        elif self._fails >= s.stall_count:
            self._stalled = True
            self._backoff = s.backoff_min_ms
            self._retry_at = due + self._backoff
            self.log("stall", self._stall_lost, self._lost_nl(self._stall_lost))
            self.alarms.condition(A.STALL, True, due)

    def _stall_end(self, due):
        self._stalled = False
        self.log("stall_end", self._stall_lost, self._lost_nl(self._stall_lost))
        self._stall_lost = 0
        self.alarms.condition(A.STALL, False, due)

    def _lost_nl(self, pulses):
        return self.reservoir.volume_of_pulses_nl(pulses)

    def stalled(self):
        return self._stalled

    def _reservoir_crossed(self, ev, at):
        if ev == RS.EMPTY:
            # Therapy goes on: the estimate may be low, and stopping baclofen is dangerous.
            self.alarms.condition(A.RES_EMPTY, True, at)
        self.alarms.condition(A.RES_LOW, True, at)

    def _timers(self, t):
        if self._refill_due_at is not None and t >= self._refill_due_at:
            self._refill_due_at = None
            if not self.reservoir.is_low():
                self.alarms.condition(A.REFILL_DUE, True, t)
        dl = self._refill_deadline()
        if dl is not None and t >= dl:
            self._abandon("timeout")

    # ---- battery ----

    def battery_due(self, now_ms):
        """True when a battery sample is due and the motor is idle long enough around it."""
        t = now_ms + self._offset
        if not self.battery.due(t):
            return False
        st = self.settings.settle_ms
        if self._pulse_day >= 0 and t - (self._pulse_day * L.DAY_MS + self._pulse_tod) < st:
            return False
        return self.engine.next_due_ms() - t >= st

    def battery_sample(self, now_ms, sum_uv, count):
        t = now_ms + self._offset
        ch = self.battery.sample(t, sum_uv, count)
        if ch is None:
            return None
        new = ch[1]
        self.alarms.condition(A.BATT_ERI, new != B.OK, t)
        self.alarms.condition(A.BATT_EOS, new == B.EOS, t)
        if new == B.EOS:
            self.log("loads_cut", "advertising")
        elif ch[0] == B.EOS:
            self.log("loads_restored", "advertising")
        return ch

    def loads_cut(self):
        return self.battery.loads_cut()

    def radio_on(self, ms):
        self.battery.radio_on(ms)

    # ---- forecast ----

    def usage(self):
        """The worst-case consumption model of what runs now."""
        eng = self.engine
        conc = eng.next_conc()
        u = RS.Usage(eng.schedule_tod_ms(), conc, upfront_ng=eng.stream_left_ng())
        bridge = eng.bridge_pulses_left()
        if bridge and eng.conc < conc:
            # The bridge runs at the old, weaker strength: more volume than its dose at conc.
            v = self.reservoir.volume_of_pulses_nl(bridge)
            u.extra_nl = v - v * eng.conc // conc
        if eng.fault:
            u.upfront_ng = 0
        elif eng.mode == E.MODE_PROGRAM and eng.held_rate_ng() >= 0:
            # The clock is unset: the held rate runs, and nothing can be added to it.
            u.steps = ((0, eng.held_rate_ng()),)
        elif eng.mode == E.MODE_PROGRAM:
            rx = eng.rx
            u.steps = rx.steps
            u.periodic = rx.periodic
            u.patient = (rx.patient_dose_ng, rx.patient_lockout_s * 1000, rx.patient_max_per_24h)
        elif eng.mode == E.MODE_MINIMUM:
            u.flow_nl_per_day = L.HARD_MIN_RATE_NL_PER_DAY
        return u

    def forecast(self):
        """Recompute when the reservoir reaches its low threshold and empties (worst case)."""
        now = self.now_ms()
        u = self.usage()
        res = self.reservoir
        left = res.remaining_nl()
        lo = u.time_to_use_ms(left - res.low_nl)
        em = u.time_to_use_ms(left)
        self.low_at_ms = None if lo is None else now + lo
        self.empty_at_ms = None if em is None else now + em
        self.log("forecast", -1 if lo is None else now + lo, -1 if em is None else now + em)
        self._refill_due_at = None
        due = None if self.low_at_ms is None else self.low_at_ms - self.settings.refill_notice_ms
        if due is not None and due <= now and not res.is_low():
            self.alarms.condition(A.REFILL_DUE, True, now)
        else:
            self.alarms.condition(A.REFILL_DUE, False, now)
            if due is not None and not res.is_low():
                self._refill_due_at = due

    # ---- requests passed to the engine ----

    def _after(self, refusal):
        if refusal is None:
            self.forecast()
            self._changed()
        return refusal

    def _changed(self):
        # Delivery waits until the state this request made is saved: a power cut must not lose
        # a change whose pulses already went out.
        if self.settings.batch_pulses and self.storage_ok:
            self._held = True

    def _storage_refusal(self, request):
        # While nothing can be saved, a change would be lost at the next power cut, silently:
        # it is refused instead. Therapy already running goes on.
        if self.storage_ok:
            return None
        return self._refused(request, R.STORAGE_FAILED, "storage")

    def program(self, rx, confirm=False):
        return self._storage_refusal("program") or self._after(self.engine.program(rx, confirm))

    def set_mode(self, mode):
        # Allowed even when storage fails: stopping or the minimum rate is a safety action.
        return self._after(self.engine.set_mode(mode))

    def set_limits(self, lim):
        return self._storage_refusal("set_limits") or self._after(self.engine.set_limits(lim))

    def clinician_bolus(self, dose_ng, duration_s):
        return self._storage_refusal("clinician_bolus") or self._after(
            self.engine.clinician_bolus(dose_ng, duration_s))  # fmt: skip

    def patient_bolus(self):
        return self._storage_refusal("patient_bolus") or self._after(self.engine.patient_bolus())

    def prime(self, volume_nl):
        return self._storage_refusal("prime") or self._after(self.engine.prime(volume_nl))

    def clear_fault(self):
        r = self.engine.clear_fault()
        if r is None:
            self.alarms.condition(A.LIMITER_BLOCK, False, self.now_ms())
            self.forecast()
            self._changed()
        return r

    # ---- requests of the supervisor itself ----

    def _refused(self, request, code, field):
        self.log("refused", request, code, field)
        return Refusal(code, field)

    def set_low_threshold(self, low_nl):
        bad = self._storage_refusal("set_low_threshold")
        if bad:
            return bad
        bad = RX.check_range(low_nl, 0, self.reservoir.capacity_nl, "low_nl")
        if bad:
            return self._refused("set_low_threshold", bad.code, bad.field)
        self.log("low_threshold", self.reservoir.low_nl, low_nl)
        self.reservoir.set_low(low_nl)
        self.alarms.condition(A.RES_LOW, self.reservoir.is_low(), self.now_ms())
        self.forecast()
        return None

    def acknowledge(self, cid):
        return self.alarms.acknowledge(cid, self.now_ms())

    def snooze(self, cid, duration_ms):
        return self.alarms.snooze(cid, self.now_ms(), duration_ms)

    def alarm_test(self):
        return self.alarms.test(self.now_ms())

    def report(self, cid, present):
        """A condition found by the shell (self-test, storage, clock lost at boot)."""
        if cid not in (A.SELF_TEST, A.CLOCK):
            return self._refused("report", R.NOT_ALLOWED, "alarm")
        if cid == A.CLOCK and present:
            self.alarms.event(A.CLOCK, self.now_ms(), "lost")
        else:
            self.alarms.condition(cid, present, self.now_ms())
        return None

    # ---- refill: begin, fill, commit; abandon at any point changes nothing ----

    def refill_begin(self, withdrawn_nl):
        """Step 1: the volume the clinician withdrew, compared with the expected residual.
        Returns None or a Refusal; refill_status() then shows the comparison."""
        bad = self._storage_refusal("refill_begin")
        if bad:
            return bad
        if self._refill is not None:
            return self._refused("refill_begin", R.STEP_ORDER, "refill")
        bad = RX.check_range(withdrawn_nl, 0, self.reservoir.capacity_nl, "withdrawn_nl")
        if bad:
            code = R.OVER_CAPACITY if bad.code == R.ABOVE_MAX else bad.code
            return self._refused("refill_begin", code, bad.field)
        res = self.reservoir
        s = self.settings
        tol = RS.discrepancy_tolerance_nl(res.used_nl(), s.tol_min_nl, s.tol_pct)
        self._refill = _Refill(self.now_ms(), withdrawn_nl, res.remaining_nl(), tol)
        self.log("refill_begin", withdrawn_nl, res.remaining_nl(), tol)
        return None

    def refill_fill(self, fill_nl, conc_ug_per_ml):
        """Step 2: the new fill volume and the strength of the drug filled."""
        if self._refill is None or self._refill.fill_nl >= 0:
            return self._refused("refill_fill", R.STEP_ORDER, "refill")
        bad = RX.check_range(fill_nl, 1, self.reservoir.capacity_nl, "fill_nl")
        if bad:
            code = R.OVER_CAPACITY if bad.code == R.ABOVE_MAX else bad.code
            return self._refused("refill_fill", code, bad.field)
        if not RX.conc_allowed(conc_ug_per_ml):
            return self._refused("refill_fill", R.NOT_ALLOWED, "conc_ug_per_ml")
        if conc_ug_per_ml != self.engine.next_conc():
            # Checked now, before the drug goes in, so that the commit cannot refuse it.
            bad = self.engine.strength_refusal(conc_ug_per_ml, self.settings.dead_volume_nl)
            if bad:
                return self._refused("refill_fill", bad.code, bad.field)
        self._refill.fill_nl = fill_nl
        self._refill.conc = conc_ug_per_ml
        self._refill.pulses_at_fill = self.reservoir.pulses
        self.log("refill_fill", fill_nl, conc_ug_per_ml)
        return None

    def refill_commit(self):
        """Steps 3 and 4: apply the refill as one event. A new strength starts the bridge bolus
        and keeps the prescribed dose; the forecast is recomputed."""
        f = self._refill
        if f is None or f.fill_nl < 0:
            return self._refused("refill_commit", R.STEP_ORDER, "refill")
        eng = self.engine
        old_conc = eng.next_conc()
        bridge = 0
        if f.conc != old_conc:
            bad = eng.change_strength(f.conc, self.settings.dead_volume_nl)
            if bad:
                # Something changed since the fill step (a prime, a fault): the refill stays
                # open, to retry or abandon.
                return self._refused("refill_commit", bad.code, bad.field)
            bridge = eng.bridge_pulses_left()
        now = self.now_ms()
        disc = f.discrepancy()
        self.log("refill", f.withdrawn_nl, f.expected_nl, f.fill_nl, old_conc, f.conc, bridge,
                 1 if disc else 0)  # fmt: skip
        self._refill = None
        # Pulses since the fill step came out of the new fill.
        self.reservoir.refill(f.fill_nl, self.reservoir.pulses - f.pulses_at_fill)
        if disc:
            self.alarms.event(A.DISCREPANCY, now, f.withdrawn_nl, f.expected_nl)
        self.alarms.condition(A.RES_EMPTY, self.reservoir.is_empty(), now)
        self.alarms.condition(A.RES_LOW, self.reservoir.is_low(), now)
        self.alarms.condition(A.REFILL_DUE, False, now)
        self.forecast()
        self._changed()
        return None

    def refill_abandon(self):
        if self._refill is None:
            return self._refused("refill_abandon", R.NOT_ACTIVE, "refill")
        self._abandon("user")
        return None

    def _abandon(self, why):
        f = self._refill
        self._refill = None
        self.log("refill_abandoned", why, f.withdrawn_nl, f.expected_nl, f.fill_nl, f.conc)
        if f.fill_nl >= 0 or f.discrepancy():
            # Delivery and accounting stay as they were, but drug may have been taken out or
            # put in (or a discrepancy was shown): the accounting is in doubt, so say so.
            self.alarms.event(A.DISCREPANCY, self.now_ms(), f.withdrawn_nl, f.expected_nl)

    def refill_status(self):
        """(withdrawn, expected, tolerance, discrepancy, fill, conc) of the open refill, or
        None."""
        f = self._refill
        if f is None:
            return None
        return (f.withdrawn_nl, f.expected_nl, f.tolerance_nl, f.discrepancy(), f.fill_nl, f.conc)

    # ---- staged programme: validate and show first, commit second ----

    def stage(self, rx, confirm=False):
        """Validate rx as program() would, without applying it. The programmer shows it beside
        the running one; commit_staged() applies it. Staging again replaces it."""
        bad = self._storage_refusal("stage")
        if bad:
            return bad
        bad = self.engine.program_refusal(rx, confirm)
        if bad:
            return self._refused("stage", bad.code, bad.field)
        self.staged = rx
        self.log("staged", self.engine.rx, rx)
        return None

    def commit_staged(self, rx, confirm=False):
        """Apply the staged programme; rx must be the one staged (the programmer's echo)."""
        if self.staged is None or self.staged != rx:
            return self._refused("commit", R.NO_STAGED, "staged")
        bad = self.program(rx, confirm)
        if bad is None:
            self.staged = None
        return bad

    # ---- replay counters of the radio protocol ----

    def use_counter(self, name, value):
        """Accept value for counter name only if it is above every value used before. The
        shell saves a checkpoint before acting on the command, so no reboot reopens it."""
        bad = self._storage_refusal("counter")
        if bad:
            return bad
        if not isinstance(name, str) or not 0 < len(name) <= 32:
            return self._refused("counter", R.NOT_ALLOWED, "name")
        if not isinstance(value, int) or value >= _MAX_STORED:
            return self._refused("counter", R.ABOVE_MAX, name)
        if value <= self.counters.get(name, 0):
            return self._refused("counter", R.ALREADY_DONE, name)
        self.counters[name] = value
        self.log("counter", name, value)
        self._changed()
        return None

    # ---- the clock ----

    def wall_ms(self):
        """The wall clock (local time), as the pump knows it."""
        return self.engine.now_ms() + self.wall_off_ms

    def set_clock(self, wall_ms):
        """Set the wall clock. Delivery's own time runs on; the schedule follows the new time
        of day (see Engine.set_time_of_day). Ends the clock alarm's condition."""
        bad = self._storage_refusal("set_clock")
        if bad:
            return bad
        if not isinstance(wall_ms, int) or wall_ms < 0:
            return self._refused("set_clock", R.BELOW_MIN, "wall_ms")
        if wall_ms >= _MAX_STORED:
            return self._refused("set_clock", R.ABOVE_MAX, "wall_ms")
        bad = self.engine.set_time_of_day(wall_ms % L.DAY_MS)
        if bad:
            return bad
        old = self.wall_ms()
        self.wall_off_ms = wall_ms - self.engine.now_ms()
        self.log("wall_clock", old, wall_ms)
        self.alarms.condition(A.CLOCK, False, self.now_ms())
        self.forecast()
        self._changed()
        return None

    # ---- checkpoints (the shell saves snapshot() when checkpoint_due() says so) ----

    def checkpoint_due(self):
        # A comparison, not a difference: absolute ms are long ints on the ESP32 after 12 days,
        # and comparing them allocates nothing.
        if self._held:
            return True
        return self._fired > 0 and self._last >= self._ckpt_due_at

    def waiting_for_checkpoint(self):
        """True while delivery is held until the next checkpoint is saved."""
        return self._held

    def checkpointed(self):
        """The shell has saved snapshot() as of now: the next batch of pulses may go out."""
        self._fired = 0
        self._held = False
        self._ckpt_due_at = self._last + self.settings.checkpoint_ms

    def storage_failed(self, why):
        """Saving failed. Stopping would be worse (withdrawal): therapy goes on without the
        batch bound, and the self-test alarm says that the accounting is no longer kept."""
        if self.storage_ok:
            self.storage_ok = False
            self.log("storage_failed", why)
            self.alarms.condition(A.SELF_TEST, True, self.now_ms())
        self._held = False

    def storage_restored(self):
        """A commit worked again after storage_failed: the batch bound is back."""
        self.storage_ok = True
        self.log("storage_restored")
        self.alarms.condition(A.SELF_TEST, False, self.now_ms())

    def snapshot(self, copy=True):
        """Everything a restart needs to go on from now, as plain values (docs/storage.md).
        copy=False shares the limiter's bucket array instead of copying it: only for a caller
        that encodes the snapshot before anything else runs."""
        f = self._refill
        refill = None
        if f is not None:
            refill = [f.started_ms, f.withdrawn_nl, f.expected_nl, f.tolerance_nl, f.fill_nl,
                      f.conc, f.pulses_at_fill]  # fmt: skip
        eng = self.engine
        return [eng.snapshot(), eng.limiter.snapshot(copy), self.reservoir.snapshot(),
                self.battery.snapshot(), self.alarms.snapshot(),
                [self._fails, 1 if self._stalled else 0, self._backoff, self._retry_at,
                 self._stall_lost, self.undelivered_pulses, self.failed_pulses, self._pulse_day,
                 self._pulse_tod, self._uncertain, self.moved_pulses, self._last],
                refill, list(self.settings.as_tuple()),
                None if self.staged is None else self.staged.key(),
                sorted([k, v] for k, v in self.counters.items()), self.wall_off_ms]  # fmt: skip

    def restore(self, s):
        """Take over the supervisor's own fields from snapshot() (Plant.build restored the parts
        before it built this object)."""
        own, refill, settings, staged, counters, wall_off = s[5:]
        if list(settings) != list(self.settings.as_tuple()):
            raise ValueError("stored settings differ from the settings given")
        (self._fails, stalled, self._backoff, self._retry_at, self._stall_lost,
         self.undelivered_pulses, self.failed_pulses, self._pulse_day, self._pulse_tod,
         self._uncertain, self.moved_pulses, last) = own  # fmt: skip
        self._stalled = bool(stalled)
        self._refill = None
        if refill is not None:
            f = _Refill(refill[0], refill[1], refill[2], refill[3])
            f.fill_nl, f.conc, f.pulses_at_fill = refill[4], refill[5], refill[6]
            self._refill = f
        self.staged = None if staged is None else RX.Prescription(*staged)
        self.counters = {}
        for k, v in counters:
            self.counters[k] = v
        self.wall_off_ms = wall_off
        # The shell's time at the save, which a batch waiting for it may have left ahead of
        # the engine: an outage is counted from there.
        self._last = last if last >= self.engine.now_ms() else self.engine.now_ms()
        self._ckpt_due_at = self._last + self.settings.checkpoint_ms
        self.forecast()

    def resume(self, shell_now_ms, outage_ms, uncertain_pulses):
        """Go on after a restart from a saved state. outage_ms: the time since the save, by a
        trusted clock, or None if there is none. Up to uncertain_pulses pulses after the save
        may have gone out before the power failed (the batch bound): they are counted as
        delivered and never sent again. The rest of the outage is skipped, not made up."""
        eng = self.engine
        start = eng.now_ms()
        saved = self._last
        self._uncertain = uncertain_pulses
        lost = 0
        if outage_ms is not None:
            target = self._last + outage_ms
            if target < start:
                target = start
            # The schedule's events of the outage follow (bolus starts and ends among them):
            # they say what was due, not what was given; the resume record closes them.
            self.log("outage_replay", start, target)
            while eng.next_due_ms() <= target:
                ev = eng.fire()
                if ev == E.EV_PULSE:
                    if self._uncertain:
                        self._uncertain -= 1
                        self._assume_delivered()
                    else:
                        lost += 1
                        self._not_moved()
                elif ev == E.EV_BLOCKED:
                    self.alarms.condition(A.LIMITER_BLOCK, True, eng.now_ms())
            eng.run_until(target)
            assumed = uncertain_pulses - self._uncertain
            # Pulses due a little after the clock says now may still have gone out, if the
            # clock ran slow against the pump's own while it ran after the save (at most one
            # checkpoint interval): they stay uncertain for that drift allowance.
            ran = target - saved
            if ran > self.settings.checkpoint_ms:
                ran = self.settings.checkpoint_ms
            self._uncertain_until = target + DRIFT_MS + ran // DRIFT_PPM_DIV
        else:
            # The outage's length is unknown: go on as if it were none, and hold the rate.
            target = start
            assumed = uncertain_pulses
            # Only pulses due within one checkpoint interval of the save can have gone out.
            ci = self.settings.checkpoint_ms
            self._uncertain_until = saved + ci + DRIFT_MS + ci // DRIFT_PPM_DIV
            eng.clock_lost()
            self.alarms.condition(A.CLOCK, True, start)
        self._offset = target - shell_now_ms
        self._last = target
        self._ckpt_due_at = target + self.settings.checkpoint_ms
        self._fired = 0
        self._held = False
        self.log("resume", target - start, assumed, lost)
        for kind, dose, end in eng.streams():
            self.log("bolus_resumed", kind, dose, end)
        self.forecast()
