# Under MicroPython: the application's dosing wake-up (App.dose: advance, hand-offs to the
# other tasks, the next wake time) allocates nothing on the flex-schedule demo, under heap_lock.
# req: SR-33, SR-34

import micropython

from boards.sim import vpump
from pump import limits as L
from pump import rx as RX

DAY = L.DAY_MS
W0 = 19_700 * DAY
DEMO = RX.Prescription(500, [(0, 300_000), (5 * 60, 330_000), (7 * 60, 380_000),
                             (9 * 60, 400_000), (20 * 60, 320_000)],
                       [(7 * 60, 20_000, 1800)], patient_dose_ng=15_000,
                       patient_duration_s=600, patient_lockout_s=3 * 3600,
                       patient_max_per_24h=4)  # fmt: skip
LOCKED_WAKES = 3000


class Flag:
    # Stands in for the other tasks' flags: counting a hand-off allocates nothing.
    def __init__(self):
        self.n = 0

    def set(self):
        self.n += 1


def boundary_next(sup):
    # A programme-segment boundary (a step, midnight, a bolus edge) may allocate in the engine;
    # the supervisor's own allocation test draws the same line.
    eng = sup.engine
    return eng._pulse_at > eng._bound_at and eng.next_due_ms() == sup.next_wake_ms()


def main():
    vp = vpump.VirtualPump(blocks=64)
    vp.rtc.set_ms(W0)
    vp.boot()
    for req in (("refill_begin", 0), ("refill_fill", 20_000_000, 500), ("refill_commit",)):
        assert vp.submit(*req) is None
    vp.run_until(0)  # the tasks start, the button's interrupt is attached
    vp.button.press()
    assert vp.submit("program", DEMO, True) is None
    vp.run_until(DAY + 3_600_000)
    a = vp.app
    sup = a.sup
    assert not sup.alarms.active(), sup.alarms.active()
    # From here the test is the dosing task: the same calls, with the loop's clock set by hand.
    vp.loop.shutdown()
    vp.hal.motor.on_pulse = None
    flags = [Flag() for _ in a._flags]
    a._flags = flags
    clock = a.clock
    now = clock.now_ms()
    done0 = vp.mech.done
    wakes = failures = skipped = commits = samples = 0
    while wakes < LOCKED_WAKES:
        vp.loop.now = clock.boot_at + now
        if boundary_next(sup):
            t = a.dose(now)
            skipped += 1
        else:
            micropython.heap_lock()
            try:
                t = a.dose(now)
            except MemoryError:
                t = None
            micropython.heap_unlock()
            if t is None:
                failures += 1
                t = a.dose(now)
            wakes += 1
        # The other tasks' work, unlocked: a save is I/O and a battery sample is rare.
        if a._commit_wanted:
            assert a._commit()
            commits += 1
        if sup.battery_due(now):
            s, n = vp.hal.battery.sample(16)
            sup.battery_sample(now, s, n)
            samples += 1
        if t >= 0:
            now = t
    pulses = vp.mech.done - done0
    print("wakes", wakes, "boundaries", skipped, "pulses", pulses, "commits", commits,
          "samples", samples, "MemoryError", failures)  # fmt: skip
    assert pulses > 2000 and commits > 50 and samples > 0
    assert failures == 0, failures


main()
print("OK")
