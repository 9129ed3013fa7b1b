# Power-cut harness for the pump's storage on real littlefs (littlefs-python via boards/sim/lfs):
# a scripted multi-day scenario recorded op by op, flash images rebuilt for any cut, recovery
# checked against the recorded truth, and a long run with random resets.

import bisect
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for _p in (str(ROOT), str(ROOT / "firmware")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from boards.sim import board, hw, lfs  # noqa: E402
from boards.sim.flash import PowerCut, RamFlash  # noqa: E402
from pump import alarms as A  # noqa: E402
from pump import limits as L  # noqa: E402
from pump import persist as P  # noqa: E402
from pump import rx as RX  # noqa: E402
from pump import supervisor as SV  # noqa: E402
from tools.sim import DEMO, LIMITS, PATIENT_REQUESTS_H  # noqa: E402

HOUR = 3_600_000
MIN = 60_000
DAY = L.DAY_MS
BLOCK = 4096
BATCH = board.CHECKPOINT_BATCH_PULSES
# The RTC's wall time at real time 0 (06:00 local on a day in 2023), so wall = W0 + real.
W0 = 19_675 * DAY + 6 * HOUR
FIRST_BOOT = (LIMITS, 500, 2_000_000)
# Where a cut must leave the pump: state from copy A or B (after the first commit).
STATE_SOURCES = ("a", "b")
# Ten percent more at every step of the flex day: within the limits and the 30 % step rule.
DEMO_PLUS = RX.Prescription(
    DEMO.conc_ug_per_ml,
    [(m, r * 11 // 10) for m, r in DEMO.steps],
    DEMO.periodic,
    patient_dose_ng=DEMO.patient_dose_ng,
    patient_duration_s=DEMO.patient_duration_s,
    patient_lockout_s=DEMO.patient_lockout_s,
    patient_max_per_24h=DEMO.patient_max_per_24h,
)


def settings():
    return SV.Settings(board.PUMP_DEAD_VOLUME_NL, batch_pulses=BATCH)


def plant():
    return P.Plant("sim", board.calibration(), board.RESERVOIR_NL["20ml"], board.CELL,
                   board.ENERGY, board.ADC_CAL, board.ERI_MARGIN_DAYS, settings())  # fmt: skip


def plan(days):
    """[(real_ms, action, arg)] of the scripted scenario up to `days` days. Days 0-6 hold every
    kind of request; later days repeat the patient's requests, the clinician's evening look,
    and a refill on day 20 (the 20 mL reservoir lasts about four weeks)."""
    p = [
        (5 * MIN, "set_clock", None),
        (10 * MIN, "refill", (0, 20_000_000, 500)),
        (15 * MIN, "program", DEMO),
        (1 * DAY + 14 * HOUR, "clinician_bolus", (30_000, 1800)),
        (2 * DAY + 10 * HOUR, "stage_commit", DEMO_PLUS),
        # Withdrawn 2 mL short of the estimate: the discrepancy alarm, acknowledged after.
        (4 * DAY + 11 * HOUR, "refill", (-2_000_000, 20_000_000, 1000)),
        (5 * DAY + 12 * HOUR, "snooze", (A.BATT_ERI, HOUR)),
        (5 * DAY + 18 * HOUR, "ack", A.BATT_ERI),
        (20 * DAY + 11 * HOUR, "refill", (0, 20_000_000, 1000)),
    ]
    for d in range(days):
        for h in PATIENT_REQUESTS_H:
            p.append((d * DAY + h * HOUR - 6 * HOUR, "patient", None))
        p.append((d * DAY + 14 * HOUR, "visit", None))
    return sorted((x for x in p if 0 < x[0] < days * DAY), key=lambda x: x[0])


def battery_mv(real_ms):
    # The cell reads healthy, then below the ERI threshold from day 5 on (OK -> ERI).
    return 3000 if real_ms < 5 * DAY else 2600


def rx_key(sup):
    """Everything that makes up the prescription: programme, limits, strength, mode, staged."""
    eng = sup.engine
    rx = None if eng.rx is None else eng.rx.key()
    staged = None if sup.staged is None else sup.staged.key()
    return (rx, tuple(eng.lim.as_tuple()), eng.next_conc(), eng.mode, staged)


def aligned(rig):
    """True when the pump's wall clock is the RTC's (not so while it runs on a lost clock)."""
    sup = rig.sup
    return rig.rtc_set and rig.shell + sup._offset + sup.wall_off_ms == W0 + rig.real


def recent_ng(sup, shell_ms):
    """The limiter's window at the shell's time (a held engine lags behind it)."""
    t = shell_ms + sup._offset
    return sup.engine.limiter.recent_ng(t // DAY, t % DAY)


class Rig:
    """The imperative shell around one pump on one flash: real time, the shell loop that commits
    before every advance, the simulated hardware and the requests of the scenario.

    Real time goes on across reboots; the shell's own clock restarts at 0 at each boot."""

    def __init__(self, flash, hooks=None, log_shape=None):
        self.flash = flash
        self.plant = plant()
        self.hooks = hooks
        self.log_shape = log_shape  # (seg_bytes, max_segments), or None for the defaults
        self.rtc_set = False  # the RTC holds the wall time once the clinician has set it
        self.boot_real = 0
        self.shell = 0
        self.counter = 0  # the programmer's replay counter, kept outside the pump
        self.physical = 0  # motor pulses over every boot
        self.pulse_log = []  # (real_ms, physical) after every advance that moved the motor
        self.commits = 0
        self.sup = self.store = self.journal = None
        self.mech = hw.Mechanism()
        self.buzzer = hw.RecordingBuzzer(lambda: self.real)

    @property
    def real(self):
        return self.boot_real + self.shell

    def boot(self, real_ms, rtc_wall_ms, cause="power_on"):
        """Mount and recover at real_ms; returns the Boot."""
        self.boot_real = real_ms
        self.shell = 0
        fs = lfs.mount(self.flash)
        # A variant with small log segments reaches rotation within the scenario.
        shape = self.log_shape or (8192, 16)
        boot, self.store, self.journal = P.recover(fs, self.plant, 0, rtc_wall_ms, cause,
                                                   FIRST_BOOT, *shape)  # fmt: skip
        self.sup = boot.sup
        self.mech = hw.Mechanism()
        if self.hooks:
            self.hooks.booted(self)
        return boot

    def commit(self):
        if self.hooks:
            self.hooks.commit_start(self)
        rtc = W0 + self.real if self.rtc_set else None
        if not self.store.commit(self.sup, self.journal, rtc):
            raise AssertionError("a commit failed without a power cut")
        self.commits += 1
        if self.hooks:
            self.hooks.commit_done(self)

    def _advance(self, shell):
        self.shell = shell
        before = self.mech.done
        self.sup.advance(shell, self.mech, self.buzzer)
        if self.mech.done != before:
            self.physical += self.mech.done - before
            self.pulse_log.append((self.real, self.physical))
        if self.sup.battery_due(shell):
            uv = battery_mv(self.real) * 1000 * board.ADC_CAL.den // board.ADC_CAL.num
            self.sup.battery_sample(shell, uv * 16, 16)

    def run_to(self, real_ms):
        sup = self.sup
        # A request retried after an outage is late: time never runs back for the shell.
        end = max(real_ms, self.real) - self.boot_real
        while True:
            if self.journal.pending or sup.checkpoint_due():
                self.commit()
            t = sup.next_wake_ms()
            if t > end:
                break
            self._advance(t)
        self._advance(end)
        if self.journal.pending or sup.checkpoint_due():
            self.commit()

    def request(self, fn, *args):
        out = fn(*args)
        self.commit()
        return out

    def clinician(self, fn, *args):
        # The BLE protocol: the counter is saved before the command acts.
        self.counter += 1
        if self.request(self.sup.use_counter, "clinician", self.counter) is not None:
            return None
        return self.request(fn, *args)

    def act(self, action, arg):
        sup = self.sup
        if action == "set_clock":
            if self.clinician(sup.set_clock, W0 + self.real) is None:
                self.rtc_set = True
        elif action == "program":
            self.clinician(sup.program, arg, True)
        elif action == "patient":
            self.request(sup.patient_bolus)
        elif action == "clinician_bolus":
            self.clinician(sup.clinician_bolus, *arg)
        elif action == "stage_commit":
            self.clinician(sup.stage, arg, True)
            self.clinician(sup.commit_staged, arg, True)
        elif action == "refill":
            short, fill, conc = arg
            if sup.refill_status() is not None:
                self.clinician(sup.refill_abandon)
            withdrawn = max(0, sup.reservoir.remaining_nl() + short)
            self.clinician(sup.refill_begin, withdrawn)
            self.clinician(sup.refill_fill, fill, conc)
            self.clinician(sup.refill_commit)
        elif action == "snooze":
            self.clinician(sup.snooze, *arg)
        elif action == "ack":
            self.clinician(sup.acknowledge, arg)
        elif action == "visit":
            for cid, _n, _p, present, acked, _s in sup.alarms.active():
                if not present and not acked:
                    self.clinician(sup.acknowledge, cid)
        else:
            raise ValueError(action)

    def first_boot(self):
        lfs.format(self.flash)
        boot = self.boot(0, None)
        self.commit()
        return boot

    def run_plan(self, items, until_ms):
        for when, action, arg in items:
            self.run_to(when)
            self.act(action, arg)
        self.run_to(until_ms)


# ---- the recorded run and its truth ----


class Commit:
    __slots__ = ("start_op", "end_op", "real", "key", "counters", "moved", "physical",
                 "recent", "stream_left", "log_seq", "log_head", "rtc", "aligned")  # fmt: skip


def truth_of(rig):
    """The pump as it stands when a commit starts: what any cut inside it must recover."""
    sup = rig.sup
    c = Commit()
    c.key = rx_key(sup)
    c.counters = dict(sup.counters)
    c.moved = sup.moved_pulses
    c.physical = rig.physical
    c.recent = recent_ng(sup, rig.shell)
    c.stream_left = sup.engine.stream_left_ng()
    c.real = rig.real
    c.rtc = rig.rtc_set
    c.aligned = aligned(rig)
    return c


class Recorder:
    """Hooks of the recording run: per commit the truth while it runs (nothing in the pump
    changes during a commit, which is the only flash I/O), per log flush the last record seq
    that is durable once its ops are done, every record's chain hash, and the op stream."""

    def __init__(self, flash):
        self.flash = flash
        self.ops = []  # (kind, block, off, data) of op 1, 2, ...
        self.commits = []
        self.flushes = []  # (ops done when the flush returned, last seq it wrote)
        self.hashes = {}
        self.rotated = []  # seq of every log_rotated record
        flash.on_op = self._op

    def _op(self, kind, block, off, data):
        self.ops.append((kind, block, off, data))

    def booted(self, rig):
        log = rig.store.log
        orig_add = log._add
        orig_flush = log._flush

        def add(out, wall_ms, name, args):
            orig_add(out, wall_ms, name, args)
            self.hashes[log.seq] = log.head
            if name == "log_rotated":
                self.rotated.append(log.seq)

        def flush(out):
            orig_flush(out)
            if out:
                self.flushes.append((self.flash.ops, log.seq))

        log._add = add
        log._flush = flush

    def commit_start(self, rig):
        c = truth_of(rig)
        c.start_op = self.flash.ops
        self.commits.append(c)

    def commit_done(self, rig):
        c = self.commits[-1]
        c.end_op = self.flash.ops
        c.log_seq = rig.store.log.seq
        c.log_head = rig.store.log.head


class Recording:
    """A deterministic scenario run once, with everything a cut at any op needs."""

    def __init__(self, days, blocks, log_shape=None):
        self.days = days
        self.blocks = blocks
        self.log_shape = log_shape
        flash = RamFlash(BLOCK, blocks)
        rec = Recorder(flash)
        rig = Rig(flash, rec, log_shape)
        rig.first_boot()
        rig.run_plan(plan(days), days * DAY)
        self.ops = rec.ops
        self.commits = rec.commits
        self.flushes = rec.flushes
        self.flush_ops = [f[0] for f in rec.flushes]
        self.hashes = rec.hashes
        self.rotated = rec.rotated
        self.pulse_times = [p[0] for p in rig.pulse_log]
        self.pulse_counts = [p[1] for p in rig.pulse_log]
        self.commit_starts = [c.start_op for c in rec.commits]
        self.final_image = flash.image()
        self.erases = list(flash.erases)
        self.erase_total = flash.erase_total
        self.n_ops = flash.ops
        self.overprogs = flash.overprogs
        self.sup = rig.sup
        self.rig = rig

    def commit_at(self, k):
        """Index of the commit whose ops include op k, or None (first boot's format)."""
        i = bisect.bisect_left(self.commit_starts, k) - 1
        if i < 0:
            return None
        c = self.commits[i]
        return i if c.start_op < k <= c.end_op else None

    def durable_seq(self, k):
        """The last log seq whose flush finished before op k."""
        i = bisect.bisect_right(self.flush_ops, k - 1) - 1
        return self.flushes[i][1] if i >= 0 else 0

    def ops_of(self, i):
        """The op indices of commit i."""
        c = self.commits[i]
        return list(range(c.start_op + 1, c.end_op + 1))

    def commit_of_seq(self, seq):
        """The commit that wrote log record seq."""
        for i, c in enumerate(self.commits):
            if c.log_seq >= seq:
                return i
        return None

    def physical_at(self, real_ms):
        i = bisect.bisect_right(self.pulse_times, real_ms) - 1
        return self.pulse_counts[i] if i >= 0 else 0

    def cut_points(self):
        """Every op index inside a commit (the format and first mount come before any)."""
        return [k for k in range(1, self.n_ops + 1) if self.commit_at(k) is not None]


def tear_of(op):
    """Bytes a torn op gets done: half of it."""
    kind, _b, _o, data = op
    return (BLOCK if kind == "e" else len(data)) // 2


def apply_op(buf, op, tear=None):
    """Apply one recorded op to an image, as RamFlash does (a program only clears bits)."""
    kind, block, off, data = op
    start = block * BLOCK + off
    if kind == "e":
        n = BLOCK if tear is None else tear
        buf[start : start + n] = b"\xff" * n
        return
    n = len(data) if tear is None else min(tear, len(data))
    old = buf[start : start + n]
    if old == b"\xff" * n:
        buf[start : start + n] = data[:n]
    else:
        buf[start : start + n] = bytes(a & b for a, b in zip(old, data[:n], strict=True))


class Images:
    """The flash image after any prefix of the recorded ops, built incrementally: in increasing
    k it costs one op per step; going back replays from blank."""

    def __init__(self, recording):
        self.rec = recording
        self.k = 0
        self.buf = bytearray(b"\xff" * (BLOCK * recording.blocks))

    def at(self, k, torn=False):
        """The image after ops 1..k-1 done and op k cut (torn: half done, else not at all)."""
        if k - 1 < self.k:
            self.k = 0
            self.buf[:] = b"\xff" * len(self.buf)
        ops = self.rec.ops
        while self.k < k - 1:
            apply_op(self.buf, ops[self.k])
            self.k += 1
        if not torn:
            return bytes(self.buf)
        out = bytearray(self.buf)
        apply_op(out, ops[k - 1], tear_of(ops[k - 1]))
        return bytes(out)


def rerun_image(recording, k, torn):
    """The image a real re-run of the scenario leaves when power fails at op k."""
    flash = RamFlash(BLOCK, recording.blocks)
    rig = Rig(flash, None, recording.log_shape)
    flash.cut_at = k
    flash.tear = tear_of(recording.ops[k - 1]) if torn else 0
    try:
        rig.first_boot()
        rig.run_plan(plan(recording.days), recording.days * DAY)
    except PowerCut:
        return flash.image()
    raise AssertionError("the re-run reached its end without a cut at op %d" % k)


# ---- checking one recovery ----


class Outcome:
    """What one recovery showed: failures (empty when every invariant held) and the numbers."""

    def __init__(self):
        self.failures = []
        self.over_pulses = 0  # recovered accounting above the truth
        self.source = None

    def check(self, ok, what):
        if not ok:
            self.failures.append(what)


def check_boot(out, boot, rig, truth, done, durable, hashes, valid_rtc, delay):
    """The invariants a-c, e-g right after recover(). truth: the pump as it was at the cut (an
    object with key, counters, moved, physical, recent, stream_left); done: the last commit that
    completed (same fields), or None; durable: the last log seq whose flush had finished;
    hashes: seq -> chain hash of every record the pump wrote."""
    sup = boot.sup
    out.source = boot.source
    if done is None:
        out.check(boot.source in ("new",) + STATE_SOURCES, "g: source %s" % boot.source)
    else:
        out.check(boot.source in STATE_SOURCES, "g: source %s" % boot.source)
    out.check(not boot.problems, "e: problems %r" % (boot.problems,))
    if boot.source not in STATE_SOURCES:
        return
    key = rx_key(sup)
    out.check(key == truth.key or (done is not None and key == done.key),
              "a: prescription is neither the committed nor the one being committed")  # fmt: skip
    for name, v in (done.counters if done else {}).items():
        out.check(sup.counters.get(name, 0) >= v, "f: counter %s went back" % name)
    # Pulses counted, plus those the pump will count without sending (clock unknown).
    accounted = sup.moved_pulses + sup._uncertain
    out.over_pulses = accounted - truth.moved
    out.check(truth.moved <= accounted <= truth.moved + BATCH,
              "b: accounted %d, truth %d" % (accounted, truth.moved))  # fmt: skip
    out.check(accounted >= truth.physical, "b: accounted %d below motor pulses %d"
              % (accounted, truth.physical))  # fmt: skip
    # A pump whose clock was lost runs behind real time; the RTC then moves it on, so its
    # window and boluses are compared only when the pump's clock was the RTC's.
    if valid_rtc and delay == 0 and truth.aligned:
        recent = recent_ng(sup, rig.shell)
        out.check(recent >= truth.recent, "c: window %d below %d" % (recent, truth.recent))
    if valid_rtc and delay == 0 and truth.aligned:
        # (After an outage a periodic bolus may have started since: only at once.)
        out.check(sup.engine.stream_left_ng() <= truth.stream_left,
                  "d: bolus left %d above %d at the cut" % (sup.engine.stream_left_ng(),
                                                            truth.stream_left))  # fmt: skip
    records, _p = rig.store.log.scan()
    seqs = [r[0] for r in records]
    out.check(seqs == list(range(seqs[0], seqs[0] + len(seqs))) if seqs else durable == 0,
              "e: log sequence not contiguous")  # fmt: skip
    out.check((seqs[-1] if seqs else 0) >= durable,
              "e: log ends at %s, %d was written" % (seqs[-1:] or 0, durable))  # fmt: skip
    for seq, h, _v, _n in records:
        if hashes.get(seq) != h:
            out.check(False, "e: record %d differs from the one written" % seq)
            break


def continue_check(out, rig, rec_recording, before_physical, hours):
    """d: run the recovered pump on (no requests) and compare its motor pulses, added to those
    before the cut, with the uncut run at every advance."""
    end = min(rig.real + int(hours * HOUR), rec_recording.days * DAY)
    start_phys = rig.physical
    n0 = len(rig.pulse_log)
    rig.run_to(end)
    for real, phys in rig.pulse_log[n0:]:
        total = before_physical + phys - start_phys
        allowed = rec_recording.physical_at(real)
        if total > allowed:
            out.check(False, "d: %d motor pulses by %d ms, the uncut run had %d"
                      % (total, real, allowed))  # fmt: skip
            return


def cut_once(recording, images, k, torn, delay_ms, valid_rtc, hours):
    """Rebuild the image of a cut at op k, boot it after delay_ms, check everything."""
    i = recording.commit_at(k)
    truth = recording.commits[i]
    done = recording.commits[i - 1] if i > 0 else None
    flash = RamFlash(BLOCK, recording.blocks)
    flash.load(images.at(k, torn))
    rig = Rig(flash, None, recording.log_shape)
    out = Outcome()
    at = truth.real + delay_ms
    # Before the clinician first set it, the RTC holds nothing the pump could take.
    valid_rtc = valid_rtc and truth.rtc
    rig.rtc_set = truth.rtc
    boot = rig.boot(at, W0 + at if valid_rtc else None)
    rig.physical = truth.physical
    check_boot(out, boot, rig, truth, done, recording.durable_seq(k), recording.hashes,
               valid_rtc, delay_ms)  # fmt: skip
    if hours and valid_rtc and not out.failures and boot.source in STATE_SOURCES:
        continue_check(out, rig, recording, truth.physical, hours)
    return out


# Recovery cases per cut: (delay ms, RTC valid).
CASES = ((0, True), (2 * HOUR, True), (0, False))


def sweep(recording, points, tears=(False, True), cases=CASES, hours=2):
    """Cut at every op in points (ascending), each with every tear and recovery case. Returns
    (count, failures [(k, torn, case, [why])], max over-count in pulses)."""
    images = Images(recording)
    n = 0
    failures = []
    worst = 0
    for k in points:
        for torn in tears:
            for delay, valid in cases:
                # The uncut run is the reference for d only while it continues unchanged.
                out = cut_once(recording, images, k, torn, delay, valid,
                               hours if delay == 0 else 0)  # fmt: skip
                n += 1
                worst = max(worst, out.over_pulses)
                if out.failures:
                    failures.append((k, torn, (delay, valid), out.failures))
    return n, failures, worst


# ---- random reset injection ----


class Tracker:
    """Truth across resets in a long run: the last completed commit, the pump at each commit's
    start, durable log records and their hashes."""

    def __init__(self, flash):
        self.flash = flash
        self.hashes = {}  # durable records
        self.written = {}  # every record the pump made, durable or not
        self.durable = 0
        self.done = None
        self.current = None

    def booted(self, rig):
        log = rig.store.log
        orig_add = log._add
        orig_flush = log._flush
        pending = {}

        def add(out, wall_ms, name, args):
            orig_add(out, wall_ms, name, args)
            pending[log.seq] = log.head
            # A record may be on flash before its flush returns (a cut after littlefs's
            # commit, in the rest of the close): what it must be is known from here on.
            self.written[log.seq] = log.head

        def flush(out):
            orig_flush(out)
            if out:
                self.hashes.update(pending)
                pending.clear()
                self.durable = log.seq

        log._add = add
        log._flush = flush
        self._pending = pending

    def commit_start(self, rig):
        self.current = truth_of(rig)

    def commit_done(self, rig):
        self.done = self.current


def random_resets(n_resets, days=30, blocks=128, seed=1):
    """A `days`-day run of the scenario with n_resets power cuts at random op indices, each
    recovered after a random delay (some with the RTC lost, some torn) and continued. Returns
    (resets, failures [(reset no, [why])], max over-count in pulses, rig)."""
    rnd = random.Random(seed)
    flash = RamFlash(BLOCK, blocks)
    tr = Tracker(flash)
    rig = Rig(flash, tr)
    rig.first_boot()
    items = plan(days)
    end = days * DAY
    # About 1500 ops a day with the default shape, less the outages: spread the cuts over the
    # whole run.
    mean_gap = max(2, int(900 * days / (n_resets + 1)))
    failures = []
    worst = 0
    resets = 0
    pos = 0
    while True:
        flash.cut_at = None
        flash.tear = 0
        if resets < n_resets:
            flash.cut_at = flash.ops + 1 + rnd.randrange(2 * mean_gap)
            if rnd.random() < 0.5:
                flash.tear = rnd.choice((1, 16, 64, 2048))
        try:
            while pos < len(items):
                when, action, arg = items[pos]
                rig.run_to(when)
                # Set-up a reset interrupted is done again after it; a bolus is not (the
                # clinician would check first).
                retry = action not in ("patient", "clinician_bolus")
                if not retry:
                    pos += 1
                rig.act(action, arg)
                if retry:
                    pos += 1
            rig.run_to(end)
            flash.cut_at = None
            return resets, failures, worst, rig
        except PowerCut:
            pass
        resets += 1
        truth = tr.current
        live = rig.sup
        truth.moved = live.moved_pulses  # nothing changes during a commit; taken again here
        done = tr.done
        flash.revive()
        flash.tear = 0
        r = rnd.random()
        valid = r >= 0.15 and rig.rtc_set
        delay = 0
        if r >= 0.85:
            delay = rnd.randrange(1, 2 * HOUR)
        elif r >= 0.55:
            delay = rnd.randrange(1, 10 * MIN)
        at = truth.real + delay
        out = Outcome()
        boot = rig.boot(at, W0 + at if valid else None)
        check_boot(out, boot, rig, truth, done, tr.durable, tr.written, valid, delay)
        worst = max(worst, out.over_pulses)
        if out.failures:
            failures.append((resets, out.failures))
        # The pump goes on from here: the records kept are the new truth of the log.
        records, _p = rig.store.log.scan()
        tr.hashes = {r[0]: r[1] for r in records}
        tr.written = dict(tr.hashes)
        tr.durable = records[-1][0] if records else 0
        if boot.source in STATE_SOURCES:
            # What is on flash now is what was recovered: the baseline of the next check.
            base = Commit()
            base.key = rx_key(boot.sup)
            base.counters = dict(boot.sup.counters)
            tr.done = base
        # Requests planned for the outage are lost (nobody could talk to the pump).
        while pos < len(items) and items[pos][0] <= at and items[pos][0] < truth.real:
            pos += 1
        if not valid and rig.rtc_set:
            # The clock alarm brings the clinician, who sets the clock within half an hour.
            bisect.insort(items, (at + 30 * MIN, "set_clock", None), pos, key=lambda x: x[0])
        if at >= end:
            return resets, failures, worst, rig
