# Scenario (f): minimum-rate and stopped modes by clinician command, then a scheduler bug that
# doubles the rate, caught by the independent limiter, which blocks the pulse and faults.
# req: SR-34, SR-37, SR-31

import _rig

from pump import engine as E
from pump import limits as L
from pump import rx as RX

CONC = 500
RATE_NG = 350_000
H = _rig.HOUR
DAY = _rig.DAY

# Part 1: modes. Only set_mode() changes the mode, and only to minimum or stopped.
rig = _rig.Rig(CONC)
eng = rig.eng
rig.request("program", eng.program(RX.continuous(CONC, RATE_NG), confirm=True))
rig.run_to(6 * H)
rig.request("minimum", eng.set_mode(E.MODE_MINIMUM))
print("mode=%d rate_ru=%d" % (eng.mode, eng.rate_ru()))
rig.run_to(DAY + 6 * H)
rig.request("stopped", eng.set_mode(E.MODE_STOPPED))
print("mode=%d rate_ru=%d next_due=%d" % (eng.mode, eng.rate_ru(), eng.next_due_ms()))
rig.request("set_mode(program)", eng.set_mode(E.MODE_PROGRAM))
rig.request("patient while stopped", eng.patient_bolus())
stopped_at = eng.delivered
rig.run_to(2 * DAY)
print("pulses while stopped=%d" % (eng.delivered - stopped_at))
rig.request("program", eng.program(RX.continuous(CONC, RATE_NG), confirm=True))
rig.run_to(2 * DAY + 6 * H)
rig.summary("mode=%d" % eng.mode)


class DoublingEngine(E.Engine):
    """A deliberately faulty scheduler: it runs every rate at twice the programmed value."""

    def _rate_ru(self):
        return 2 * E.Engine._rate_ru(self)


# Part 2: the programme asks for 350 ug/day; the faulty engine delivers 700. The limiter's own
# 24 h maximum sits just below that, above what the correct programme needs.
LIMIT_NG = 690_000
lim = L.ClinicianLimits(LIMIT_NG, 100_000, L.HARD_MAX_RATE_NL_PER_DAY, 100)
rig = _rig.Rig(CONC, lim=lim, engine_class=DoublingEngine)
eng = rig.eng
rig.request("program", eng.program(RX.continuous(CONC, RATE_NG), confirm=True))
rig.run_to(DAY)
print("fault=%d mode=%d window_ng=%d limit=%d" % (eng.fault, eng.mode, rig.limiter.window_ng,
                                                   LIMIT_NG))  # fmt: skip
blocked_at = eng.delivered
rig.request("clinician bolus while faulted", eng.clinician_bolus(10_000, 600))
rig.request("set_mode(minimum) while faulted", eng.set_mode(E.MODE_MINIMUM))
rig.run_to(DAY + 6 * H)
print("pulses while faulted=%d" % (eng.delivered - blocked_at))
rig.summary("mode=%d fault=%d" % (eng.mode, eng.fault))
if not rig.blocked or not eng.fault or eng.mode != E.MODE_PROGRAM:
    raise AssertionError("the limiter did not stop the faulty scheduler")
if rig.limiter.window_ng > LIMIT_NG:
    raise AssertionError("the rolling dose passed the limit")
