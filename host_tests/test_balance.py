# The bench rig's balance (itbtools/balance.py): the MT-SICS parser on recorded transcripts with
# garbage, dynamic readings, overload, a cable pulled mid-line and times out of order; the port
# wrapper, the simulated balance, the CSV log that keeps every line written, and the transcripts
# of the port (recorded through a real pty by tools/record_balance_transcripts.py).

import os
import re
import tempfile
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from itbtools import balance as B
from tools import record_balance_transcripts as R

D = Decimal

# A polled session as a 6-decimal balance sends it (one SI answer every 30 s), with the events
# each answer must give.
POLLED = [
    (b"S S      10.000001 g\r\n", ("reading", D("10.000001"), True)),
    (b"S D      10.000083 g\r\n", ("reading", D("10.000083"), False)),
    (b"S S      10.000166 g\r\n", ("reading", D("10.000166"), True)),
    (b"S +\r\n", ("problem", B.OVERLOAD)),
    (b"S S      10.000332 g\r\n", ("reading", D("10.000332"), True)),
    (b"\x00\x13\xfeS S 1\r\n", ("problem", B.GARBAGE)),
    (b"S S     10000.415 mg\r\n", ("reading", D("10.000415"), True)),
    (b"S -\r\n", ("problem", B.UNDERLOAD)),
    (b"ES\r\n", ("problem", B.COMMAND_ERROR)),
    (b"S I\r\n", ("problem", B.NOT_EXECUTABLE)),
    (b"S S       0.35 lb\r\n", ("problem", B.UNIT)),
    (b'I4 A "B123456789"\r\n', None),
    (b"S S      10.000581 g\r\n", ("reading", D("10.000581"), True)),
]


def summary(events):
    out = []
    for e in events:
        if isinstance(e, B.Reading):
            out.append(("reading", e.grams, e.stable))
        else:
            out.append(("problem", e.kind))
    return out


def test_a_recorded_polled_session():
    p = B.Parser(silence_s=60)
    got = []
    for i, (raw, _want) in enumerate(POLLED):
        got += p.feed(30 * i, raw)
    assert summary(got) == [w for _r, w in POLLED if w is not None]
    assert p.readings == 6 and p.problems == 6
    # Each reading carries the time of the line that brought it.
    assert [e.t for e in got if isinstance(e, B.Reading)] == [0, 30, 60, 120, 180, 360]


@pytest.mark.parametrize(
    ("line", "want"),
    [
        ("S S      12.34567 g", ("weight", D("12.34567"), True)),
        ("S D       0.00012 g", ("weight", D("0.00012"), False)),
        ("S S     -0.00003 g", ("weight", D("-0.00003"), True)),
        ("S S   1.5 kg", ("weight", D("1500.0"), True)),
        ("S S 12.3", ("problem", B.GARBAGE)),
        ("S S 1.2.3 g", ("problem", B.GARBAGE)),
        ("S S nan g", ("problem", B.GARBAGE)),
        ("S X 1.0 g", ("problem", B.GARBAGE)),
        ("ET", ("problem", B.COMMAND_ERROR)),
        ("EL", ("problem", B.COMMAND_ERROR)),
        ("S S 3.2 ct", ("problem", B.UNIT)),
        ("", None),
        ("   ", None),
    ],
)
def test_single_lines(line, want):
    got = B.parse_line(line)
    if want is None or want[0] == "weight":
        assert got == want
    else:
        assert got[:2] == want


def test_a_cable_pulled_mid_line():
    p = B.Parser()
    ev = p.feed(0, b"S S      10.000001 g\r\nS S      10.00")
    assert summary(ev) == [("reading", D("10.000001"), True)]
    ev = p.close(5)
    assert summary(ev) == [("problem", B.TRUNCATED)]
    assert "cut off" in ev[0].sentence()


def test_times_out_of_order_drop_the_reading_and_say_so():
    p = B.Parser()
    a = p.feed(100, b"S S 10.1 g\r\n")
    b = p.feed(90, b"S S 10.2 g\r\n")  # the host's clock went back
    c = p.feed(110, b"S S 10.3 g\r\n")
    assert summary(a + b + c) == [("reading", D("10.1"), True), ("problem", B.OUT_OF_ORDER),
                                  ("reading", D("10.3"), True)]  # fmt: skip
    assert "not after the previous one" in b[0].sentence()


def test_lines_in_one_read_keep_the_newest():
    # Continuous output read in one chunk: the lines get its time; one reading per time, the
    # newest (nearest to the time of the read).
    p = B.Parser()
    ev = p.feed(1, b"S D 10.1 g\r\nS D 10.2 g\r\nS +\r\nS D 10.3 g\r\n")
    assert summary(ev) == [("reading", D("10.3"), False), ("problem", B.OVERLOAD)]
    assert p.merged == 2
    # A later read at the same clock time (a coarse clock) cannot replace what was given out.
    assert p.feed(1, b"S D 10.4 g\r\n") == [] and p.merged == 3


