# The device application under MicroPython's own asyncio (as on the ESP32), not the virtual
# pump's simulated loop: real ThreadSafeFlags, tasks and sleeps, on a clock scaled from real time.
# Checks it doses as the simulated-loop twin does, answers requests, feeds its watchdog.
# req: SR-21

import asyncio
import gc
import time

import app as APP
from boards.sim import board, flash, hal, hw, lfs, vpump
from pump import limits as L
from pump import rx as RX

SCALE = 75  # simulated ms per real ms: 10 s of lateness (a skipped pulse) is 133 real ms
RUN_MS = 8 * 60_000  # simulated: 6.4 real seconds
W0 = 19_700 * L.DAY_MS + 6 * 3_600_000
DEMO = RX.Prescription(500, [(0, 300_000), (7 * 60, 380_000), (20 * 60, 320_000)],
                       [(7 * 60, 20_000, 1800)], patient_dose_ng=15_000,
                       patient_duration_s=600, patient_lockout_s=3 * 3600,
                       patient_max_per_24h=4)  # fmt: skip
BLOCKS = 48


class ScaledLoop:
    """What boards/sim/hal.py takes from its loop, over the real asyncio: `now` runs SCALE
    times faster than the real clock."""

    ThreadSafeFlag = asyncio.ThreadSafeFlag

    def __init__(self):
        self.t0 = time.ticks_ms()
        self.watchdog = None
        self.tasks = []

    @property
    def now(self):
        return time.ticks_diff(time.ticks_ms(), self.t0) * SCALE

    def create_task(self, coro, name=""):
        t = asyncio.create_task(coro)
        self.tasks.append(t)
        return t

    def sleep_ms(self, ms):
        return asyncio.sleep_ms(ms // SCALE)

    async def _fire(self, t, flag):
        d = t - self.now
        if d > 0:
            await asyncio.sleep_ms((d + SCALE - 1) // SCALE)
        flag.set()

    async def wait_until(self, t, flag):
        timer = asyncio.create_task(self._fire(t, flag))
        try:
            await flag.wait()
        finally:
            timer.cancel()


def build(loop):
    fl = flash.RamFlash(block_size=4096, block_count=BLOCKS)
    lfs.format(fl)
    rtc = hal.Rtc()
    rtc.loop = loop
    rtc.set_ms(W0)
    cell = hw.SimCell(board.CELL, board.ADC_CAL, seed=3)
    mech = hw.Mechanism()
    pulses = []
    h = hal.Hal(loop, lfs.mount(fl), mech, cell, board.ENERGY, rtc,
                hw.RecordingBuzzer(lambda: loop.now), hal.Button(), "power_on",
                lambda: pulses.append(loop.now))  # fmt: skip
    a = APP.App(board, h)
    a.boot()
    return a, h, pulses


async def script(a, h, out):
    for req in (("refill_begin", 0), ("refill_fill", 20_000_000, 500), ("refill_commit",)):
        out.append(await a.request(*req))
    h.button.press()  # acknowledges the commissioning alarms, through the button's flag
    await asyncio.sleep_ms(5)
    out.append(await a.request("program", DEMO, True))
    out.append(await a.request("patient_bolus"))
    out.append(await a.request("patient_bolus"))  # inside the lockout: refused


async def main(a, h, loop, out):
    app_task = asyncio.create_task(a.run())
    await script(a, h, out)
    while loop.now < RUN_MS:
        await asyncio.sleep_ms(20)
        wd = loop.watchdog
        assert wd is None or loop.now <= wd.deadline(), "the watchdog would have fired"
    app_task.cancel()
    await asyncio.sleep_ms(0)


def twin():
    # The same script on the simulated loop, all at time 0 (the real run takes a few ms).
    vp = vpump.VirtualPump(blocks=BLOCKS)
    vp.rtc.set_ms(W0)
    vp.boot()
    for req in (("refill_begin", 0), ("refill_fill", 20_000_000, 500), ("refill_commit",)):
        vp.submit(*req)
    vp.button.press()
    vp.run_until(0)
    vp.submit("program", DEMO, True)
    vp.submit("patient_bolus")
    vp.run_until(RUN_MS)
    return vp.delivered


def run():
    ref = twin()
    gc.collect()  # the twin's flash image, before the real run makes its own
    loop = ScaledLoop()
    a, h, pulses = build(loop)
    out = []
    asyncio.run(main(a, h, loop, out))
    asyncio.new_event_loop()
    assert out[:5] == [None, None, None, None, None], out
    assert out[5] is not None and out[5].code != 0, out  # the lockout refusal
    assert h.wdt is not None and h.wdt.feeds >= 1, "the watchdog was never fed"
    assert not a.sup.alarms.active(), [x[1] for x in a.sup.alarms.active()]
    assert a.store.commits >= 5, a.store.commits
    # Against the simulated-loop twin: the same pulses, within the real clock's jitter.
    n = len([t for t in pulses if t <= RUN_MS - 60_000])
    m = len([t for t in ref if t <= RUN_MS - 60_000])
    print("pulses", n, "twin", m)
    assert n > 25, n
    assert abs(n - m) <= 2, (n, m)
    assert a.sup.undelivered_pulses == 0, a.sup.undelivered_pulses


run()
print("OK")
