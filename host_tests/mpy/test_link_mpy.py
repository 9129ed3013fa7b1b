# Under MicroPython: the radio protocol's core (firmware/link) on a virtual pump, as
# host_tests/test_link.py checks it on CPython: vectors, sessions, roles, replay, two-phase
# programming, history, and a few hundred random and mutated frames that must change nothing.
# req: SR-25, SR-26, SR-32, SR-47

import os
import struct
import sys

from host_tests import appscen as S
from host_tests import linkrig
from host_tests.linkrig import Rig
from link import codes as K
from link import service as SV
from link import wire as W
from link.crc16 import crc16
from link.mac import hmac_sha256
from pump import reasons as R
from pump import rx as RX

S.FLASH_DIR = os.getenv("TMPDIR") or "/tmp"
FAILED = []
CHECKED = [0]


def check(cond, what):
    CHECKED[0] += 1
    if not cond:
        FAILED.append(what)
        print("FAIL", what)


def vectors():
    check(crc16(b"123456789") == 0x6F91, "crc16 check value")
    check(W.seal(bytes.fromhex("5a0f55"), 0) == bytes.fromhex("5a0f550011ed"), "IDS seal")
    mac = hmac_sha256(b"Jefe", b"what do ya ", b"want for nothing?")
    check(mac.hex() == "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
          "RFC 4231 case 2")  # fmt: skip


def sessions_and_commands():
    rig = Rig()
    try:
        c = rig.login(K.PATIENT)
        check(rig.ask(c, SV.CH_STATUS_CP, K.GET_STATUS).ok, "patient reads status")
        check(rig.ask(c, SV.CH_COMMAND_CP, K.PATIENT_BOLUS).ok, "patient bolus granted")
        reply = rig.ask(c, SV.CH_COMMAND_CP, K.PATIENT_BOLUS)
        check(reply.result == K.REFUSED and reply.reason()[0] in (R.LOCKOUT, R.BOLUS_ACTIVE),
              "second patient bolus refused")  # fmt: skip
        before = rig.state()
        reply = rig.ask(c, SV.CH_COMMAND_CP, K.STAGE, W.encode_rx(S.DEMO) + b"\xf0")
        check(reply.result == K.NOT_ALLOWED and rig.state() == before, "patient may not stage")
        frame = c.command(SV.CH_COMMAND_CP, K.PATIENT_BOLUS)
        rig.write(SV.CH_COMMAND_CP, frame)
        body, _n = W.unseal(frame)
        res, _ = rig.write(SV.CH_COMMAND_CP, W.seal(body, 99))
        check(res == K.REPLAYED, "replayed bolus refused")

        c = rig.login(K.CLINICIAN)
        new = RX.continuous(S.CONC, 340_000)
        reply = rig.ask(c, SV.CH_COMMAND_CP, K.STAGE, W.encode_rx(new) + b"\xf0")
        check(reply.ok and rig.vp.sup.engine.rx == S.DEMO, "staged, not applied")
        crc = W.crc32(W.encode_rx(new))
        reply = rig.ask(c, SV.CH_COMMAND_CP, K.COMMIT, struct.pack("<I", crc) + b"\xf0")
        check(reply.ok and rig.vp.sup.engine.rx == new, "committed")

        rng = struct.pack("<II", 1, 0xFFFFFFFF)
        reply = rig.ask(c, SV.CH_RACP, K.RACP_REPORT, rng, ms=30_000)
        stored = b"".join(rig.vp.app.history(1, 0xFFFFFFFF))
        check(reply.ok and len(reply.data) > 0 and stored[: len(reply.data)] == reply.data,
              "history report as stored")  # fmt: skip
    finally:
        rig.close()


def fuzz(n):
    rig = Rig()
    try:
        c = rig.login(K.PATIENT)
        before = rig.state()
        counters = dict(rig.vp.sup.counters)
        seed = [int.from_bytes(os.urandom(4), "little") | 1]

        def rnd(k):
            seed[0] = (seed[0] * 1103515245 + 12345) & 0x7FFFFFFF
            return seed[0] % k

        valid = [(SV.CH_COMMAND_CP, W.command(c.sk, K.PATIENT_BOLUS, c.counter + 1)),
                 (SV.CH_STATUS_CP, W.command(c.sk, K.GET_STATUS, c.counter + 1))]  # fmt: skip
        for i in range(n):
            if i % 2:
                ch = SV.CONTROL_POINTS[rnd(len(SV.CONTROL_POINTS))]
                frame = bytes(rnd(256) for _ in range(rnd(40)))
            else:
                ch, body = valid[rnd(len(valid))]
                body = bytearray(body)
                body[rnd(len(body))] ^= 1 + rnd(255)
                frame = W.seal(bytes(body), rnd(256))
            res, _ = rig.write(ch, frame, ms=100)
            check(res != K.SUCCESS or ch == SV.CH_AUTH_CP, "a fuzzed frame succeeded: "
                  + frame.hex())  # fmt: skip
        check(rig.state() == before, "fuzzing changed the pump's state")
        check(rig.vp.sup.counters == counters, "fuzzing spent a counter")
    finally:
        rig.close()


def main():
    vectors()
    sessions_and_commands()
    fuzz(int(sys.argv[1]) if len(sys.argv) > 1 else 300)
    check(not linkrig.OPEN, "a rig left open")
    print("%d checks" % CHECKED[0])
    print("OK" if not FAILED else "FAILED %d" % len(FAILED))


main()