def test_silence_is_reported_once_per_silent_stretch():
    p = B.Parser(silence_s=10)
    p.feed(0, b"S S 1.0 g\r\n")
    assert p.tick(9) == [] and p.tick(10) == []
    s = p.tick(10.5)
    assert [e.kind for e in s] == [B.SILENCE] and p.silent
    assert p.tick(50) == []
    p.feed(60, b"S S 1.1 g\r\n")
    assert not p.silent
    assert [e.kind for e in p.tick(71)] == [B.SILENCE]


def test_an_endless_line_is_cut_and_called_garbage():
    p = B.Parser(max_line=64)
    ev = p.feed(0, b"x" * 200)
    assert [e.kind for e in ev] == [B.GARBAGE] * 3
    assert summary(p.feed(1, b"\r\nS S 2.0 g\r\n")) == [("problem", B.GARBAGE),
                                                        ("reading", D("2.0"), True)]


@given(st.lists(st.tuples(st.binary(max_size=40), st.integers(0, 3)), max_size=40))
def test_any_bytes_in_any_chunks_never_raise(chunks):
    p = B.Parser(silence_s=2)
    t = 0
    last = None
    for data, dt in chunks:
        t += dt
        for e in p.feed(t, data) + p.tick(t):
            assert isinstance(e, B.Reading | B.Problem)
            if isinstance(e, B.Reading):
                assert isinstance(e.grams, Decimal) and e.grams.is_finite()
                assert last is None or e.t > last
                last = e.t
            else:
                assert e.sentence().endswith(".")
    for e in p.close(t + 1):
        assert e.kind == B.TRUNCATED


TRANSCRIPT = b"".join(raw for raw, _w in POLLED)


@given(st.lists(st.integers(1, len(TRANSCRIPT) - 1), unique=True, max_size=30))
def test_chunking_changes_only_which_same_time_readings_are_merged(cuts):
    whole = B.Parser()
    ref = []
    for i, (raw, _w) in enumerate(POLLED):
        ref += whole.feed(i, raw)
    cuts = [0, *sorted(cuts), len(TRANSCRIPT)]
    p = B.Parser()
    got = []
    for k in range(len(cuts) - 1):
        got += p.feed(k, TRANSCRIPT[cuts[k] : cuts[k + 1]])
    # Problems are the same; readings are an in-order selection of the line-by-line ones, each
    # missing one having come in the same chunk as a reading kept.
    assert [e.kind for e in got if isinstance(e, B.Problem)] == \
        [e.kind for e in ref if isinstance(e, B.Problem)]  # fmt: skip
    kept = [(e.grams, e.stable) for e in got if isinstance(e, B.Reading)]
    want = [(e.grams, e.stable) for e in ref if isinstance(e, B.Reading)]
    it = iter(want)
    assert all(any(k == w for w in it) for k in kept)
    assert len(kept) + p.merged == len(want)


# ---- the balance on a port ----


class Clock:
    def __init__(self, t=0):
        self.t = Fraction(t)

    def __call__(self):
        return self.t


def sim_balance(mass=lambda t: Fraction(10), **kw):
    clock = Clock()
    silence_s = kw.pop("silence_s", 60)
    sb = B.SimBalance(mass, clock, **kw)
    return B.Balance(sb, clock, B.Parser(silence_s=silence_s)), sb, clock


def test_the_simulated_balance_answers_si_s_sir_and_reset():
    bal, sb, clock = sim_balance(lambda t: Fraction(10) + Fraction(t, 10**5),
                                 resolution_g="0.000001")  # fmt: skip
    ev = bal.immediate()
    assert summary(ev) == [("reading", D("10.000000"), True)]
    clock.t = Fraction(30)
    ev = bal.immediate()
    # 10 ug/s is more than two digits per settling second: a dynamic reading.
    assert summary(ev) == [("reading", D("10.000300"), False)]
    clock.t = Fraction(31)
    assert summary(bal.stable()) == [("reading", D("10.000310"), True)]
    assert summary(bal.send("XYZ") + bal.receive(1)) == [("problem", B.COMMAND_ERROR)]
    bal.start_continuous()
    got = []
    for t in (31, 32, Fraction(65, 2), 33, 36):
        clock.t = Fraction(t)
        got += bal.receive(0)
    # SIR: a line each second as the host's reads find them (none new at 32.5 s); the one at
    # 31 s shares its time with the S reading before it and is merged away.
    assert summary(got) == [("reading", D("10.000%d0" % t), False) for t in (32, 33, 36)]
    assert [e.t for e in got] == [32, 33, 36] and bal.parser.merged == 1
    bal.stop()
    clock.t = Fraction(60)
    assert bal.receive(0) == []
    assert sb.commands[0] == (0, "SI")


