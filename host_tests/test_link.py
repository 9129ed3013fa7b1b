# The radio protocol's core (firmware/link) on a commissioned virtual pump, without a radio:
# codes, seal, MACs, sessions, roles, two-phase programming, replay, history, and fuzzing.

import hashlib
import hmac
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from host_tests import appscen as S
from host_tests import linkfuzz as LF
from host_tests import linkrig
from host_tests.linkrig import KEYS, PUMP_ID, Rig, events
from link import codes as K
from link import service as SV
from link import wire as W
from link.crc16 import crc16
from link.mac import hmac_sha256
from pump import reasons as R
from pump import rx as RX
from tools.linkclient import Client, ProtocolError

ALL_OPS = K.STATUS_OPS + K.COMMAND_OPS + K.RACP_OPS
CP_OF = {}
for _op in K.STATUS_OPS:
    CP_OF[_op] = SV.CH_STATUS_CP
for _op in K.COMMAND_OPS:
    CP_OF[_op] = SV.CH_COMMAND_CP
for _op in K.RACP_OPS:
    CP_OF[_op] = SV.CH_RACP


@pytest.fixture(autouse=True)
def _close_rigs():
    yield
    for rig in list(linkrig.OPEN):
        if rig not in _RIG:
            rig.close()


@pytest.fixture(scope="module", autouse=True)
def _close_fuzz_rig():
    yield
    for rig in _RIG:
        rig.close()


def hamming(a, b):
    return bin(a ^ b).count("1")


# ---- primitives against published vectors ----


def test_crc16_mcrf4xx_check_value_and_the_ids_example():
    assert crc16(b"123456789") == 0x6F91
    # The IDS example: Set Therapy Control State = Run, counter 0, sealed.
    assert W.seal(bytes.fromhex("5a0f55"), 0) == bytes.fromhex("5a0f550011ed")


@pytest.mark.parametrize(
    "key, data, mac",
    [
        # RFC 4231 test cases 1, 2, 3 and 6 (a key longer than the block).
        (b"\x0b" * 20, b"Hi There",
         "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"),
        (b"Jefe", b"what do ya want for nothing?",
         "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"),
        (b"\xaa" * 20, b"\xdd" * 50,
         "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe"),
        (b"\xaa" * 131, b"Test Using Larger Than Block-Size Key - Hash Key First",
         "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"),
    ],
)  # fmt: skip
def test_hmac_sha256_rfc4231(key, data, mac):
    assert hmac_sha256(key, data).hex() == mac
    assert hmac_sha256(key, data[:3], data[3:]).hex() == mac


@given(key=st.binary(max_size=200), parts=st.lists(st.binary(max_size=100), max_size=4))
def test_hmac_matches_the_standard_library(key, parts):
    assert hmac_sha256(key, *parts) == hmac.new(key, b"".join(parts), hashlib.sha256).digest()


# ---- the code set ----


def test_codes_differ_pairwise_in_at_least_four_bits():
    groups = {
        "op codes": ALL_OPS + (K.AUTH_START, K.AUTH_PROOF, K.AUTH_END, K.AUTH_CHALLENGE,
                               K.AUTH_RESULT, K.STATUS_RESPONSE, K.COMMAND_RESPONSE,
                               K.RACP_RESPONSE),
        "results": tuple(K.RESULT_NAMES),
        "roles": (K.PATIENT, K.CLINICIAN),
        "modes": (K.MODE_STOP, K.MODE_RUN, K.MODE_MINIMUM),
        "flags": (K.NO, K.YES),
        "alarm types": K.ALARM_CODES[1:],
    }  # fmt: skip
    for name, codes in groups.items():
        assert len(set(codes)) == len(codes), name
        for i, a in enumerate(codes):
            assert a != 0, name
            for b in codes[i + 1 :]:
                assert hamming(a, b) >= 4, (name, hex(a), hex(b))


def test_every_alarm_of_the_pump_has_a_code():
    from pump import alarms as A

    assert len(K.ALARM_CODES) == len(A.TABLE) + 1
    assert all(K.ALARM_IDS[K.ALARM_CODES[cid]] == cid for cid in A.TABLE)


def test_every_op_has_an_allow_list_and_the_patient_only_what_the_issue_lists():
    assert set(K.ALLOWED) == set(ALL_OPS)
    patient = {op for op, roles in K.ALLOWED.items() if K.PATIENT in roles}
    # Read status and history, a patient bolus, acknowledge or snooze alarms; nothing else.
    assert patient == {K.GET_STATUS, K.GET_PROGRAMME, K.GET_LIMITS, K.GET_ALARMS,
                       K.RESET_CHANGED, K.PATIENT_BOLUS, K.ACK_ALARM, K.SNOOZE_ALARM,
                       K.RACP_REPORT, K.RACP_COUNT, K.RACP_ABORT}  # fmt: skip
    assert all(K.CLINICIAN in roles for roles in K.ALLOWED.values())


