# Motor stall detection and retries, and late or backwards time in the supervisor's delivery
# path: what the mechanism is asked to do, what is counted, logged and alarmed.

import copy

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from host_tests.test_reservoir import DAY, HEALTHY_UV, HOUR, MIN, REF_RX, Pump, scheduled
from pump import alarms as A
from pump import engine as E


class Scripted:
    """A mechanism whose pulses fail or succeed by a script (then succeed), and which records
    the engine time of every attempt."""

    def __init__(self, eng, script=()):
        self.eng = eng
        self.script = list(script)
        self.times = []
        self.attempts = 0
        self.done = 0
        self.jammed = False

    def pulse(self):
        self.times.append(self.eng.now_ms())
        i = self.attempts
        self.attempts += 1
        ok = not self.jammed and (self.script[i] if i < len(self.script) else True)
        if ok:
            self.done += 1
        return ok


def model(sched, script, stall_count, bmin, bmax):
    """The documented behaviour over the scheduled pulse times: which are attempted, when a
    stall is declared and ends, and the undelivered count each stall logs at its end."""
    attempts, stalls, ends = [], [], []
    fails = 0
    stalled = False
    retry = 0
    backoff = 0
    lost = 0
    for t in sched:
        if stalled and t < retry:
            lost += 1
            continue
        i = len(attempts)
        attempts.append(t)
        ok = script[i] if i < len(script) else True
        if ok:
            fails = 0
            if stalled:
                ends.append((t, lost))
                stalled = False
            lost = 0
            continue
        fails += 1
        lost += 1
        if stalled:
            backoff = min(2 * backoff, bmax)
            retry = t + backoff
        elif fails >= stall_count:
            stalled = True
            backoff = bmin
            retry = t + bmin
            stalls.append((t, lost))
    return attempts, stalls, ends


def stall_pump(stall_count=2, **kw):
    p = Pump(stall_count=stall_count, **kw)
    p.ok(p.sup.program(REF_RX, confirm=True))
    return p


@pytest.mark.req("SR-13", "SR-14", "SR-40")
@settings(max_examples=40)
@given(
    stall_count=st.integers(1, 5),
    script=st.lists(st.booleans(), min_size=1, max_size=15),
    bmin=st.sampled_from((60_000, 200_000)),
    bmax=st.sampled_from((400_000, 3_600_000)),
)
def test_stall_after_exactly_stall_count_and_back_off(stall_count, script, bmin, bmax):
    p = stall_pump(stall_count, backoff_min_ms=bmin, backoff_max_ms=bmax)
    mech = p.mech = Scripted(p.eng, script)
    horizon = 14 * HOUR  # long enough for 15 attempts at back-offs up to 1 h
    p.run_to(horizon)
    sched = scheduled(REF_RX, 500, horizon)
    attempts, stalls, ends = model(sched, script, stall_count, bmin, bmax)
    assert mech.times == attempts
    assert [a for _t, a in p.events("stall")] == [
        (n, p.res.volume_of_pulses_nl(n)) for _t, n in stalls
    ]
    assert [t for t, _a in p.events("stall")] == [t for t, _n in stalls]
    assert [(t, a) for t, a in p.events("stall_end")] == [
        (t, (n, p.res.volume_of_pulses_nl(n))) for t, n in ends
    ]
    failed = p.events("pulse_failed")
    assert len(failed) == script[: len(attempts)].count(False) == p.sup.failed_pulses
    # The high alarm is raised at the stall (and again at a later one if it was still latched).
    raises = [
        t for t, n, a in p.log if n in ("alarm_raise", "alarm_recur") and a[0] == "motor_stall"
    ]
    assert raises == [t for t, _n in stalls]
    if stalls:
        assert A.priority(A.STALL) == A.HIGH and p.alarms.is_latched(A.STALL)
    # Only confirmed pulses come off the reservoir; the limiter saw what the engine scheduled.
    assert p.res.pulses == mech.done
    assert p.limiter.pulses == p.eng.delivered == len(sched)
    assert p.sup.undelivered_pulses == len(sched) - mech.done


