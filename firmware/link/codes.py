# The protocol's numbers (docs/protocol.md): op codes, roles, results, enums, and who may do what.
# Every code is built from the 8-bit codewords below, which differ pairwise in at least 4 bits,
# so a flipped bit (or three) cannot turn one valid code into another; it makes an invalid one.

from pump.compat import const

# The extended Hamming [8,4,4] codewords without 0x00 (an all-zero field is a likely default,
# never a meaning).
WORDS = (0x0F, 0x33, 0x3C, 0x55, 0x5A, 0x66, 0x69, 0x96, 0x99, 0xA5, 0xAA, 0xC3, 0xCC, 0xF0, 0xFF)

# ---- roles ----
PATIENT = const(0x33)
CLINICIAN = const(0x5A)
ROLE_NAMES = {PATIENT: "patient", CLINICIAN: "clinician"}

# ---- booleans and modes in operands ----
NO = const(0x0F)
YES = const(0xF0)
MODE_STOP = const(0x33)
MODE_RUN = const(0x55)
MODE_MINIMUM = const(0x3C)

# ---- alarm types: the pump's alarm ids 1..10 (pump/alarms.py) as codewords ----
ALARM_CODES = (0, 0x0F, 0x33, 0x3C, 0x55, 0x5A, 0x66, 0x69, 0x96, 0x99, 0xA5)  # by alarm id
ALARM_IDS = {code: cid for cid, code in enumerate(ALARM_CODES) if cid}

# ---- op codes (u16): the high byte names the control point ----
# Authentication control point: no session yet, so no counter and no MAC.
AUTH_START = const(0x0F33)  # client: role, client nonce
AUTH_PROOF = const(0x0F3C)  # client: proof of the role key
AUTH_END = const(0x0F55)  # client: end the session
AUTH_CHALLENGE = const(0x0F5A)  # pump: pump nonce, pump id
AUTH_RESULT = const(0x0F66)  # pump: result, pump proof, last counter

# Status reader control point: reads, any role.
STATUS_RESPONSE = const(0x330F)
GET_STATUS = const(0x3333)
GET_PROGRAMME = const(0x333C)
GET_LIMITS = const(0x3355)
GET_ALARMS = const(0x335A)
GET_REFILL = const(0x3366)
RESET_CHANGED = const(0x3369)

# Command control point: changes.
COMMAND_RESPONSE = const(0x3C0F)
STAGE = const(0x3C33)
COMMIT = const(0x3C3C)
SET_MODE = const(0x3C55)
SET_LIMITS = const(0x3C5A)
CLINICIAN_BOLUS = const(0x3C66)
PATIENT_BOLUS = const(0x3C69)
ACK_ALARM = const(0x3C96)
SNOOZE_ALARM = const(0x3C99)
CLEAR_FAULT = const(0x3CA5)
PRIME = const(0x3CAA)
SET_LOW_THRESHOLD = const(0x3CC3)
ALARM_TEST = const(0x3CCC)
SET_CLOCK = const(0x3CF0)
REFILL_BEGIN = const(0x5A33)
REFILL_FILL = const(0x5A3C)
REFILL_COMMIT = const(0x5A55)
REFILL_ABANDON = const(0x5A5A)

# History record access control point (no deletion op exists).
RACP_RESPONSE = const(0x550F)
RACP_REPORT = const(0x5533)
RACP_COUNT = const(0x553C)
RACP_ABORT = const(0x5555)

# ---- results (u8), in the response's result field ----
SUCCESS = const(0x0F)
UNKNOWN_OP = const(0x33)  # not an op code of this control point
BAD_LENGTH = const(0x3C)  # the frame is not the op code's exact length
BAD_CRC = const(0x55)  # the end-to-end CRC does not match
DUPLICATE = const(0x5A)  # the end-to-end counter repeats the last frame's
NO_SESSION = const(0x66)  # no authenticated session on this connection
BAD_MAC = const(0x69)  # the command's MAC is wrong
REPLAYED = const(0x96)  # the command counter is not above every counter used before
NOT_ALLOWED = const(0x99)  # the session's role may not do this
REFUSED = const(0xA5)  # the pump refused it; the reason is in the response data
BAD_OPERAND = const(0xAA)  # an operand is outside its encoding (not a code, reserved bits)
LOCKED_OUT = const(0xC3)  # too many failed authentications: wait
NOT_SAVED = const(0xCC)  # done, but it could not be saved (storage failing)
BUSY = const(0xF0)  # another procedure runs on this connection
INSECURE = const(0xFF)  # the link is not encrypted and authenticated (LE Secure Connections)
RESULT_NAMES = {
    SUCCESS: "success", UNKNOWN_OP: "unknown op code", BAD_LENGTH: "wrong length",
    BAD_CRC: "bad CRC", DUPLICATE: "duplicate frame", NO_SESSION: "no session",
    BAD_MAC: "bad MAC", REPLAYED: "replayed counter", NOT_ALLOWED: "not allowed for this role",
    REFUSED: "refused", BAD_OPERAND: "bad operand", LOCKED_OUT: "locked out",
    NOT_SAVED: "not saved", BUSY: "busy", INSECURE: "link not secure",
}  # fmt: skip

# ---- who may do what: deny by default ----
_BOTH = (PATIENT, CLINICIAN)
_CLIN = (CLINICIAN,)
ALLOWED = {
    GET_STATUS: _BOTH, GET_PROGRAMME: _BOTH, GET_LIMITS: _BOTH, GET_ALARMS: _BOTH,
    GET_REFILL: _CLIN, RESET_CHANGED: _BOTH,
    STAGE: _CLIN, COMMIT: _CLIN, SET_MODE: _CLIN, SET_LIMITS: _CLIN, CLINICIAN_BOLUS: _CLIN,
    PATIENT_BOLUS: _BOTH, ACK_ALARM: _BOTH, SNOOZE_ALARM: _BOTH, CLEAR_FAULT: _CLIN,
    PRIME: _CLIN, SET_LOW_THRESHOLD: _CLIN, ALARM_TEST: _CLIN, SET_CLOCK: _CLIN,
    REFILL_BEGIN: _CLIN, REFILL_FILL: _CLIN, REFILL_COMMIT: _CLIN, REFILL_ABANDON: _CLIN,
    RACP_REPORT: _BOTH, RACP_COUNT: _BOTH, RACP_ABORT: _BOTH,
}  # fmt: skip
STATUS_OPS = (GET_STATUS, GET_PROGRAMME, GET_LIMITS, GET_ALARMS, GET_REFILL, RESET_CHANGED)
COMMAND_OPS = (STAGE, COMMIT, SET_MODE, SET_LIMITS, CLINICIAN_BOLUS, PATIENT_BOLUS, ACK_ALARM,
               SNOOZE_ALARM, CLEAR_FAULT, PRIME, SET_LOW_THRESHOLD, ALARM_TEST, SET_CLOCK,
               REFILL_BEGIN, REFILL_FILL, REFILL_COMMIT, REFILL_ABANDON)  # fmt: skip
RACP_OPS = (RACP_REPORT, RACP_COUNT, RACP_ABORT)
