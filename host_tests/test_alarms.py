# Tests of the latching alarm set (firmware/pump/alarms.py) against the issue's alarm rules:
# priorities, latching, acknowledge, snooze, tone patterns with gaps, alarm test and latency.

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from boards.sim import hw
from pump import alarms as A
from pump import reasons as R
from pump.reasons import Refusal

NEVER = A.NEVER
HIGH, MEDIUM, LOW = A.HIGH, A.MEDIUM, A.LOW
GAP = A.GAP_MS
H, M, LO = A.pattern_ms(HIGH), A.pattern_ms(MEDIUM), A.pattern_ms(LOW)

# The issue's condition list and priorities, written out here independently of alarms.TABLE.
ISSUE_PRIORITY = {
    A.STALL: "high",
    A.RES_EMPTY: "high",
    A.BATT_EOS: "high",
    A.LIMITER_BLOCK: "high",
    A.SELF_TEST: "high",
    A.BATT_ERI: "medium",
    A.RES_LOW: "medium",
    A.DISCREPANCY: "medium",
    A.CLOCK: "medium",
}
# Moment-like conditions go through event(); the rest are reported present/absent.
EVENT_CIDS = (A.DISCREPANCY, A.CLOCK)
COND_CIDS = tuple(c for c in A.TABLE if c not in EVENT_CIDS)
ALL_CIDS = tuple(A.TABLE)
ONE_OF = {HIGH: A.STALL, MEDIUM: A.RES_LOW, LOW: A.REFILL_DUE}
# The documented latency bound: a new alarm waits at most for a high and a medium pattern, each
# followed by its gap, unless a higher-priority alarm is raised while it waits.
BOUND_MS = H + M + 3 * GAP  # the gap after a cut, then high, gap, medium, gap


class Shell:
    """Drives Alarms as a tickless shell does: tick at every action, and at exactly the time each
    tick() returned. That time must never be in the past (the shell could not sleep to it), and a
    tick that keeps asking for its own time again would spin the shell; both fail at once. After
    an action, before its tick, next_wake_ms() must not be earlier than the last tick either (a
    shell may sleep on it before ticking)."""

    def __init__(self, alarms=None, buzzer=None):
        self.now = 0
        self.al = alarms if alarms is not None else A.Alarms()
        self.buz = buzzer(self) if buzzer else hw.RecordingBuzzer(lambda: self.now)
        self.wake = NEVER
        self._same = 0
        self.last_tick = 0

    def tick(self):
        self.last_tick = self.now
        w = self.al.tick(self.now, self.buz)
        assert w >= self.now, "tick(%d) asks to be called again at %d, in the past" % (self.now, w)
        self._same = self._same + 1 if w == self.now else 0
        assert self._same < 3, "tick(%d) keeps asking for %d: the shell would spin" % (w, w)
        self.wake = w

    def run_to(self, t):
        while self.wake <= t:
            self.now = self.wake
            self.tick()
        self.now = t

    def do(self, t, fn, *args):
        """At time t: run the wakes up to t, call fn(*args, t), then tick at t."""
        self.run_to(t)
        out = fn(*args, t)
        w = self.al.next_wake_ms()
        assert w >= self.last_tick, (
            "after an action at %d, next_wake_ms() is %d, before the "
            "last tick at %d" % (t, w, self.last_tick)
        )
        self.tick()
        return out


def cond(al, cid, present):
    # Adapts Alarms.condition(cid, present, now) to Shell.do's trailing time argument.
    return lambda t: al.condition(cid, present, t)


def snooze(al, cid, duration):
    return lambda t: al.snooze(cid, t, duration)


def tones_from(changes, since=0, until=NEVER):
    """[(start, length)] of tones that start in [since, until)."""
    return hw.tones(changes, since, until)


def expected_changes(p, start):
    """The buzzer changes of one whole pattern of priority p started at start."""
    out = []
    t = start
    for i, d in enumerate(A.PATTERNS[p]):
        out.append((t, i % 2 == 0))
        t += d
    out.append((t, False))
    return out


