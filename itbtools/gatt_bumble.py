# pumpctl's `sim` transport: a GATT client on Bumble's host stack, reaching a virtual pump
# (`make sim-radio`) over Bumble's tcp-client transport, with LE Secure Connections bonding.
"""The programmer's own Bumble host talks HCI over TCP to a virtual controller that shares a
virtual radio link with the pump. Its bonds live in a Bumble JSON key store file; the file's one
namespace is this programmer's (static random) address, so that a later run presents the same
address and the pump finds its bond. The interface is what tools/linksession.py expects
(write, read, subscribe), plus scan, connect, pair, secure and close."""

import asyncio
import json
import os
from pathlib import Path

from bumble import hci
from bumble.core import UUID, AdvertisingData, BaseBumbleError
from bumble.device import Device, Peer
from bumble.host import Host
from bumble.keys import JsonKeyStore
from bumble.pairing import PairingConfig, PairingDelegate
from bumble.transport import open_transport

from itbtools.gatt import MTU, PUMP_NAME, Declined, LinkError, att_error_text

IO_DISPLAY_YES_NO = PairingDelegate.IoCapability.DISPLAY_OUTPUT_AND_YES_NO_INPUT
CONNECT_TIMEOUT_S = 5.0
OP_TIMEOUT_S = 10.0


def bumble_error_text(e):
    """One sentence for an exception from Bumble."""
    code = getattr(e, "error_code", None)
    if getattr(e, "error_namespace", None) == "att" and isinstance(code, int):
        return att_error_text(code)
    if getattr(e, "error_namespace", None) == "smp":
        return "Pairing failed (%s)." % (getattr(e, "error_name", None) or e)
    return "The radio link failed (%s)." % (str(e) or type(e).__name__)


class _Delegate(PairingDelegate):
    """The user at the programmer: numeric comparison goes to the confirm callback."""

    def __init__(self, gatt):
        super().__init__(io_capability=IO_DISPLAY_YES_NO)
        self._gatt = gatt

    async def compare_numbers(self, number, digits):
        self._gatt.compared.append(number)
        ok = bool(await self._gatt.confirm("%0*d" % (digits, number)))
        self._gatt.declined = not ok
        return ok

    async def confirm(self, auto=False):
        return False  # Just Works gives a link the pump refuses anyway

    async def get_number(self):
        return None  # the pump has no display: nothing to type

    async def display_number(self, number, digits):
        self._gatt.compared.append(number)


