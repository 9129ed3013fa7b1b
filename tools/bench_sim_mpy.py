# The virtual pump's benchmark that runs UNDER MicroPython (tools/bench_sim.py invokes it): the
# whole application on the sim board, firmware imported from .mpy. Modes, one JSON line at the end:
#   speed DAYS      simulated days per second of the reference run (file flash; speed-ram: on
#                   the RAM flash, whose 512 KB image every garbage collection scans)
#   heap DAYS       live heap after gc.collect(), sampled hourly, and day 1 and day 10 against
#                   day DAYS (file flash)
#   fit DAYS        just the reference run on file flash (tools/bench_sim.py searches the
#                   smallest -X heapsize this completes in)
"""The reference run: the demo flex schedule of `make sim` with the 20 mL reservoir filled at
500 ug/mL, refilled every 7 days so that no alarm sounds, as fast as possible. The RTC, the
mechanism and the cell are the sim board's; nothing fails. Delivered pulses are counted, not
listed, and the buzzer only counts changes, so the rig's record does not grow in the heap."""

import gc
import json
import os
import sys
import time

# The repository root, for the scenarios in host_tests/ (as source); the firmware and the sim
# board come first, from build/mpy (MICROPYPATH, set by tools/mpy.py).
_here = __file__.rsplit("/", 1)[0] if "/" in __file__ else "."
sys.path.append(_here + "/..")

gc.collect()
BASE_ALLOC = gc.mem_alloc()  # the interpreter and this script, before any import of ours
import app  # noqa: E402
from pump import engine  # noqa: E402

gc.collect()
CODE_ALLOC = gc.mem_alloc()  # ... plus the firmware's code
from boards.sim import flash  # noqa: E402
from host_tests import appscen as S  # noqa: E402

HOUR = S.HOUR
DAY = S.DAY
REFILL_EVERY_DAYS = 7


def refill(scen):
    """The clinician's weekly refill at 11:00: the expected residual withdrawn, 20 mL in."""
    sup = scen.vp.sup
    for req in (("refill_begin", sup.reservoir.remaining_nl()),
                ("refill_fill", S.FILL_NL, S.CONC), ("refill_commit",)):  # fmt: skip
        if scen.request(*req) is not None:
            raise SystemExit("refill refused: %r" % (scen.refused[-1],))


def reference(days, flash_dev, every_hour=None, every_day=None):
    """Run the reference programme for `days` days; returns (scenario, seconds run)."""
    scen = S.Scenario(flash_dev=flash_dev, long_run=True)
    t0 = time.ticks_ms()
    for day in range(days):
        start = day * DAY
        if day and day % REFILL_EVERY_DAYS == 0:
            scen.run_to(start + 5 * HOUR)  # 11:00 local
            refill(scen)
        if every_hour is None:
            scen.run_to(start + DAY)
        else:
            for h in range(1, 25):
                scen.run_to(start + h * HOUR)
                every_hour(scen)
        if scen.vp.sup.alarms.active() or scen.refused or scen.vp.resets:
            raise SystemExit("the reference run is not quiet on day %d: alarms %r, refused %r, "
                             "restarts %r" % (day + 1, scen.vp.sup.alarms.active(),
                                              scen.refused, scen.vp.resets))  # fmt: skip
        if every_day is not None:
            every_day(scen, day + 1)
    return scen, time.ticks_diff(time.ticks_ms(), t0) / 1000


def file_flash():
    base = os.getenv("TMPDIR") or "/tmp"
    tag = int.from_bytes(os.urandom(4), "little")
    return flash.FileFlash("%s/itb-bench-%d.flash" % (base, tag), 4096, S.BLOCKS * 2)


def live():
    gc.collect()
    return gc.mem_alloc()


def main():
    mode = sys.argv[1]
    days = int(sys.argv[2])
    out = {"firmware_from": app.__file__, "core_from": engine.__file__,
           "code_bytes": CODE_ALLOC - BASE_ALLOC}  # fmt: skip
    if mode in ("speed", "speed-ram"):
        dev = flash.RamFlash(4096, S.BLOCKS * 2) if mode == "speed-ram" else file_flash()
        try:
            scen, secs = reference(days, dev)
        finally:
            if mode == "speed":
                dev.close(remove=True)
        out["days_per_s"] = days / secs
        out["pulses"] = len(scen.vp.delivered)
        out["commits"] = scen.vp.app.store.commits
        out["wakeups"] = scen.vp.loop.wakeups
    else:
        dev = file_flash()
        try:
            # What is in the heap before the pump: the interpreter, the firmware's and the sim
            # board's code, the scenarios' code, this script.
            before = live()
            # Preallocated: the bench's own records must not grow in the heap it measures.
            peak = [0]
            ends = [0, 0, 0]  # live bytes at the end of day 1, day 10 and the last day

            def hourly(scen):
                m = live()
                if m > peak[0]:
                    peak[0] = m

            def daily(scen, day):
                if day == 1:
                    ends[0] = live()
                if day == 10:
                    ends[1] = live()
                if day == days:
                    ends[2] = live()

            if mode == "heap":
                scen, secs = reference(days, dev, hourly, daily)
                out["before_pump_bytes"] = before
                out["peak_live_bytes"] = peak[0] - before
                out["day1_bytes"] = ends[0]
                out["last_day_bytes"] = ends[2]
                out["growth_bytes"] = ends[2] - ends[0]
                out["growth_10_bytes"] = ends[2] - ends[1]
            else:
                scen, secs = reference(days, dev)
                out["before_pump_bytes"] = before
            out["pulses"] = len(scen.vp.delivered)
        finally:
            dev.close(remove=True)
    print(json.dumps(out))


main()
