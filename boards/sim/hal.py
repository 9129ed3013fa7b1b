# The sim board's hardware layer: the interfaces of docs/hardware.md over the simulated rig
# (mechanism, cell, buzzer, button, clocks, watchdog and a real littlefs volume on RAM flash).


class Clock:
    """Monotonic ms since this boot, on the event loop's simulated clock."""

    def __init__(self, loop):
        self.loop = loop
        self.boot_at = loop.now

    def now_ms(self):
        return self.loop.now - self.boot_at

    def wait_until(self, t_ms, flag):
        return self.loop.wait_until(t_ms + self.boot_at, flag)


class Rtc:
    """The real-time clock: it keeps running across resets (the implant's RTC is on the
    battery). wall = loop time + offset; None when it was never set or has been lost."""

    def __init__(self):
        self.loop = None
        self.offset = None

    def now_ms(self):
        if self.offset is None or self.loop is None:
            return None
        return self.loop.now + self.offset

    def set_ms(self, wall_ms):
        self.offset = wall_ms - self.loop.now

    def jump(self, delta_ms):
        """Fault injection: the RTC leaps (a glitch, a bad set)."""
        if self.offset is not None:
            self.offset += delta_ms

    def lose(self):
        self.offset = None


class Watchdog:
    """machine.WDT: once started it cannot be stopped; run() resets when it is not fed."""

    def __init__(self, loop, timeout_ms):
        self.loop = loop
        self.timeout_ms = timeout_ms
        self.fed_at = loop.now
        self.feeds = 0

    def feed(self):
        self.fed_at = self.loop.now
        self.feeds += 1

    def deadline(self):
        return self.fed_at + self.timeout_ms


class Motor:
    """The stepper driver over the simulated mechanism. Each pulse draws its charge from the
    cell and is reported to `delivered(t_ms, volume_nl)`, the rig's record."""

    def __init__(self, mech, cell, pulse_nc, on_pulse=None):
        self.mech = mech
        self.cell = cell
        self.pulse_nc = pulse_nc
        self.on_pulse = on_pulse
        self.enabled = False

    def pulse(self):
        self.enabled = True
        self.cell.draw(self.pulse_nc)
        ok = self.mech.pulse()
        if ok and self.on_pulse is not None:
            self.on_pulse()
        self.enabled = False
        return ok

    def disable(self):
        self.enabled = False


class Battery:
    """The ADC on the cell's divider; the quiescent draw is charged to the cell at each
    sample, from the time since the last."""

    def __init__(self, loop, cell, quiescent_ua, load_ma=0):
        self.loop = loop
        self.cell = cell
        self.quiescent_ua = quiescent_ua
        self.load_ma = load_ma

    def sample(self, count):
        # The quiescent charge since the last sample (uA x ms = nC), kept on the cell so that
        # a reset loses none of it.
        cell = self.cell
        now = self.loop.now
        cell.draw(self.quiescent_ua * (now - getattr(cell, "drawn_to_ms", 0)))
        cell.drawn_to_ms = now
        return cell.sample(count, self.load_ma)


class Button:
    def __init__(self):
        self.flag = None
        self.presses = 0

    def attach(self, flag):
        self.flag = flag

    def press(self):
        """What the pin's interrupt does: count, and signal the one task that waits."""
        self.presses += 1
        if self.flag is not None:
            self.flag.set()


class Hal:
    """Everything the application gets from the sim board. The rig's parts (mechanism, cell,
    flash, RTC, buzzer) outlive a reset; the clock and the watchdog start again with it."""

    def __init__(self, loop, fs, mech, cell, energy, rtc, buzzer, button, reset_cause,
                 on_pulse=None):  # fmt: skip
        self.aio = loop
        self.loop = loop
        self.clock = Clock(loop)
        self.fs = fs
        self.rtc = rtc
        rtc.loop = loop
        self.motor = Motor(mech, cell, energy.pulse_nc, on_pulse)
        self.battery = Battery(loop, cell, energy.quiescent_ua)
        self.buzzer = buzzer
        self.button = button
        self._cause = reset_cause
        self.wdt = None

    def reset_cause(self):
        return self._cause

    def self_test(self):
        return []

    def watchdog(self, timeout_ms):
        self.wdt = Watchdog(self.loop, timeout_ms)
        self.loop.watchdog = self.wdt
        return self.wdt
