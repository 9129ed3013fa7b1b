# `make sim` for now: runs the dosing engine on a demo prescription and prints a day-by-day
# summary. The full virtual pump (application, board plant model, report folder) comes later.

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "firmware"), str(ROOT)]

from boards.sim import board  # noqa: E402
from pump import engine as E  # noqa: E402
from pump import limits as L  # noqa: E402
from pump import reasons as R  # noqa: E402
from pump import rx as RX  # noqa: E402
from pump.intmath import fmt_milli  # noqa: E402
from pump.limiter import Limiter  # noqa: E402

HOUR = 3_600_000
DAY = L.DAY_MS

# A flexible day at 500 ug/mL: lower at night, a morning rise, and a periodic bolus at 07:00,
# with a patient bolus of 15 ug (10 min, lockout 3 h, at most 4 per 24 h).
DEMO = RX.Prescription(
    500,
    [
        (0, 300_000),
        (5 * 60, 330_000),
        (7 * 60, 380_000),
        (9 * 60, 400_000),
        (11 * 60, 380_000),
        (13 * 60, 360_000),
        (15 * 60, 360_000),
        (17 * 60, 340_000),
        (20 * 60, 320_000),
        (22 * 60, 300_000),
    ],  # fmt: skip
    [(7 * 60, 20_000, 1800)],
    patient_dose_ng=15_000,
    patient_duration_s=600,
    patient_lockout_s=3 * 3600,
    patient_max_per_24h=4,
)
LIMITS = L.ClinicianLimits(
    max_24h_ng=800_000, max_bolus_ng=100_000, max_rate_nl_per_day=10_000_000, dose_step_pct=30
)
# Patient requests each day (hours); some fall inside the lockout and are refused.
PATIENT_REQUESTS_H = (8, 9, 12, 16, 18, 21)


def ug(ng):
    # One decimal is what a clinician reads; rounded down, as a display only.
    return fmt_milli(ng // 100, 10, 1)


def ul(pl):
    return fmt_milli(pl // 100_000, 10, 1)


def run(days):
    cal = board.calibration()
    events = []
    limiter = Limiter(cal, LIMITS, DEMO.conc_ug_per_ml)
    eng = E.Engine(cal, limiter, LIMITS, DEMO.conc_ug_per_ml, log=lambda *a: events.append(a))
    bad = eng.program(DEMO, confirm=True)
    if bad:
        raise SystemExit("The demo prescription was refused: " + bad.message() + ".")
    pulse_pl = cal.pulse_pl()
    print("Virtual dosing run (engine only), %d days, reference syringe rig" % days)
    print("  pulse volume %s nL (%s)" % (fmt_milli(pulse_pl), cal.source))
    print("  programme: 10-step flex day, %s ug/day + 20 ug periodic bolus at 07:00, 500 ug/mL"
          % ug(RX.daily_dose_ng(DEMO) - 20_000))  # fmt: skip
    print()
    print("  day  pulses  volume uL  dose ug  programmed ug  patient ok/refused  wake-ups")
    total_pulses = 0
    for day in range(days):
        start_pulses = eng.delivered
        start_wake = eng.wakeups
        granted = refused = 0
        for h in PATIENT_REQUESTS_H:
            eng.run_until(day * DAY + h * HOUR)
            result = eng.patient_bolus()
            if result is None:
                granted += 1
            else:
                refused += 1
                assert result.code in (R.LOCKOUT, R.BOLUS_COUNT, R.DAILY_LIMIT)
        eng.run_until((day + 1) * DAY)
        pulses = eng.delivered - start_pulses
        total_pulses += pulses
        vol_pl = pulses * pulse_pl
        dose_ng = vol_pl * DEMO.conc_ug_per_ml // 1_000_000
        prog_ng = RX.daily_dose_ng(DEMO) + granted * DEMO.patient_dose_ng
        print("  %3d  %6d  %9s  %7s  %13s  %8d/%-9d  %8d" % (
            day + 1, pulses, ul(vol_pl),
            ug(dose_ng), ug(prog_ng), granted, refused, eng.wakeups - start_wake))  # fmt: skip
    print()
    print("  total %d pulses = %s uL; limiter blocks: %d; last 24 h dose counted %s ug"
          % (total_pulses, ul(total_pulses * pulse_pl),
             limiter.blocked, ug(limiter.window_ng)))  # fmt: skip
    kinds = {}
    for ev in events:
        kinds[ev[0]] = kinds.get(ev[0], 0) + 1
    print("  engine events: " + ", ".join("%s %d" % kv for kv in sorted(kinds.items())))
    print()
    print("Research prototype: not for use in humans.")


def main(argv=None):
    parser = argparse.ArgumentParser(description="Run the dosing engine on a demo programme.")
    parser.add_argument("--days", type=int, default=7, help="days to simulate (default 7)")
    args = parser.parse_args(argv)
    if not 1 <= args.days <= 3650:
        raise SystemExit("--days must be between 1 and 3650.")
    run(args.days)


if __name__ == "__main__":
    main()