def test_patient_frames_fit_a_default_att_payload():
    # A patient remote may never exchange the MTU: its commands and the pump's answers fit 20.
    sk = bytes(32)
    for op, operand in ((K.GET_STATUS, b""), (K.PATIENT_BOLUS, b""), (K.ACK_ALARM, b"\x01"),
                        (K.SNOOZE_ALARM, b"\x01\x0f\x00")):  # fmt: skip
        assert len(W.seal(W.command(sk, op, 1, operand), 0)) <= 20
    assert len(W.seal(W.response(sk, K.COMMAND_RESPONSE, K.PATIENT_BOLUS, 1, K.SUCCESS), 0)) <= 20
    assert len(W.seal(W.auth_start(K.PATIENT, bytes(12)), 0)) <= 20
    assert len(W.seal(W.auth_challenge(bytes(12)), 0)) <= 20
    assert len(W.seal(W.auth_proof(bytes(W.PROOF_LEN)), 0)) <= 20
    assert len(W.seal(W.auth_result(K.SUCCESS, bytes(W.PUMP_PROOF_LEN), 0), 0)) <= 20


# ---- sessions ----


@pytest.mark.req("SR-25", "SR-49")
def test_each_role_authenticates_and_the_pump_proves_itself():
    rig = Rig()
    for role in (K.CLINICIAN, K.PATIENT):
        c = rig.login(role)
        assert c.sk is not None
        assert rig.ask(c, SV.CH_STATUS_CP, K.GET_STATUS).ok
    pending = [e for e in rig.vp.app.journal.pending if e[1] == "ble_session"]
    assert len(pending) + len(events(rig, "ble_session")) == 2


@pytest.mark.req("SR-25", "SR-49")
def test_a_wrong_key_gets_no_session_and_repeated_failures_lock_out():
    rig = Rig()
    for _ in range(SV.AUTH_FREE_FAILURES + 1):
        c = rig.client(K.CLINICIAN, key=bytes(32))
        res, sent = rig.write(SV.CH_AUTH_CP, c.auth_start(SV.CH_AUTH_CP))
        assert res == K.SUCCESS
        res, sent = rig.write(SV.CH_AUTH_CP, c.auth_proof(SV.CH_AUTH_CP, sent[0][2]))
        assert res == K.BAD_MAC
        with pytest.raises(ProtocolError, match="bad MAC"):
            c.auth_result(SV.CH_AUTH_CP, sent[-1][2])
    # Locked out now, even with the right key, for LOCKOUT_FIRST_MS after the 4th failure.
    c = rig.client(K.CLINICIAN)
    res, sent = rig.write(SV.CH_AUTH_CP, c.auth_start(SV.CH_AUTH_CP))
    assert res == K.LOCKED_OUT
    rig.run(SV.LOCKOUT_FIRST_MS)
    assert rig.login(K.CLINICIAN).sk is not None
    fails = events(rig, "ble_auth_failed")
    assert [f[2] for f in fails] == [1, 2, 3, 4]
    assert [f[3] for f in fails] == [0, 0, 0, SV.LOCKOUT_FIRST_MS]


def test_another_pumps_key_or_role_gets_no_session():
    rig = Rig()
    rig.connect()
    c = Client(b"ITB-SIM-0002", K.CLINICIAN, KEYS[K.CLINICIAN])
    res, sent = rig.write(SV.CH_AUTH_CP, c.auth_start(SV.CH_AUTH_CP))
    res, sent = rig.write(SV.CH_AUTH_CP, c.auth_proof(SV.CH_AUTH_CP, sent[0][2]))
    assert res == K.BAD_MAC
    rig.connect()
    c = Client(PUMP_ID, K.PATIENT, KEYS[K.CLINICIAN])  # the clinician's key as a patient
    res, sent = rig.write(SV.CH_AUTH_CP, c.auth_start(SV.CH_AUTH_CP))
    res, sent = rig.write(SV.CH_AUTH_CP, c.auth_proof(SV.CH_AUTH_CP, sent[0][2]))
    assert res == K.BAD_MAC


