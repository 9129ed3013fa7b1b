# Under MicroPython: the supervisor's steady-state pulse path (next_wake_ms() and advance() at
# each wake-up, healthy mechanism, no alarm latched) allocates nothing, from .py and from .mpy.
# req: SR-33, SR-34

import gc
import sys

import micropython
from _compiled import run_both

WARMUP_MS = 2 * 86_400_000 + 3_600_000  # two midnights and the first battery samples
LOCKED_WAKES = 3000
MEASURED_WAKES = 1000
HEALTHY_UV = 1_500_000


def load():
    """Import the core and the sim board afresh (from whatever sys.path finds first)."""
    for name in list(sys.modules):
        if name in ("pump", "boards", "boards.sim") or name.startswith(("pump.", "boards.")):
            del sys.modules[name]
    from boards.sim import board, hw
    from pump import alarms as A
    from pump import battery as B
    from pump import engine as E
    from pump import limits as L
    from pump import reservoir as RS
    from pump import rx as RX
    from pump import supervisor as S
    from pump.limiter import Limiter

    return A, B, E, L, RS, RX, S, Limiter, board, hw


class Buzzer:
    def __init__(self):
        self.sets = 0

    def set(self, on):
        self.sets += 1


class Rig:
    def __init__(self, mods, batch=0):
        A, B, E, L, RS, RX, S, Limiter, board, hw = mods
        self.E = E
        cal = board.calibration()
        lim = L.ClinicianLimits(L.HARD_MAX_24H_NG, L.HARD_MAX_BOLUS_NG,
                                L.HARD_MAX_RATE_NL_PER_DAY, 100)  # fmt: skip
        self.li = Limiter(cal, lim, 500)
        self.eng = E.Engine(cal, self.li, lim, 500)
        # A 40 mL reservoir: the low threshold is weeks away, so no alarm comes up here.
        self.res = RS.Reservoir(cal, 40_000_000, 2_000_000, 40_000_000)
        self.bat = B.Monitor(board.CELL, board.ENERGY, board.ADC_CAL)
        self.alarms = A.Alarms()
        self.sup = S.Supervisor(self.eng, self.res, self.bat, self.alarms,
                                S.Settings(board.PUMP_DEAD_VOLUME_NL,
                                           batch_pulses=batch))  # fmt: skip
        assert self.sup.program(RX.continuous(500, 350_000), confirm=True) is None
        self.mech = hw.Mechanism()
        self.buzzer = Buzzer()
        self.t = 0
        self.checkpoints = 0

    def checkpoint_if_due(self):
        # The shell's save itself is I/O and may allocate; the supervisor's side must not.
        if self.sup.checkpoint_due():
            self.sup.checkpointed()
            self.checkpoints += 1

    def sample_if_due(self):
        if self.sup.battery_due(self.t):
            self.sup.battery_sample(self.t, HEALTHY_UV * 16, 16)

    def wake(self):
        """One whole wake-up, unmeasured: advance, then the battery sample if due."""
        self.checkpoint_if_due()
        self.t = self.sup.next_wake_ms()
        self.sup.advance(self.t, self.mech, self.buzzer)
        self.sample_if_due()

    def warm_up(self):
        while self.t < WARMUP_MS:
            self.wake()
        assert not self.alarms.active(), self.alarms.active()

    def boundary_next(self):
        # The wake-up is for a segment boundary (midnight here), which may allocate.
        eng = self.eng
        return eng._pulse_at > eng._bound_at and eng.next_due_ms() == self.sup.next_wake_ms()


def locked_run(rig, n, out):
    """n wake-ups: next_wake_ms() and advance() each under heap_lock(), anything else (battery
    sample, boundaries) unlocked. out counts MemoryErrors per call."""
    sup = rig.sup
    wakes = 0
    while wakes < n:
        if rig.boundary_next():
            rig.wake()
            continue
        micropython.heap_lock()
        try:
            rig.checkpoint_if_due()
            t = sup.next_wake_ms()
        except MemoryError:
            t = -1
        micropython.heap_unlock()
        if t < 0:
            out["next_wake_ms"] += 1
            t = sup.next_wake_ms()
        rig.t = t
        micropython.heap_lock()
        try:
            sup.advance(t, rig.mech, rig.buzzer)
            ok = True
        except MemoryError:
            ok = False
        micropython.heap_unlock()
        if not ok:
            out["advance"] += 1
            # The engine may have fired before the allocation: finish the wake-up unlocked.
            sup.advance(t, rig.mech, rig.buzzer)
        rig.sample_if_due()
        wakes += 1


def measured_run(rig, n):
    """Bytes allocated by n steady-state wake-ups (next_wake_ms and advance), gc disabled."""
    sup = rig.sup
    gc.collect()
    gc.disable()
    used = 0
    try:
        wakes = 0
        while wakes < n:
            if rig.boundary_next():
                rig.wake()
                continue
            before = gc.mem_alloc()
            rig.checkpoint_if_due()
            rig.t = sup.next_wake_ms()
            sup.advance(rig.t, rig.mech, rig.buzzer)
            used += gc.mem_alloc() - before
            rig.sample_if_due()
            wakes += 1
    finally:
        gc.enable()
    return used


