# The bench rig's balance (itbtools/balance.py): the MT-SICS parser on recorded transcripts with
# garbage, dynamic readings, overload, a cable pulled mid-line and times out of order; the port
# wrapper, the simulated balance, and the CSV log that keeps every line written.

from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from itbtools import balance as B

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
