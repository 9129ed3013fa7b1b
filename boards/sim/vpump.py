# The virtual pump: the device application (firmware/app.py) on the sim board's rig, with
# resets that really restart it (watchdog, power cut) and a record of what the rig delivered.

import app as APP
from boards.sim import board, flash, hal, hw, lfs, vloop


class VirtualPump:
    """The rig outlives the application: flash, mechanism, cell, RTC, buzzer and the record of
    delivered pulses stay; a reset drops the application's tasks and RAM and boots it again
    from flash, as the board would."""

    def __init__(self, seed=1, accel=0, blocks=128, cell_error_pct=0, flash_dev=None, mech=None):
        self.loop = vloop.Loop(0, accel)
        if flash_dev is None:
            flash_dev = flash.RamFlash(block_size=4096, block_count=blocks)
        self.flash = flash_dev
        lfs.format(self.flash)
        self.mech = hw.Mechanism() if mech is None else mech
        self.cell = hw.SimCell(board.CELL, board.ADC_CAL, seed=seed, error_pct=cell_error_pct)
        self.rtc = hal.Rtc()
        self.rtc.loop = self.loop
        self.buzzer = hw.RecordingBuzzer(lambda: self.loop.now)
        self.button = hal.Button()
        self.pulse_pl = board.calibration().pulse_pl()
        self.delivered = []  # loop ms of every pulse the mechanism moved
        self.resets = []  # (loop ms, cause)
        self.app = None
        self.hal = None
        self.fs = None

    def _on_pulse(self):
        self.delivered.append(self.loop.now)

    def boot(self, cause="power_on"):
        if self.flash.dead:
            self.flash.revive()
        self.fs = lfs.mount(self.flash)
        self.hal = hal.Hal(self.loop, self.fs, self.mech, self.cell, board.ENERGY, self.rtc,
                           self.buzzer, self.button, cause, self._on_pulse)  # fmt: skip
        self.app = APP.App(board, self.hal)
        self.app.boot()
        self.loop.create_task(self.app.run(), "main")
        return self.app

    def reset(self, cause, down_ms=0):
        """The board resets (or loses power for down_ms): the application is gone at once."""
        self.resets.append((self.loop.now, cause))
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
                self.reset(r.cause)
            except flash.PowerCut:
                self.reset("power_on")

    def submit(self, name, *args):
        return self.app.submit(name, *args)

    @property
    def sup(self):
        return self.app.sup