def test_resolution_noise_and_evaporation():
    bal, _sb, clock = sim_balance(resolution_g="0.001", evaporation_mg_h="3.6")
    clock.t = Fraction(1000)  # 3.6 mg/h for 1000 s is 1 mg
    assert summary(bal.immediate()) == [("reading", D("9.999"), True)]
    bal, _sb, clock = sim_balance(resolution_g="0.000001", noise_g="0.00001", seed=3)
    vals = []
    for i in range(400):
        clock.t = Fraction(i)
        vals += [e.grams for e in bal.immediate() if isinstance(e, B.Reading)]
    sd = (sum((float(v) - 10) ** 2 for v in vals) / len(vals)) ** 0.5
    assert len(vals) == 400 and 0.8e-5 < sd < 1.2e-5
    assert all(v == v.quantize(D("0.000001")) for v in vals)


def test_overload_and_underload_from_the_simulation():
    bal, _sb, clock = sim_balance(lambda t: Fraction(30), capacity_g="22")
    assert summary(bal.immediate()) == [("problem", B.OVERLOAD)]
    bal, _sb, clock = sim_balance(lambda t: Fraction(-5), capacity_g="22")
    assert summary(bal.immediate()) == [("problem", B.UNDERLOAD)]


def test_a_balance_that_stops_answering_is_silence_then_stays_quiet():
    bal, _sb, clock = sim_balance(dead_after_s=100, silence_s=60)
    kinds = []
    for i in range(10):
        clock.t = Fraction(30 * i)
        kinds += [e.kind for e in bal.immediate()]
    # Readings at 0..90 s, then nothing from 120 s on; silence 60 s after the last line.
    assert kinds == ["reading"] * 4 + [B.SILENCE]


def test_garbage_and_dropouts_never_break_the_reader():
    bal, _sb, clock = sim_balance(garbage=0.3, dropout=0.2, seed=5)
    kinds = []
    for i in range(300):
        clock.t = Fraction(30 * i)
        kinds += [e.kind for e in bal.immediate()]
    assert kinds.count("reading") > 120 and kinds.count(B.GARBAGE) > 40


class DyingPort:
    """A port whose cable is pulled after a few bytes."""

    def __init__(self, data, fail_after):
        self.data = data
        self.fail_after = fail_after
        self.given = 0

    def write(self, b):
        return len(b)

    in_waiting = 0

    def read(self, n=1):
        if self.given >= self.fail_after:
            raise OSError("device reports readiness to read but returned no data")
        self.given += 1
        return self.data[self.given - 1 : self.given]

    def close(self):
        pass


def test_a_port_that_dies_mid_line():
    clock = Clock()
    bal = B.Balance(DyingPort(b"S S 10.5 g\r\nS S 10.6", 20), clock)
    first = bal.immediate()
    assert summary(first) == [("reading", D("10.5"), True)]
    clock.t = Fraction(30)
    rest = bal.immediate()
    assert [e.kind for e in rest] == [B.TRUNCATED, B.DISCONNECTED]
    assert bal.closed
    assert bal.immediate()[-1:] == [] or all(e.kind != "reading" for e in bal.immediate())


def test_opening_a_missing_port_is_one_sentence():
    with pytest.raises(B.BalanceError) as e:
        B.Balance.open("/dev/does-not-exist-itb", Clock())
    assert str(e.value).startswith("Cannot open the balance's serial port /dev/does-not-exist-itb")
    assert str(e.value).endswith(".") and "\n" not in str(e.value)


# ---- the log ----


def test_the_log_keeps_every_line_written_before_a_crash(tmp_path):
    path = tmp_path / "balance.csv"
    log = B.CsvLog(path, {"rate_ul_h": "10"}, sync=True)
    log.reading(B.Reading(Fraction(0), D("10.000001"), True))
    log.problem(B.Problem(Fraction(30), B.GARBAGE, "'x'"))
    log.reading(B.Reading(Fraction(60), D("10.000166"), False))
    # Read back while the logger still holds the file open: nothing waits in a buffer.
    data = B.read_log(path)
    assert data.samples == [(D("0.000"), D("10.000001")), (D("60.000"), D("10.000166"))]
    assert data.stable == [True, False]
    assert data.meta == {"rate_ul_h": "10"}
    assert data.logged_problems == ["30.000 garbage 'x'"]
    log.close()


def test_a_log_cut_off_mid_line_and_garbled_rows(tmp_path):
    path = tmp_path / "cut.csv"
    path.write_text("t_s,mass_g\n0,10.0\n30,10.1\nbanana\n60,ten\n25,10.2\n90,10.3\n120,10.")
    data = B.read_log(path)
    # The last line has no end: it was cut off while written (10. may have been 10.4), so it
    # is dropped even though it reads as a number.
    assert data.samples == [(D(0), D("10.0")), (D(30), D("10.1")), (D(90), D("10.3"))]
    whys = [w for _n, w in data.problems]
    assert whys[0].startswith("line 4 is not a time and a mass")
    assert whys[1].startswith("line 5 is not a time and a mass")
    assert whys[2] == "line 6 has time 25 s, not after 30 s; dropped"
    assert whys[3].startswith("the last line is incomplete")
    path.write_text("t_s,mass_g\n0,10.0\n30,10.1\n60,10.")
    path.write_bytes(path.read_bytes() + b"2,")
    data = B.read_log(path)
    assert data.problems[-1][1].startswith("the last line is incomplete")


