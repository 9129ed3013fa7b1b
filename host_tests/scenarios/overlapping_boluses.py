# Scenario (c): a clinician bolus and patient boluses running at once, and refused requests.
# Overlapping streams add their rates; a refusal prints its code and field and changes nothing.
# req: SR-34, SR-29, SR-32

import _rig

from pump import rx as RX

CONC = 500
RATE_NG = 350_000
PATIENT = {
    "patient_dose_ng": 25_000,
    "patient_duration_s": 600,
    "patient_lockout_s": 3600,
    "patient_max_per_24h": 4,
}
H = _rig.HOUR
M = _rig.MIN

rx = RX.continuous(CONC, RATE_NG, **PATIENT)
rig = _rig.Rig(CONC)
eng = rig.eng
rig.request("program", eng.program(rx, confirm=True))

rig.run_to(1 * H)
rig.request("clinician 50000/1800s", eng.clinician_bolus(50_000, 1800))
rig.run_to(1 * H + 10 * M)
rig.request("patient", eng.patient_bolus())  # overlaps the clinician bolus
rig.run_to(1 * H + 15 * M)


def refused_unchanged(label, request, *args):
    # The refusal must leave every piece of dosing state as it was (SR-32).
    before = rig.state()
    bad = rig.request(label, request(*args))
    after = rig.state()
    print("unchanged %d" % (before == after))
    if bad is None or before != after:
        raise AssertionError(label + " was not refused cleanly")
    return bad


refused_unchanged("clinician again", eng.clinician_bolus, 10_000, 600)  # one is running
rig.run_to(1 * H + 40 * M)
bad = refused_unchanged("patient in lockout", eng.patient_bolus)
print("lockout code=%d field=%s" % (bad.code, bad.field))
rig.run_to(2 * H + 10 * M)
rig.request("patient after lockout", eng.patient_bolus())
rig.run_to(2 * H + 12 * M)
refused_unchanged("clinician over the bolus limit", eng.clinician_bolus, 600_000, 600)
refused_unchanged("clinician too short", eng.clinician_bolus, 10_000, 30)
rig.run_to(_rig.DAY)

# One day of basal plus every granted bolus, exactly.
dose_ng_min = RATE_NG * 1440 + (50_000 + 25_000 + 25_000) * 1440
exact = _rig.exact_pulses(rig.calib, dose_ng_min, 1440, CONC)
rig.summary("exact=%d" % exact)
if eng.delivered != exact:
    raise AssertionError("delivered %d, programmed floor %d" % (eng.delivered, exact))
