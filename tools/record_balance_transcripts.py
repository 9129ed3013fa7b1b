# Records the balance transcripts in host_tests/data/balance/ through the real serial stack: a
# pseudo-terminal, pyserial opened by Balance.open(transcript=...), a simulated balance behind it.
"""Each session runs a simulated MT-SICS balance (itbtools.balance.SimBalance) in a thread on the
master side of a pseudo-terminal; the host side is Balance.open() on the slave device, through
pyserial, recording a transcript. Time is a fake clock the script advances, so a day's polling
takes a second and the files are the same on every run; every byte really passes the pty.

Determinism: each look at the clock (by Balance or by the recorder) first waits until the
device has taken every byte the host wrote, has sent what is due at the clock's time, and the
host's side of the pty shows all of it. Reads therefore always find the whole answer, never a
part of it that depends on thread scheduling. The disconnect hangs up the master only after the
host has read the half line, since Linux drops unread input of a pty at hangup.

    .venv/bin/python tools/record_balance_transcripts.py [--out DIR] [--only NAME]
"""

import argparse
import os
import select
import sys
import threading
import time
from fractions import Fraction
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from itbtools import balance as B  # noqa: E402 - needs the repo root on the path first

WAIT_S = 5  # a pty that has not delivered in this long is broken, not slow

# 10 uL/h of water (0.998 g/mL) into a beaker holding 10 g: the reference rig's lowest rate.
FLOW_G_PER_S = Fraction(998, 100) / 1000 / 3600


def rising(t):
    return 10 + FLOW_G_PER_S * Fraction(t)


def with_bolus(t):
    # 20 uL pushed between 20 s and 30 s of the continuous session: the balance goes dynamic.
    t = Fraction(t)
    return rising(t) + Fraction(998, 50000) * min(max(t - 20, 0), 10) / 10