@pytest.mark.req("SR-13", "SR-14", "SR-40")
def test_jam_recovery_no_catch_up_and_alarm_latched_until_ack():
    p = stall_pump()
    p.run_to(DAY)
    p.mech.jam()
    t_jam = p.eng.now_ms()
    done0, att0 = p.mech.done, p.mech.attempts
    p.run_to(t_jam + 6 * HOUR)
    assert p.sup.stalled() and p.alarm(A.STALL)[3]
    # Back-off: the attempts spread out to one an hour at most, never more often than planned.
    assert p.mech.attempts - att0 < 15
    p.mech.free()
    t_free = p.eng.now_ms()
    p.run_to(t_free + 2 * HOUR)
    assert not p.sup.stalled()
    row = p.alarm(A.STALL)
    assert row is not None and not row[3] and not row[4]  # cleared, still latched, not acked
    (end,) = p.events("stall_end")
    sched = scheduled(REF_RX, 500, t_free + 2 * HOUR)
    # Every scheduled pulse from the jam to the first success is reported undelivered.
    first_ok = end[0]
    missed = sum(1 for t in sched if t_jam < t < first_ok)
    assert end[1] == (missed, p.res.volume_of_pulses_nl(missed))
    # After recovery the schedule simply goes on: every scheduled pulse, none more.
    assert p.mech.done - done0 == sum(1 for t in sched if first_ok <= t <= t_free + 2 * HOUR)
    assert p.res.pulses == p.mech.done
    assert p.limiter.pulses == p.eng.delivered == len(sched)
    p.run_to(t_free + 3 * HOUR)
    assert p.alarms.is_latched(A.STALL)
    assert p.sup.acknowledge(A.STALL) is None
    assert not p.alarms.is_latched(A.STALL)


@pytest.mark.req("SR-40")
def test_attempts_never_faster_than_schedule():
    # Any one-hour window holds no more attempts than scheduled pulses, through a jam, a
    # recovery and intermittent failures.
    p = stall_pump()
    mech = p.mech = Scripted(p.eng, [True] * 200 + [False] * 30 + [True, False] * 40)
    p.run_to(2 * HOUR)
    mech.jammed = True
    p.run_to(9 * HOUR)
    mech.jammed = False
    horizon = 2 * DAY
    p.run_to(horizon)
    sched = scheduled(REF_RX, 500, horizon)
    assert set(mech.times) <= set(sched) and len(set(mech.times)) == len(mech.times)
    for start in range(0, horizon - HOUR, 10 * MIN):
        a = sum(1 for t in mech.times if start <= t < start + HOUR)
        s = sum(1 for t in sched if start <= t < start + HOUR)
        assert a <= s


@pytest.mark.req("SR-13")
def test_ack_during_stall_keeps_alarm_until_it_clears():
    p = stall_pump()
    p.run_to(HOUR)
    p.mech.jam()
    p.run_to(3 * HOUR)
    assert p.sup.acknowledge(A.STALL) is None
    assert p.alarms.is_latched(A.STALL)  # the condition persists
    p.mech.free()
    p.run_to(6 * HOUR)
    assert not p.alarms.is_latched(A.STALL)


@pytest.mark.req("SR-40")
def test_late_advance_skips_overdue_pulses():
    p = stall_pump()
    p.run_to(DAY)
    t0 = p.eng.now_ms()
    att0 = p.mech.attempts
    und0 = p.sup.undelivered_pulses
    late_at = p.sup.next_wake_ms() + HOUR
    p.t = late_at
    p.sup.advance(late_at, p.mech, p.buzzer)
    if p.sup.battery_due(late_at):  # as the shell must after every advance
        p.sup.battery_sample(late_at, HEALTHY_UV * 16, 16)
    sched = [t for t in scheduled(REF_RX, 500, late_at) if t0 < t <= late_at]
    in_time = [t for t in sched if late_at - t <= 10_000]
    assert len(sched) >= 40
    assert p.mech.attempts - att0 == len(in_time)  # no burst: only pulses due in the last 10 s
    skipped = len(sched) - len(in_time)
    assert p.events("pulses_skipped_late")[-1][1] == (skipped,)
    assert p.sup.undelivered_pulses - und0 == skipped
    row = p.alarm(A.CLOCK)
    assert row is not None and row[2] == A.MEDIUM
    raised = [a for _t, a in p.events("alarm_raise") if a[0] == "clock"]
    assert raised == [("clock", "medium", "late", skipped)]
    # Delivery then goes on at the schedule.
    done1 = p.mech.done
    p.run_to(late_at + 6 * HOUR)
    full = scheduled(REF_RX, 500, late_at + 6 * HOUR)
    assert p.mech.done - done1 == sum(1 for t in full if late_at < t <= late_at + 6 * HOUR)
    assert p.limiter.pulses == p.eng.delivered == len(full)


