# Scenario (b): a 10-step flex schedule with two periodic boluses for 2 days, every pulse printed.
# Step changes and bolus ends are boundaries; the count after whole days is still exact.
# req: SR-34, SR-29, SR-30

import _rig

from pump import rx as RX

CONC = 500
DAYS = 2
STEPS = (
    (0, 300_000),
    (180, 250_000),
    (360, 400_000),
    (480, 450_000),
    (600, 350_000),
    (720, 300_000),
    (840, 380_000),
    (960, 420_000),
    (1140, 360_000),
    (1320, 320_000),
)
# The 07:50 bolus runs 20 min, across the 08:00 step change, so a boundary falls inside it.
PERIODIC = ((470, 20_000, 1200), (1200, 15_000, 600))

rx = RX.Prescription(CONC, STEPS, PERIODIC)
rig = _rig.Rig(CONC)
rig.request("program", rig.eng.program(rx, confirm=True))
rig.run_to(DAYS * _rig.DAY)

exact = _rig.exact_pulses(rig.calib, DAYS * _rig.day_dose_ng_min(rx), 1440, CONC)
rig.summary("exact=%d" % exact)
if rig.eng.delivered != exact:
    raise AssertionError("delivered %d, programmed floor %d" % (rig.eng.delivered, exact))
