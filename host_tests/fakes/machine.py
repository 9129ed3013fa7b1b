# A strict stand-in for the ESP32 port's `machine` module, for host tests of firmware/hal/esp32.py.
# Only names the micropython-esp32-stubs declare, with their signatures (test_hal_fakes.py checks).
"""Test controls (underscore names, not part of the API): _reset() forgets every pin and
timer; _pins, _timers and _adcs hold what the code under test made; Pin._drive(level) changes an
input as the outside world would, calling its handler on a matching edge; Timer._fire() runs the
callback of an armed timer; _state holds the reset cause, the RTC reading and resets done."""

PWRON_RESET = 1
HARD_RESET = 2
WDT_RESET = 3
DEEPSLEEP_RESET = 4
SOFT_RESET = 5

_pins = {}  # pin number -> the last Pin made for it
_timers = []
_adcs = {}  # pin number -> ADC
_state = {"cause": PWRON_RESET, "resets": 0, "wdt": None, "rtc": (2000, 1, 1, 5, 0, 0, 0, 0)}


def _reset():
    _pins.clear()
    del _timers[:]
    _adcs.clear()
    _state["cause"] = PWRON_RESET
    _state["resets"] = 0
    _state["wdt"] = None
    _state["rtc"] = (2000, 1, 1, 5, 0, 0, 0, 0)


def _pin_id(p):
    return p._id if isinstance(p, Pin) else p


class Pin:
    IN = 1
    OUT = 3
    OPEN_DRAIN = 7
    PULL_DOWN = 1
    PULL_UP = 2
    IRQ_RISING = 1
    IRQ_FALLING = 2

    def __init__(self, id, mode=-1, pull=-1, *, value=None, drive=None, alt=None):
        self._id = id
        self._mode = None
        self._pull = None
        self._level = 0
        self._handler = None
        self._trigger = 0
        self._hard = False
        self._writes = 0
        _pins[id] = self
        self.init(mode, pull, value=value, drive=drive, alt=alt)

    def init(self, mode=-1, pull=-1, *, value=None, drive=None, alt=None):
        if mode != -1:
            self._mode = mode
        if pull != -1:
            self._pull = pull
            if pull == Pin.PULL_UP:
                self._level = 1
        if value is not None:
            self._level = 1 if value else 0

    def value(self, x=None):
        if x is None:
            return self._level
        if self._mode != Pin.OUT:
            raise OSError("fake machine: pin %d written while not an output" % self._id)
        self._level = 1 if x else 0
        self._writes += 1
        return None

    def on(self):
        self.value(1)

    def off(self):
        self.value(0)

    def irq(self, handler=None, trigger=IRQ_FALLING | IRQ_RISING, *, priority=1, wake=None,
            hard=False):  # fmt: skip
        self._handler = handler
        self._trigger = trigger
        self._hard = hard
        return None

    def _drive(self, level):
        """The outside world sets an input's level; an edge the irq asked for runs its handler."""
        old = self._level
        self._level = 1 if level else 0
        h = self._handler
        if h is None or old == self._level:
            return
        if (self._level and self._trigger & Pin.IRQ_RISING) or (
            not self._level and self._trigger & Pin.IRQ_FALLING
        ):
            h(self)


class ADC:
    ATTN_0DB = 0
    ATTN_2_5DB = 1
    ATTN_6DB = 2
    ATTN_11DB = 3

    def __init__(self, id, *, sample_ns=-1, atten=-1):
        self._id = _pin_id(id)
        self._atten = atten
        self._uv = 0
        self._reads = 0
        _adcs[self._id] = self

    def read_uv(self):
        self._reads += 1
        return self._uv


class PWM:
    def __init__(self, dest, *, freq=-1, duty_u16=-1, duty_ns=-1, invert=False):
        self._pin = _pin_id(dest)
        self._freq = freq
        self._duty = 0 if duty_u16 < 0 else duty_u16

    # -1 stands for "no argument": the stub's getter and setter overloads in one signature.
    def duty_u16(self, value=-1):
        if value == -1:
            return self._duty
        if not 0 <= value <= 65535:
            raise ValueError("fake machine: duty_u16 out of range")
        self._duty = value
        return None

    def freq(self, value=-1):
        if value == -1:
            return self._freq
        self._freq = value
        return None

    def deinit(self):
        self._duty = 0


class Timer:
    ONE_SHOT = 0
    PERIODIC = 1

    def __init__(self, id, *, mode=PERIODIC, period=None, freq=None, tick_hz=None,
                 callback=None, hard=None):  # fmt: skip
        self._id = id
        self._armed = False
        self._period = None
        self._mode = None
        self._callback = None
        self._inits = 0
        _timers.append(self)
        if period is not None or freq is not None:
            self.init(mode=mode, period=period, freq=freq, tick_hz=tick_hz, callback=callback,
                      hard=hard)  # fmt: skip

    def init(self, *, mode=PERIODIC, period=None, freq=None, tick_hz=None, callback=None,
             hard=None):  # fmt: skip
        if hard:
            raise ValueError("hard Timers are not implemented")  # as on the ESP32 port
        if period is None or period <= 0 or period >= 1 << 31:
            raise ValueError("fake machine: period must be 1..2^31-1 ms")
        self._mode = mode
        self._period = period
        self._callback = callback
        self._armed = True
        self._inits += 1

    def deinit(self):
        self._armed = False

    def _fire(self):
        """The period has passed: run the callback (as the scheduler would, soon after)."""
        if not self._armed:
            raise AssertionError("fake machine: timer %d fired while not armed" % self._id)
        if self._mode == Timer.ONE_SHOT:
            self._armed = False
        if self._callback is not None:
            self._callback(self)


class RTC:
    def __init__(self, id=0, **datetime):
        if datetime:
            self.datetime(datetime["datetime"])

    def datetime(self, datetimetuple=None):
        if datetimetuple is None:
            return _state["rtc"]
        if len(datetimetuple) != 8:
            raise ValueError("fake machine: RTC.datetime takes an 8-tuple")
        _state["rtc"] = tuple(datetimetuple)
        return None


class WDT:
    def __init__(self, *, id=0, timeout=5000):
        if timeout <= 0:
            raise ValueError("WDT timeout too short")
        self._timeout = timeout
        self._feeds = 0
        _state["wdt"] = self

    def feed(self):
        self._feeds += 1


def reset_cause():
    return _state["cause"]


def reset():
    _state["resets"] += 1