@pytest.mark.parametrize(
    ("content", "words"),
    [(None, "does not exist"), ("just,some,words\n1,2,3\n", "no header naming a time column"),
     ("# only a comment\n", "holds no data")],
)
def test_logs_that_cannot_be_used_say_why(tmp_path, content, words):
    path = tmp_path / "x.csv"
    if content is not None:
        path.write_text(content)
    with pytest.raises(B.BalanceError) as e:
        B.read_log(path)
    assert words in str(e.value) and str(e.value).endswith(".")


def test_bad_log_lines_are_dropped_never_raised(tmp_path):
    # A field over the csv module's limit (131072 characters) raises csv.Error in the reader;
    # numbers with exponents or too many digits would cost the exact analysis dearly; a time
    # more than 7 days after the previous one is a corrupted time, not a pause.
    path = tmp_path / "bad.csv"
    lines = ["t_s,mass_g", "0,10.0", "30," + "1" * 200_000, "60,1e3", "9e2,10.2", "90,nan",
             "120,inf", "150," + "1" * 40, "180,10.3", "%d,10.4" % (180 + 7 * 86400 + 1),
             "210,10.5", "a\0b,1"]  # fmt: skip
    path.write_text("\n".join(lines) + "\n")
    data = B.read_log(path)
    assert data.samples == [(D(0), D("10.0")), (D(180), D("10.3")), (D(210), D("10.5"))]
    whys = [w for _n, w in data.problems]
    assert whys[0].startswith("line 3 cannot be read as CSV (field larger than field limit")
    assert [w.split(" is not")[0] for w in whys[1:6]] == ["line %d" % n for n in (4, 5, 6, 7, 8)]
    assert whys[6] == "line 10 has time %d s, more than 7 days after 180 s; dropped" % (
        180 + 7 * 86400 + 1)
    assert len(whys) == 8 and all(len(w) < 200 for w in whys)


class LatePort:
    """A balance whose first SI answer comes 5 s late (after the reader gave up on it); later
    answers come 0.1 s after their command. Each read lets 0.05 s pass."""

    def __init__(self, clock):
        self.clock = clock
        self.queue = []  # (time available, bytes)
        self.sent = 0

    def write(self, data):
        self.sent += 1
        delay = 5 if self.sent == 1 else Fraction(1, 10)
        self.queue.append((self.clock.t + delay, b"S S      %d.000000 g\r\n" % self.sent))
        return len(data)

    def _ready(self):
        return b"".join(b for t, b in self.queue if t <= self.clock.t)

    @property
    def in_waiting(self):
        return len(self._ready())

    def read(self, n=1):
        self.clock.t += Fraction(1, 20)
        data = self._ready()[:n]
        left = n = len(data)
        while left and self.queue:
            t, b = self.queue[0]
            if len(b) <= left:
                self.queue.pop(0)
                left -= len(b)
            else:
                self.queue[0] = (t, b[left:])
                left = 0
        return data

    def close(self):
        pass


def test_a_late_answer_is_flushed_and_cannot_shift_later_readings():
    clock = Clock()
    port = LatePort(clock)
    bal = B.Balance(port, clock, B.Parser(silence_s=60))
    first = bal.immediate(timeout_s=2)
    assert [e for e in first if isinstance(e, B.Reading)] == []
    got = []
    for t in (30, 60, 90):
        clock.t = Fraction(t)
        got += [e.grams for e in bal.immediate(timeout_s=2) if isinstance(e, B.Reading)]
    # Without the flush the late answer to SI 1 would be read as SI 2's, and so on: 1, 2, 3.
    assert got == [D(2), D(3), D(4)]
    assert bal.flushed == len(b"S S      1.000000 g\r\n")


# ---- transcripts ----

DATA = Path(__file__).resolve().parent / "data" / "balance"
RECORDED = sorted(R.SESSIONS)
WEIGHT_LINE = re.compile(rb"^S [SD] +[-+0-9.]+ g$")


def kinds(events):
    return [e.kind for e in events]


def problems(events):
    return [e.kind for e in events if isinstance(e, B.Problem)]


def readings(events):
    return [e for e in events if isinstance(e, B.Reading)]


def replayed(name):
    """The stored transcript through replay() and through a Balance on a ReplayPort driven as
    the live session was; both must agree."""
    tr = B.read_transcript(DATA / ("%s.mtsics" % name))
    silence_s = R.SESSIONS[name]["silence_s"]
    fed = B.replay(tr, B.Parser(silence_s=silence_s))
    port = B.ReplayPort(tr)
    bal = B.Balance(port, port.clock, B.Parser(silence_s=silence_s))
    driven = R.SESSIONS[name]["drive"](bal, port.wait_until)
    assert port.mismatch is None
    assert port.i == len(port.events), "the replayed session left events of the transcript over"
    assert [(e.kind, e.t, getattr(e, "grams", None)) for e in driven] == \
        [(e.kind, e.t, getattr(e, "grams", None)) for e in fed]  # fmt: skip
    return tr, fed, bal


