# Benchmarks: measures the dosing engine (and, via bench_battery.py, the battery monitor and
# alarm latency; via bench_storage.py, power cuts and flash wear; via bench_sim.py, the virtual
# pump's speed and heap under MicroPython) and writes build/bench.json.
# Performance lives here, never in timed tests. Usage: python tools/bench.py [--programmes N]

import argparse
import json
import multiprocessing
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "firmware"), str(ROOT)]

from host_tests.exactness import GENEROUS, REF_CALIB, run_timeline, rx_valid  # noqa: E402
from host_tests.gen import RandomChooser, gen_timeline  # noqa: E402
from pump import engine as E  # noqa: E402
from pump import limits as L  # noqa: E402
from pump import rx as RX  # noqa: E402
from pump.limiter import Limiter  # noqa: E402
from tools import bench_battery, bench_link, bench_rig, bench_sim, bench_storage, mpy  # noqa: E402

OUT = ROOT / "build" / "bench.json"
HORIZON_DAYS = 180


def one_programme(seed):
    """Worst |delivered - programmed| (in quanta) of one random 180-day timeline."""
    g = RandomChooser(seed)
    first, cmds = gen_timeline(g, HORIZON_DAYS * L.DAY_MS, n_max=20)
    if not rx_valid(first):
        return None
    out = run_timeline(first, cmds, HORIZON_DAYS * L.DAY_MS)
    return (out.max_error, out.pulses, out.wakeups, out.blocked)


def exactness(n_programmes):
    results = []
    seed = 0
    with multiprocessing.Pool(2) as pool:
        while len(results) < n_programmes:
            batch = pool.map(one_programme, range(seed, seed + n_programmes))
            seed += n_programmes
            results.extend(r for r in batch if r is not None)
    results = results[:n_programmes]
    worst = max(r[0] for r in results)
    return {
        "dosing.max_error_quanta": float(worst),
        "dosing.max_error_below_one": 1 if worst < 1 else 0,
        "dosing.programmes_tested": len(results),
        "dosing.pulses_checked": sum(r[1] for r in results),
        "dosing.limiter_blocks_random": sum(r[3] for r in results),
    }


def reference_engine():
    limiter = Limiter(REF_CALIB, GENEROUS, 500)
    eng = E.Engine(REF_CALIB, limiter, GENEROUS, 500)
    assert eng.program(RX.continuous(500, 350_000), confirm=True) is None
    return eng


def wakeups():
    eng = reference_engine()
    eng.run_until(HORIZON_DAYS * L.DAY_MS)
    return {"dosing.wakeups_per_pulse": eng.wakeups / eng.delivered}


def cpython_rate():
    rates = []
    for _ in range(5):
        eng = reference_engine()
        t0 = time.perf_counter()
        pulses = 0
        while eng.day < 60:
            if eng.fire() == E.EV_PULSE:
                pulses += 1
        rates.append(pulses / (time.perf_counter() - t0))
    return statistics.median(rates)


def micropython_metrics():
    """Median over three interpreter processes of the in-process medians (see bench_mpy.py)."""
    runs = []
    for _ in range(3):
        code, out, err = mpy.run_micropython(
            ROOT / "tools" / "bench_mpy.py", [str(mpy.COMPILED / "firmware")], compiled=True
        )
        if code != 0:
            raise SystemExit("MicroPython benchmark failed: " + (err.strip() or out.strip()))
        runs.append(json.loads(out.strip().splitlines()[-1]))
    rate = statistics.median(r["dosing.pulses_per_s_micropython"] for r in runs)
    alloc = max(r["dosing.alloc_bytes_per_pulse_micropython"] for r in runs)
    return {
        "dosing.pulses_per_s_micropython": rate,
        "dosing.alloc_bytes_per_pulse_micropython": alloc,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description="Run the benchmarks into build/bench.json.")
    parser.add_argument("--programmes", type=int, default=200, help="random 180-day timelines")
    args = parser.parse_args(argv)
    metrics = {}
    t0 = time.perf_counter()
    print("exactness over %d random %d-day programmes ..." % (args.programmes, HORIZON_DAYS))
    metrics.update(exactness(args.programmes))
    metrics.update(wakeups())
    print("engine throughput under MicroPython and CPython ...")
    metrics.update(micropython_metrics())
    metrics["dosing.pulses_per_s_cpython"] = cpython_rate()
    metrics["dosing.micropython_to_cpython_ratio"] = (
        metrics["dosing.pulses_per_s_micropython"] / metrics["dosing.pulses_per_s_cpython"]
    )
    print("battery discharge and alarm latency simulations ...")
    metrics.update(bench_battery.metrics())
    print("storage power-cut sweep, random resets and flash wear ...")
    metrics.update(bench_storage.metrics())
    print("the virtual pump under MicroPython: speed, heap, compiled size ...")
    metrics.update(bench_sim.metrics())
    print("pumpbench sim: the gravimetric method on the virtual rig at 10 uL/h ...")
    metrics.update(bench_rig.metrics())
    print("the radio protocol: %d fuzzed frames at a pump in session ..." % bench_link.FRAMES)
    metrics.update(bench_link.metrics())
    OUT.parent.mkdir(exist_ok=True)
    old = json.loads(OUT.read_text()) if OUT.exists() else {}
    old.update(metrics)
    OUT.write_text(json.dumps(old, indent=2, sort_keys=True) + "\n")
    for k in sorted(metrics):
        v = metrics[k]
        print("  %-44s %r" % (k, v))  # repr: 0.99999999 must not print as 1
    print("wrote %s in %.0f s" % (OUT.relative_to(ROOT), time.perf_counter() - t0))
    # The figures are written either way; a broken invariant also fails the command.
    broken = [k for k in MUST_BE_ZERO if metrics.get(k)]
    for k in broken:
        print("bench: %s is %r; it must be 0." % (k, metrics[k]))
    return 1 if broken else 0


MUST_BE_ZERO = ("dosing.alloc_bytes_per_pulse_micropython", "battery.false_alarms",
                "storage.recovery_failures", "storage.random_reset_failures",
                "sim.heap_growth_bytes_30d", "sim.heap_growth_bytes_10_30d", "ble.fuzz_failures",
                "ble.replays_accepted")  # fmt: skip

if __name__ == "__main__":
    sys.exit(main())
