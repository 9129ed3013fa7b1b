# `make sim`: runs the virtual pump (boards/sim/main.py, the device application on the sim board)
# under MicroPython or CPython, streams its progress, prints a summary and draws the plots.

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "firmware"), str(ROOT)]

from boards.sim import scenario as SC  # noqa: E402
from pump import limits as L  # noqa: E402
from pump import rx as RX  # noqa: E402
from tools import mpy  # noqa: E402

RUNNER = ROOT / "boards" / "sim" / "main.py"
DEFAULT_RX = ROOT / "examples" / "demo.json"
DEFAULT_OUT = ROOT / "build" / "sim"
REPORT_FILES = ("deliveries.csv", "events.jsonl", "hourly.csv", "summary.json")
# The interpreter's heap for the run: the flash image (512 KB, one block of memory) and, at the
# end, the whole event log read back at once need more than the unix port's 2 MB default.
HEAPSIZE = "16M"

# The demo programme of the first `make sim` (examples/demo.json has it too): a flexible day at
# 500 ug/mL, lower at night with a morning rise, a periodic bolus at 07:00 and a patient bolus
# of 15 ug (10 min, lockout 3 h, at most 4 per 24 h). The storage tests run it as well.
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

FAULT_HELP = """\
faults (--fault TIME:KIND[:ARG], repeatable; TIME from the start of the run, e.g. 3d10h, 90m,
2h30m, 45s, 250ms or plain ms):
  stall, stall_end            the motor stops moving / moves again
  occlusion, occlusion_end    the catheter is blocked / opens (the stored volume comes out)
  power_cut                   the supply fails and comes back at once
  power_cut:10m               ... and stays off for 10 minutes (any TIME)
  power_cut:3                 ... at the 3rd flash program or erase from then (mid-write)
  clock_jump:+2d, clock_jump:-6h   the real-time clock leaps forward or back
  rtc_lost                    the real-time clock loses its time
  hang:TASK                   a task never wakes again (dosing, monitor, storage, button, main)
  button                      the pump's button is pressed
"""


class UsageError(Exception):
    """A bad command line, as one sentence."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(message)


def parser():
    p = _Parser(
        prog="tools/sim.py",
        description="Run the virtual pump: the device application on the simulated bench rig.",
        epilog=FAULT_HELP + "\nThe scenario format and the report: docs/sim.md.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--rx", default=str(DEFAULT_RX.relative_to(ROOT)),
                   help="scenario file (prescription JSON; default examples/demo.json)")
    p.add_argument("--days", default="30", help="days to simulate (default 30)")
    p.add_argument("--accel", default="max",
                   help="simulated ms per real ms, or max: as fast as possible (default)")
    p.add_argument("--seed", default="1", help="seed of the noise and request jitter (default 1)")
    p.add_argument("--fault", action="append", default=[], metavar="TIME:KIND[:ARG]",
                   help="inject a fault (see below); adds to the scenario's own faults")
    p.add_argument("--out", default=str(DEFAULT_OUT.relative_to(ROOT)),
                   help="report folder (default build/sim)")
    p.add_argument("--runtime", default="micropython", choices=("micropython", "cpython"),
                   help="interpreter for the pump (default micropython)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    return p  # fmt: skip


def _number(text, what, low, high):
    if not text.isdigit() or not low <= int(text) <= high:
        raise UsageError("%s must be a whole number from %d to %d, not %r" % (what, low, high,
                                                                                 text))
    return int(text)


def check(args):
    """Validate everything before the pump starts; returns the runner's arguments."""
    days = _number(args.days, "--days", 1, 3650)
    accel = "max" if args.accel == "max" else str(_number(args.accel, "--accel", 1, 10**9))
    seed = _number(args.seed, "--seed", 0, 2**31 - 1)
    rx = Path(args.rx)
    if not rx.is_absolute():
        rx = (Path.cwd() / rx).resolve()
    if not rx.is_file():
        raise UsageError("the scenario file %s does not exist" % args.rx)
    try:
        sc = SC.load(str(rx))
        SC.check(sc)
        for f in args.fault:
            SC.parse_fault(f, "--fault")
    except SC.ScenarioError as e:
        raise UsageError(str(e)) from None
    out = Path(args.out)
    if not out.is_absolute():
        out = Path.cwd() / out
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError:
        raise UsageError("cannot create the report folder %s" % args.out) from None
    argv = [str(rx), str(out), "--days", str(days), "--accel", accel, "--seed", str(seed)]
    for f in args.fault:
        argv += ["--fault", f]
    return sc, out, argv


def command(runtime, argv):
    """(cmd, env) running the runner under the chosen interpreter, the firmware importable."""
    env = dict(os.environ)
    if runtime == "micropython":
        # MICROPYPATH replaces the search path: .frozen keeps the interpreter's own modules.
        env["MICROPYPATH"] = os.pathsep.join([str(p) for p in mpy.import_roots()] + [".frozen"])
        return [mpy.find_micropython(), "-X", "heapsize=" + HEAPSIZE, str(RUNNER), *argv], env
    env["PYTHONPATH"] = os.pathsep.join(str(p) for p in mpy.import_roots())
    return [sys.executable, "-u", "-B", str(RUNNER), *argv], env


def run_pump(runtime, argv, out):
    """Run the pump, its progress lines passed through as they come. Returns (code, stderr)."""
    for name in REPORT_FILES:
        (out / name).unlink(missing_ok=True)
    cmd, env = command(runtime, argv)
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                            bufsize=1)  # fmt: skip
    for line in proc.stdout:
        sys.stdout.write(line)
        sys.stdout.flush()
    err = proc.stderr.read()
    return proc.wait(), err


# ---- the readable summary ----


def _ml(nl):
    return "%.2f" % (nl / 1e6)


