# Hard limits of the pump (fixed in firmware) and the clinician limits that must sit inside them.
# Every number here is a design decision recorded in docs/dosing.md; units are in the names.

from pump.compat import const

DAY_MS = const(86_400_000)
MIN_MS = const(60_000)
MINUTES_PER_DAY = const(1440)

# Dose rates are programmed in ng/day with this resolution (0.01 ug/day); the engine works in
# these "rate units" so that every pulse period is a ratio of integers below 2**30.
RATE_RES_NG_PER_DAY = const(10)

# Allowed drug strengths (ug/mL), the ones baclofen is supplied in.
CONCENTRATIONS_UG_PER_ML = (50, 500, 1000, 2000)

HARD_MAX_24H_NG = const(3_000_000)  # 3000 ug in any rolling 24 h, basal and boluses together
HARD_MAX_BOLUS_NG = const(500_000)  # 500 ug per single bolus
HARD_MAX_RATE_NL_PER_DAY = const(24_000_000)  # 1 mL/h: the priming rate and the ceiling
HARD_MIN_RATE_NL_PER_DAY = const(6_000)  # slowest non-zero flow; also the minimum-rate mode
HARD_MAX_PRIME_NL = const(1_000_000)  # 1 mL: longer than any catheter plus pump dead space

# Slowest bolus dose rate: the minimum flow at the strongest drug, so that no flow the engine
# runs is ever below the minimum (which bounds the pulse period below 2**30 ms).
MIN_BOLUS_NG_PER_DAY = const(12_000)

MAX_STEPS = const(24)
MAX_PERIODIC = const(24)

BOLUS_MIN_S = const(60)
BOLUS_MAX_S = const(86_400)
LOCKOUT_MIN_S = const(600)
LOCKOUT_MAX_S = const(86_400)
PATIENT_MAX_PER_24H = const(24)

DOSE_STEP_PCT_MIN = const(1)
DOSE_STEP_PCT_MAX = const(100)
DOSE_STEP_PCT_DEFAULT = const(30)


class ClinicianLimits:
    """Limits a clinician sets inside the hard limits; always given explicitly, never defaulted."""

    __slots__ = ("max_24h_ng", "max_bolus_ng", "max_rate_nl_per_day", "dose_step_pct")

    def __init__(self, max_24h_ng, max_bolus_ng, max_rate_nl_per_day, dose_step_pct):
        self.max_24h_ng = max_24h_ng
        self.max_bolus_ng = max_bolus_ng
        self.max_rate_nl_per_day = max_rate_nl_per_day
        self.dose_step_pct = dose_step_pct

    def as_tuple(self):
        return (self.max_24h_ng, self.max_bolus_ng, self.max_rate_nl_per_day, self.dose_step_pct)


# (field, low, high) for every clinician limit; validation walks this table.
LIMIT_RANGES = (
    ("max_24h_ng", 1, HARD_MAX_24H_NG),
    ("max_bolus_ng", 1, HARD_MAX_BOLUS_NG),
    ("max_rate_nl_per_day", HARD_MIN_RATE_NL_PER_DAY, HARD_MAX_RATE_NL_PER_DAY),
    ("dose_step_pct", DOSE_STEP_PCT_MIN, DOSE_STEP_PCT_MAX),
)
