# pumpctl (the clinician programmer) end to end: a virtual pump in another process
# (tools/sim_radio.py) served over Bumble's TCP transport, pumpctl driving it as a user would.

import asyncio
import csv
import json
import os
import re
import signal
import stat
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import click
import pytest
from bleak.exc import BleakGATTProtocolError
from click.testing import CliRunner

from host_tests.simpump import PUMP_ID, SimPump, free_port
from itbtools import gatt_bleak as GB
from itbtools import gatt_bumble as GBU
from itbtools import pumpctl as CTL
from itbtools import pumpdata as D
from itbtools.gatt import LinkError
from link import codes as K
from link import service as SV
from link import wire as W
from pump import rx as RX
from tools import provision as P

ROOT = Path(__file__).resolve().parent.parent
# The programme files' patient bolus is the demo's, so the lockout test means the same
# whichever programme runs.
PATIENT = {"dose_ug": 15, "duration_min": 10, "lockout_min": 180, "max_per_24h": 4}


@pytest.fixture(scope="module")
def pump(tmp_path_factory):
    p = SimPump(tmp_path_factory.mktemp("pumpctl"))
    try:
        yield p
    finally:
        p.close()


@pytest.fixture
def fresh_pump(tmp_path):
    """A pump of its own, for a test that changes its strength or raises alarms."""
    p = SimPump(tmp_path)
    try:
        yield p
    finally:
        p.close()


def ok(result):
    assert result.exit_code == 0, (result.exit_code, result.stdout, result.stderr)
    # result.output has stdout and stderr: a traceback printed by a thread shows up here.
    assert "Traceback" not in result.output, result.output
    return result.stdout


def failed(result, code):
    """The failure is one sentence on stderr, with its exit code and no traceback."""
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    assert not isinstance(result.exception, Exception) or isinstance(
        result.exception, SystemExit), result.exception  # fmt: skip
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pumpctl: "), result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    return lines[0]


def rx_file(folder, name, steps, **extra):
    doc = {"programme": {"steps": steps, "patient": PATIENT}}
    doc.update(extra)
    path = folder / name
    path.write_text(json.dumps(doc))
    return path


# ---- pairing and status ----------------------------------------------------------------


@pytest.mark.req("SR-25")
def test_pair_keeps_a_bond_that_status_uses(pump):
    out = ok(pump.paired)
    assert "Paired with pump %s." % PUMP_ID in out
    assert stat.S_IMODE(os.stat(pump.bonds).st_mode) == 0o600
    before = P.load_key_file(pump.paths["clinician"])[3]
    out = ok(pump.ctl("status"))
    assert "Pump %s (clinician key)" % PUMP_ID in out
    assert "running the programme" in out
    assert "at 500 µg/mL" in out
    assert "00:00-05:00  300 µg/day  (25 µL/h)" in out  # the demo's first step
    # The session's command counters were saved to the key file.
    assert P.load_key_file(pump.paths["clinician"])[3] > before
    assert P.load_key_file(pump.paths["clinician"])[2].hex() not in out


def test_a_programmer_without_the_bond_is_told_to_pair(pump, tmp_path):
    line = failed(pump.ctl("status", bonds=tmp_path / "other-bonds.json"), CTL.EXIT_LINK)
    assert "no bond with the pump: run `pumpctl pair`" in line


def test_scan_lists_the_pump(pump):
    out = ok(pump.ctl("scan", "--seconds", "1.5", key=None))
    assert "ITB  (an ITB pump)" in out


# ---- programme -------------------------------------------------------------------------


