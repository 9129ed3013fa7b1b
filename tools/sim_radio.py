# `make sim-radio`: the virtual pump with its radio, in real time, reachable by another process
# over Bumble's TCP transport (a clinician programmer on this machine, or the tests).
"""Usage:
  sim_radio.py --keys KEYS.pump [--listen 127.0.0.1:6402] [--accel 1] [--minutes N]

The pump is provisioned with the given keys file (tools/provision.py writes one), commissioned
with the demo programme, and serves BLE through a virtual controller whose HCI is on
tcp-server:<listen>. A program in another process runs a Bumble host on
tcp-client:<host>:<port> and is a central on the same virtual radio link.

The pump's button: the pairing window is open for the first 60 s; type `press` and Enter to
press the button again (it also acknowledges alarms). `accel N` runs N simulated ms per real ms
from then on (pair first at 1: the window is 60 simulated s). `quit` or Ctrl-C stops the pump."""

import argparse
import asyncio
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "firmware"), str(ROOT)]

from boards.sim import ble_bumble as BB  # noqa: E402
from boards.sim import realtime  # noqa: E402
from host_tests import appscen as S  # noqa: E402
from link import keys as KF  # noqa: E402

DEFAULT_LISTEN = "127.0.0.1:6402"


def say(line):
    print(line, flush=True)


async def _console(vp, stop, pace):
    # Lines from stdin, read in a thread so the loop keeps running.
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        line = await loop.run_in_executor(None, sys.stdin.readline)
        words = line.split()
        if not line or words[:1] in (["quit"], ["exit"]):
            stop.set()
            return
        if words == ["press"]:
            vp.button.press()
            say("sim-radio: button pressed: the pairing window is open for 60 s")
        elif len(words) == 2 and words[0] == "accel" and words[1].isdigit() and int(words[1]):
            pace["accel"] = int(words[1])
            say("sim-radio: %d simulated ms per real ms from now on" % pace["accel"])
        elif words:
            say("sim-radio: commands are `press`, `accel N` and `quit`")


async def serve(keys, listen, accel, minutes, console=True):
    ble, transport = await BB.open_tcp_server(listen)
    scen = S.Scenario(keys=keys, ble_api=lambda: (ble, BB.UUID))
    vp = scen.vp
    vp.button.press()  # the window is open at the start, as after a press at the bench
    stop = asyncio.Event()
    until = None if minutes is None else vp.loop.now + minutes * 60_000
    pace = {"accel": accel}
    driver = asyncio.get_running_loop().create_task(
        realtime.drive(vp, lambda: pace["accel"], until))
    tasks = [driver]
    if console:
        tasks.append(asyncio.get_running_loop().create_task(_console(vp, stop, pace)))
    pump_id = KF.decode(keys)[0].decode()
    say("sim-radio: pump %s serving BLE at tcp-server:%s (a central connects with Bumble's "
        "tcp-client:%s); pairing window open for 60 s" % (pump_id, listen, listen))
    try:
        waiter = asyncio.get_running_loop().create_task(stop.wait())
        await asyncio.wait([driver, waiter], return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
    finally:
        for t in tasks:
            t.cancel()
        scen.finish()
        await transport.close()
    say("sim-radio: stopped after %d simulated s" % (vp.loop.now // 1000))


def main(argv=None):
    ap = argparse.ArgumentParser(description="The virtual pump with its radio over Bumble TCP.")
    ap.add_argument("--keys", required=True, help="the pump's keys file (tools/provision.py)")
    ap.add_argument("--listen", default=DEFAULT_LISTEN, help="host:port to serve HCI on")
    ap.add_argument("--accel", type=int, default=1, help="simulated ms per real ms")
    ap.add_argument("--minutes", type=int, help="stop after this many simulated minutes")
    ap.add_argument("--no-console", action="store_true", help="do not read commands on stdin")
    args = ap.parse_args(argv)
    try:
        keys = Path(args.keys).read_bytes()
        KF.decode(keys)
    except (OSError, ValueError) as e:
        print("sim-radio: cannot use %s as a keys file: %s." % (args.keys, e), file=sys.stderr)
        return 2
    if args.accel < 1:
        print("sim-radio: --accel must be 1 or more.", file=sys.stderr)
        return 2
    try:
        asyncio.run(serve(keys, args.listen, args.accel, args.minutes, not args.no_console))
    except KeyboardInterrupt:
        say("sim-radio: stopped")
    except OSError as e:
        print("sim-radio: cannot serve on %s: %s." % (args.listen, e), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
