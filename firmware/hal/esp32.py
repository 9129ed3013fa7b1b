# The ESP32-family hardware layer (classic ESP32, S3, C3/C6): docs/hardware.md over machine, esp32
# and asyncio. Pins and timings come from the board module; boards/<name>/board.py builds it.
"""What Hal(board) reads from the board module:

    PIN_STEP PIN_DIR PIN_EN EN_ACTIVE DIR_FORWARD     stepper driver outputs (EN_ACTIVE: 0 or 1)
    USTEPS_PER_PULSE STEP_HIGH_US STEP_PERIOD_US      one pulse's STEP burst
    EN_SETTLE_US HOLD_US                              driver on before / after the burst
    PIN_FAULT FAULT_ACTIVE FAULT_PULL_UP              driver fault input, or PIN_FAULT = None
    PIN_ENDSTOP ENDSTOP_ACTIVE ENDSTOP_PULL_UP        plunger end stop, or None
    PIN_ENCODER ENCODER_EDGES_PER_PULSE ENCODER_TOLERANCE ENCODER_PULL_UP   optional, or None
    PIN_BUZZER BUZZER_HZ                              passive piezo on PWM
    PIN_BUTTON BUTTON_PULL_UP BUTTON_DEBOUNCE_MS      push button to GND (falling edge)
    PIN_BATTERY ADC_CAL BATTERY_PLAUSIBLE_MV          cell divider on an ADC1 pin
    DATA_PREFIX                                       the pump's folder on the littlefs root

Small integers: the ESP32's small ints end at 2^30 - 1. Everything on the pulse and interrupt
paths stays below it (tick values, burst durations, edge counts, ADC sums of up to 300
readings). Two values cannot: the monotonic clock passes 2^30 ms after 12.4 days of uptime and
the wall clock is always beyond it (ms since 1970), so from then on now_ms() returns a long
integer, allocated on the heap. Neither is read inside an interrupt handler.
"""

import asyncio
import os
import time

import esp32
import machine

from pump.compat import const

# A one-shot timer is armed for at most this long and re-armed for the rest: the period stays a
# small int on every chip, and a far deadline is still re-checked every ten minutes.
_MAX_ARM_MS = const(600_000)
_RMT_HZ = const(1_000_000)  # RMT resolution: burst durations are in microseconds
_DUTY_HALF = const(32_768)  # a square wave: the loudest tone from a passive piezo
_MIN_VALID_YEAR = const(2024)  # an RTC reading before this was never set (it starts at 2000)
_DAY_S = const(86_400)


class Aio:
    """The asyncio names the application uses (docs/hardware.md, `aio`). MicroPython's
    create_task takes no name; the name only serves the simulated loop's fault injection."""

    def __init__(self):
        self.ThreadSafeFlag = asyncio.ThreadSafeFlag

    def create_task(self, coro, name=None):
        return asyncio.create_task(coro)

    def sleep_ms(self, ms):
        return asyncio.sleep_ms(ms)


class _Alarm:
    """One virtual one-shot machine.Timer that sets one flag when a wait's time is up. The
    timer's callback is soft (scheduled), runs between bytecodes and re-arms itself for the rest
    of a long wait from the remaining duration alone: it never reads the extended clock, whose
    two fields it could otherwise see half updated."""

    def __init__(self, flag):
        self.flag = flag
        self.timer = machine.Timer(-1)
        self.left_ms = 0  # still to wait after the current arming
        self.armed = False
        self._cb = self._expired  # bound once, not at every arming

    def arm(self, d_ms):
        self.armed = True
        self.left_ms = d_ms
        self._next()

    def _next(self):
        d = self.left_ms
        if d > _MAX_ARM_MS:
            d = _MAX_ARM_MS
        self.left_ms -= d
        self.timer.init(mode=machine.Timer.ONE_SHOT, period=d, callback=self._cb)

    def _expired(self, _timer):
        if not self.armed:
            return  # disarmed after the callback was already scheduled
        if self.left_ms > 0:
            self._next()
        else:
            self.armed = False
            self.flag.set()

    def disarm(self):
        self.armed = False
        self.timer.deinit()