def bond_address(path):
    """The programmer address recorded in the bond file (its one namespace), or None."""
    try:
        db = json.loads(Path(path).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise LinkError("The bond file %s cannot be read (%s)." % (path, e)) from None
    names = [n for n in db if n != JsonKeyStore.DEFAULT_NAMESPACE] if isinstance(db, dict) else []
    return names[0] if names else None


def _adv_name(adv):
    """The complete local name an advertisement carries ("" if none)."""
    name = adv.data.get(AdvertisingData.COMPLETE_LOCAL_NAME)
    if isinstance(name, bytes):
        name = name.decode(errors="replace")
    return name or ""


async def _deny(_number):
    return False


class BumbleGatt:
    """spec: "host:port" of the virtual pump's HCI server. bond_file: the JSON key store.
    confirm(number_text) -> awaitable bool: the user's answer to numeric comparison."""

    def __init__(self, spec, bond_file, confirm=None, timeout_s=OP_TIMEOUT_S):
        self.spec = spec
        self.bond_file = Path(bond_file)
        self.confirm = confirm or _deny
        self.timeout_s = timeout_s
        self.transport = None
        self.device = None
        self.connection = None
        self.peer = None
        self.compared = []
        self.declined = False

    # ---- the host ----------------------------------------------------------------------

    async def open(self):
        try:
            self.transport = await asyncio.wait_for(
                open_transport("tcp-client:" + self.spec), CONNECT_TIMEOUT_S)  # fmt: skip
        except (OSError, TimeoutError, BaseBumbleError, ValueError):
            raise LinkError("No virtual pump is listening at %s: start one with `make sim-radio`."
                            % self.spec) from None  # fmt: skip
        address = bond_address(self.bond_file)
        if address is None:
            address = str(hci.Address.generate_static_address())
        host = Host(controller_source=self.transport.source, controller_sink=self.transport.sink)
        self.device = Device(name="pumpctl", address=hci.Address(address), host=host)
        self.device.keystore = BondStore(namespace=address, filename=str(self.bond_file))
        self.device.pairing_config_factory = lambda _conn: PairingConfig(
            sc=True, mitm=True, bonding=True, delegate=_Delegate(self))  # fmt: skip
        try:
            await asyncio.wait_for(self.device.power_on(), CONNECT_TIMEOUT_S)
        except (TimeoutError, BaseBumbleError, OSError) as e:
            await self.close()
            raise LinkError("The virtual radio at %s did not start (%s)." % (self.spec, e)) from e

    async def close(self):
        try:
            if self.connection is not None:
                await self.disconnect()
        finally:
            if self.transport is not None:
                t = self.transport
                self.transport = None
                await t.close()

    async def scan(self, seconds):
        """[(address, name, rssi)] of what advertised within seconds."""
        seen = {}

        def on_adv(adv):
            seen[str(adv.address)] = (str(adv.address), _adv_name(adv), adv.rssi)

        self.device.on(Device.EVENT_ADVERTISEMENT, on_adv)
        await self.device.start_scanning(filter_duplicates=True)
        try:
            await asyncio.sleep(seconds)
        finally:
            await self.device.stop_scanning()
            self.device.remove_listener(Device.EVENT_ADVERTISEMENT, on_adv)
        return sorted(seen.values())

    # ---- the link ----------------------------------------------------------------------

    async def connect(self, target=None, scan_s=CONNECT_TIMEOUT_S):
        """Connect to the pump: the first device advertising the pump's name, or target (an
        address)."""
        if target is None:
            target = await self._find(scan_s)
        try:
            self.connection = await self.device.connect(
                hci.Address(target), timeout=CONNECT_TIMEOUT_S)  # fmt: skip
        except (TimeoutError, BaseBumbleError, ValueError) as e:
            raise LinkError("The pump at %s did not accept a connection (%s): another "
                            "programmer may be connected." % (target, e)) from None  # fmt: skip
        self.peer = Peer(self.connection)

    async def _find(self, scan_s):
        found = asyncio.get_running_loop().create_future()

        def on_adv(adv):
            if _adv_name(adv) == PUMP_NAME and not found.done():
                found.set_result(str(adv.address))

        self.device.on(Device.EVENT_ADVERTISEMENT, on_adv)
        await self.device.start_scanning(filter_duplicates=True)
        try:
            return await asyncio.wait_for(found, scan_s)
        except TimeoutError:
            raise LinkError("No pump is advertising at %s: it serves one programmer at a time, "
                            "so another may be connected." % self.spec) from None  # fmt: skip
        finally:
            await self.device.stop_scanning()
            self.device.remove_listener(Device.EVENT_ADVERTISEMENT, on_adv)

    async def pair(self):
        """LE Secure Connections with numeric comparison; the bond goes to the bond file."""
        try:
            await asyncio.wait_for(self.connection.pair(), 40.0)
        except TimeoutError:
            raise LinkError("Pairing timed out.") from None
        except BaseBumbleError as e:
            if self.declined:
                raise Declined("Pairing cancelled: the number was not confirmed.") from None
            raise LinkError("The pump refused to pair (%s): is its pairing window open? Press "
                            "its button and try again within 60 s."
                            % (getattr(e, "error_name", None) or e)) from None  # fmt: skip

    async def has_bond(self):
        return await self.device.keystore.get(str(self.connection.peer_address)) is not None

    async def secure(self):
        """Encrypt the link with the bond from an earlier `pumpctl pair`."""
        if not await self.has_bond():
            raise LinkError("This programmer has no bond with the pump: run `pumpctl pair` "
                            "while the pump's pairing window is open.")  # fmt: skip
        try:
            await asyncio.wait_for(self.connection.encrypt(), self.timeout_s)
        except (TimeoutError, BaseBumbleError):
            raise LinkError("The pump did not accept this programmer's bond (it may have "
                            "forgotten it): pair again with `pumpctl pair`.") from None

    async def setup(self):
        """MTU exchange and service discovery."""
        try:
            await asyncio.wait_for(self.peer.request_mtu(MTU), self.timeout_s)
            await asyncio.wait_for(self.peer.discover_services(), self.timeout_s)
            for service in self.peer.services:
                await asyncio.wait_for(service.discover_characteristics(), self.timeout_s)
                for ch in service.characteristics:
                    await asyncio.wait_for(ch.discover_descriptors(), self.timeout_s)
        except (TimeoutError, BaseBumbleError) as e:
            raise LinkError(bumble_error_text(e)) from None

    async def disconnect(self):
        conn = self.connection
        self.connection = None
        if conn is None:
            return
        done = asyncio.get_running_loop().create_future()
        conn.once(conn.EVENT_DISCONNECTION,
                  lambda reason: done.done() or done.set_result(reason))  # fmt: skip
        try:
            await asyncio.wait_for(conn.disconnect(), 5.0)
            await asyncio.wait_for(done, 5.0)
        except (TimeoutError, BaseBumbleError, OSError):
            pass  # the link is gone either way

    # ---- GATT, as tools/linksession.py uses it -----------------------------------------

    def _char(self, uuid):
        found = self.peer.get_characteristics_by_uuid(UUID(uuid))
        if not found:
            raise LinkError("The device is not an ITB pump (no characteristic %s)." % uuid)
        return found[0]

    async def write(self, uuid, data):
        try:
            await asyncio.wait_for(
                self.peer.gatt_client.write_value(self._char(uuid).handle, bytes(data), True),
                self.timeout_s)  # fmt: skip
        except (TimeoutError, BaseBumbleError) as e:
            raise LinkError(bumble_error_text(e)) from None

    async def read(self, uuid):
        try:
            return bytes(await asyncio.wait_for(
                self.peer.gatt_client.read_value(self._char(uuid).handle), self.timeout_s))
        except (TimeoutError, BaseBumbleError) as e:
            raise LinkError(bumble_error_text(e)) from None

    async def subscribe(self, uuid, indicate):
        queue = asyncio.Queue()
        try:
            await asyncio.wait_for(self.peer.gatt_client.subscribe(
                self._char(uuid), lambda value: queue.put_nowait(bytes(value)),
                prefer_notify=not indicate), self.timeout_s)  # fmt: skip
        except (TimeoutError, BaseBumbleError) as e:
            raise LinkError(bumble_error_text(e)) from None
        return queue


class BondStore(JsonKeyStore):
    """Bumble's JSON key store, but the file holding the bond's keys (secrets) is created
    owner-only: Bumble writes a temporary file with the default mode and renames it over the
    store, so a chmod afterwards would leave the keys readable for a moment."""

    async def save(self, db):
        folder = Path(self.filename).parent
        if not folder.exists():
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        temp = Path(self.filename).with_name(Path(self.filename).name + ".tmp")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            os.fchmod(f.fileno(), 0o600)  # a temporary file left from before keeps its mode
            json.dump(db, f, sort_keys=True, indent=4)
        os.replace(temp, self.filename)


def default_bond_file():
    """Where pumpctl keeps its bonds unless told: $PUMPCTL_BONDS, else the user's data folder."""
    env = os.environ.get("PUMPCTL_BONDS")
    if env:
        return Path(env)
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "itb-pumpctl" / "bonds.json"
