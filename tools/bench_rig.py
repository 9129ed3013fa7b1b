# Bench-rig accuracy figures for build/bench.json: `pumpbench sim` at 10 uL/h on the reference rig
# (the virtual pump's plant model weighed by the simulated microbalance), trumpet analysis.
"""metrics() returns

  bench.sim_overall_error_pct  A over the analysis period (60 min to 48 h)
  bench.sim_ep2_max_pct        Ep(max) at P = 2 min
  bench.sim_ep2_min_pct        Ep(min) at P = 2 min
  bench.ep2_bound_ratio        (Ep(max) - Ep(min)) at 2 min / the pure quantisation band's width
                               at 2 min for the rig's pulse at that rate (goal <= 1.1)
  bench.ep2_bound_spread_pct   that band's width: 100 v / (r P)
  bench.sim_hours              the simulated run
  bench.sim_bolus_mean_error_pct   `pumpbench sim --boluses 25 --bolus-ul 20 --bolus-s 300`: the
  bench.sim_bolus_max_error_pct    mean, largest and smallest single-bolus errors (a 20 uL bolus
  bench.sim_bolus_min_error_pct    is 30.28 pulses, so single boluses are 30 or 31 pulses:
                                   -0.9 % or +2.4 %, one more (+5.7 %) when a basal pulse falls
                                   between the same weighings; the mean shows what the
                                   scheduler carries over from one bolus to the next)

Why 48 h: at 10 uL/h the reference rig makes one 660.52 nL pulse every 238 s, so the overall
error A is itself quantised, within a band of width 100 v / (r T_A); over the 47 h analysis
period that is 0.14 %, below the simulated balance's own evaporation bias (0.02 mg/h, -0.2 %),
and the hour-scale windows up to 960 min each get thousands of positions. The standard 2 h run
would leave A anywhere in a 6.6 % band (one pulse in 15). The simulation takes about 2 s.

Usage: python tools/bench_rig.py (prints the figures; tools/bench.py merges them)."""

import io
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "firmware"), str(ROOT)]

from rich.console import Console  # noqa: E402

from itbtools import pumpbench as PB  # noqa: E402
from itbtools import trumpet as T  # noqa: E402

RATE_UL_H = 10
HOURS = 48
SEED = 1
OUT = ROOT / "build" / "bench-rig"
BOLUSES, BOLUS_UL, BOLUS_S, SETTLE_S = 25, 20, 300, 120


def run(out_dir=OUT, hours=HOURS, seed=SEED):
    """The sim run and its trumpet report (quiet; the report lands in out_dir)."""
    quiet = Console(file=io.StringIO(), width=120)
    rep, _d, acq = PB.run_sim(quiet, T.exact(RATE_UL_H), T.exact(hours), seed, Path(out_dir),
                              T.exact(30), T.DEFAULT_DENSITY, None, None, None,
                              dict(PB.REFERENCE_BALANCE), plots=False)  # fmt: skip
    if acq.stopped or not rep.complete:
        raise SystemExit("bench_rig: the simulated test did not complete: %s"
                         % (acq.stopped or "; ".join(rep.notes)))  # fmt: skip
    return rep


def boluses(out_dir, count=BOLUSES, seed=SEED):
    """The sim's bolus test: its report dict (the `bolus` part of report.json)."""
    quiet = Console(file=io.StringIO(), width=120)
    try:
        return PB.run_sim_boluses(quiet, count, T.exact(BOLUS_UL), BOLUS_S, SETTLE_S, seed,
                                  Path(out_dir), T.DEFAULT_DENSITY,
                                  dict(PB.REFERENCE_BALANCE))["bolus"]  # fmt: skip
    except PB.BenchError as e:
        raise SystemExit("bench_rig: the simulated bolus test did not complete: %s" % e) from None


def metrics(out_dir=OUT, hours=HOURS, bolus_count=BOLUSES):
    rep = run(out_dir, hours)
    w2 = rep.window(2)
    bol = boluses(Path(out_dir) / "boluses", bolus_count)
    return {
        "bench.sim_bolus_mean_error_pct": float(bol["mean_error_pct"]),
        "bench.sim_bolus_max_error_pct": float(bol["max_error_pct"]),
        "bench.sim_bolus_min_error_pct": float(bol["min_error_pct"]),
        "bench.sim_overall_error_pct": float(rep.overall),
        "bench.sim_ep2_max_pct": float(w2.ep_max),
        "bench.sim_ep2_min_pct": float(w2.ep_min),
        "bench.ep2_bound_ratio": float(w2.spread / w2.bound.spread_pct),
        "bench.ep2_bound_spread_pct": float(w2.bound.spread_pct),
        "bench.sim_hours": hours,
    }


def main():
    for k, v in sorted(metrics().items()):
        print("  %-34s %r" % (k, v))


if __name__ == "__main__":
    main()