class Clock:
    """Milliseconds since boot, extended past time.ticks_ms's wrap (2^30 ms on the ESP32).
    Exact as long as now_ms() runs at least once every 2^29 ms (6.2 days); the application's
    watchdog task calls it every few seconds. `ticks` is the time module or a stand-in."""

    def __init__(self, ticks=time):
        self._ticks = ticks
        self._last = ticks.ticks_ms()
        self._ms = self._last  # ticks start at 0 at boot and cannot have wrapped yet
        self._alarms = {}

    def now_ms(self):
        t = self._ticks.ticks_ms()
        self._ms += self._ticks.ticks_diff(t, self._last)
        self._last = t
        return self._ms

    async def wait_until(self, t_ms, flag):
        """Return once now_ms() >= t_ms, or as soon as `flag` is set (the flag is then
        cleared, as when the simulated loop's wait ends). One timer per flag, made at its first
        wait."""
        d = t_ms - self.now_ms()
        if d <= 0:
            flag.clear()  # the caller runs now anyway: a wake already pending is served too
            return
        alarm = self._alarms.get(flag)
        if alarm is None:
            alarm = self._alarms[flag] = _Alarm(flag)
        alarm.arm(d)
        try:
            await flag.wait()
        finally:
            alarm.disarm()


def days_from_civil(y, m, d):
    """Days since 1970-01-01 of a proleptic Gregorian date (integers only)."""
    if m <= 2:
        y -= 1
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (m - 3 if m > 2 else m + 9) + 2) // 5 + d - 1
    return era * 146_097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719_468