def answers(tr):
    """The complete lines the balance sent, read from the file itself (not by the parser)."""
    data = b"".join(d for _t, k, d in tr if k == B.READ)
    return [ln.rstrip(b"\r") for ln in data.split(b"\n")[:-1]]


def test_the_polled_session_with_garbage():
    tr, ev, _bal = replayed("polled")
    sent = [d for _t, k, d in tr if k == B.WROTE]
    lines = answers(tr)
    weights = [ln for ln in lines if WEIGHT_LINE.match(ln)]
    # 40 SI, 30 s apart; every line the balance sent is a weight or noise; three went unanswered.
    assert sent == [b"SI\r\n"] * 40
    assert len(readings(ev)) == len(weights) == 29
    assert problems(ev) == [B.GARBAGE] * 8 == [B.GARBAGE] * (len(lines) - len(weights))
    assert 40 - len(lines) == 3
    # Each reading carries the time of its poll: strictly increasing multiples of 30 s.
    ts = [e.t for e in readings(ev)]
    assert all(t % 30 == 0 for t in ts) and ts == sorted(set(ts))
    noise_at = [t for t, k, d in tr if k == B.READ and not WEIGHT_LINE.match(d.rstrip(b"\r\n"))]
    assert [e.t for e in ev if isinstance(e, B.Problem)] == noise_at == [0, 90, 120, 180, 510,
                                                                          660, 750, 840]
    last = readings(ev)[-1]
    assert (last.t, last.grams, last.stable) == (1170, D("10.003244"), True)
    # 10 uL/h of water is 9.98 mg/h: the 19.5 min between the first and last readings.
    first = readings(ev)[0]
    assert abs((last.grams - first.grams) - D("0.00998") * D(1170 - 30) / 3600) < D("0.000004")


def test_the_continuous_session_merges_lines_read_together():
    tr, ev, bal = replayed("continuous")
    assert [d for _t, k, d in tr if k == B.WROTE] == [b"SIR\r\n", b"@\r\n"]
    lines = answers(tr)
    assert lines[-1] == b'I4 A "SIM0001"'  # the answer to @, an information line
    # 61 lines (0..60 s); the ones at 15, 35 and 55 s came in one read with the next second's.
    assert len([ln for ln in lines if WEIGHT_LINE.match(ln)]) == 61
    assert problems(ev) == []
    rs = readings(ev)
    assert len(rs) == 58 and bal.parser.merged == 3
    assert [r.t for r in rs] == [t for t in range(61) if t not in (15, 35, 55)]
    # The newest line of a merged read is kept: at 16 s, the 16 s line.
    at16 = next(r for r in rs if r.t == 16)
    assert at16.grams == D("10.000043")
    # Dynamic while the bolus moved the load (20 s to 30 s), stable before and after.
    moving = [r.t for r in rs if not r.stable]
    assert moving and min(moving) >= 20 and max(moving) <= 31
    assert rs[-1].t == 60 and rs[-1].grams == D("10.020126") and rs[-1].stable


def test_the_balance_that_stops_answering():
    tr, ev, _bal = replayed("dead")
    assert len([d for _t, k, d in tr if k == B.WROTE]) == 10
    assert kinds(ev) == ["reading"] * 4 + [B.SILENCE]
    assert readings(ev)[-1].grams == D("10.000250")
    # Silence 60 s after the last line (90 s), seen at the first poll past that (180 s).
    assert ev[-1].t == 180 and ev[-1].detail == "nothing for 90 s"


def test_the_disconnect_mid_line():
    tr, ev, bal = replayed("disconnect")
    # What Linux does when the far end of a pty hangs up: pyserial's in_waiting (an ioctl)
    # raises EIO; the half line read before it is the last data.
    fails = [(t, d) for t, k, d in tr if k == B.PORT and B.port_event(d)[1]]
    assert fails == [(120, "in_waiting OSError: [Errno 5] Input/output error")]
    assert tr[-1][1:] == (B.PORT, "close")
    assert kinds(ev) == ["reading"] * 4 + [B.TRUNCATED, B.DISCONNECTED]
    assert readings(ev)[-1].grams == D("10.000250")
    assert ev[-2].detail == "'S D  10.0'" and ev[-1].detail == "[Errno 5] Input/output error"
    assert ev[-1].sentence() == "The balance's serial port closed ([Errno 5] Input/output error)."
    assert bal.closed


