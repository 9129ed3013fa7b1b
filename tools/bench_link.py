# The radio's benchmarks (make bench): 100,000 fuzzed frames at the protocol service of a pump
# in session, and, over a real BLE stack (Bumble), replays, history download and round trips.
"""Metrics:
ble.fuzz_frames                  frames drawn by the hypothesis strategies of
                                 host_tests/linkfuzz.py (random, mutated, truncated, padded,
                                 bad CRC, bad MAC, old counter, garbage operand) and written
ble.fuzz_failures                frames after which a check failed (an exception escaped, an
                                 unauthenticated frame succeeded, the therapy or the counters
                                 changed), plus failed positive controls (a valid command every
                                 1,000 frames must still succeed); must be 0
ble.fuzz_frames_per_s_cpython    throughput of the service on the virtual pump (CPython)
ble.replays_accepted             over Bumble: every frame of a programming session (patient
                                 and clinician: login, status, bolus, stage, commit, refill,
                                 history) written again in order; any command answered SUCCESS
                                 or any session opened counts; must be 0
ble.history_records_per_s        over Bumble at MTU 247: the whole event log of a pump that has
                                 run 30 days, downloaded with RACP report (records per second,
                                 median of 3)
ble.command_round_trip_ms        over Bumble: an authenticated GET_STATUS from write to checked
                                 response (median of 200)"""

import asyncio
import logging
import statistics
import struct
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "firmware"), str(ROOT)]

from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from host_tests import appscen as S  # noqa: E402
from host_tests import linkfuzz as LF  # noqa: E402
from host_tests.linkrig import Rig  # noqa: E402
from link import codes as K  # noqa: E402
from link import keys as KF  # noqa: E402
from link import service as SV  # noqa: E402
from link import wire as W  # noqa: E402

FRAMES = 100_000
PER_EXAMPLE = 10
CONTROL_EVERY = 1_000
HISTORY_DAYS = 30
ROUND_TRIPS = 200


# ---- fuzzing, without a radio (the service is what parses) ----


def fuzz(frames=FRAMES):
    rig = Rig()
    out = {"frames": 0, "failures": 0}
    try:
        c = rig.login(K.PATIENT)
        checker = LF.Checker(rig)

        @settings(max_examples=frames // PER_EXAMPLE, database=None, deadline=None,
                  phases=[Phase.generate], suppress_health_check=list(HealthCheck))  # fmt: skip
        @given(data=st.data())
        def run(data):
            for _ in range(PER_EXAMPLE):
                kind, ch, frame, spent = LF.draw(data, c, checker.used)
                try:
                    res, _ = rig.write(ch, frame, ms=5_000)
                except Exception:  # noqa: BLE001 - counted: the metric must be 0
                    out["failures"] += 1
                    continue
                out["frames"] += 1
                out["failures"] += len(checker.check(kind, ch, frame, spent, res))
                if out["frames"] % CONTROL_EVERY == 0 and not checker.alive(c):
                    out["failures"] += 1

        t0 = time.perf_counter()
        run()
        out["per_s"] = out["frames"] / (time.perf_counter() - t0)
        if not checker.alive(c):
            out["failures"] += 1
        return out
    finally:
        rig.close()


# ---- over Bumble ----


