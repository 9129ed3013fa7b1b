# The sim board's plant model: volume conservation through the compliance, the end stop, the
# force limit under occlusion (and the firmware's stall alarm it causes), and the line's drug.

from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from boards.sim import board, vpump
from boards.sim.plant import FORCE_LIMIT_NL, TAU_MS, Plant
from pump import alarms as A
from pump import rx as RX

PULSE_NL = Fraction(board.calibration().ml_num * 10**6, board.calibration().ml_den)
LINE_NL = board.PUMP_DEAD_VOLUME_NL


class Clock:
    def __init__(self):
        self.t = 0

    def __call__(self):
        return self.t


def rig(**kw):
    clock = Clock()
    return Plant(clock=clock, **kw), clock


def exact_nl(p, units):
    return Fraction(units, p.unit_den)


def test_units_are_the_calibration_exactly():
    p, _ = rig()
    assert exact_nl(p, p.pulse_u) == PULSE_NL
    assert exact_nl(p, p.ustep_u) * board.USTEPS_PER_PULSE == PULSE_NL
    # The syringe holds the reservoir, in whole pulses, and no pulse more.
    travel_nl = exact_nl(p, p.ustep_u * p.travel)
    assert board.RESERVOIR_NL[board.VARIANT] <= travel_nl < board.RESERVOIR_NL["20ml"] + PULSE_NL
    assert p.travel % board.USTEPS_PER_PULSE == 0


# One step of a random plant history: (ms to wait, action).
_ACTIONS = st.sampled_from(["pulse", "pulse", "pulse", "occlude", "clear", "jam", "free"])


@given(
    tau=st.integers(1, 200_000),
    steps=st.lists(st.tuples(st.integers(0, 300_000), _ACTIONS), max_size=80),
    fill_pulses=st.integers(0, 60),
)
def test_volume_is_conserved_and_flows_out_monotonically(tau, steps, fill_pulses):
    p, clock = rig(tau_ms=tau, force_limit_nl=6_000)
    p.refill(fill_pulses * 661, 500)
    moved = 0
    last_out = 0
    for wait, action in steps:
        clock.t += wait
        before_pos = p.pos
        if action == "pulse":
            ok = p.pulse()
            moved += (p.pos - before_pos) * p.ustep_u
            # A confirmed pulse moved exactly one pulse; a failed one at most to the end stop.
            assert (p.pos - before_pos == p.usteps_per_pulse) == ok
        elif action == "occlude":
            p.occlude()
        elif action == "clear":
            p.clear_occlusion()
        elif action == "jam":
            p.jam()
        else:
            p.free()
        for dt in (0, 1, tau, 10 * tau):
            out = p.out_u(clock.t + dt)
            stored = p.pushed_u - out
            assert 0 <= stored <= p.pushed_u
            if p.occluded:
                assert out == p.out_u(clock.t)  # nothing leaves a blocked outlet
        out_now = p.out_u(clock.t)
        assert out_now >= last_out
        last_out = out_now
        assert p.pushed_u == moved
        assert p.stored_u <= p.limit_u
    assert p.done == len(p.doses)


def test_compliance_is_a_first_order_lag():
    p, clock = rig()
    p.refill(5_000_000, 500)
    clock.t = 1_000
    assert p.pulse()
    assert p.out_nl(1_000) == 0
    # After one time constant 1 - 1/e of the pulse has come out, after ten all but e^-10.
    at_tau = Fraction(p.out_u(1_000 + TAU_MS), p.pulse_u)
    assert abs(at_tau - Fraction(6321206, 10**7)) < Fraction(1, 1000)
    assert p.out_nl(1_000 + 10 * TAU_MS) >= int(PULSE_NL * Fraction(99995, 100000)) - 1
    assert p.out_u(1_000 + 40 * TAU_MS) == p.pushed_u


def test_a_question_about_the_past_is_refused():
    p, clock = rig()
    p.refill(1_000_000, 500)
    clock.t = 5_000
    p.pulse()
    with pytest.raises(ValueError):
        p.out_nl(4_999)


def test_the_end_stop_fails_the_pulse_that_reaches_it():
    p, clock = rig()
    whole = 5
    p.refill(int(PULSE_NL * whole) + 200, 500)  # 5 pulses and a part of one (4 microsteps)
    part = p.travel - p.pos - whole * p.usteps_per_pulse
    assert 0 < part < p.usteps_per_pulse
    for _ in range(whole):
        clock.t += 60_000
        assert p.pulse()
    clock.t += 60_000
    assert not p.pulse()  # the plunger runs into the stop with the part that was left
    assert p.end_stops == 1 and p.pos == p.travel and p.content_nl() == 0
    assert p.pushed_u == (whole * p.usteps_per_pulse + part) * p.ustep_u
    clock.t += 60_000
    assert not p.pulse()  # and stays there: nothing more moves
    assert p.pushed_u == (whole * p.usteps_per_pulse + part) * p.ustep_u
    assert p.done == whole and p.end_stops == 2


