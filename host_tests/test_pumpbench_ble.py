# pumpbench driving the pump over BLE: `run --sim-radio` against a virtual pump in another
# process (tools/sim_radio.py over Bumble TCP), with the clinician's key file; the balance is
# simulated in this process (the radio, the protocol and the pump are the real ones).

import json
import time
from fractions import Fraction

import pytest

from host_tests.simpump import SimPump, free_port
from itbtools import balance as B
from itbtools import doses as DO
from itbtools import pumpbench as PB
from itbtools import pumpctl as CTL

ACCEL = 60  # simulated ms per real ms: a 60 s bolus takes 1 s


@pytest.fixture
def pump(tmp_path):
    p = SimPump(tmp_path, accel=ACCEL)
    try:
        assert p.paired.exit_code == 0, p.paired.output
        yield p
    finally:
        p.close()


def status(pump):
    r = pump.ctl("status")
    assert r.exit_code == 0, r.output
    return r.stdout


def pump_facts(pump):
    """(strength ug/mL, rate ng/day) the pump reports over its own protocol."""

    async def go():
        async with CTL.PumpLink(CTL.Options("sim", pump.spec, str(pump.paths["clinician"]),
                                            str(pump.bonds), True, 10.0)) as p:  # fmt: skip
            st = await p.status()
            return st["conc"], st["rate_ng_per_day"]

    import asyncio

    return asyncio.run(go())


def cli(capsys, *args):
    rc = PB.main([str(a) for a in args])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def one_sentence(err):
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def radio_args(pump):
    return ["--sim-radio", pump.spec, "--key", pump.paths["clinician"], "--bonds", pump.bonds]


class FlowBalance:
    """A balance under a catheter delivering rate_ul_h from now on (real time)."""

    def __init__(self, rate_ul_h):
        self.t0 = time.monotonic()
        self.rate = Fraction(rate_ul_h)

    def mass_g(self, _t):
        return 10 + self.rate * Fraction(time.monotonic() - self.t0) / 3600 / 1000

    def open(self, port=None, baud=None, silence_s=60, out_dir=None):
        sb = B.SimBalance(self.mass_g, time.monotonic, resolution_g="0.000001")
        return B.Balance(sb, time.monotonic, B.Parser(silence_s))


def test_run_programs_a_rate_over_ble_and_logs_the_balance(pump, tmp_path, capsys, monkeypatch):
    conc, rate_before = pump_facts(pump)
    monkeypatch.setattr(PB, "_open_balance", FlowBalance(20).open)
    out_dir = tmp_path / "rate"
    rc, out, err = cli(capsys, "run", *radio_args(pump), "--balance", "sim", "--rate-ul-h", "20",
                       "--hours", "0.0015", "--interval-s", "0.5", "--analysis-start-min", "0",
                       "--windows", "0.025", "--no-plots", "--out", out_dir, "--confirm-increase")
    assert rc == 0, err
    want_ng = PB.programmed_ng_per_day(20, conc)
    assert want_ng != rate_before
    assert pump_facts(pump) == (conc, want_ng)  # what the pump runs now, asked over BLE again
    rep = json.loads((out_dir / "report.json").read_text())
    assert rep["programme_ng_per_day"] == want_ng and rep["strength_ug_per_ml"] == conc
    assert rep["pump"] == "the virtual pump's radio at %s (Bumble)" % pump.spec
    assert rep["readings"] >= 10 and rep["trumpet"]["complete"]
    assert (out_dir / "balance.csv").read_text().count("\n") > 10
    # The session left the key file's counter above every frame it sent.
    assert CTL.P.load_key_file(pump.paths["clinician"])[3] > 0


