# A strict stand-in for the ESP32 port's `esp32` module (only esp32.RMT), for host tests of the
# ESP32 hardware layer. Names and signatures as micropython-esp32-stubs declares them.
"""Test controls: _rmts holds every RMT made; RMT._writes counts write_pulses calls and
_durations/_level keep the last one's arguments (kept without allocating, so the pulse path can
run under heap_lock); RMT._on_write, if set, is called with the durations of each write (a test
moves the mechanism or asserts a fault from there); RMT._stuck makes wait_done time out."""

_rmts = []


def _reset():
    del _rmts[:]


class RMT:
    PULSE_MAX = 32767

    def __init__(self, id=-1, *, pin, resolution_hz=None, clock_div=None, idle_level=False,
                 tx_carrier=None, num_symbols=48):  # fmt: skip
        if resolution_hz is None and clock_div is None:
            raise ValueError("fake esp32: give resolution_hz or clock_div")
        self._pin = pin
        self._resolution_hz = resolution_hz
        self._idle = idle_level
        self._num_symbols = num_symbols
        self._writes = 0
        self._durations = None
        self._level = None
        self._busy = False
        self._on_write = None
        self._stuck = False
        _rmts.append(self)

    def write_pulses(self, duration, data=True):
        for d in duration:
            if not 1 <= d <= RMT.PULSE_MAX:
                raise ValueError("fake esp32: pulse duration out of range")
        self._writes += 1
        self._durations = duration
        self._level = data
        self._busy = True
        if self._on_write is not None:
            self._on_write(duration)

    def wait_done(self, *, timeout=0):
        if self._stuck:
            return False
        self._busy = False
        return True

    def active(self, *value):
        if value and not value[0]:
            self._busy = False
        return self._busy

    def deinit(self):
        self._busy = False
