# Scenario (d): a refill from 500 to 2000 ug/mL; the dead volume goes at the old rate first.
# The bridge ends after exactly the dead volume's pulses, then the pulse rate drops fourfold.
# req: SR-34, SR-35

import _rig

from pump import rx as RX

RATE_NG = 350_000
DEAD_NL = 250_000
H = _rig.HOUR

rig = _rig.Rig(500)
eng = rig.eng
rig.request("program", eng.program(RX.continuous(500, RATE_NG), confirm=True))
rig.run_to(_rig.DAY + 6 * H)

at_change = eng.delivered
rig.request("refill 2000 (dose changed too)", eng.change_concentration(
    RX.continuous(2000, 2 * RATE_NG), DEAD_NL))  # fmt: skip
rig.request("refill 2000", eng.change_concentration(RX.continuous(2000, RATE_NG), DEAD_NL))
bridge = eng.bridge_pulses_left()
print("bridge pulses=%d expected=%d" % (bridge, rig.calib.pulses_for_nl(DEAD_NL)))
rig.request("second refill during bridge", eng.change_concentration(
    RX.continuous(1000, RATE_NG), 0))  # fmt: skip

# Step through the bridge pulse by pulse so the instant the concentration switches is printed.
while eng.bridge_pulses_left():
    rig.run_to(eng.next_due_ms())
bridge_end_ms = eng.now_ms()
print("bridge done t=%d pulses=%d conc=%d" % (bridge_end_ms, eng.delivered - at_change, eng.conc))
rig.run_to(eng.next_due_ms())
print("conc now %d rate_ru=%d" % (eng.conc, eng.rate_ru()))
after_bridge = eng.delivered
rig.run_to(4 * _rig.DAY)

# Old-drug pulses in the bridge are the dead volume rounded up; after it, the count is the new
# programme's exact volume over the remaining time, within one pulse (credit carries over).
per_day_new = _rig.exact_pulses(rig.calib, RATE_NG, 1, 2000)
print("after bridge pulses=%d new per day=%d" % (eng.delivered - after_bridge, per_day_new))
rig.summary("conc=%d" % eng.conc)
if eng.conc != 2000 or eng.delivered - at_change < bridge:
    raise AssertionError("bridge did not complete")
