# Byte layouts of the radio protocol (docs/protocol.md): the end-to-end seal, authentication,
# command and response frames, and the operands. Strict: a frame is its exact length or refused.

import hashlib
import struct

from link import codes as K
from link.crc16 import crc16
from link.mac import equal, hmac_sha256  # noqa: F401 (equal: for the service)
from pump.codec import crc32  # noqa: F401 (names a staged prescription's encoding in COMMIT)

E2E_LEN = 3  # counter u8, CRC-16 u16
NONCE_LEN = 12
PROOF_LEN = 15  # the client's proof of its role key (fits a 20-byte ATT payload)
PUMP_PROOF_LEN = 10
MAC_LEN = 8
CMD_HEAD = "<HI"  # op code, counter
TO_PUMP = b"\x00"
FROM_PUMP = b"\x01"
sha256 = hashlib.sha256
EMPTY_DIGEST = sha256(b"").digest()
_LABEL_CLIENT = b"itb client proof"
_LABEL_PUMP = b"itb pump proof"
_LABEL_SESSION = b"itb session key"


class Bad(Exception):
    """A frame that is refused: code is the result code to answer with."""

    def __init__(self, code, why):
        super().__init__(why)
        self.code = code


# ---- the end-to-end seal: safety against corruption and duplicates, not security ----


def seal(body, counter):
    out = bytearray(body)
    out.append(counter & 0xFF)
    c = crc16(out)
    out.append(c & 0xFF)
    out.append(c >> 8)
    return bytes(out)


def unseal(frame):
    """(body, counter) of a sealed frame, or Bad."""
    if len(frame) < E2E_LEN + 1:
        raise Bad(K.BAD_LENGTH, "nothing inside the seal")
    n = len(frame) - 2
    if crc16(memoryview(frame)[:n]) != frame[n] | frame[n + 1] << 8:
        raise Bad(K.BAD_CRC, "end-to-end CRC mismatch")
    return bytes(frame[: n - 1]), frame[n - 1]


def op_of(body):
    return body[0] | body[1] << 8


# ---- authentication: role keys never leave the pump or the key file ----


def client_proof(key, pump_id, role, nc, np):
    return hmac_sha256(key, _LABEL_CLIENT, pump_id, bytes((role,)), nc, np)[:PROOF_LEN]


def pump_proof(key, pump_id, role, nc, np):
    return hmac_sha256(key, _LABEL_PUMP, pump_id, bytes((role,)), nc, np)[:PUMP_PROOF_LEN]


def session_key(key, pump_id, role, nc, np):
    return hmac_sha256(key, _LABEL_SESSION, pump_id, bytes((role,)), nc, np)


def auth_start(role, nc):
    return struct.pack("<HB", K.AUTH_START, role) + bytes(nc)


def auth_challenge(np):
    return struct.pack("<H", K.AUTH_CHALLENGE) + bytes(np)


def auth_proof(proof):
    return struct.pack("<H", K.AUTH_PROOF) + bytes(proof)


def auth_result(result, proof, last_counter):
    return struct.pack("<HB", K.AUTH_RESULT, result) + bytes(proof) + struct.pack(
        "<I", last_counter
    )


# ---- commands (client to pump) and responses (pump to client) ----


def command_mac(sk, op, counter, operand):
    return hmac_sha256(sk, TO_PUMP, struct.pack(CMD_HEAD, op, counter), operand)[:MAC_LEN]


def command(sk, op, counter, operand=b""):
    """A command body (before the seal)."""
    return struct.pack(CMD_HEAD, op, counter) + bytes(operand) + command_mac(sk, op, counter,
                                                                             operand)  # fmt: skip


def parse_command(body):
    """(op, counter, operand, mac) of a command body; the MAC is not checked here."""
    if len(body) < 6 + MAC_LEN:
        raise Bad(K.BAD_LENGTH, "shorter than a command")
    op, counter = struct.unpack_from(CMD_HEAD, body, 0)
    return op, counter, bytes(body[6:-MAC_LEN]), bytes(body[-MAC_LEN:])


