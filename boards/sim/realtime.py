# Runs the virtual pump in step with a real asyncio loop (CPython), so that a real BLE stack
# (Bumble, on the same loop) and the pump's radio meet in real time.
"""The virtual pump's own loop (boards/sim/vloop.py) keeps simulated time; drive() advances it
to match the asyncio clock times `accel`, a few milliseconds at a time, and yields to asyncio in
between: Bumble's callbacks (the pump's BLE interrupts) run there, and only there, so they never
interleave with a step of the pump."""

import asyncio

STEP_MS = 5


async def drive(vp, accel=1, until_ms=None, step_ms=STEP_MS):
    """Run vp (a VirtualPump whose loop was made with accel 0) until its clock reaches until_ms
    (forever if None), accel simulated ms per real ms: a number, or a function read at every
    step (a change takes effect from that moment on, without a jump)."""
    if vp.loop.accel:
        raise ValueError("the virtual pump's own pacing must be off (accel 0) under drive()")
    pace = accel if callable(accel) else (lambda: accel)
    aloop = asyncio.get_running_loop()
    real0 = aloop.time()
    sim0 = vp.loop.now
    cur = pace()
    while until_ms is None or vp.loop.now < until_ms:
        if pace() != cur:
            real0, sim0, cur = aloop.time(), vp.loop.now, pace()
        target = sim0 + int((aloop.time() - real0) * 1000 * cur)
        if until_ms is not None and target > until_ms:
            target = until_ms
        if target > vp.loop.now:
            vp.run_until(target)
        await asyncio.sleep(step_ms / 1000)
