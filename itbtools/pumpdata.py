# pumpctl's reading of what the pump sends (docs/protocol.md, "Data formats"; docs/storage.md,
# "The event log") and the words and numbers a clinician sees. Pure: no radio, no terminal.
"""Doses stay integers (ng, nL) until they are shown: the display rounds exact fractions."""

import datetime
import hashlib
import json
import struct
from fractions import Fraction

from link import codes as K
from link import service as SV
from link import wire as W
from pump import alarms as A
from pump import codec as C
from pump import reasons as R
from pump import rx as RX
from pump import store as ST

DAY_MS = 86_400_000
MIN_PER_DAY = 1440

STATE_WORDS = {K.MODE_STOP: "stopped", K.MODE_RUN: "running the programme",
               K.MODE_MINIMUM: "minimum rate"}  # fmt: skip
FLAG_WORDS = (
    (SV.FLAG_FAULT, "stopped by a safety fault"),
    (SV.FLAG_BOLUS, "a bolus is running"),
    (SV.FLAG_REFILL_OPEN, "a refill is open"),
    (SV.FLAG_STAGED, "a programme is staged"),
    (SV.FLAG_CLOCK_UNSET, "the clock is unset (the held rate runs)"),
    (SV.FLAG_STORAGE_FAILING, "storage failing"),
    (SV.FLAG_RESERVOIR_LOW, "reservoir at or below the low threshold"),
)
# The alarm types of docs/protocol.md ("Alarm"), by the pump's alarm name.
ALARM_WORDS = {
    "motor_stall": "stall or occlusion",
    "reservoir_empty": "reservoir empty",
    "battery_eos": "battery end of service",
    "limiter_block": "limiter block (delivery stopped)",
    "self_test": "self-test or storage fault",
    "battery_eri": "battery replacement due (ERI)",
    "reservoir_low": "reservoir low",
    "accounting_discrepancy": "refill discrepancy",
    "clock": "clock lost or jumped",
    "refill_due": "refill due",
}
ALARM_CODE_BY_NAME = {A.name(cid): K.ALARM_CODES[cid] for cid in A.TABLE}
# Where a refusal points (the pump's field names), in words.
FIELD_WORDS = {
    "patient": "the patient bolus",
    "steps": "the daily steps",
    "periodic": "the periodic boluses",
    "conc_ug_per_ml": "the strength",
    "mode": "the therapy mode",
    "fault": "the fault",
    "clock": "the clock",
    "wall_ms": "the time",
    "refill": "the refill",
    "withdrawn_nl": "the withdrawn volume",
    "fill_nl": "the fill volume",
    "alarm": "the alarm",
    "alarm_test": "the alarm test",
    "staged": "the staged programme",
    "storage": "the pump's storage",
    "duration_ms": "the bolus duration",
    "dose_ng": "the bolus dose",
    "bolus": "the bolus",
    "prime": "the priming bolus",
    "max_24h_ng": "the 24 h dose limit",
}


class DataError(ValueError):
    """The pump's data is not in the documented format (one sentence)."""


# ---- numbers ---------------------------------------------------------------------------


def decimal_text(value, places):
    """An exact Fraction (or int) rounded half up to at most `places` decimals, without
    trailing zeros: 12.5, 0.025, 300."""
    q = Fraction(value) * 10**places
    neg = q < 0
    n = int(abs(q) + Fraction(1, 2))
    whole, frac = divmod(n, 10**places)
    text = str(whole)
    if places and frac:
        text += "." + ("%0*d" % (places, frac)).rstrip("0")
    return ("-" if neg and n else "") + text


def ug(ng):
    return decimal_text(Fraction(ng, 1000), 3)


def ml(nl):
    return decimal_text(Fraction(nl, 1_000_000), 3)


def ul_per_h(ng_per_day, conc_ug_per_ml):
    """The volume rate of a dose rate at a strength: ng/day over ng/µL, per 24 h."""
    if not conc_ug_per_ml:
        return "-"
    return decimal_text(Fraction(ng_per_day, conc_ug_per_ml * 24), 2)


def nl_per_day(ng_per_day, conc_ug_per_ml):
    """Exact nL/day (a Fraction) of a dose rate at a strength."""
    return Fraction(ng_per_day * 1000, conc_ug_per_ml)


