# `make sim`'s command line (tools/sim.py) end to end on both runtimes: the report folder checked
# against itself, the event log and the rig's calibration; faults and resets; bad input.

import csv
import json
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import pytest

from boards.sim import board
from tools import sim as SIM

ROOT = Path(__file__).resolve().parent.parent
DAY = 86_400_000
HOUR = 3_600_000
CAL = board.calibration()
PULSE_NL = Fraction(CAL.ml_num * 10**6, CAL.ml_den)
DAYS = 3

# Short enough to be quick, long enough for a low-reservoir alarm, a refill at a new strength
# (day 2 at 14:00), patient boluses granted and refused, and the button.
SCENARIO = {
    "title": "test: low reservoir on day 1, refill at 1000 ug/mL on day 2",
    "start": "2025-03-01 09:00",
    "strength_ug_per_ml": 500,
    "low_threshold_ml": 2,
    "first_fill_ml": 2.4,
    "programme": {
        "steps": [
            {"start": "00:00", "ug_per_day": 300},
            {"start": "07:00", "ug_per_day": 380},
            {"start": "22:00", "ug_per_day": 300},
        ],
        "periodic": [{"start": "07:00", "dose_ug": 20, "duration_min": 30}],
        "patient": {"dose_ug": 15, "duration_min": 10, "lockout_min": 180, "max_per_24h": 4},
    },
    "patient_requests": ["10:00", "11:00", "19:00"],
    "button": ["12:30"],
    "refill": {"check_at": "14:00", "fills": [{"fill_ml": 5, "strength_ug_per_ml": 1000}]},
}
# On the first day; the button acknowledges the stall alarm so that it does not sound all night.
FAULTS = ["2h:hang:dosing", "6h:power_cut:10m", "8h:power_cut:2", "10h:occlusion",
          "14h:occlusion_end", "14h30m:button"]  # fmt: skip
FAULT_DAYS = 2


def sim(*args, timeout=240):
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "sim.py"), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip
    return proc.returncode, proc.stdout, proc.stderr


def write_scenario(folder, name, **changes):
    sc = dict(SCENARIO)
    sc.update(changes)
    path = Path(folder) / name
    path.write_text(json.dumps(sc))
    return path


class Report:
    def __init__(self, out, stdout):
        self.out = out
        self.stdout = stdout
        self.summary = json.loads((out / "summary.json").read_text())
        with open(out / "deliveries.csv", newline="") as f:
            self.header = f.readline().strip()
            self.rows = list(csv.reader(f))
        with open(out / "hourly.csv", newline="") as f:
            self.hourly = list(csv.DictReader(f))
        lines = (out / "events.jsonl").read_text().splitlines()
        self.events = [json.loads(line) for line in lines]

    def named(self, name):
        return [e for e in self.events if e["name"] == name]


