# Reason codes for refused requests and the Refusal record that carries one with its field.
# A refused request changes nothing; the code says why, the field says where.

from pump.compat import const

BELOW_MIN = const(1)
ABOVE_MAX = const(2)
RESOLUTION = const(3)
NOT_ALLOWED = const(4)  # value not in an allowed set (e.g. a drug strength)
ORDER = const(5)  # schedule times not ascending, or the first step not at 00:00
TOO_MANY = const(6)
OVERLAP = const(7)  # periodic boluses overlap each other
DAILY_LIMIT = const(8)  # programme or request would pass the rolling 24 h dose limit
RATE_LIMIT = const(9)  # total flow would pass the maximum rate
NEEDS_CONFIRM = const(10)  # daily dose increase beyond the step needs explicit confirmation
LOCKOUT = const(11)  # patient bolus inside the lockout interval
BOLUS_COUNT = const(12)  # patient boluses per rolling 24 h used up
BOLUS_ACTIVE = const(13)  # a bolus of that kind is already running
NOT_PERMITTED = const(14)  # the programme allows no patient bolus
FAULTED = const(15)  # delivery is stopped by a safety fault; clear it first
BRIDGE_ACTIVE = const(16)  # a bridge bolus is still running
BAD_MODE = const(17)
ABOVE_BOLUS_LIMIT = const(18)
FLOW_TOO_LOW = const(19)  # a bolus so slow its flow is below the pump's minimum
NOT_ACTIVE = const(20)  # no such alarm, or no refill in progress
ALREADY_DONE = const(21)
STEP_ORDER = const(22)  # a refill step out of its order
OVER_CAPACITY = const(23)  # more than the reservoir holds
CLOCK_UNSET = const(24)  # the clock was lost: set it before changing the schedule
NO_STAGED = const(25)  # nothing staged to commit, or it no longer matches
STORAGE_FAILED = const(26)  # saving state fails: nothing new is accepted that could be lost

NAMES = {
    BELOW_MIN: "below minimum",
    ABOVE_MAX: "above maximum",
    RESOLUTION: "not a multiple of the resolution",
    NOT_ALLOWED: "not an allowed value",
    ORDER: "times out of order",
    TOO_MANY: "too many entries",
    OVERLAP: "boluses overlap",
    DAILY_LIMIT: "would exceed the 24 h dose limit",
    RATE_LIMIT: "would exceed the maximum rate",
    NEEDS_CONFIRM: "daily dose increase needs confirmation",
    LOCKOUT: "inside the lockout interval",
    BOLUS_COUNT: "boluses per 24 h used up",
    BOLUS_ACTIVE: "a bolus is already running",
    NOT_PERMITTED: "not permitted by the programme",
    FAULTED: "delivery is stopped by a safety fault",
    BRIDGE_ACTIVE: "a bridge bolus is running",
    BAD_MODE: "not allowed in this mode",
    ABOVE_BOLUS_LIMIT: "above the single-bolus limit",
    FLOW_TOO_LOW: "flow below the pump's minimum",
    NOT_ACTIVE: "nothing of that kind is active",
    ALREADY_DONE: "already done",
    STEP_ORDER: "refill step out of order",
    OVER_CAPACITY: "more than the reservoir holds",
    CLOCK_UNSET: "the clock must be set first",
    NO_STAGED: "no staged programme to commit",
    STORAGE_FAILED: "the pump cannot save its state",
}


class Refusal:
    """Why a request was refused: a reason code and the field it concerns."""

    __slots__ = ("code", "field")

    def __init__(self, code, field):
        self.code = code
        self.field = field

    def __eq__(self, other):
        return isinstance(other, Refusal) and self.code == other.code and self.field == other.field

    def __repr__(self):
        return "Refusal(%s: %s)" % (self.field, NAMES.get(self.code, self.code))

    def message(self):
        return "%s: %s" % (self.field, NAMES.get(self.code, "refused"))
