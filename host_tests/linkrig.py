# A test rig for the radio protocol's service without a radio: the service on a commissioned
# virtual pump, frames passed in and out directly, and a client (tools/linkclient.py) to talk.

import os

from host_tests import appscen as S
from link import codes as K
from link import service as SV
from tools.linkclient import Client

PUMP_ID = b"ITB-SIM-0001"
KEYS = {K.CLINICIAN: bytes(range(32)), K.PATIENT: bytes(range(100, 132))}
HANDLE = 1


OPEN = []  # rigs not yet closed (a test fixture closes them)


def therapy(sup):
    """What a refused command must not change, and time alone does not: the programme,
    mode, limits, strengths, what is staged, the boluses running or granted, the alarms
    and their acknowledgements, the refill, the reservoir's threshold and the clock."""
    eng = sup.engine
    return (None if eng.rx is None else eng.rx.key(), eng.mode, eng.lim.as_tuple(), eng.conc,
            eng.next_conc(), None if sup.staged is None else sup.staged.key(),
            eng.streams(), list(eng._patient_starts), sup.alarms.active(),
            sup.refill_status(), sup.reservoir.low_nl, sup.wall_off_ms)  # fmt: skip


def events(rig, name):
    """The args of the flash-log records named `name`, read after the rig (this one or a
    RadioRig) has run 10 s: time for the storage task to write what was logged."""
    rig.run(10_000)
    return S.log_args(rig.vp, name)


class Rig:
    """One connection (handle 1) to the service of a pump running the demo programme."""

    def __init__(self, secure=True, mtu=23, seed=1):
        OPEN.append(self)
        self.scen = S.Scenario(seed=seed)
        self.vp = self.scen.vp
        self.sent = []  # (handle, ch, frame, indicate) in the order sent
        self.fail_sends = False
        self.send_ms = 0  # simulated time each send takes (0: none, the send does not yield)
        self.svc = None
        self._start(secure, mtu)

    def _start(self, secure, mtu):
        self.svc = SV.Service(self.vp.app, KEYS, PUMP_ID, os.urandom, self.vp.hal.clock,
                              self._send)  # fmt: skip
        self.secure = secure
        self.mtu = mtu
        self.connect()

    def connect(self):
        """(Re)connect handle 1: a new link, secured as the rig was made."""
        self.svc.disconnected(HANDLE)
        self.svc.connected(HANDLE, b"\x01\x02\x03\x04\x05\x06")
        if self.secure:
            self.svc.security(HANDLE, 1, 1, 1, 16)
        self.svc.mtu(HANDLE, self.mtu)

    def close(self):
        """Switch the pump off for good (its tasks end; nothing runs in a finaliser)."""
        if self in OPEN:
            OPEN.remove(self)
            self.scen.finish()

    async def _send(self, handle, ch, frame, indicate):
        if self.fail_sends:
            return False
        if self.send_ms:
            await self.vp.loop.sleep_ms(self.send_ms)
        self.sent.append((handle, ch, bytes(frame), indicate))
        return True

    def reboot(self):
        """A watchdog restart of the pump: the application and its service start again."""
        self.vp.reset("watchdog")
        self.run(1_000)
        self._start(True, 23)

    def run(self, ms):
        self.scen.run_to(self.vp.loop.now + ms)

    def write(self, ch, frame, ms=2_000):
        """Write frame to control point ch and run the pump until the service has answered
        (at most ms); returns the service's result code and the frames it sent meanwhile."""
        out = []
        start = len(self.sent)

        async def go():
            out.append(await self.svc.write(HANDLE, ch, frame))

        self.vp.loop.create_task(go(), "ble-write")
        end = self.vp.loop.now + ms
        self.scen.run_to(self.vp.loop.now)  # what is ready runs (a refusal answers at once)
        while not out and self.vp.loop.now < end:
            self.scen.run_to(min(end, self.vp.loop.now + 10))
        if not out:
            raise AssertionError("the service did not answer within %d ms" % ms)
        return out[0], self.sent[start:]

    # ---- as a client ----

    def client(self, role=K.CLINICIAN, key=None, counter=0):
        """A new client on a new link (its end-to-end counters start again)."""
        self.connect()
        return Client(PUMP_ID, role, KEYS[role] if key is None else key, counter)

    def login(self, role=K.CLINICIAN, key=None, counter=0):
        c = self.client(role, key, counter)
        res, sent = self.write(SV.CH_AUTH_CP, c.auth_start(SV.CH_AUTH_CP))
        assert res == K.SUCCESS and len(sent) == 1, (res, sent)
        res, sent = self.write(SV.CH_AUTH_CP, c.auth_proof(SV.CH_AUTH_CP, sent[0][2]))
        c.auth_result(SV.CH_AUTH_CP, sent[-1][2])
        return c

    def ask(self, c, ch, op, operand=b"", ms=2_000):
        """Send one command from client c; returns its checked Reply."""
        res, sent = self.write(ch, c.command(ch, op, operand), ms)
        data_ch = SV.DATA_CHAR[ch]
        reply = None
        for _h, sch, frame, _ind in sent:
            if sch == data_ch:
                c.record(sch, frame)
            elif sch == ch:
                reply = c.response(ch, frame, data_ch)
        assert reply is not None, sent
        assert reply.result == res
        return reply

    def state(self):
        return therapy(self.vp.sup)