def test_the_hand_made_transcript_of_the_manuals_formats():
    tr = B.read_transcript(DATA / "manual_formats.mtsics")
    assert "hand-made from the response formats" in tr.meta["note"]
    ev = B.replay(tr, B.Parser(silence_s=60))
    assert problems(ev) == [B.NOT_EXECUTABLE, B.OVERLOAD, B.UNDERLOAD, B.COMMAND_ERROR,
                            B.COMMAND_ERROR, B.COMMAND_ERROR, B.UNIT, B.UNIT]  # fmt: skip
    assert [p.detail for p in ev if p.kind in (B.COMMAND_ERROR, B.UNIT)] == [
        "syntax error", "transmission error", "logical error", "oz", "ct"]
    # kg and mg converted to grams exactly; the S answer split over two reads is timed by the
    # read that completed it.
    assert [(r.t, r.grams, r.stable) for r in readings(ev)] == [
        (Fraction("31.05"), D("10.001000"), True), (Fraction("61.05"), D("10.001234"), False),
        (Fraction("301.25"), D("10.001340"), True)]


def test_recording_again_gives_the_stored_files_byte_for_byte(tmp_path):
    # The stored transcripts are what the real stack (pty, pyserial, Balance.open, RecordingPort)
    # produced: recording them again gives the same bytes.
    assert R.main(["--out", str(tmp_path)]) == 0
    for name in RECORDED:
        got = (tmp_path / ("%s.mtsics" % name)).read_bytes()
        assert got == (DATA / ("%s.mtsics" % name)).read_bytes(), name
        assert len(got) < 4096


def test_the_recording_goes_through_pyserial_on_a_pty(tmp_path):
    path, live = R.record("disconnect", tmp_path)
    text = path.read_text()
    assert text.startswith(B.MAGIC + "\n# device: a pseudo-terminal")
    assert "# settings: 9600 baud, 8N1, no handshake\n" in text and "# started" not in text
    # The live events are the replayed ones.
    assert kinds(live) == ["reading"] * 4 + [B.TRUNCATED, B.DISCONNECTED]


# -- the format --

TIMES = st.one_of(st.integers(0, 10**12), st.floats(0, 1e9, allow_nan=False),
                  st.decimals(0, 10**9, places=6, allow_nan=False, allow_infinity=False))


class ScriptedPort:
    """A port that gives scripted reads and fails where told, for RecordingPort."""

    def __init__(self, script, clock):
        self.script = list(script)  # ("read", bytes, t) / ("write", bytes, t) / ("fail", msg, t)
        self.clock = clock
        self.written = []
        self.closed = False

    def _step(self, op):
        what, data, t = self.script.pop(0)
        self.clock.t = t
        if what == "fail":
            raise OSError(data)
        assert what == op
        return data

    def write(self, data):
        self.written.append(self._step("write"))
        return len(data)

    def read(self, n=1):
        return self._step("read")

    @property
    def in_waiting(self):
        return 0

    def close(self):
        self.closed = True


@given(st.lists(st.tuples(st.sampled_from(["read", "write"]), st.binary(max_size=30), TIMES),
                max_size=20),
       st.text(st.characters(blacklist_categories=("Cs",)), max_size=30))
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_any_bytes_recorded_read_back_identical(tmp_path, ops, why):
    path = tmp_path / "x.mtsics"
    clock = Clock()
    script = [*ops, ("fail", why, 7)]
    port = B.RecordingPort(ScriptedPort(script, clock), clock, path, {"serial": "B0\n1"})
    for op, data, _t in ops:
        got = port.write(data) if op == "write" else port.read(5)
        assert got == (len(data) if op == "write" else data)
    with pytest.raises(OSError) as e:
        port.read(1)
    assert str(e.value) == why
    tr = B.read_transcript(path)
    want = [(t, ">" if op == "write" else "<", data) for op, data, t in ops
            if data or op == "write"]  # fmt: skip
    assert len(tr) == len(want) + 1
    assert [(float(t) if isinstance(w, float) else t, k, d)
            for (t, k, d), (w, _k, _d) in zip(tr, want, strict=False)] == want
    assert tr[-1] == (7, "!", "read OSError: " + why)
    assert tr.meta == {"serial": "B0 1"} and tr.notes == []


@given(st.binary(max_size=200))
def test_escaped_bytes_are_one_printable_line_and_read_back_exactly(data):
    text = B.escape(data)
    assert all(" " <= c <= "~" for c in text) and not text.endswith(" ")
    assert B.unescape(text) == data


def test_a_recording_port_keeps_every_event_before_an_exception(tmp_path):
    path = tmp_path / "t.mtsics"
    clock = Clock()
    inner = ScriptedPort([("write", b"", 1), ("read", b"S S 10.5 g\r\nS S 1", 2),
                          ("fail", "device reports readiness to read but returned no data", 3)],
                         clock)  # fmt: skip
    rec = B.RecordingPort(inner, clock, path)
    bal = B.Balance(rec, clock, B.Parser(silence_s=60))
    assert not hasattr(rec, "reset_input_buffer")  # as the wrapped port: Balance reads instead
    ev = bal.send("SI") + bal.receive(5)
    assert kinds(ev) == ["reading"]
    ev = bal.receive(5)
    assert kinds(ev) == [B.TRUNCATED, B.DISCONNECTED]
    # Read back while the recorder still holds the file open: nothing waits in a buffer.
    tr = B.read_transcript(path)
    assert tr == [(1, ">", b"SI\r\n"), (2, "<", b"S S 10.5 g\r\nS S 1"),
                  (3, "!", "read OSError: device reports readiness to read but returned no "
                   "data")]  # fmt: skip
    # The transcript replays to what the live Balance gave.
    assert kinds(B.replay(tr)) == ["reading", B.TRUNCATED, B.DISCONNECTED]
    bal.close()
    assert inner.closed and B.read_transcript(path)[-1] == (3, "!", "close")


