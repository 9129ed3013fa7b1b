# The alarm rules under MicroPython: a fixed multi-alarm sequence (raise, tick, acknowledge,
# snooze, alarm test, cuts) with every buzzer timing, gaps included, checked exactly.
# req: SR-22, SR-23, SR-24, SR-34

from boards.sim import hw
from pump import alarms as A
from pump import reasons as R

HIGH = A.HIGH
MEDIUM = A.MEDIUM
LOW = A.LOW
NEVER = A.NEVER
GAP = A.GAP_MS
H = A.pattern_ms(HIGH)
M = A.pattern_ms(MEDIUM)


def check(ok, what):
    if not ok:
        raise AssertionError(what)


class Shell:
    """Ticks at every action and at exactly every returned wake, which must not be in the past.
    Before each tick, next_wake_ms() must not be earlier than the last tick (a shell may sleep
    on it after an action); breaches of that are counted and checked last, so the other rules
    are seen first."""

    def __init__(self):
        self.now = 0
        self.al = A.Alarms()
        self.buz = hw.RecordingBuzzer(self.clock)
        self.wake = NEVER
        self.last_tick = 0
        self.early_wakes = []

    def clock(self):
        return self.now

    def tick(self):
        w = self.al.next_wake_ms()
        if w < self.last_tick:
            self.early_wakes.append((self.now, w))
        self.last_tick = self.now
        w = self.al.tick(self.now, self.buz)
        check(w >= self.now, "tick(%d) asks to be called again at %d" % (self.now, w))
        self.wake = w

    def run_to(self, t):
        n = 0
        while self.wake <= t:
            n = n + 1 if self.wake == self.now else 0
            check(n < 3, "tick at %d spins" % self.now)
            self.now = self.wake
            self.tick()
        self.now = t

    def at(self, t):
        self.run_to(t)
        return t


def patterns_played(changes, since, until):
    """[(priority, start)] of whole patterns whose first tone starts in [since, until), decoded
    by tone length and checked tone by tone, silence by silence and gap by gap."""
    tones = hw.tones(changes, since, until)
    by_on = {}
    for p in (HIGH, MEDIUM, LOW):
        by_on[A.PATTERNS[p][0]] = p
    out = []
    i = 0
    last_end = None
    while i < len(tones):
        s, length = tones[i]
        check(length in by_on, "tone of %d ms at %d fits no pattern" % (length, s))
        check(last_end is None or s >= last_end + GAP, "no gap before %d" % s)
        p = by_on[length]
        pat = A.PATTERNS[p]
        t = s
        k = 0
        while k < len(pat):
            check(i < len(tones) and tones[i] == (t, pat[k]), "pattern %d at %d broken" % (p, s))
            i += 1
            t += pat[k]
            if k + 1 < len(pat):
                t += pat[k + 1]
            k += 2
        last_end = t
        out.append((p, s))
    return out


def ids(al):
    return [r[0] for r in al.active()]


sh = Shell()
al = sh.al
buz = sh.buz

# Three priorities at once: highest first, each whole, a gap after each, none lost.
t = sh.at(0)
al.condition(A.REFILL_DUE, True, t)
al.condition(A.RES_LOW, True, t)
al.condition(A.STALL, True, t)
sh.tick()
check(ids(al) == [A.STALL, A.RES_LOW, A.REFILL_DUE], "active order %r" % ids(al))
sh.run_to(2_000)
got = patterns_played(buz.changes, 0, 2_000)
check(got == [(HIGH, 0), (MEDIUM, H + GAP), (LOW, H + GAP + M + GAP)], "simultaneous %r" % got)
# The first pattern, change by change.
exp = []
t = 0
i = 0
for d in A.PATTERNS[HIGH]:
    exp.append((t, i % 2 == 0))
    t += d
    i += 1
exp.append((t, False))
check(buz.changes[: len(exp)] == exp, "high pattern changes %r" % buz.changes[: len(exp)])

# Acknowledge before clear: still latched and still sounding until the condition clears.
t = sh.at(2_000)
check(al.acknowledge(A.STALL, t) is None, "ack stall")
sh.tick()
check(A.STALL in ids(al), "acked stall ended while present")
check(al.acknowledge(A.STALL, t) == R.Refusal(R.ALREADY_DONE, "alarm"), "double ack")
sh.run_to(10_500)
check(patterns_played(buz.changes, 2_000, 10_500) == [(HIGH, 10_000)], "acked high repeats")
t = sh.at(11_000)
al.condition(A.STALL, False, t)
sh.tick()
check(ids(al) == [A.RES_LOW, A.REFILL_DUE], "stall did not end at clear")

