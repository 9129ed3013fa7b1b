# `make sim` for now: runs the supervisor and dosing engine on the sim board's simulated hardware
# and prints a day-by-day summary. The full virtual pump (the device application) comes later.

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "firmware"), str(ROOT)]

from boards.sim import board, hw  # noqa: E402
from pump import alarms as A  # noqa: E402
from pump import battery as B  # noqa: E402
from pump import engine as E  # noqa: E402
from pump import limits as L  # noqa: E402
from pump import reservoir as RS  # noqa: E402
from pump import rx as RX  # noqa: E402
from pump import supervisor as S  # noqa: E402
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


class Shell:
    """The imperative shell of the virtual pump, for now: it owns the clock and the simulated
    hardware, and calls the supervisor when it asks to be woken."""

    def __init__(self, sup, cell):
        self.sup = sup
        self.cell = cell
        self.now = 0
        self.mech = hw.Mechanism()
        self.buzzer = hw.RecordingBuzzer(lambda: self.now)

    def run_to(self, until_ms):
        sup = self.sup
        while True:
            t = sup.next_wake_ms()
            if t > until_ms:
                break
            self.now = t
            before = self.mech.attempts
            sup.advance(t, self.mech, self.buzzer)
            self.cell.draw(board.ENERGY.pulse_nc * (self.mech.attempts - before))
            if sup.battery_due(t):
                self.cell.draw(board.ENERGY.quiescent_ua * (t - self._drawn_to()))
                sum_uv, n = self.cell.sample(16)
                sup.battery_sample(t, sum_uv, n)
        self.now = until_ms
        sup.advance(until_ms, self.mech, self.buzzer)

    def _drawn_to(self):
        # Quiescent charge is drawn in steps at each battery sample.
        last = getattr(self, "_q", 0)
        self._q = self.now
        return last


def build(events):
    cal = board.calibration()
    log = lambda *a: events.append(a)  # noqa: E731
    limiter = Limiter(cal, LIMITS, DEMO.conc_ug_per_ml)
    eng = E.Engine(cal, limiter, LIMITS, DEMO.conc_ug_per_ml, log=log)
    capacity = board.RESERVOIR_NL[board.VARIANT]
    res = RS.Reservoir(cal, capacity, 2_000_000, capacity)
    bat = B.Monitor(board.CELL, board.ENERGY, board.ADC_CAL, log=log,
                    eri_margin_days=board.ERI_MARGIN_DAYS)  # fmt: skip
    sup = S.Supervisor(eng, res, bat, A.Alarms(log=log), S.Settings(board.PUMP_DEAD_VOLUME_NL),
                       log=log)  # fmt: skip
    return sup, hw.SimCell(board.CELL, board.ADC_CAL, seed=7)


