# The laboratory balance of the bench rig: Mettler-Toledo MT-SICS (levels 0/1) over a serial port,
# a line parser that never raises, a CSV log that loses nothing written, and a simulated balance.
r"""MT-SICS in brief (what this module relies on; check your balance's reference manual):

* commands end in CR LF: `SI` (send the weight now, stable or not), `S` (send the next stable
  weight), `SIR` (send the weight now and repeatedly, until `@`), `@` (cancel and reset,
  answered with `I4 A "<serial number>"`);
* weight responses are `S S <value> <unit>` (stable) or `S D <value> <unit>` (dynamic, only
  from SI and SIR), the value right-aligned in a 10-character field: `S S      12.34567 g`;
* `S I` (command understood but not executable now), `S +` (overload), `S -` (underload);
  `ES` (syntax error), `ET` (transmission error), `EL` (logical error).

The parser turns received bytes into events, in order: Reading(t, grams, stable) or
Problem(t, kind, detail). Bad input is a Problem, never an exception: garbage, truncated
lines (a cable pulled mid-line), overload, underload, command errors, other units, readings
whose time is not after the previous one, and silence longer than a limit.

Transcripts (RecordingPort writes them, read_transcript reads them, replay and ReplayPort play
them back): what passed on the port, one event per line, each line flushed as it happens.

    # MT-SICS transcript 1              the first line, always
    # baud: 9600                        `# key: value` lines before the first event: the header
    12.5 > SI\r\n                       at host time 12.5 s the host wrote these bytes
    12.6 < S S      10.000083 g\r\n     a read returned these bytes (empty reads are not written)
    42 ! reset                          the host dropped unread input (reset_input_buffer)
    43 ! in_waiting OSError: [Errno 5] Input/output error
                                        a call on the port (read, write, in_waiting, reset,
                                        close) failed with this error, which was passed on
    44 ! close                          the host closed the port

The time is the host's clock (s, a plain decimal) when the call returned. Bytes: printable
ASCII as it is but `\` (written `\\`); `\r`, `\n`, `\t`; `\xHH` for any other byte and for a
space that ends the line, so that any bytes read back exactly. Other `#` lines and blank lines
are comments.
"""

import csv
import io
import os
import random
import re
import time
from decimal import Decimal, InvalidOperation
from fractions import Fraction

# ---- events ----

GARBAGE = "garbage"
TRUNCATED = "truncated"
OVERLOAD = "overload"
UNDERLOAD = "underload"
NOT_EXECUTABLE = "not_executable"
COMMAND_ERROR = "command_error"
UNIT = "unit"
OUT_OF_ORDER = "out_of_order"
SILENCE = "silence"
DISCONNECTED = "disconnected"

_SENTENCES = {
    GARBAGE: "the balance sent a line that is not an MT-SICS response",
    TRUNCATED: "the balance's line was cut off before its end",
    OVERLOAD: "the balance reports an overload (the load is above its capacity)",
    UNDERLOAD: "the balance reports an underload (the pan is off or the tare is wrong)",
    NOT_EXECUTABLE: "the balance could not execute the command (busy, or no stable weight)",
    COMMAND_ERROR: "the balance rejected the command",
    UNIT: "the balance reports in a unit other than grams",
    OUT_OF_ORDER: "a reading arrived with a time not after the previous one and was dropped",
    SILENCE: "the balance stopped answering",
    DISCONNECTED: "the balance's serial port closed",
}


class Reading:
    __slots__ = ("t", "grams", "stable")
    kind = "reading"

    def __init__(self, t, grams, stable):
        self.t = t  # s, the host's clock when the line completed
        self.grams = grams  # Decimal, exactly as the balance wrote it
        self.stable = stable

    def __repr__(self):
        return "Reading(%r, %s g, %s)" % (self.t, self.grams, "S" if self.stable else "D")

    def __eq__(self, other):
        return (isinstance(other, Reading) and (self.t, self.grams, self.stable)
                == (other.t, other.grams, other.stable))  # fmt: skip


class Problem:
    __slots__ = ("t", "kind", "detail")

    def __init__(self, t, kind, detail=""):
        self.t = t
        self.kind = kind
        self.detail = detail

    def sentence(self):
        """One sentence for a user."""
        s = _SENTENCES.get(self.kind, self.kind)
        if self.detail:
            s += " (%s)" % self.detail
        return s[0].upper() + s[1:] + "."

    def __repr__(self):
        return "Problem(%r, %s, %r)" % (self.t, self.kind, self.detail)


# ---- one line ----

_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)$")
_TO_GRAMS = {"g": Decimal(1), "mg": Decimal("0.001"), "kg": Decimal(1000)}
_INFO = re.compile(r"^(I\d+|@|Z|ZI|T|TI|TA|TAC)$")
_ERRORS = {"ES": "syntax error", "ET": "transmission error", "EL": "logical error"}