@pytest.mark.req("SR-03")
def test_program_shows_old_and_new_and_commits_only_when_confirmed(pump, tmp_path):
    path = rx_file(tmp_path, "rx.json", [{"start": "00:00", "ug_per_day": 340},
                                         {"start": "08:00", "ug_per_day": 360}])
    r = pump.ctl("program", str(path), input="n\n")
    line = failed(r, CTL.EXIT_CANCELLED)
    assert "Nothing changed: the pump keeps running its programme" in line
    out = r.stdout
    assert "running now" in out and "new" in out
    assert "05:00-07:00  330 µg/day  (27.5 µL/h)" in out  # old, at 500 µg/mL
    assert "08:00-24:00  360 µg/day  (30 µL/h)" in out  # new
    assert "empty by" in out and "with every patient bolus" in out and "daily volume" in out
    status = ok(pump.ctl("status"))
    assert "05:00-07:00  330 µg/day" in status  # still the demo programme
    assert "a programme is staged" in status

    r = pump.ctl("program", str(path), input="y\n")
    assert "Committed: the pump runs the new programme (daily dose 353.334 µg)." in ok(r)
    status = ok(pump.ctl("status"))
    assert "00:00-08:00  340 µg/day" in status and "330 µg/day" not in status


def test_a_programme_the_pump_refuses_gives_its_reason(pump, tmp_path):
    path = rx_file(tmp_path, "big.json", [{"start": "00:00", "ug_per_day": 1000}])
    line = failed(pump.ctl("--yes", "program", str(path)), CTL.EXIT_REFUSED)
    assert line == ("pumpctl: The pump refused the new programme: above maximum (the daily "
                    "steps: steps[0].rate_ng_per_day).")  # fmt: skip


def test_a_large_increase_needs_its_own_confirmation(pump, tmp_path):
    path = rx_file(tmp_path, "up.json", [{"start": "00:00", "ug_per_day": 600}])
    line = failed(pump.ctl("--yes", "program", str(path)), CTL.EXIT_REFUSED)
    assert "add --confirm-increase" in line
    r = pump.ctl("program", str(path), input="n\n")
    failed(r, CTL.EXIT_CANCELLED)
    assert "rises by more than the pump's step limit" in r.stdout
    assert "600 µg/day" not in ok(pump.ctl("status"))


@pytest.mark.parametrize("content, words", [
    ("{not json", "is not valid JSON"),
    ('{"programme": {"steps": [{"start": "00:00", "ug_per_day": "lots"}]}}',
     "programme.steps[0].ug_per_day must be a plain decimal number"),
    ('{"programme": {"steps": []}, "strength_ug_per_ml": 333}', "strength_ug_per_ml must be"),
    ('{"title": "no programme"}', "has no programme"),
])  # fmt: skip
def test_a_bad_prescription_file_is_a_usage_error(pump, tmp_path, content, words):
    path = tmp_path / "bad.json"
    path.write_text(content)
    assert words in failed(pump.ctl("program", str(path)), CTL.EXIT_USAGE)


def test_a_patient_key_cannot_program(pump, tmp_path):
    path = rx_file(tmp_path, "rx.json", [{"start": "00:00", "ug_per_day": 340}])
    line = failed(pump.ctl("program", str(path), key="patient"), CTL.EXIT_USAGE)
    assert "needs the clinician's key file" in line and "patient's" in line


# ---- bolus -------------------------------------------------------------------------------


@pytest.mark.req("SR-05")
def test_patient_bolus_granted_then_refused_for_the_lockout(pump):
    out = ok(pump.ctl("bolus", key="patient"))
    assert "Patient bolus started: 15 µg over 10 min." in out
    line = failed(pump.ctl("bolus", key="patient"), CTL.EXIT_REFUSED)
    assert line == ("pumpctl: The pump refused the patient bolus: inside the lockout interval "
                    "(the patient bolus).")  # fmt: skip


def test_clinician_bolus_needs_both_options(pump):
    assert "needs both --dose-ug and --minutes" in failed(
        pump.ctl("bolus", "--dose-ug", "20"), CTL.EXIT_USAGE)  # fmt: skip
    line = failed(pump.ctl("bolus", "--dose-ug", "200", "--minutes", "30", input="y\n"),
                  CTL.EXIT_REFUSED)  # fmt: skip
    assert "above the single-bolus limit" in line


# ---- refill, alarms, clock -----------------------------------------------------------------