# Clear before acknowledge: RES_LOW stays latched; snooze it, out-of-range snoozes refused.
t = sh.at(12_000)
al.condition(A.RES_LOW, False, t)
sh.tick()
check(ids(al) == [A.RES_LOW, A.REFILL_DUE], "res_low ended without ack")
before = (al.active(), al.next_wake_ms())
check(al.snooze(A.RES_LOW, t, 0) == R.Refusal(R.BELOW_MIN, "duration_ms"), "snooze 0")
over = A.SNOOZE_MAX_MS[MEDIUM] + 1
check(al.snooze(A.RES_LOW, t, over) == R.Refusal(R.ABOVE_MAX, "duration_ms"), "snooze > max")
check(al.snooze(A.STALL, t, 1_000) == R.Refusal(R.NOT_ACTIVE, "alarm"), "snooze ended alarm")
check((al.active(), al.next_wake_ms()) == before, "a refused request changed the alarms")
check(al.snooze(A.RES_LOW, t, 48_000) is None, "snooze res_low")
sh.tick()
sh.run_to(70_000)
got = patterns_played(buz.changes, 12_000, 70_000)
# Silent through the snooze (its regular repeat at 60.43 s included); heard exactly at expiry.
check(got == [(MEDIUM, 60_000)], "snooze expiry %r" % got)
check(A.RES_LOW in ids(al), "snooze expiry ended the alarm")
t = sh.at(70_000)
check(al.acknowledge(A.RES_LOW, t) is None, "ack res_low")
sh.tick()
check(ids(al) == [A.REFILL_DUE], "res_low did not end at ack")

# A moment-like event needs only acknowledging; a recurrence needs a new acknowledge.
t = sh.at(71_000)
al.event(A.DISCREPANCY, t, 5, 6)
sh.tick()
check(al.active()[0][:5] == (A.DISCREPANCY, "accounting_discrepancy", MEDIUM, False, False),
      "event %r" % (al.active()[0],))  # fmt: skip
t = sh.at(72_000)
al.event(A.DISCREPANCY, t)
sh.tick()
sh.run_to(73_000)
check(patterns_played(buz.changes, 71_000, 73_000) == [(MEDIUM, 71_000), (MEDIUM, 72_000)],
      "event and its recurrence each sound at once")  # fmt: skip
check(al.acknowledge(A.DISCREPANCY, sh.at(73_000)) is None, "ack discrepancy")
sh.tick()
al.condition(A.REFILL_DUE, False, sh.at(74_000))
check(al.acknowledge(A.REFILL_DUE, 74_000) is None, "ack refill_due")
sh.tick()
check(al.active() == [], "alarms left %r" % al.active())
sh.run_to(700_000)
check(patterns_played(buz.changes, 74_000, 700_000) == [], "sound after every alarm ended")

# Alarm test: each pattern once, high to low with gaps; a second request meanwhile is refused.
check(al.test(sh.at(800_000)) is None, "test")
sh.tick()
check(al.test(sh.at(800_100)) == R.Refusal(R.ALREADY_DONE, "alarm_test"), "test while queued")
sh.tick()
check(al.test(sh.at(800_000 + H + GAP + M + GAP + 10)) == R.Refusal(R.ALREADY_DONE, "alarm_test"),
      "test while its last pattern plays")  # fmt: skip
sh.tick()
sh.run_to(100_000_000)
got = patterns_played(buz.changes, 800_000, 100_000_000)
check(got == [(HIGH, 800_000), (MEDIUM, 800_000 + H + GAP), (LOW, 800_000 + H + GAP + M + GAP)],
      "test %r" % got)  # fmt: skip
check(al.active() == [] and sh.wake == NEVER, "alarm test left something behind")
check(al.test(sh.at(100_000_000)) is None, "test after the last one ended")
sh.tick()
sh.run_to(100_010_000)

# A higher alarm cuts a lower pattern at once and starts one gap later; the cut low pattern is
# not replayed (its alarm has sounded), its repeat counts from its start.
t0 = 200_000_000
al.condition(A.REFILL_DUE, True, sh.at(t0))
sh.tick()
al.condition(A.STALL, True, sh.at(t0 + 100))
sh.tick()
sh.run_to(t0 + 2_000)
n = len([c for c in buz.changes if c[0] < t0])
check(buz.changes[n : n + 3] == [(t0, True), (t0 + 100, False), (t0 + 100 + GAP, True)],
      "cut %r" % buz.changes[n : n + 3])  # fmt: skip
got = patterns_played(buz.changes, t0 + 100, t0 + 2_000)
check(got == [(HIGH, t0 + 100 + GAP)], "after cut %r" % got)
sh.run_to(t0 + 600_000 + 2_000)
got = [g for g in patterns_played(buz.changes, t0 + 2_000, t0 + 602_000) if g[0] == LOW]
check(got == [(LOW, t0 + 600_000)], "low repeat %r" % got)
check(al.max_latency_ms == H + GAP + M + GAP, "max_latency_ms %d" % al.max_latency_ms)

# Last, the rules whose breach would hide the ones above. A snooze ending while another
# pattern plays: the medium is pending again and sounds right after that pattern and its gap.
sh2 = Shell()
al2 = sh2.al
al2.condition(A.STALL, True, sh2.at(0))
al2.condition(A.RES_LOW, True, 0)
sh2.tick()
check(al2.snooze(A.RES_LOW, sh2.at(1_000), 9_100) is None, "snooze")  # ends inside 10..10.35 s
sh2.tick()
sh2.run_to(12_000)
bad = []
got = patterns_played(sh2.buz.changes, 10_000, 12_000)
if got != [(HIGH, 10_000), (MEDIUM, 10_000 + H + GAP)]:
    bad.append("snooze end during a pattern: %r" % got)
# next_wake_ms() between an action and its tick was never before the last tick.
if sh.early_wakes:
    bad.append("next_wake_ms() before the last tick (now, wake): %r" % sh.early_wakes)
check(bad == [], "; ".join(bad))
print("OK")