async def _bench_ble():
    # Bumble warns of indications to a second session's duplicate subscription: expected here.
    logging.getLogger("bumble").setLevel(logging.ERROR)
    from boards.sim import ble_bumble as BB
    from boards.sim import realtime
    from host_tests.blecentral import Central
    from tools import linksession as LS

    keys = {K.CLINICIAN: bytes(range(32)), K.PATIENT: bytes(range(100, 132))}
    pump_id = b"ITB-BENCH-1"
    ble, central_dev = await BB.open_pair()
    scen = S.Scenario(keys=KF.encode(pump_id, keys), ble_api=lambda: (ble, BB.UUID),
                      long_run=True)  # fmt: skip
    vp = scen.vp
    # A month of therapy first (as fast as possible), so that the log has a history to send:
    # weekly refills, and the patient asking for a bolus six times a day (some refused).
    for day in range(HISTORY_DAYS):
        if day and day % 7 == 0:
            scen.run_to(day * S.DAY + 5 * S.HOUR)
            sup = vp.sup
            for req in (("refill_begin", sup.reservoir.remaining_nl()),
                        ("refill_fill", S.FILL_NL, S.CONC), ("refill_commit",)):  # fmt: skip
                scen.request(*req)
        for h in (2, 4, 6, 10, 12, 15):
            scen.run_to(day * S.DAY + h * S.HOUR)
            scen.request("patient_bolus")
        scen.run_to((day + 1) * S.DAY)
    driver = asyncio.get_running_loop().create_task(realtime.drive(vp, 1))
    out = {}
    try:
        await ble.settle()
        vp.button.press()
        await asyncio.sleep(0.05)
        central = Central(central_dev)
        await central.connect()
        await central.pair()
        await central.exchange_mtu(247)
        await central.discover()
        sessions = []
        # Round trips, as the patient.
        s = LS.Session(central, pump_id, K.PATIENT, keys[K.PATIENT])
        await s.start()
        await s.login()
        sessions.append(s)
        times = []
        for _ in range(ROUND_TRIPS):
            t0 = time.perf_counter()
            reply = await s.ask(SV.CH_STATUS_CP, K.GET_STATUS)
            times.append((time.perf_counter() - t0) * 1000)
            assert reply.ok
        out["rtt_ms"] = statistics.median(times)
        # The whole history, three times.
        rng = struct.pack("<II", 1, 0xFFFFFFFF)
        rates = []
        for _ in range(3):
            t0 = time.perf_counter()
            reply = await s.ask(SV.CH_RACP, K.RACP_REPORT, rng)
            dt = time.perf_counter() - t0
            assert reply.ok
            n = 0
            at = 0
            from pump import codec as C

            while at < len(reply.data):
                at += C.record_length(reply.data, at)
                n += 1
            rates.append(n / dt)
        out["history_records"] = n
        out["history_per_s"] = statistics.median(rates)
        await s.ask(SV.CH_COMMAND_CP, K.PATIENT_BOLUS)  # granted or refused: replayed below
        # A clinician session that programmes and refills.
        s2 = LS.Session(central, pump_id, K.CLINICIAN, keys[K.CLINICIAN])
        await s2.start()
        await s2.login()
        sessions.append(s2)
        new = W.encode_rx(S.DEMO.with_concentration(S.CONC)) + b"\xf0"
        assert (await s2.ask(SV.CH_COMMAND_CP, K.STAGE, new)).ok
        assert (await s2.ask(SV.CH_COMMAND_CP, K.COMMIT,
                             struct.pack("<I", W.crc32(new[:-1])) + b"\xf0")).ok  # fmt: skip
        left = vp.sup.reservoir.remaining_nl()
        for op, operand in ((K.REFILL_BEGIN, struct.pack("<I", left)),
                            (K.REFILL_FILL, struct.pack("<IH", S.FILL_NL, S.CONC)),
                            (K.REFILL_COMMIT, b"")):  # fmt: skip
            assert (await s2.ask(SV.CH_COMMAND_CP, op, operand)).ok
        # Every frame written, again.
        accepted = 0
        replayed = 0
        for sess in sessions:
            frames = [f for f in sess.sent if f[0] != SV.CH_AUTH_CP]
            frames += [f for f in sess.sent if f[0] == SV.CH_AUTH_CP]
            for ch, frame in frames:
                for other in sessions:
                    for q in other.queues.values():
                        while not q.empty():
                            q.get_nowait()
                await central.write(LS.uuid_of(ch), frame)
                body, _n = W.unseal(await asyncio.wait_for(sess.queues[ch].get(), 10))
                replayed += 1
                if ch == SV.CH_AUTH_CP:
                    accepted += W.op_of(body) == K.AUTH_RESULT and body[2] == K.SUCCESS
                else:
                    accepted += W.parse_response(body)[2] == K.SUCCESS
        out["replayed"] = replayed
        out["replays_accepted"] = accepted
        return out
    finally:
        driver.cancel()
        try:
            await driver
        except asyncio.CancelledError:
            pass
        scen.finish()


def metrics(frames=FRAMES):
    f = fuzz(frames)
    b = asyncio.run(_bench_ble())
    print("  ble: %d frames replayed; %d history records per download"
          % (b["replayed"], b["history_records"]))  # fmt: skip
    return {
        "ble.fuzz_frames": f["frames"],
        "ble.fuzz_failures": f["failures"],
        "ble.fuzz_frames_per_s_cpython": f["per_s"],
        "ble.replays_accepted": b["replays_accepted"],
        "ble.history_records_per_s": b["history_per_s"],
        "ble.command_round_trip_ms": b["rtt_ms"],
    }


if __name__ == "__main__":
    for k, v in sorted(metrics(int(sys.argv[1]) if len(sys.argv) > 1 else FRAMES).items()):
        print("  %-40s %r" % (k, v))
