# The radio protocol's fuzzing benchmark (make bench): many random and mutated frames at the
# service of a virtual pump in session; none may succeed, raise, or change anything.
"""Metrics:
ble.fuzz_frames                  frames written (random, mutated valid ones, truncated or
                                 padded, a wrong CRC, a wrong MAC under a valid CRC, and
                                 correct ones with a counter already used)
ble.fuzz_accepted                frames answered SUCCESS (must be 0; authentication frames
                                 that start a new challenge are not counted: they change no
                                 therapy)
ble.fuzz_state_changes           fuzzed frames after which the pump's therapy state or its
                                 command counters differed (must be 0)
ble.fuzz_exceptions              exceptions that escaped the service (must be 0)
ble.fuzz_frames_per_s_cpython    throughput (the service on CPython, on the virtual pump)"""

import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "firmware"), str(ROOT)]

from host_tests import appscen as S  # noqa: E402
from host_tests.linkrig import Rig  # noqa: E402
from link import codes as K  # noqa: E402
from link import service as SV  # noqa: E402
from link import wire as W  # noqa: E402

FRAMES = 100_000
CHECK_EVERY = 50  # the pump's state is compared after every this many frames, and at the end


def _valid(c, rnd):
    op = rnd.choice((K.PATIENT_BOLUS, K.GET_STATUS, K.STAGE, K.RACP_COUNT, K.ACK_ALARM,
                     K.SET_MODE, K.COMMIT, K.CLINICIAN_BOLUS))  # fmt: skip
    operand = {K.STAGE: W.encode_rx(S.DEMO) + b"\xf0", K.RACP_COUNT: bytes(8),
               K.ACK_ALARM: b"\x01", K.SET_MODE: b"\x33", K.COMMIT: bytes(5),
               K.CLINICIAN_BOLUS: bytes(8)}.get(op, b"")  # fmt: skip
    ch = SV.CH_STATUS_CP if op == K.GET_STATUS else SV.CH_RACP if op == K.RACP_COUNT else \
        SV.CH_COMMAND_CP  # fmt: skip
    return ch, op, operand


def fuzz_frame(c, rnd):
    kind = rnd.randrange(6)
    if kind == 0:
        ch = rnd.choice(SV.CONTROL_POINTS)
        return ch, bytes(rnd.getrandbits(8) for _ in range(rnd.randrange(64)))
    ch, op, operand = _valid(c, rnd)
    body = bytearray(W.command(c.sk, op, c.counter + 1 + rnd.randrange(5), operand))
    if kind == 1:  # mutated, then sealed (a valid CRC over a wrong body)
        for _ in range(1 + rnd.randrange(3)):
            body[rnd.randrange(len(body))] ^= 1 + rnd.randrange(255)
    elif kind == 2:  # truncated or padded
        if rnd.randrange(2):
            body = body[: rnd.randrange(len(body))]
        else:
            body += bytes(rnd.getrandbits(8) for _ in range(1 + rnd.randrange(8)))
    elif kind == 3:  # a wrong CRC
        frame = bytearray(W.seal(bytes(body), rnd.randrange(256)))
        frame[-1 - rnd.randrange(2)] ^= 1 + rnd.randrange(255)
        return ch, bytes(frame)
    elif kind == 4:  # a wrong MAC
        body[-1 - rnd.randrange(W.MAC_LEN)] ^= 1 + rnd.randrange(255)
    else:  # correct, with a counter already used
        body = bytearray(W.command(c.sk, op, rnd.randrange(c.counter + 1), operand))
    return ch, W.seal(bytes(body), rnd.randrange(256))


def run(frames=FRAMES, seed=1):
    rnd = random.Random(seed)
    rig = Rig()
    try:
        c = rig.login(K.CLINICIAN)
        assert rig.ask(c, SV.CH_STATUS_CP, K.GET_STATUS).ok
        state = rig.state()
        counters = dict(rig.vp.sup.counters)
        out = {"frames": 0, "accepted": 0, "changes": 0, "exceptions": 0}
        t0 = time.perf_counter()
        for i in range(frames):
            ch, frame = fuzz_frame(c, rnd)
            try:
                res, _sent = rig.write(ch, frame, ms=10)
            except Exception:  # noqa: BLE001 - counted: the metric must be 0
                out["exceptions"] += 1
                continue
            out["frames"] += 1
            if res == K.SUCCESS and ch != SV.CH_AUTH_CP:
                out["accepted"] += 1
            if (i + 1) % CHECK_EVERY == 0 or i + 1 == frames:
                if rig.state() != state or rig.vp.sup.counters != counters:
                    out["changes"] += 1
                    state = rig.state()
                    counters = dict(rig.vp.sup.counters)
        out["per_s"] = frames / (time.perf_counter() - t0)
        return out
    finally:
        rig.close()


def metrics(frames=FRAMES):
    r = run(frames)
    return {
        "ble.fuzz_frames": r["frames"],
        "ble.fuzz_accepted": r["accepted"],
        "ble.fuzz_state_changes": r["changes"],
        "ble.fuzz_exceptions": r["exceptions"],
        "ble.fuzz_frames_per_s_cpython": r["per_s"],
    }


if __name__ == "__main__":
    for k, v in sorted(metrics(int(sys.argv[1]) if len(sys.argv) > 1 else FRAMES).items()):
        print("  %-40s %r" % (k, v))