def test_a_failed_write_is_recorded_and_raised(tmp_path):
    path = tmp_path / "w.mtsics"
    clock = Clock()
    rec = B.RecordingPort(ScriptedPort([("fail", "write failed: [Errno 5] EIO", 4)], clock),
                          clock, path)  # fmt: skip
    with pytest.raises(OSError):
        rec.write(b"SI\r\n")
    assert B.read_transcript(path) == [(4, "!", "write OSError: write failed: [Errno 5] EIO")]


@given(st.integers(0, 10**6))
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_a_transcript_cut_off_anywhere_reads_its_complete_lines(tmp_path, cut):
    whole = (DATA / "polled.mtsics").read_bytes()
    cut %= len(whole) + 1
    path = tmp_path / "cut.mtsics"
    path.write_bytes(whole[:cut])
    full = B.read_transcript(DATA / "polled.mtsics")
    if b"\n" not in whole[:cut]:
        with pytest.raises(B.BalanceError) as e:
            B.read_transcript(path)
        assert "is not a balance transcript" in str(e.value)
        return
    tr = B.read_transcript(path)
    complete = whole[:cut].count(b"\n")
    # The complete lines' events, no more; a partial last line is dropped and said so.
    assert list(tr) == list(full[: len(tr)])
    assert len(tr) == sum(1 for ln in whole.split(b"\n")[:complete] if not ln.startswith(b"#"))
    assert bool(tr.notes) == (cut > 0 and whole[cut - 1 : cut] != b"\n")
    for e in B.replay(tr, B.Parser(silence_s=120)):
        assert isinstance(e, B.Reading) or e.sentence().endswith(".")


@pytest.mark.parametrize(
    ("line", "words"),
    [("12.5 ? SI", "no >, < or !"), ("abc > SI", "does not start with a time"),
     ("1e3 > SI", "does not start with a time"), ("1 > S\\q", "an unknown escape"),
     ("1 > S\\x4", "an unknown escape"), ("1 > caf\xe9", "not ASCII"),
     ("1 < S\tS", "not printable ASCII"), ("1 ! explode", "not a call on the port"),
     ("1 >SI", "no >, < or !"), ("12", "no >, < or !")],
)
def test_a_garbled_transcript_line_is_one_sentence(tmp_path, line, words):
    path = tmp_path / "bad.mtsics"
    path.write_bytes(("%s\n0 > SI\\r\\n\n%s\n2 ! close\n" % (B.MAGIC, line)).encode("latin-1"))
    with pytest.raises(B.BalanceError) as e:
        B.read_transcript(path)
    msg = str(e.value)
    assert msg.startswith("Line 3 of the transcript %s" % path) and words in msg
    assert msg.endswith(".") and "\n" not in msg


@pytest.mark.parametrize(
    ("content", "words"),
    [(None, "does not exist"), (b"t_s,mass_g\n0,1\n", "is not a balance transcript"),
     (b"", "is not a balance transcript"), ("dir", "is a folder")],
)
def test_files_that_are_not_transcripts_say_why(tmp_path, content, words):
    path = tmp_path / "x.mtsics"
    if content == "dir":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(B.BalanceError) as e:
        B.read_transcript(path)
    assert words in str(e.value) and str(e.value).endswith(".")


def test_a_replay_driven_differently_says_where(tmp_path):
    tr = B.read_transcript(DATA / "dead.mtsics")
    port = B.ReplayPort(tr)
    bal = B.Balance(port, port.clock)
    assert kinds(bal.immediate()) == ["reading"]
    # Balance makes any failure of its port a disconnection; the port keeps the reason.
    assert kinds(bal.send("S")) == [B.DISCONNECTED]
    assert port.mismatch == "The replay wrote S\\r\\n where the transcript has 30 ! reset."
    port = B.ReplayPort(tr)
    port.reset_input_buffer()
    with pytest.raises(B.BalanceError) as e:
        port.write(b"S\r\n")
    assert str(e.value) == "The replay wrote S\\r\\n where the transcript has 0 > SI\\r\\n."


def test_host_times_read_back_as_the_same_values():
    for t in (0, 30, 1.5, 0.1, 1e-05, 123456.789012345, D("12.500"), Fraction(1, 4)):
        text = B.time_text(t)
        assert re.fullmatch(r"\d+(\.\d+)?", text)
        back = Fraction(text)
        assert (float(back) == t) if isinstance(t, float) else back == t
    assert B.time_text(Fraction(1, 3)) == "0.333333333"