def test_a_client_rejects_a_pump_that_cannot_prove_the_key():
    rig = Rig()
    c = rig.client(K.CLINICIAN)
    res, sent = rig.write(SV.CH_AUTH_CP, c.auth_start(SV.CH_AUTH_CP))
    res, sent = rig.write(SV.CH_AUTH_CP, c.auth_proof(SV.CH_AUTH_CP, sent[0][2]))
    body, n = W.unseal(sent[-1][2])
    forged = bytearray(body)
    forged[3] ^= 1  # one bit of the pump's proof
    with pytest.raises(ProtocolError, match="prove"):
        c.auth_result(SV.CH_AUTH_CP, W.seal(bytes(forged), n))


@pytest.mark.req("SR-25")
def test_no_command_without_a_secure_link_or_a_session():
    rig = Rig(secure=False)
    c = rig.client()
    res, _ = rig.write(SV.CH_AUTH_CP, c.auth_start(SV.CH_AUTH_CP))
    assert res == K.INSECURE
    rig = Rig()
    c = rig.client()
    c.sk = bytes(32)  # a client that skipped authentication
    before = rig.state()
    res, _ = rig.write(SV.CH_COMMAND_CP, c.command(SV.CH_COMMAND_CP, K.PATIENT_BOLUS))
    assert res == K.NO_SESSION
    assert rig.state() == before


def test_a_session_ends_when_idle():
    rig = Rig()
    c = rig.login(K.PATIENT)
    rig.run(SV.SESSION_IDLE_MS + 1)
    assert rig.ask(c, SV.CH_STATUS_CP, K.GET_STATUS).result == K.NO_SESSION
    assert rig.svc.read_allowed(1, SV.CH_STATUS) == 0x08
    assert ["patient", "idle"] == events(rig, "ble_session_end")[-1][1:]


# ---- commands ----


@pytest.mark.req("SR-05", "SR-25")
def test_patient_bolus_granted_then_refused_for_lockout():
    rig = Rig()
    c = rig.login(K.PATIENT)
    assert rig.ask(c, SV.CH_COMMAND_CP, K.PATIENT_BOLUS).ok
    assert [s[0] for s in rig.vp.sup.engine.streams()] == ["patient"]
    reply = rig.ask(c, SV.CH_COMMAND_CP, K.PATIENT_BOLUS)
    assert reply.result == K.REFUSED
    assert reply.reason()[0] in (R.LOCKOUT, R.BOLUS_ACTIVE)
    rig.run(S.DEMO.patient_duration_s * 1000)  # the bolus is over; the session idled out
    assert rig.ask(c, SV.CH_COMMAND_CP, K.PATIENT_BOLUS).result == K.NO_SESSION
    c = rig.login(K.PATIENT, counter=c.counter)
    reply = rig.ask(c, SV.CH_COMMAND_CP, K.PATIENT_BOLUS)
    assert reply.reason() == (R.LOCKOUT, "patient")
    assert [s[0] for s in rig.vp.sup.engine.streams()] == []


@pytest.mark.req("SR-25", "SR-32", "SR-49")
@pytest.mark.parametrize("op", sorted(op for op, roles in K.ALLOWED.items()
                                      if K.PATIENT not in roles))  # fmt: skip
def test_the_patient_may_not_do_clinician_things(op):
    rig = Rig()
    c = rig.login(K.PATIENT)
    before = rig.state()
    operand = bytes(64)  # whatever it is, the role is refused before the operand is read
    reply = rig.ask(c, CP_OF[op], op, operand)
    assert reply.result == K.NOT_ALLOWED
    assert rig.state() == before
    assert events(rig, "ble_command")[-1][1:] == ["patient", op, K.NOT_ALLOWED]


@pytest.mark.req("SR-03", "SR-25")
def test_stage_shows_old_and_new_then_commit_applies_only_the_echo():
    rig = Rig()
    c = rig.login()
    new = RX.continuous(S.CONC, 340_000, patient_dose_ng=15_000, patient_duration_s=600,
                        patient_lockout_s=3 * 3600, patient_max_per_24h=4)  # fmt: skip
    reply = rig.ask(c, SV.CH_COMMAND_CP, K.STAGE, W.encode_rx(new) + bytes((K.YES,)))
    assert reply.ok
    old_len = struct.unpack_from("<H", reply.data, 0)[0]
    assert reply.data[2 : 2 + old_len] == W.encode_rx(S.DEMO)
    at = 2 + old_len + 8
    new_len = struct.unpack_from("<H", reply.data, at)[0]
    assert reply.data[at + 2 : at + 2 + new_len] == W.encode_rx(new)
    daily, crc = struct.unpack_from("<II", reply.data, at + 2 + new_len)
    assert daily == RX.daily_dose_ng(new) and crc == W.crc32(W.encode_rx(new))
    assert rig.vp.sup.engine.rx == S.DEMO  # staged only
    # A commit naming another programme changes nothing.
    reply = rig.ask(c, SV.CH_COMMAND_CP, K.COMMIT, struct.pack("<I", crc ^ 1) + bytes((K.YES,)))
    assert reply.reason() == (R.NO_STAGED, "staged")
    assert rig.vp.sup.engine.rx == S.DEMO
    assert rig.ask(c, SV.CH_COMMAND_CP, K.COMMIT, struct.pack("<I", crc) + bytes((K.YES,))).ok
    assert rig.vp.sup.engine.rx == new


