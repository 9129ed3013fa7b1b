# Scenario: the supervisor through a stall and recovery, a refill to a new strength (bridge),
# a discrepancy refill, and low and empty crossings; every log line and pulse count printed.
# req: SR-13, SR-16, SR-34

import _rig

from boards.sim import board, hw
from pump import alarms as A
from pump import battery as B
from pump import reservoir as RS
from pump import rx as RX
from pump import supervisor as S

DAY = _rig.DAY
H = _rig.HOUR
ML = 1_000_000

cal = _rig.REF_CALIB
lim = _rig.GENEROUS
limiter = _rig.Limiter(cal, lim, 500)
t_shell = [0]
eng = None


def log(name, *args):
    line = "ev %d %s" % (eng.now_ms(), name)
    for a in args:
        line += " " + _rig.fmt(a)
    print(line)


eng = _rig.E.Engine(cal, limiter, lim, 500, log=log)
res = RS.Reservoir(cal, board.RESERVOIR_NL["20ml"], 2 * ML, 4 * ML)
bat = B.Monitor(board.CELL, board.ENERGY, board.ADC_CAL, log=log)
alarms = A.Alarms(log=log)
sup = S.Supervisor(eng, res, bat, alarms, S.Settings(board.PUMP_DEAD_VOLUME_NL), log=log)
mech = hw.Mechanism()


class Buzzer:
    """Counts tones and the time of the last change (a recording of weeks would not fit the
    MicroPython heap)."""

    def __init__(self):
        self.on = False
        self.tones = 0
        self.last = -1

    def set(self, on):
        if on != self.on:
            self.on = on
            self.last = t_shell[0]
            if on:
                self.tones += 1


buzzer = Buzzer()


def run_to(until):
    n = 0
    while sup.next_wake_ms() <= until:
        t_shell[0] = sup.next_wake_ms()
        n += sup.advance(t_shell[0], mech, buzzer)
        if sup.battery_due(t_shell[0]):
            sup.battery_sample(t_shell[0], 1_500_000 * 16, 16)
    t_shell[0] = until
    n += sup.advance(until, mech, buzzer)
    print("at %d: pulses %d attempts %d engine %d limiter %d remaining_nl %d undelivered %d "
          "tones %d" % (until, mech.done, mech.attempts, eng.delivered, limiter.pulses,
                        res.remaining_nl(), sup.undelivered_pulses,
                        buzzer.tones))  # fmt: skip
    return n


def req(label, result):
    if result is None:
        print("req %d %s ok" % (eng.now_ms(), label))
    else:
        print("req %d %s refused %d %s" % (eng.now_ms(), label, result.code, result.field))


def show_alarms():
    for _cid, nm, prio, present, acked, _snooze in alarms.active():
        print("alarm %s %s present=%d acked=%d" % (nm, A.PRIORITY_NAMES[prio], present, acked))


def forecast():
    print(
        "forecast low_at=%d empty_at=%d"
        % (
            -1 if sup.low_at_ms is None else sup.low_at_ms,
            -1 if sup.empty_at_ms is None else sup.empty_at_ms,
        )
    )


rx = RX.continuous(500, 350_000, patient_dose_ng=25_000, patient_duration_s=600,
                   patient_lockout_s=3600, patient_max_per_24h=4)  # fmt: skip
req("program", sup.program(rx, confirm=True))
forecast()
run_to(12 * H)

# A stall: the mechanism jams for 5 h, then frees; no catch-up afterwards.
mech.jam()
run_to(17 * H)
show_alarms()
mech.free()
run_to(20 * H)
show_alarms()
req("ack stall", sup.acknowledge(A.STALL))

# Low (2 mL) and empty crossings of the 4 mL fill.
run_to(3 * DAY + 12 * H)
show_alarms()
forecast()
run_to(6 * DAY)
show_alarms()

# Refill to 1000 ug/mL: the bridge bolus, the same ug/day at half the volume rate.
expected = res.remaining_nl()
req("refill_begin", sup.refill_begin(0))
req("refill_fill over capacity", sup.refill_fill(20 * ML + 1, 1000))
req("refill_fill 400 ug/mL", sup.refill_fill(20 * ML, 400))
req("refill_fill", sup.refill_fill(20 * ML, 1000))
req("refill_commit", sup.refill_commit())
print("bridge %d expected %d conc %d next %d" % (eng.bridge_pulses_left(),
      cal.pulses_for_nl(board.PUMP_DEAD_VOLUME_NL), eng.conc, eng.next_conc()))  # fmt: skip
forecast()
show_alarms()
for cid in (A.RES_EMPTY, A.RES_LOW):
    req("ack", sup.acknowledge(cid))
run_to(8 * DAY)
print("conc %d rate_ru %d" % (eng.conc, eng.rate_ru()))
d0 = mech.done
run_to(10 * DAY)
print("pulses in 2 days at 1000 ug/mL: %d" % (mech.done - d0))

# A refill whose withdrawn volume is 20 % short of the expected residual: the discrepancy.
expected = res.remaining_nl()
withdrawn = expected * 80 // 100
req("refill_begin -20%", sup.refill_begin(withdrawn))
st = sup.refill_status()
print(
    "status withdrawn %d expected %d tolerance %d discrepancy %d"
    % (st[0], st[1], st[2], 1 if st[3] else 0)
)
req("refill_fill", sup.refill_fill(20 * ML, 1000))
req("refill_commit", sup.refill_commit())
show_alarms()
forecast()

# An abandoned refill changes nothing.
req("refill_begin", sup.refill_begin(ML))
req("refill_abandon", sup.refill_abandon())
run_to(11 * DAY)
show_alarms()
if limiter.pulses != eng.delivered:
    raise AssertionError("the limiter counted pulses the engine did not schedule")