def parse_line(text):
    """One line without its terminator -> ("weight", grams, stable), ("problem", kind, detail),
    ("info", text) for other responses, or None for an empty line."""
    tok = text.split()
    if not tok:
        return None
    head = tok[0]
    if head == "S" and len(tok) == 2:
        k = {"+": OVERLOAD, "-": UNDERLOAD, "I": NOT_EXECUTABLE}.get(tok[1])
        if k:
            return ("problem", k, "")
    if head == "S" and len(tok) == 4 and tok[1] in ("S", "D") and _NUMBER.match(tok[2]):
        unit = _TO_GRAMS.get(tok[3])
        if unit is None:
            return ("problem", UNIT, tok[3][:16])
        try:
            grams = Decimal(tok[2]) * unit
        except InvalidOperation:  # pragma: no cover - the pattern admits only numbers
            return ("problem", GARBAGE, _show(text))
        return ("weight", grams, tok[1] == "S")
    if head in _ERRORS and len(tok) == 1:
        return ("problem", COMMAND_ERROR, _ERRORS[head])
    if _INFO.match(head):
        return ("info", text.strip())
    return ("problem", GARBAGE, _show(text))


def _show(text, limit=40):
    # ascii(): what the balance sent, printable and plain ASCII for the log and the console.
    text = text.strip()
    return ascii(text if len(text) <= limit else text[:limit] + "...")


class Parser:
    """Bytes (or text) from the balance, in any chunks, in order -> events.

    feed(t, data): data received at host time t (s); complete lines are parsed with time t.
    tick(t): call regularly; reports SILENCE once after silence_s without a complete line.
    close(t): the port is gone; a partial line left over is TRUNCATED."""

    def __init__(self, silence_s=10.0, max_line=160):
        self.silence_s = silence_s
        self.max_line = max_line
        self._buf = bytearray()
        self._last_t = None  # time of the last reading kept
        self._heard = None  # time of the last complete line
        self._silent = False
        self.readings = 0
        self.problems = 0
        self.merged = 0  # readings dropped for sharing their time with another
        self._kept = None  # (event list, index) of the last reading given out

    def feed(self, t, data):
        if isinstance(data, str):
            data = data.encode("utf-8", "replace")
        out = []
        if self._heard is None:
            self._heard = t
        for b in data:
            if b == 0x0A:  # LF ends a line; CR before it is dropped
                line = bytes(self._buf).rstrip(b"\r")
                self._buf.clear()
                self._line(t, line, out)
            else:
                self._buf.append(b)
                if len(self._buf) > self.max_line:
                    out.append(self._problem(t, GARBAGE, "a line of more than %d bytes"
                                             % self.max_line))  # fmt: skip
                    self._buf.clear()
                    self._heard = t
        return out

    def _line(self, t, raw, out):
        self._heard = t
        self._silent = False
        try:
            text = raw.decode("ascii")
        except UnicodeDecodeError:
            out.append(self._problem(t, GARBAGE, _show(raw.decode("ascii", "replace"))))
            return
        parsed = parse_line(text)
        if parsed is None or parsed[0] == "info":
            return
        if parsed[0] == "problem":
            out.append(self._problem(t, parsed[1], parsed[2]))
            return
        if self._last_t is not None and t <= self._last_t:
            if t == self._last_t:
                # Lines that completed in one read (continuous output) share its time; one
                # reading per time is kept, so that times stay strictly increasing: the newest,
                # the nearest to that time, when they came together.
                self.merged += 1
                if self._kept is not None and self._kept[0] is out:
                    out[self._kept[1]] = Reading(t, parsed[1], parsed[2])
                return
            out.append(self._problem(t, OUT_OF_ORDER, "%s s after %s s" % (t, self._last_t)))
            return
        self._last_t = t
        self.readings += 1
        self._kept = (out, len(out))
        out.append(Reading(t, parsed[1], parsed[2]))

    def _problem(self, t, kind, detail):
        self.problems += 1
        return Problem(t, kind, detail)

    def tick(self, t):
        if self._heard is None:
            self._heard = t
        if not self._silent and t - self._heard > self.silence_s:
            self._silent = True
            return [self._problem(t, SILENCE, "nothing for %g s" % (t - self._heard))]
        return []

    @property
    def silent(self):
        return self._silent

    def close(self, t):
        out = []
        if self._buf:
            out.append(self._problem(t, TRUNCATED, _show(bytes(self._buf).decode("ascii",
                                                                               "replace"))))
            self._buf.clear()
        return out


# ---- the balance on a port ----


