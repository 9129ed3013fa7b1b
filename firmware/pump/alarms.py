# Latching alarms with IEC 60601-1-8 priorities, and their annunciation through a buzzer.
# Pure: time is passed in, the buzzer is any object with set(on); nothing here reads a clock.

from pump import reasons as R
from pump.compat import const
from pump.reasons import Refusal

NEVER = 1 << 60  # later than any time we use (alarm times are absolute ms, not the day frame)

INFO = const(0)
LOW = const(1)
MEDIUM = const(2)
HIGH = const(3)
PRIORITY_NAMES = ("informational", "low", "medium", "high")

# Conditions. The order of the numbers means nothing; priority comes from TABLE.
STALL = const(1)  # motor stall or occlusion
RES_EMPTY = const(2)  # reservoir estimate reached zero
BATT_EOS = const(3)  # battery end of service
LIMITER_BLOCK = const(4)  # the safety limiter refused a pulse; delivery is stopped
SELF_TEST = const(5)  # self-test or storage fault, reported by the shell
BATT_ERI = const(6)  # elective replacement indicator
RES_LOW = const(7)  # reservoir at or below the low threshold
DISCREPANCY = const(8)  # refill residual differs from the estimate beyond tolerance
CLOCK = const(9)  # clock lost or jumped
REFILL_DUE = const(10)  # worst-case forecast reaches the low threshold within the notice

TABLE = {
    STALL: ("motor_stall", HIGH),
    RES_EMPTY: ("reservoir_empty", HIGH),
    BATT_EOS: ("battery_eos", HIGH),
    LIMITER_BLOCK: ("limiter_block", HIGH),
    SELF_TEST: ("self_test", HIGH),
    BATT_ERI: ("battery_eri", MEDIUM),
    RES_LOW: ("reservoir_low", MEDIUM),
    DISCREPANCY: ("accounting_discrepancy", MEDIUM),
    CLOCK: ("clock", MEDIUM),
    REFILL_DUE: ("refill_due", LOW),
}

_SLOTS = const(11)  # condition ids are 1..10: alarms live in a list indexed by id, so that
# walking them allocates nothing (a dict's items() would, on every wake-up)
_PRIO = tuple(TABLE[c][1] if c in TABLE else -1 for c in range(_SLOTS))

# Tone patterns: alternating on/off durations in ms, starting and ending with a tone. They differ
# in pulse count and tone length (5 short, 3 medium, 2 long) so they can be told apart by ear.
# A new alarm waits at most for the gap after a pattern it or another new alarm cut, a high and
# a medium pattern, and their gaps: 350 + 360 + 3 * 80 = 950 ms, under the 1 s goal (unless yet
# more alarms of higher priority arise while it waits).
PATTERNS = {
    HIGH: (40, 30, 40, 30, 40, 60, 40, 30, 40),
    MEDIUM: (80, 60, 80, 60, 80),
    LOW: (300, 200, 300),
}
GAP_MS = const(80)  # silence between two patterns, so their tones do not run together
REPEAT_MS = {HIGH: 10_000, MEDIUM: 60_000, LOW: 600_000}
SNOOZE_MAX_MS = {HIGH: 900_000, MEDIUM: 86_400_000, LOW: 604_800_000}

# Fields of one latched alarm.
_PRESENT = const(0)
_ACKED = const(1)
_RAISED = const(2)
_SNOOZE = const(3)  # ms the snooze ends, 0 when not snoozed
_PENDING = const(4)  # ms it was (re)raised and not yet annunciated, -1 once it has been


def _nolog(*_args):
    pass


def name(cid):
    return TABLE[cid][0]


def priority(cid):
    return TABLE[cid][1]


def pattern_ms(p):
    """Total length of a priority's tone pattern."""
    t = 0
    for d in PATTERNS[p]:
        t += d
    return t