def locate(rig):
    """Which parts of a wake-up allocate, for the report when the whole does."""
    sup = rig.sup
    found = []

    def probe(name, f):
        micropython.heap_lock()
        try:
            f()
        except MemoryError:
            found.append(name)
        micropython.heap_unlock()

    t = sup.next_wake_ms()
    day = t // 86_400_000
    tod = t % 86_400_000
    probe("Supervisor._deliver()", lambda: sup._deliver(day, tod, rig.mech))
    probe("Engine.run_until()", lambda: rig.eng.run_until(t))
    probe("Supervisor._timers()", lambda: sup._timers(t))
    probe("Alarms.tick()", lambda: rig.alarms.tick(t, rig.buzzer))
    probe("Alarms.next_wake_ms()", rig.alarms.next_wake_ms)
    probe("Supervisor.next_wake_ms()", sup.next_wake_ms)
    tw = sup.next_wake_ms()
    probe("Supervisor.advance()", lambda: sup.advance(tw, rig.mech, rig.buzzer))
    probe("Supervisor._battery_due_at()", sup._battery_due_at)
    probe("Engine.next_due_ms()", rig.eng.next_due_ms)
    probe("Supervisor.battery_due()", lambda: sup.battery_due(t))
    return found


def run_suite(kind):
    mods = load()
    E = mods[2]
    S = mods[6]
    if kind == "mpy":
        for mod in (E, S):
            assert mod.__file__.endswith(".mpy"), "%s came from %s" % (mod.__name__, mod.__file__)
    rig = Rig(mods)
    rig.warm_up()
    failures = []
    done0 = rig.mech.done
    used = measured_run(rig, MEASURED_WAKES)
    out = {"next_wake_ms": 0, "advance": 0}
    locked_run(rig, LOCKED_WAKES, out)
    pulses = rig.mech.done - done0
    print("%s: %d + %d wake-ups, %d pulses, %d bytes, MemoryError in next_wake_ms %d, "
          "advance %d" % (kind, MEASURED_WAKES, LOCKED_WAKES, pulses, used,
                          out["next_wake_ms"], out["advance"]))  # fmt: skip
    if used or out["next_wake_ms"] or out["advance"]:
        failures.append("%s: the steady-state wake-up allocates (%d bytes over %d); parts that "
                        "allocate: %s" % (kind, used, MEASURED_WAKES,
                                          ", ".join(locate(rig))))  # fmt: skip
    if pulses < MEASURED_WAKES // 2 or rig.alarms.active() or rig.mech.done != rig.res.pulses:
        failures.append("%s: not a healthy steady state (%d pulses, alarms %s)" % (
            kind, pulses, rig.alarms.active()))  # fmt: skip
    # An alarm can stay latched for months (ERI, acknowledged, its condition present) and sound
    # every minute: the wake-ups that play its pattern must not allocate either.
    A = mods[0]
    rig.alarms.condition(A.BATT_ERI, True, rig.t)
    rig.alarms.acknowledge(A.BATT_ERI, rig.t)
    sets0 = rig.buzzer.sets
    used = measured_run(rig, MEASURED_WAKES)
    out = {"next_wake_ms": 0, "advance": 0}
    locked_run(rig, LOCKED_WAKES, out)
    print("%s with an alarm latched: %d bytes, MemoryError in next_wake_ms %d, advance %d, "
          "buzzer changes %d" % (kind, used, out["next_wake_ms"], out["advance"],
                                 rig.buzzer.sets - sets0))  # fmt: skip
    if used or out["next_wake_ms"] or out["advance"]:
        failures.append("%s: wake-ups with an alarm latched allocate (%d bytes); parts that "
                        "allocate: %s" % (kind, used, ", ".join(locate(rig))))  # fmt: skip
    if rig.buzzer.sets - sets0 < 2 * len(A.PATTERNS[A.MEDIUM]):
        failures.append("%s: the latched alarm did not sound" % kind)
    # With storage attached, delivery pauses after each batch until the shell has saved a
    # checkpoint: that wake-up and the hand-over must not allocate either.
    rig = Rig(mods, batch=4)
    rig.warm_up()
    c0 = rig.checkpoints
    used = measured_run(rig, MEASURED_WAKES)
    out = {"next_wake_ms": 0, "advance": 0}
    locked_run(rig, LOCKED_WAKES, out)
    print("%s with checkpoint batches of 4: %d bytes, MemoryError in next_wake_ms %d, advance "
          "%d, checkpoints %d" % (kind, used, out["next_wake_ms"], out["advance"],
                                  rig.checkpoints - c0))  # fmt: skip
    if used or out["next_wake_ms"] or out["advance"]:
        failures.append("%s: wake-ups with checkpoint batches allocate (%d bytes); parts that "
                        "allocate: %s" % (kind, used, ", ".join(locate(rig))))  # fmt: skip
    if rig.checkpoints - c0 < 2 or rig.mech.done != rig.res.pulses:
        failures.append("%s: no checkpoint batches were exercised" % kind)
    src = E.__file__
    return failures, src[: src.rfind("/")]


run_both(run_suite)
