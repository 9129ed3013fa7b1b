# The bench tools' conversions between what a bench engineer asks for (a volume rate, a bolus
# volume) and what the pump is programmed with (ng/day, ng at its strength), exactly.

import math
from fractions import Fraction

from itbtools.trumpet import exact, num_text


def programmed_ng_per_day(rate_ul_h, conc_ug_per_ml):
    """The pump's programme for a volume rate: ng/day at its strength, to the nearest
    RATE_RES (10 ng/day). Integer arithmetic, as the board's snippet does it."""
    nl = exact(rate_ul_h) * 24_000  # nL/day
    num, den = nl.numerator, nl.denominator
    return (2 * num * conc_ug_per_ml + 10_000 * den) // (20_000 * den) * 10


def set_rate_ul_h(ng_per_day, conc_ug_per_ml):
    """The volume rate (uL/h, exact) a programme of ng_per_day delivers at its strength."""
    return Fraction(ng_per_day, 24 * conc_ug_per_ml)


def bolus_dose_ng(volume_ul, conc_ug_per_ml):
    """The dose (ng, to the nearest) that gives volume_ul at the pump's strength."""
    return math.floor(exact(volume_ul) * conc_ug_per_ml + Fraction(1, 2))


def programme_facts(rx, daily_dose_ng):
    """What a rate test replaces, for its report: the running programme's daily dose, steps,
    periodic boluses and patient bolus (the board's snippet writes the same dict)."""
    return {"daily_dose_ng": daily_dose_ng, "steps": [list(x) for x in rx.steps],
            "periodic": [list(x) for x in rx.periodic], "patient_dose_ng": rx.patient_dose_ng,
            "patient_max_per_24h": rx.patient_max_per_24h}  # fmt: skip


def programme_summary(facts):
    """One phrase for programme_facts(): what the user should know was replaced."""
    if facts is None:
        return "no programme"
    text = "a daily dose of %s ug in %d step%s" % (
        num_text(Fraction(facts["daily_dose_ng"], 1000)), len(facts["steps"]),
        "" if len(facts["steps"]) == 1 else "s")  # fmt: skip
    if facts["periodic"]:
        text += ", %d periodic bolus%s" % (len(facts["periodic"]),
                                           "" if len(facts["periodic"]) == 1 else "es")
    if facts["patient_max_per_24h"]:
        text += ", a patient bolus of %s ug" % num_text(Fraction(facts["patient_dose_ng"], 1000))
    return text