@pytest.mark.req("SR-40", "SR-14")
def test_clock_backwards_neither_stops_nor_repeats():
    p = stall_pump()
    p.run_to(DAY)
    twin = copy.deepcopy(p)
    t_last = p.eng.now_ms()
    back = t_last - 2 * HOUR
    p.t = back
    p.sup.advance(back, p.mech, p.buzzer)
    if p.sup.battery_due(back):
        p.sup.battery_sample(back, HEALTHY_UV * 16, 16)
    raised = [a for _t, a in p.events("alarm_raise") if a[0] == "clock"]
    assert raised == [("clock", "medium", "backwards", 2 * HOUR)]
    # From here the shell's clock reads 2 h behind; the engine's time goes on from t_last.
    while p.eng.now_ms() < t_last + DAY:
        p.step()
    twin.run_to(p.eng.now_ms())
    assert p.mech.done == twin.mech.done
    assert p.eng.delivered == twin.eng.delivered == p.limiter.pulses
    assert p.eng.next_due_ms() == twin.eng.next_due_ms()
    assert p.eng.next_due_ms() - p.sup.next_wake_ms() >= 2 * HOUR  # asked for in shell time
    assert len(p.events("alarm_raise")) == len(twin.events("alarm_raise")) + 1


@pytest.mark.req("SR-13", "SR-14")
def test_stall_does_not_stop_the_programme():
    p = stall_pump()
    mech = p.mech = Scripted(p.eng)
    mech.jammed = True
    p.run_to(2 * DAY)
    assert p.eng.rx == REF_RX and p.eng.mode == E.MODE_PROGRAM and not p.eng.fault
    assert p.sup.stalled()
    # Retries never stop: once the back-off is at its 1 h cap, one attempt about every hour.
    second_day = [t for t in mech.times if t > DAY]
    assert len(second_day) >= 23
    gaps = [
        mech.times[i + 1] - mech.times[i] for i in range(len(mech.times) - 24, len(mech.times) - 1)
    ]
    assert max(gaps) <= HOUR + 90_000


def _bridge_pump(old, new):
    # A strength change by refill, so the dead volume still holds the old drug.
    p = Pump(conc=old)
    p.ok(p.sup.program(REF_RX.with_concentration(old), confirm=True))
    p.run_to(HOUR)
    p.ok(p.sup.refill_begin(p.res.remaining_nl()))
    p.ok(p.sup.refill_fill(20_000_000, new))
    p.ok(p.sup.refill_commit())
    return p


@pytest.mark.req("SR-13", "SR-35")
@pytest.mark.parametrize("old,new", [(2000, 500), (500, 2000)])
def test_a_jam_through_the_bridge_does_not_count_it_done(old, new):
    # A bridge counted down by pulses that never moved would leave the old drug in the line
    # while the engine (and the limiter) switched to the new strength: at 2000 -> 500 that is
    # four times the prescribed dose. Only moved pulses may count toward the bridge.
    p = _bridge_pump(old, new)
    bridge = p.eng.bridge_pulses_left()
    assert bridge > 0 and p.eng.conc == old
    p.mech.jam()
    p.run_to(p.eng.now_ms() + 3 * DAY)  # long enough for the whole bridge to be scheduled
    assert p.sup.stalled()
    assert p.eng.conc == old and p.eng.bridge_pulses_left() == bridge
    assert p.limiter._bridge_left == p.eng.bridge_pulses_left()
    p.mech.free()
    moved0 = p.mech.done
    # The bridge ends after exactly `bridge` moved pulses, and only then the strength changes.
    while p.eng.conc == old:
        p.step()
    assert p.mech.done - moved0 == bridge
    assert p.eng.next_conc() == new and p.limiter._bridge_left == 0
    # The limiter now counts a pulse at the new strength, as the engine does.
    assert p.limiter._whole == p.limiter._dose_of(new)[0]


@pytest.mark.req("SR-40", "SR-35")
def test_late_pulses_in_the_bridge_do_not_count_it_done():
    p = _bridge_pump(2000, 500)
    bridge = p.eng.bridge_pulses_left()
    done0 = p.mech.done
    # The shell oversleeps two hours: the pulses due then are skipped, not moved; only those
    # due in the last late_ms may still go.
    p.sup.advance(p.t + 2 * HOUR, p.mech, p.buzzer)
    moved = p.mech.done - done0
    assert p.sup.undelivered_pulses > 0
    assert p.eng.bridge_pulses_left() == bridge - moved
    assert p.limiter._bridge_left == bridge - moved
    assert p.eng.conc == 2000


@pytest.mark.parametrize(
    "kw",
    [{"stall_count": 0}, {"backoff_min_ms": 0}, {"backoff_min_ms": 10, "backoff_max_ms": 9},
     {"late_ms": -1}, {"tol_pct": 101}, {"dead_volume_nl": -1}, {"refill_timeout_ms": 0}],
)  # fmt: skip
def test_settings_out_of_range_are_refused_at_construction(kw):
    from boards.sim import board
    from pump import supervisor as S

    with pytest.raises(ValueError):
        S.Settings(kw.pop("dead_volume_nl", board.PUMP_DEAD_VOLUME_NL), **kw)
