# A programmer's session with a pump over any GATT client (Bumble here, bleak for a real radio):
# subscriptions, authentication and commands on top of tools/linkclient.py.
"""The GATT client is anything with `await write(uuid, data)` (write with response),
`await read(uuid)` and `await subscribe(uuid, indicate)` returning an asyncio.Queue of values.
Every frame written is kept in `sent` (the end-to-end tests replay them all)."""

import asyncio

from link import codes as K
from link import service as SV
from tools.linkclient import Client, ProtocolError

PUMP_SERVICE = "6a1f0000-3b9e-4c2d-8f5a-7e41c0d2b9a3"
CHAR_NO = {SV.CH_STATUS: 1, SV.CH_CHANGED: 2, SV.CH_ALARM: 3, SV.CH_FEATURES: 4,
           SV.CH_STATUS_CP: 5, SV.CH_COMMAND_CP: 6, SV.CH_COMMAND_DATA: 7, SV.CH_RACP: 8,
           SV.CH_HISTORY_DATA: 9, SV.CH_AUTH_CP: 10}  # fmt: skip
DATA_OF = {SV.CH_STATUS_CP: SV.CH_COMMAND_DATA, SV.CH_COMMAND_CP: SV.CH_COMMAND_DATA,
           SV.CH_RACP: SV.CH_HISTORY_DATA}  # fmt: skip
TIMEOUT_S = 10.0


def uuid_of(ch):
    return "6a1f%04x-3b9e-4c2d-8f5a-7e41c0d2b9a3" % CHAR_NO[ch]


class Session:
    def __init__(self, gatt, pump_id, role, key, counter=0, timeout_s=TIMEOUT_S):
        self.gatt = gatt
        self.client = Client(pump_id, role, key, counter)
        self.timeout_s = timeout_s
        self.queues = {}
        self.sent = []  # (characteristic, frame) of every write, in order

    async def start(self):
        """Subscribe to the control points' indications and the data notifications."""
        for ch in SV.CONTROL_POINTS:
            self.queues[ch] = await self.gatt.subscribe(uuid_of(ch), True)
        for ch in (SV.CH_COMMAND_DATA, SV.CH_HISTORY_DATA):
            self.queues[ch] = await self.gatt.subscribe(uuid_of(ch), False)

    async def write(self, ch, frame):
        self.sent.append((ch, frame))
        await self.gatt.write(uuid_of(ch), frame)

    async def _next(self, ch):
        try:
            return await asyncio.wait_for(self.queues[ch].get(), self.timeout_s)
        except TimeoutError:
            raise ProtocolError("The pump did not answer in time.") from None

    async def login(self):
        """Authenticate the role; returns the pump's last counter for it."""
        c = self.client
        await self.write(SV.CH_AUTH_CP, c.auth_start(SV.CH_AUTH_CP))
        proof = c.auth_proof(SV.CH_AUTH_CP, await self._next(SV.CH_AUTH_CP))
        await self.write(SV.CH_AUTH_CP, proof)
        return c.auth_result(SV.CH_AUTH_CP, await self._next(SV.CH_AUTH_CP))

    async def ask(self, ch, op, operand=b""):
        """One command; its checked Reply (records first, then the response)."""
        await self.write(ch, self.client.command(ch, op, operand))
        frame = await self._next(ch)
        data_ch = DATA_OF[ch]
        q = self.queues[data_ch]
        while not q.empty():
            self.client.record(data_ch, q.get_nowait())
        return self.client.response(ch, frame, data_ch)

    async def read(self, ch):
        return await self.gatt.read(uuid_of(ch))


__all__ = ["K", "Session", "uuid_of"]