def ml(nl):
    # Two decimals, rounded toward zero, as a display only.
    return ("-" if nl < 0 else "") + fmt_milli(abs(nl) // 10_000, 100, 2)


def when(ms):
    if ms is None:
        return "-"
    return "day %s" % fmt_milli(ms * 10 // DAY + 10, 10, 1)


def visit(sup):
    """The clinician's daily look: acknowledge what has cleared; refill once the low alarm is
    on (withdrawing what the pump expects). Returns the number of refills done."""
    for cid, _name, _p, present, acked, _s in sup.alarms.active():
        if not present and not acked:
            sup.acknowledge(cid)
    if not sup.alarms.is_latched(A.RES_LOW):
        return 0
    left = max(sup.reservoir.remaining_nl(), 0)
    cap = sup.reservoir.capacity_nl
    bad = sup.refill_begin(left) or sup.refill_fill(cap, 500) or sup.refill_commit()
    if bad is not None:
        raise SystemExit("The demo refill was refused: " + bad.message() + ".")
    print("       refill: withdrew %s mL, filled %s mL; new forecast low %s, empty %s"
          % (ml(left), ml(cap), when(sup.low_at_ms), when(sup.empty_at_ms)))  # fmt: skip
    for cid in (A.RES_LOW, A.REFILL_DUE):
        if sup.alarms.is_latched(cid):
            sup.acknowledge(cid)
    return 1


def run(days, stall_day):
    events = []
    sup, cell = build(events)
    eng = sup.engine
    bad = sup.program(DEMO, confirm=True)
    if bad:
        raise SystemExit("The demo prescription was refused: " + bad.message() + ".")
    shell = Shell(sup, cell)
    cal = eng.calib
    pulse_pl = cal.pulse_pl()
    print("Virtual pump run (supervisor and dosing engine), %d days, sim board (%s reservoir)"
          % (days, board.VARIANT))  # fmt: skip
    print("  pulse volume %s nL (%s)" % (fmt_milli(pulse_pl), cal.source))
    print("  programme: 10-step flex day, %s ug/day + 20 ug periodic bolus at 07:00, 500 ug/mL"
          % ug(RX.daily_dose_ng(DEMO) - 20_000))  # fmt: skip
    print("  forecast (worst case: every patient bolus taken): low %s, empty %s"
          % (when(sup.low_at_ms), when(sup.empty_at_ms)))  # fmt: skip
    if stall_day:
        print("  a motor jam is injected on day %d from 10:00 to 13:00" % stall_day)
    print()
    print("  day  pulses  dose ug  patient ok/no  reservoir mL  battery mV  alarms latched")
    refills = 0
    for day in range(days):
        start = shell.mech.done
        granted = refused = 0
        plan = [(h, "patient") for h in PATIENT_REQUESTS_H] + [(20, "visit")]
        if stall_day == day + 1:
            plan += [(10, "jam"), (13, "free")]
        for h, what in sorted(plan):
            shell.run_to(day * DAY + h * HOUR)
            if what == "patient":
                if sup.patient_bolus() is None:
                    granted += 1
                else:
                    refused += 1
            elif what == "jam":
                shell.mech.jam()
            elif what == "free":
                shell.mech.free()
            else:
                refills += visit(sup)
        shell.run_to((day + 1) * DAY)
        pulses = shell.mech.done - start
        dose_ng = pulses * pulse_pl * DEMO.conc_ug_per_ml // 1_000_000
        names = ",".join(a[1] for a in sup.alarms.active()) or "-"
        print("  %3d  %6d  %7s  %6d/%-6d  %12s  %10d  %s" % (
            day + 1, pulses, ug(dose_ng), granted, refused, ml(sup.reservoir.remaining_nl()),
            sup.battery.mv, names))  # fmt: skip
    print()
    print("  pulses confirmed %d, not delivered %d (stall or late); limiter blocks %d; refills %d"
          % (shell.mech.done, sup.undelivered_pulses, eng.limiter.blocked, refills))  # fmt: skip
    tones = shell.buzzer.tones()
    print("  buzzer: %d tones; battery %s, projected replacement %s"
          % (len(tones), B.STATE_NAMES[sup.battery.state],
             when(sup.battery.projected_eos_ms(shell.now))))  # fmt: skip
    kinds = {}
    for ev in events:
        kinds[ev[0]] = kinds.get(ev[0], 0) + 1
    print("  events: " + ", ".join("%s %d" % kv for kv in sorted(kinds.items())))
    print()
    print("Research prototype: not for use in humans.")


def main(argv=None):
    parser = argparse.ArgumentParser(description="Run the virtual pump on a demo programme.")
    parser.add_argument("--days", type=int, default=30, help="days to simulate (default 30)")
    parser.add_argument("--stall-day", type=int, default=None,
                        help="day with a 3-hour motor jam (0: none; default 3, "
                             "or none in a shorter run)")  # fmt: skip
    args = parser.parse_args(argv)
    if not 1 <= args.days <= 3650:
        raise SystemExit("--days must be between 1 and 3650.")
    if args.stall_day is None:
        args.stall_day = 3 if args.days >= 3 else 0
    if not 0 <= args.stall_day <= args.days:
        raise SystemExit("--stall-day must be between 0 and --days.")
    run(args.days, args.stall_day)


if __name__ == "__main__":
    main()
