# Test helper: a BLE central on Bumble driving the pump's GATT server (boards/sim/ble_bumble.py)
# through real ATT and SMP: connect, pair, discover, read, write, subscribe, MTU, disconnect.

import asyncio
import socket

from bumble import hci
from bumble.core import UUID as BumbleUUID
from bumble.device import Device, Peer
from bumble.host import Host
from bumble.pairing import PairingConfig, PairingDelegate
from bumble.transport import open_transport

from boards.sim.ble_bumble import PUMP_ADDRESS, UUID

IO_DISPLAY_YES_NO = PairingDelegate.IoCapability.DISPLAY_OUTPUT_AND_YES_NO_INPUT
IO_NONE = PairingDelegate.IoCapability.NO_OUTPUT_NO_INPUT
IO_KEYBOARD_ONLY = PairingDelegate.IoCapability.KEYBOARD_INPUT_ONLY
IO_DISPLAY_ONLY = PairingDelegate.IoCapability.DISPLAY_OUTPUT_ONLY


def _uuid(value):
    """A Bumble UUID from what tests naturally hold: bluetooth.UUID, an int or a string."""
    if isinstance(value, BumbleUUID):
        return value
    return UUID(value)._to_bumble()


class _CentralDelegate(PairingDelegate):
    """The user at the central: answers numeric comparison with `accept`, types `passkey`."""

    def __init__(self, central, io):
        super().__init__(io_capability=io)
        self._central = central

    async def compare_numbers(self, number, digits):
        self._central.compared.append(number)
        return self._central.accept

    async def confirm(self, auto=False):
        return self._central.accept

    async def get_number(self):
        return self._central.passkey

    async def display_number(self, number, digits):
        self._central.displayed.append(number)


class Central:
    """One central Device and its (single) connection to the pump."""

    def __init__(self, device):
        self.device = device
        self.connection = None
        self.peer = None
        self.accept = True  # answer to numeric comparison / Just Works confirmation
        self.passkey = None  # what the user types when the pump displays a passkey
        self.compared = []  # numbers shown for numeric comparison
        self.displayed = []  # passkeys this central displayed
        self.security_task = None  # the pairing/encryption started by a Security Request
        self.pairing = dict(sc=True, mitm=True, bonding=True, io=IO_DISPLAY_YES_NO)
        device.pairing_config_factory = self._pairing_config

    @classmethod
    async def over_tcp(cls, spec, address="C0:00:00:00:00:03"):
        """A central in this process on the controller served by ble_bumble.open_tcp_server;
        spec is "<host>:<port>". Returns (central, transport)."""
        transport = await open_transport("tcp-client:" + spec)
        host = Host(controller_source=transport.source, controller_sink=transport.sink)
        device = Device(name="central", address=hci.Address(address), host=host)
        await device.power_on()
        return cls(device), transport

    def _pairing_config(self, connection):
        p = self.pairing
        return PairingConfig(
            sc=p["sc"], mitm=p["mitm"], bonding=p["bonding"],
            delegate=_CentralDelegate(self, p["io"]),
        )

    # ---- link ------------------------------------------------------------------------------

    async def connect(self, address=PUMP_ADDRESS, timeout_s=5.0):
        self.connection = await self.device.connect(
            hci.Address(address), timeout=timeout_s
        )
        self.peer = Peer(self.connection)
        self.connection.on(self.connection.EVENT_SECURITY_REQUEST, self._on_security_request)
        return self.connection

    def _on_security_request(self, auth_req):
        # What a phone does: re-encrypt with the bond it has, or pair.
        self.security_task = asyncio.get_running_loop().create_task(self._secure())

    async def _secure(self):
        keys = await self.device.keystore.get(str(self.connection.peer_address))
        if keys is not None and keys.ltk is not None:
            await self.connection.encrypt()
        else:
            await self.connection.pair()

    async def disconnect(self):
        if self.connection is not None:
            done = asyncio.get_running_loop().create_future()
            self.connection.once(
                self.connection.EVENT_DISCONNECTION, lambda reason: done.set_result(reason)
            )
            await self.connection.disconnect()
            await asyncio.wait_for(done, 5.0)
            self.connection = None

    async def pair(self, *, accept=True, sc=True, mitm=True, bonding=True,
                   io=IO_DISPLAY_YES_NO):
        """LESC pairing started by the central; raises bumble.core.ProtocolError (smp) when it
        fails. io=IO_NONE (or mitm=False) gives Just Works."""
        self.accept = accept
        self.pairing = dict(sc=sc, mitm=mitm, bonding=bonding, io=io)
        await self.connection.pair()

    async def encrypt(self):
        """Re-encrypt with the bond from an earlier pairing (raises if the pump lost it)."""
        await self.connection.encrypt()

    async def exchange_mtu(self, mtu=247):
        return await self.peer.request_mtu(mtu)

    # ---- GATT ------------------------------------------------------------------------------

    async def discover(self):
        """Every service, characteristic and descriptor."""
        await self.peer.discover_services()
        for service in self.peer.services:
            await service.discover_characteristics()
            for characteristic in service.characteristics:
                await characteristic.discover_descriptors()
        return self.peer.services

    def characteristic(self, uuid):
        found = self.peer.get_characteristics_by_uuid(_uuid(uuid))
        if not found:
            raise LookupError("no characteristic %r on the pump" % (uuid,))
        return found[0]

    def _handle(self, target):
        return target if isinstance(target, int) else self.characteristic(target).handle

    async def read(self, target):
        """Read a value (a UUID or a handle); a long value is read with Read Blob. An ATT error
        raises bumble.att.ATT_Error with .error_code."""
        return bytes(await self.peer.gatt_client.read_value(self._handle(target)))

    async def write(self, target, data):
        """Write with response; longer than MTU-3 uses Prepare/Execute Write (long write)."""
        await self.peer.gatt_client.write_value(self._handle(target), bytes(data), True)

    async def subscribe(self, uuid, indicate=False):
        """Write the CCCD and return an asyncio.Queue of the values received."""
        queue = asyncio.Queue()
        characteristic = self.characteristic(uuid)
        await self.peer.gatt_client.subscribe(
            characteristic, lambda value: queue.put_nowait(bytes(value)),
            prefer_notify=not indicate,
        )
        return queue

    def listen(self, value_handle):
        """Queue notifications and indications for a handle without touching the CCCD (to see
        what the pump sends to a client that never subscribed)."""
        queue = asyncio.Queue()
        client = self.peer.gatt_client
        for table in (client.notification_subscribers, client.indication_subscribers):
            table.setdefault(value_handle, set()).add(
                lambda value: queue.put_nowait(bytes(value))
            )
        return queue

    def hold_confirmations(self, hold=True):
        """Stop (or resume) confirming indications, to make the pump's indication time out."""
        client = self.peer.gatt_client
        if hold:
            client.send_confirmation = lambda confirmation: None
        else:
            client.__dict__.pop("send_confirmation", None)


def free_port():
    """A TCP port on 127.0.0.1 that was free a moment ago (for a server a test starts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def next_value(queue, timeout_s=2.0):
    return await asyncio.wait_for(queue.get(), timeout_s)
