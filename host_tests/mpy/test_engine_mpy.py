# MicroPython-side checks of the dosing engine: 180-day exactness, tickless wake-ups, wait_ms(),
# a patient-bolus lockout refusal and a flex day, all computed in integers (no fractions here).
# req: SR-29, SR-30, SR-34

from pump import calib as CAL
from pump import engine as E
from pump import limits as L
from pump import reasons as R
from pump import rx as RX
from pump.limiter import Limiter

REF = CAL.from_geometry(14500, 800, 200, 16, 16)
GENEROUS = L.ClinicianLimits(
    L.HARD_MAX_24H_NG, L.HARD_MAX_BOLUS_NG, L.HARD_MAX_RATE_NL_PER_DAY, L.DOSE_STEP_PCT_MAX
)
DAY = L.DAY_MS


def make(conc, rx=None):
    eng = E.Engine(REF, Limiter(REF, GENEROUS, conc), GENEROUS, conc)
    if rx is not None:
        bad = eng.program(rx, confirm=True)
        assert bad is None, "programme refused: %d %s" % (bad.code, bad.field)
    return eng


def floor_pulses(dose_num, dose_den, conc, calib=REF):
    # dose_num / dose_den ng at conc ug/mL is dose / (1000 * conc) mL; a pulse is num/den mL.
    return (dose_num * calib.ml_den) // (dose_den * 1000 * conc * calib.ml_num)


def drive(eng, until_ms):
    """Fire every event up to until_ms the way the firmware's loop does, checking each wait."""
    pulses = 0
    bounds = 0
    while eng.next_due_ms() <= until_ms:
        now = eng.now_ms()
        w = eng.wait_ms()
        assert w >= 0, "wait_ms() = %d at %d" % (w, now)
        assert w == eng.next_due_ms() - now, "wait_ms() is not next event - now at %d" % now
        ev = eng.fire()
        # The event fired is the one waited for: the clock stands exactly w ms later.
        assert eng.now_ms() == now + w, "event at %d, wait said %d" % (eng.now_ms(), now + w)
        if ev == E.EV_PULSE:
            pulses += 1
        elif ev == E.EV_BOUNDARY:
            bounds += 1
        else:
            raise AssertionError("unexpected event %d at %d" % (ev, eng.now_ms()))
    eng.run_until(until_ms)
    # Standing between events, the wait still points at the next one.
    assert eng.wait_ms() == eng.next_due_ms() - eng.now_ms() >= 0
    return pulses, bounds


def test_180_days_reference():
    rate = 350_000
    eng = make(500, RX.continuous(500, rate))
    w0 = eng.wakeups
    pulses, bounds = drive(eng, 180 * DAY)
    want = floor_pulses(180 * rate, 1, 500)
    assert eng.delivered == pulses == want, "180 days: %d pulses, want %d" % (pulses, want)
    # Tickless: one wake-up per pulse and per boundary (here only the 180 midnights).
    assert eng.wakeups - w0 == pulses + bounds, "wakeups %d" % (eng.wakeups - w0)
    assert bounds == eng.boundaries == 180, "boundaries %d" % bounds
    print("180 days: %d pulses, %d wake-ups" % (pulses, eng.wakeups))


def test_every_midnight_exact():
    rate = 350_000
    eng = make(500, RX.continuous(500, rate))
    for day in range(1, 31):
        drive(eng, day * DAY)
        want = floor_pulses(day * rate, 1, 500)
        assert eng.delivered == want, "day %d: %d, want %d" % (day, eng.delivered, want)


def test_patient_lockout():
    rx = RX.continuous(500, 350_000, patient_dose_ng=20_000, patient_duration_s=600,
                       patient_lockout_s=3600, patient_max_per_24h=3)  # fmt: skip
    eng = make(500, rx)
    drive(eng, 2 * 3_600_000)
    assert eng.patient_bolus() is None
    drive(eng, 2 * 3_600_000 + 59 * 60_000)
    before = (eng.delivered, eng.next_due_ms(), eng.rate_ru(), len(eng.streams()))
    bad = eng.patient_bolus()
    assert bad is not None and bad.code == R.LOCKOUT and bad.field == "patient", bad
    # The refusal changed nothing.
    assert before == (eng.delivered, eng.next_due_ms(), eng.rate_ru(), len(eng.streams()))
    drive(eng, 3 * 3_600_000)
    assert eng.patient_bolus() is None, "lockout should be over after 3600 s"
    drive(eng, 4 * 3_600_000)
    assert eng.patient_bolus() is None
    drive(eng, 5 * 3_600_000)
    bad = eng.patient_bolus()
    assert bad is not None and bad.code == R.BOLUS_COUNT, bad
    drive(eng, DAY)
    want = floor_pulses(350_000 + 3 * 20_000, 1, 500)
    assert eng.delivered == want, "patient day: %d, want %d" % (eng.delivered, want)


def test_flex_day():
    steps = ((0, 300_000), (200, 240_000), (390, 410_000), (555, 500_000), (700, 350_000),
             (845, 300_000), (1000, 460_000), (1199, 380_000), (1321, 330_000))  # fmt: skip
    periodic = ((420, 25_000, 1500), (1080, 12_345, 777))
    rx = RX.Prescription(1000, steps, periodic)
    eng = make(1000, rx)
    total_ng_min = 0
    for i in range(len(steps)):
        end = steps[i + 1][0] if i + 1 < len(steps) else 1440
        total_ng_min += steps[i][1] * (end - steps[i][0])
    for p in periodic:
        total_ng_min += p[1] * 1440
    # No bolus runs over midnight, so each midnight closes a whole programme day.
    for day in range(1, 4):
        before = eng.delivered
        pulses, bounds = drive(eng, day * DAY)
        want = floor_pulses(day * total_ng_min, 1440, 1000)
        assert eng.delivered == want, "flex day %d: %d, want %d" % (day, eng.delivered, want)
        # 8 step changes, 2 bolus starts, 2 bolus ends and midnight (the 00:00 step is midnight).
        assert bounds == 13, "flex day %d: %d boundaries" % (day, bounds)
        assert pulses == eng.delivered - before


test_180_days_reference()
test_every_midnight_exact()
test_patient_lockout()
test_flex_day()
print("OK")