class Alarms:
    """The set of latched alarms and the buzzer schedule that annunciates them.

    An alarm latches when its condition arises and ends only when the condition has cleared and
    it has been acknowledged, in either order. Acknowledging does not silence it; snoozing does,
    for a limited time. Every audible priority plays its pattern at its repeat interval, higher
    priorities first, with a short gap between patterns. An alarm not yet annunciated goes
    before any repeat, and cuts short a pattern of its own or a lower priority.
    """

    def __init__(self, log=None, repeat_ms=None, snooze_max_ms=None):
        self.log = log or _nolog
        self.repeat_ms = dict(repeat_ms or REPEAT_MS)
        self.snooze_max_ms = dict(snooze_max_ms or SNOOZE_MAX_MS)
        self._slot = [None] * _SLOTS  # by cid: [present, acked, raised, snooze_end, pending]
        self._count = 0  # latched alarms
        self._due = [NEVER, NEVER, NEVER, NEVER]  # per priority: when its pattern should start
        self._test = []  # priorities still to play for an alarm test
        self.playing = -1  # priority whose pattern is sounding, -1 when silent
        self._testing = False
        self._rest_until = 0  # no pattern starts before this: the gap after the last one
        self._now = 0  # latest time given to any call: next_wake_ms() is never before it
        self._seg = 0
        self._seg_end = 0
        self.max_latency_ms = 0  # worst raise-to-first-tone time seen (self-monitoring)

    # ---- conditions ----

    def condition(self, cid, present, now_ms):
        """Report whether a condition holds now. Returns True if this changed anything."""
        self._seen(now_ms)
        if present:
            return self._arise(cid, now_ms)
        return self._clear(cid, now_ms)

    def event(self, cid, now_ms, *detail):
        """An alarm whose condition is a moment (a discrepancy, a clock jump): it needs only
        acknowledging to end."""
        self._seen(now_ms)
        self._arise(cid, now_ms, detail)
        self._clear(cid, now_ms)

    def _arise(self, cid, now_ms, detail=()):
        a = self._slot[cid]
        if a is not None and a[_PRESENT]:
            return False
        nm, p = TABLE[cid]
        if a is None:
            self._slot[cid] = [True, False, now_ms, 0, now_ms]
            self._count += 1
            self.log("alarm_raise", nm, PRIORITY_NAMES[p], *detail)
        else:
            # The condition came back before the alarm ended: it needs acknowledging again.
            a[_PRESENT] = True
            a[_ACKED] = False
            if a[_PENDING] < 0 or a[_SNOOZE]:
                a[_PENDING] = now_ms  # still unheard: it keeps waiting from its first raise
            a[_SNOOZE] = 0
            self.log("alarm_recur", nm, PRIORITY_NAMES[p], *detail)
        return True

    def _clear(self, cid, now_ms):
        a = self._slot[cid]
        if a is None or not a[_PRESENT]:
            return False
        a[_PRESENT] = False
        if a[_ACKED]:
            self._end(cid)
        else:
            self.log("alarm_condition_cleared", TABLE[cid][0])
        return True

    def _end(self, cid):
        self._slot[cid] = None
        self._count -= 1
        self.log("alarm_end", TABLE[cid][0])

    # ---- user actions ----

    def acknowledge(self, cid, now_ms):
        """The user has seen the alarm. Returns None, or a Refusal if it is not latched."""
        self._seen(now_ms)
        a = self._slot[cid]
        if a is None:
            return self._refused("acknowledge", R.NOT_ACTIVE, "alarm")
        if a[_ACKED]:
            return self._refused("acknowledge", R.ALREADY_DONE, "alarm")
        a[_ACKED] = True
        self.log("alarm_ack", TABLE[cid][0])
        if not a[_PRESENT]:
            self._end(cid)
        return None

    def snooze(self, cid, now_ms, duration_ms):
        """Silence one alarm for a limited time; it sounds again when that ends."""
        self._seen(now_ms)
        a = self._slot[cid]
        if a is None:
            return self._refused("snooze", R.NOT_ACTIVE, "alarm")
        p = TABLE[cid][1]
        if p == INFO:
            return self._refused("snooze", R.NOT_ALLOWED, "alarm")
        if duration_ms < 1:
            return self._refused("snooze", R.BELOW_MIN, "duration_ms")
        if duration_ms > self.snooze_max_ms[p]:
            return self._refused("snooze", R.ABOVE_MAX, "duration_ms")
        a[_SNOOZE] = now_ms + duration_ms
        self.log("alarm_snooze", TABLE[cid][0], duration_ms)
        return None

    def test(self, now_ms):
        """Queue every tone pattern once, high to low (the clinician's alarm test)."""
        self._seen(now_ms)
        if self._test or self._testing and self.playing >= 0:
            return self._refused("alarm_test", R.ALREADY_DONE, "alarm_test")
        self._test = [HIGH, MEDIUM, LOW]
        self.log("alarm_test")
        return None

    def _seen(self, now_ms):
        if now_ms > self._now:
            self._now = now_ms

    def _refused(self, request, code, field):
        self.log("refused", request, code, field)
        return Refusal(code, field)

    # ---- state that survives a restart ----

    def snapshot(self):
        """Latched alarms: [cid, present, acknowledged, raised_ms, snoozed_until_ms]."""
        out = []
        for cid in range(1, _SLOTS):
            a = self._slot[cid]
            if a is not None:
                out.append([cid, 1 if a[_PRESENT] else 0, 1 if a[_ACKED] else 0, a[_RAISED],
                            a[_SNOOZE]])  # fmt: skip
        return out

    def restore(self, s, now_ms):
        """Latch the stored alarms again. Each sounds anew at once (a restart is a new chance
        that nobody heard it), except those snoozed."""
        self._seen(now_ms)
        for cid, present, acked, raised, snooze in s:
            if not 0 < cid < _SLOTS or cid not in TABLE:
                raise ValueError("stored alarm %r is unknown" % (cid,))
            if self._slot[cid] is None:
                self._count += 1
            self._slot[cid] = [bool(present), bool(acked), raised, snooze,
                               -1 if snooze else now_ms]  # fmt: skip

    # ---- views ----

    def active(self):
        """Latched alarms, highest priority first, then oldest first:
        [(cid, name, priority, present, acknowledged, snoozed_until_ms)]."""
        out = []
        for cid in range(1, _SLOTS):
            a = self._slot[cid]
            if a is not None:
                out.append((cid, TABLE[cid][0], _PRIO[cid], a[_PRESENT], a[_ACKED], a[_SNOOZE]))
        out.sort(key=lambda r: (-r[2], self._slot[r[0]][_RAISED], r[0]))
        return out

    def is_latched(self, cid):
        return self._slot[cid] is not None

    def highest(self):
        p = -1
        for cid in range(1, _SLOTS):
            if self._slot[cid] is not None and _PRIO[cid] > p:
                p = _PRIO[cid]
        return p

    # ---- annunciation ----

    def _audible(self, p):
        for cid in range(1, _SLOTS):
            a = self._slot[cid]
            if a is not None and _PRIO[cid] == p and not a[_SNOOZE]:
                return True
        return False

    def _pending(self, p):
        # An audible alarm of priority p whose pattern has not sounded since it was (re)raised.
        for cid in range(1, _SLOTS):
            a = self._slot[cid]
            if a is not None and _PRIO[cid] == p and not a[_SNOOZE] and a[_PENDING] >= 0:
                return True
        return False

    def _expire_snoozes(self, now_ms):
        for cid in range(1, _SLOTS):
            a = self._slot[cid]
            if a is not None and a[_SNOOZE] and now_ms >= a[_SNOOZE]:
                a[_SNOOZE] = 0
                a[_PENDING] = now_ms
                self.log("alarm_snooze_end", TABLE[cid][0])

    def _pick(self, now_ms):
        """The pattern to play next: priority * 2, plus 1 if for an alarm not yet annunciated;
        -1 if none. Those go first, highest priority first; then repeats that are due."""
        for p in (HIGH, MEDIUM, LOW):
            if self._pending(p):
                return p * 2 + 1
        for p in (HIGH, MEDIUM, LOW):
            if self._due[p] <= now_ms:
                if self._audible(p):
                    return p * 2
                self._due[p] = NEVER
        return -1

    def _start(self, p, now_ms, buzzer, testing):
        self.playing = p
        self._testing = testing
        self._seg = 0
        self._seg_end = now_ms + PATTERNS[p][0]
        buzzer.set(True)
        if testing:
            return
        self._due[p] = now_ms + self.repeat_ms[p]
        for cid in range(1, _SLOTS):
            a = self._slot[cid]
            if a is not None and _PRIO[cid] == p and a[_PENDING] >= 0 and not a[_SNOOZE]:
                lat = now_ms - a[_PENDING]
                if lat > self.max_latency_ms:
                    self.max_latency_ms = lat
                a[_PENDING] = -1

    def _stop(self, now_ms, buzzer):
        # A pattern cut short is not replayed: its alarms have sounded, and their repeat comes
        # at the usual interval. The gap keeps the next pattern from running into this one.
        if self._seg % 2 == 0:
            buzzer.set(False)
        if self._testing:
            self._test.insert(0, self.playing)
        self.playing = -1
        self._rest_until = now_ms + GAP_MS

    def tick(self, now_ms, buzzer):
        """Drive the buzzer up to now_ms. Returns when to call again (NEVER if not needed)."""
        if self.playing < 0 and not self._count and not self._test:
            return NEVER  # the usual case
        self._seen(now_ms)
        self._expire_snoozes(now_ms)
        while True:
            if self.playing >= 0:
                pk = self._pick(now_ms)
                if pk >= 0 and pk & 1 and (pk >> 1 >= self.playing or self._testing):
                    self._stop(now_ms, buzzer)  # a new alarm sounds at once
                    continue
                if not self._testing and not self._audible(self.playing):
                    self._stop(now_ms, buzzer)
                    continue
                if now_ms < self._seg_end:
                    break
                pat = PATTERNS[self.playing]
                self._seg += 1
                if self._seg == len(pat):
                    self.playing = -1
                    buzzer.set(False)
                    self._rest_until = self._seg_end + GAP_MS
                    continue
                buzzer.set(self._seg % 2 == 0)
                self._seg_end += pat[self._seg]
                continue
            if now_ms < self._rest_until:
                break
            pk = self._pick(now_ms)
            if pk >= 0:
                self._start(pk >> 1, now_ms, buzzer, False)
            elif self._test:
                self._start(self._test.pop(0), now_ms, buzzer, True)
            else:
                break
        return self.next_wake_ms()

    def next_wake_ms(self):
        """When tick() must run next; never earlier than the latest time it was given."""
        if self.playing < 0 and not self._count and not self._test:
            return NEVER  # the usual case
        t = NEVER
        if self.playing >= 0:
            t = self._seg_end
            for p in (HIGH, MEDIUM, LOW):
                if (p >= self.playing or self._testing) and self._pending(p):
                    # Raised since the last tick (outside advance): it cuts this pattern now.
                    return self._now
        else:
            for p in (HIGH, MEDIUM, LOW):
                if self._due[p] < t and self._audible(p):
                    t = self._due[p]
                if self._pending(p):
                    t = 0  # an unheard alarm: as soon as the gap allows
            if self._test:
                t = 0
            if t < self._rest_until:
                t = self._rest_until
        for cid in range(1, _SLOTS):
            a = self._slot[cid]
            if a is not None and a[_SNOOZE] and a[_SNOOZE] < t:
                t = a[_SNOOZE]
        return t if t > self._now else self._now
