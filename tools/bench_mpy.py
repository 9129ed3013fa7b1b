# Dosing-core benchmark that runs UNDER MicroPython (tools/bench.py invokes it): pulse throughput
# and heap bytes per pulse. Usage: micropython tools/bench_mpy.py [dir-of-.mpy-files]

import gc
import json
import sys
import time

RATE_NG_PER_DAY = 350_000
CONC = 500
DAYS_PER_RUN = 60  # about 63,600 pulses a run on the reference rig
RUNS = 5
ALLOC_PULSES = 10_000


def use_compiled(path):
    """Put a directory of .mpy files first on sys.path: one holding pump/, or pump/ itself."""
    path = path.rstrip("/") or "/"
    if path.endswith("/pump"):
        path = path[: -len("/pump")] or "/"
    sys.path.insert(0, path)


def reference_engine(CAL, E, L, RX, Limiter):
    calib = CAL.from_geometry(14500, 800, 200, 16, 16)
    lim = L.ClinicianLimits(
        L.HARD_MAX_24H_NG, L.HARD_MAX_BOLUS_NG, L.HARD_MAX_RATE_NL_PER_DAY, L.DOSE_STEP_PCT_MAX
    )
    eng = E.Engine(calib, Limiter(calib, lim, CONC), lim, CONC)
    bad = eng.program(RX.continuous(CONC, RATE_NG_PER_DAY), confirm=True)
    if bad is not None:
        raise SystemExit("reference programme refused: %d %s" % (bad.code, bad.field))
    return eng


def timed_run(eng, E, days):
    """Drive the engine as the firmware loop does (wait_ms, then fire) over `days` simulated days;
    returns (pulses, elapsed microseconds). Boundaries are included: they are part of the work."""
    end = eng.now_ms() + days * 86_400_000
    pulses = 0
    pulse = E.EV_PULSE
    t0 = time.ticks_us()
    while eng.next_due_ms() <= end:
        eng.wait_ms()
        if eng.fire() == pulse:
            pulses += 1
    return pulses, time.ticks_diff(time.ticks_us(), t0)


def alloc_per_pulse(eng):
    """Heap bytes allocated by pulses alone over ALLOC_PULSES pulses, with gc disabled.

    Boundaries (midnight here) may allocate by design; their bytes are measured and excluded.
    """
    gc.collect()
    gc.disable()
    try:
        pulses = 0
        boundary_bytes = 0
        start = gc.mem_alloc()
        while pulses < ALLOC_PULSES:
            if eng._pulse_at > eng._bound_at:
                before = gc.mem_alloc()
                eng.fire()
                boundary_bytes += gc.mem_alloc() - before
                continue
            eng.fire()
            pulses += 1
        used = gc.mem_alloc() - start - boundary_bytes
    finally:
        gc.enable()
    return used, pulses, boundary_bytes


def main():
    if len(sys.argv) > 1:
        use_compiled(sys.argv[1])
    from pump import calib as CAL
    from pump import engine as E
    from pump import limits as L
    from pump import rx as RX
    from pump.limiter import Limiter

    source = E.__file__
    print("core imported from %s" % source)
    if not source.endswith(".mpy"):
        # Per-pulse allocation does not depend on it, but a board runs compiled code.
        print("warning: the core was imported from .py, not .mpy")

    rates = []
    for _ in range(RUNS):
        eng = reference_engine(CAL, E, L, RX, Limiter)
        gc.collect()
        pulses, us = timed_run(eng, E, DAYS_PER_RUN)
        rates.append(pulses * 1_000_000 // max(1, us))
        print("run: %d pulses in %d us" % (pulses, us))
    rates.sort()
    median = rates[len(rates) // 2]

    eng = reference_engine(CAL, E, L, RX, Limiter)
    eng.run_until(86_400_000 + 60_000)  # warm up past a midnight first
    used, pulses, boundary_bytes = alloc_per_pulse(eng)
    print("alloc: %d bytes over %d pulses (%d bytes at boundaries, excluded)" % (
        used, pulses, boundary_bytes))  # fmt: skip

    print(json.dumps({
        "dosing.pulses_per_s_micropython": median,
        "dosing.alloc_bytes_per_pulse_micropython": used / pulses,
    }))  # fmt: skip


main()
