# Acceptance scenarios of the whole application on the sim board (firmware/app.py in a virtual
# pump), shared by host_tests/test_app.py (CPython) and host_tests/mpy/test_app_mpy.py.
"""A scenario is the reference programme with a list of timed actions (faults, requests, button
presses). Each faulted run is compared with its twin: the same scenario without the fault. The
checks return a list of failures (phrases), so both runtimes report them the same way. Runs on
CPython and MicroPython alike: no hypothesis, no zip(strict=...), no f-strings."""

import os
from array import array

import app as APP
from boards.sim import board, flash, vpump
from pump import alarms as A
from pump import limits as L
from pump import rx as RX

SEC = 1000
MIN = 60_000
HOUR = 3_600_000
DAY = L.DAY_MS
# The RTC's wall time at loop time 0: 06:00 local on a day in 2023.
W0 = 19_700 * DAY + 6 * HOUR
BATCH = board.CHECKPOINT_BATCH_PULSES
FILL_NL = board.RESERVOIR_NL["20ml"]
CONC = 500
MAX_24H_NG = board.FIRST_BOOT[0].max_24h_ng
BLOCKS = 64  # 256 KB: the pump's files for a few weeks fit many times over
COMMISSIONED_MS = 3 * SEC  # the programme runs from here on
# The demo programme of `make sim`: a flexible day at 500 ug/mL with a periodic bolus at 07:00,
# and a patient bolus of 15 ug over 10 min (lockout 3 h, at most 4 per 24 h).
DEMO = RX.Prescription(
    CONC,
    [(0, 300_000), (5 * 60, 330_000), (7 * 60, 380_000), (9 * 60, 400_000), (11 * 60, 380_000),
     (13 * 60, 360_000), (15 * 60, 360_000), (17 * 60, 340_000), (20 * 60, 320_000),
     (22 * 60, 300_000)],
    [(7 * 60, 20_000, 1800)],
    patient_dose_ng=15_000,
    patient_duration_s=600,
    patient_lockout_s=3 * 3600,
    patient_max_per_24h=4,
)  # fmt: skip
CLINICIAN_BOLUS = (30_000, 1800)  # ng, s: within the commissioning limits
BOLUS_NG = {"clinician_bolus": CLINICIAN_BOLUS[0], "patient": DEMO.patient_dose_ng}
BOLUS_MS = {"clinician_bolus": CLINICIAN_BOLUS[1] * SEC, "patient": DEMO.patient_duration_s * SEC}
# Where scenarios keep their flash: None, in RAM (RamFlash); a directory, in a file there
# (FileFlash), which keeps MicroPython's heap small and unfragmented by 256 KB images.
FLASH_DIR = None
_files = [0]
# Every task of the application: the first three promise deadlines to the watchdog supervisor,
# the button's press must be taken within two of its looks, and main is the supervisor itself.
TASKS = ("dosing", "monitor", "storage", "button", "main")
# How long after its promise broke the watchdog restarts the board: the supervisor looks every
# third of the timeout, then the timeout runs out.
WDT_MS = board.WDT_TIMEOUT_MS
RESTART_MS = WDT_MS + WDT_MS // 3 + APP.GRACE_MS
# How long a hung task can go unnoticed: the dosing task wakes at least every pulse period
# (under 2 min), the monitor at the hourly battery sample, storage at the commit of a batch
# (32 pulses, under 1 h); a press waits for the button task (pressed a minute after its hang)
# over two of the supervisor's looks; the supervisor itself feeds no more at once.
DETECT_MS = {"dosing": 2 * MIN, "monitor": HOUR + 10 * MIN, "storage": HOUR + 10 * MIN,
             "button": MIN + 2 * (WDT_MS // 3), "main": 0}  # fmt: skip
# After a restart, pulses due within this long may stay counted but unsent (the drift
# allowance of docs/storage.md: 5 s plus 200 ppm of at most six hours).
ALLOW_MS = 10 * SEC
# The monitor compares the RTC with the pump's time at each battery sample (hourly).
RTC_CHECK_MS = HOUR + 10 * SEC
# How long each scenario runs (loop ms), in both runtimes.
HUNG_UNTIL = 2 * DAY
STALL_UNTIL = 36 * HOUR
JUMP_UNTIL = 2 * DAY + 12 * HOUR
BOLUS_AT = 2 * HOUR + 999
BOLUS_UNTIL = BOLUS_AT + 3 * HOUR


class Counter:
    """Stands in for VirtualPump.delivered in long runs: counts and keeps no list."""

    def __init__(self):
        self.n = 0
        self.last = -1

    def append(self, t):
        self.n += 1
        self.last = t

    def __len__(self):
        return self.n


class SilentBuzzer:
    """Stands in for the recording buzzer in long runs: counts changes, keeps none."""

    def __init__(self):
        self.changes = 0
        self.on = False

    def set(self, on):
        on = bool(on)
        if on != self.on:
            self.on = on
            self.changes += 1


class CompactBuzzer:
    """Records every change, as RecordingBuzzer does, as times in arrays of ints of a fixed
    size (hours of alarm tones in one growing block would not fit MicroPython's heap).
    Changes alternate on, off, on, ... from silence."""

    CHUNK = 1024  # an even number: a tone's start and end stay in one chunk

    def __init__(self, loop):
        self.loop = loop
        self.chunks = [array("q")]
        self.on = False
        self.changes = 0

    def set(self, on):
        on = bool(on)
        if on != self.on:
            self.on = on
            c = self.chunks[-1]
            if len(c) >= self.CHUNK:
                c = array("q")
                self.chunks.append(c)
            c.append(self.loop.now)
            self.changes += 1

    def tones(self):
        """(start ms, length ms) of every finished tone, in order."""
        for c in self.chunks:
            for i in range(0, len(c) - 1, 2):
                yield c[i], c[i + 1] - c[i]


class Scenario:
    """One virtual pump, commissioned at loop time 0 (RTC set, 20 mL filled at 500 ug/mL, the
    demo programme running from COMMISSIONED_MS on, commissioning alarms acknowledged), then
    driven by timed actions (loop ms, kind, argument):

      hang name        the task's waits never end (the watchdog must restart the board)
      jam / free       the mechanism fails every pulse / works again
      press            the pump's button (acknowledges every latched alarm)
      rtc_jump ms      the RTC leaps by ms (negative: back)
      cut down_ms      power is lost now, between flash operations, for down_ms
      cut_at_op (k, tear)  power is lost at flash operation k (RamFlash.cut_at, .tear)
      set_clock        the clinician sets the true wall time
      patient          a patient bolus request
      clinician_bolus  a clinician bolus of CLINICIAN_BOLUS
      probe name       records what the pump shows now in probes[name]

    down_ms: the outage after a cut at a flash operation (a hung task restarts at once).
    The restarts are VirtualPump's (run_until, power_cut)."""

    def __init__(self, seed=1, flash_dev=None, down_ms=0, long_run=False, tones=False,
                 keys=None, ble_api=None):  # fmt: skip
        self._own_file = flash_dev is None and FLASH_DIR is not None
        if self._own_file:
            _files[0] += 1
            path = "%s/itb-scenario-%d-%d.flash" % (FLASH_DIR, _files[0],
                                                    int.from_bytes(os.urandom(4), "little"))
            flash_dev = flash.FileFlash(path, block_size=4096, block_count=BLOCKS)
        elif flash_dev is None:
            flash_dev = flash.RamFlash(block_size=4096, block_count=BLOCKS)
        vp = vpump.VirtualPump(seed=seed, flash_dev=flash_dev, keys=keys, ble_api=ble_api)
        if long_run:
            vp.delivered = Counter()
        # Only a scenario that looks at the tones records them (in a small heap's terms).
        vp.buzzer = CompactBuzzer(vp.loop) if tones else SilentBuzzer()
        vp.rtc.set_ms(W0)
        self.vp = vp
        self.down_ms = down_ms
        self.refused = []  # (loop ms, request, refusal) of every refused request
        self.applied = []  # (loop ms, kind, arg) of every action taken
        self.probes = {}
        vp.boot()
        self.commission()

    # ---- driving ----

    def commission(self):
        self.run_to(1 * SEC)
        self.request("refill_begin", 0)
        self.request("refill_fill", FILL_NL, CONC)
        self.request("refill_commit")
        self.run_to(2 * SEC)
        # A new pump's empty-reservoir alarms are latched; the refill cleared them: seen.
        self.acknowledge_all()
        self.request("program", DEMO, True)
        self.run_to(COMMISSIONED_MS)
        if self.refused:
            raise AssertionError("commissioning refused: %r" % (self.refused,))

    def request(self, name, *args):
        bad = self.vp.submit(name, *args)
        if bad is not None:
            self.refused.append((self.vp.loop.now, name, bad))
        return bad

    def acknowledge_all(self):
        for cid, _n, _p, _present, acked, _s in self.vp.sup.alarms.active():
            if not acked:
                self.request("acknowledge", cid)

    def run_to(self, t_ms):
        """Run the loop to t_ms through every restart on the way."""
        self.vp.cut_down_ms = self.down_ms
        self.vp.run_until(t_ms)

    def play(self, actions, until_ms):
        """Take the actions in time order (those at the same time in the order given), then
        run to until_ms."""
        order = sorted(range(len(actions)), key=lambda i: (actions[i][0], i))
        for i in order:
            when, kind, arg = actions[i]
            self.run_to(when)
            self.act(kind, arg)
        self.run_to(until_ms)
        return self

    def act(self, kind, arg=None):
        vp = self.vp
        self.applied.append((vp.loop.now, kind, arg))
        if kind == "hang":
            if not vp.loop.hang(arg):
                raise ValueError("no task named %r" % (arg,))
        elif kind == "jam":
            vp.mech.jam()
        elif kind == "free":
            vp.mech.free()
        elif kind == "press":
            vp.button.press()
        elif kind == "rtc_jump":
            vp.rtc.jump(arg)
        elif kind == "cut":
            vp.power_cut(arg)
        elif kind == "cut_at_op":
            vp.flash.cut_at = arg[0]
            vp.flash.tear = arg[1]
        elif kind == "set_clock":
            self.request("set_clock", W0 + vp.loop.now)
        elif kind == "patient":
            self.request("patient_bolus")
        elif kind == "clinician_bolus":
            self.request("clinician_bolus", CLINICIAN_BOLUS[0], CLINICIAN_BOLUS[1])
        elif kind == "probe":
            self.probes[arg] = (vp.loop.now, vp.sup.alarms.active())
        else:
            raise ValueError("unknown action %r" % (kind,))

    def finish(self):
        """The run is over: its outcome as plain values, and the pump switched off (its
        tasks marked done, so nothing of it runs again, not even a finaliser)."""
        out = Outcome(self)
        self.vp.stop()
        if self._own_file:
            self.vp.flash.close(remove=True)
        return out


# The log records the checks read (by name, and every alarm record).
LOGGED = ("reset", "resume", "rtc_jump", "stall", "stall_end", "bolus_start", "wall_clock",
          "pulses_skipped_late")  # fmt: skip


def _wanted(value):
    name = value[2]
    return name in LOGGED or name.startswith("alarm_")


class Outcome:
    """What a finished scenario leaves: the rig's record and the pump's log on flash."""

    def __init__(self, scen):
        vp = scen.vp
        self.delivered = vp.delivered
        self.resets = list(vp.resets)
        # (reset ms, cause, the task the watchdog supervisor found late) of every restart
        self.restarts = [(b[0], b[2], b[5]) for b in vp.boot_log[1:]]
        self.refused = list(scen.refused)
        self.probes = dict(scen.probes)
        self.buzzer = vp.buzzer
        self.alarms = vp.sup.alarms.active()
        self.presses = vp.button.presses
        self.end_ms = vp.loop.now
        # Only the records the checks read: a whole log is large for MicroPython's heap.
        records, problems = vp.app.store.log.scan(_wanted)
        self.log_problems = problems
        self.log = [(r[0], r[2][1], r[2][2], r[2][3]) for r in records if _wanted(r[2])]

    def events(self, name):
        """[(wall ms, args)] of the log records named `name`."""
        return [(wall, args) for _s, wall, n, args in self.log if n == name]

    def alarm_events(self, cid):
        """[(loop ms, record name, args)] of the alarm records of condition cid (loop ms from
        the wall time, which is the RTC's as long as the pump's clock agrees with it)."""
        nm = A.name(cid)
        out = []
        for _s, wall, n, args in self.log:
            if n.startswith("alarm_") and args and args[0] == nm:
                out.append((wall - W0, n, args))
        return out


def log_args(vp, name):
    """The args of every record named `name` in vp's flash log, oldest first."""
    records, _ = vp.app.store.log.scan()
    return [r[2][3] for r in records if r[2][2] == name]


# ---- checks (each returns a list of failures) ----


def window_max(times, span=DAY):
    """The most entries of the sorted list `times` in any half-open window of length span."""
    best = 0
    j = 0
    for i in range(len(times)):
        while times[i] - times[j] >= span:
            j += 1
        if i - j + 1 > best:
            best = i - j + 1
    return best


def between(times, lo, hi):
    """Entries t of the sorted list with lo <= t < hi."""
    return [t for t in times if lo <= t < hi]


def dose_ng(pulses):
    """The exact dose of `pulses` pulses at the scenario's strength, rounded up."""
    c = board.calibration()
    return -(-pulses * c.ml_num * CONC * 1000 // c.ml_den)


def bolus_pulses(kind):
    """Whole pulses a bolus can add at most: its dose rounded up to a pulse."""
    c = board.calibration()
    return -(-BOLUS_NG[kind] * c.ml_den // (c.ml_num * CONC * 1000))


def high_patterns(buzzer, since, until, period=A.REPEAT_MS[A.HIGH]):
    """The high-priority patterns (tones of the high pattern's length, less than a second
    apart) whose first tone starts in [since, until), from a CompactBuzzer, summed up as
    they go by (a list of hours of them is large for MicroPython's heap): (count, start of the
    first or None, the first gap between two starts other than `period` or None, how many
    patterns but the last have a tone count other than the pattern's)."""
    on = A.PATTERNS[A.HIGH][0]
    tones = (len(A.PATTERNS[A.HIGH]) + 1) // 2
    count = 0
    first = bad_gap = None
    short = 0
    start = last = None
    n = 0
    for t, length in buzzer.tones():
        if t < since or t >= until or length != on:
            continue
        if last is not None and t - last < SEC:
            n += 1
        else:
            if start is None:
                first = t
            else:
                if n != tones:
                    short += 1
                if bad_gap is None and t - start != period:
                    bad_gap = t - start
            count += 1
            start = t
            n = 1
        last = t
    return count, first, bad_gap, short


def check_limits(fail, out, twin, extra):
    """No 24 h window holds more than the twin's fullest one plus `extra` pulses, nor more
    than the 24 h dose limit; the whole run no more than the twin plus `extra`."""
    d = out.delivered
    w = twin.delivered
    most, twin_most = window_max(d), window_max(w)
    if most > twin_most + extra:
        fail.append("24 h windows: %d pulses at most, the twin %d (+%d allowed)"
                    % (most, twin_most, extra))  # fmt: skip
    if dose_ng(most) > MAX_24H_NG:
        fail.append("24 h dose %d ng above the limit %d" % (dose_ng(most), MAX_24H_NG))
    if len(d) > len(w) + extra:
        fail.append("%d pulses in all, the twin %d (+%d allowed)" % (len(d), len(w), extra))


def check_same(fail, what, got, want):
    if got != want:
        i = 0
        while i < len(got) and i < len(want) and got[i] == want[i]:
            i += 1
        fail.append("%s: %d pulses, the twin %d; first difference at index %d (%r vs %r)"
                    % (what, len(got), len(want), i, got[i : i + 1], want[i : i + 1]))  # fmt: skip


def check_log(fail, out):
    if out.log_problems:
        fail.append("event log problems: %r" % (out.log_problems,))


def check_restart(fail, out, cause, logged_cause):
    """One restart for `cause`, and its boot logged with `logged_cause` and the state taken
    from a saved copy (A or B)."""
    if len(out.resets) != 1 or out.resets[0][1] != cause:
        fail.append("restarts %r, expected one %s" % (out.resets, cause))
        return
    boots = out.events("reset")
    if len(boots) < 2:
        fail.append("no reset record after the restart: %r" % (boots,))
        return
    args = boots[-1][1]
    if args[0] != logged_cause or args[1] not in ("a", "b"):
        fail.append("restart logged as %r, expected cause %s from state a or b"
                    % (args, logged_cause))  # fmt: skip


# ---- the scenarios ----


def hung_task(task, at_ms, until_ms, twin):
    """A task hangs at at_ms. The watchdog restarts the board, therapy resumes from flash:
    the pulses due while hung and rebooting are skipped, never made up or repeated."""
    actions = [(at_ms, "hang", task)]
    if task == "button":
        actions.append((at_ms + MIN, "press", None))  # a stuck button task shows when needed
    out = Scenario().play(actions, until_ms).finish()
    fail = []
    check_log(fail, out)
    check_restart(fail, out, "watchdog", "watchdog")
    if fail:
        return fail, out
    r = out.resets[0][0]
    # The supervisor stopped feeding because that task's promise broke first (a hung main task
    # is the supervisor: nobody names it, the watchdog just starves).
    want = None if task == "main" else task
    if out.restarts[0][2] != want:
        fail.append("the watchdog supervisor found %r late, not %s" % (out.restarts[0][2], want))
    if not at_ms < r <= at_ms + DETECT_MS[task] + RESTART_MS:
        fail.append("restart %d ms after the hang" % (r - at_ms))
    d, w = out.delivered, twin.delivered
    check_same(fail, "before the hang", between(d, 0, at_ms), between(w, 0, at_ms))
    check_same(fail, "after the restart", between(d, r + ALLOW_MS, until_ms),
               between(w, r + ALLOW_MS, until_ms))  # fmt: skip
    given = set(w)
    extra = [t for t in d if t not in given]
    if extra:
        fail.append("pulses the twin never gave: %r" % (extra[:5],))
    check_limits(fail, out, twin, 0)
    return fail, out


def stall(jam_ms, jam_for_ms, press_during, until_ms, twin):
    """The mechanism jams for jam_for_ms. The stall alarm latches and plays the high-priority
    pattern; it ends only once the jam is gone and the button has acknowledged it."""
    free_ms = jam_ms + jam_for_ms
    acts = [(jam_ms, "jam", None), (free_ms - MIN, "probe", "jammed"), (free_ms, "free", None)]
    # After the jam, the stall ends at the next retry: the back-off doubles while jammed, up to
    # an hour, so within the jam's length (or an hour) and a minute.
    retry_ms = jam_for_ms if jam_for_ms < HOUR else HOUR
    press_ms = jam_ms + jam_for_ms // 2 if press_during else free_ms + retry_ms + 5 * MIN
    acts.append((press_ms, "press", None))
    acts.append((press_ms + SEC, "probe", "pressed"))
    out = Scenario(tones=True).play(acts, until_ms).finish()
    fail = []
    check_log(fail, out)
    ev = out.alarm_events(A.STALL)
    names = [e[1] for e in ev]
    stalls, ends = out.events("stall"), out.events("stall_end")
    if len(stalls) != 1 or len(ends) != 1:
        return fail + ["stall / stall_end logged %d / %d times" % (len(stalls), len(ends))], out
    raised = stalls[0][0] - W0
    cleared = ends[0][0] - W0
    if press_during:
        want_names = ["alarm_raise", "alarm_ack", "alarm_end"]
    else:
        want_names = ["alarm_raise", "alarm_condition_cleared", "alarm_ack", "alarm_end"]
    if names != want_names:
        fail.append("stall alarm records %r, expected %r" % (ev, want_names))
    if not jam_ms < raised < jam_ms + 5 * MIN:
        fail.append("stall raised %d ms after the jam" % (raised - jam_ms))
    t_jammed, latched = out.probes["jammed"]
    if [(a[1], a[2], a[3]) for a in latched if a[0] == A.STALL] != [("motor_stall", A.HIGH, True)]:
        fail.append("near the jam's end the alarms were %r" % (latched,))
    # The high-priority pattern: five tones, from the raise (within a second) every 10 s until
    # the alarm ends (which may cut the last one short).
    end = cleared if press_during else press_ms
    count, first, bad_gap, short = high_patterns(out.buzzer, raised, end)
    if first is None or first - raised > SEC:
        fail.append("first high pattern at %r, the stall raised at %d" % (first, raised))
    want = (end - raised) // A.REPEAT_MS[A.HIGH]
    if not want <= count <= want + 1 or short or bad_gap is not None:
        fail.append("%d high patterns between raise and end, %d expected; %d incomplete, "
                    "a gap of %r ms" % (count, want, short, bad_gap))  # fmt: skip
    after = high_patterns(out.buzzer, end + SEC, until_ms)[0]
    if after or out.alarms:
        fail.append("%d high patterns after the end, alarms %r" % (after, out.alarms))
    # A press during the jam acknowledges the alarm, which sounds on until the jam is gone.
    pressed = [(a[0], a[3], a[4]) for a in out.probes["pressed"][1]]
    if pressed != ([(A.STALL, True, True)] if press_during else []):
        fail.append("alarms just after the press: %r" % (out.probes["pressed"][1],))
    # Delivery: the same before the jam and after the stall ended, the pulses in between lost
    # and counted in the stall_end record.
    d, w = out.delivered, twin.delivered
    check_same(fail, "before the jam", between(d, 0, jam_ms), between(w, 0, jam_ms))
    check_same(fail, "after the stall", between(d, cleared + 1, until_ms),
               between(w, cleared + 1, until_ms))  # fmt: skip
    if not free_ms <= cleared <= free_ms + retry_ms + MIN:
        fail.append("stall ended %d ms after the jam" % (cleared - free_ms))
    lost = len(w) - len(d)
    if ends[0][1][0] != lost:
        fail.append("stall_end counts %d pulses lost, the twin gave %d more"
                    % (ends[0][1][0], lost))  # fmt: skip
    check_limits(fail, out, twin, 0)
    return fail, out


def clock_jump(jump_ms, at_ms, reboot, reboot_after_ms, set_after_ms, until_ms, twin):
    """The RTC leaps by jump_ms at at_ms; reboot None, ("cut", down ms) or ("hang", task) at
    reboot_after_ms later; the clinician sets the clock set_after_ms after the jump (None:
    never). No 24 h window holds more than the twin's fullest (plus one batch after a reboot);
    the jump is logged and alarmed once the pump has looked at the RTC."""
    acts = [(at_ms, "rtc_jump", jump_ms)]
    if reboot is not None:
        acts.append((at_ms + reboot_after_ms, reboot[0], reboot[1]))
    if set_after_ms is not None:
        acts.append((at_ms + set_after_ms, "set_clock", None))
    out = Scenario().play(acts, until_ms).finish()
    fail = []
    check_log(fail, out)
    check_limits(fail, out, twin, 0 if reboot is None else BATCH)
    if out.refused:
        fail.append("requests refused: %r" % (out.refused,))
    # The pump looks at the RTC hourly: a jump undone or followed by a restart before that
    # may pass unseen (a restart then measures its outage on the jumped RTC, docs/storage.md).
    seen = (reboot is None or reboot_after_ms > RTC_CHECK_MS) and (
        set_after_ms is None or set_after_ms > RTC_CHECK_MS)
    jumps = out.events("rtc_jump")
    clock = [e for e in out.alarm_events(A.CLOCK) if e[1] in ("alarm_raise", "alarm_recur")]
    if seen:
        if not jumps or jumps[0][1] != [jump_ms]:
            fail.append("rtc_jump records %r, expected the jump %d" % (jumps, jump_ms))
        if not [e for e in clock if e[2][2:] == ["rtc_jump", jump_ms]]:
            fail.append("no clock alarm for the jump: %r" % (clock,))
    if reboot is None:
        check_same(fail, "delivery", list(out.delivered), list(twin.delivered))
        if out.resets:
            fail.append("restarts %r" % (out.resets,))
    elif not out.resets:
        fail.append("no restart")
    return fail, out


def bolus_ops(kind):
    """(first, last): the flash operations from the request of a bolus at BOLUS_AT to a minute
    after its end, in the unfaulted run."""
    scen = Scenario().play([], BOLUS_AT)
    first = scen.vp.flash.ops + 1
    scen.act(kind)
    scen.run_to(BOLUS_AT + BOLUS_MS[kind] + MIN)
    last = scen.vp.flash.ops
    scen.finish()
    return first, last


def bolus_cut(kind, at_ms, op, tear, down_ms, until_ms, twin, plain):
    """A bolus (kind: clinician_bolus or patient) is asked for at at_ms, and the power fails at
    flash operation op (torn after `tear` bytes; the request's own commit among the candidates)
    and comes back down_ms later. The patient asks again a minute after the pump is back. The
    bolus is never given twice: no more pulses than the twin plus one batch, nor than the
    bolus-free twin plus one bolus. Without a second request, delivery after the restart is
    the twin's (the bolus goes on with its remaining part, on its own timetable) or, if the
    request was never saved, the bolus-free twin's."""
    # The cut is armed before the request: its commit is among the operations that may fail.
    scen = Scenario(down_ms=down_ms).play([(at_ms, "cut_at_op", (op, tear)), (at_ms, kind, None)],
                                          at_ms)  # fmt: skip
    again = kind == "patient"
    while scen.vp.loop.now < until_ms:
        if again and scen.vp.resets:
            back = scen.vp.resets[0][0] + down_ms + MIN
            if back < until_ms:
                scen.run_to(back)
                scen.act(kind)
            again = False
        scen.run_to(min(until_ms, scen.vp.loop.now + 10 * MIN))
    out = scen.finish()
    fail = []
    check_log(fail, out)
    if len(out.resets) != 1:
        return fail + ["restarts %r, expected one power cut" % (out.resets,)], out
    d = out.delivered
    if len(d) > len(twin.delivered) + BATCH:
        fail.append("%d pulses, the twin %d (+%d allowed)" % (len(d), len(twin.delivered), BATCH))
    one = bolus_pulses(kind)
    if len(d) > len(plain.delivered) + one:
        fail.append("%d pulses, the bolus-free twin %d plus one bolus of %d"
                    % (len(d), len(plain.delivered), one))  # fmt: skip
    if window_max(d) > window_max(twin.delivered) + BATCH:
        fail.append("24 h window of %d pulses, the twin %d" % (window_max(d),
                                                               window_max(twin.delivered)))
    if kind != "patient":
        back = out.resets[0][0] + down_ms + ALLOW_MS
        after = between(d, back, until_ms)
        if after != between(twin.delivered, back, until_ms) and after != between(
                plain.delivered, back, until_ms):  # fmt: skip
            fail.append("after the restart, delivery follows neither the twin nor the "
                        "bolus-free twin (%d pulses, %d, %d)"
                        % (len(after), len(between(twin.delivered, back, until_ms)),
                           len(between(plain.delivered, back, until_ms))))  # fmt: skip
    return fail, out
