# The storage part of `make bench`: the full power-cut sweep of the 7-day scenario (every op,
# clean and torn), 1000 random resets over 30 days, and flash wear of the reference programme.
# The harness is host_tests/powercut.py; the CI-sized runs are in host_tests/test_powercut.py.

import multiprocessing
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "firmware"), str(ROOT)]

from host_tests import powercut as PC  # noqa: E402

BLOCKS = 512  # the ESP32's default 2 MB vfs partition
DAYS = 7
RESET_DAYS = 30
RESETS = 1000
WEAR_DAYS = 30
STEADY_FROM_DAY = 7  # after commissioning and the scenario's week of requests
ERASE_BUDGET = 10_000  # cycles per block, as measured on ESP32-C3 parts
LIFE_DAYS = 365 * 8
CHUNKS = 48

_REC = None  # the recording, made before the pool forks so every worker shares it


def _sweep_job(points):
    t0 = time.perf_counter()
    n, failures, worst = PC.sweep(_REC, points, hours=1)
    return n, failures, worst, time.perf_counter() - t0


def _reset_job(seed):
    t0 = time.perf_counter()
    resets, failures, worst, _rig = PC.random_resets(RESETS, RESET_DAYS, BLOCKS, seed)
    return resets, failures, worst, time.perf_counter() - t0


def wear():
    """Erases and commits per day of the scenario's steady state (no resets), per block too."""
    flash = PC.RamFlash(PC.BLOCK, BLOCKS)
    rig = PC.Rig(flash)
    rig.first_boot()
    items = PC.plan(WEAR_DAYS)
    start = STEADY_FROM_DAY * PC.DAY
    rig.run_plan([x for x in items if x[0] < start], start)
    e0, c0, b0 = flash.erase_total, rig.commits, list(flash.erases)
    rig.run_plan([x for x in items if x[0] >= start], WEAR_DAYS * PC.DAY)
    days = WEAR_DAYS - STEADY_FROM_DAY
    per_block = [b - a for a, b in zip(b0, flash.erases, strict=True)]
    return (flash.erase_total - e0) / days, (rig.commits - c0) / days, max(per_block) / days


def metrics():
    global _REC
    t0 = time.perf_counter()
    _REC = PC.Recording(DAYS, BLOCKS)
    record_s = time.perf_counter() - t0
    points = _REC.cut_points()
    chunks = [points[i::CHUNKS] for i in range(CHUNKS)]
    with multiprocessing.Pool(2) as pool:
        resets = pool.map_async(_reset_job, [1])
        sweeps = pool.map(_sweep_job, chunks, chunksize=1)
        erases_day, commits_day, worst_block_day = wear()
        resets = resets.get()[0]
    n = sum(s[0] for s in sweeps)
    failures = [f for s in sweeps for f in s[1]]
    worst = max(max(s[2] for s in sweeps), resets[2])
    res = _REC.sup.reservoir
    out = {
        "storage.cut_points_tested": 2 * len(points),
        "storage.recoveries_checked": n,
        "storage.recovery_failures": len(failures),
        "storage.random_resets": resets[0],
        "storage.random_reset_failures": len(resets[1]),
        "storage.flash_block_erases_per_day": erases_day,
        "storage.wear_budget_used_8y": erases_day * LIFE_DAYS / (BLOCKS * ERASE_BUDGET),
        "storage.wear_worst_block_8y": worst_block_day * LIFE_DAYS / ERASE_BUDGET,
        "storage.max_accounting_uncertainty_nl": res.volume_of_pulses_nl(worst),
        "storage.commits_per_day": commits_day,
    }
    print("  storage: recording %.1f s, %d ops; sweep %.0f core-s over %d recoveries; "
          "%d resets %.0f s; total %.0f s" % (record_s, _REC.n_ops, sum(s[3] for s in sweeps),
                                                n, resets[0], resets[3],
                                                time.perf_counter() - t0))  # fmt: skip
    for f in (failures + resets[1])[:10]:
        print("  storage failure:", f)
    return out


if __name__ == "__main__":
    m = metrics()
    for key in sorted(m):
        print("  %-44s %r" % (key, m[key]))