@pytest.mark.req("SR-03", "SR-27")
def test_a_link_lost_after_staging_leaves_the_old_programme_running():
    rig = Rig()
    c = rig.login()
    new = RX.continuous(S.CONC, 340_000)
    assert rig.ask(c, SV.CH_COMMAND_CP, K.STAGE, W.encode_rx(new) + bytes((K.YES,))).ok
    rig.svc.disconnected(1)
    rig.run(3_600_000)
    assert rig.vp.sup.engine.rx == S.DEMO
    assert rig.vp.sup.engine.mode == 1  # programme running
    assert not rig.vp.sup.alarms.active()


@pytest.mark.req("SR-26")
def test_every_captured_frame_replayed_is_refused():
    rig = Rig()
    c = rig.login(K.PATIENT)
    frames = []
    for ch, op, operand in ((SV.CH_STATUS_CP, K.GET_STATUS, b""),
                            (SV.CH_COMMAND_CP, K.PATIENT_BOLUS, b"")):  # fmt: skip
        frame = c.command(ch, op, operand)
        res, _ = rig.write(ch, frame)
        assert res == K.SUCCESS
        frames.append((ch, frame))
    before = rig.state()
    for ch, frame in frames:
        res, _ = rig.write(ch, frame)
        assert res in (K.DUPLICATE, K.REPLAYED)
        # Resealed with a fresh end-to-end counter, the MAC still holds: the counter refuses.
        body, _n = W.unseal(frame)
        res, _ = rig.write(ch, W.seal(body, 200))
        assert res == K.REPLAYED
    assert rig.state() == before


@pytest.mark.req("SR-26")
def test_counters_survive_a_reboot():
    rig = Rig()
    c = rig.login(K.PATIENT)
    frame = c.command(SV.CH_COMMAND_CP, K.PATIENT_BOLUS)
    assert rig.write(SV.CH_COMMAND_CP, frame)[0] == K.SUCCESS
    used = c.counter
    rig.reboot()
    # What was saved covers every counter used (with a reservation of the next ones): a new
    # client that kept no counter learns it and goes on above it.
    assert rig.vp.sup.counters["patient"] == used + SV.COUNTER_RESERVE
    fresh = rig.login(K.PATIENT)
    assert fresh.counter == used + SV.COUNTER_RESERVE
    assert rig.ask(fresh, SV.CH_STATUS_CP, K.GET_STATUS).ok
    # The frame from before the reboot, resealed for this link: refused.
    res, _ = rig.write(SV.CH_COMMAND_CP, W.seal(W.unseal(frame)[0], 9))
    assert res in (K.BAD_MAC, K.REPLAYED)


def test_polling_the_status_does_not_write_the_flash_at_each_read():
    rig = Rig()
    c = rig.login(K.PATIENT)
    assert rig.ask(c, SV.CH_STATUS_CP, K.GET_STATUS).ok  # the session's first: saved
    before = rig.vp.app.store.commits
    for _ in range(100):
        assert rig.ask(c, SV.CH_STATUS_CP, K.GET_STATUS, ms=500).ok
    # 50 s of pump time: at most a checkpoint or two of the pump's own, not one per read.
    assert rig.vp.app.store.commits - before <= 2
    assert rig.vp.sup.counters["patient"] >= c.counter


def test_refill_status_before_and_after_the_fill():
    rig = Rig()
    c = rig.login(K.CLINICIAN)
    left = rig.vp.sup.reservoir.remaining_nl()
    withdrawn = left - 1_500_000  # 1.5 mL less came out than the pump expected
    assert rig.ask(c, SV.CH_COMMAND_CP, K.REFILL_BEGIN, struct.pack("<I", withdrawn)).ok
    reply = rig.ask(c, SV.CH_STATUS_CP, K.GET_REFILL)
    w, e, tol, d, fill, conc = struct.unpack("<IIIiIH", reply.data)
    assert (w, e, d, fill, conc) == (withdrawn, left, -1_500_000, 0, 0) and 0 < tol < 1_500_000
    assert rig.ask(c, SV.CH_COMMAND_CP, K.REFILL_FILL, struct.pack("<IH", S.FILL_NL, 1000)).ok
    reply = rig.ask(c, SV.CH_STATUS_CP, K.GET_REFILL)
    assert struct.unpack("<IIIiIH", reply.data)[4:] == (S.FILL_NL, 1000)