def test_balance_open_records_a_transcript_of_a_real_port(tmp_path):
    master, slave = os.openpty()
    try:
        name = os.ttyname(slave)
        clock = Clock(5)
        path = tmp_path / "balance.mtsics"
        bal = B.Balance.open(name, clock, transcript=path, meta={"model": "XPR2"},
                             read_timeout_s=0.01)  # fmt: skip
        assert isinstance(bal.port, B.RecordingPort)
        bal.send("SI")
        assert os.read(master, 16) == b"SI\r\n"
        os.write(master, b"S S   1.5 g\r\n")
        ev = []
        for _ in range(100):  # the pty passes bytes on in its own time
            ev += bal.receive(0.5)
            if ev:
                break
        bal.close()
        tr = B.read_transcript(path)
        assert kinds(ev) == ["reading"] and ev[0].grams == D("1.5")
        assert tr.meta["device"] == name and tr.meta["model"] == "XPR2"
        assert tr.meta["settings"] == "9600 baud, 8N1, no handshake"
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", tr.meta["started"])
        assert tr[0] == (5, ">", b"SI\r\n") and tr[-1] == (5, "!", "close")
        assert b"".join(d for _t, k, d in tr if k == "<") == b"S S   1.5 g\r\n"
    finally:
        os.close(master)
        os.close(slave)


def test_a_transcript_that_cannot_be_written_is_one_sentence(tmp_path):
    master, slave = os.openpty()
    try:
        with pytest.raises(B.BalanceError) as e:
            B.Balance.open(os.ttyname(slave), Clock(), transcript=tmp_path / "no" / "t.mtsics")
        msg = str(e.value)
        assert msg.startswith("Cannot write the balance transcript ") and msg.endswith(".")
        assert "No such file or directory" in msg and "\n" not in msg
    finally:
        os.close(master)
        os.close(slave)


def test_the_example_lines_of_the_docstring_are_events():
    doc = [re.sub(r"\s{3,}(at|a|the) .*$", "", ln.strip())
           for ln in B.__doc__.splitlines() if re.match(r"^    \d", ln)]  # fmt: skip
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "doc.mtsics"
        path.write_text(B.MAGIC + "\n" + "\n".join(doc) + "\n")
        tr = B.read_transcript(path)
    assert [k for _t, k, _d in tr] == [">", "<", "!", "!", "!"]
    assert tr[1][2] == b"S S      10.000083 g\r\n"


class ResettingLatePort(LatePort):
    """LatePort with pyserial's reset_input_buffer: drops what has arrived and is unread."""

    def reset_input_buffer(self):
        self.queue = [(t, b) for t, b in self.queue if t > self.clock.t]


@pytest.mark.parametrize("port_class", [LatePort, ResettingLatePort])
def test_a_recorded_late_answer_replays_as_it_went_live(tmp_path, port_class):
    clock = Clock()
    path = tmp_path / "late.mtsics"
    bal = B.Balance(B.RecordingPort(port_class(clock), clock, path), clock, B.Parser(60))
    live = []
    for t in (0, 30, 60, 90):
        clock.t = Fraction(t)
        live += bal.immediate(timeout_s=2)
    live += bal.close()
    tr = B.read_transcript(path)
    port = B.ReplayPort(tr, idle_s=Fraction(1, 20))  # the time each of LatePort's reads takes
    again = B.Balance(port, port.clock, B.Parser(60))
    driven = []
    for t in (0, 30, 60, 90):
        port.wait_until(t)
        driven += again.immediate(timeout_s=2)
    driven += again.close()
    assert port.mismatch is None and port.i == len(tr)
    assert [r.grams for r in readings(live)] == [D(2), D(3), D(4)]
    assert driven == live
    if port_class is ResettingLatePort:
        # The late answer was dropped unread by the reset: the transcript never saw it, and
        # replay() without a Balance gives the same readings.
        assert b"1.000000" not in b"".join(d for _t, k, d in tr if k == B.READ)
        assert B.replay(tr, B.Parser(60)) == live


def test_bytes_read_while_dropping_the_input_are_not_parsed():
    # A late line and a half that arrived between the reset and the command, read by
    # flush_input's loop.
    tr = [(Fraction(0), "!", "reset"), (Fraction(0), "<", b"S S 9.9 g\r\nS S 9."),
          (Fraction(0), ">", b"SI\r\n"), (Fraction(1), "<", b"S S 10.1 g\r\n"),
          (Fraction(2), "!", "close")]  # fmt: skip
    want = [("reading", D("10.1"), True)]
    assert summary(B.replay(tr)) == want
    port = B.ReplayPort(tr, idle_s=1)  # the answer comes within a read timeout of 1 s
    bal = B.Balance(port, port.clock)
    assert summary(bal.immediate() + bal.close()) == want and bal.flushed == 17
    assert port.i == len(tr) and port.mismatch is None
