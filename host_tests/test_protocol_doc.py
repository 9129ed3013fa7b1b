# docs/protocol.md's test vectors: the table must be what the firmware's encoders make, and a
# few are rebuilt here from the document's words alone, with the standard library.

import hashlib
import hmac
import re
import struct
from pathlib import Path

from tools import protocol_vectors as V

DOC = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"


def doc_vectors():
    text = DOC.read_text(encoding="utf-8")
    block = text.split("<!-- vectors: begin -->", 1)[1].split("<!-- vectors: end -->", 1)[0]
    out = {}
    for line in block.splitlines():
        m = re.match(r"^(\S.*?)\s{2,}([0-9a-f]+)$", line)
        if m:
            out[m.group(1)] = m.group(2)
    return out


def test_the_doc_lists_exactly_the_vectors_the_code_makes():
    assert doc_vectors() == dict(V.vectors())


def _crc16(data):
    # Bit by bit, from the doc's words: reflected 0x1021 (0x8408), init 0xFFFF, no final XOR.
    crc = 0xFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ 0x8408 if crc & 1 else crc >> 1
    return crc


def _seal(body, counter):
    b = body + bytes((counter,))
    return b + struct.pack("<H", _crc16(b))


def _h(key, *parts):
    return hmac.new(key, b"".join(parts), hashlib.sha256).digest()


def test_vectors_rebuilt_from_the_document_alone():
    d = doc_vectors()
    key = bytes(range(32))
    pump_id = b"ITB-SIM-0001"
    nc = bytes(range(0x10, 0x1C))
    np = bytes(range(0x20, 0x2C))
    role = b"\x5a"
    assert d["crc16(313233343536373839)"] == "6f91"
    assert bytes.fromhex(d["AUTH_START frame"]) == _seal(b"\x33\x0f" + role + nc, 0)
    proof = _h(key, b"itb client proof", pump_id, role, nc, np)[:15]
    assert bytes.fromhex(d["AUTH_PROOF frame"]) == _seal(b"\x3c\x0f" + proof, 1)
    pproof = _h(key, b"itb pump proof", pump_id, role, nc, np)[:10]
    assert bytes.fromhex(d["AUTH_RESULT frame"]) == _seal(
        b"\x66\x0f\x0f" + pproof + struct.pack("<I", 7), 1
    )
    sk = _h(key, b"itb session key", pump_id, role, nc, np)
    assert d["session key"] == sk.hex()
    head = struct.pack("<HI", 0x3C66, 8)
    operand = struct.pack("<II", 20_000, 1800)
    mac = _h(sk, b"\x00", head, operand)[:8]
    assert bytes.fromhex(d["CLINICIAN_BOLUS frame"]) == _seal(head + operand + mac, 0)
    empty = hashlib.sha256(b"").digest()
    rmac = _h(sk, b"\x01", struct.pack("<HHIB", 0x3C0F, 0x3C66, 8, 0x0F), empty)[:8]
    assert bytes.fromhex(d["response SUCCESS frame"]) == _seal(
        struct.pack("<HIB", 0x3C0F, 8, 0x0F) + rmac, 0
    )
    refusal = bytes((11, 7)) + b"patient"
    assert bytes.fromhex(d["record frame"]) == _seal(refusal, 0)
    rmac = _h(sk, b"\x01", struct.pack("<HHIB", 0x3C0F, 0x3C69, 9, 0xA5),
              hashlib.sha256(refusal).digest())[:8]  # fmt: skip
    assert bytes.fromhex(d["response REFUSED frame"]) == _seal(
        struct.pack("<HIB", 0x3C0F, 9, 0xA5) + rmac, 1
    )
    rx = (struct.pack("<HB", 500, 2) + struct.pack("<HI", 0, 300_000)
          + struct.pack("<HI", 420, 400_000) + struct.pack("<B", 1)
          + struct.pack("<HII", 420, 20_000, 1800) + struct.pack("<IIIB", 15_000, 600, 10_800, 4))
    assert bytes.fromhex(d["prescription"]) == rx