def test_an_aborted_or_failed_link_mid_records_sends_no_response():
    rig = Rig()
    c = rig.login()
    rig.fail_sends = True
    res, sent = rig.write(SV.CH_STATUS_CP, c.command(SV.CH_STATUS_CP, K.GET_PROGRAMME))
    assert res is None and sent == []


# ---- history ----


def test_history_report_streams_the_records_as_stored_and_the_count_matches():
    rig = Rig(mtu=64)
    c = rig.login(K.PATIENT)
    rig.run(10_000)
    rng = struct.pack("<II", 1, 0xFFFFFFFF)
    count = struct.unpack("<I", rig.ask(c, SV.CH_RACP, K.RACP_COUNT, rng).data)[0]
    reply = rig.ask(c, SV.CH_RACP, K.RACP_REPORT, rng, ms=30_000)
    assert reply.ok
    # What was on flash when the report ran, verbatim (records logged since come after it).
    stored = b"".join(rig.vp.app.history(1, 0xFFFFFFFF))
    assert len(reply.data) > 0 and stored.startswith(reply.data)
    # Each record parses by itself and links to the one before (the chain the reader checks).
    from pump import codec as C
    from pump import store as ST

    at = 0
    prev = None
    n = 0
    while at < len(reply.data):
        size = C.record_length(reply.data, at)
        raw = reply.data[at : at + size]
        value = C.decode(raw[C.FRAME_LEN : size - C.CRC_LEN])
        if prev is not None:
            assert value[0] == ST.chain_hash(prev)
        prev = raw
        at += size
        n += 1
    assert n >= count > 0


def test_an_abort_ends_a_running_report_and_both_answers_check_out():
    rig = Rig(mtu=23)
    c = rig.login(K.PATIENT)
    rig.run(10_000)
    rig.send_ms = 5  # each notification takes 5 ms: the report runs long enough to abort
    rng = struct.pack("<II", 1, 0xFFFFFFFF)
    report = c.command(SV.CH_RACP, K.RACP_REPORT, rng)
    start = len(rig.sent)
    out = []

    async def go():
        out.append(await rig.svc.write(1, SV.CH_RACP, report))

    rig.vp.loop.create_task(go(), "report")
    rig.run(200)
    res, _ = rig.write(SV.CH_RACP, c.command(SV.CH_RACP, K.RACP_ABORT), ms=5_000)
    assert res == K.SUCCESS and out == [K.REFUSED]
    replies = []
    for _h, ch, frame, _ind in rig.sent[start:]:
        if ch == SV.CH_HISTORY_DATA:
            c.record(ch, frame)
        elif ch == SV.CH_RACP:
            replies.append(c.response(ch, frame, SV.CH_HISTORY_DATA))
    assert [(r.op, r.result) for r in replies] == [(K.RACP_ABORT, K.SUCCESS),
                                                   (K.RACP_REPORT, K.REFUSED)]  # fmt: skip
    stored = b"".join(rig.vp.app.history(1, 0xFFFFFFFF))
    assert 0 < len(replies[1].data) < len(stored) and stored.startswith(replies[1].data)


# ---- fuzzing: nothing escapes, nothing changes ----


@pytest.mark.req("SR-32", "SR-47")
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_fuzzed_frames_change_nothing_and_raise_nothing(data):
    rig = _fuzz_rig()
    c = rig.fuzz_client
    checker = LF.Checker(rig)
    for _ in range(data.draw(st.integers(1, 5))):
        kind, ch, frame, spent = LF.draw(data, c, checker.used)
        res, _sent = rig.write(ch, frame, ms=200)
        assert checker.check(kind, ch, frame, spent, res) == []
    assert checker.alive(c), "the session died under fuzzing: the fuzz tested nothing"


_RIG = []


def _fuzz_rig():
    # One pump for all examples (a fresh one per example would be most of the test's time);
    # each example checks that it changed nothing, so they do not interfere.
    if not _RIG:
        rig = Rig()
        rig.fuzz_client = rig.login(K.PATIENT)
        assert rig.ask(rig.fuzz_client, SV.CH_STATUS_CP, K.GET_STATUS).ok
        _RIG.append(rig)
    return _RIG[0]