def patterns_played(changes):
    """Decode whole patterns from buzzer changes as [(priority, start)], by tone length (each
    priority has its own) and exact on/off timing; fails on a tone or silence that fits none,
    and on two patterns less than GAP_MS apart."""
    by_on = {}
    for p, pat in A.PATTERNS.items():
        by_on[pat[0]] = p
    out = []
    tones = tones_from(changes)
    i = 0
    last_end = None
    while i < len(tones):
        start, length = tones[i]
        assert length in by_on, "tone of %d ms at %d fits no pattern" % (length, start)
        assert last_end is None or start >= last_end + GAP, "no gap before %d" % start
        p = by_on[length]
        pat = A.PATTERNS[p]
        t = start
        for k in range(0, len(pat), 2):
            assert i < len(tones) and tones[i] == (t, pat[k]), (
                "pattern %d from %d broken at tone %d" % (p, start, k // 2)
            )
            i += 1
            t += pat[k] + (pat[k + 1] if k + 1 < len(pat) else 0)
        last_end = t
        out.append((p, start))
    return out


def changes_in(changes, since, until):
    return [c for c in changes if since <= c[0] < until]


# ---- the table ----


@pytest.mark.req("SR-22")
def test_issue_conditions_have_the_issue_priorities():
    for cid, pname in ISSUE_PRIORITY.items():
        assert A.PRIORITY_NAMES[A.priority(cid)] == pname, A.name(cid)
    assert A.PRIORITY_NAMES[A.INFO] == "informational"
    assert (A.INFO, A.LOW, A.MEDIUM, A.HIGH) == tuple(sorted((A.INFO, A.LOW, A.MEDIUM, A.HIGH)))


# ---- latching: both orders, recurrence ----


@pytest.mark.req("SR-24")
def test_acknowledge_before_clear_ends_only_at_clear():
    sh = Shell()
    al = sh.al
    sh.do(0, cond(al, A.STALL, True))
    assert sh.do(1_000, al.acknowledge, A.STALL) is None
    assert [r[0] for r in al.active()] == [A.STALL]  # acked but still present: still latched
    assert al.active()[0][3:5] == (True, True)
    sh.run_to(25_000)
    # Acknowledging does not silence a present condition: the pattern keeps repeating.
    assert patterns_played(sh.buz.changes) == [(HIGH, 0), (HIGH, 10_000), (HIGH, 20_000)]
    sh.do(25_000, cond(al, A.STALL, False))
    assert al.active() == []
    sh.run_to(100_000)
    assert sh.buz.changes[-1] == (20_000 + H, False)
    assert sh.wake == NEVER


@pytest.mark.req("SR-24")
def test_clear_before_acknowledge_ends_only_at_acknowledge():
    sh = Shell()
    al = sh.al
    sh.do(0, cond(al, A.RES_LOW, True))
    sh.do(1_000, cond(al, A.RES_LOW, False))
    assert [r[0] for r in al.active()] == [A.RES_LOW]  # cleared but not acknowledged
    assert al.active()[0][3:5] == (False, False)
    sh.run_to(130_000)
    # Still annunciated after the condition cleared, every 60 s.
    assert patterns_played(sh.buz.changes) == [(MEDIUM, 0), (MEDIUM, 60_000), (MEDIUM, 120_000)]
    assert sh.do(130_000, al.acknowledge, A.RES_LOW) is None
    assert al.active() == []
    sh.run_to(1_000_000)
    assert sh.buz.changes[-1] == (120_000 + M, False)
    assert sh.wake == NEVER


@pytest.mark.req("SR-24")
def test_event_needs_only_acknowledging():
    sh = Shell()
    al = sh.al
    sh.do(0, lambda t: al.event(A.DISCREPANCY, t, 1, 2))
    assert al.active()[0][:5] == (A.DISCREPANCY, "accounting_discrepancy", MEDIUM, False, False)
    sh.run_to(61_000)
    assert patterns_played(sh.buz.changes) == [(MEDIUM, 0), (MEDIUM, 60_000)]
    assert sh.do(61_000, al.acknowledge, A.DISCREPANCY) is None
    assert al.active() == []


@pytest.mark.req("SR-24")
def test_recurrence_before_acknowledge_needs_a_new_acknowledge():
    log = []
    sh = Shell(A.Alarms(log=lambda *a: log.append(a)))
    al = sh.al
    sh.do(0, cond(al, A.STALL, True))
    sh.do(100, cond(al, A.RES_LOW, True))
    sh.do(5_000, cond(al, A.STALL, False))
    sh.do(6_000, cond(al, A.STALL, True))  # back before anyone acknowledged
    assert ("alarm_recur", "motor_stall", "high") in log
    # The recurrence is annunciated at once (nothing plays, the last gap is long over).
    sh.run_to(7_000)
    assert changes_in(sh.buz.changes, 6_000, 7_000) == expected_changes(HIGH, 6_000)
    assert al.active()[0][:5] == (A.STALL, "motor_stall", HIGH, True, False)
    sh.do(7_000, al.acknowledge, A.STALL)
    sh.do(8_000, cond(al, A.STALL, False))  # present, then acked, then cleared: ends
    assert [r[0] for r in al.active()] == [A.RES_LOW]
    # Cleared, acknowledged, then recurring: a new alarm after the old one ended.
    sh.do(9_000, cond(al, A.STALL, True))
    assert [r[0] for r in al.active()] == [A.STALL, A.RES_LOW]
    assert al.active()[0][4] is False
    # A recurrence while snoozed cancels the snooze: it must be heard again, at once.
    sh.do(10_000, cond(al, A.STALL, False))
    assert sh.do(10_500, snooze(al, A.STALL, 600_000)) is None
    sh.do(11_000, cond(al, A.STALL, True))
    assert al.active()[0][5] == 0
    sh.run_to(12_000)
    assert changes_in(sh.buz.changes, 11_000, 12_000) == expected_changes(HIGH, 11_000)


# ---- snooze ----


@pytest.mark.req("SR-24", "SR-23")
def test_snooze_silences_then_pattern_restarts_exactly_at_expiry():
    sh = Shell()
    al = sh.al
    sh.do(0, cond(al, A.RES_LOW, True))
    sh.run_to(1_000)
    assert changes_in(sh.buz.changes, 0, 1_000) == expected_changes(MEDIUM, 0)
    assert sh.do(1_000, snooze(al, A.RES_LOW, 300_000)) is None
    assert al.active()[0][5] == 301_000
    sh.run_to(400_000)
    assert changes_in(sh.buz.changes, 1_000, 301_000) == []  # silent all through the snooze
    assert changes_in(sh.buz.changes, 301_000, 302_000) == expected_changes(MEDIUM, 301_000)
    assert changes_in(sh.buz.changes, 302_000, 400_000) == expected_changes(MEDIUM, 361_000)
    assert al.active()[0][5] == 0
    # Snooze expiry ended nothing: it still needs clearing and acknowledging.
    sh.do(400_000, cond(al, A.RES_LOW, False))
    assert [r[0] for r in al.active()] == [A.RES_LOW]
    sh.do(400_001, al.acknowledge, A.RES_LOW)
    assert al.active() == []


@pytest.mark.req("SR-24")
def test_snooze_mid_pattern_silences_at_once():
    sh = Shell()
    al = sh.al
    sh.do(0, cond(al, A.STALL, True))
    assert sh.do(20, snooze(al, A.STALL, 60_000)) is None
    assert sh.buz.changes == [(0, True), (20, False)]
    sh.run_to(60_019)
    assert sh.buz.changes == [(0, True), (20, False)]
    sh.run_to(61_000)
    assert sh.buz.changes[2:] == expected_changes(HIGH, 60_020)


@pytest.mark.req("SR-24", "SR-22")
def test_snooze_ending_while_another_pattern_plays_sounds_right_after_it():
    # The snoozed alarm is pending again at its expiry: it goes before any repeat, after the
    # playing high pattern and its gap. With the high alarm ending mid-pattern instead, it
    # follows the cut after one gap.
    for stall_ends in (False, True):
        sh = Shell()
        al = sh.al
        sh.do(0, cond(al, A.STALL, True))
        sh.do(0, cond(al, A.RES_LOW, True))
        sh.do(1_000, snooze(al, A.RES_LOW, 9_100))  # ends at 10_100, inside the 10 s repeat
        if stall_ends:
            sh.do(10_200, al.acknowledge, A.STALL)
            sh.do(10_200, cond(al, A.STALL, False))
        sh.run_to(12_000)
        after = 10_200 + GAP if stall_ends else 10_000 + H + GAP
        since = 10_201 if stall_ends else 10_000 + H  # after the high pattern's last change
        got = patterns_played(changes_in(sh.buz.changes, since, 12_000))
        assert got == [(MEDIUM, after)], "stall ends %s: snoozed medium heard at %r" % (
            stall_ends,
            got,
        )


@pytest.mark.req("SR-24")
@pytest.mark.parametrize("p", [HIGH, MEDIUM, LOW])
def test_snooze_limits_per_priority(p):
    cid = ONE_OF[p]
    sh = Shell()
    al = sh.al
    sh.do(0, cond(al, cid, True))
    top = A.SNOOZE_MAX_MS[p]
    # Documented limits: 15 min, 24 h, 7 days.
    assert top == {HIGH: 15 * 60_000, MEDIUM: 24 * 3_600_000, LOW: 7 * 86_400_000}[p]
    before = (al.active(), al.next_wake_ms())
    for d, code in ((top + 1, R.ABOVE_MAX), (10 * top, R.ABOVE_MAX), (0, R.BELOW_MIN),
                    (-1, R.BELOW_MIN)):  # fmt: skip
        assert al.snooze(cid, 5, d) == Refusal(code, "duration_ms")
        assert (al.active(), al.next_wake_ms()) == before
    assert al.snooze(cid, 5, 1) is None
    assert al.active()[0][5] == 6
    assert al.snooze(cid, 5, top) is None
    assert al.active()[0][5] == 5 + top


@pytest.mark.req("SR-24")
def test_refusals_for_unknown_or_done_alarms():
    al = A.Alarms()
    assert al.acknowledge(A.STALL, 0) == Refusal(R.NOT_ACTIVE, "alarm")
    assert al.snooze(A.STALL, 0, 1_000) == Refusal(R.NOT_ACTIVE, "alarm")
    al.condition(A.STALL, True, 0)
    assert al.acknowledge(A.STALL, 1) is None
    before = al.active()
    assert al.acknowledge(A.STALL, 2) == Refusal(R.ALREADY_DONE, "alarm")
    assert al.active() == before


# ---- patterns and gaps ----


@pytest.mark.req("SR-23")
@pytest.mark.parametrize("p", [HIGH, MEDIUM, LOW])
def test_each_priority_pattern_exact_and_repeated(p):
    sh = Shell()
    al = sh.al
    sh.do(7, cond(al, ONE_OF[p], True))
    rep = A.REPEAT_MS[p]
    assert rep > A.pattern_ms(p) + GAP
    sh.run_to(7 + 3 * rep - 1)
    expect = []
    for k in range(3):
        expect += expected_changes(p, 7 + k * rep)
    assert sh.buz.changes == expect


@pytest.mark.req("SR-23")
def test_patterns_are_distinguishable():
    pats = [A.PATTERNS[p] for p in (HIGH, MEDIUM, LOW)]
    assert len(pats) >= 3
    for pat in pats:
        assert len(pat) % 2 == 1 and min(pat) > 0  # starts and ends with a tone
    counts = [(len(pat) + 1) // 2 for pat in pats]
    ons = [set(pat[0::2]) for pat in pats]
    assert len(set(counts)) == 3  # pulse counts differ
    for i in range(3):
        for j in range(i + 1, 3):
            assert not ons[i] & ons[j]  # and no tone length is shared
    assert (H, M, LO, GAP) == (350, 360, 800, 80)  # the documented lengths
    assert BOUND_MS == 950 < 1_000


@pytest.mark.req("SR-22", "SR-23")
def test_simultaneous_alarms_play_highest_first_with_gaps_none_lost():
    sh = Shell()
    al = sh.al
    for cid in (A.REFILL_DUE, A.RES_LOW, A.STALL):
        sh.run_to(0)
        al.condition(cid, True, 0)
    sh.tick()
    sh.run_to(55_000)
    al.condition(A.BATT_ERI, True, 55_000)
    al.condition(A.BATT_EOS, True, 55_000)
    sh.tick()
    sh.run_to(66_000)
    assert patterns_played(sh.buz.changes) == [
        (HIGH, 0),
        (MEDIUM, H + GAP),  # each after the previous one's last tone and a gap
        (LOW, H + GAP + M + GAP),
        (HIGH, 10_000),  # the repeat finds nothing lower due
        (HIGH, 20_000),
        (HIGH, 30_000),
        (HIGH, 40_000),
        (HIGH, 50_000),
        (HIGH, 55_000),  # a new high and a new medium at 55 s: high first, medium after a gap
        (MEDIUM, 55_000 + H + GAP),
        (HIGH, 65_000),  # the high repeat counts from 55 s now
    ]
    assert [r[0] for r in al.active()] == [
        A.STALL,
        A.BATT_EOS,
        A.RES_LOW,
        A.BATT_ERI,
        A.REFILL_DUE,
    ]


@pytest.mark.req("SR-22")
def test_next_wake_is_each_change_then_the_gap_end():
    # Two alarms at once: the medium waits behind the high pattern and its gap. Every wake
    # tick() returns is later than that tick, and is the next change or the gap's end.
    now = [0]
    al = A.Alarms()
    buz = hw.RecordingBuzzer(lambda: now[0])
    al.condition(A.STALL, True, 0)
    al.condition(A.RES_LOW, True, 0)
    w = al.tick(0, buz)
    ticks = []
    while now[0] < H + GAP:
        assert now[0] < w < NEVER
        now[0] = w
        ticks.append(w)
        w = al.tick(w, buz)
    assert ticks == [40, 70, 110, 140, 180, 240, 280, 310, 350, 430]
    assert buz.changes[-1] == (H + GAP, True)


@pytest.mark.req("SR-22")
def test_next_wake_after_a_test_request_is_not_before_the_last_tick():
    # The last pattern's gap ended long ago (at H + GAP); a test requested at 5 s must not make
    # next_wake_ms() answer that old time: the shell may sleep on it before ticking.
    sh = Shell()
    al = sh.al
    sh.do(0, cond(al, A.STALL, True))
    sh.do(1_000, al.acknowledge, A.STALL)
    sh.do(1_000, cond(al, A.STALL, False))
    sh.run_to(5_000)
    sh.tick()
    assert al.test(5_000) is None
    assert al.next_wake_ms() >= 5_000, "next_wake_ms() %d" % al.next_wake_ms()


@pytest.mark.req("SR-22")
def test_pending_cut_then_gap_cut_pattern_not_replayed():
    sh = Shell()
    al = sh.al
    sh.do(0, cond(al, A.REFILL_DUE, True))
    sh.do(100, cond(al, A.STALL, True))  # mid-tone of the low pattern
    # Cut at once; the high pattern starts one gap after the cut.
    expect = [(0, True), (100, False)] + expected_changes(HIGH, 100 + GAP)
    sh.run_to(1_000)
    assert changes_in(sh.buz.changes, 0, 1_000) == expect
    sh.run_to(610_000)
    # The low alarm has sounded; its pattern is not replayed. Its repeat comes 600 s after the
    # cut pattern's start, and the high repeat due meanwhile waits for it (repeats do not cut).
    high = [(HIGH, 100 + GAP + k * 10_000) for k in range(60)]
    assert patterns_played(changes_in(sh.buz.changes, 100 + GAP, 610_000)) == high + [
        (LOW, 600_000),
        (HIGH, 600_000 + LO + GAP),
    ]


@pytest.mark.req("SR-22")
def test_pending_cuts_its_own_priority_and_in_a_silence():
    sh = Shell()
    sh.do(0, cond(sh.al, A.STALL, True))
    sh.do(100, cond(sh.al, A.RES_EMPTY, True))  # a second high alarm, mid third tone
    sh.run_to(20_000)
    assert changes_in(sh.buz.changes, 0, 180) == [(0, True), (40, False), (70, True), (100, False)]
    assert patterns_played(changes_in(sh.buz.changes, 180, 20_000)) == [
        (HIGH, 180),
        (HIGH, 10_180),
    ]
    # A medium arriving in a silence of the low pattern cuts it there: no tone to stop.
    sh2 = Shell()
    sh2.do(0, cond(sh2.al, A.REFILL_DUE, True))
    sh2.do(350, cond(sh2.al, A.RES_LOW, True))
    sh2.run_to(2_000)
    assert sh2.buz.changes == [(0, True), (300, False)] + expected_changes(MEDIUM, 350 + GAP)
    # A lower one does not cut a higher one; it follows after the gap.
    sh3 = Shell()
    sh3.do(0, cond(sh3.al, A.STALL, True))
    sh3.do(60, cond(sh3.al, A.RES_LOW, True))
    sh3.run_to(2_000)
    assert patterns_played(sh3.buz.changes) == [(HIGH, 0), (MEDIUM, H + GAP)]


@pytest.mark.req("SR-22", "SR-23")
def test_pending_goes_before_a_due_repeat_and_repeats_never_cut():
    sh = Shell()
    al = sh.al
    sh.do(0, cond(al, A.RES_LOW, True))  # medium repeat due at 60 s
    sh.do(59_990, cond(al, A.STALL, True))
    sh.do(60_100, cond(al, A.REFILL_DUE, True))  # low, pending while the high plays
    sh.run_to(122_000)
    first = 59_990 + H + GAP
    assert patterns_played(changes_in(sh.buz.changes, 59_990, 122_000)) == [
        (HIGH, 59_990),
        (LOW, first),  # the new low goes before the medium repeat due since 60 s
        (MEDIUM, first + LO + GAP),
        (HIGH, 69_990),
        (HIGH, 79_990),
        (HIGH, 89_990),
        (HIGH, 99_990),
        (HIGH, 109_990),
        (HIGH, 119_990),
        (MEDIUM, first + LO + GAP + 60_000),  # the repeat counts from when it played
    ]


@pytest.mark.req("SR-22")
def test_repeat_stays_on_its_interval_when_a_new_alarm_ends_unheard():
    # A medium alarm raised behind a high pattern ends (acknowledged, cleared) before its turn.
    # Nothing new is left to annunciate, so the other medium alarm keeps its 60 s interval.
    sh = Shell()
    al = sh.al
    sh.do(0, cond(al, A.RES_LOW, True))
    sh.do(5_000, cond(al, A.STALL, True))
    sh.do(5_001, cond(al, A.BATT_ERI, True))
    sh.do(5_002, al.acknowledge, A.BATT_ERI)
    sh.do(5_003, cond(al, A.BATT_ERI, False))
    assert [r[0] for r in al.active()] == [A.STALL, A.RES_LOW]
    sh.run_to(61_000)
    high = [(HIGH, 5_000 + k * 10_000) for k in range(6)]
    assert patterns_played(changes_in(sh.buz.changes, 5_000, 61_000)) == high + [(MEDIUM, 60_000)]


# ---- alarm test ----


@pytest.mark.req("SR-23")
def test_alarm_test_plays_each_pattern_once_and_refuses_a_second_meanwhile():
    log = []
    sh = Shell(A.Alarms(log=lambda *a: log.append(a)))
    al = sh.al
    assert sh.do(1_000, al.test) is None
    assert al.active() == []
    refused = Refusal(R.ALREADY_DONE, "alarm_test")
    # Refused while queued, while its last pattern plays (nothing queued), and in between.
    for t in (1_000, 1_100, 1_000 + H + 10, 1_000 + H + GAP + M + GAP + 10):
        sh.run_to(t)
        before = (al.next_wake_ms(), len(sh.buz.changes))
        assert sh.do(t, al.test) == refused, t
        assert (al.next_wake_ms(), len(sh.buz.changes)) == before
    assert log.count(("refused", "alarm_test", R.ALREADY_DONE, "alarm_test")) == 4
    sh.run_to(10 * 86_400_000)
    assert patterns_played(sh.buz.changes) == [
        (HIGH, 1_000),
        (MEDIUM, 1_000 + H + GAP),
        (LOW, 1_000 + H + GAP + M + GAP),
    ]
    assert al.active() == []
    assert sh.wake == NEVER
    assert al.max_latency_ms == 0
    # Once done, a new test is accepted and plays again.
    assert sh.do(10 * 86_400_000, al.test) is None
    assert log.count(("alarm_test",)) == 2
    sh.run_to(11 * 86_400_000)
    assert len(patterns_played(sh.buz.changes)) == 6


@pytest.mark.req("SR-23", "SR-22")
def test_alarm_during_test_cuts_it_and_the_cut_test_pattern_replays():
    sh = Shell()
    al = sh.al
    sh.do(0, al.test)
    sh.do(500, cond(al, A.STALL, True))  # during the test's medium pattern (tone 430..520)
    sh.do(600, al.acknowledge, A.STALL)
    sh.do(700, cond(al, A.STALL, False))  # ended, in a silence of its high pattern
    sh.run_to(100_000)
    test_m = 700 + GAP
    assert sh.buz.changes == (
        expected_changes(HIGH, 0)
        + [(H + GAP, True), (500, False)]  # the test's medium, cut
        + [(580, True), (620, False), (650, True), (690, False)]  # the stall, cut at 700
        + expected_changes(MEDIUM, test_m)  # the cut test pattern, whole
        + expected_changes(LOW, test_m + M + GAP)
    )
    assert sh.wake == NEVER
    assert al.max_latency_ms == GAP


@pytest.mark.req("SR-23", "SR-22")
def test_alarm_repeat_waits_for_a_test_pattern_then_goes_before_the_rest_of_the_test():
    sh = Shell()
    al = sh.al
    sh.do(0, cond(al, A.STALL, True))  # repeat due at 10 s
    sh.do(9_900, al.test)
    sh.run_to(13_000)
    rep = 9_900 + H + GAP
    assert patterns_played(changes_in(sh.buz.changes, 9_900, 13_000)) == [
        (HIGH, 9_900),  # test
        (HIGH, rep),  # the repeat, not cutting the test pattern
        (MEDIUM, rep + H + GAP),  # test
        (LOW, rep + H + GAP + M + GAP),  # test
    ]
    sh.run_to(rep + 10_000 + H + 1)
    assert patterns_played(changes_in(sh.buz.changes, 13_000, rep + 10_000 + H + 1)) == [
        (HIGH, rep + 10_000)
    ]


# ---- latency ----


def _pattern_starts(rec):
    """Decode [(t, on, playing)] into pattern starts [(t, priority)], checking every tone and
    silence against PATTERNS. A pattern may be cut short anywhere; any new pattern must start at
    least GAP_MS after the previous pattern's last tone. (Only one low condition exists, so no
    low pattern is cut in a silence by a low one that would line up with its next tone.)"""
    starts = []
    p = seg = -1
    seg_end = 0
    last_off = None
    for t, on, playing in rec:
        if on:
            if p >= 0 and p == playing and seg % 2 == 1 and t == seg_end:
                seg += 1
            else:
                assert last_off is None or t >= last_off + GAP, (
                    "pattern at %d only %d ms after the last tone" % (t, t - last_off)
                )
                p, seg = playing, 0
                starts.append((t, p))
            seg_end = t + A.PATTERNS[p][seg]
        else:
            assert p >= 0 and seg % 2 == 0 and t <= seg_end, "tone at %d too long" % t
            last_off = t
            if t < seg_end or seg + 1 == len(A.PATTERNS[p]):
                p = seg = -1  # cut short, or ended
            else:
                seg += 1
                seg_end = t + A.PATTERNS[p][seg]
    return starts


class PlayingBuzzer(hw.RecordingBuzzer):
    """Records which priority the alarm set says is sounding at each change."""

    def __init__(self, shell):
        super().__init__(lambda: shell.now)
        self.shell = shell
        self.rec = []

    def set(self, on):
        on = bool(on)
        if on != self.on:
            self.rec.append((self.clock(), on, self.shell.al.playing))
        super().set(on)


def _raise_all(rs):
    sh = Shell(buzzer=PlayingBuzzer)
    for t, cid in rs:
        sh.do(t, cond(sh.al, cid, True))
    sh.run_to(rs[-1][0] + 5_000)
    return sh, _pattern_starts(sh.buz.rec)


def _first_tones(rs, starts):
    """[(t, cid, first)]: each raise with the start of its priority's first pattern after it."""
    out = []
    for t, cid in rs:
        first = [s for s, q in starts if q == A.priority(cid) and s >= t]
        assert first, "%s raised at %d never sounded" % (A.name(cid), t)
        out.append((t, cid, first[0]))
    return out


raises = st.lists(
    st.tuples(st.integers(0, 70_000), st.sampled_from(ALL_CIDS)),
    min_size=1,
    max_size=8,
    unique_by=lambda r: r[1],
)
# Raises packed into a few seconds, so that alarms queue behind each other.
packed = st.lists(
    st.tuples(st.integers(0, 3_000), st.sampled_from(ALL_CIDS)),
    min_size=2,
    max_size=8,
    unique_by=lambda r: r[1],
)


@pytest.mark.req("SR-22", "SR-23")
@settings(max_examples=60)
@example([(0, A.BATT_ERI), (0, A.REFILL_DUE), (1, A.STALL)])
@example([(0, A.STALL), (9_600, A.RES_LOW), (9_700, A.REFILL_DUE)])
@given(raises)
def test_max_latency_agrees_with_the_recording(rs):
    rs = sorted(rs)
    sh, starts = _raise_all(rs)
    worst = max(first - t for t, _cid, first in _first_tones(rs, starts))
    assert sh.al.max_latency_ms == worst


@pytest.mark.req("SR-22", "SR-23")
@settings(max_examples=80)
@example([(0, A.STALL), (0, A.RES_LOW), (0, A.REFILL_DUE)])  # high, gap, medium, gap: 870 ms
@example([(0, A.STALL), (1, A.RES_LOW), (2, A.RES_EMPTY), (3, A.REFILL_DUE)])
@given(st.one_of(raises, packed))
def test_first_tone_within_bound_unless_a_higher_alarm_arrives_meanwhile(rs):
    """A new alarm's first tone starts within H + M + 3 * GAP of its raise, provided no alarm of
    higher priority is raised after it (later in the raise order, same millisecond included)
    and before that first tone."""
    rs = sorted(rs)
    _sh, starts = _raise_all(rs)
    tones = _first_tones(rs, starts)
    for i, (t, cid, first) in enumerate(tones):
        p = A.priority(cid)
        if any(A.priority(c) > p and tj < first for tj, c, _f in tones[i + 1 :]):
            continue
        assert first - t <= BOUND_MS, "%s raised at %d first sounded at %d (%d ms > %d)" % (
            A.name(cid),
            t,
            first,
            first - t,
            BOUND_MS,
        )


@pytest.mark.req("SR-22")
def test_latency_bound_when_a_high_alarm_cut_just_before():
    # A medium waits behind a high pattern; a second high alarm cuts that pattern; a low one
    # arrives 1 ms later. Nothing higher arrives after the low one, so the 950 ms bound holds
    # for it: ahead of it are the rest of the cut's gap, the new high, a gap, the medium, a gap.
    sh, starts = _raise_all([(0, A.STALL), (1, A.RES_LOW), (2, A.RES_EMPTY), (3, A.REFILL_DUE)])
    low = [s for s, q in starts if q == LOW][0]
    assert low - 3 <= BOUND_MS, "low raised at 3 first sounded at %d" % low


@pytest.mark.req("SR-22")
def test_latency_counts_from_the_first_raise_of_an_alarm_not_yet_heard():
    # The medium alarm is raised behind a high pattern, flickers (clear, back) while it waits,
    # and is first heard after the high one. It has waited since its first raise.
    sh = Shell()
    al = sh.al
    sh.do(0, cond(al, A.STALL, True))
    sh.do(1, cond(al, A.RES_LOW, True))
    sh.do(100, cond(al, A.RES_LOW, False))
    sh.do(101, cond(al, A.RES_LOW, True))
    sh.run_to(2_000)
    assert patterns_played(sh.buz.changes) == [(HIGH, 0), (MEDIUM, H + GAP)]
    assert al.max_latency_ms == H + GAP - 1


# ---- the state machine against a model ----


class Model:
    """The alarm rules and the annunciation design as stated (issue 3 and alarms.py's notes),
    kept without looking at the firmware's fields: it schedules its own patterns, and so
    computes its own buzzer changes and wake times."""

    def __init__(self):
        self.now = 0
        self.latched = {}  # cid -> [present, acked, raised, snooze_end, waiting_since|None]
        self.last_start = {}  # priority -> start of its last alarm pattern
        self.playing = None  # (priority, is_test)
        self.sched = []  # (ms, on) changes still to come in the playing pattern
        self.rest_until = 0
        self.test_q = []
        self.on = False
        self.changes = []
        self.max_latency = 0

    # -- the latched set --

    def arise(self, cid, now):
        a = self.latched.get(cid)
        if a is None:
            self.latched[cid] = [True, False, now, 0, now]
        elif not a[0]:
            a[0], a[1], a[3] = True, False, 0
            if a[4] is None:  # not heard since: it has waited since its first raise
                a[4] = now

    def clear(self, cid):
        a = self.latched.get(cid)
        if a is not None and a[0]:
            a[0] = False
            if a[1]:
                del self.latched[cid]

    def acknowledge(self, cid):
        a = self.latched[cid]
        a[1] = True
        if not a[0]:
            del self.latched[cid]

    def snooze(self, cid, now, d):
        a = self.latched[cid]
        a[3] = now + d
        a[4] = None  # seen by the user; it is pending again when the snooze ends

    def test_refused(self):
        return bool(self.test_q) or (self.playing is not None and self.playing[1])

    def test(self):
        self.test_q = [HIGH, MEDIUM, LOW]

    # -- annunciation --

    def audible(self, p):
        return any(A.priority(c) == p and not a[3] for c, a in self.latched.items())

    def top_pending(self):
        ps = [A.priority(c) for c, a in self.latched.items() if not a[3] and a[4] is not None]
        return max(ps) if ps else -1

    def next_event(self):
        ts = [a[3] for a in self.latched.values() if a[3]]
        if self.playing is not None:
            ts.append(self.sched[0][0])
        else:
            can = []
            if self.top_pending() >= 0 or self.test_q:
                can.append(self.now)
            for p, s in self.last_start.items():
                if self.audible(p):
                    can.append(s + A.REPEAT_MS[p])
            if can:
                ts.append(max(min(can), self.rest_until))
        return min(ts) if ts else NEVER

    def advance(self, t):
        while True:
            e = self.next_event()
            if e > t:
                break
            assert e >= self.now, "model stuck"
            self.settle(e)
        self.now = t

    def _set(self, on, x):
        if on != self.on:
            self.on = on
            self.changes.append((x, on))

    def _start(self, p, x, test):
        self.playing = (p, test)
        self.sched = []
        t = x
        for i, d in enumerate(A.PATTERNS[p]):
            t += d
            self.sched.append((t, i % 2 == 1))
        self._set(True, x)
        if test:
            return
        self.last_start[p] = x
        for c, a in self.latched.items():
            if A.priority(c) == p and not a[3] and a[4] is not None:
                self.max_latency = max(self.max_latency, x - a[4])
                a[4] = None

    def _cut(self, x):
        self._set(False, x)
        if self.playing[1]:
            self.test_q.insert(0, self.playing[0])  # a cut test pattern is played again
        self.playing = None
        self.sched = []
        self.rest_until = x + GAP

    def settle(self, x):
        """Everything due at x, in this order: snooze ends, the playing pattern (cut by a new
        alarm, stopped when nothing of its priority is audible, or moved on), then a start."""
        self.now = x
        for a in self.latched.values():
            if a[3] and a[3] <= x:
                a[3] = 0
                a[4] = x
        while True:
            if self.playing is not None:
                p, test = self.playing
                q = self.top_pending()
                if q >= 0 and (q >= p or test):
                    self._cut(x)
                elif not test and not self.audible(p):
                    self._cut(x)
                elif self.sched[0][0] <= x:
                    self._set(self.sched.pop(0)[1], x)
                    if not self.sched:
                        self.playing = None
                        self.rest_until = x + GAP
                else:
                    return
                continue
            if x < self.rest_until:
                return
            q = self.top_pending()
            if q < 0:
                for p in (HIGH, MEDIUM, LOW):
                    if p in self.last_start and self.audible(p):
                        if self.last_start[p] + A.REPEAT_MS[p] <= x:
                            q = p
                            break
            if q >= 0:
                self._start(q, x, False)
            elif self.test_q:
                self._start(self.test_q.pop(0), x, True)
            else:
                return


class AlarmMachine(RuleBasedStateMachine):
    @initialize()
    def start(self):
        self.m = Model()
        self.sh = Shell()
        self.al = self.sh.al

    def _act(self, fw, model):
        """At the present time: the firmware action and its tick, and the model's."""
        now = self.sh.now
        out = self.sh.do(now, fw)
        model()
        self.m.settle(now)
        return out

    def _pick(self, data, pool):
        # Mostly an alarm that is latched, so acknowledge, snooze and clear act on something.
        live = sorted(c for c in self.m.latched if c in pool)
        if live and data.draw(st.integers(0, 3), label="live"):
            return data.draw(st.sampled_from(live), label="cid")
        return data.draw(st.sampled_from(pool), label="cid")

    def _refused_changes_nothing(self, fn, *args):
        before = (self.al.active(), self.al.next_wake_ms(), len(self.sh.buz.changes))
        out = fn(*args)
        assert isinstance(out, Refusal)
        assert (self.al.active(), self.al.next_wake_ms(), len(self.sh.buz.changes)) == before
        return out

    @rule(present=st.booleans(), data=st.data())
    def condition(self, present, data):
        cid = self._pick(data, COND_CIDS) if not present else data.draw(st.sampled_from(COND_CIDS))
        now = self.sh.now
        if present:
            self._act(cond(self.al, cid, True), lambda: self.m.arise(cid, now))
        else:
            self._act(cond(self.al, cid, False), lambda: self.m.clear(cid))

    @rule(cid=st.sampled_from(EVENT_CIDS))
    def event(self, cid):
        now = self.sh.now

        def model():
            self.m.arise(cid, now)
            self.m.clear(cid)

        self._act(lambda t: self.al.event(cid, t), model)

    @rule(data=st.data())
    def acknowledge(self, data):
        cid = self._pick(data, ALL_CIDS)
        now = self.sh.now
        a = self.m.latched.get(cid)
        if a is None or a[1]:
            code = R.NOT_ACTIVE if a is None else R.ALREADY_DONE
            out = self._refused_changes_nothing(self.al.acknowledge, cid, now)
            assert out == Refusal(code, "alarm")
            return
        assert (
            self._act(lambda t: self.al.acknowledge(cid, t), lambda: self.m.acknowledge(cid))
            is None
        )

    @rule(data=st.data())
    def snooze(self, data):
        cid = self._pick(data, ALL_CIDS)
        now = self.sh.now
        top = A.SNOOZE_MAX_MS[A.priority(cid)]
        d = data.draw(
            st.one_of(
                st.integers(1, top),
                st.integers(1, 30_000),
                st.sampled_from([1, top, top + 1, 0, -1]),
                st.integers(top + 1, 4 * top),
                st.integers(-1_000, 0),
            ),
            label="duration_ms",
        )
        a = self.m.latched.get(cid)
        if a is None or d < 1 or d > top:
            if a is None:
                code, field = R.NOT_ACTIVE, "alarm"
            else:
                code, field = (R.BELOW_MIN if d < 1 else R.ABOVE_MAX), "duration_ms"
            out = self._refused_changes_nothing(self.al.snooze, cid, now, d)
            assert out == Refusal(code, field)
            return
        out = self._act(snooze(self.al, cid, d), lambda: self.m.snooze(cid, now, d))
        assert out is None

    @rule()
    def alarm_test(self):
        if self.m.test_refused():
            out = self._refused_changes_nothing(self.al.test, self.sh.now)
            assert out == Refusal(R.ALREADY_DONE, "alarm_test")
            return
        assert self._act(self.al.test, self.m.test) is None

    @rule(ms=st.one_of(st.integers(1, 120), st.integers(1, 2_000), st.integers(1, 700_000)))
    def advance(self, ms):
        t = self.sh.now + ms
        self.sh.run_to(t)
        self.m.advance(t)

    @precondition(lambda self: hasattr(self, "m"))
    @invariant()
    def nothing_lost_and_ordered(self):
        now = self.sh.now
        act = self.al.active()
        assert sorted(r[0] for r in act) == sorted(self.m.latched)
        for cid, nm, p, present, acked, snz in act:
            a = self.m.latched[cid]
            assert (nm, p) == (A.name(cid), A.priority(cid))
            assert (present, acked) == (a[0], a[1]), A.name(cid)
            assert snz == (a[3] if a[3] and now < a[3] else 0), A.name(cid)
        keys = [(-r[2], self.m.latched[r[0]][2]) for r in act]
        assert keys == sorted(keys), "not highest priority first, then oldest first"

    @precondition(lambda self: hasattr(self, "m"))
    @invariant()
    def buzzer_exactly_as_designed(self):
        got, want = self.sh.buz.changes, self.m.changes
        if got != want:
            n = 0
            while n < min(len(got), len(want)) and got[n] == want[n]:
                n += 1
            raise AssertionError(
                "buzzer differs from change %d: firmware %r, design %r"
                % (n, got[n : n + 4], want[n : n + 4])
            )
        assert self.al.max_latency_ms == self.m.max_latency


AlarmMachine.TestCase.settings = settings(max_examples=100, stateful_step_count=40)
test_alarm_state_machine = pytest.mark.req("SR-22", "SR-23", "SR-24")(AlarmMachine.TestCase)