@pytest.mark.parametrize(
    ("rate", "words"),
    [
        ("40", "The pump needs this daily-dose increase confirmed: add --confirm-increase."),
        ("80", "The pump refused the rate: above maximum (the daily steps: "
               "steps[0].rate_ng_per_day)."),
    ],
)
def test_a_rate_the_pump_will_not_take_changes_nothing(pump, tmp_path, capsys, monkeypatch, rate,
                                                       words):  # fmt: skip
    before = pump_facts(pump)
    opened = []

    def open_balance(*a):
        opened.append(FlowBalance(0).open())
        return opened[-1]

    monkeypatch.setattr(PB, "_open_balance", open_balance)
    rc, _out, err = cli(capsys, "run", *radio_args(pump), "--balance", "sim", "--rate-ul-h",
                        rate, "--hours", "0.001", "--out", tmp_path / "r")  # fmt: skip
    assert rc == PB.EXIT_PARTIAL
    assert one_sentence(err) == "pumpbench: " + words
    assert pump_facts(pump) == before
    assert not (tmp_path / "r" / "balance.csv").exists()
    # The balance was opened before the pump was asked, and closed when it refused.
    assert len(opened) == 1 and opened[0].closed


class CountingBalance:
    """The balance gains each bolus's set volume when the pump has taken it (the fake part)."""

    def __init__(self):
        self.mass = Fraction(10)

    def open(self, port=None, baud=None, silence_s=60, out_dir=None):
        sb = B.SimBalance(lambda _t: self.mass, time.monotonic, resolution_g="0.000001")
        return B.Balance(sb, time.monotonic, B.Parser(silence_s))

    def watch(self, make_board):
        def board(*args, **kw):
            b = make_board(*args, **kw)
            real = b.bolus

            def bolus(volume_ul, duration_s):
                set_ul, res = real(volume_ul, duration_s)
                self.mass += set_ul / 1000
                return set_ul, res

            b.bolus = bolus
            return b

        return board


def test_a_bolus_series_over_ble(pump, tmp_path, capsys, monkeypatch):
    bal = CountingBalance()
    monkeypatch.setattr(PB, "_open_balance", bal.open)
    monkeypatch.setattr(PB, "pump_board", bal.watch(PB.pump_board))
    monkeypatch.setattr(PB, "SLEEP", lambda s: time.sleep(s / ACCEL + 0.2))
    rc, out, err = cli(capsys, "run", *radio_args(pump), "--balance", "sim", "--boluses", "2",
                       "--bolus-ul", "1.5", "--bolus-s", "60", "--settle-s", "5", "--out",
                       tmp_path)  # fmt: skip
    assert rc == 0, err
    conc = pump_facts(pump)[0]
    set_ul = Fraction(PB.bolus_dose_ng("1.5", conc), conc)
    assert "2 boluses of %s uL" % DO.num_text(set_ul, 4) in out
    rep = json.loads((tmp_path / "report.json").read_text())
    assert rep["bolus"]["boluses"] == 2 and rep["stopped"] is None
    hist = tmp_path / "h.json"
    r = pump.ctl("history", "--json", str(hist), "--rows", "1")
    assert r.exit_code == 0, r.output
    records = json.loads(hist.read_text())
    dose_ng = PB.bolus_dose_ng("1.5", conc)
    for event in ("bolus_start", "bolus_end"):
        # Both boluses were given whole before the next (the waits cover 60 s of pump time).
        done = [r["args"] for r in records if r["event"] == event and r["args"][0] == "clinician"]
        assert done == [["clinician", dose_ng]] * 2, (event, done)


def test_a_bolus_refused_over_ble_ends_the_series_with_the_pumps_reason(pump, tmp_path, capsys,
                                                                        monkeypatch):  # fmt: skip
    bal = CountingBalance()
    monkeypatch.setattr(PB, "_open_balance", bal.open)
    monkeypatch.setattr(PB, "pump_board", bal.watch(PB.pump_board))
    monkeypatch.setattr(PB, "SLEEP", lambda s: None)  # the next bolus while one still runs
    rc, out, err = cli(capsys, "run", *radio_args(pump), "--balance", "sim", "--boluses", "3",
                       "--bolus-ul", "1", "--bolus-s", "600", "--out", tmp_path)  # fmt: skip
    assert rc == PB.EXIT_PARTIAL
    line = one_sentence(err)
    assert line.startswith("pumpbench: The bolus series stopped after 1 of 3 boluses: the pump "
                           "refused the clinician bolus: "), line
    assert "already running" in line
    assert "1 bolus of 1 uL" in out
    assert json.loads((tmp_path / "report.json").read_text())["bolus"]["boluses"] == 1


