# Shared set-up for the two-runtime scenarios: the reference rig, limits, and a printing driver.
# The leading underscore keeps test_scenarios_both.py from running this file as a scenario.

from pump import calib as CAL
from pump import engine as E
from pump import limits as L
from pump import rx as RX
from pump.limiter import Limiter

DAY = L.DAY_MS
HOUR = 3_600_000
MIN = L.MIN_MS

REF_CALIB = CAL.from_geometry(14500, 800, 200, 16, 16)
# Generous limits leave the hard limits as the only bound, so a scenario shows the engine and
# not a clinician setting, unless it passes its own limits.
GENEROUS = L.ClinicianLimits(
    L.HARD_MAX_24H_NG, L.HARD_MAX_BOLUS_NG, L.HARD_MAX_RATE_NL_PER_DAY, L.DOSE_STEP_PCT_MAX
)


def fmt(arg):
    # Object reprs differ between the runtimes (addresses, class paths); print values only.
    if arg is None:
        return "-"
    if isinstance(arg, str):
        return arg
    if isinstance(arg, int):
        return "%d" % arg
    if isinstance(arg, RX.Prescription):
        return "rx(%d,%d,%d,%d)" % (
            arg.conc_ug_per_ml,
            len(arg.steps),
            len(arg.periodic),
            RX.daily_dose_ng(arg),
        )
    return "?"


class Rig:
    """One engine and limiter, a log printer, and a driver that prints every pulse."""

    def __init__(self, conc, lim=GENEROUS, calib=REF_CALIB, engine_class=E.Engine,
                 log_events=True):  # fmt: skip
        self.calib = calib
        self.log_events = log_events
        self.limiter = Limiter(calib, lim, conc)
        self.eng = engine_class(calib, self.limiter, lim, conc, log=self.on_log)
        self.blocked = 0

    def on_log(self, name, *args):
        if not self.log_events:
            return
        line = "ev %d %s" % (self.eng.now_ms(), name)
        for a in args:
            line += " " + fmt(a)
        print(line)

    def run_to(self, until_ms, quiet=False):
        """Fire every event due up to until_ms as the firmware would, then stand at until_ms."""
        eng = self.eng
        n = 0
        while eng.next_due_ms() <= until_ms:
            if eng.wait_ms() < 0:
                raise AssertionError("negative wait at %d" % eng.now_ms())
            ev = eng.fire()
            if ev == E.EV_PULSE:
                n += 1
                if not quiet:
                    print("%d %d" % (eng.now_ms(), eng.delivered))
            elif ev == E.EV_BLOCKED:
                self.blocked += 1
                print("blocked %d" % eng.now_ms())
        eng.run_until(until_ms)
        return n

    def request(self, label, result):
        """Print the outcome of a request: ok, or the refusal's code and field."""
        if result is None:
            print("req %d %s ok" % (self.eng.now_ms(), label))
        else:
            print("req %d %s refused %d %s" % (self.eng.now_ms(), label, result.code,
                                               result.field))  # fmt: skip
        return result

    def state(self):
        """Everything a refused request must leave unchanged, as a tuple of plain values."""
        eng = self.eng
        lim = self.limiter
        return (eng.mode, eng.conc, eng.delivered, eng.next_due_ms(), eng.rate_ru(),
                eng.bridge_pulses_left(), eng.fault, tuple(eng.streams()), lim.window_ng,
                lim.pulses)  # fmt: skip

    def summary(self, *extra):
        eng = self.eng
        line = "summary t=%d delivered=%d wakeups=%d boundaries=%d window_ng=%d blocked=%d" % (
            eng.now_ms(),
            eng.delivered,
            eng.wakeups,
            eng.boundaries,
            self.limiter.window_ng,
            self.limiter.blocked,
        )
        for e in extra:
            line += " " + e
        print(line)
        # Tickless: the engine woke for nothing but a pulse, a boundary or a blocked pulse.
        if eng.wakeups != eng.delivered + eng.boundaries + self.limiter.blocked:
            raise AssertionError("wakeups are not pulses + boundaries + blocks")


def exact_pulses(calib, dose_ng_num, dose_ng_den, conc):
    """floor of (dose_ng_num / dose_ng_den) ng at conc ug/mL in pulses, in integers only.

    The volume is dose / (1000 * conc) mL and a pulse is ml_num / ml_den mL.
    """
    return (dose_ng_num * calib.ml_den) // (dose_ng_den * 1000 * conc * calib.ml_num)


def day_dose_ng_min(rx):
    """Exact basal dose of one programme day in ng * min (divide by 1440 for ng), plus boluses
    converted to the same unit; integers, no rounding."""
    steps = rx.steps
    total = 0
    for i in range(len(steps)):
        end = steps[i + 1][0] if i + 1 < len(steps) else L.MINUTES_PER_DAY
        total += steps[i][1] * (end - steps[i][0])
    for p in rx.periodic:
        total += p[1] * L.MINUTES_PER_DAY
    return total