def hhmm(minute):
    return "%02d:%02d" % (minute // 60, minute % 60)


def wall_text(wall_ms):
    """A pump wall time (local ms since 1970) as 'YYYY-MM-DD HH:MM:SS'."""
    if wall_ms is None or not isinstance(wall_ms, int) or wall_ms < 0:
        return "-"
    t = datetime.datetime(1970, 1, 1) + datetime.timedelta(milliseconds=wall_ms)
    return t.strftime("%Y-%m-%d %H:%M:%S")


def local_wall_ms(dt):
    """A naive local datetime as the pump's wall ms (local time counted as if it were UTC)."""
    delta = dt - datetime.datetime(1970, 1, 1)
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


# ---- records ---------------------------------------------------------------------------


def _need(data, n, what):
    if len(data) != n:
        raise DataError("The pump's %s is %d bytes, not the %d documented." % (what, len(data), n))


def status(data):
    _need(data, 14, "status")
    state, flags, res_nl, conc, rate, n_alarms, top = struct.unpack("<BBIHIBB", data)
    return {
        "state": state,
        "state_text": STATE_WORDS.get(state, "unknown (0x%02X)" % state),
        "flags": flags,
        "flag_texts": [t for bit, t in FLAG_WORDS if flags & bit],
        "reservoir_nl": res_nl,
        "conc": conc,
        "rate_ng_per_day": rate,
        "alarms": n_alarms,
        "top_alarm": top,
    }


def alarm_name(code):
    cid = K.ALARM_IDS.get(code)
    return A.name(cid) if cid else "alarm 0x%02X" % code


def alarm_text(code):
    name = alarm_name(code)
    return ALARM_WORDS.get(name, name)


def alarms(data):
    if len(data) % 12:
        raise DataError("The pump's alarm list is not a whole number of 12-byte entries.")
    out = []
    for at in range(0, len(data), 12):
        code, prio, present, acked, snooze = struct.unpack_from("<BBBBQ", data, at)
        out.append({"code": code, "name": alarm_name(code), "text": alarm_text(code),
                    "priority": A.PRIORITY_NAMES[prio] if prio < 4 else str(prio),
                    "present": present == K.YES, "acknowledged": acked == K.YES,
                    "snoozed_until_ms": snooze})  # fmt: skip
    return out


def limits(data):
    _need(data, 13, "limits")
    return dict(zip(("max_24h_ng", "max_bolus_ng", "max_rate_nl_per_day", "dose_step_pct"),
                    struct.unpack("<IIIB", data), strict=True))  # fmt: skip


def features(data):
    _need(data, 20, "features")
    keys = ("version", "max_24h_ng", "max_bolus_ng", "max_rate_nl_per_day", "dose_step_pct",
            "capacity_nl", "conc")  # fmt: skip
    return dict(zip(keys, struct.unpack("<BIIIBIH", data), strict=True))


def refill(data):
    """The open refill, or None."""
    if not data:
        return None
    _need(data, 22, "refill status")
    withdrawn, expected, tol, disc, fill, conc = struct.unpack("<IIIiIH", data)
    if disc != withdrawn - expected:
        raise DataError("The pump's refill status does not add up.")
    return {"withdrawn_nl": withdrawn, "expected_nl": expected, "tolerance_nl": tol,
            "difference_nl": disc,
            # Out of tolerance, as the pump judges it (docs/protocol.md, GET_REFILL).
            "discrepancy": abs(disc) > tol,
            "fill_nl": fill, "conc": conc}  # fmt: skip


def programmes(data):
    """(running, staged): each None or (Prescription, daily dose ng, CRC-32)."""
    out = []
    at = 0
    for _ in range(2):
        if at + 2 > len(data):
            raise DataError("The pump's programme list is cut short.")
        (n,) = struct.unpack_from("<H", data, at)
        at += 2
        if n == 0:
            out.append(None)
            continue
        if at + n + 8 > len(data):
            raise DataError("The pump's programme list is cut short.")
        raw = data[at : at + n]
        try:
            r = W.Reader(raw)
            rx = W.read_rx(r, RX.Prescription)
            r.done()
        except W.Bad:
            raise DataError("The pump sent a prescription that cannot be read.") from None
        daily, crc = struct.unpack_from("<II", data, at + n)
        if crc != W.crc32(raw):
            raise DataError("The pump's programme does not match its own CRC.")
        out.append((rx, daily, crc))
        at += n + 8
    if at != len(data):
        raise DataError("The pump's programme list has bytes left over.")
    return out[0], out[1]


def refusal_text(what, reply):
    """One sentence for a reply that is not SUCCESS."""
    if reply.result == K.REFUSED:
        reason = reply.reason()
        if reason is None:
            return "The pump refused %s." % what
        code, field = reason
        words = R.NAMES.get(code, "reason %d" % code)
        return "The pump refused %s: %s (%s)." % (what, words, field_text(field))
    if reply.result == K.NOT_ALLOWED:
        return "The pump refused %s: not allowed for this key file's role." % what
    if reply.result == K.NOT_SAVED:
        return ("The pump did %s but could not save it: a power cut would undo it; check the "
                "pump's storage." % what)  # fmt: skip
    if reply.result == K.LOCKED_OUT:
        return "The pump refused %s: too many failed authentications, wait and retry." % what
    if reply.result == K.BUSY:
        return "The pump refused %s: another procedure is running on this link." % what
    name = K.RESULT_NAMES.get(reply.result, "code 0x%02X" % reply.result)
    return "The pump rejected the frame for %s (%s)." % (what, name)


def field_text(field):
    if field in FIELD_WORDS:
        return FIELD_WORDS[field]
    base = field.split("[")[0].split(".")[0]
    if base in FIELD_WORDS:
        return "%s: %s" % (FIELD_WORDS[base], field)
    return field.replace("_", " ")


# ---- prescriptions, for the side-by-side view -------------------------------------------


def step_lines(rx):
    """'HH:MM-HH:MM  X µg/day  (Y µL/h)' per step."""
    lines = []
    steps = rx.steps
    for i, (start, rate) in enumerate(steps):
        end = steps[i + 1][0] if i + 1 < len(steps) else MIN_PER_DAY
        lines.append("%s-%s  %s µg/day  (%s µL/h)" % (hhmm(start), hhmm(end),
                                                     ug(rate), ul_per_h(rate,
                                                                        rx.conc_ug_per_ml)))
        # fmt: skip
    return lines


def periodic_lines(rx):
    if not rx.periodic:
        return ["none"]
    return ["%s  %s µg over %s min" % (hhmm(start), ug(dose), decimal_text(Fraction(dur, 60), 1))
            for start, dose, dur in rx.periodic]  # fmt: skip


def patient_line(rx):
    if rx.patient_max_per_24h <= 0:
        return "not permitted"
    return "%s µg over %s min, lockout %s min, at most %d per 24 h" % (
        ug(rx.patient_dose_ng), decimal_text(Fraction(rx.patient_duration_s, 60), 1),
        decimal_text(Fraction(rx.patient_lockout_s, 60), 1), rx.patient_max_per_24h)
    # fmt: skip


def worst_daily_ng(rx):
    """The programme's day plus every patient bolus it allows in 24 h."""
    n = 0
    if rx.patient_max_per_24h > 0 and rx.patient_lockout_s > 0:
        n = min(rx.patient_max_per_24h, -(-DAY_MS // (rx.patient_lockout_s * 1000)))
    return RX.daily_dose_ng(rx) + n * rx.patient_dose_ng


def lasts(reservoir_nl, daily_ng, conc, today):
    """(days as a Fraction, the date) the reservoir lasts at a daily dose; None if nothing
    flows."""
    if daily_ng <= 0 or conc <= 0:
        return None
    days = Fraction(reservoir_nl) / nl_per_day(daily_ng, conc)
    return days, today + datetime.timedelta(days=int(days))


# ---- the event log ---------------------------------------------------------------------


def _plain(v):
    """A JSON-friendly copy of a decoded log value (bytes as hex)."""
    if isinstance(v, bytes):
        return v.hex()
    if isinstance(v, list):
        return [_plain(x) for x in v]
    return v


def history(data):
    """(records, problems) of a RACP report's data: each record checked (frame, CRC, kind) and
    the hash chain followed. records: dicts with seq, wall_ms, time, event, args."""
    records = []
    problems = []
    at = 0
    prev = None
    while at < len(data):
        try:
            n = C.record_length(data, at)
            ver, kind, seq = C.header(data, at)
            if kind != ST.LOG_KIND or ver != ST.VERSION:
                raise C.FormatError("not a log record of this version")
            raw = bytes(data[at : at + n])
            value = C.decode(raw[C.FRAME_LEN : n - C.CRC_LEN])
            link, wall_ms, event, args = value
        except (C.FormatError, ValueError, TypeError) as e:
            problems.append("record at byte %d cannot be read (%s)" % (at, e))
            break
        if prev is not None:
            if seq != prev[0] + 1:
                problems.append("sequence jumps from %d to %d" % (prev[0], seq))
            elif link != prev[1]:
                problems.append("hash chain broken at %d" % seq)
        prev = (seq, hashlib.sha256(raw).digest()[: ST.HASH_LEN])
        records.append({"seq": seq, "wall_ms": wall_ms, "time": wall_text(wall_ms),
                        "event": event, "args": _plain(args)})  # fmt: skip
        at += n
    return records, problems


# Op codes by value, to show a logged command by name (every op code is above 0xFF).
OP_NAMES = {v: n for n, v in vars(K).items() if n.isupper() and type(v) is int and v > 0xFF}


def args_text(event, args, width=70):
    """A record's arguments for the table: radio commands with op and result names."""
    if event in ("ble_command", "ble_refused") and len(args) == 4:
        args = args[:2] + [OP_NAMES.get(args[2], args[2]),
                           K.RESULT_NAMES.get(args[3], args[3])]  # fmt: skip
    text = json.dumps(args, separators=(",", ":"), ensure_ascii=False)
    return text if len(text) <= width else text[: width - 1] + "…"