@pytest.mark.parametrize(
    ("key", "words"),
    [
        ("patient", "Commanding the pump needs the clinician's key file; %s is the patient's."),
        (None, "Commanding the pump over BLE needs the clinician's key file: --key FILE."),
        ("missing", None),
    ],
)
def test_ble_usage_errors_open_no_port(tmp_path, capsys, monkeypatch, key, words):
    from itbtools.errors import sentence
    from tools import provision as P

    paths = P.provision("ITB-NONE", tmp_path)
    paths["missing"] = tmp_path / "no-such.key"
    if words is None:  # pumpctl's own sentence for a key file it cannot load, passed on
        with pytest.raises(P.ProvisionError) as e:
            P.load_key_file(paths["missing"])
        words = sentence(str(e.value))
    args = ["run", "--sim-radio", "127.0.0.1:%d" % free_port(), "--balance", "x",
            "--rate-ul-h", "10", "--out", tmp_path / "o"]  # fmt: skip
    if key:
        args += ["--key", paths[key]]
    opened = []
    monkeypatch.setattr(PB, "_open_balance", lambda *a: opened.append(a))
    rc, _out, err = cli(capsys, *args)
    assert rc == PB.EXIT_USAGE
    want = words % paths[key] if "%s" in words else words
    assert one_sentence(err) == "pumpbench: " + want
    assert opened == [] and not (tmp_path / "o").exists()


def test_no_pump_listening_is_one_sentence(tmp_path, capsys, monkeypatch):
    from tools import provision as P

    paths = P.provision("ITB-NONE", tmp_path)
    monkeypatch.setattr(PB, "_open_balance", FlowBalance(0).open)
    spec = "127.0.0.1:%d" % free_port()
    rc, _out, err = cli(capsys, "run", "--sim-radio", spec, "--key", paths["clinician"],
                        "--bonds", tmp_path / "b.json", "--balance", "x", "--rate-ul-h", "10",
                        "--out", tmp_path / "o")  # fmt: skip
    assert rc == PB.EXIT_PARTIAL
    assert one_sentence(err).startswith("pumpbench: The pump did not take the rate over BLE: ")
    assert spec in err


def test_a_link_that_speaks_garbage_is_one_sentence_without_a_stack_trace(tmp_path, capsys,
                                                                         monkeypatch, caplog):
    # Something other than a virtual pump's HCI answers on the port, then hangs up: Bumble logs
    # the lost transport, with a traceback, unless the tools quiet it (on a terminal that goes
    # to stderr; under pytest, to caplog).
    import socket
    import threading

    from tools import provision as P

    paths = P.provision("ITB-NONE", tmp_path)
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)

    def babble():
        conn, _ = srv.accept()
        try:
            conn.sendall(b"\xff\x00garbage, not HCI\r\n" * 8)
            time.sleep(0.5)  # the programmer's host is waiting for an answer to its reset
        finally:
            conn.close()

    threading.Thread(target=babble, daemon=True).start()
    monkeypatch.setattr(PB, "_open_balance", FlowBalance(0).open)
    spec = "127.0.0.1:%d" % srv.getsockname()[1]
    try:
        rc, _out, err = cli(capsys, "run", "--sim-radio", spec, "--key", paths["clinician"],
                            "--bonds", tmp_path / "b.json", "--balance", "x", "--rate-ul-h",
                            "10", "--out", tmp_path / "o")  # fmt: skip
    finally:
        srv.close()
    assert rc == PB.EXIT_PARTIAL
    assert one_sentence(err).startswith("pumpbench: The pump did not take the rate over BLE: ")
    assert [r.getMessage() for r in caplog.records if r.name.startswith("bumble")] == []
