# Scenarios of the pump's radio (firmware/radio.py) over the fake `bluetooth`, shared by
# host_tests/test_radio.py (CPython) and host_tests/mpy/test_radio_mpy.py (MicroPython).
"""Each scenario takes a fresh RadioRig and returns a list of failures (phrases), so both
runtimes report them alike. No hypothesis, f-strings or CPython-only modules here."""

import struct

from host_tests import appscen as S
from host_tests.linkrig import events
from host_tests.radiorig import BT, RadioRig
from link import codes as K
from link import service as SV
from link import wire as W
from pump import rx as RX

_IO_KEYBOARD_ONLY = 2
_IO_NO_INPUT_OUTPUT = 3


def _paired(rig, **kw):
    rig.press()
    c = rig.central(**kw)
    ok = rig.pair(c)
    rig.subscribe(c)
    return c, ok


def pairing_window(rig):
    bad = []
    c = rig.central()
    if rig.pair(c):
        bad.append("bonded outside the pairing window")
    if BT._state["bonds_made"]:
        bad.append("a bond was stored outside the window")
    c.disconnect()
    rig.press()
    c = rig.central()
    if not rig.pair(c) or not (c.encrypted and c.authenticated and c.bonded):
        bad.append("no bond inside the window")
    c.disconnect()
    rig.run(61_000)  # the window has closed
    c2 = rig.central(addr=b"\xc0\x99\x88\x77\x66\x55")
    if rig.pair(c2):
        bad.append("bonded after the window closed")
    outcomes = [e[3] for e in events(rig, "ble_pairing")]
    if outcomes != [False, True, False]:
        bad.append("pairing attempts logged as %r" % (outcomes,))
    if len(events(rig, "ble_pairing_window")) != 1:
        bad.append("the window's opening is not logged once")
    return bad


def just_works_gets_nothing(rig):
    bad = []
    rig.press()
    c = rig.central(io=_IO_NO_INPUT_OUTPUT)
    rig.pair(c)
    if c.authenticated:
        bad.append("Just Works gave an authenticated link")
    h = rig.handles[SV.CH_AUTH_CP]
    err = c.write(h, b"\x33\x0f\x5a" + bytes(12) + b"\x00\x00\x00")
    if err != 0x05:
        bad.append("the stack let an unauthenticated write through (%r)" % (err,))
    err, _v = c.read(rig.handles[SV.CH_STATUS])
    if err == 0:
        bad.append("status readable on an unauthenticated link")
    return bad


def session_bolus_and_replay(rig):
    bad = []
    c, ok = _paired(rig)
    if not ok:
        return ["no bond"]
    err, value = c.read(rig.handles[SV.CH_STATUS])
    if err != 0x08:
        bad.append("status readable without a session (%r)" % (err,))
    cl = rig.login(c, K.PATIENT)
    err, value = c.read(rig.handles[SV.CH_STATUS])
    if err != 0 or len(value) != 14 + W.E2E_LEN:
        bad.append("status not readable in a session")
    reply = rig.ask(c, cl, SV.CH_COMMAND_CP, K.PATIENT_BOLUS)
    if not reply.ok:
        bad.append("patient bolus not granted: %r" % (reply,))
    frame = cl.command(SV.CH_COMMAND_CP, K.PATIENT_BOLUS)
    rig.write(c, SV.CH_COMMAND_CP, frame)
    counters = dict(rig.vp.sup.counters)
    log_len = len(rig.vp.app.journal.pending)
    for again in (frame, W.seal(W.unseal(frame)[0], 77)):
        rig.write(c, SV.CH_COMMAND_CP, again)
    if rig.vp.sup.counters != counters:
        bad.append("a replayed frame moved the counters")
    if len(rig.vp.app.journal.pending) < log_len:
        bad.append("the log lost events")
    results = [e[3] for e in events(rig, "ble_command")]
    if K.REPLAYED not in results:
        bad.append("the replay is not logged as refused: %r" % (results,))
    return bad


