# A programmer's session with a pump over any GATT client (Bumble here, bleak for a real radio):
# subscriptions, authentication and commands on top of tools/linkclient.py.
"""The GATT client is anything with `await write(uuid, data)` (write with response),
`await read(uuid)` and `await subscribe(uuid, indicate)` returning an asyncio.Queue of values.
Every frame written is kept in `sent` (the end-to-end tests replay them all)."""

import asyncio

import radio as RADIO
from link import service as SV
from tools.linkclient import Client, ProtocolError

# The pump's GATT layout as the firmware declares it (firmware/radio.py).
PUMP_SERVICE = RADIO.PUMP_SERVICE
CHAR_NO = {ch: n for ch, n, _flags in RADIO.CHARS}
DATA_OF = SV.DATA_CHAR
TIMEOUT_S = 10.0


def uuid_of(ch):
    return RADIO.pump_uuid(CHAR_NO[ch])


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

    async def login(self, check=None):
        """Authenticate the role; returns the pump's last counter for it. check(frame), if
        given, sees each of the pump's answers first (to word a refusal its own way)."""
        c = self.client
        ch = SV.CH_AUTH_CP
        await self.write(ch, c.auth_start(ch))
        frame = await self._next(ch)
        if check is not None:
            check(frame)
        await self.write(ch, c.auth_proof(ch, frame))
        frame = await self._next(ch)
        if check is not None:
            check(frame)
        return c.auth_result(ch, frame)

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

