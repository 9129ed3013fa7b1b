# Random prescriptions and command timelines, drawn through a small chooser interface so the same
# generator serves hypothesis (shrinkable draws) and the benchmark (a seeded random.Random).

import random

from hypothesis import strategies as st

from pump import engine as E
from pump import limits as L
from pump import rx as RX
from pump.intmath import ceil_div

SPARE_NL = L.HARD_MAX_RATE_NL_PER_DAY // 2  # half the maximum flow is left for boluses


class RandomChooser:
    def __init__(self, seed):
        self.r = random.Random(seed)

    def integer(self, lo, hi):
        return self.r.randint(lo, hi)

    def choice(self, seq):
        return seq[self.r.randrange(len(seq))]


class DataChooser:
    def __init__(self, data):
        self.data = data

    def integer(self, lo, hi):
        return self.data.draw(st.integers(lo, hi))

    def choice(self, seq):
        return self.data.draw(st.sampled_from(seq))


def _round10(v):
    return v - v % L.RATE_RES_NG_PER_DAY


def gen_bolus(g, conc, max_dose_ng=200_000):
    # Keep every bolus inside half the maximum flow so that overlaps stay valid, and above
    # the slowest bolus rate (MIN_BOLUS_NG_PER_DAY): at most dose * 7.2 s long.
    dose = g.integer(10, min(max_dose_ng, conc * 100))
    dur_min = max(L.BOLUS_MIN_S, ceil_div(dose * 1000 * 86400, conc * SPARE_NL // 4) + 1)
    dur_max = min(dur_min + 7200, dose * 86400 // L.MIN_BOLUS_NG_PER_DAY - 1)
    dur = g.integer(dur_min, max(dur_min, dur_max))
    return dose, dur


def gen_rx(g, conc=None, max_rate_ng=1_000_000):
    if conc is None:
        conc = g.choice(L.CONCENTRATIONS_UG_PER_ML)
    min_rate = _round10(ceil_div(L.HARD_MIN_RATE_NL_PER_DAY * conc, 1000) + 9)
    # Basal peak at most a quarter of the maximum flow at this concentration.
    top = min(max_rate_ng, _round10(L.HARD_MAX_RATE_NL_PER_DAY // 4 * conc // 1000))
    n = g.integer(1, 12)
    starts = sorted({0} | {g.integer(1, L.MINUTES_PER_DAY - 1) for _ in range(n - 1)})
    steps = [(s, _round10(g.integer(min_rate, top))) for s in starts]
    periodic = []
    k = g.integer(0, 3)
    if k:
        slot = L.MINUTES_PER_DAY // k
        for i in range(k):
            dose, dur = gen_bolus(g, conc)
            dur = min(dur, (slot - 1) * 60)
            if dur < L.BOLUS_MIN_S:
                continue
            dose = min(dose, dur * conc * (SPARE_NL // 4) // (1000 * 86400))
            if dose < 1:
                continue
            periodic.append((i * slot + g.integer(0, slot - 1 - ceil_div(dur, 60)), dose, dur))
    patient = {}
    if g.integer(0, 1):
        dose, dur = gen_bolus(g, conc, 100_000)
        patient = dict(
            patient_dose_ng=dose,
            patient_duration_s=dur,
            patient_lockout_s=max(dur, g.integer(L.LOCKOUT_MIN_S, 4 * 3600)),
            patient_max_per_24h=g.integer(1, 6),
        )
    return RX.Prescription(conc, steps, periodic, **patient)


def gen_timeline(g, horizon_ms, n_max=30):
    """A first programme and a time-ordered list of (t_ms, name, args)."""
    first = gen_rx(g)
    conc = first.conc_ug_per_ml
    rx = first
    cmds = []
    times = sorted(g.integer(1, horizon_ms) for _ in range(g.integer(0, n_max)))
    for t in times:
        kind = g.choice(("program", "bolus", "patient", "patient", "mode", "conc", "prime"))
        if kind == "program":
            rx = gen_rx(g, conc)
            cmds.append((t, "program", (rx,)))
        elif kind == "bolus":
            cmds.append((t, "bolus", gen_bolus(g, conc)))
        elif kind == "patient":
            cmds.append((t, "patient", ()))
        elif kind == "mode":
            cmds.append((t, "mode", (g.choice((E.MODE_MINIMUM, E.MODE_STOPPED)),)))
        elif kind == "conc":
            new_conc = g.choice(L.CONCENTRATIONS_UG_PER_ML)
            new_rx = gen_rx(g, new_conc) if g.integer(0, 1) else rx.with_concentration(new_conc)
            if RX.validate(new_rx, _lim()) is not None:
                continue
            conc = new_conc
            rx = new_rx
            cmds.append((t, "conc", (new_rx, g.integer(0, 300_000))))
        else:
            cmds.append((t, "prime", (g.integer(1, 300_000),)))
    return first, cmds


def _lim():
    from host_tests.exactness import GENEROUS

    return GENEROUS