def summary_lines(s):
    out = [
        "",
        "Summary (%s/summary.json)" % s.get("_dir", "."),
        "  %d days on %s in %.1f s: %s simulated days per second" % (
            s["days"], s["runtime"], s["simulation_ms"] / 1000, s["days_per_s"]),
    ]  # fmt: skip
    p = s["pulses"]
    d = s["dose_ug"]
    out.append("  delivered %d pulses (%s nL each) = %s mL; dose %.1f ug for %.1f ug programmed "
               "(%.2f %%)" % (p["delivered"], s["pulse_volume_nl_exact"],
                             _ml(s["volume_nl"]["delivered"]), d["delivered"], d["programmed"],
                             d["delivered_per_programmed_pct"]))  # fmt: skip
    if p["not_delivered"]:
        out.append("  not delivered: %d pulses (%d failed: stall, occlusion or end stop)" % (
            p["not_delivered"], p["failed"]))  # fmt: skip
    b = s["boluses"]
    why = ", ".join("%s: %d" % kv for kv in b["refusals"].items())
    out.append("  patient boluses: %d granted, %d refused%s" % (
        b["patient_granted"], b["patient_refused"], " (" + why + ")" if why else ""))
    for r in s["refills"]:
        if r["refused"]:
            out.append("  refill at %s refused: %s" % (_day(s, r["t_ms"]), r["refused"]))
        else:
            out.append("  refill at %s: withdrew %s mL, filled %s mL at %d ug/mL (was %d)" % (
                _day(s, r["t_ms"]), _ml(r["withdrawn_nl"]), _ml(r["fill_nl"]),
                r["strength_to"], r["strength_from"]))  # fmt: skip
    a = s["alarms"]
    raised = ", ".join("%s %d" % kv for kv in a["raised"].items()) or "none"
    lg = s["log"]
    seen = "" if lg["first_seq"] <= 1 else " (in the log kept, from record %d)" % lg["first_seq"]
    out.append("  alarms raised%s: %s; latched at the end: %s" % (
        seen, raised, ", ".join(a["latched_at_end"]) or "none"))  # fmt: skip
    if not s["resets"]:
        out.append("  resets: none")
    for r in s["resets"]:
        late = " (the %s task was late)" % r["late_task"] if r["late_task"] else ""
        off = r["boot_t_ms"] - r["t_ms"]
        back = ", power back after %s" % _duration(off) if off else ""
        out.append("  reset at %s: %s%s%s; the pump found %s, state from %s" % (
            r["when"], r["cause"], late, back, r["firmware_cause"],
            r["state_from"]))  # fmt: skip
    for f in s["faults"]:
        out.append("  fault at %s: %s%s" % (_day(s, f["t_ms"]), f["kind"],
                                             " (" + f["note"] + ")" if f["note"] else ""))
    r = s["reservoir"]
    out.append("  reservoir: %s mL by the pump's estimate, %s mL in the syringe; low alarm at "
               "%s mL" % (_ml(r["estimate_nl"]), _ml(r["syringe_nl"]),
                          _ml(r["low_threshold_nl"])))  # fmt: skip
    bt = s["battery"]
    proj = ("projected replacement %s (day %d)" % (bt["projected_replacement"],
                                                    bt["projected_replacement_day"])
            if bt["projected_replacement"] else "no replacement in sight")  # fmt: skip
    out.append("  battery: %d mV (%s); %s" % (bt["measured_mv"], bt["state"], proj))
    lg = s["log"]
    out.append("  event log: %d records read back from flash (seq %d..%d), %s" % (
        lg["records"], lg["first_seq"], lg["last_seq"],
        "chain intact" if not lg["problems"] else "PROBLEMS: " + "; ".join(lg["problems"])))
    return out


def _duration(ms):
    if ms % 60_000 == 0:
        return "%d min" % (ms // 60_000)
    return "%d ms" % ms


def _day(s, t_ms):
    wall = s["start_wall_ms"] + t_ms
    m = wall % 86_400_000 // 60_000
    return "day %d %02d:%02d" % (t_ms // 86_400_000 + 1, m // 60, m % 60)


def main(argv=None):
    try:
        args = parser().parse_args(argv)
        _sc, out, run_argv = check(args)
    except UsageError as e:
        print("error: %s." % str(e).rstrip("."), file=sys.stderr)
        return 2
    try:
        code, err = run_pump(args.runtime, run_argv, out)
    except (mpy.MpyError, OSError) as e:
        print("error: %s" % e, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nstopped; the report in %s is incomplete." % _shown(out), file=sys.stderr)
        return 130
    if code != 0:
        if code == 2 and err.startswith("error: "):
            sys.stderr.write(err.strip().splitlines()[0] + "\n")
            return 2
        (out / "runner-stderr.txt").write_text(err)
        print("error: the virtual pump stopped with exit code %d; its messages are in %s." % (
            code, out / "runner-stderr.txt"), file=sys.stderr)  # fmt: skip
        return 1
    import json

    s = json.loads((out / "summary.json").read_text())
    s["_dir"] = _shown(out)
    for line in summary_lines(s):
        print(line)
    if not args.no_plots:
        try:
            from tools import sim_report

            files = sim_report.plot(out)
        except ImportError:
            print("error: matplotlib is missing, so there are no plots; `make venv` installs it.",
                  file=sys.stderr)  # fmt: skip
            return 2
        print("  plots: " + ", ".join(p.name for p in files))
    print("  report: %s/ (%s; docs/sim.md explains them)" % (_shown(out), ", ".join(
        REPORT_FILES)))  # fmt: skip
    print("")
    print("Research prototype: not for use in humans.")
    return 0


def _shown(path):
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


if __name__ == "__main__":
    sys.exit(main())
