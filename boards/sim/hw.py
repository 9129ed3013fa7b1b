# Simulated hardware of the sim board: a mechanism that can stall, a buzzer that records, and a
# cell whose ADC readings carry noise and motor-load sag. Used by the tests and the virtual pump.


class Mechanism:
    """Motor + feedback. pulse() moves one pulse and says whether the steps were done.

    fail_next(n) makes the next n pulses fail (a stall or occlusion); jam() fails all of them
    until free() is called.
    """

    def __init__(self):
        self.attempts = 0
        self.done = 0
        self._fail = 0
        self._jammed = False

    def fail_next(self, n):
        self._fail += n

    def jam(self):
        self._jammed = True

    def free(self):
        self._jammed = False
        self._fail = 0

    def _stalls(self):
        # Counts the attempt; True if the motor does not move this time (jammed, or one of the
        # pulses fail_next() asked for).
        self.attempts += 1
        if self._jammed:
            return True
        if self._fail:
            self._fail -= 1
            return True
        return False

    def pulse(self):
        if self._stalls():
            return False
        self.done += 1
        return True


class RecordingBuzzer:
    """Records (ms, on) at every change; the shell's clock is read through now()."""

    def __init__(self, clock):
        self.clock = clock
        self.changes = []
        self.on = False

    def set(self, on):
        on = bool(on)
        if on != self.on:
            self.on = on
            self.changes.append((self.clock(), on))

    def tones(self, since=0, until=None):
        """[(start_ms, length_ms)] of every finished tone starting in [since, until)."""
        return tones(self.changes, since, until)


def tones(changes, since=0, until=None):
    """[(start_ms, length_ms)] of the finished tones in (ms, on) changes that start in
    [since, until) (until None: no end)."""
    out = []
    start = None
    for t, on in changes:
        if on:
            start = t
        elif start is not None:
            if since <= start and (until is None or start < until):
                out.append((start, t - start))
            start = None
    return out


class Lcg:
    """A tiny deterministic random source, identical on CPython and MicroPython."""

    def __init__(self, seed):
        self.x = seed & 0x7FFFFFFF

    def next(self):
        self.x = (self.x * 1103515245 + 12345) & 0x7FFFFFFF
        return self.x

    def uniform(self, lo, hi):
        """An int in [lo, hi]."""
        return lo + self.next() % (hi - lo + 1)

    def noise(self, spread):
        """A roughly normal int with standard deviation about spread (sum of 12 uniforms)."""
        s = 0
        for _ in range(12):
            s += self.next() % 1001
        return (s - 6000) * spread // 1000


class SimCell:
    """The true cell behind the ADC: its charge used, its open-circuit voltage from the board's
    curve, its internal resistance under motor load, and ADC noise.

    The truth may differ from the firmware's charge model by error_pct (a systematic error the
    monitor must tolerate).
    """

    def __init__(self, cell, adc_cal, seed=1, noise_uv=8_000, error_pct=0):
        self.cell = cell
        self.adc_cal = adc_cal
        self.rng = Lcg(seed)
        self.noise_uv = noise_uv  # per single reading, at the ADC pin
        self.error_pct = error_pct
        self.used_nc = 0

    def draw(self, nc):
        """Charge the firmware's model counts; the truth differs by error_pct."""
        self.used_nc += nc * (100 + self.error_pct) // 100

    def dod_ppm(self):
        cap = self.cell.capacity_uah * 3_600_000
        d = self.used_nc * 1_000_000 // cap
        return d if d < 1_000_000 else 1_000_000

    def terminal_mv(self, load_ma=0):
        return self.cell.ocv_mv(self.dod_ppm()) - load_ma * self.cell.r_mohm // 1000

    def read_uv(self, load_ma=0):
        """One ADC reading in uV at the pin (what machine.ADC.read_uv() returns)."""
        mv = self.terminal_mv(load_ma)
        # Invert the board's calibration to find the pin voltage, then add noise.
        a = self.adc_cal
        uv = (mv - a.offset_mv) * a.den * 1000 // a.num
        return uv + self.rng.noise(self.noise_uv)

    def sample(self, count, load_ma=0):
        """(sum of count readings, count), as the shell hands them to the monitor."""
        s = 0
        for _ in range(count):
            s += self.read_uv(load_ma)
        return s, count