class BalanceError(Exception):
    """The balance's port cannot be used (one sentence in str())."""


class Balance:
    """An MT-SICS balance on a pyserial-like port: write(bytes), read(n) (returns b"" when its
    timeout passes), in_waiting. clock() is the host's time in s (monotonic)."""

    def __init__(self, port, clock, parser=None):
        self.port = port
        self.clock = clock
        self.parser = Parser() if parser is None else parser
        self.closed = False
        self.flushed = 0  # stale bytes dropped by flush_input

    @classmethod
    def open(cls, device, clock, baud=9600, silence_s=10.0, read_timeout_s=0.2, transcript=None,
             meta=None):  # fmt: skip
        """Open a serial device with pyserial (8 data bits, no parity, 1 stop bit: the MT-SICS
        default; set the balance to match). With a transcript path, everything that passes on
        the port is recorded there (RecordingPort); its header names the device, the settings
        and the start (UTC), then meta's items (a None value leaves a default line out)."""
        try:
            import serial
        except ImportError:  # pragma: no cover - pinned in pyproject.toml
            raise BalanceError("pyserial is not installed; run make venv") from None
        try:
            port = serial.Serial(device, baudrate=baud, timeout=read_timeout_s)
        except (OSError, ValueError, serial.SerialException) as e:
            raise BalanceError("Cannot open the balance's serial port %s (%s)."
                               % (device, _first_line(e))) from None  # fmt: skip
        if transcript is not None:
            head = {"device": device, "settings": "%d baud, 8N1, no handshake" % baud,
                    "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            head.update(meta or {})
            try:
                port = RecordingPort(port, clock, transcript,
                                     {k: v for k, v in head.items() if v is not None})
            except BalanceError:
                port.close()
                raise
        return cls(port, clock, Parser(silence_s))

    def send(self, command):
        try:
            self.port.write(command.encode("ascii") + b"\r\n")
        except Exception as e:  # noqa: BLE001 - any port failure is the same fact for the user
            return self._lost(e)
        return []

    def _lost(self, e):
        self.closed = True
        t = self.clock()
        return self.parser.close(t) + [Problem(t, DISCONNECTED, _first_line(e))]

    def receive(self, timeout_s):
        """Read until at least one complete line arrived or timeout_s passed; events."""
        out = []
        t_prev = None
        end = self.clock() + timeout_s
        while not self.closed:
            try:
                n = getattr(self.port, "in_waiting", 0) or 1
                data = self.port.read(n)
            except Exception as e:  # noqa: BLE001
                out += self._lost(e)
                break
            t = self.clock()
            if data:
                got = self.parser.feed(t, data)
                out += got
                if got or data.endswith(b"\n"):
                    break
            elif t == t_prev:
                break  # a port that does not block (the simulated one): nothing more now
            if t >= end:
                break
            t_prev = t
        if not self.closed:
            out += self.parser.tick(self.clock())
        return out

    def flush_input(self):
        """Drop whatever the balance sent that was not read yet (a late answer to an earlier
        command, half a line): otherwise it would be taken for the answer to the next command,
        timed then, and every later reading would lag one command behind."""
        if self.closed:
            return []
        try:
            reset = getattr(self.port, "reset_input_buffer", None)
            if reset is not None:
                reset()
            for _ in range(64):  # a port without reset_input_buffer, or bytes still arriving
                n = getattr(self.port, "in_waiting", 0)
                data = self.port.read(n) if n else b""
                if not data:
                    break
                self.flushed += len(data)
        except Exception as e:  # noqa: BLE001
            return self._lost(e)
        self.flushed += len(self.parser._buf)
        self.parser._buf.clear()
        return []

    def immediate(self, timeout_s=2.0):
        """SI: the weight now, stable or not (stale input dropped first)."""
        out = self.flush_input()
        return out + self.send("SI") + self.receive(timeout_s)

    def stable(self, timeout_s=10.0):
        """S: the next stable weight (stale input dropped first)."""
        out = self.flush_input()
        return out + self.send("S") + self.receive(timeout_s)

    def start_continuous(self):
        """SIR: the balance sends weights on its own from now on."""
        return self.send("SIR")

    def stop(self):
        """@: cancels SIR (and resets the balance's interface, not its zero)."""
        out = self.send("@")
        if not self.closed:
            out += self.receive(0.5)
        return out

    def close(self):
        out = []
        if not self.closed:
            out = self.parser.close(self.clock())
        self.closed = True
        try:
            self.port.close()
        except Exception:  # noqa: BLE001 - closing a dead port must not fail the run
            pass
        return out


def _first_line(e):
    s = str(e).strip().splitlines()
    return s[0] if s else type(e).__name__


# ---- transcripts of the port (the format is in the module's docstring) ----

MAGIC = "# MT-SICS transcript 1"
WROTE = ">"
READ = "<"
PORT = "!"
_OPS = ("read", "write", "in_waiting", "reset", "close")
_PLAIN = frozenset(range(0x21, 0x7F)) - {0x5C}
_NAMED = {0x5C: "\\\\", 0x0D: "\\r", 0x0A: "\\n", 0x09: "\\t"}
_UNNAMED = {"\\": 0x5C, "r": 0x0D, "n": 0x0A, "t": 0x09}
_TIME = re.compile(r"^-?\d+(\.\d+)?$")
_HEX = "0123456789abcdefABCDEF"


def escape(data):
    """Bytes -> the text of a transcript line (printable ASCII, no trailing space)."""
    out = []
    last = len(data) - 1
    for i, b in enumerate(data):
        if b in _PLAIN or (b == 0x20 and i != last):
            out.append(chr(b))
        else:
            out.append(_NAMED.get(b) or "\\x%02x" % b)
    return "".join(out)


def unescape(text):
    """The inverse of escape(); ValueError with the reason for text escape() cannot write."""
    out = bytearray()
    i = 0
    n = len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            e = text[i + 1 : i + 2]
            if e in _UNNAMED:
                out.append(_UNNAMED[e])
                i += 2
                continue
            h = text[i + 2 : i + 4]
            if e == "x" and len(h) == 2 and h[0] in _HEX and h[1] in _HEX:
                out.append(int(h, 16))
                i += 4
                continue
            raise ValueError("an unknown escape %s" % ascii(text[i : i + 4]))
        if not " " <= c <= "~":
            raise ValueError("a character that is not printable ASCII (%s; write bytes as \\xHH)"
                             % ascii(c))  # fmt: skip
        out.append(ord(c))
        i += 1
    return bytes(out)


def time_text(t):
    """A host time as a plain decimal that reads back as the same value (floats by their
    shortest repr; a fraction without a finite decimal to 9 places)."""
    if isinstance(t, int):
        return str(t)
    if isinstance(t, float):
        d = Decimal(repr(t))
    elif isinstance(t, Decimal):
        d = t
    else:
        d = _dec(t)
        if Fraction(d) != t:
            d = d.quantize(Decimal("0.000000001"))
    if not d.is_finite():
        raise ValueError("the host clock gave %s" % t)
    return format(d, "f")


class RecordingPort:
    """A pyserial-like port that writes every call's traffic to a transcript as it happens:
    each write (>), each read that returned bytes (<), a reset of the input, the close, and
    any call that raised (!), with the host's time clock() after the call. The wrapped port
    behaves exactly as before: same results, same exceptions (recorded first). Each line is
    flushed (and with sync, written to disk) at once, so a crash loses no event."""

    def __init__(self, port, clock, path, meta=None, sync=True):
        self.port = port
        self.clock = clock
        self.path = path
        self.sync = sync
        self.sent = 0  # bytes written, and read, through this port
        self.received = 0
        try:
            self._f = open(path, "w", encoding="ascii", newline="\n")
            self._line(MAGIC)
            for k, v in (meta or {}).items():
                self._line("# %s: %s" % (_one_line(k), _one_line(v)))
        except OSError as e:
            raise BalanceError("Cannot write the balance transcript %s (%s)."
                               % (path, e.strerror or _first_line(e))) from None  # fmt: skip
        if hasattr(port, "reset_input_buffer"):
            # Only when the port has it: Balance falls back to reading for a port without.
            self.reset_input_buffer = self._reset

    def _line(self, text):
        if self._f.closed:
            return  # the host closed the port and goes on calling: nothing passes any more
        self._f.write(text + "\n")
        self._f.flush()
        if self.sync:
            os.fsync(self._f.fileno())

    def _event(self, kind, text):
        self._line("%s %s %s" % (time_text(self.clock()), kind, text) if text
                   else "%s %s" % (time_text(self.clock()), kind))  # fmt: skip

    def _failed(self, op, e):
        self._event(PORT, "%s %s" % (op, escape(("%s: %s" % (type(e).__name__, e))
                                                 .encode("utf-8", "backslashreplace"))))

    def write(self, data):
        try:
            n = self.port.write(data)
        except Exception as e:
            self._failed("write", e)
            raise
        self.sent += len(data)
        self._event(WROTE, escape(bytes(data)))
        return n

    def read(self, n=1):
        try:
            data = self.port.read(n)
        except Exception as e:
            self._failed("read", e)
            raise
        if data:
            self.received += len(data)
            self._event(READ, escape(bytes(data)))
        return data

    @property
    def in_waiting(self):
        try:
            return self.port.in_waiting
        except Exception as e:
            self._failed("in_waiting", e)
            raise

    def _reset(self):
        try:
            self.port.reset_input_buffer()
        except Exception as e:
            self._failed("reset", e)
            raise
        self._event(PORT, "reset")

    def close(self):
        try:
            self.port.close()
        except Exception as e:
            self._failed("close", e)
            raise
        else:
            self._event(PORT, "close")
        finally:
            self._f.close()


def _one_line(x):
    return str(x).replace("\r", " ").replace("\n", " ").encode("ascii", "backslashreplace") \
        .decode("ascii")  # fmt: skip


class Transcript(list):
    """A transcript read back: a list of events (t Fraction, kind, data): (t, ">", bytes),
    (t, "<", bytes) or (t, "!", "op" or "op error"); .meta holds the header, .notes what was
    dropped."""

    def __init__(self, events=(), meta=None, notes=None):
        super().__init__(events)
        self.meta = meta or {}
        self.notes = notes or []


def port_event(text):
    """The text of a "!" event -> (op, error); error is "" for the host's own reset or close."""
    op, _, error = text.partition(" ")
    return op, error


def read_transcript(path):
    """Read a transcript. BalanceError with one sentence for a file that is not one or has a
    line that is not an event; a last line without its newline was cut off while written and
    is dropped (said in .notes)."""
    raw = read_bytes(path, "transcript")
    lines = raw.split(b"\n")
    cut = lines.pop()  # b"" when the file ends with its newline
    out = Transcript()
    if cut:
        out.notes.append("the last line (%d) was cut off while it was written and is dropped"
                         % (len(lines) + 1))  # fmt: skip
    if not lines or lines[0].rstrip(b"\r") != MAGIC.encode():
        raise BalanceError("%s is not a balance transcript (its first line is not %r)."
                           % (path, MAGIC))  # fmt: skip
    for no, bline in enumerate(lines[1:], 2):
        try:
            line = bline.rstrip(b"\r").decode("ascii")
        except UnicodeDecodeError:
            raise BalanceError("Line %d of the transcript %s has bytes that are not ASCII."
                               % (no, path)) from None  # fmt: skip
        if not line.strip():
            continue
        if line.startswith("#"):
            k, colon, v = line[1:].partition(":")
            if colon and not out and k.strip() and " " not in k.strip():
                out.meta[k.strip()] = v.strip()
            continue
        try:
            out.append(_event_of(line))
        except ValueError as e:
            raise BalanceError("Line %d of the transcript %s is not an event (%s)."
                               % (no, path, e)) from None  # fmt: skip
    return out


def _event_of(line):
    t, sp, rest = line.partition(" ")
    if not _TIME.match(t):
        raise ValueError("it does not start with a time in s: %s" % _show(line))
    kind, data = rest[:1], rest[2:]
    if not sp or kind not in (WROTE, READ, PORT) or rest[1:2] not in ("", " "):
        raise ValueError("after the time comes no >, < or !: %s" % _show(line))
    if kind == PORT:
        op, error = port_event(data)
        if op not in _OPS:
            raise ValueError("%s is not a call on the port" % ascii(op))
        return (Fraction(t), kind, op + (" " + unescape(error).decode("utf-8", "replace")
                                         if error else ""))  # fmt: skip
    return (Fraction(t), kind, unescape(data))


def _error_text(error):
    # "OSError: [Errno 5] Input/output error" -> the exception's own message, as str(e) was.
    name, sep, message = error.partition(": ")
    return message if sep and name.isidentifier() else error


def replay(events, parser=None):
    """Feed a transcript's reads to a Parser as Balance fed the live ones -> the events.

    Each chunk goes in at its time; chunks read while the input was being dropped (from a
    reset to the next write) are dropped with the parser's partial line, as flush_input does; a
    failed call on the port ends the session (TRUNCATED, then DISCONNECTED) as does the host's
    close. Silence is checked when the host sends (and at a reset): replay has no clock of its
    own between events, so a SILENCE may come later than it did live."""
    parser = Parser() if parser is None else parser
    out = []
    dropping = False
    t = None
    for t, kind, data in events:
        if kind == WROTE:
            if dropping:
                parser._buf.clear()
                dropping = False
            out += parser.tick(t)
        elif kind == READ:
            if not dropping:
                out += parser.feed(t, data)
        else:
            op, error = port_event(data)
            if error and op != "close":
                why = _first_line(OSError(_error_text(error)))
                return out + parser.close(t) + [Problem(t, DISCONNECTED, why)]
            if op == "close":
                return out + parser.close(t)
            if op == "reset":
                out += parser.tick(t)
                dropping = True
    if t is not None:
        out += parser.close(t)  # the recording ended without a close: the host stopped
    return out


class ReplayPort:
    """A transcript played back as the port it came from, for a Balance driven as the live one
    was: Balance(port, port.clock), with wait_until(t) where the live host waited. Writes must
    be the recorded ones (else BalanceError, and .mismatch says where); reads, in_waiting and
    resets give what was recorded, at the recorded times (port.clock); a recorded failure
    raises OSError with its message. Recorded bytes are there for a read once the clock is
    within idle_s (the live read timeout) of their time; a read that finds none lets idle_s
    pass and returns b"", as a live read that timed out."""

    def __init__(self, events, idle_s=0):
        self.events = list(events)
        self.i = 0
        self.t = self.events[0][0] if self.events else Fraction(0)
        self.idle_s = idle_s
        self.closed = False
        self.mismatch = None  # the first call that differed from the transcript (a sentence)
        if any(k == PORT and port_event(d)[0] == "reset" for _t, k, d in self.events):
            self.reset_input_buffer = self._reset

    def clock(self):
        return self.t

    def _next(self):
        return self.events[self.i] if self.i < len(self.events) else None

    def _failure(self, op):
        ev = self._next()
        if ev is not None and ev[1] == PORT:
            got, error = port_event(ev[2])
            if got == op and error:
                self.t = ev[0]
                self.i += 1
                raise OSError(_error_text(error))

    def _expect(self, kind, what, data=None):
        ev = self._next()
        if ev is None or ev[1] != kind or (data is not None and ev[2] != data):
            # Balance turns any port error into DISCONNECTED; .mismatch keeps the real reason.
            self.mismatch = self.mismatch or "The replay %s where the transcript has %s." % (
                what, "nothing more" if ev is None else "%s %s %s" % (
                    time_text(ev[0]), ev[1], escape(ev[2]) if ev[1] != PORT else ev[2]))
            raise BalanceError(self.mismatch)
        self.t = ev[0]
        self.i += 1

    def write(self, data):
        self._failure("write")
        self._expect(WROTE, "wrote %s" % escape(bytes(data)), bytes(data))
        return len(data)

    def wait_until(self, t):
        """The host lets time pass to t (s), as the live one did between its calls."""
        self.t = max(self.t, t)

    def _due(self):
        ev = self._next()
        return ev if ev is not None and ev[1] == READ and ev[0] <= self.t + self.idle_s else None

    @property
    def in_waiting(self):
        self._failure("in_waiting")
        ev = self._due()
        return 0 if ev is None else len(ev[2])

    def read(self, n=1):
        self._failure("read")
        ev = self._due()
        if ev is None:
            nxt = self._next()
            if nxt is not None and nxt[1] != READ:
                self.t = min(self.t + self.idle_s, max(self.t, nxt[0]))
            else:
                self.t += self.idle_s
            return b""
        self.t = ev[0]
        data = ev[2][:n]
        if n < len(ev[2]):
            self.events[self.i] = (ev[0], READ, ev[2][n:])
        else:
            self.i += 1
        return data

    def _reset(self):
        self._failure("reset")
        self._expect(PORT, "dropped its input", "reset")

    def close(self):
        self.closed = True
        self._failure("close")
        ev = self._next()
        if ev is not None and ev[1] == PORT and ev[2] == "close":
            self.t = ev[0]
            self.i += 1


# ---- the CSV log ----

HEADER = ("t_s", "mass_g", "stable")


class CsvLog:
    """The balance log: `# key: value` lines, the header, then one row per reading; problems go
    in as `# problem` comment lines where they happened. Every line is flushed (and, with sync,
    written to disk) as it is written, so a crash or a pulled plug loses nothing logged."""

    def __init__(self, path, meta=None, sync=True):
        self.path = path
        self.sync = sync
        self.rows = 0
        self._f = open(path, "w", encoding="utf-8", errors="replace", newline="")
        for k, v in (meta or {}).items():
            self._write("# %s: %s\n" % (k, v))
        self._write(",".join(HEADER) + "\n")

    def _write(self, line):
        self._f.write(line)
        self._f.flush()
        if self.sync:
            os.fsync(self._f.fileno())

    def reading(self, r, t0=0):
        self._write("%s,%s,%d\n" % (_t(r.t - t0), r.grams, 1 if r.stable else 0))
        self.rows += 1

    def problem(self, p, t0=0):
        self._write("# problem %s %s %s\n" % (_t(p.t - t0), p.kind,
                                              p.detail.replace("\n", " ")))  # fmt: skip

    def note(self, text):
        self._write("# note %s\n" % text.replace("\n", " "))

    def close(self):
        if not self._f.closed:
            self._f.close()


def _t(t):
    if isinstance(t, int):
        return str(t)
    if isinstance(t, Decimal):
        return str(t)
    return "%.3f" % t


class LogData:
    """A balance log read back: (t, grams) readings kept, metadata, and what was wrong."""

    def __init__(self):
        self.samples = []  # (t_s Decimal, grams Decimal)
        self.stable = []
        self.meta = {}
        self.problems = []  # (line number, sentence) of rows that were dropped
        self.logged_problems = []  # the `# problem` lines the logger wrote
        self.lines = 0


# A reading more than this after the previous one is a corrupted time, not a pause of the test.
MAX_LOG_JUMP_S = 7 * 24 * 3600
_MAX_NUMBER_CHARS = 32
_T_NAMES = ("t_s", "time_s", "t", "time")
_M_NAMES = ("mass_g", "weight_g", "mass", "weight", "w_g")


def read_bytes(path, what):
    """The file's bytes, or BalanceError with one sentence saying why it cannot be read."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise BalanceError("The %s %s does not exist." % (what, path)) from None
    except IsADirectoryError:
        raise BalanceError("The %s %s is a folder, not a file." % (what, path)) from None
    except OSError as e:
        raise BalanceError("Cannot read the %s %s (%s)."
                           % (what, path, e.strerror or _first_line(e))) from None  # fmt: skip


def read_log(path):
    """Read a balance log (this module's CsvLog or any CSV with a time column in s and a mass
    column in g). Raises BalanceError with one sentence if the file cannot be used at all;
    rows that cannot be used are dropped and described in .problems."""
    text = read_bytes(path, "log").decode("utf-8", "replace")
    ends_cleanly = text.endswith("\n")
    lines = text.splitlines()
    data = LogData()
    data.lines = len(lines)
    col_t = col_m = col_s = None
    last_t = None
    for no, line in enumerate(lines, 1):
        s = line.strip()
        if not s:
            continue
        if s.startswith("#"):
            body = s[1:].strip()
            if body.startswith("problem "):
                data.logged_problems.append(body[len("problem "):])
            elif ":" in body and col_t is None:
                k, _, v = body.partition(":")
                data.meta[k.strip()] = v.strip()
            continue
        try:
            fields = next(csv.reader(io.StringIO(s)))
        except csv.Error as e:  # e.g. a field over the csv module's size limit, a NUL byte
            data.problems.append((no, "line %d cannot be read as CSV (%s)" % (no, _first_line(e))))
            continue
        fields = [x.strip() for x in fields]
        if col_t is None:
            low = [x.lower() for x in fields]
            col_t = next((low.index(n) for n in _T_NAMES if n in low), None)
            col_m = next((low.index(n) for n in _M_NAMES if n in low), None)
            col_s = low.index("stable") if "stable" in low else None
            if col_t is None or col_m is None:
                raise BalanceError("The log %s has no header naming a time column (t_s) and a "
                                   "mass column (mass_g) on its first data line." % path)
            continue
        if no == len(lines) and not ends_cleanly:
            # A log line always ends with its newline: this one was cut off while written, and
            # its last number may be short of digits.
            data.problems.append((no, "the last line is incomplete (the log was cut off while "
                                  "it was written)"))  # fmt: skip
            continue
        need = max(col_t, col_m) + 1
        try:
            if len(fields) < need:
                raise InvalidOperation
            # Plain decimals only: an exponent (1e9) or a number longer than any balance writes
            # is not a reading, and would cost the exact analysis dearly.
            if not all(len(x) <= _MAX_NUMBER_CHARS and _NUMBER.match(x)
                       for x in (fields[col_t], fields[col_m])):  # fmt: skip
                raise InvalidOperation
            t = Decimal(fields[col_t])
            m = Decimal(fields[col_m])
        except InvalidOperation:
            data.problems.append((no, "line %d is not a time and a mass: %s" % (no, _show(s))))
            continue
        if last_t is not None and t <= last_t:
            data.problems.append((no, "line %d has time %s s, not after %s s; dropped"
                                  % (no, t, last_t)))  # fmt: skip
            continue
        if last_t is not None and t - last_t > MAX_LOG_JUMP_S:
            data.problems.append((no, "line %d has time %s s, more than 7 days after %s s; "
                                  "dropped" % (no, t, last_t)))  # fmt: skip
            continue
        last_t = t
        data.samples.append((t, m))
        data.stable.append(None if col_s is None or col_s >= len(fields)
                           else fields[col_s] == "1")  # fmt: skip
    if col_t is None:
        raise BalanceError("The log %s holds no data (no header line)." % path)
    return data


# ---- the simulated balance ----


class SimBalance:
    """A simulated MT-SICS balance behind the pyserial-like port interface Balance uses.

    mass_g(t_s) is the true load (g, a Decimal or Fraction or float) at the clock's time
    clock() (s). The balance adds evaporation (mg/h, a loss growing from t = 0), Gaussian noise
    (sigma in g), rounds to its resolution (g), and answers SI, S, SIR and @. Faults for tests:
    garbage (probability that an answer is replaced by noise bytes), dropout (probability that
    a command goes unanswered), dead_after_s (the balance stops answering from then on)."""

    def __init__(self, mass_g, clock, resolution_g="0.00001", noise_g="0", evaporation_mg_h="0",
                 capacity_g="220", seed=1, garbage=0.0, dropout=0.0, dead_after_s=None,
                 settle_s=1, continuous_period_s=1):  # fmt: skip
        self.mass_g = mass_g
        self.clock = clock
        self.res = Decimal(str(resolution_g))
        self.noise = float(noise_g)
        self.evap_g_per_s = Decimal(str(evaporation_mg_h)) / 1000 / 3600
        self.capacity = Decimal(str(capacity_g))
        self.rng = random.Random(seed)
        self.garbage = garbage
        self.dropout = dropout
        self.dead_after_s = dead_after_s
        self.settle_s = settle_s
        self.period_s = continuous_period_s
        self._out = bytearray()
        self._inbuf = bytearray()
        self._continuous = False
        self._next_auto = None
        self.commands = []
        self.is_open = True
        self._last = None

    # -- the balance --

    def true_display(self, t):
        """The reading the balance would show at t, before noise and rounding."""
        return _dec(self.mass_g(t)) - self.evap_g_per_s * _dec(t)

    def value(self, t):
        m = self.true_display(t)
        if self.noise:
            m += Decimal(repr(self.rng.gauss(0.0, self.noise)))
        return ((m / self.res).to_integral_value() * self.res).quantize(self.res)

    def line(self, t):
        """The SI response at time t."""
        v = self.value(t)
        if v > self.capacity:
            return "S +"
        if v < -self.capacity / 10:
            return "S -"
        # Dynamic while the load moves faster than two digits per settling time (judged from
        # the last look: the load is never asked about the past).
        now = self.true_display(t)
        flag = "S"
        if self._last is not None and t > self._last[0]:
            slope = abs(now - self._last[1]) / _dec(t - self._last[0])
            if slope * Decimal(str(self.settle_s)) > 2 * self.res:
                flag = "D"
        self._last = (t, now)
        return "S %s %10s g" % (flag, v)

    def _dead(self, t):
        return self.dead_after_s is not None and t >= self.dead_after_s

    def _answer(self, text):
        if self.garbage and self.rng.random() < self.garbage:
            n = self.rng.randint(1, 24)
            junk = bytes(self.rng.randint(0x20, 0xFF) for _ in range(n))
            self._out += junk.replace(b"\n", b"?") + b"\r\n"
            return
        self._out += text.encode("ascii") + b"\r\n"

    def _command(self, cmd):
        t = self.clock()
        self.commands.append((t, cmd))
        if self._dead(t) or (self.dropout and self.rng.random() < self.dropout):
            return
        if cmd == "SI":
            self._answer(self.line(t))
        elif cmd == "S":
            ln = self.line(t)
            self._answer(ln.replace("S D", "S S", 1))
        elif cmd == "SIR":
            self._continuous = True
            self._next_auto = t
        elif cmd == "@":
            self._continuous = False
            self._answer('I4 A "SIM0001"')
        else:
            self._answer("ES")

    def _auto(self):
        # Continuous output: the line of the latest period due (the simulation has no real time
        # in which earlier lines would have been read as they came).
        if not self._continuous or self._next_auto > self.clock():
            return
        t = self.clock()
        if not self._dead(t):
            self._answer(self.line(t))
        while self._next_auto <= t:
            self._next_auto += self.period_s

    # -- the port --

    def write(self, data):
        if not self.is_open:
            raise OSError("the port is closed")
        self._inbuf += data
        while b"\n" in self._inbuf:
            i = self._inbuf.index(b"\n")
            cmd = bytes(self._inbuf[:i]).strip().decode("ascii", "replace")
            del self._inbuf[: i + 1]
            self._command(cmd)
        return len(data)

    @property
    def in_waiting(self):
        self._auto()
        return len(self._out)

    def read(self, n=1):
        if not self.is_open:
            raise OSError("the port is closed")
        self._auto()
        data = bytes(self._out[:n])
        del self._out[:n]
        return data

    def close(self):
        self.is_open = False


def _dec(x):
    """A Decimal of an int, Decimal, Fraction or float (a Fraction to 28 significant digits)."""
    if isinstance(x, Decimal):
        return x
    if isinstance(x, int):
        return Decimal(x)
    if isinstance(x, float):
        return Decimal(repr(x))
    return Decimal(x.numerator) / Decimal(x.denominator)