@pytest.mark.req("SR-27")
def test_refill_with_a_discrepancy_and_a_new_strength(fresh_pump):
    p = fresh_pump
    # 5 mL withdrawn where about 20 mL is expected: the discrepancy is shown; going on, the
    # new fill at twice the strength, the bridge bolus explained, committed.
    r = p.ctl("refill", "--strength", "1000", input="5\ny\n20\ny\n")
    out = ok(r)
    assert "Step 1: empty the reservoir" in out
    assert re.search(r"Step 2: the discrepancy check\. Withdrawn 5 mL, expected (20|19\.\d+) mL",
                     out)  # fmt: skip
    assert "DISCREPANCY:" in out and "suspected under-infusion" not in out
    assert "suspected over-infusion" in out  # less came out than expected
    assert "New fill: 20 mL at 1000 µg/mL." in out
    assert "Step 4: the bridge bolus." in out
    assert "from 00:00: 300 µg/day, 25 µL/h now, 12.5 µL/h after the bridge" in out
    assert "Refill committed: 20 mL at 1000 µg/mL." in out
    assert "bridge bolus of" in out and "pulses at 500 µg/mL, then 1000 µg/mL" in out
    assert "the discrepancy alarm is raised" in out
    status = ok(p.ctl("status"))
    # The bridge runs first: the line holds the old strength.
    assert re.search(r"reservoir\W+20 mL at 500 µg/mL \(1000 µg/mL after the bridge bolus\)",
                     status)  # fmt: skip
    # A programme staged during the bridge is at the new strength, the one the pump will run.
    path = rx_file(p.dir, "after.json", [{"start": "00:00", "ug_per_day": 340}])
    r = p.ctl("program", str(path), input="n\n")
    failed(r, CTL.EXIT_CANCELLED)
    assert "00:00-24:00  340 µg/day  (14.17 µL/h)" in r.stdout
    # The alarm it raised: listed, snoozed, acknowledged.
    out = ok(p.ctl("alarms", "list"))
    assert "refill discrepancy" in out and "accounting_discrepancy" in out
    assert "Snoozed for 10 min" in ok(p.ctl("alarms", "snooze", "accounting_discrepancy",
                                            "--minutes", "10"))  # fmt: skip
    assert "Acknowledged: refill discrepancy." in ok(p.ctl("alarms", "ack",
                                                           "accounting_discrepancy"))
    line = failed(p.ctl("alarms", "ack", "motor_stall"), CTL.EXIT_REFUSED)
    assert "nothing of that kind is active" in line
    # While the bridge runs the pump takes no other strength: refused with its reason, the
    # refill abandoned.
    r = p.ctl("refill", "--strength", "500", input="1\ny\n20\n")
    line = failed(r, CTL.EXIT_REFUSED)
    assert line == ("pumpctl: The pump refused the new fill: a bridge bolus is running (the "
                    "strength).")  # fmt: skip
    assert "The refill was abandoned" in r.stdout
    # A refill stopped at its discrepancy, before any fill is entered: abandoned, nothing
    # changed.
    r = p.ctl("refill", input="1\nn\n")
    assert "DISCREPANCY:" in r.stdout and "New fill" not in r.stdout
    assert "Nothing changed: the refill was stopped at the discrepancy" in failed(
        r, CTL.EXIT_CANCELLED)  # fmt: skip
    assert "The refill was abandoned" in r.stdout
    assert "a refill is open" not in ok(p.ctl("status"))


def test_refill_within_tolerance_declined_at_commit(fresh_pump, tmp_path):
    p = fresh_pump
    # A second programmer inside the pairing window whose user does not confirm the number.
    r = p.ctl("pair", key=None, bonds=tmp_path / "declined.json", input="n\n")
    assert "Pairing cancelled: the number was not confirmed." in failed(r, CTL.EXIT_CANCELLED)
    assert "Pairing number: " in r.stdout
    assert "no bond with the pump" in failed(p.ctl("status", bonds=tmp_path / "declined.json"),
                                             CTL.EXIT_LINK)  # fmt: skip
    ml = re.search(r"reservoir\W+([\d.]+) mL at", ok(p.ctl("status"))).group(1)
    r = p.ctl("refill", input="%s\n18\nn\n" % ml)
    assert "the refill was not committed" in failed(r, CTL.EXIT_CANCELLED)
    assert "Within tolerance." in r.stdout
    assert "Step 4: no bridge bolus" in r.stdout
    assert "The refill was abandoned" in r.stdout
    # The alarm test and the clock, on this pump of its own.
    assert "Alarm test started" in ok(p.ctl("alarms", "test"))
    out = ok(p.ctl("--yes", "set-time", "2026-01-02 03:04"))
    assert "The pump's clock is set to 2026-01-02 03:04:00." in out
    assert "must be a date and time" in failed(p.ctl("set-time", "tomorrow"), CTL.EXIT_USAGE)