def long_writes_are_whole(rig):
    # A programme is far longer than 20 bytes: the control point's buffer takes it whole.
    bad = []
    c, ok = _paired(rig)
    if not ok:
        return ["no bond"]
    cl = rig.login(c, K.CLINICIAN)
    new = RX.continuous(S.CONC, 340_000, patient_dose_ng=15_000, patient_duration_s=600,
                        patient_lockout_s=3 * 3600, patient_max_per_24h=4)  # fmt: skip
    reply = rig.ask(c, cl, SV.CH_COMMAND_CP, K.STAGE, W.encode_rx(new) + bytes((K.YES,)))
    if not reply.ok:
        bad.append("stage over the radio refused: %r" % (reply,))
    crc = W.crc32(W.encode_rx(new))
    reply = rig.ask(c, cl, SV.CH_COMMAND_CP, K.COMMIT, struct.pack("<I", crc) + bytes((K.YES,)))
    if not reply.ok or rig.vp.sup.engine.rx != new:
        bad.append("commit over the radio failed: %r" % (reply,))
    return bad


def link_lost_mid_programming(rig):
    bad = []
    c, ok = _paired(rig)
    if not ok:
        return ["no bond"]
    cl = rig.login(c, K.CLINICIAN)
    new = RX.continuous(S.CONC, 340_000)
    rig.ask(c, cl, SV.CH_COMMAND_CP, K.STAGE, W.encode_rx(new) + bytes((K.YES,)))
    before = len(rig.vp.delivered)
    c.disconnect()
    rig.run(3_600_000)
    if rig.vp.sup.engine.rx != S.DEMO or rig.vp.sup.engine.mode != 1:
        bad.append("the old programme is not running after the link was lost")
    if len(rig.vp.delivered) <= before:
        bad.append("delivery stopped with the link")
    return bad


def congestion_and_silence(rig):
    # The stack's buffers are full (ENOMEM) for a while: the records still arrive, in order.
    # Then a central that never acknowledges: the pump gives up, logs it, and keeps dosing.
    bad = []
    c, ok = _paired(rig)
    if not ok:
        return ["no bond"]
    cl = rig.login(c, K.CLINICIAN)
    BT._fail_next("notify", 1, count=5)
    reply = rig.ask(c, cl, SV.CH_STATUS_CP, K.GET_PROGRAMME)
    if not reply.ok or len(reply.data) < 40:
        bad.append("records lost to ENOMEM: %r" % (reply,))
    c.ack_mode = "hold"
    before = len(rig.vp.delivered)
    rig.write(c, SV.CH_STATUS_CP, cl.command(SV.CH_STATUS_CP, K.GET_STATUS), ms=40_000)
    if not events(rig, "ble_indicate_timeout"):
        bad.append("an unacknowledged indication is not logged")
    if c.connected:
        bad.append("the link stays up after ATT's transaction timeout")
    if BT._advertising() is None:
        bad.append("the pump does not advertise again after dropping the link")
    rig.run(600_000)
    if len(rig.vp.delivered) <= before:
        bad.append("delivery stopped behind a silent central")
    return bad


def status_indicated_on_change(rig):
    bad = []
    c, ok = _paired(rig)
    if not ok:
        return ["no bond"]
    c.subscribe(rig.handles[SV.CH_STATUS], notify=False, indicate=True)
    c.subscribe(rig.handles[SV.CH_ALARM], notify=False, indicate=True)
    cl = rig.login(c, K.PATIENT)
    c.indications.clear()
    reply = rig.ask(c, cl, SV.CH_COMMAND_CP, K.PATIENT_BOLUS)
    rig.run(3_000)
    got = c.indications.get(rig.handles[SV.CH_STATUS], [])
    if not reply.ok or not got:
        bad.append("no status indication after a bolus began")
    elif not W.unseal(got[-1])[0][1] & SV.FLAG_BOLUS:
        bad.append("the indicated status does not show the bolus")
    return bad


