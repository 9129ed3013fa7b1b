# The ESP32 hardware layer (firmware/hal/esp32.py) under MicroPython on strict fakes of machine and
# esp32 (host_tests/fakes/), with real asyncio and real littlefs; then the whole pump on it.
# req: SR-13, SR-20, SR-21, SR-33

import sys

sys.path.insert(0, __file__.rsplit("/", 2)[0] + "/fakes")  # before machine/esp32 are imported

import asyncio  # noqa: E402
import os  # noqa: E402

import esp32  # noqa: E402
import machine  # noqa: E402
import micropython  # noqa: E402
import vfs  # noqa: E402

import main as MAIN  # noqa: E402
from boards.esp32_c3 import board as c3  # noqa: E402
from boards.esp32_devkitc import board as devkitc  # noqa: E402
from boards.esp32_s3 import board as s3  # noqa: E402
from hal import esp32 as H  # noqa: E402

PERIOD = 1 << 30  # time.ticks_ms wraps here on the ESP32 (a 31-bit small int)
MOUNT = "/pumpfs"
W0_MS = (H.days_from_civil(2026, 11, 26) * 86_400 + 6 * 3600) * 1000  # a Thursday, 06:00


class Ticks:
    """time.ticks_* with the ESP32's period, driven by the test."""

    def __init__(self, start):
        self.t = start % PERIOD

    def ticks_ms(self):
        return self.t

    def ticks_add(self, t, d):
        return (t + d) % PERIOD

    def ticks_diff(self, a, b):
        return (a - b + PERIOD // 2) % PERIOD - PERIOD // 2

    def advance(self, ms):
        self.t = (self.t + ms) % PERIOD


class RamDisk:
    """A RAM block device for vfs.VfsLfs2 (erase happens in writeblocks)."""

    def __init__(self, blocks, size=4096):
        self.size = size
        self.data = bytearray(blocks * size)

    def readblocks(self, n, buf, off=0):
        a = n * self.size + off
        buf[:] = self.data[a : a + len(buf)]

    def writeblocks(self, n, buf, off=None):
        a = n * self.size + (off or 0)
        self.data[a : a + len(buf)] = buf

    def ioctl(self, op, arg):
        if op == 4:
            return len(self.data) // self.size
        if op == 5:
            return self.size
        return 0


def mount_fresh():
    try:
        vfs.umount(MOUNT)
    except OSError:
        pass
    disk = RamDisk(64)
    vfs.VfsLfs2.mkfs(disk)
    vfs.mount(vfs.VfsLfs2(disk), MOUNT)


def variant(base, **over):
    """The board module's data as a class, with some values replaced (a board variant)."""

    class B:
        pass

    for k in dir(base):
        if not k.startswith("__"):
            setattr(B, k, getattr(base, k))
    B.DATA_PREFIX = MOUNT + "/data"  # never the host's /data
    for k, v in over.items():
        setattr(B, k, v)
    return B


def rig_idle(b):
    # The rig at rest: nFAULT/DIAG inactive, the normally-closed end stop closed (pin low).
    machine._reset()
    esp32._reset()


def settle_inputs(b):
    if b.PIN_FAULT is not None:
        machine._pins[b.PIN_FAULT]._drive(1 - b.FAULT_ACTIVE)
    if b.PIN_ENDSTOP is not None:
        machine._pins[b.PIN_ENDSTOP]._drive(1 - b.ENDSTOP_ACTIVE)


def make(b, ticks=None):
    rig_idle(b)
    h = H.Hal(b, ticks or Ticks(1000))
    settle_inputs(b)
    machine._adcs[b.PIN_BATTERY]._uv = 1_900_000  # 3.8 V behind the 1:1 divider
    return h


# ---- the clock ----


def test_ticks_extend_past_the_wrap():
    t = Ticks(PERIOD - 5_000)
    c = H.Clock(t)
    assert c.now_ms() == PERIOD - 5_000
    t.advance(3_000)
    assert c.now_ms() == PERIOD - 2_000
    t.advance(4_000)  # the tick counter wraps to 2000
    assert t.ticks_ms() == 2_000
    assert c.now_ms() == PERIOD + 2_000
    # Many wraps, each step under half the period: exact to the millisecond.
    step = PERIOD // 2 - 1
    for _ in range(40):
        t.advance(step)
        c.now_ms()
    assert c.now_ms() == PERIOD + 2_000 + 40 * step
    assert c.now_ms() > 20 * PERIOD


def armed(n_before):
    ts = [t for t in machine._timers[n_before:] if t._armed]
    return ts


async def _wait_cases():
    t = Ticks(10)
    c = H.Clock(t)
    flag = asyncio.ThreadSafeFlag()
    done = []

    async def waiter(deadline):
        await c.wait_until(deadline, flag)
        done.append(c.now_ms())

    # A near deadline: one one-shot timer for exactly the time left; it wakes the waiter.
    task = asyncio.create_task(waiter(c.now_ms() + 5_000))
    await asyncio.sleep_ms(0)
    (tm,) = armed(0)
    assert tm._mode == machine.Timer.ONE_SHOT and tm._period == 5_000 and tm._id == -1
    t.advance(5_000)
    tm._fire()
    await task
    assert done == [5_010] and not tm._armed

    # A far deadline: armed for the cap, re-armed by the callback alone (the waiter does not
    # wake), until the rest is done.
    start = c.now_ms()
    task = asyncio.create_task(waiter(start + 1_500_000))
    await asyncio.sleep_ms(0)
    periods = []
    while not done[1:]:
        assert tm._armed, "the far wait lost its timer"
        periods.append(tm._period)
        t.advance(tm._period)
        tm._fire()
        for _ in range(3):
            await asyncio.sleep_ms(0)
        if len(periods) < 3:
            assert len(done) == 1, "the waiter woke before its time"
    assert periods == [600_000, 600_000, 300_000], periods
    assert done[1] == start + 1_500_000 and not tm._armed

    # Another task sets the flag first: the wait ends early and its timer is disarmed; a
    # callback already scheduled when it was disarmed does nothing.
    task = asyncio.create_task(waiter(c.now_ms() + 60_000))
    await asyncio.sleep_ms(0)
    assert tm._armed
    inits = tm._inits
    flag.set()
    await task
    assert len(done) == 3 and done[2] == done[1] and not tm._armed
    tm._callback(tm)  # the late, scheduled callback
    assert flag.state == 0 and tm._inits == inits

    # A deadline already past: no timer at all, and a pending wake is served by this return.
    # A flag set before a wait with time to go: it returns at once.
    await c.wait_until(c.now_ms() - 1, flag)
    flag.set()
    await c.wait_until(c.now_ms(), flag)
    assert tm._inits == inits and flag.state == 0
    flag.set()
    await c.wait_until(c.now_ms() + 10_000, flag)
    assert flag.state == 0 and not tm._armed
    assert len(c._alarms) == 1  # one timer per flag, made once


def test_wait_until_with_the_timer():
    machine._reset()
    asyncio.run(_wait_cases())
    asyncio.new_event_loop()


# ---- the RTC ----


def test_rtc():
    machine._reset()
    r = H.Rtc()
    assert r.now_ms() is None  # at its power-on epoch, 2000-01-01
    r.set_ms(W0_MS + 12_345)
    assert machine._state["rtc"] == (2026, 11, 26, 3, 6, 0, 12, 345_000)
    assert r.now_ms() == W0_MS + 12_345
    last = W0_MS - 6 * 3_600_000 + 86_399_999  # the day's last millisecond
    r.set_ms(last)
    assert machine._state["rtc"] == (2026, 11, 26, 3, 23, 59, 59, 999_000) and r.now_ms() == last
    r.set_ms(H.days_from_civil(2028, 2, 29) * 86_400_000)
    assert machine._state["rtc"][:4] == (2028, 2, 29, 1)  # a Tuesday


# ---- the motor ----


def pulse_sizes(b):
    hi = b.STEP_HIGH_US
    return (hi, b.STEP_PERIOD_US - hi) * b.USTEPS_PER_PULSE


def test_motor_pulse_outcomes():
    b = variant(devkitc)
    h = make(b)
    m = h.motor
    rmt = esp32._rmts[0]
    en = machine._pins[b.PIN_EN]
    fault = machine._pins[b.PIN_FAULT]
    end = machine._pins[b.PIN_ENDSTOP]
    seen = []

    def during(durations):
        seen.append((en.value(), machine._pins[b.PIN_DIR].value()))

    rmt._on_write = during
    assert rmt._resolution_hz == 1_000_000 and rmt._idle is False
    assert rmt._pin._id == b.PIN_STEP
    assert en.value() == 1 - b.EN_ACTIVE  # off from the start

    assert m.pulse() is True and m.last_error is None
    assert rmt._writes == 1 and rmt._durations == pulse_sizes(b) and rmt._level is True
    assert len(rmt._durations) == 32 and sum(rmt._durations) == 16 * 250
    assert seen == [(b.EN_ACTIVE, b.DIR_FORWARD)]  # enabled and pushing during the burst
    assert en.value() == 1 - b.EN_ACTIVE  # and off again after it
    assert m.busy_us == 7_000

    # A driver fault before the pulse: nothing moves.
    fault._drive(b.FAULT_ACTIVE)
    assert m.pulse() is False and m.last_error == "driver_fault" and rmt._writes == 1
    fault._drive(1 - b.FAULT_ACTIVE)
    # A fault raised during the burst: not confirmed, driver off.
    rmt._on_write = lambda d: fault._drive(b.FAULT_ACTIVE)
    assert m.pulse() is False and m.last_error == "driver_fault" and rmt._writes == 2
    assert en.value() == 1 - b.EN_ACTIVE
    fault._drive(1 - b.FAULT_ACTIVE)
    # The end stop, already reached or reached during the burst.
    rmt._on_write = None
    end._drive(b.ENDSTOP_ACTIVE)
    assert m.pulse() is False and m.last_error == "end_stop" and rmt._writes == 2
    end._drive(1 - b.ENDSTOP_ACTIVE)
    rmt._on_write = lambda d: end._drive(b.ENDSTOP_ACTIVE)
    assert m.pulse() is False and m.last_error == "end_stop" and rmt._writes == 3
    end._drive(1 - b.ENDSTOP_ACTIVE)
    rmt._on_write = None
    # The RMT never finishes: stopped, not confirmed, driver off.
    rmt._stuck = True
    assert m.pulse() is False and m.last_error == "rmt_timeout" and not rmt.active()
    assert en.value() == 1 - b.EN_ACTIVE
    rmt._stuck = False

    # Whatever goes wrong inside a pulse, the driver ends up off.
    def boom(d):
        raise OSError(5)

    rmt._on_write = boom
    try:
        m.pulse()
        raise AssertionError("the RMT error was swallowed")
    except OSError:
        pass
    assert en.value() == 1 - b.EN_ACTIVE
    rmt._on_write = None
    assert m.pulse() is True
    en.value(b.EN_ACTIVE)
    m.disable()
    assert en.value() == 1 - b.EN_ACTIVE


def test_a_boot_failure_sounds_until_the_next_try():
    # main.py's wait before it tries again: the high-priority pattern, not silence.
    class Clock:
        def __init__(self):
            self.ms = 0

        def sleep_ms(self, ms):
            self.ms += ms

    class Buzzer:
        def __init__(self, clock):
            self.clock = clock
            self.ons = []

        def set(self, on):
            if on:
                self.ons.append(self.clock.ms)

    class Hal:
        pass

    clock = Clock()
    h = Hal()
    h.buzzer = Buzzer(clock)
    real = MAIN.time
    MAIN.time = clock
    try:
        MAIN._sound_boot_failure(h)
    finally:
        MAIN.time = real
    assert clock.ms == MAIN.BOOT_RETRY_MS, clock.ms
    ons = h.buzzer.ons
    assert len(ons) == 5 * MAIN.BOOT_RETRY_MS // 10_000, ons
    assert ons[5] - ons[0] == 10_000 and ons[1] - ons[0] == 300, ons


def test_an_encoder_that_expects_no_edges_is_refused():
    # It would confirm every pulse of a jammed motor.
    b = variant(devkitc, PIN_ENCODER=39, ENCODER_EDGES_PER_PULSE=0, ENCODER_TOLERANCE=0)
    try:
        make(b)
    except ValueError as e:
        assert "ENCODER_EDGES_PER_PULSE" in str(e)
    else:
        raise AssertionError("a board with an encoder and no edges per pulse was accepted")


def test_motor_encoder_check():
    b = variant(devkitc, PIN_ENCODER=39, ENCODER_EDGES_PER_PULSE=4, ENCODER_TOLERANCE=1)
    h = make(b)
    m = h.motor
    rmt = esp32._rmts[0]
    enc = machine._pins[39]
    assert enc._hard and enc._trigger == machine.Pin.IRQ_RISING | machine.Pin.IRQ_FALLING
    moved = [0]

    def turn(d):
        for _ in range(moved[0]):
            enc._drive(1 - enc.value())

    rmt._on_write = turn
    for edges, ok in ((4, True), (3, True), (2, False), (0, False), (6, True)):
        moved[0] = edges
        assert m.pulse() is ok, (edges, m.last_error)
        assert m.last_error == (None if ok else "encoder")


def test_pulse_path_allocates_nothing():
    # The motor's share of the per-pulse path, as on the board (the fake RMT records without
    # allocating): 200 pulses under heap_lock.
    b = variant(devkitc, PIN_ENCODER=39, ENCODER_EDGES_PER_PULSE=4, ENCODER_TOLERANCE=0)
    m = make(b).motor
    enc = machine._pins[39]

    def turn(_d):
        # Four edges per pulse from the encoder's interrupt, inside the locked heap too.
        for _ in range(4):
            enc._drive(1 - enc.value())

    esp32._rmts[0]._on_write = turn
    ok = 0
    micropython.heap_lock()
    try:
        for _ in range(200):
            if m.pulse():
                ok += 1
    finally:
        micropython.heap_unlock()
    assert ok == 200 and esp32._rmts[0]._writes == 200


# ---- battery, buzzer, button ----


def test_battery_and_buzzer():
    b = variant(devkitc)
    h = make(b)
    adc = machine._adcs[b.PIN_BATTERY]
    assert adc._atten == machine.ADC.ATTN_11DB
    adc._uv = 1_912_345
    assert h.battery.sample(16) == (16 * 1_912_345, 16) and adc._reads == 16
    pwm = h.buzzer._pwm
    assert pwm._pin == b.PIN_BUZZER and pwm.freq() == b.BUZZER_HZ and pwm.duty_u16() == 0
    h.buzzer.set(True)
    assert pwm.duty_u16() == 32_768 and h.buzzer.on
    h.buzzer.set(0)
    assert pwm.duty_u16() == 0 and not h.buzzer.on


def test_button_handler_allocates_nothing_and_debounces():
    b = variant(devkitc)
    ticks = Ticks(500)
    h = make(b, ticks)
    pin = machine._pins[b.PIN_BUTTON]
    assert pin._pull == machine.Pin.PULL_UP and pin.value() == 1
    flag = asyncio.ThreadSafeFlag()
    h.button.attach(flag)
    assert pin._hard and pin._trigger == machine.Pin.IRQ_FALLING
    micropython.heap_lock()
    try:
        pin._drive(0)  # pressed: the hard interrupt runs here
        pin._drive(1)
        ticks.advance(10)
        pin._drive(0)  # a bounce 10 ms later
        pin._drive(1)
    finally:
        micropython.heap_unlock()
    assert h.button.presses == 1 and flag.state == 1
    flag.clear()
    ticks.advance(60)
    pin._drive(0)
    assert h.button.presses == 2 and flag.state == 1


# ---- reset cause, self test, watchdog ----


def test_reset_cause_self_test_watchdog():
    b = variant(devkitc)
    h = make(b)
    for value, name in (
        (machine.PWRON_RESET, "power_on"),
        (machine.HARD_RESET, "hard"),
        (machine.WDT_RESET, "watchdog"),
        (machine.DEEPSLEEP_RESET, "deepsleep"),
        (machine.SOFT_RESET, "soft"),
        (0, "unknown"),  # ESP_RST_UNKNOWN and SDIO read back as 0
    ):
        machine._state["cause"] = value
        assert h.reset_cause() == name, (value, h.reset_cause())
    assert h.self_test() == []
    machine._pins[b.PIN_FAULT]._drive(b.FAULT_ACTIVE)
    machine._adcs[b.PIN_BATTERY]._uv = 100_000  # 200 mV: the divider is open
    assert h.self_test() == ["driver_fault", "battery_adc"]
    w = h.watchdog(b.WDT_TIMEOUT_MS)
    assert machine._state["wdt"] is w and w._timeout == b.WDT_TIMEOUT_MS == 60_000
    w.feed()
    assert w._feeds == 1
    h.reboot()
    assert machine._state["resets"] == 1


def test_every_esp32_board_builds_its_hal():
    for base in (devkitc, s3, c3):
        b = variant(base)
        h = make(b)
        assert h.self_test() == [], base.NAME
        assert machine._pins[b.PIN_STEP] is esp32._rmts[0]._pin
        outputs = (b.PIN_STEP, b.PIN_DIR, b.PIN_EN)
        assert all(machine._pins[p]._mode == machine.Pin.OUT for p in outputs)
        assert h.motor.pulse() is True, (base.NAME, h.motor.last_error)
        assert h.motor.busy_us <= 10_000  # the event loop's longest motor stall


# ---- the filesystem ----


def test_fs_on_littlefs():
    mount_fresh()
    fs = H.Fs(MOUNT + "/data")
    assert "data" in os.listdir(MOUNT) and fs.listdir("/") == []
    fs.mkdir("/state")
    with fs.open("/state/x.tmp", "wb") as f:
        f.write(b"hello")
    fs.rename("/state/x.tmp", "/state/x")
    with fs.open("/state/x", "ab") as f:
        f.write(b" world")
    assert fs.stat("/state/x") == 11 and fs.listdir("/state") == ["x"]
    assert fs.listdir("/") == ["state"] and os.listdir(MOUNT + "/data/state") == ["x"]
    with fs.open("/state/x", "rb") as f:
        assert f.read() == b"hello world"
    fs.remove("/state/x")
    try:
        fs.stat("/state/x")
        raise AssertionError("a removed file is still there")
    except OSError:
        pass
    H.Fs(MOUNT + "/data")  # made already: nothing happens
    assert fs.listdir("/") == ["state"]


# ---- the whole pump on the ESP32 layer, through main.run ----


class Driver:
    """Runs the fake timers as time passes: each step jumps the ticks to the next armed timer
    and fires it, as the board's timer would."""

    def __init__(self, ticks):
        self.ticks = ticks
        self.left = {}
        self.seen = {}

    def step(self):
        armed = [t for t in machine._timers if t._armed]
        for t in armed:
            if self.seen.get(t) != t._inits:
                self.seen[t] = t._inits
                self.left[t] = t._period
        if not armed:
            return False
        first = armed[0]
        for t in armed:
            if self.left[t] < self.left[first]:
                first = t
        d = self.left[first]
        self.ticks.advance(d)
        for t in armed:
            self.left[t] -= d
        first._fire()
        return True


def app_module(script):
    import app as APP

    class App(APP.App):
        async def run(self):
            t = asyncio.create_task(script(self))
            try:
                await APP.App.run(self)
            finally:
                t.cancel()

    class Module:
        pass

    Module.App = App
    return Module


async def prime_then_break(a):
    drv = Driver(a.clock._ticks)
    rmt = esp32._rmts[0]
    assert a.submit("prime", 5_000) is None
    while rmt._writes < 3:
        await asyncio.sleep_ms(2)
        drv.step()

    def broken(d):
        raise OSError(19)

    a.pulses_before_failure = rmt._writes
    rmt._on_write = broken  # the next pulse's RMT call fails inside the dosing task
    for _ in range(200):
        await asyncio.sleep_ms(2)
        drv.step()
    raise AssertionError("the dosing task's crash never ended the run")


def test_pump_runs_crashes_and_restarts_with_its_marker():
    mount_fresh()
    b = variant(devkitc, WDT_TIMEOUT_MS=600)  # the supervisor wakes every 200 ms
    h = make(b)
    h.rtc.set_ms(W0_MS)
    seen = []
    mod = app_module(prime_then_break)
    mod.App.boot = lambda self, _boot=mod.App.boot: seen.append(self) or _boot(self)
    reason = MAIN.run(b, mod, h)
    assert reason == "crash:OSError", reason
    rmt = esp32._rmts[0]
    n = seen[0].pulses_before_failure
    assert n >= 3 and rmt._writes == n + 1 and rmt._durations == pulse_sizes(b)
    assert machine._pins[b.PIN_EN].value() == 1 - b.EN_ACTIVE
    assert machine._state["wdt"]._timeout == 600 and machine._state["wdt"]._feeds >= 1
    with open(MOUNT + "/data/state/reset", "rb") as f:
        assert f.read() == b"crash:OSError"
    # main() would now reset the board (read back as a hard reset); the next boot finds the
    # marker and the state saved before the crash.
    import app as APP

    h2 = make(b)
    machine._state["cause"] = machine.HARD_RESET
    h2.rtc.set_ms(W0_MS + 60_000)  # the RTC ran on through the reset (the fake's does not)
    a2 = APP.App(b, h2)
    boot = a2.boot()
    assert boot.cause == "intended:crash:OSError", boot.cause
    assert boot.source in ("a", "b"), boot.source
    assert a2.sup.engine.clock_set
    asyncio.new_event_loop()


def test_a_boot_failure_is_told_from_a_crash():
    mount_fresh()
    b = variant(devkitc)
    h = make(b)
    machine._pins[b.PIN_EN].value(b.EN_ACTIVE)

    class Broken:
        class App:
            def __init__(self, board, hal):
                self.store = None

            def boot(self):
                raise ValueError("no state")

    assert MAIN.run(b, Broken, h) == "boot_failed:ValueError"
    assert machine._pins[b.PIN_EN].value() == 1 - b.EN_ACTIVE
    assert os.listdir(MOUNT + "/data") == []  # nothing to write the marker with


def test_console_stop_keeps_the_board_in_the_repl():
    mount_fresh()
    b = variant(devkitc, WDT_TIMEOUT_MS=600)
    h = make(b)
    h.rtc.set_ms(W0_MS)

    async def interrupt(a):
        await asyncio.sleep_ms(5)
        raise KeyboardInterrupt

    reason = MAIN.run(b, app_module(interrupt), h)
    assert reason == MAIN.CONSOLE and machine._state["resets"] == 0
    assert machine._pins[b.PIN_EN].value() == 1 - b.EN_ACTIVE
    with open(MOUNT + "/data/state/reset", "rb") as f:
        assert f.read() == b"console"


def main():
    mount_fresh()  # before any Hal: its Fs must land on the RAM disk, never the host's root
    tests = [(k, v) for k, v in globals().items() if k.startswith("test_")]
    for name, fn in sorted(tests):
        fn()
        print(name, "ok")
    print("OK")


main()