# ---- history -----------------------------------------------------------------------------


@pytest.mark.req("SR-49")
def test_history_exports_csv_and_json_that_match(pump, tmp_path):
    c, j = tmp_path / "h.csv", tmp_path / "h.json"
    out = ok(pump.ctl("history", "--csv", str(c), "--json", str(j), "--rows", "5",
                      key="patient"))  # fmt: skip
    records = json.loads(j.read_text())
    with open(c, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(records) == len(rows) > 20
    assert "History: %d records" % len(records) in out
    assert "%d older records not shown" % (len(records) - 5) in out
    for rec, row in zip(records, rows, strict=True):
        assert (str(rec["seq"]), str(rec["wall_ms"]), rec["time"], rec["event"]) == (
            row["seq"], row["wall_ms"], row["time"], row["event"])  # fmt: skip
        assert json.loads(row["args"]) == rec["args"]
    seqs = [r["seq"] for r in records]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    events = {r["event"] for r in records}
    # The pump's own log: its commissioning and this test module's sessions over the radio.
    assert {"commissioned", "program", "ble_session", "ble_pairing"} <= events
    assert any(r["event"] == "ble_session" and r["args"][1] == "patient" for r in records)


# ---- errors --------------------------------------------------------------------------------


def test_a_key_file_for_another_pump(pump, tmp_path):
    other = P.provision("ITB-OTHER-9", tmp_path)
    line = failed(pump.ctl("status", key=other["clinician"]), CTL.EXIT_USAGE)
    assert line == ("pumpctl: The key file %s is for pump ITB-OTHER-9, but this pump is %s."
                    % (other["clinician"], PUMP_ID))  # fmt: skip


def test_a_key_the_pump_does_not_hold(pump, tmp_path):
    doc = json.loads(pump.paths["clinician"].read_text())
    doc["key"] = bytes(32).hex()
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps(doc))
    line = failed(pump.ctl("status", key=wrong), CTL.EXIT_REFUSED)
    assert "did not accept the clinician key in %s" % wrong in line