def irq_handler_allocates_nothing(rig):
    # The handler's common events under heap_lock (MicroPython only; CPython has no such lock).
    try:
        import micropython
    except ImportError:
        return []
    radio = rig.radio
    h = rig.handles[SV.CH_STATUS_CP]
    addr = memoryview(b"\x01\x02\x03\x04\x05\x06")
    status = rig.handles[SV.CH_STATUS]
    cases = [(3, (7, h)), (20, (7, h, 0)), (21, (7, 185)), (28, (7, 1, 1, 1, 16)),
             (1, (7, 0, addr)), (2, (7, 0, addr)), (4, (7, status))]  # fmt: skip
    bad = []
    for event, data in cases:
        radio._head = radio._tail = 0
        micropython.heap_lock()
        try:
            answer = radio._irq(event, data)
            ok = radio._lost == 0
        except MemoryError:
            ok = False
        finally:
            micropython.heap_unlock()
        if event == 4 and answer != 0x05:
            bad.append("a read on an unknown link was not refused (%r)" % (answer,))
        if not ok:
            bad.append("the IRQ handler allocated on event %d" % event)
        radio._head = radio._tail = 0
    return bad


def other_pairing_methods_dropped(rig):
    # A central that can only type (the pump would have to show a passkey it does not have):
    # dropped, inside the window as outside it, and nothing is stored.
    bad = []
    for inside in (False, True):
        if inside:
            rig.press()
        c = rig.central(io=_IO_KEYBOARD_ONLY)
        c.passkey = 0  # what an attacker would type if the pump answered with a zero
        rig.pair(c)
        rig.run(100)
        if c.authenticated or c.bonded:
            bad.append("passkey pairing got a link (inside the window: %r)" % inside)
        if c.connected:
            bad.append("the link was not dropped (inside the window: %r)" % inside)
            c.disconnect()
        rig.run(100)
    if BT._state["bonds_made"]:
        bad.append("a bond was stored")
    if [e[3] for e in events(rig, "ble_pairing")] != [False, False]:
        bad.append("the refused pairings are not logged")
    return bad


def radio_time_in_the_charge_budget(rig):
    # Ten minutes with a programmer connected cost the energy model's radio current on top of
    # what ten minutes without one cost.
    bad = []
    bat = rig.vp.sup.battery

    def used_over(ms):
        bat.fold(rig.vp.sup.now_ms())
        u0 = bat.used_nc
        rig.run(ms)
        bat.fold(rig.vp.sup.now_ms())
        return bat.used_nc - u0

    idle = used_over(600_000)
    c, ok = _paired(rig)
    if not ok:
        return ["no bond"]
    busy = used_over(600_000)
    want = bat.energy.radio_ua * 600_000
    extra = busy - idle
    if not want * 9 // 10 <= extra <= want * 11 // 10:
        bad.append("radio time cost %d nC, the model says %d" % (extra, want))
    return bad


def no_handler_errors(rig):
    bad = []
    if BT._state["irq_errors"]:
        bad.append("IRQ handler errors: %r" % (BT._state["irq_errors"],))
    if BT._state["violations"]:
        bad.append("misuse of the bluetooth API: %r" % (BT._state["violations"],))
    return bad


SCENARIOS = (pairing_window, just_works_gets_nothing, session_bolus_and_replay,
             long_writes_are_whole, link_lost_mid_programming, congestion_and_silence,
             status_indicated_on_change, irq_handler_allocates_nothing,
             other_pairing_methods_dropped, radio_time_in_the_charge_budget)  # fmt: skip


def run(scenario):
    """The failures of one scenario on a fresh rig (and of the API's use during it)."""
    rig = RadioRig()
    try:
        bad = scenario(rig)
        bad.extend(no_handler_errors(rig))
        return bad
    finally:
        rig.close()

