# Acceptance scenarios through the whole application on the sim board (issue 5): a hung task, a
# stall, a clock jump and a power cut mid-bolus, each against its unfaulted twin. The scenarios
# are host_tests/appscen.py; host_tests/mpy/test_app_mpy.py runs them under MicroPython.

import functools

import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from host_tests import appscen as S
from pump import alarms as A

SEC, MIN, HOUR, DAY = S.SEC, S.MIN, S.HOUR, S.DAY
HEAVY = max(4, settings.default.max_examples // 16)
SLOW = [HealthCheck.too_slow]
# Each example runs the whole pump for days: a failure is reported as found, not shrunk.
NO_SHRINK = (Phase.explicit, Phase.reuse, Phase.generate)


@functools.cache
def twin(until_ms, actions=()):
    """The unfaulted run of the reference programme (with the given requests), kept per test
    process: it is deterministic."""
    return S.Scenario().play(list(actions), until_ms).finish()


def _ok(fail):
    assert fail == [], "\n".join(fail)


# ---- a: a hung task -------------------------------------------------------------------------


@pytest.mark.req("SR-21", "SR-20", "SR-45", "SR-14")
@pytest.mark.parametrize("task", S.TASKS)
@settings(max_examples=HEAVY, suppress_health_check=SLOW, phases=NO_SHRINK)
@given(at_ms=st.integers(6 * HOUR, 22 * HOUR))
@example(at_ms=20 * HOUR + 7_001)
def test_hung_task_restarts_the_pump_and_therapy_resumes(task, at_ms):
    # The watchdog restarts the board, the state comes back from flash and the programme goes on
    # at its own times: the pulses due while hung and rebooting are skipped, never made up, and
    # none goes out that the unfaulted twin did not give.
    until = S.HUNG_UNTIL
    fail, _out = S.hung_task(task, at_ms, until, twin(until))
    _ok(fail)


# ---- b: a stall ------------------------------------------------------------------------------


@pytest.mark.req("SR-13", "SR-23", "SR-24", "SR-14")
@settings(max_examples=HEAVY, suppress_health_check=SLOW, phases=NO_SHRINK)
@given(
    jam_ms=st.integers(4 * HOUR, 20 * HOUR),
    jam_for_ms=st.integers(20 * MIN, 8 * HOUR),
    press_during=st.booleans(),
)
@example(jam_ms=20 * HOUR + 777, jam_for_ms=3 * HOUR, press_during=False)
@example(jam_ms=10 * HOUR + 1_234, jam_for_ms=50 * MIN, press_during=True)
def test_stall_raises_its_alarm_until_cleared_and_acknowledged(jam_ms, jam_for_ms, press_during):
    # The high-priority pattern plays from the stall on; the button acknowledges it, and it ends
    # once the mechanism works again (in either order). Delivery resumes on the programme.
    until = S.STALL_UNTIL
    fail, _out = S.stall(jam_ms, jam_for_ms, press_during, until, twin(until))
    _ok(fail)


# ---- c: a clock jump -------------------------------------------------------------------------

REBOOTS = st.sampled_from([None, ("cut", 0), ("cut", 10 * MIN), ("hang", "dosing"),
                           ("hang", "storage")])  # fmt: skip


@pytest.mark.req("SR-40", "SR-44", "SR-21", "SR-43")
@settings(max_examples=2 * HEAVY, suppress_health_check=SLOW, phases=NO_SHRINK)
@given(
    jump_days=st.integers(1, 400) | st.integers(-400, -1),
    at_ms=st.integers(6 * HOUR, 30 * HOUR),
    reboot=REBOOTS,
    reboot_after_ms=st.integers(SEC, 3 * HOUR),
    set_after_ms=st.none() | st.integers(10 * MIN, DAY),
)
# Seen at the next RTC check, no restart; and the clinician sets the true time afterwards.
@example(jump_days=3, at_ms=DAY + 3 * HOUR + 4321, reboot=None, reboot_after_ms=SEC,
         set_after_ms=None)  # fmt: skip
@example(jump_days=-3, at_ms=DAY + 3 * HOUR + 4321, reboot=None, reboot_after_ms=SEC,
         set_after_ms=30 * MIN)  # fmt: skip
# A restart before the pump saw the jump: forward, it is taken for an outage; back, the clock
# cannot be trusted and the rate is held until the clinician sets it (or never).
@example(jump_days=3, at_ms=DAY + 3 * HOUR + 4321, reboot=("cut", 0), reboot_after_ms=SEC,
         set_after_ms=None)  # fmt: skip
@example(jump_days=-3, at_ms=DAY + 3 * HOUR + 4321, reboot=("cut", 0), reboot_after_ms=SEC,
         set_after_ms=30 * MIN)  # fmt: skip
@example(jump_days=-18, at_ms=6 * HOUR + 40 * MIN, reboot=("cut", 0), reboot_after_ms=19_040,
         set_after_ms=None)  # fmt: skip
def test_clock_jump_gives_no_extra_dose(jump_days, at_ms, reboot, reboot_after_ms,
                                        set_after_ms):  # fmt: skip
    until = S.JUMP_UNTIL
    fail, _out = S.clock_jump(jump_days * DAY, at_ms, reboot, reboot_after_ms, set_after_ms,
                              until, twin(until))  # fmt: skip
    _ok(fail)


# ---- d: a power cut mid-bolus ----------------------------------------------------------------

KINDS = ("clinician_bolus", "patient")
# Every flash operation of the bolus in the long profile (`make test-long`), every 7th in CI.
STRIDE = 1 if settings.default.max_examples > 1000 else 7
BOLUS_AT, BOLUS_UNTIL = S.BOLUS_AT, S.BOLUS_UNTIL
bolus_ops = functools.cache(S.bolus_ops)


def _bolus_cut(kind, op, tear, down_ms):
    fail, _out = S.bolus_cut(kind, BOLUS_AT, op, tear, down_ms, BOLUS_UNTIL,
                            twin(BOLUS_UNTIL, ((BOLUS_AT, kind, None),)),
                            twin(BOLUS_UNTIL))  # fmt: skip
    _ok(fail)


@pytest.mark.req("SR-45", "SR-43", "SR-20")
@pytest.mark.parametrize("kind", KINDS)
def test_power_cut_mid_bolus_stride(kind):
    # Flash operations at a stride while the bolus runs (its request's commit included), torn
    # or not, with outages of up to 10 min: the bolus is never given twice.
    first, last = bolus_ops(kind)
    assert last - first > 100  # several commits: the request's and the batches'
    ops = list(range(first, last + 1, STRIDE))
    for i, op in enumerate(ops):
        _bolus_cut(kind, op, 0 if i % 2 else 16, (i % 3) * 5 * MIN)


@pytest.mark.req("SR-45", "SR-43", "SR-20")
@settings(max_examples=2 * HEAVY, suppress_health_check=SLOW, phases=NO_SHRINK)
@given(data=st.data(), kind=st.sampled_from(KINDS), tear=st.sampled_from([0, 1, 16, 2048]),
       down_ms=st.integers(0, 2 * HOUR))  # fmt: skip
def test_power_cut_mid_bolus_sampled(data, kind, tear, down_ms):
    first, last = bolus_ops(kind)
    op = data.draw(st.integers(first, last), label="op")
    _bolus_cut(kind, op, tear, down_ms)


# ---- requests act when they are made ---------------------------------------------------------


@pytest.mark.req("SR-08", "SR-40")
@settings(max_examples=HEAVY, suppress_health_check=SLOW, phases=NO_SHRINK)
@given(kind=st.sampled_from(["clinician_bolus", "patient", "set_clock"]),
       offset_ms=st.integers(0, 10 * MIN))  # fmt: skip
@example(kind="clinician_bolus", offset_ms=60_000)
@example(kind="set_clock", offset_ms=50_000)
def test_a_request_between_wakeups_acts_at_its_own_time(kind, offset_ms):
    # A request made while the dosing task sleeps between pulses starts at the time it was made:
    # a bolus's first pulses are not found overdue (skipped, with a clock alarm), and a clock
    # set then reads the time it was given.
    at = DAY + 4 * HOUR + 999 + offset_ms
    out = S.Scenario().play([(at, kind, None)], at + 2 * HOUR).finish()
    assert out.refused == []
    assert out.events("pulses_skipped_late") == []
    assert out.alarm_events(A.CLOCK) == []
    assert out.events("rtc_jump") == []
    if kind == "set_clock":
        assert out.events("wall_clock")[-1][1] == [S.W0 + at, S.W0 + at]
    else:
        starts = [w for w, args in out.events("bolus_start") if args[0] != "periodic"]
        assert starts == [S.W0 + at]


# ---- requests are answered only once saved --------------------------------------------------


@pytest.mark.req("SR-32", "SR-43")
def test_a_request_that_cannot_be_saved_is_answered_not_saved():
    # Storage fails at the commit of an accepted request: the change runs (undoing it would be
    # a change nobody asked for), and the programmer is told it is not saved, never "done".
    import app as APP

    sc = S.Scenario()
    vp = sc.vp
    a = vp.app
    sup = vp.sup
    out = []

    def broken(_payload):
        raise OSError(28, "no space left on the device")

    def ask(name, *args):
        async def go():
            out.append(await a.request(name, *args))

        vp.loop.create_task(go())
        vp.run_until(vp.loop.now + SEC)
        return out[-1]

    assert ask("clinician_bolus", *S.CLINICIAN_BOLUS) is None  # saved: the ordinary answer
    a.store.state.save = broken
    assert ask("set_low_threshold", 3_000_000) == APP.NOT_SAVED
    assert sup.reservoir.low_nl == 3_000_000  # applied all the same
    assert not sup.storage_ok
    assert any(r[0] == A.SELF_TEST for r in sup.alarms.active())
    # While storage fails, a therapy change is refused with its reason and changes nothing.
    bad = ask("program", S.DEMO, True)
    assert bad is not None and bad != APP.NOT_SAVED and bad.code != 0
