# The whole radio path without Bumble: the virtual pump running its radio (firmware/radio.py)
# on the strict fake `bluetooth` (host_tests/fakes/bluetooth.py), a fake central and a client.
"""Runs on CPython and MicroPython. The fake central's actions reach the pump's IRQ handler at
once; the pump's radio task runs when the virtual pump's loop runs; run() alternates the two in
10 ms steps, as a real link would interleave them."""

import radio as RADIO
from host_tests import appscen as S
from host_tests.fakes import bluetooth as BT
from host_tests.linkrig import KEYS, PUMP_ID
from link import codes as K
from link import keys as KF
from link import service as SV
from tools.linkclient import Client

CHAR_NO = {ch: n for ch, n, _flags in RADIO.CHARS}
STEP_MS = 10


def ble_api():
    return BT.BLE(), BT.UUID


class RadioRig:
    def __init__(self, seed=1):
        BT._reset()
        self.scen = S.Scenario(seed=seed, keys=KF.encode(PUMP_ID, KEYS), ble_api=ble_api)
        self.vp = self.scen.vp
        self.run(100)
        self.handles = {ch: BT._handle_of(BT.UUID(RADIO.pump_uuid(n)))
                        for ch, n in CHAR_NO.items()}  # fmt: skip

    def close(self):
        self.scen.finish()
        BT._reset()

    @property
    def radio(self):
        return self.vp.radio

    def run(self, ms):
        end = self.vp.loop.now + ms
        while self.vp.loop.now < end:
            BT._run()
            self.scen.run_to(min(end, self.vp.loop.now + STEP_MS))
            BT._run()

    def press(self):
        """The pump's button: acknowledges alarms and opens the pairing window."""
        self.vp.button.press()
        self.run(50)

    def central(self, **kw):
        c = BT._Central(**kw)
        c.connect()
        self.run(50)
        return c

    def pair(self, central):
        """Pair and let the pump answer its passkey action; True if a bond resulted."""
        central.pair()
        self.run(50)
        return bool(central.result) and central.bonded == 1

    def subscribe(self, central):
        for ch in SV.CONTROL_POINTS:
            assert central.subscribe(self.handles[ch], notify=False, indicate=True) == 0
        for ch in (SV.CH_COMMAND_DATA, SV.CH_HISTORY_DATA):
            assert central.subscribe(self.handles[ch], notify=True) == 0

    def write(self, central, ch, frame, ms=1_000):
        """Write frame to control point ch; the ATT result and the new indications and
        notifications [(ch, bytes)] in the order they came."""
        before = self._seen(central)
        err = central.write(self.handles[ch], frame)
        self.run(ms)
        return err, self._new(central, before)

    def _seen(self, central):
        return {h: len(v) for h, v in central.notifications.items()}

    def _new(self, central, before):
        # The notifications since `before`, and every indication held (callers that need only
        # the new ones clear central.indications first).
        out = []
        for ch, h in self.handles.items():
            out.extend((ch, f) for f in central.notifications.get(h, [])[before.get(h, 0):])
            out.extend((ch, f) for f in central.indications.get(h, []))
        return out

    def login(self, central, role=K.CLINICIAN, counter=0):
        c = Client(PUMP_ID, role, KEYS[role], counter)
        central.indications.clear()
        err, got = self.write(central, SV.CH_AUTH_CP, c.auth_start(SV.CH_AUTH_CP))
        assert err == 0, err
        central.indications.clear()
        err, got = self.write(central, SV.CH_AUTH_CP,
                              c.auth_proof(SV.CH_AUTH_CP, got[-1][1]))  # fmt: skip
        c.auth_result(SV.CH_AUTH_CP, got[-1][1])
        central.indications.clear()
        central.notifications.clear()
        return c

    def ask(self, central, c, ch, op, operand=b"", ms=1_000):
        central.indications.clear()
        central.notifications.clear()
        err, got = self.write(central, ch, c.command(ch, op, operand), ms)
        assert err == 0, err
        reply = None
        for sch, frame in got:
            if sch == SV.DATA_CHAR[ch]:
                c.record(sch, frame)
        for sch, frame in got:
            if sch == ch:
                reply = c.response(ch, frame, SV.DATA_CHAR[ch])
        assert reply is not None, got
        return reply
