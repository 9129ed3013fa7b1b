# pumpctl's `ble` transport: the same GATT client interface as gatt_bumble, over bleak (a real
# radio on Linux, macOS or Windows). Pairing and its number are the operating system's.
"""bleak leaves numeric comparison to the operating system (BlueZ's agent, the Windows or macOS
pairing dialog): `pair()` asks the OS to pair and the user confirms the number there. The bond
is the OS's too, so `secure()` has nothing to do: an access to a pump characteristic over a link
without the bond fails with ATT 0x05, which becomes the usual sentence. Tests drive this module
with a fake client class (client_class, scanner_class)."""

import asyncio

from itbtools.gatt import PUMP_NAME, LinkError, att_error_text

CONNECT_TIMEOUT_S = 20.0
OP_TIMEOUT_S = 10.0


def _bleak():
    try:
        import bleak
        import bleak.exc
    except ImportError as e:  # pragma: no cover - bleak is a pinned dependency
        raise LinkError("The `ble` transport needs bleak (%s)." % e) from None
    return bleak


def bleak_error_text(e):
    """One sentence for an exception from bleak."""
    code = getattr(e, "code", None)  # BleakGATTProtocolError (bleak 3.0+): the ATT error code
    if isinstance(code, int):
        return att_error_text(int(code))
    return "The radio link failed (%s)." % (str(e) or type(e).__name__)


def _looks_like_address(text):
    parts = text.split(":")
    if len(parts) == 6 and all(len(p) == 2 for p in parts):
        return True
    return len(text) == 36 and text.count("-") == 4  # a macOS CoreBluetooth UUID


class BleakGatt:
    """target: the pump's address (or macOS UUID), or its advertised name (default "ITB")."""

    def __init__(self, target=None, confirm=None, timeout_s=OP_TIMEOUT_S, client_class=None,
                 scanner_class=None):  # fmt: skip
        self.target = target or PUMP_NAME
        self.confirm = confirm  # unused: the OS shows the number and takes the answer
        self.timeout_s = timeout_s
        self._client_class = client_class
        self._scanner_class = scanner_class
        self.client = None
        self._errors = ()

    async def open(self):
        bleak = _bleak()
        self._client_class = self._client_class or bleak.BleakClient
        self._scanner_class = self._scanner_class or bleak.BleakScanner
        self._errors = (bleak.exc.BleakError,)

    def _caught(self):
        return (TimeoutError, OSError) + tuple(self._errors)

    async def close(self):
        await self.disconnect()

    async def scan(self, seconds):
        try:
            found = await self._scanner_class.discover(timeout=seconds, return_adv=True)
        except self._caught() as e:
            raise LinkError(bleak_error_text(e)) from None
        return sorted((dev.address, adv.local_name or dev.name or "", adv.rssi)
                      for dev, adv in found.values())  # fmt: skip

    async def connect(self, target=None, scan_s=CONNECT_TIMEOUT_S):
        target = target or self.target
        try:
            if _looks_like_address(target):
                device = await self._scanner_class.find_device_by_address(target, timeout=scan_s)
            else:
                device = await self._scanner_class.find_device_by_name(target, timeout=scan_s)
        except self._caught() as e:
            raise LinkError(bleak_error_text(e)) from None
        if device is None:
            raise LinkError("No pump %s is advertising nearby: it serves one programmer at a "
                            "time, so another may be connected." % target)  # fmt: skip
        self.client = self._client_class(device, timeout=CONNECT_TIMEOUT_S)
        try:
            await self.client.connect()
        except self._caught() as e:
            self.client = None
            raise LinkError("The pump %s did not accept a connection (%s)."
                            % (target, bleak_error_text(e).rstrip("."))) from None  # fmt: skip

    async def pair(self):
        try:
            await asyncio.wait_for(self.client.pair(), 60.0)
        except NotImplementedError:
            raise LinkError("This system pairs on first access (macOS): read the status with "
                            "`pumpctl status` and confirm the number in the system dialog.") \
                from None  # fmt: skip
        except self._caught() as e:
            raise LinkError("The pump refused to pair (%s): is its pairing window open? Press its "
                            "button and try again within 60 s." % bleak_error_text(e).rstrip("."))\
                from None  # fmt: skip

    async def secure(self):
        """The OS re-encrypts with its bond on the first access that needs it."""

    async def setup(self):
        """Nothing to do: bleak discovers the services at connect, and the OS negotiates the
        MTU (a small one only cuts the pump's records into smaller notifications)."""

    async def disconnect(self):
        client = self.client
        self.client = None
        if client is not None:
            try:
                await client.disconnect()
            except self._caught():
                pass  # the link is gone either way

    async def write(self, uuid, data):
        try:
            await asyncio.wait_for(self.client.write_gatt_char(uuid, bytes(data), response=True),
                                   self.timeout_s)  # fmt: skip
        except self._caught() as e:
            raise LinkError(bleak_error_text(e)) from None

    async def read(self, uuid):
        try:
            return bytes(await asyncio.wait_for(self.client.read_gatt_char(uuid),
                                                self.timeout_s))  # fmt: skip
        except self._caught() as e:
            raise LinkError(bleak_error_text(e)) from None

    async def subscribe(self, uuid, indicate):
        """bleak's start_notify subscribes to indications or notifications, whichever the
        characteristic has (every pump characteristic has exactly one of them)."""
        queue = asyncio.Queue()
        try:
            await asyncio.wait_for(self.client.start_notify(
                uuid, lambda _char, data: queue.put_nowait(bytes(data))), self.timeout_s)
        except self._caught() as e:
            raise LinkError(bleak_error_text(e)) from None
        return queue
