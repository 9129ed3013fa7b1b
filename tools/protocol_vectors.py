# Test vectors of the radio protocol, as printed in docs/protocol.md: fixed keys, nonces and
# counters through the firmware's own encoders. host_tests/test_protocol_doc.py checks the doc.

import struct
import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent.parent / "firmware")]

from link import codes as K  # noqa: E402
from link import wire as W  # noqa: E402
from link.crc16 import crc16  # noqa: E402
from pump import rx as RX  # noqa: E402

KEY = bytes(range(32))  # the clinician's role key in the examples
PUMP_ID = b"ITB-SIM-0001"
NC = bytes(range(0x10, 0x1C))
NP = bytes(range(0x20, 0x2C))
EXAMPLE_RX = RX.Prescription(
    500, [(0, 300_000), (420, 400_000)], [(420, 20_000, 1800)],
    patient_dose_ng=15_000, patient_duration_s=600, patient_lockout_s=10_800,
    patient_max_per_24h=4,
)  # fmt: skip


def vectors():
    """[(name, hex)] in the order the doc lists them."""
    out = []

    def add(name, data):
        out.append((name, data.hex() if isinstance(data, (bytes, bytearray)) else data))

    add("crc16(313233343536373839)", "%04x" % crc16(b"123456789"))
    add("seal(5a0f55, 0)", W.seal(bytes.fromhex("5a0f55"), 0))
    add("AUTH_START frame", W.seal(W.auth_start(K.CLINICIAN, NC), 0))
    add("AUTH_CHALLENGE frame", W.seal(W.auth_challenge(NP), 0))
    proof = W.client_proof(KEY, PUMP_ID, K.CLINICIAN, NC, NP)
    add("client proof", proof)
    add("AUTH_PROOF frame", W.seal(W.auth_proof(proof), 1))
    pproof = W.pump_proof(KEY, PUMP_ID, K.CLINICIAN, NC, NP)
    add("pump proof", pproof)
    add("AUTH_RESULT frame", W.seal(W.auth_result(K.SUCCESS, pproof, 7), 1))
    sk = W.session_key(KEY, PUMP_ID, K.CLINICIAN, NC, NP)
    add("session key", sk)
    operand = struct.pack("<II", 20_000, 1800)
    add("CLINICIAN_BOLUS frame", W.seal(W.command(sk, K.CLINICIAN_BOLUS, 8, operand), 0))
    add("response SUCCESS frame",
        W.seal(W.response(sk, K.COMMAND_RESPONSE, K.CLINICIAN_BOLUS, 8, K.SUCCESS), 0))
    refusal = W.refusal_data(11, "patient")
    add("refusal data", refusal)
    add("record frame", W.seal(refusal, 0))
    digest = W.sha256(refusal).digest()
    add("response REFUSED frame",
        W.seal(W.response(sk, K.COMMAND_RESPONSE, K.PATIENT_BOLUS, 9, K.REFUSED, digest), 1))
    add("prescription", W.encode_rx(EXAMPLE_RX))
    add("prescription crc32", "%08x" % W.crc32(W.encode_rx(EXAMPLE_RX)))
    return out


if __name__ == "__main__":
    for name, value in vectors():
        print("%-26s %s" % (name, value))
