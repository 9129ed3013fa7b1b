# Scenario (g): 30 days of a flex programme, one line per day (day, pulses that day, total).
# Long enough for day-frame roll-overs and carried credit to show any drift between runtimes.
# req: SR-34, SR-29, SR-30

import _rig

from pump import rx as RX

CONC = 1000
DAYS = 30
STEPS = (
    (0, 400_000),
    (240, 360_000),
    (420, 520_000),
    (600, 480_000),
    (900, 450_000),
    (1080, 500_000),
    (1260, 420_000),
)
# The 23:30 bolus runs 45 min, past midnight, so it spans the day-frame roll-over every day.
PERIODIC = ((480, 30_000, 900), (1410, 25_000, 2700))

RUMS_PER_NG = 8_640_000  # rate units (10 ng/day) times ms in one ng

rx = RX.Prescription(CONC, STEPS, PERIODIC)
rig = _rig.Rig(CONC, log_events=False)
eng = rig.eng
rig.request("program", eng.program(rx, confirm=True))

# Programmed dose in rate-unit-ms, exactly: basal per day, the morning bolus whole, and the
# midnight bolus whole for earlier days plus the 30 min of today's that run before midnight.
basal = 0
for i in range(len(STEPS)):
    end = STEPS[i + 1][0] if i + 1 < len(STEPS) else 1440
    basal += STEPS[i][1] // 10 * (end - STEPS[i][0]) * _rig.MIN
morning = PERIODIC[0][1] * RUMS_PER_NG
late_start, late_dose, late_s = PERIODIC[1]
late = late_dose * RUMS_PER_NG
late_before_midnight = RX.bolus_rate_ru(late_dose, late_s * 1000) * (1440 - late_start) * _rig.MIN

for day in range(1, DAYS + 1):
    before = eng.delivered
    rig.run_to(day * _rig.DAY, quiet=True)
    programmed = day * (basal + morning) + (day - 1) * late + late_before_midnight
    exact = _rig.exact_pulses(rig.calib, programmed, RUMS_PER_NG, CONC)
    print("day %d %d %d exact=%d" % (day, eng.delivered - before, eng.delivered, exact))
    if eng.delivered != exact:
        raise AssertionError("day %d: delivered %d, programmed floor %d" % (
            day, eng.delivered, exact))  # fmt: skip
rig.summary("boluses=%d" % (DAYS * len(PERIODIC)))
