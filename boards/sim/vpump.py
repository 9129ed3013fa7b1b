# The virtual pump: the device application (firmware/app.py) on the sim board's rig, with
# resets that really restart it (watchdog, power cut) and a record of what the rig delivered.

import app as APP
from boards.sim import board, flash, hal, hw, lfs, vloop


class VirtualPump:
    """The rig outlives the application: flash, mechanism, cell, RTC, buzzer and the record of
    delivered pulses stay; a reset drops the application's tasks and RAM and boots it again
    from flash, as the board would."""

    def __init__(self, seed=1, accel=0, blocks=128, cell_error_pct=0, flash_dev=None, mech=None,
                 keys=None, ble_api=None):  # fmt: skip
        """keys: the pump's keys file (bytes, tools/provision.py), written as at manufacture;
        ble_api: () -> (BLE(), UUID) of a MicroPython `bluetooth` API (the fake, or Bumble's
        adapter): with both, the pump runs its radio."""
        self.loop = vloop.Loop(0, accel)
        if flash_dev is None:
            flash_dev = flash.RamFlash(block_size=4096, block_count=blocks)
        self.flash = flash_dev
        lfs.format(self.flash)
        self.mech = hw.Mechanism() if mech is None else mech
        if hasattr(self.mech, "bind"):
            self.mech.bind(self._loop_now)  # a plant model (boards/sim/plant.py) keeps time
        self.cell = hw.SimCell(board.CELL, board.ADC_CAL, seed=seed, error_pct=cell_error_pct)
        self.rtc = hal.Rtc()
        self.rtc.loop = self.loop
        self.buzzer = hw.RecordingBuzzer(lambda: self.loop.now)
        self.button = hal.Button()
        self.pulse_pl = board.calibration().pulse_pl()
        self.delivered = []  # loop ms of every pulse the mechanism moved
        self.resets = []  # (loop ms, cause)
        # One per boot: (loop ms the reset began, loop ms of the boot, hardware cause, the
        # firmware's cause, where its state came from, the task the watchdog supervisor found
        # late before it or None)
        self.boot_log = []
        self.cut_down_ms = 0  # how long the power stays off after a cut in the middle of a write
        self._late = None
        self._reset_at = None
        self.app = None
        self.hal = None
        self.fs = None
        self.keys = keys
        self.ble_api = ble_api
        self.radio = None

    def _factory_keys(self):
        # Provisioning writes the keys file once, before the pump's first boot.
        from link import keys as KF

        try:
            self.fs.stat(KF.PATH)
        except OSError:
            with self.fs.open(KF.PATH, "wb") as f:
                f.write(self.keys)

    def _on_pulse(self):
        self.delivered.append(self.loop.now)

    def _loop_now(self):
        return self.loop.now

    def boot(self, cause="power_on"):
        if self.flash.dead:
            self.flash.revive()
        self.fs = lfs.mount(self.flash)
        if self.keys is not None:
            self._factory_keys()
        self.hal = hal.Hal(self.loop, self.fs, self.mech, self.cell, board.ENERGY, self.rtc,
                           self.buzzer, self.button, cause, self._on_pulse)  # fmt: skip
        if self.ble_api is not None:
            self.hal.ble_api = self.ble_api
        self.app = APP.App(board, self.hal)
        info = self.app.boot()
        if self.ble_api is not None:
            # Imported only for a pump with a radio: the reference runs (make sim, the heap
            # benchmark) carry none, as a board without keys runs none.
            import os

            import radio as RADIO

            self.radio = RADIO.attach(self.app, self.hal, "sim", APP.VERSION, os.urandom)
        began = self.loop.now if self._reset_at is None else self._reset_at
        self.boot_log.append((began, self.loop.now, cause, info.cause, info.source, self._late))
        self._late = None
        self._reset_at = None
        self.loop.create_task(self.app.run(), "main")
        return self.app

    def reset(self, cause, down_ms=0):
        """The board resets (or loses power for down_ms): the application is gone at once."""
        self.resets.append((self.loop.now, cause))
        if self._reset_at is None:
            self._reset_at = self.loop.now  # a reset cut short by another keeps the first
            self._late = None if self.app is None else self.app.hung
        self.loop.shutdown()
        self.loop.watchdog = None
        self.hal.motor.disable()
        if down_ms:
            self.loop.run_until(self.loop.now + down_ms)
        self.boot(cause)

    def run_until(self, t_ms):
        """Run the pump to loop time t_ms, through any resets on the way."""
        while True:
            try:
                self.loop.run_until(t_ms)
                return
            except vloop.Reset as r:
                cause = r.cause
                down = 0
            except flash.PowerCut:
                cause = "power_on"
                down = self.cut_down_ms
            while True:
                try:
                    self.reset(cause, down)
                    break
                except flash.PowerCut:
                    # The supply failed again while the application booted (a cut set to
                    # come after a number of flash writes): it boots once more.
                    cause = "power_on"
                    down = self.cut_down_ms

    def power_cut(self, down_ms=0, after_ops=0):
        """Fault injection: the supply fails now (and stays off down_ms), or, with after_ops,
        at the after_ops-th flash program or erase from now, in the middle of whatever the
        application is writing then (run_until() then resets it, off for cut_down_ms)."""
        if after_ops:
            self.flash.cut_at = self.flash.ops + after_ops
            return
        self.flash.dead = True  # the chip has no supply: the mount made before is gone
        self.reset("power_on", down_ms)

    def stop(self):
        """The simulation ends: the application's main task is closed, which cancels the other
        tasks (their cleanup runs), so that no coroutine is left for the garbage collector to
        finalise in some arbitrary order at exit."""
        for t in list(self.loop.tasks):
            if t.name == "main" and not t.done:
                t.coro.close()
                t.done = True
        self.loop.shutdown()

    def submit(self, name, *args):
        return self.app.submit(name, *args)

    @property
    def sup(self):
        return self.app.sup
