# Drives the engine and the independent reference model through one command timeline and
# measures the worst |delivered - programmed| in pulse quanta. Used by tests and by bench.

from fractions import Fraction as F

from host_tests.reference import Programmed
from pump import calib as CAL
from pump import engine as E
from pump import limits as L
from pump import rx as RX
from pump.limiter import Limiter

REF_CALIB = CAL.from_geometry(14500, 800, 200, 16, 16)
GENEROUS = L.ClinicianLimits(
    L.HARD_MAX_24H_NG, L.HARD_MAX_BOLUS_NG, L.HARD_MAX_RATE_NL_PER_DAY, L.DOSE_STEP_PCT_MAX
)


class Outcome:
    def __init__(self):
        self.max_error = F(0)
        self.pulses = 0
        self.wakeups = 0
        self.accepted = 0
        self.refused = 0
        self.blocked = 0


def run_timeline(first_rx, commands, horizon_ms, lim=GENEROUS, calib=REF_CALIB):
    """first_rx starts at t=0; commands are (t_ms, name, args) in time order."""
    out = Outcome()
    limiter = Limiter(calib, lim, first_rx.conc_ug_per_ml)
    eng = E.Engine(calib, limiter, lim, first_rx.conc_ug_per_ml)
    ref = Programmed(calib, first_rx.conc_ug_per_ml)
    if eng.program(first_rx, confirm=True) is not None:
        raise ValueError("first programme refused")
    ref.program(first_rx)

    def error_at(t, delivered):
        p = ref.p_at(t)
        err = abs(p - delivered)
        if err > out.max_error:
            out.max_error = err

    def on_pulse(t):
        k = eng.delivered
        if t > ref.t:
            error_at(t - 1, k - 1)  # just before the pulse: the most behind we ever are
        error_at(t, k)  # just after it: the most ahead we ever are

    for t, name, args in commands:
        if t > horizon_ms:
            break
        eng.run_until(t, on_pulse)
        if eng.fault:
            out.blocked += 1
            break
        error_at(t, eng.delivered)
        bad = _apply(eng, name, args)
        if bad is None:
            out.accepted += 1
            _apply_ref(ref, name, args)
        else:
            out.refused += 1
    if not eng.fault:
        eng.run_until(horizon_ms, on_pulse)
        error_at(horizon_ms, eng.delivered)
    out.blocked += eng.limiter.blocked
    out.pulses = eng.delivered
    out.wakeups = eng.wakeups
    return out


def _apply(eng, name, args):
    if name == "program":
        return eng.program(args[0], confirm=True)
    if name == "bolus":
        return eng.clinician_bolus(*args)
    if name == "patient":
        return eng.patient_bolus()
    if name == "mode":
        return eng.set_mode(args[0])
    if name == "conc":
        return eng.change_concentration(*args)
    if name == "prime":
        return eng.prime(*args)
    raise ValueError(name)


def _apply_ref(ref, name, args):
    if name == "program":
        ref.program(args[0])
    elif name in ("bolus",):
        ref.add_stream(args[0], args[1] * 1000)
    elif name == "patient":
        ref.add_stream(ref.rx.patient_dose_ng, ref.rx.patient_duration_s * 1000)
    elif name == "mode":
        ref.set_mode("minimum" if args[0] == E.MODE_MINIMUM else "stopped")
    elif name == "conc":
        ref.change_concentration(*args)
    elif name == "prime":
        ref.prime(args[0], GENEROUS.max_rate_nl_per_day)


def rx_valid(rx, lim=GENEROUS):
    return RX.validate(rx, lim) is None
