# Under MicroPython: the pulse path (Engine.fire() for a pulse, with Limiter.allow()) allocates
# nothing and keeps every integer it touches below 2**30, imported from .py and from .mpy files.
# req: SR-33

import gc
import sys

import micropython
from _compiled import run_both

# The ESP32's small ints are 31-bit signed: anything outside [-2**30, 2**30) is a heap-allocated
# long int there. The unix port's small ints reach 2**62, so heap_lock() alone cannot see that.
SMALL = 1 << 30
LOCKED_PULSES = 5000
MEASURED_PULSES = 1000

ENGINE_STATE = (
    "_t", "_w", "_f", "_d", "_q", "_r", "_dr", "_pulse_at", "_bound_at", "_bridge_left",
    "delivered", "wakeups", "day",
)  # fmt: skip
LIMITER_STATE = (
    "window_ng", "_acc", "_cur", "_pos", "_last_t", "_last_day", "_whole", "_remc",
    "_next_whole", "_next_remc", "_den", "_bridge_left", "pulses", "blocked", "min_gap_ms",
)  # fmt: skip


def load():
    """Import the dosing core afresh (from whatever sys.path now finds first)."""
    for name in list(sys.modules):
        if name == "pump" or name.startswith("pump."):
            del sys.modules[name]
    from pump import calib as CAL
    from pump import engine as E
    from pump import limiter as LM
    from pump import limits as L
    from pump import rx as RX

    class WatchedLimiter(LM.Limiter):
        # _set_dose() multiplies the calibration numerator up (num * conc * 1000): record any
        # such product made during a pulse, an intermediate the attribute checks cannot see.
        def __init__(self, calib, lim, conc):
            self.in_pulse = False
            self.dose_calc_in_pulse = 0
            LM.Limiter.__init__(self, calib, lim, conc)

        def _set_dose(self, conc):
            if self.in_pulse:
                v = self._num * conc * 1000
                if v > self.dose_calc_in_pulse:
                    self.dose_calc_in_pulse = v
            LM.Limiter._set_dose(self, conc)

    return CAL, E, L, RX, WatchedLimiter


def check(eng, li, out):
    """Record in out the first value outside the small-int range and the largest magnitude seen.

    out = [name or None, value, pulses delivered then, peak value, peak name]. Allocation-free:
    it runs under heap_lock(), so the loop below would raise MemoryError if it were not. The
    intermediates mirror the arithmetic of fire() and allow() and must follow it if it changes.
    """
    for name in ENGINE_STATE:
        note(out, name, getattr(eng, name))
    for name in LIMITER_STATE:
        note(out, name, getattr(li, name))
    note(out, "bucket[_pos]", li._buckets[li._pos])
    # Intermediates of the next pulse, as fire() and allow() compute them.
    note(out, "fire: _f - _dr", eng._f - eng._dr)
    note(out, "fire: _w + _q + 2", eng._w + eng._q + 2)
    note(out, "allow: _acc - _remc", li._acc - li._remc)
    note(out, "allow: window_ng + inc + 1", li.window_ng + li._whole + 2)
    note(out, "allow: gap", li._last_t + 86_400_000)
    note(out, "allow: _set_dose num * conc * 1000", li.dose_calc_in_pulse)
    if out[0] is not None and out[2] < 0:
        out[2] = eng.delivered


def note(out, name, v):
    # Magnitude on the ESP32's terms: -2**30 is still small, -2**30 - 1 is not.
    if v < 0:
        v = -v - 1
    if v > out[3]:
        out[3] = v
        out[4] = name
    if v >= SMALL and out[0] is None:
        out[0] = name
        out[1] = v


def ring_check(li, out):
    # Buckets change only at _pos between boundaries; the whole ring is checked at boundaries.
    b = li._buckets
    for i in range(len(b)):
        note(out, "bucket", b[i])


def locked_run(E, eng, li, n, out):
    """Fire n pulses under heap_lock(); boundaries run unlocked. Returns boundaries fired."""
    bounds = 0
    pulses = 0
    locked = True
    micropython.heap_lock()
    try:
        while pulses < n:
            if eng.wait_ms() < 0 and out[0] is None:
                out[0] = "wait_ms()"
                out[1] = eng.wait_ms()
            if eng._pulse_at > eng._bound_at:
                # A boundary (segment change, midnight, bolus end) may allocate; a pulse may not.
                micropython.heap_unlock()
                locked = False
                eng.fire()
                bounds += 1
                ring_check(li, out)
                micropython.heap_lock()
                locked = True
            else:
                li.in_pulse = True
                ev = eng.fire()
                li.in_pulse = False
                if ev != E.EV_PULSE and out[0] is None:
                    out[0] = "fire()"
                    out[1] = ev
                pulses += 1
            check(eng, li, out)
    finally:
        if locked:
            micropython.heap_unlock()
    return bounds


def measured_run(E, eng, li, n, out):
    """Fire n pulses with gc disabled; returns heap bytes allocated by the pulses alone."""
    gc.collect()
    gc.disable()
    try:
        pulses = 0
        boundary_bytes = 0
        start = gc.mem_alloc()
        while pulses < n:
            if eng._pulse_at > eng._bound_at:
                before = gc.mem_alloc()
                eng.fire()
                boundary_bytes += gc.mem_alloc() - before
                continue
            li.in_pulse = True
            eng.fire()
            li.in_pulse = False
            pulses += 1
            check(eng, li, out)
        used = gc.mem_alloc() - start - boundary_bytes
    finally:
        gc.enable()
    return used


