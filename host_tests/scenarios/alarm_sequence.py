# Scenario: several simultaneous alarms with gaps and a cut, acknowledge/clear in both orders, a
# snooze expiry and an alarm test refused while one runs; every buzzer change and alarm log line
# is printed, to compare the runtimes.
# req: SR-23, SR-34

import _rig

from pump import alarms as A

NEVER = A.NEVER


class PrintingBuzzer:
    def __init__(self, shell):
        self.shell = shell
        self.on = False

    def set(self, on):
        on = bool(on)
        if on != self.on:
            self.on = on
            print("buz %d %s" % (self.shell.now, "on" if on else "off"))


class Shell:
    """Ticks at every action and at exactly every returned wake; a wake in the past (a real
    shell could not sleep to it) stops the scenario on both runtimes."""

    def __init__(self):
        self.now = 0
        self.al = A.Alarms(log=self.on_log)
        self.buz = PrintingBuzzer(self)
        self.wake = NEVER

    def on_log(self, name, *args):
        line = "log %d %s" % (self.now, name)
        for a in args:
            line += " " + _rig.fmt(a)
        print(line)

    def tick(self):
        w = self.al.tick(self.now, self.buz)
        if w < self.now:
            raise AssertionError("tick(%d) asks to be called again at %d" % (self.now, w))
        self.wake = w

    def run_to(self, t):
        while self.wake <= t:
            self.now = self.wake
            self.tick()
        self.now = t

    def cond(self, t, cid, present):
        self.run_to(t)
        self.al.condition(cid, present, t)

    def request(self, t, label, result):
        if result is None:
            print("req %d %s ok" % (t, label))
        else:
            print("req %d %s refused %d %s" % (t, label, result.code, result.field))

    def ack(self, t, cid):
        self.run_to(t)
        self.request(t, "ack " + A.name(cid), self.al.acknowledge(cid, t))
        self.tick()

    def snooze(self, t, cid, ms):
        self.run_to(t)
        self.request(t, "snooze %s %d" % (A.name(cid), ms), self.al.snooze(cid, t, ms))
        self.tick()

    def show(self):
        for _cid, nm, p, present, acked, snz in self.al.active():
            print("active %d %s %d %d %d %d" % (self.now, nm, p, present, acked, snz))


sh = Shell()
al = sh.al

# Four alarms in the same millisecond, lowest first: they play high, medium, low.
sh.cond(0, A.REFILL_DUE, True)
al.event(A.CLOCK, 0, "backwards", 7)
sh.cond(0, A.RES_LOW, True)
sh.cond(0, A.STALL, True)
sh.tick()
sh.show()

# A second high one arrives while the medium pattern plays: it cuts it and starts one gap
# later; the cut medium is not replayed (it has sounded), the low one follows.
sh.cond(500, A.BATT_EOS, True)
sh.tick()
sh.run_to(3_000)
sh.show()

# Acknowledge before clear (stall) and clear before acknowledge (reservoir low).
sh.ack(3_000, A.STALL)
sh.cond(4_000, A.RES_LOW, False)
sh.tick()
sh.show()
sh.run_to(15_000)
sh.cond(15_000, A.STALL, False)
sh.tick()
sh.ack(16_000, A.RES_LOW)
sh.show()

# Snooze the remaining high alarm; refused snoozes change nothing; it sounds again at expiry.
sh.snooze(17_000, A.BATT_EOS, A.SNOOZE_MAX_MS[A.HIGH] + 1)
sh.snooze(17_000, A.BATT_EOS, 0)
sh.snooze(17_000, A.BATT_EOS, 120_000)
sh.show()
sh.run_to(140_000)
sh.cond(140_000, A.BATT_EOS, False)
sh.tick()
sh.ack(141_000, A.BATT_EOS)

# The clock event (moment-like) recurs before it was acknowledged; one acknowledge ends it.
sh.run_to(150_000)
al.event(A.CLOCK, 150_000, "late", 3)
sh.tick()
sh.ack(151_000, A.CLOCK)
sh.ack(152_000, A.CLOCK)
sh.show()
sh.cond(160_000, A.REFILL_DUE, False)
sh.tick()
sh.ack(161_000, A.REFILL_DUE)
sh.ack(161_000, A.REFILL_DUE)
sh.show()

# Alarm test with nothing latched: each pattern once, then silence.
sh.run_to(200_000)
sh.request(200_000, "test", al.test(200_000))
sh.tick()
sh.run_to(200_500)
sh.request(200_500, "test", al.test(200_500))
sh.tick()
sh.run_to(10_000_000)
print(
    "summary t=%d active=%d wake=%s max_latency_ms=%d"
    % (sh.now, len(al.active()), "never" if sh.wake == NEVER else "%d" % sh.wake,
       al.max_latency_ms)
)  # fmt: skip