def check_command_mac(sk, op, counter, operand, mac):
    return equal(command_mac(sk, op, counter, operand), mac)


def response_mac(sk, resp_op, req_op, counter, result, digest):
    head = struct.pack("<HHIB", resp_op, req_op, counter, result)
    return hmac_sha256(sk, FROM_PUMP, head, digest)[:MAC_LEN]


def response(sk, resp_op, req_op, counter, result, digest=EMPTY_DIGEST):
    """A response body: the request's counter and the result, with a MAC over them, the
    request's op code and the digest of the data records sent before it. Without a session
    (sk None) the MAC is zeros: the client must not trust it beyond "refused"."""
    mac = bytes(MAC_LEN) if sk is None else response_mac(sk, resp_op, req_op, counter, result,
                                                         digest)  # fmt: skip
    return struct.pack("<HIB", resp_op, counter, result) + mac


def parse_response(body):
    """(resp_op, counter, result, mac)."""
    if len(body) != 7 + MAC_LEN:
        raise Bad(K.BAD_LENGTH, "a response is 15 bytes")
    resp_op, counter, result = struct.unpack_from("<HIB", body, 0)
    return resp_op, counter, result, bytes(body[7:])


# ---- operands ----


class Reader:
    """Reads an operand field by field; every read is bounds-checked, and done() insists that
    nothing is left over."""

    def __init__(self, buf):
        self.buf = buf
        self.at = 0

    def _take(self, fmt, n):
        if self.at + n > len(self.buf):
            raise Bad(K.BAD_LENGTH, "operand too short")
        v = struct.unpack_from(fmt, self.buf, self.at)[0]
        self.at += n
        return v

    def u8(self):
        return self._take("<B", 1)

    def u16(self):
        return self._take("<H", 2)

    def u32(self):
        return self._take("<I", 4)

    def u64(self):
        return self._take("<Q", 8)

    def code(self, allowed):
        v = self.u8()
        if v not in allowed:
            raise Bad(K.BAD_OPERAND, "not a valid code")
        return v

    def flag(self):
        return self.code((K.NO, K.YES)) == K.YES

    def done(self):
        if self.at != len(self.buf):
            raise Bad(K.BAD_LENGTH, "operand too long")


def flag(b):
    return K.YES if b else K.NO


def encode_rx(rx):
    """A prescription as bytes (docs/protocol.md, "Prescription")."""
    out = bytearray(struct.pack("<HB", rx.conc_ug_per_ml, len(rx.steps)))
    for start, rate in rx.steps:
        out.extend(struct.pack("<HI", start, rate))
    out.append(len(rx.periodic))
    for start, dose, dur in rx.periodic:
        out.extend(struct.pack("<HII", start, dose, dur))
    out.extend(struct.pack("<IIIB", rx.patient_dose_ng, rx.patient_duration_s,
                           rx.patient_lockout_s, rx.patient_max_per_24h))  # fmt: skip
    return bytes(out)


def read_rx(r, make):
    """The fields of a prescription from Reader r, passed to make(conc, steps, periodic,
    patient_dose_ng, patient_duration_s, patient_lockout_s, patient_max_per_24h). Only the
    encoding is checked here; the pump's own validation checks the values."""
    conc = r.u16()
    steps = []
    for _ in range(r.u8()):
        start = r.u16()
        steps.append((start, r.u32()))
    periodic = []
    for _ in range(r.u8()):
        start = r.u16()
        dose = r.u32()
        periodic.append((start, dose, r.u32()))
    dose = r.u32()
    dur = r.u32()
    lock = r.u32()
    return make(conc, steps, periodic, dose, dur, lock, r.u8())


def refusal_data(code, field):
    """Response data for REFUSED: the pump's reason code and the field, in ASCII."""
    f = field.encode() if isinstance(field, str) else b""
    return bytes((code, len(f))) + f[:255]


def chunks(data, size):
    """data in pieces of at most size bytes (none for empty data)."""
    return [data[i : i + size] for i in range(0, len(data), size)]