def programmes(CAL, E, L, RX, Limiter):
    """Yield (label, engine, limiter, pulses for the locked run), each warmed up.

    An edge case yields (label, None, None, 0) if the firmware refuses to set it up at all,
    which is a valid way to keep its pulse path small.
    """
    ref = CAL.from_geometry(14500, 800, 200, 16, 16)
    generous = L.ClinicianLimits(
        L.HARD_MAX_24H_NG, L.HARD_MAX_BOLUS_NG, L.HARD_MAX_RATE_NL_PER_DAY, L.DOSE_STEP_PCT_MAX
    )
    day = L.DAY_MS

    def make(conc, calib=ref, lim=generous):
        li = Limiter(calib, lim, conc)
        return E.Engine(calib, li, lim, conc), li

    def ok(result):
        assert result is None, "request refused: %d %s" % (result.code, result.field)

    # The reference programme; the warm-up passes two midnights.
    eng, li = make(500)
    ok(eng.program(RX.continuous(500, 350_000), confirm=True))
    eng.run_until(2 * day + 3_600_000)
    yield "reference 350 ug/day at 500 ug/mL", eng, li, LOCKED_PULSES

    # The fastest basal there is: 1200 ug/day at 50 ug/mL is exactly the 1 mL/h hard maximum.
    eng, li = make(50)
    ok(eng.program(RX.continuous(50, 1_200_000), confirm=True))
    eng.run_until(day + 60_000)
    yield "fast 1200 ug/day at 50 ug/mL (1 mL/h)", eng, li, LOCKED_PULSES

    # Minimum-rate mode: about 9 pulses a day, so the run spans some 670 days of midnights.
    eng, li = make(500)
    ok(eng.program(RX.continuous(500, 350_000), confirm=True))
    eng.run_until(day)
    ok(eng.set_mode(E.MODE_MINIMUM))
    eng.run_until(3 * day)
    yield "minimum rate at 500 ug/mL", eng, li, LOCKED_PULSES

    # A bridge of 1 mL dead volume (1514 pulses): the measured batch runs inside it and the
    # locked run crosses its end, where the limiter switches its per-pulse dose.
    eng, li = make(500)
    ok(eng.program(RX.continuous(500, 350_000), confirm=True))
    eng.run_until(day + 3_600_000)
    ok(eng.change_concentration(RX.continuous(2000, 350_000), 1_000_000))
    yield "bridge 500 -> 2000 ug/mL, 1 mL dead volume", eng, li, LOCKED_PULSES

    # Edge: priming 1 mL at a clinician maximum of 23,778,720 nL/day (0.99 mL/h). Above
    # 2**29 credits per ms (23,755,350 nL/day on this rig) a carry of _f + _r would reach 2**30;
    # at this rate it does on the first pulse. Priming is 1513 pulses: a shorter locked run.
    label = "edge: priming 1 mL at 23,778,720 nL/day"
    lim = L.ClinicianLimits(L.HARD_MAX_24H_NG, L.HARD_MAX_BOLUS_NG, 23_778_720, 100)
    eng, li = make(500, lim=lim)
    if eng.prime(1_000_000) is None:
        yield label, eng, li, 500
    else:
        yield label, None, None, 0

    # Edge: a gravimetric calibration written as picolitres over 10**9 (660.521 nL a pulse),
    # so the limiter's dose remainder has a denominator of 10**9.
    label = "edge: measured calibration 660521/10**9, reference programme"
    try:
        eng, li = make(500, CAL.from_measured(660_521, 10**9, 16))
    except ValueError:
        yield label, None, None, 0
        return
    ok(eng.program(RX.continuous(500, 350_000), confirm=True))
    eng.run_until(day + 3_600_000)
    yield label, eng, li, LOCKED_PULSES


def run_suite(kind):
    """Run every programme; returns (failures, directory the core was imported from)."""
    CAL, E, L, RX, Limiter = load()
    if kind == "mpy":
        for mod in (CAL, E, L, RX):
            assert mod.__file__.endswith(".mpy"), "%s came from %s" % (mod.__name__, mod.__file__)
    failures = []
    for label, eng, li, locked_n in programmes(CAL, E, L, RX, Limiter):
        if eng is None:
            print("%s %s: refused at set-up" % (kind, label))
            continue
        out = [None, 0, -1, 0, ""]
        ring_check(li, out)
        check(eng, li, out)
        used = measured_run(E, eng, li, MEASURED_PULSES, out)
        if used:
            failures.append("%s %s: %d bytes allocated over %d pulses" % (
                kind, label, used, MEASURED_PULSES))  # fmt: skip
        try:
            bounds = locked_run(E, eng, li, locked_n, out)
        except MemoryError:
            failures.append("%s %s: the pulse path allocated under heap_lock()" % (kind, label))
            continue
        ring_check(li, out)
        print("%s %s: %d + %d pulses, %d boundaries, %d bytes/pulse, peak %d (%s)" % (
            kind, label, MEASURED_PULSES, locked_n, bounds, used // MEASURED_PULSES, out[3],
            out[4]))  # fmt: skip
        if out[0] == "wait_ms()":
            failures.append("%s %s: wait_ms() = %d (after pulse %d)" % (
                kind, label, out[1], out[2]))  # fmt: skip
        elif out[0] == "fire()":
            failures.append("%s %s: fire() returned event %d for a due pulse (after pulse %d)" % (
                kind, label, out[1], out[2]))  # fmt: skip
        elif out[0] is not None:
            failures.append("%s %s: %s = %d, not below 2**30 (after pulse %d)" % (
                kind, label, out[0], out[1], out[2]))  # fmt: skip
        if li.blocked or eng.fault:
            failures.append("%s %s: the limiter blocked a correct programme" % (kind, label))
    src = E.__file__
    return failures, src[: src.rfind("/")]


run_both(run_suite)
