# Every engine request leaves a trace in the event log: accepted changes and refusals alike.
# (The durable, hash-chained log arrives with the storage issue; this is its source.)

import pytest

from host_tests.exactness import GENEROUS, REF_CALIB
from pump import engine as E
from pump import reasons as R
from pump import rx as RX
from pump.limiter import Limiter


def _engine(events):
    limiter = Limiter(REF_CALIB, GENEROUS, 500)
    return E.Engine(REF_CALIB, limiter, GENEROUS, 500, log=lambda *a: events.append(a))


@pytest.mark.req("SR-01", "SR-05")
def test_refusals_are_logged_with_request_reason_and_field():
    events = []
    eng = _engine(events)
    rx = RX.continuous(500, 350_000, patient_dose_ng=10_000, patient_duration_s=600,
                       patient_lockout_s=3600, patient_max_per_24h=2)  # fmt: skip
    assert eng.program(rx) == R.Refusal(R.NEEDS_CONFIRM, "steps")
    assert events[-1] == ("refused", "program", R.NEEDS_CONFIRM, "steps")
    assert eng.program(rx, confirm=True) is None
    assert events[-1][0] == "program"
    eng.run_until(3_600_000)
    assert eng.patient_bolus() is None
    eng.run_until(3_600_000 + 3_599_000)
    assert eng.patient_bolus() == R.Refusal(R.LOCKOUT, "patient")
    assert events[-1] == ("refused", "patient_bolus", R.LOCKOUT, "patient")
    assert eng.set_mode(99) is not None
    assert events[-1] == ("refused", "set_mode", R.BAD_MODE, "mode")
    assert eng.prime(1000) == R.Refusal(R.BAD_MODE, "mode")
    assert events[-1] == ("refused", "prime", R.BAD_MODE, "mode")


@pytest.mark.req("SR-09")
def test_programme_change_logs_old_and_new_and_cancelled_remainder():
    events = []
    eng = _engine(events)
    old = RX.Prescription(500, [(0, 350_000)], [(60, 20_000, 3600)])
    new = RX.continuous(500, 360_000)
    assert eng.program(old, confirm=True) is None
    eng.run_until(90 * 60_000)  # half-way through the periodic bolus
    assert eng.program(new, confirm=True) is None
    cancel = [e for e in events if e[0] == "bolus_cancel"]
    assert len(cancel) == 1 and cancel[0][1] == "periodic"
    assert 9_900 <= cancel[0][2] <= 10_000  # about half the 20 ug was still to come
    assert events[-1] == ("program", old, new)