def run_report(tmp_factory, runtime, faults, plots):
    folder = tmp_factory.mktemp(runtime + ("-faults" if faults else ""))
    extra = {"faults": FAULTS} if faults else {}
    rx = write_scenario(folder, "scenario.json", **extra)
    out = folder / "report"
    days = FAULT_DAYS if faults else DAYS
    args = ["--rx", str(rx), "--days", str(days), "--out", str(out), "--runtime", runtime]
    code, stdout, stderr = sim(*args, *([] if plots else ["--no-plots"]))
    assert code == 0, stderr
    return Report(out, stdout)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One plain run per runtime (plots drawn for MicroPython's), made on first use."""
    cache = {}

    def get(runtime, faults=False):
        key = (runtime, faults)
        if key not in cache:
            cache[key] = run_report(tmp_path_factory, runtime, faults,
                                    plots=runtime == "micropython" and not faults)
        return cache[key]

    return get


def dec_close(text, exact, places=6):
    return abs(Fraction(text) - exact) <= Fraction(1, 2 * 10**places)


@pytest.mark.parametrize("runtime", ["micropython", "cpython"])
def test_a_run_reports_every_pulse_exactly(runs, runtime):
    r = runs(runtime)
    s = r.summary
    assert s["runtime"].startswith(runtime) and s["days"] == DAYS
    assert r.header == "t_ms,volume_nl,volume_nl_exact,dose_ng"
    n = len(r.rows)
    # One row per pulse the rig moved, which is what the pump counted (no faults here).
    assert n == s["pulses"]["delivered"] == s["pulses"]["pump_counted"] > 1000
    assert s["pulses"]["not_delivered"] == 0
    times = [int(row[0]) for row in r.rows]
    assert times == sorted(times) and 0 < times[0] and times[-1] <= DAYS * DAY
    total = Fraction(0)
    for _t, vol, exact, _dose in r.rows:
        v = Fraction(exact)
        assert v == PULSE_NL  # the calibration of the rig, exactly
        assert dec_close(vol, v)
        total += v
    assert total == n * PULSE_NL == Fraction(s["volume_nl"]["delivered_exact"])
    assert Fraction(s["pulse_volume_nl_exact"]) == PULSE_NL
    # The hours add up to the rows and to the totals.
    assert len(r.hourly) == DAYS * 24
    assert sum(int(h["pulses"]) for h in r.hourly) == n
    # Each hour's delivered pg is rounded down; the totals are rounded to 3 decimals of a ug.
    delivered = Fraction(sum(int(h["delivered_pg"]) for h in r.hourly), 10**6)
    gap = Fraction(str(s["dose_ug"]["delivered"])) - delivered
    assert -Fraction(1, 2000) <= gap < Fraction(DAYS * 24, 10**6) + Fraction(1, 2000)
    programmed = Fraction(sum(int(h["programmed_pg"]) for h in r.hourly), 10**6)
    assert abs(programmed - Fraction(str(s["dose_ug"]["programmed"]))) <= Fraction(1, 2000)
    # Delivered follows the programme within a pulse or two a day at the strongest drug.
    assert abs(delivered - programmed) * 10**6 < DAYS * 2 * PULSE_NL * 1000
    # Progress while it ran, then the summary.
    assert "day   1" in r.stdout and "day   3" in r.stdout and "Summary" in r.stdout


@pytest.mark.req("SR-35")
@pytest.mark.parametrize("runtime", ["micropython", "cpython"])
def test_the_refill_and_its_bridge_show_in_the_log_and_at_the_tip(runs, runtime):
    r = runs(runtime)
    s = r.summary
    assert len(s["refills"]) == 1
    ref = s["refills"][0]
    assert ref["refused"] is None and ref["strength_from"] == 500 and ref["strength_to"] == 1000
    assert DAY < ref["t_ms"] < 2 * DAY  # day 2, when the low alarm was on
    # The log has the refill as the pump saw it, and the bridge of the line's volume.
    first, rec = r.named("refill")
    assert first["args"] == [0, 0, 2_400_000, 500, 500, 0, 0]  # the commissioning fill
    withdrawn, expected, fill, old, new, bridge, disc = rec["args"]
    assert (withdrawn, fill, old, new, disc) == (ref["withdrawn_nl"], 5_000_000, 500, 1000, 0)
    assert expected == withdrawn and bridge == CAL.pulses_for_nl(board.PUMP_DEAD_VOLUME_NL)
    (start,) = r.named("bridge_start")
    assert start["args"] == [500, 1000, bridge]
    # The low alarm raised again in therapy, not only a new pump's own at commissioning.
    lows = [e for e in r.named("alarm_raise") if e["args"][0] == "reservoir_low"]
    assert len(lows) >= 2 and lows[-1]["seq"] > first["seq"]
    assert any(h["alarms"].find("reservoir_low") >= 0 for h in r.hourly[: 24 + 5])
    # At the tip: the pulses after the refill carry the old drug until the line's 250 uL is
    # out (378 whole pulses), then one pulse carries both, then the new strength.
    old_ng = PULSE_NL * 500 / 1000
    new_ng = PULSE_NL * 1000 / 1000
    after = [row for row in r.rows if int(row[0]) > ref["t_ms"]]
    before = [row for row in r.rows if int(row[0]) <= ref["t_ms"]]
    assert all(dec_close(row[3], old_ng) for row in before)
    whole = int(board.PUMP_DEAD_VOLUME_NL / PULSE_NL)
    assert all(dec_close(row[3], old_ng) for row in after[:whole])
    mixed = Fraction(after[whole][3])
    assert old_ng < mixed < new_ng
    assert all(dec_close(row[3], new_ng) for row in after[whole + 1 :])


@pytest.mark.parametrize("runtime", ["micropython", "cpython"])
def test_the_event_log_is_whole_and_matches_the_run(runs, runtime):
    r = runs(runtime)
    s = r.summary
    seqs = [e["seq"] for e in r.events]
    assert seqs == list(range(1, len(seqs) + 1))
    assert s["log"]["records"] == len(seqs) and s["log"]["problems"] == []
    assert [e["args"][:2] for e in r.named("reset")] == [["power_on_or_brownout", "new"]]
    assert s["resets"] == []
    (prog,) = r.named("program")
    rx = prog["args"][1]
    assert rx[0] == 500 and rx[1] == [[0, 300_000], [420, 380_000], [1320, 300_000]]
    assert rx[2] == [[420, 20_000, 1800]]
    # Boluses granted and refused are the pump's own records.
    granted = [e for e in r.named("bolus_start") if e["args"][0] == "patient"]
    refused = [e for e in r.named("refused") if e["args"][0] == "patient_bolus"]
    assert s["boluses"]["patient_granted"] == len(granted) > 0
    assert s["boluses"]["patient_refused"] == len(refused) > 0
    raised = {}
    for e in r.named("alarm_raise"):
        raised[e["args"][0]] = raised.get(e["args"][0], 0) + 1
    assert s["alarms"]["raised"] == raised
    assert s["alarms"]["button_presses"] >= 1  # after the refill at least


def test_the_plots_are_png_files(runs):
    from PIL import Image

    r = runs("micropython")
    for name in ("dose.png", "reservoir.png", "battery.png"):
        path = r.out / name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:
            assert im.size[0] >= 800 and im.size[1] >= 300
        assert name in r.stdout


@pytest.mark.req("SR-34")
def test_both_runtimes_write_the_same_report(runs):
    a = runs("micropython")
    b = runs("cpython")
    for name in ("deliveries.csv", "events.jsonl", "hourly.csv"):
        assert (a.out / name).read_bytes() == (b.out / name).read_bytes(), name
    for s in (a.summary, b.summary):
        for k in ("runtime", "runtime_ms", "simulation_ms", "days_per_s"):
            s.pop(k)
    assert a.summary == b.summary


@pytest.mark.req("SR-20", "SR-21", "SR-13")
@pytest.mark.parametrize("runtime", ["micropython", "cpython"])
def test_faults_show_as_resets_with_their_causes(runs, runtime):
    r = runs(runtime, faults=True)
    s = r.summary
    causes = [(x["cause"], x["firmware_cause"], x["late_task"]) for x in s["resets"]]
    assert causes == [
        ("watchdog", "watchdog", "dosing"),
        ("power_on", "power_on_or_brownout", None),
        ("power_on", "power_on_or_brownout", None),
    ]
    hang, cut, cut_mid = s["resets"]
    # The watchdog reset the board within its timeout after the dosing task's grace ran out.
    assert 2 * HOUR < hang["t_ms"] < 2 * HOUR + 10 * 60_000
    assert cut["t_ms"] == 6 * HOUR and cut["boot_t_ms"] - cut["t_ms"] == 10 * 60_000
    assert 8 * HOUR < cut_mid["t_ms"] < 10 * HOUR  # at its next flash write
    assert all(x["state_from"] in ("a", "b") for x in s["resets"])
    # The pump's log saw the same boots.
    resets = [e["args"][:2] for e in r.named("reset")]
    assert resets[0] == ["power_on_or_brownout", "new"]
    assert [x[0] for x in resets[1:]] == [
        "watchdog", "power_on_or_brownout", "power_on_or_brownout"]
    assert [x[1] for x in resets[1:]] == [x["state_from"] for x in s["resets"]]
    assert [f["kind"] for f in s["faults"]] == ["hang", "power_cut", "power_cut", "occlusion",
                                                "occlusion_end", "button"]  # fmt: skip
    # The occlusion ran the compliance up to the force limit: the pump saw a stall.
    assert s["pulses"]["lost_at_force_limit"] >= 1 and s["pulses"]["failed"] >= 2
    assert s["alarms"]["raised"].get("motor_stall", 0) >= 1
    # Pulses that may have gone out before a cut are counted, never sent again: the pump's count
    # is at most a checkpoint batch per cut above what the rig moved.
    extra = s["pulses"]["pump_counted"] - s["pulses"]["delivered"]
    assert 0 <= extra <= 2 * board.CHECKPOINT_BATCH_PULSES
    assert len(r.rows) == s["pulses"]["delivered"]
    assert s["log"]["problems"] == []


def test_both_runtimes_agree_through_faults(runs):
    a = runs("micropython", faults=True)
    b = runs("cpython", faults=True)
    for name in ("deliveries.csv", "events.jsonl", "hourly.csv"):
        assert (a.out / name).read_bytes() == (b.out / name).read_bytes(), name


# ---- bad input: one sentence, exit code 2, before the pump starts ----


def _bad_programme(folder):
    steps = [{"start": "00:00", "ug_per_day": 900}]
    return write_scenario(folder, "big.json", programme={"steps": steps})


BAD = [
    (lambda d: ["--rx", str(d / "missing.json")], "does not exist"),
    (lambda d: ["--rx", str(_write(d, "x.json", "{not json"))], "is not valid JSON"),
    (lambda d: ["--rx", str(write_scenario(d, "u.json", colour="red"))], "unknown field 'colour'"),
    (lambda d: ["--rx", str(write_scenario(d, "n.json", first_fill_ml=25))], "first_fill_ml"),
    (lambda d: ["--rx", str(write_scenario(d, "t.json", button=["25:00"]))], "button[0]"),
    (lambda d: ["--rx", str(_bad_programme(d))], "the pump refuses the programme: steps[0]"),
    (lambda d: ["--fault", "3x:stall"], "is not a time"),
    (lambda d: ["--fault", "1d:explode"], "unknown kind 'explode'"),
    (lambda d: ["--fault", "1d:hang:nobody"], "hang needs a task name"),
    (lambda d: ["--fault", "1d:stall:5"], "stall takes no argument"),
    (lambda d: ["--days", "0"], "--days must be a whole number from 1 to 3650"),
    (lambda d: ["--days", "abc"], "--days must be a whole number"),
    (lambda d: ["--accel", "fast"], "--accel must be a whole number"),
    (lambda d: ["--seed", "-1"], "--seed must be a whole number"),
    (lambda d: ["--bogus"], "unrecognized arguments: --bogus"),
    (lambda d: ["--runtime", "pypy"], "invalid choice: 'pypy'"),
]


def _write(folder, name, text):
    path = folder / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("make,expect", BAD, ids=[b[1][:24] for b in BAD])
def test_bad_input_is_one_sentence_and_exit_code_2(tmp_path, capsys, make, expect):
    code = SIM.main([*make(tmp_path), "--out", str(tmp_path / "out")])
    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and lines[0].endswith(".")
    assert expect in lines[0]
    assert not (tmp_path / "out" / "summary.json").exists()


def test_exit_codes_of_the_processes(tmp_path):
    code, out, err = sim("--days", "x", "--out", str(tmp_path))
    assert code == 2 and out == "" and err.strip() == (
        "error: --days must be a whole number from 1 to 3650, not 'x'.")  # fmt: skip
    # The runner itself, under MicroPython, says the same kind of thing.
    from tools import mpy

    code, out, err = mpy.run_micropython(ROOT / "boards" / "sim" / "main.py",
                                         [str(ROOT / "examples" / "demo.json"), str(tmp_path),
                                          "--fault", "2d:melt"])  # fmt: skip
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines() == [
        "error: --fault '2d:melt': unknown kind 'melt' (one of button, clock_jump, hang, "
        "occlusion, occlusion_end, power_cut, rtc_lost, stall, stall_end)."]  # fmt: skip


# ---- the default scenario ----


def test_the_demo_file_holds_the_demo_programme():
    from boards.sim import scenario as SC

    sc = SC.load(str(ROOT / "examples" / "demo.json"))
    assert sc.rx == SIM.DEMO
    assert sc.limits.as_tuple() == SIM.LIMITS.as_tuple()
    assert SC.check(sc) is not None


def test_make_sims_default_run_shows_what_it_promises(tmp_path):
    # 30 days of the demo: the flexible day, patient boluses granted and refused, the
    # low-reservoir alarm on the way, and a refill with a change of strength.
    code, out, err = sim("--runtime", "cpython", "--no-plots", "--out", str(tmp_path))
    assert code == 0, err
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["days"] == 30 and s["scenario"] == "demo"
    # Twice: a new pump's own at commissioning, then on the way to the refill.
    assert s["alarms"]["raised"].get("reservoir_low", 0) >= 2
    (ref,) = s["refills"]
    assert ref["refused"] is None and (ref["strength_from"], ref["strength_to"]) == (500, 1000)
    assert s["boluses"]["patient_granted"] > 0 and s["boluses"]["patient_refused"] > 0
    assert s["log"]["first_seq"] == 1 and s["log"]["problems"] == []
    assert out.count("\nday ") == 30 and "refill: withdrew" in out