def test_a_fill_beyond_the_travel_is_refused():
    p, _ = rig()
    with pytest.raises(ValueError):
        p.refill(board.RESERVOIR_NL[board.VARIANT] + 1_000, 500)


def test_occlusion_builds_to_the_force_limit_then_steps_are_lost_and_clearing_releases():
    p, clock = rig()
    p.refill(10_000_000, 500)
    clock.t = 1_000
    p.occlude()
    ok = 0
    while True:
        clock.t += 80_000
        if not p.pulse():
            break
        ok += 1
    # Every pulse up to the force limit went into the compliance; the next lost its steps.
    assert ok == FORCE_LIMIT_NL * p.unit_den // p.pulse_u
    assert p.lost == 1 and p.out_u(clock.t) == 0
    stored = p.stored_u
    assert stored == ok * p.pulse_u
    clock.t += 3_600_000
    assert not p.pulse() and p.stored_u == stored  # still blocked: nothing came out
    p.clear_occlusion()
    clock.t += 40 * TAU_MS
    assert p.out_u(clock.t) == stored  # the stored volume came out of the tip
    assert p.pulse()


def test_the_line_delivers_the_old_strength_until_it_is_flushed():
    p, clock = rig(line_conc=500)
    p.refill(5_000_000, 1000)
    doses = []
    n = 0
    while exact_nl(p, p.pushed_u) < LINE_NL + 3 * PULSE_NL:
        clock.t += 30_000
        assert p.pulse()
        doses.append(p.doses[-1])
        n += 1
    old = p.pulse_u * 500
    new = p.pulse_u * 1000
    whole_old = int(LINE_NL / PULSE_NL)  # pulses that push only old drug
    assert doses[:whole_old] == [old] * whole_old
    mixed = doses[whole_old]
    assert old < mixed < new
    assert doses[whole_old + 1 :] == [new] * (n - whole_old - 1)
    # Exactly the line's volume came out at the old strength.
    assert sum(doses) == LINE_NL * p.unit_den * 500 + (p.pushed_u - LINE_NL * p.unit_den) * 1000
    assert p.line() == [(LINE_NL, 1000)]


def test_the_mechanism_interface_of_the_plain_model():
    p, clock = rig()
    p.refill(1_000_000, 500)
    p.fail_next(2)
    assert not p.pulse() and not p.pulse() and p.pulse()
    p.jam()
    assert not p.pulse()
    p.free()
    assert p.pulse()
    assert p.attempts == 5 and p.done == 2 and p.pushed_u == 2 * p.pulse_u


@pytest.mark.req("SR-13")
def test_an_occlusion_makes_the_firmware_raise_its_stall_alarm():
    plant = Plant()
    vp = vpump.VirtualPump(mech=plant)
    vp.boot()
    vp.run_until(1_000)
    lim = board.FIRST_BOOT[0]
    requests = [("set_clock", 1_736_150_400_000), ("refill_begin", 0)]
    for name, *args in requests:
        assert vp.submit(name, *args) is None
        vp.run_until(vp.loop.now + 1_000)
    plant.refill(10_000_000, 500)
    for name, *args in [("refill_fill", 10_000_000, 500), ("refill_commit",)]:
        assert vp.submit(name, *args) is None
        vp.run_until(vp.loop.now + 1_000)
    for cid, *_ in vp.sup.alarms.active():
        vp.submit("acknowledge", cid)
    rx = RX.continuous(500, 400_000)
    assert RX.validate(rx, lim) is None
    assert vp.submit("program", rx, True) is None
    hour = 3_600_000
    vp.run_until(vp.loop.now + 6 * hour)
    assert not vp.sup.alarms.is_latched(A.STALL)
    plant.occlude()
    vp.run_until(vp.loop.now + 6 * hour)
    assert plant.lost >= 1 and vp.sup.failed_pulses >= 2
    assert vp.sup.alarms.is_latched(A.STALL) and vp.sup.stalled()
    out_blocked = plant.out_u()
    stored = plant.stored_u
    assert stored + plant.pulse_u > plant.limit_u  # at the force limit
    plant.clear_occlusion()
    vp.run_until(vp.loop.now + 3 * hour)  # the back-off retries find the line open again
    assert not vp.sup.stalled()
    assert plant.out_u() >= out_blocked + stored  # the stored volume came out
    vp.stop()