def test_an_unreadable_key_file(pump, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    assert "is not a readable key file" in failed(pump.ctl("status", key=bad), CTL.EXIT_USAGE)
    r = CliRunner().invoke(CTL.cli, ["--address", pump.spec, "status"])
    assert "Give the pump's key file with --key FILE" in failed(r, CTL.EXIT_USAGE)


def test_no_pump_listening(pump):
    spec = "127.0.0.1:%d" % free_port()
    line = failed(pump.ctl("status", address=spec), CTL.EXIT_LINK)
    assert line == ("pumpctl: No virtual pump is listening at %s: start one with "
                    "`make sim-radio`." % spec)  # fmt: skip


# Values the protocol's fields cannot hold are the user's mistake, said in one sentence before
# anything is sent (not "pumpctl failed unexpectedly", exit 5).
@pytest.mark.parametrize("args, words", [
    (("bolus", "--dose-ug", "20", "--minutes", str(2**32 // 60 + 1)),
     "The bolus duration is too long: at most 71582788 min."),
    (("bolus", "--dose-ug", "5000000", "--minutes", "30"),
     "The bolus dose is too large: at most 4294967.295 µg."),
    (("history", "--from", "-1"), "--from must be a sequence number from 1 to 4294967295."),
    (("history", "--from", str(2**32)), "--from must be a sequence number from 1 to"),
    (("refill", "--withdrawn-ml", "5000", "--fill-ml", "20"),
     "The withdrawn volume is too large: at most 4294.967 mL."),
    (("refill", "--withdrawn-ml", "10", "--fill-ml", "4294.967296"),
     "The fill volume is too large: at most 4294.967 mL."),
    (("refill", "--withdrawn-ml", "10", "--fill-ml", "20", "--strength", "70000"),
     "The strength must be one of"),
    (("--timeout", "-1", "status"), "--timeout must be above zero."),
])  # fmt: skip
def test_out_of_range_values_are_usage_errors(pump, args, words):
    line = failed(pump.ctl(*args, input="y\ny\ny\n"), CTL.EXIT_USAGE)
    assert words in line


@pytest.mark.parametrize("programme, words", [
    ({"steps": [{"start": "00:00", "ug_per_day": 5000000}]},
     "programme.steps[0].ug_per_day must be from 0 to 4294967.295"),
    ({"steps": [{"start": "00:00", "ug_per_day": -5}]},
     "programme.steps[0].ug_per_day must be from 0 to"),
    ({"steps": [{"start": "00:00", "ug_per_day": 300}],
      "periodic": [{"start": "08:00", "dose_ug": 4294968, "duration_min": 10}]},
     "programme.periodic[0].dose_ug must be from 0 to"),
    ({"steps": [{"start": "00:00", "ug_per_day": 300}], "patient": dict(PATIENT, dose_ug=-1)},
     "programme.patient.dose_ug must be from 0 to"),
    ({"steps": [{"start": "00:00", "ug_per_day": 300}],
      "patient": dict(PATIENT, max_per_24h=300)},
     "programme.patient.max_per_24h must be from 0 to 255"),
    ({"steps": [{"start": "%02d:%02d" % divmod(i * 5, 60), "ug_per_day": 300}
                for i in range(256)]},
     "at most 255 steps"),
])  # fmt: skip
def test_a_prescription_the_protocol_cannot_carry_is_a_usage_error(pump, tmp_path, programme,
                                                                   words):  # fmt: skip
    path = tmp_path / "rx.json"
    path.write_text(json.dumps({"programme": programme}))
    assert words in failed(pump.ctl("program", str(path), input="y\ny\n"), CTL.EXIT_USAGE)


# Ctrl-C while a question waits for the user: the terminal's SIGINT goes to the main thread
# (the event loop) while the prompt's thread stays blocked reading; pumpctl must end at once.
@pytest.mark.parametrize("prompt, args", [
    ("confirm", ("set-time", "2031-03-04 05:06")),
    ("prompt", ("refill",)),
])  # fmt: skip
def test_ctrl_c_at_a_question_ends_pumpctl(pump, monkeypatch, prompt, args):
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals reach only the main thread")
    released = threading.Event()
    asked = []

    def blocked_at_the_terminal(*_a, **_kw):
        asked.append(True)
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
        released.wait(20)  # a user who never answers
        return "y"

    monkeypatch.setattr(click, prompt, blocked_at_the_terminal)
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    t0 = time.monotonic()
    try:
        r = pump.ctl(*args)
    finally:
        took = time.monotonic() - t0
        released.set()
        signal.signal(signal.SIGINT, before)
    assert asked
    assert failed(r, CTL.EXIT_CANCELLED) == "pumpctl: Interrupted."
    assert took < 15
    assert "2031-03-04" not in ok(pump.ctl("status"))


def test_an_interrupt_raised_in_the_prompt_is_no_answer(pump, monkeypatch):
    def interrupted(*_a, **_kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(click, "confirm", interrupted)
    line = failed(pump.ctl("set-time", "2031-03-04 05:06"), CTL.EXIT_CANCELLED)
    assert line == "pumpctl: Nothing changed: interrupted at the question."
    monkeypatch.setattr(click, "prompt", interrupted)
    line = failed(pump.ctl("refill"), CTL.EXIT_CANCELLED)
    assert line == "pumpctl: Nothing changed: no answer was given."


@pytest.mark.parametrize("kept", [range(1, 1), range(5, 120), range(300, 420),
                                  range(2**32 - 300, 2**32 - 9), range(2**32 - 50, 2**32)])
def test_the_newest_sequence_number_is_found_up_to_the_fields_top(kept):
    """last_seq finds the newest record from counts alone; its search must not ask for a range
    the protocol's u32 fields cannot hold, even when the numbers are near their top."""
    asked = []

    class Counts:
        async def count(self, first, last):
            struct.pack("<II", first, last)  # what the real request does with them
            asked.append(last)
            return sum(1 for q in kept if first <= q <= last)

    newest = asyncio.run(CTL.PumpLink.last_seq(Counts()))
    assert newest == (kept[-1] if len(kept) else 0)
    assert max(asked) == CTL.SEQ_MAX


def test_the_bond_file_is_never_readable_by_others(tmp_path, monkeypatch):
    modes = []
    replace = os.replace

    def spy(src, dst):
        modes.append(stat.S_IMODE(os.stat(src).st_mode))
        replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    path = tmp_path / "new-folder" / "bonds.json"
    old_umask = os.umask(0o022)
    try:
        store = GBU.BondStore(namespace="F0:00:00:00:00:01", filename=str(path))
        asyncio.run(store.save({"F0:00:00:00:00:01": {"peer": {"ltk": {"value": "00"}}}}))
        # A temporary file left readable by an earlier run is not reused as it is.
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("")
        tmp.chmod(0o644)
        asyncio.run(store.save({}))
    finally:
        os.umask(old_umask)
    assert modes == [0o600, 0o600]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700


def test_the_installed_command_fails_in_one_sentence(pump, tmp_path):
    exe = Path(sys.executable).parent / "pumpctl"
    if not exe.exists():
        pytest.skip("pumpctl is not installed in this environment (make venv)")
    t0 = time.monotonic()
    r = subprocess.run([str(exe), "--address", pump.spec, "--bonds", str(pump.bonds), "--key",
                        str(pump.paths["patient"]), "alarms", "test"],
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode == CTL.EXIT_USAGE, r
    assert r.stderr.strip() == ("pumpctl: The alarm test needs the clinician's key file; %s is "
                                "the patient's." % pump.paths["patient"])  # fmt: skip
    assert time.monotonic() - t0 < 30


def test_keys_new_writes_files_and_never_prints_keys(tmp_path):
    r = CliRunner().invoke(CTL.cli, ["keys", "new", "--pump-id", "ITB-NEW-2", "--out",
                                     str(tmp_path)])  # fmt: skip
    out = ok(r)
    for role in ("clinician", "patient"):
        path = tmp_path / ("ITB-NEW-2-%s.json" % role)
        assert str(path) in out
        assert P.load_key_file(path)[2].hex() not in out
    assert (tmp_path / "ITB-NEW-2.pump").exists()
    again = CliRunner().invoke(CTL.cli, ["keys", "new", "--pump-id", "ITB-NEW-2", "--out",
                                         str(tmp_path)])  # fmt: skip
    assert "exists already; keys are never overwritten" in failed(again, CTL.EXIT_USAGE)


# ---- the pieces, without a pump ----------------------------------------------------------


def test_numbers_are_rounded_from_exact_values():
    assert D.ug(15_000) == "15" and D.ug(12_345) == "12.345" and D.ug(1) == "0.001"
    assert D.ml(19_950_001) == "19.95" and D.ml(500) == "0.001" and D.ml(499) == "0"
    assert D.ul_per_h(300_000, 500) == "25" and D.ul_per_h(330_000, 500) == "27.5"
    assert D.ul_per_h(100_000, 500) == "8.33" and D.ul_per_h(200_000, 1500) == "5.56"
    assert D.decimal_text(D.Fraction(-1, 8), 2) == "-0.13"


def test_the_programme_list_is_read_and_checked():
    rx = RX.Prescription(500, [(0, 300_000), (420, 400_000)], [(420, 20_000, 1800)],
                         patient_dose_ng=15_000, patient_duration_s=600,
                         patient_lockout_s=10_800, patient_max_per_24h=4)  # fmt: skip
    raw = W.encode_rx(rx)
    data = struct.pack("<H", len(raw)) + raw + struct.pack("<II", 373_334, W.crc32(raw))
    running, staged = D.programmes(data + b"\x00\x00")
    assert running == (rx, 373_334, 0xC1B96923) and staged is None  # the protocol's vector
    with pytest.raises(D.DataError):
        D.programmes(data[:-1] + bytes((data[-1] ^ 1,)) + b"\x00\x00")  # a wrong CRC
    assert D.worst_daily_ng(rx) == RX.daily_dose_ng(rx) + 4 * 15_000


def test_history_reading_finds_a_broken_chain():
    from pump import codec as C
    from pump import store as ST

    recs = []
    link = ST.ZERO_HASH
    for seq in (7, 8, 9):
        payload = C.encode([link, 1_000 * seq, "e%d" % seq, [seq, b"\x01"]])
        rec = C.frame(ST.LOG_KIND, ST.VERSION, seq, bytes(payload))
        recs.append(rec)
        link = ST.chain_hash(rec)
    records, problems = D.history(b"".join(recs))
    assert [r["seq"] for r in records] == [7, 8, 9] and problems == []
    assert records[0]["args"] == [7, "01"] and records[2]["event"] == "e9"
    records, problems = D.history(recs[0] + recs[2])
    assert problems == ["sequence jumps from 7 to 9"]
    forged = C.frame(ST.LOG_KIND, ST.VERSION, 8, bytes(C.encode([bytes(16), 0, "x", []])))
    assert D.history(recs[0] + forged)[1] == ["hash chain broken at 8"]


def test_refusals_are_put_in_words():
    class Reply:
        def __init__(self, result, data=b""):
            self.result = result
            self.data = data

        def reason(self):
            return (self.data[0], self.data[2:].decode()) if self.data else None

    r = Reply(K.REFUSED, W.refusal_data(12, "patient"))
    assert D.refusal_text("the bolus", r) == ("The pump refused the bolus: boluses per 24 h used "
                                              "up (the patient bolus).")  # fmt: skip
    r = Reply(K.REFUSED, W.refusal_data(7, "periodic[1].start_min"))
    assert D.refusal_text("it", r) == ("The pump refused it: boluses overlap (the periodic "
                                       "boluses: periodic[1].start_min).")  # fmt: skip
    assert "not allowed for this key file's role" in D.refusal_text("x", Reply(K.NOT_ALLOWED))
    assert "(bad CRC)" in D.refusal_text("x", Reply(K.BAD_CRC))


# ---- the bleak transport, with a fake bleak ---------------------------------------------


class _FakeScanner:
    devices = {}  # address: (device, adv)
    asked = []

    @classmethod
    async def find_device_by_name(cls, name, timeout):
        cls.asked.append(("name", name))
        return next((d for d, a in cls.devices.values() if a.local_name == name), None)

    @classmethod
    async def find_device_by_address(cls, address, timeout):
        cls.asked.append(("address", address))
        return cls.devices.get(address, (None, None))[0]

    @classmethod
    async def discover(cls, timeout, return_adv):
        assert return_adv is True
        return dict(cls.devices)


class _Obj:
    def __init__(self, **kw):
        self.__dict__.update(kw)


class _FakeClient:
    made = []

    def __init__(self, device, timeout):
        self.device = device
        self.calls = []
        self.callbacks = {}
        self.deny = set()
        _FakeClient.made.append(self)

    async def connect(self):
        self.calls.append(("connect",))

    async def disconnect(self):
        self.calls.append(("disconnect",))

    async def pair(self):
        self.calls.append(("pair",))

    async def write_gatt_char(self, uuid, data, response=None):
        if uuid in self.deny:
            raise BleakGATTProtocolError(0x05)
        self.calls.append(("write", uuid, bytes(data), response))

    async def read_gatt_char(self, uuid):
        return bytearray(b"ITB-CTL-1")

    async def start_notify(self, uuid, callback):
        self.calls.append(("notify", uuid))
        self.callbacks[uuid] = callback


def test_the_bleak_transport_uses_bleaks_documented_calls():
    import asyncio

    dev = _Obj(address="AA:BB:CC:DD:EE:FF", name=None)
    _FakeScanner.devices = {dev.address: (dev, _Obj(local_name="ITB", rssi=-50))}

    async def go():
        g = GB.BleakGatt(None, client_class=_FakeClient, scanner_class=_FakeScanner)
        await g.open()
        assert await g.scan(1.0) == [("AA:BB:CC:DD:EE:FF", "ITB", -50)]
        await g.connect()
        await g.pair()
        await g.secure()
        await g.setup()
        client = g.client
        # Indications and notifications alike go through start_notify; values reach the queue.
        qs = {}
        for ch in SV.CONTROL_POINTS:
            qs[ch] = await g.subscribe(CTL.LS.uuid_of(ch), True)
        data_q = await g.subscribe(CTL.LS.uuid_of(SV.CH_COMMAND_DATA), False)
        client.callbacks[CTL.LS.uuid_of(SV.CH_COMMAND_DATA)](object(), bytearray(b"\x01\x02"))
        assert data_q.get_nowait() == b"\x01\x02" and qs[SV.CH_AUTH_CP].empty()
        await g.write(CTL.LS.uuid_of(SV.CH_AUTH_CP), b"frame")
        assert await g.read("00002a25-0000-1000-8000-00805f9b34fb") == b"ITB-CTL-1"
        client.deny.add("x")
        with pytest.raises(LinkError) as e:
            await g.write("x", b"y")
        assert "not paired and encrypted: run `pumpctl pair`" in str(e.value)
        await g.close()
        return client

    client = asyncio.run(go())
    assert _FakeScanner.asked[-1] == ("name", "ITB")
    assert client.calls[:2] == [("connect",), ("pair",)]
    assert ("write", CTL.LS.uuid_of(SV.CH_AUTH_CP), b"frame", True) in client.calls
    assert [c[1] for c in client.calls if c[0] == "notify"] == [
        CTL.LS.uuid_of(ch) for ch in SV.CONTROL_POINTS] + [
        CTL.LS.uuid_of(SV.CH_COMMAND_DATA)]  # fmt: skip
    assert client.calls[-1] == ("disconnect",)


def test_the_bleak_transport_finds_by_address_and_says_when_nothing_is_there():
    import asyncio

    _FakeScanner.devices = {}

    async def go():
        g = GB.BleakGatt("AA:BB:CC:DD:EE:01", client_class=_FakeClient,
                         scanner_class=_FakeScanner)  # fmt: skip
        await g.open()
        with pytest.raises(LinkError) as e:
            await g.connect()
        return str(e.value)

    assert asyncio.run(go()).startswith("No pump AA:BB:CC:DD:EE:01 is advertising nearby")
    assert _FakeScanner.asked[-1] == ("address", "AA:BB:CC:DD:EE:01")


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["--bogus"], "pumpctl: No such option '--bogus'. Did you mean '--bonds'?"),
        (["status", "--x"], "pumpctl: No such option '--x'."),
        (["program"], "pumpctl: Missing argument 'RX.json'."),
        (["frobnicate"], "pumpctl: No such command 'frobnicate'."),
        (["--transport", "wifi", "status"], "pumpctl: Invalid value for '--transport': 'wifi' "
                                            "is not one of 'sim', 'ble'."),
    ],
)
def test_clicks_own_usage_errors_are_one_line(args, line):
    assert failed(CliRunner().invoke(CTL.cli, args), CTL.EXIT_USAGE) == line


def test_the_help_still_shows_and_succeeds():
    r = CliRunner().invoke(CTL.cli, ["--help"])
    assert r.exit_code == 0 and "Commands:" in r.stdout and r.stderr == ""
    r = CliRunner().invoke(CTL.cli, [])
    assert r.exit_code == CTL.EXIT_USAGE and "Commands:" in r.stderr
