# Scenario (e): priming the catheter from the stopped mode, then starting the programme.
# Priming runs at the clinician's maximum rate, delivers the requested volume, and is counted
# by the limiter like any dose.
# req: SR-34, SR-36

import _rig

from pump import engine as E
from pump import rx as RX

CONC = 500
PRIME_NL = 150_000
H = _rig.HOUR

rig = _rig.Rig(CONC)
eng = rig.eng
print("mode=%d" % eng.mode)
rig.request("prime too much", eng.prime(2_000_000))
rig.request("prime", eng.prime(PRIME_NL))
print("prime rate_ru=%d min_gap_ms=%d" % (eng.rate_ru(), rig.limiter.min_gap_ms))
rig.request("second prime while priming", eng.prime(PRIME_NL))

first = None
while eng.streams():
    rig.run_to(eng.next_due_ms())
    if first is None and eng.delivered:
        first = eng.now_ms()
primed = eng.delivered
# Volume exactness in integers: primed pulses * pulse volume against the request, in 1e-6 nL.
vol_pnl = primed * rig.calib.ml_num * 10**12 // rig.calib.ml_den
print("primed pulses=%d needed=%d volume_pnl=%d window_ng=%d" % (
    primed, rig.calib.pulses_for_nl(PRIME_NL), vol_pnl, rig.limiter.window_ng))  # fmt: skip

rig.run_to(eng.now_ms() + 5 * 60_000)
rig.request("program", eng.program(RX.continuous(CONC, 350_000), confirm=True))
rig.request("prime while programmed", eng.prime(PRIME_NL))
rig.run_to(H)
print("mode=%d program=%d" % (eng.mode, eng.mode == E.MODE_PROGRAM))
rig.run_to(_rig.DAY)
rig.summary("primed=%d" % primed)
