# Scenario (a): 350 ug/day at 500 ug/mL on the reference rig for 3 days, every pulse printed.
# The simplest programme a patient runs; its pulse times must match on both runtimes.
# req: SR-34, SR-29, SR-30

import _rig

from pump import rx as RX

RATE_NG = 350_000
CONC = 500
DAYS = 3

rig = _rig.Rig(CONC)
rig.request("program", rig.eng.program(RX.continuous(CONC, RATE_NG), confirm=True))
rig.run_to(DAYS * _rig.DAY)

# Exactness: after whole days the count is the floor of the programmed volume in pulses.
exact = _rig.exact_pulses(rig.calib, DAYS * RATE_NG, 1, CONC)
rig.summary("exact=%d" % exact)
if rig.eng.delivered != exact:
    raise AssertionError("delivered %d, programmed floor %d" % (rig.eng.delivered, exact))