def civil_from_days(z):
    """(year, month, day) of a day number since 1970-01-01."""
    z += 719_468
    era = z // 146_097
    doe = z - era * 146_097
    yoe = (doe - doe // 1460 + doe // 36_524 - doe // 146_096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + 3 if mp < 10 else mp - 9
    return yoe + era * 400 + (1 if m <= 2 else 0), m, d


class Rtc:
    """The wall clock (local time) in ms since 1970 over machine.RTC, which keeps counting
    through resets but starts again from 2000-01-01 at power-on: a reading before
    _MIN_VALID_YEAR is a clock that was never set since, and reads as None."""

    def __init__(self, rtc=None):
        self._rtc = machine.RTC() if rtc is None else rtc

    def now_ms(self):
        y, mo, d, _wd, h, mi, s, us = self._rtc.datetime()
        if y < _MIN_VALID_YEAR:
            return None
        return (days_from_civil(y, mo, d) * _DAY_S + h * 3600 + mi * 60 + s) * 1000 + us // 1000

    def set_ms(self, wall_ms):
        days, ms = divmod(wall_ms, _DAY_S * 1000)
        y, mo, d = civil_from_days(days)
        s = ms // 1000
        # The weekday field counts from Monday; 1970-01-01 was a Thursday.
        self._rtc.datetime((y, mo, d, (days + 3) % 7, s // 3600, s // 60 % 60, s % 60,
                            ms % 1000 * 1000))  # fmt: skip


def _input(pin, pull_up):
    return machine.Pin(pin, machine.Pin.IN, machine.Pin.PULL_UP if pull_up else -1)


class Motor:
    """The stepper driver. pulse() sends one burst of USTEPS_PER_PULSE STEP edges through the
    RMT peripheral and waits for it: the only time the event loop is blocked by the motor.

    Budget per pulse: EN_SETTLE_US + USTEPS_PER_PULSE * STEP_PERIOD_US + HOLD_US, plus some
    0.2 ms of Python; on the reference boards 1 ms + 16 x 250 us + 2 ms = 7 ms (busy_us()).
    The driver is off between pulses (the rotor rests on a full-step detent, see the board
    file), and whatever happens during a pulse, EN is driven off before pulse() returns."""

    def __init__(self, b):
        self._en_off = 1 - b.EN_ACTIVE
        self._en_on = b.EN_ACTIVE
        self._en = machine.Pin(b.PIN_EN, machine.Pin.OUT, value=self._en_off)
        self._dir = machine.Pin(b.PIN_DIR, machine.Pin.OUT, value=b.DIR_FORWARD)
        self._dir_fwd = b.DIR_FORWARD
        self._rmt = esp32.RMT(pin=machine.Pin(b.PIN_STEP, machine.Pin.OUT, value=0),
                              resolution_hz=_RMT_HZ, idle_level=False)  # fmt: skip
        n = b.USTEPS_PER_PULSE
        high = b.STEP_HIGH_US
        # (high, low) per microstep, made once: write_pulses then allocates nothing per pulse.
        self._burst = (high, b.STEP_PERIOD_US - high) * n
        self._burst_ms = (n * b.STEP_PERIOD_US + 999) // 1000
        self._settle_us = b.EN_SETTLE_US
        self._hold_us = b.HOLD_US
        self._fault = None if b.PIN_FAULT is None else _input(b.PIN_FAULT, b.FAULT_PULL_UP)
        self._fault_active = b.FAULT_ACTIVE
        self._end = None if b.PIN_ENDSTOP is None else _input(b.PIN_ENDSTOP, b.ENDSTOP_PULL_UP)
        self._end_active = b.ENDSTOP_ACTIVE
        self._edges = 0
        self._want_edges = 0
        self._edge_tol = 0
        if b.PIN_ENCODER is not None:
            if b.ENCODER_EDGES_PER_PULSE < 1:
                # An encoder that expects no edges would confirm every pulse: refuse to run
                # rather than believe a jammed motor.
                raise ValueError("board.py fits an encoder but sets no ENCODER_EDGES_PER_PULSE")
            self._want_edges = b.ENCODER_EDGES_PER_PULSE
            self._edge_tol = b.ENCODER_TOLERANCE
            self._enc = _input(b.PIN_ENCODER, b.ENCODER_PULL_UP)
            self._on_edge = self._edge  # bound once, outside the interrupt
            both = machine.Pin.IRQ_RISING | machine.Pin.IRQ_FALLING
            self._enc.irq(handler=self._on_edge, trigger=both, hard=True)
        self.last_error = None  # why the last unconfirmed pulse failed: for the log and tests
        self.busy_us = b.EN_SETTLE_US + n * b.STEP_PERIOD_US + b.HOLD_US

    def _edge(self, _pin):
        self._edges += 1

    def fault(self):
        return self._fault is not None and self._fault.value() == self._fault_active

    def at_end(self):
        return self._end is not None and self._end.value() == self._end_active

    def pulse(self):
        """One pulse moved and confirmed: no driver fault, the end stop not reached, the RMT
        burst finished, and (with an encoder) at least the expected edges counted less the
        tolerance. More edges than expected still mean it moved."""
        if self.fault():
            self.last_error = "driver_fault"
            return False
        if self.at_end():
            self.last_error = "end_stop"
            return False
        self._edges = 0
        self._dir.value(self._dir_fwd)
        self._en.value(self._en_on)
        try:
            time.sleep_us(self._settle_us)
            self._rmt.write_pulses(self._burst, True)
            if not self._rmt.wait_done(timeout=self._burst_ms + 2):
                self._rmt.active(False)
                self.last_error = "rmt_timeout"
                return False
            time.sleep_us(self._hold_us)
        finally:
            self._en.value(self._en_off)
        # A fault or the end stop during the burst: the whole pulse cannot be confirmed.
        if self.fault():
            self.last_error = "driver_fault"
            return False
        if self.at_end():
            self.last_error = "end_stop"
            return False
        if self._want_edges and self._edges < self._want_edges - self._edge_tol:
            self.last_error = "encoder"
            return False
        self.last_error = None
        return True

    def disable(self):
        self._en.value(self._en_off)


class Battery:
    """The cell through its divider on an ADC1 pin (ADC2 is taken by the radio), 11 dB range
    (about 150-2450 mV at the pin), readings in calibrated microvolts."""

    def __init__(self, pin):
        self._adc = machine.ADC(machine.Pin(pin), atten=machine.ADC.ATTN_11DB)

    def sample(self, count):
        total = 0
        for _ in range(count):
            total += self._adc.read_uv()
        return total, count


class Buzzer:
    """A passive piezo on PWM: a square wave while on, duty 0 while off."""

    def __init__(self, pin, freq_hz):
        self._pwm = machine.PWM(machine.Pin(pin), freq=freq_hz, duty_u16=0)
        self.on = False

    def set(self, on):
        self.on = bool(on)
        self._pwm.duty_u16(_DUTY_HALF if self.on else 0)


class Button:
    """A push button to GND. The hard interrupt handler only reads the tick counter, counts and
    sets the one flag: it allocates nothing. Edges within the debounce time of the last
    accepted press are contact bounce and are dropped in the handler."""

    def __init__(self, pin, pull_up, debounce_ms, ticks=time):
        self._pin = _input(pin, pull_up)
        self._ticks = ticks
        self._debounce_ms = debounce_ms
        self._last = ticks.ticks_add(ticks.ticks_ms(), -debounce_ms)
        self._flag = None
        self.presses = 0
        self._handler = self._irq  # a bound method made here, not in the interrupt

    def attach(self, flag):
        self._flag = flag
        self._pin.irq(handler=self._handler, trigger=machine.Pin.IRQ_FALLING, hard=True)

    def _irq(self, _pin):
        t = self._ticks.ticks_ms()
        if self._ticks.ticks_diff(t, self._last) < self._debounce_ms:
            return
        self._last = t
        self.presses += 1
        flag = self._flag
        if flag is not None:
            flag.set()


class Fs:
    """The pump's files under `prefix` on the board's littlefs root: the application's "/state"
    is prefix + "/state". Made if missing; nothing outside it is touched."""

    def __init__(self, prefix="/data"):
        self.prefix = prefix
        path = ""
        for part in prefix.split("/"):
            if part:
                path += "/" + part
                try:
                    os.stat(path)
                except OSError:
                    os.mkdir(path)

    def open(self, path, mode):
        return open(self.prefix + path, mode)

    def rename(self, src, dst):
        os.rename(self.prefix + src, self.prefix + dst)

    def remove(self, path):
        os.remove(self.prefix + path)

    def listdir(self, path="/"):
        return os.listdir(self.prefix + path.rstrip("/"))

    def mkdir(self, path):
        os.mkdir(self.prefix + path)

    def stat(self, path):
        return os.stat(self.prefix + path)[6]


def reset_causes():
    """machine.reset_cause() values by name. On the ESP32 port (MicroPython 1.29,
    ports/esp32/modmachine.c) a brownout reads as PWRON_RESET and a panic or machine.reset()
    as HARD_RESET; "brownout" itself is never reported, only the pump's own marker tells an
    intended reset apart."""
    return {
        machine.PWRON_RESET: "power_on",
        machine.HARD_RESET: "hard",
        machine.WDT_RESET: "watchdog",
        machine.DEEPSLEEP_RESET: "deepsleep",
        machine.SOFT_RESET: "soft",
    }


class Hal:
    """Everything the application gets from an ESP32 board (docs/hardware.md)."""

    def __init__(self, b, ticks=time):
        self.board = b
        self.aio = Aio()
        self.clock = Clock(ticks)
        self.rtc = Rtc()
        self.motor = Motor(b)
        self.motor.disable()
        self.battery = Battery(b.PIN_BATTERY)
        self.buzzer = Buzzer(b.PIN_BUZZER, b.BUZZER_HZ)
        self.button = Button(b.PIN_BUTTON, b.BUTTON_PULL_UP, b.BUTTON_DEBOUNCE_MS, ticks)
        self.fs = Fs(b.DATA_PREFIX)
        self._causes = reset_causes()
        self.wdt = None

    def reset_cause(self):
        return self._causes.get(machine.reset_cause(), "unknown")

    def self_test(self):
        """Problems found at boot: a driver reporting a fault, and a battery reading outside
        what the cell can show (a broken divider or ADC)."""
        problems = []
        if self.motor.fault():
            problems.append("driver_fault")
        lo, hi = self.board.BATTERY_PLAUSIBLE_MV
        total, n = self.battery.sample(4)
        mv = self.board.ADC_CAL.mv(total, n)
        if not lo <= mv <= hi:
            problems.append("battery_adc")
        return problems

    def watchdog(self, timeout_ms):
        # machine.WDT on the ESP32 is the ESP-IDF task watchdog, in ms since MicroPython 1.21;
        # once started it cannot be stopped, only fed or given another timeout.
        self.wdt = machine.WDT(id=0, timeout=timeout_ms)
        return self.wdt

    def ble_api(self):
        """MicroPython's BLE object and UUID class, for firmware/radio.py (which never imports
        the bluetooth module itself)."""
        import bluetooth

        return bluetooth.BLE(), bluetooth.UUID

    def random(self, n):
        """n bytes from the ESP32's hardware random number generator (radio noise)."""
        return os.urandom(n)

    def reboot(self):
        """A hard reset (read back as "hard"): write the reset marker first."""
        self.motor.disable()
        machine.reset()