class Device(threading.Thread):
    """The balance's side of the pty: command bytes in, SimBalance's bytes out."""

    def __init__(self, master, sim, cut_at_command=None):
        super().__init__(daemon=True)
        self.master = master
        self.sim = sim
        self.cut_at = cut_at_command  # this command is answered with half a line, then hang-up
        self.cond = threading.Condition()
        self.rx = 0  # bytes taken from the host
        self.tx = 0  # bytes sent to the host
        self.polls_asked = 0
        self.polls_done = 0
        self.cut_pending = False
        self.gone = False  # the master is closed (hang-up) or the host closed its side
        self.error = None  # what ended the thread, if it was not a hang-up
        self.wake_r, self.wake_w = os.pipe()

    def run(self):
        try:
            self._loop()
        except BaseException as e:  # noqa: BLE001 - handed to the host's side, which raises it
            self.error = e
        finally:
            with self.cond:
                self.gone = True
                self.cond.notify_all()

    def _loop(self):
        while True:
            ready, _, _ = select.select([self.master, self.wake_r], [], [])
            if self.wake_r in ready:
                what = os.read(self.wake_r, 1)
                with self.cond:
                    if what == b"c":
                        os.close(self.master)
                        return
                    self._send()
                    self.polls_done += 1
                    self.cond.notify_all()
            if self.master in ready:
                try:
                    data = os.read(self.master, 4096)
                except OSError:  # EIO: the host closed the slave side
                    return
                with self.cond:
                    self.sim.write(data)
                    self.rx += len(data)
                    self._send()
                    self.cond.notify_all()

    def _send(self):
        out = self.sim.read(self.sim.in_waiting)
        if self.cut_at is not None and len(self.sim.commands) >= self.cut_at and out:
            out = out[: len(out) // 2]
            self.cut_pending = True
            self.cut_at = None
        if out:
            os.write(self.master, out)
            self.tx += len(out)


class Rig:
    """A pty, its device thread, and the fake clock that host and balance share."""

    def __init__(self, sim_kw, mass, cut_at_command=None):
        self.t = Fraction(0)
        self.master, self.slave = os.openpty()
        self.device_name = os.ttyname(self.slave)
        self.sim = B.SimBalance(mass, lambda: self.t, **sim_kw)
        self.dev = Device(self.master, self.sim, cut_at_command)
        self.rec = None  # the RecordingPort, once the host has opened the port
        self.dev.start()

    def opened(self, bal):
        self.rec = bal.port
        # The host's own open is the only slave left: its close is then a hang-up the device sees.
        os.close(self.slave)

    def clock(self):
        self.settle()
        return self.t

    def at(self, t):
        """Time passes to t (s); the balance sends what falls due, whether or not it is read."""
        self.t = Fraction(t)
        self.settle()

    def _wait(self, done, what):
        end = time.monotonic() + WAIT_S
        while not done():
            if time.monotonic() > end:
                raise RuntimeError("the pseudo-terminal did not %s within %d s" % (what, WAIT_S))
            time.sleep(0.0005)

    def settle(self):
        dev = self.dev
        if dev.error is not None:
            raise RuntimeError("the simulated balance failed: %r" % dev.error) from dev.error
        if self.rec is None or dev.gone:
            return
        self._wait(lambda: dev.rx >= self.rec.sent or dev.gone, "pass the host's bytes on")
        with dev.cond:
            dev.polls_asked += 1
            want = dev.polls_asked
        os.write(dev.wake_w, b"p")
        self._wait(lambda: dev.polls_done >= want or dev.gone, "let the balance answer")
        ser = self.rec.port
        if dev.gone or not ser.is_open:
            return
        self._wait(lambda: ser.in_waiting == dev.tx - self.rec.received,
                   "show the balance's bytes to the host")  # fmt: skip
        if dev.cut_pending and self.rec.received == dev.tx:
            os.write(dev.wake_w, b"c")
            self._wait(lambda: dev.gone, "hang up")

    def close(self):
        self.dev.join(WAIT_S)
        if not self.dev.cut_pending:
            os.close(self.master)
        for fd in (self.dev.wake_r, self.dev.wake_w):
            os.close(fd)


# ---- the sessions: each drives a Balance as pumpbench does; at(t) lets time pass ----


def drive_polled(bal, at, times):
    """SI at each time, the stale input dropped first (Balance.immediate), then close."""
    out = []
    for t in times:
        at(t)
        out += bal.immediate(timeout_s=2)
        if bal.closed:
            break
    return out + bal.close()


def drive_continuous(bal, at, end_s=60, unread=(15, 35, 55)):
    """SIR, the output read every second (but at the seconds in unread, whose line then comes
    in one read with the next one), @ at the end, then close."""
    at(0)
    out = bal.start_continuous()
    for t in range(end_s + 1):
        at(t)
        if t not in unread:
            out += bal.receive(0.5)
    return out + bal.stop() + bal.close()


SESSIONS = {
    "polled": {
        "about": "SI every 30 s for 20 min at 10 uL/h on a 1 ug balance; about one answer in six "
                 "replaced by noise bytes, one in twenty lost (SimBalance garbage, dropout)",
        "mass": rising,
        "sim": {"resolution_g": "0.000001", "noise_g": "0.000001", "settle_s": 0.5,
                "garbage": 0.15, "dropout": 0.05, "seed": 7},
        "silence_s": 120,
        "drive": lambda bal, at: drive_polled(bal, at, range(0, 1200, 30)),
    },
    "continuous": {
        "about": "SIR for 60 s with a 20 uL bolus from 20 s to 30 s (dynamic readings), the "
                 "host not reading at 15, 35 and 55 s, then @",
        "mass": with_bolus,
        "sim": {"resolution_g": "0.000001", "noise_g": "0.000001", "settle_s": 0.5, "seed": 3},
        "silence_s": 10,
        "drive": drive_continuous,
    },
    "dead": {
        "about": "SI every 30 s; the balance stops answering at 120 s (SimBalance dead_after_s) "
                 "and stays silent",
        "mass": rising,
        "sim": {"resolution_g": "0.000001", "dead_after_s": 120, "seed": 5},
        "silence_s": 60,
        "drive": lambda bal, at: drive_polled(bal, at, range(0, 300, 30)),
    },
    "disconnect": {
        "about": "SI every 30 s; the fifth answer stops after half a line and the balance's "
                 "end of the line hangs up (the pty master is closed)",
        "mass": rising,
        "sim": {"resolution_g": "0.000001", "seed": 9},
        "silence_s": 60,
        "cut_at": 5,
        "drive": lambda bal, at: drive_polled(bal, at, range(0, 300, 30)),
    },
}


def record(name, out_dir, read_timeout_s=0.05):
    """Record one session into out_dir/<name>.mtsics; returns (path, the live events)."""
    s = SESSIONS[name]
    rig = Rig(s["sim"], s["mass"], s.get("cut_at"))
    path = Path(out_dir) / ("%s.mtsics" % name)
    sim_kw = ", ".join("%s=%s" % (k, v) for k, v in s["sim"].items())
    meta = {"device": "a pseudo-terminal (tools/record_balance_transcripts.py)",
            "started": None, "balance": "SimBalance(%s)" % sim_kw,
            "session": s["about"], "clock": "fake, advanced by the script"}  # fmt: skip
    try:
        bal = B.Balance.open(rig.device_name, rig.clock, silence_s=s["silence_s"],
                             read_timeout_s=read_timeout_s, transcript=path, meta=meta)
        rig.opened(bal)
        events = s["drive"](bal, rig.at)
    finally:
        rig.close()
    return path, events


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "host_tests" / "data" / "balance"),
                    help="folder for the .mtsics files (default: %(default)s)")
    ap.add_argument("--only", choices=sorted(SESSIONS), action="append",
                    help="record only this session (repeatable)")
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    for name in args.only or SESSIONS:
        path, events = record(name, args.out)
        kinds = [e.kind for e in events]
        print("%s: %d bytes, %d readings, problems: %s" % (
            path, path.stat().st_size, kinds.count("reading"),
            ", ".join(k for k in kinds if k != "reading") or "none"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
