# MicroPython's `bluetooth` module (peripheral subset, ESP32/NimBLE behaviour) over Google's Bumble
# BLE host, so the firmware's GATT server runs over real ATT and SMP on CPython (host only).
#
# The adapter lives on a CPython asyncio loop. Its methods are synchronous, as on the board; the
# IRQ handler is called synchronously from Bumble's callbacks, as ESP32's synchronous events do.
# Where Bumble and NimBLE differ, NimBLE's behaviour is reproduced (the comments say where).
# Host-only extras, not in MicroPython: open_pair / add_central / open_hci / open_tcp_server to
# make adapters, and on BLE: settle(), device, link, violations and the knobs in its docstring.

import asyncio
import errno
import struct
import sys
import traceback

from bumble import att, hci, smp
from bumble.controller import Controller
from bumble.core import UUID as _BumbleUUID
from bumble.device import AdvertisingType, Device
from bumble.gatt import (
    GATT_DEVICE_NAME_CHARACTERISTIC,
    Characteristic,
    Descriptor,
    Service,
)
from bumble.host import Host
from bumble.keys import KeyStore, PairingKeys
from bumble.link import LocalLink
from bumble.pairing import PairingConfig, PairingDelegate
from bumble.transport import open_transport
from bumble.transport.common import AsyncPipeSink

# The flags MicroPython exports as module attributes; the security flags exist only as numbers
# (apps define them with const()), so exporting them here would let host code use names the
# board does not have.
FLAG_READ = 0x0002
FLAG_WRITE_NO_RESPONSE = 0x0004
FLAG_WRITE = 0x0008
FLAG_NOTIFY = 0x0010
FLAG_INDICATE = 0x0020

_FLAG_READ_ENCRYPTED = 0x0200
_FLAG_READ_AUTHENTICATED = 0x0400
_FLAG_WRITE_ENCRYPTED = 0x1000
_FLAG_WRITE_AUTHENTICATED = 0x2000

_IRQ_CENTRAL_CONNECT = 1
_IRQ_CENTRAL_DISCONNECT = 2
_IRQ_GATTS_WRITE = 3
_IRQ_GATTS_READ_REQUEST = 4
_IRQ_GATTS_INDICATE_DONE = 20
_IRQ_MTU_EXCHANGED = 21
_IRQ_ENCRYPTION_UPDATE = 28
_IRQ_GET_SECRET = 29
_IRQ_SET_SECRET = 30
_IRQ_PASSKEY_ACTION = 31

_PASSKEY_ACTION_INPUT = 2
_PASSKEY_ACTION_DISPLAY = 3
_PASSKEY_ACTION_NUMERIC_COMPARISON = 4

# NimBLE's store object types, which MicroPython passes through as sec_type.
SECRET_TYPE_OUR_SEC = 1
SECRET_TYPE_PEER_SEC = 2

_ATT_READ_NOT_PERMITTED = 0x02
_ATT_WRITE_NOT_PERMITTED = 0x03
_ATT_INSUFFICIENT_AUTHENTICATION = 0x05
_ATT_INSUFFICIENT_ENCRYPTION = 0x0F

# NimBLE host status codes reported in _IRQ_GATTS_INDICATE_DONE when no confirmation came.
_BLE_HS_ENOTCONN = 7
_BLE_HS_ETIMEOUT = 13

_DEFAULT_ATTR_LEN = 20  # MP_BLUETOOTH_DEFAULT_ATTR_LEN
_DEFAULT_MTU = 256  # ESP-IDF CONFIG_BT_NIMBLE_ATT_PREFERRED_MTU
_MTU_MIN = 23
_MTU_MAX = 527  # NimBLE BLE_ATT_MTU_MAX
_ADV_UNIT_US = 625

# The opaque secret value: NimBLE stores a fixed-size ble_store_value_sec; this is our own
# fixed-size record. A value of another length is "not found", as on the board.
_SEC_FORMAT = "<BB6sBB16s16s"  # version, addr type, addr (LE), flags, key size, LTK, IRK
_SEC_LEN = struct.calcsize(_SEC_FORMAT)
_SEC_VERSION = 1
_SEC_LTK = 0x01
_SEC_AUTHENTICATED = 0x02
_SEC_SC = 0x04
_SEC_IRK = 0x08
_SECRET_SCAN_MAX = 64  # bound on GET_SECRET index iteration
_STORE_RETRIES = 16  # bound on NimBLE's evict-and-retry and delete-until-absent loops


def _oserror(code):
    return OSError(code, errno.errorcode.get(code, str(code)))


class UUID:
    """bluetooth.UUID: a 16-bit int, a 2/4/16-byte little-endian buffer, or a 128-bit string."""

    def __init__(self, value):
        if isinstance(value, UUID):
            self._bytes = value._bytes
        elif isinstance(value, int):
            if not 0 <= value <= 0xFFFFFFFF:
                raise ValueError("invalid UUID")
            self._bytes = value.to_bytes(2 if value <= 0xFFFF else 4, "little")
        elif isinstance(value, str):
            digits = value.replace("-", "")
            if len(digits) != 32:
                raise ValueError("invalid UUID")
            try:
                self._bytes = bytes(reversed(bytes.fromhex(digits)))
            except ValueError:
                raise ValueError("invalid UUID") from None
        else:
            raw = bytes(memoryview(value))
            if len(raw) not in (2, 4, 16):
                raise ValueError("invalid UUID")
            self._bytes = raw

    def __bytes__(self):
        return self._bytes

    def __eq__(self, other):
        return isinstance(other, UUID) and other._bytes == self._bytes

    def __hash__(self):
        return hash(self._bytes)

    def __repr__(self):
        if len(self._bytes) == 16:
            h = bytes(reversed(self._bytes)).hex()
            return "UUID('%s-%s-%s-%s-%s')" % (h[:8], h[8:12], h[12:16], h[16:20], h[20:])
        return "UUID(0x%x)" % int.from_bytes(self._bytes, "little")

    def _to_bumble(self):
        return _BumbleUUID.from_bytes(self._bytes)


class _Entry:
    """One attribute of MicroPython's GATT database: the value buffer the app sees."""

    __slots__ = ("handle", "flags", "is_chr", "data", "alloc", "append")

    def __init__(self, flags, is_chr):
        self.handle = 0
        self.flags = flags
        self.is_chr = is_chr
        self.data = bytearray()
        self.alloc = _DEFAULT_ATTR_LEN
        self.append = False


class _Conn:
    """What the adapter tracks per connection beyond Bumble's Connection."""

    def __init__(self, connection):
        self.connection = connection
        self.handle = connection.handle
        self.addr_type = 1 if connection.peer_address.is_random else 0
        self.addr = bytes(reversed(bytes(connection.peer_address)))  # MSB first, as on the board
        # Bumble marks any encrypted LE link "authenticated"; NimBLE's meaning (MITM-protected
        # keys) is tracked here instead.
        self.authenticated = False
        self.bonded = False
        self.pairing = False
        self.reported = False
        self.stored_authenticated = False
        self.stored_key_size = 0
        self.key_size = 0
        self.passkey = None  # (action, future) while SMP waits for gap_passkey
        self.indication = None  # (value_handle, future) of the one indication in flight


class _SecretStore(KeyStore):
    """Bumble's key store, kept by the firmware through _IRQ_GET_SECRET / _IRQ_SET_SECRET."""

    def __init__(self, ble):
        self._ble = ble

    async def update(self, name, keys):
        self._ble._store_keys(name, keys)

    async def get(self, name):
        return self._ble._load_keys(name)

    async def delete(self, name):
        self._ble._unpair(_secret_key(name))

    async def get_all(self):
        return self._ble._all_keys()


def _conn_key(conn):
    return bytes([conn.addr_type]) + bytes(reversed(conn.addr))


def _secret_key(name):
    # NimBLE keys the store by ble_addr_t: the type byte, then the address LSB first.
    address = hci.Address(name)
    return bytes([1 if address.is_random else 0]) + bytes(address)


class _Delegate(PairingDelegate):
    """Maps Bumble's pairing questions to _IRQ_PASSKEY_ACTION, answered by gap_passkey()."""

    def __init__(self, ble, conn, io):
        super().__init__(io_capability=PairingDelegate.IoCapability(io))
        self._ble = ble
        self._conn = conn

    async def accept(self):
        # NimBLE has no hook to refuse a pairing request; the firmware decides through
        # numeric comparison, what it stores, and the characteristics' security flags.
        return True

    async def confirm(self, auto=False):
        # Just Works: NimBLE raises no passkey action, the app is not asked.
        return True

    async def compare_numbers(self, number, digits):
        answer = await self._ble._ask(self._conn, _PASSKEY_ACTION_NUMERIC_COMPARISON, number)
        return bool(answer)

    async def get_number(self):
        answer = await self._ble._ask(self._conn, _PASSKEY_ACTION_INPUT, 0)
        return None if answer is None else int(answer)

    async def generate_passkey(self):
        # With DISPLAY the app chooses the passkey (gap_passkey) and shows it.
        answer = await self._ble._ask(self._conn, _PASSKEY_ACTION_DISPLAY, 0)
        if answer is None:
            session = self._ble._device.smp_manager.sessions.get(self._conn.handle)
            if session is not None:
                session.send_pairing_failed(smp.ErrorCode.PASSKEY_ENTRY_FAILED)
            raise asyncio.CancelledError("no passkey from the application")
        return int(answer) % 1000000

    async def display_number(self, number, digits):
        return None


_current = None


class BLE:
    """bluetooth.BLE over a Bumble Device (peripheral role).

    BLE(device) makes a new adapter and the current one (open_hci builds the device over a
    transport); BLE() returns the current one, as MicroPython's singleton. Knobs for tests:
    passkey_timeout_s (SMP waits this long for gap_passkey), indicate_timeout_s (ATT
    transaction timeout) and notify_pool (None, or how many ACL packets may be queued before
    gatts_notify raises ENOMEM).
    """

    def __new__(cls, device=None, **kwargs):
        if device is None:
            if _current is None:
                raise OSError(errno.ENODEV, "no Bumble device: make one with BLE(device)")
            return _current
        return super().__new__(cls)

    def __init__(self, device=None, *, passkey_timeout_s=30.0, indicate_timeout_s=30.0,
                 notify_pool=None):
        global _current
        if device is None:
            return
        self._device = device
        self._loop = asyncio.get_running_loop()
        self.passkey_timeout_s = passkey_timeout_s
        self.indicate_timeout_s = indicate_timeout_s
        self.notify_pool = notify_pool
        self._handler = None
        self._active = False
        self._entries = {}
        self._conns = {}
        self._gap_name = b"MPY NIMBLE"
        self._mtu = _DEFAULT_MTU
        self._addr_mode = 0
        self._bond = False
        self._mitm = False
        self._le_secure = False
        self._io = 3
        self._adv_data = b""
        self._resp_data = b""
        self._last_op = None
        self.violations = []  # host only: misuse that would loop or hang NimBLE on the board
        self.link = None  # host only: the LocalLink, when open_pair/open_tcp_server made one
        device.keystore = _SecretStore(self)
        device.pairing_config_factory = self._pairing_config
        device.gatt_server.max_mtu = self._mtu
        device.on(device.EVENT_CONNECTION, self._on_connection)
        _current = self

    # ---- lifecycle -------------------------------------------------------------------------

    @property
    def device(self):
        """The Bumble Device under the adapter (host side only; not in MicroPython)."""
        return self._device

    def active(self, *args):
        if args:
            want = bool(args[0])
            if want and not self._active:
                self._active = True
                if not self._device.powered_on:
                    self._schedule(self._device.power_on)
                self._reset_db()
            elif not want and self._active:
                # Deinit: the stack goes away with its connections and database; the app gets
                # no more events (NimBLE's callbacks check the active state first).
                self._active = False
                for conn in list(self._conns.values()):
                    self._schedule(conn.connection.disconnect)
                self._conns.clear()
                self._schedule(self._device.stop_advertising)
                self._entries = {}
                self._reset_db()
        return self._active

    async def settle(self):
        """Host only: wait until the scheduled stack operations (power on, advertising,
        disconnects) have run."""
        while self._last_op is not None and not self._last_op.done():
            await asyncio.wait([self._last_op])

    def _schedule(self, coro_fn, *args):
        # Stack operations run in order on the loop, as NimBLE's host task would run them.
        previous = self._last_op

        async def run():
            if previous is not None:
                await asyncio.wait([previous])
            try:
                await coro_fn(*args)
            except Exception as exc:  # a failed operation must not stop the later ones
                print("ble_bumble: %s failed: %r" % (coro_fn.__name__, exc), file=sys.stderr)

        self._last_op = self._loop.create_task(run())

    def _require_active(self):
        if not self._active:
            raise _oserror(errno.ENODEV)

    # ---- config / irq ----------------------------------------------------------------------

    def config(self, *args, **kwargs):
        if args and kwargs:
            raise TypeError("can't specify pos and kw args")
        if args:
            if len(args) != 1:
                raise TypeError("must query one param")
            return self._config_get(args[0])
        if not kwargs:
            raise TypeError("must query one param")
        for key, value in kwargs.items():
            self._config_set(key, value)
        return None

    def _config_get(self, key):
        if key == "gap_name":
            return bytes(self._gap_name)
        if key == "mac":
            self._require_active()
            if self._addr_mode == 0 and self._device.public_address != hci.Address.ANY:
                address = self._device.public_address
            else:
                address = self._device.random_address
            return (0 if address.is_public else 1, bytes(reversed(bytes(address))))
        if key == "mtu":
            self._require_active()
            return self._mtu
        # bond, mitm, io, le_secure and addr_mode are write-only; rxbuf is not on ESP32.
        raise ValueError("unknown config param")

    def _config_set(self, key, value):
        if key == "gap_name":
            self._gap_name = value.encode() if isinstance(value, str) else bytes(value)
            self._device.name = self._gap_name.decode("utf-8", "replace")
            self._set_gap_name_attribute()
        elif key == "mtu":
            self._require_active()
            mtu = int(value)
            if not _MTU_MIN <= mtu <= _MTU_MAX:
                raise _oserror(errno.EINVAL)
            self._mtu = mtu
            self._device.gatt_server.max_mtu = mtu
        elif key == "addr_mode":
            self._addr_mode = int(value)
        elif key == "bond":
            self._bond = bool(value)
        elif key == "mitm":
            self._mitm = bool(value)
        elif key == "le_secure":
            self._le_secure = bool(value)
        elif key == "io":
            self._io = int(value)
        else:
            raise ValueError("unknown config param")

    def irq(self, handler):
        if handler is not None and not callable(handler):
            raise ValueError("invalid handler")
        self._handler = handler

    def _irq(self, event, data, views=()):
        """Calls the app's handler like MicroPython: exceptions printed and swallowed,
        memoryviews released afterwards so a kept reference fails loudly."""
        try:
            handler = self._handler
            if handler is None or not self._active:
                return None
            try:
                return handler(event, data)
            except Exception as exc:  # the board swallows them too
                print("Unhandled exception in IRQ callback handler", file=sys.stderr)
                traceback.print_exception(exc, file=sys.stderr)
                return None
        finally:
            for view in views:
                view.release()

    def _irq_addr(self, event, conn):
        view = memoryview(bytes(conn.addr))
        self._irq(event, (conn.handle, conn.addr_type, view), (view,))

    # ---- GAP -------------------------------------------------------------------------------

    def gap_advertise(self, interval_us=500000, adv_data=None, *, resp_data=None,
                      connectable=True):
        self._require_active()
        if adv_data is not None:
            self._adv_data = bytes(adv_data)
        if resp_data is not None:
            self._resp_data = bytes(resp_data)
        if interval_us is None:
            self._schedule(self._device.stop_advertising)
            return
        interval_ms = (int(interval_us) // _ADV_UNIT_US) * _ADV_UNIT_US / 1000
        if connectable:
            adv_type = AdvertisingType.UNDIRECTED_CONNECTABLE_SCANNABLE
        elif self._resp_data:
            adv_type = AdvertisingType.UNDIRECTED_SCANNABLE
        else:
            adv_type = AdvertisingType.UNDIRECTED
        own = hci.OwnAddressType.PUBLIC if self._addr_mode == 0 else hci.OwnAddressType.RANDOM
        if own == hci.OwnAddressType.PUBLIC and self._device.public_address == hci.Address.ANY:
            own = hci.OwnAddressType.RANDOM
        adv, resp = self._adv_data, self._resp_data

        async def start():
            # MicroPython restarts advertising with the new parameters.
            if self._device.is_advertising:
                await self._device.stop_advertising()
            await self._device.start_advertising(
                advertising_type=adv_type, own_address_type=own, advertising_data=adv,
                scan_response_data=resp, advertising_interval_min=interval_ms,
                advertising_interval_max=interval_ms,
            )

        self._schedule(start)

    def gap_disconnect(self, conn_handle):
        self._require_active()
        conn = self._conns.get(conn_handle)
        if conn is None:
            return False
        self._schedule(conn.connection.disconnect)
        return True

    def gap_pair(self, conn_handle):
        self._require_active()
        conn = self._conn(conn_handle)
        # As peripheral, NimBLE's ble_gap_security_initiate sends an SMP Security Request;
        # the central then pairs, or re-encrypts with a bond it has.
        self._device.request_pairing(conn.connection)

    def gap_passkey(self, conn_handle, action, passkey):
        self._require_active()
        conn = self._conn(conn_handle)
        if conn.passkey is None:
            raise _oserror(errno.ENOENT)  # NimBLE: no pairing procedure waiting
        want, future = conn.passkey
        if int(action) != want:
            raise _oserror(errno.EINVAL)
        if not future.done():
            if want == _PASSKEY_ACTION_NUMERIC_COMPARISON:
                future.set_result(1 if passkey else 0)
            else:
                future.set_result(int(passkey))

    def _conn(self, conn_handle):
        conn = self._conns.get(conn_handle)
        if conn is None:
            raise _oserror(errno.ENOTCONN)
        return conn

    # ---- GATT server -----------------------------------------------------------------------

    def gatts_register_services(self, services):
        self._require_active()
        entries = {}
        bumble_services = []
        result = []
        for service in services:
            svc_uuid, chars = service[0], service[1]
            bumble_chars = []
            ordered = []
            for char in chars:
                if len(char) not in (2, 3):
                    raise ValueError("invalid characteristic tuple")
                c_uuid, c_flags = UUID(char[0]), int(char[1])
                entry = _Entry(c_flags, True)
                descriptors = []
                dsc_entries = []
                for dsc in char[2] if len(char) == 3 else ():
                    d_uuid, d_flags = UUID(dsc[0]), int(dsc[1])
                    d_entry = _Entry(d_flags, False)
                    descriptors.append(Descriptor(
                        d_uuid._to_bumble(), Descriptor.READABLE | Descriptor.WRITEABLE,
                        self._attribute_value(d_entry),
                    ))
                    dsc_entries.append(d_entry)
                # Access is checked in _check_access (NimBLE's rules), not by Bumble: Bumble
                # would call any encrypted link authenticated.
                bumble_char = Characteristic(
                    c_uuid._to_bumble(), Characteristic.Properties(c_flags & 0xFF),
                    Characteristic.READABLE | Characteristic.WRITEABLE,
                    self._attribute_value(entry), descriptors,
                )
                bumble_chars.append(bumble_char)
                ordered.append((entry, bumble_char))
                ordered.extend(zip(dsc_entries, descriptors))
            bumble_services.append(Service(UUID(svc_uuid)._to_bumble(), bumble_chars))
            result.append(ordered)
        self._reset_db(bumble_services)
        handles = []
        for ordered in result:
            service_handles = []
            for entry, attribute in ordered:
                entry.handle = attribute.handle
                entries[entry.handle] = entry
                service_handles.append(entry.handle)
            handles.append(tuple(service_handles))
        self._entries = entries
        return tuple(handles)

    def _reset_db(self, services=()):
        # MicroPython replaces the whole database; Bumble can only add, so rebuild it.
        server = self._device.gatt_server
        server.services.clear()
        server.attributes.clear()
        server.attributes_by_handle.clear()
        self._device.add_default_services(
            add_gap_service=self._device.config.gap_service_enabled,
            add_gatt_service=self._device.config.gatt_service_enabled,
        )
        self._set_gap_name_attribute()
        server.add_services(services)

    def _set_gap_name_attribute(self):
        for attribute in self._device.gatt_server.attributes:
            if isinstance(attribute, Characteristic) and (
                attribute.uuid == GATT_DEVICE_NAME_CHARACTERISTIC
            ):
                attribute.value = bytes(self._gap_name)

    def _attribute_value(self, entry):
        return att.AttributeValue(
            read=lambda connection: self._remote_read(entry, connection),
            write=lambda connection, value: self._remote_write(entry, connection, value),
        )

    def _entry(self, value_handle):
        self._require_active()
        entry = self._entries.get(value_handle)
        if entry is None:
            raise _oserror(errno.EINVAL)
        return entry

    def gatts_read(self, value_handle):
        entry = self._entry(value_handle)
        value = bytes(entry.data)
        if entry.append:
            entry.data = bytearray()
        return value

    def gatts_write(self, value_handle, data, send_update=False):
        entry = self._entry(value_handle)
        value = bytes(data)
        # A local write grows the buffer; only remote writes are capped at the allocation.
        entry.alloc = max(entry.alloc, len(value))
        entry.data = bytearray(value)
        if send_update:
            self._send_update(entry)
        return len(value)

    def gatts_set_buffer(self, value_handle, length, append=False):
        entry = self._entry(value_handle)
        entry.alloc = int(length)
        entry.data = bytearray()
        entry.append = bool(append)

    def gatts_notify(self, conn_handle, value_handle, data=None):
        entry = self._entry(value_handle)
        conn = self._conn(conn_handle)
        self._check_pool(conn)
        self._send_value(conn, entry, data, att.ATT_Handle_Value_Notification)

    def gatts_indicate(self, conn_handle, value_handle, data=None):
        entry = self._entry(value_handle)
        conn = self._conn(conn_handle)
        if conn.indication is not None:
            raise _oserror(errno.EALREADY)  # ATT allows one indication in flight
        self._check_pool(conn)
        self._start_indication(conn, entry, data)

    def _check_pool(self, conn):
        if self.notify_pool is None:
            return
        queue = conn.connection.data_packet_queue
        if queue is not None and queue.pending >= self.notify_pool:
            raise _oserror(errno.ENOMEM)  # NimBLE's mbuf pool is exhausted

    def _send_value(self, conn, entry, data, pdu_class):
        value = bytes(entry.data) if data is None else bytes(data)
        # Sent regardless of the CCCD, as MicroPython does; cut to the payload the MTU allows.
        value = value[: conn.connection.att_mtu - 3]
        pdu = pdu_class(attribute_handle=entry.handle, attribute_value=value)
        self._device.send_l2cap_pdu(conn.handle, att.ATT_CID, bytes(pdu))

    def _start_indication(self, conn, entry, data):
        server = self._device.gatt_server
        future = self._loop.create_future()
        # Bumble's server resolves this future when the Handle Value Confirmation arrives.
        server.pending_confirmations[conn.connection] = future
        conn.indication = (entry.handle, future)
        self._send_value(conn, entry, data, att.ATT_Handle_Value_Indication)
        self._loop.create_task(self._await_confirmation(conn, entry.handle, future))

    async def _await_confirmation(self, conn, value_handle, future):
        try:
            await asyncio.wait_for(asyncio.shield(future), self.indicate_timeout_s)
            status = 0
        except asyncio.TimeoutError:
            status = _BLE_HS_ETIMEOUT
        except asyncio.CancelledError:
            status = _BLE_HS_ENOTCONN
        if conn.indication is None or conn.indication[1] is not future:
            return  # already reported (disconnect)
        conn.indication = None
        if self._device.gatt_server.pending_confirmations.get(conn.connection) is future:
            self._device.gatt_server.pending_confirmations[conn.connection] = None
        self._irq(_IRQ_GATTS_INDICATE_DONE, (conn.handle, value_handle, status))

    def _send_update(self, entry):
        # send_update follows the CCCDs (NimBLE's ble_gatts_chr_updated): notify if the client
        # enabled notifications, else indicate if it enabled indications.
        for conn in list(self._conns.values()):
            cccd = self._device.gatt_server.subscribers.get(conn.connection, {}).get(entry.handle)
            if not cccd:
                continue
            if cccd[0] & 0x01:
                self._send_value(conn, entry, None, att.ATT_Handle_Value_Notification)
            elif cccd[0] & 0x02 and conn.indication is None:
                self._start_indication(conn, entry, None)

    # ---- remote access (ATT server callbacks) ---------------------------------------------

    def _check_access(self, entry, connection, reading):
        flags = entry.flags
        if reading:
            if not flags & FLAG_READ:
                return _ATT_READ_NOT_PERMITTED
            enc = flags & _FLAG_READ_ENCRYPTED
            authen = flags & _FLAG_READ_AUTHENTICATED
        else:
            if not flags & (FLAG_WRITE | FLAG_WRITE_NO_RESPONSE):
                return _ATT_WRITE_NOT_PERMITTED
            enc = flags & _FLAG_WRITE_ENCRYPTED
            authen = flags & _FLAG_WRITE_AUTHENTICATED
        if not entry.is_chr:
            return 0  # NimBLE ignores security flags on descriptors
        if not (enc or authen):
            return 0
        conn = self._conns.get(connection.handle)
        if not connection.is_encrypted:
            # NimBLE's ble_att_svr_check_perms: "encryption" when a bond exists (the central
            # should re-encrypt), "authentication" when it does not (it should pair).
            if conn is not None and self._has_bond(conn):
                return _ATT_INSUFFICIENT_ENCRYPTION
            return _ATT_INSUFFICIENT_AUTHENTICATION
        if authen and (conn is None or not conn.authenticated):
            return _ATT_INSUFFICIENT_AUTHENTICATION
        return 0

    def _remote_read(self, entry, connection):
        error = self._check_access(entry, connection, True)
        if error:
            raise att.ATT_Error(error)
        if self._active:
            result = self._irq(_IRQ_GATTS_READ_REQUEST, (connection.handle, entry.handle))
            if result:
                raise att.ATT_Error(int(result))
        return bytes(entry.data)

    def _remote_write(self, entry, connection, value):
        error = self._check_access(entry, connection, False)
        if error:
            raise att.ATT_Error(error)
        # MicroPython's NimBLE access callback copies MIN(alloc, len) and still succeeds.
        offset = len(entry.data) if entry.append else 0
        keep = max(0, min(entry.alloc, len(value) + offset) - offset)
        entry.data = entry.data[:offset] + bytes(value[:keep])
        self._irq(_IRQ_GATTS_WRITE, (connection.handle, entry.handle))

    # ---- connections -----------------------------------------------------------------------

    def _on_connection(self, connection):
        if connection.role != hci.Role.PERIPHERAL:
            return
        if not self._active:
            self._loop.create_task(connection.disconnect())
            return
        conn = _Conn(connection)
        self._conns[conn.handle] = conn
        connection.on(connection.EVENT_DISCONNECTION, lambda reason: self._on_disconnection(conn))
        connection.on(
            connection.EVENT_CONNECTION_ATT_MTU_UPDATE,
            lambda: self._irq(_IRQ_MTU_EXCHANGED, (conn.handle, connection.att_mtu)),
        )
        connection.on(
            connection.EVENT_CONNECTION_ENCRYPTION_CHANGE, lambda: self._on_encryption(conn)
        )
        connection.on(
            connection.EVENT_CONNECTION_ENCRYPTION_FAILURE,
            lambda error: self._report_security(conn),
        )
        connection.on(connection.EVENT_PAIRING_START, lambda: self._on_pairing_start(conn))
        connection.on(connection.EVENT_PAIRING, lambda keys: self._on_paired(conn, keys))
        connection.on(
            connection.EVENT_PAIRING_FAILURE, lambda reason: self._on_pairing_failed(conn)
        )
        self._irq_addr(_IRQ_CENTRAL_CONNECT, conn)

    def _on_disconnection(self, conn):
        if self._conns.get(conn.handle) is not conn:
            return
        del self._conns[conn.handle]
        if conn.passkey is not None and not conn.passkey[1].done():
            conn.passkey[1].set_result(None)
        if conn.indication is not None:
            # NimBLE fails the pending indication before it reports the disconnect.
            value_handle, future = conn.indication
            conn.indication = None
            future.cancel()
            self._irq(_IRQ_GATTS_INDICATE_DONE, (conn.handle, value_handle, _BLE_HS_ENOTCONN))
        self._irq_addr(_IRQ_CENTRAL_DISCONNECT, conn)

    def _report_security(self, conn):
        connection = conn.connection
        encrypted = 1 if connection.is_encrypted else 0
        self._irq(_IRQ_ENCRYPTION_UPDATE, (
            conn.handle, encrypted, 1 if (encrypted and conn.authenticated) else 0,
            1 if (encrypted and conn.bonded) else 0,
            (connection.encryption_key_size or conn.key_size) if encrypted else 0,
        ))

    def _on_encryption(self, conn):
        if conn.pairing:
            return  # reported once the pairing procedure ends, as NimBLE does
        # Re-encryption with a stored bond: the security of the stored keys applies.
        conn.authenticated = conn.stored_authenticated
        conn.key_size = conn.stored_key_size
        conn.bonded = True
        self._report_security(conn)

    def _on_pairing_start(self, conn):
        conn.pairing = True
        conn.reported = False
        if self._has_bond(conn):
            # A bonded peer pairs again: MicroPython answers NimBLE's REPEAT_PAIRING event by
            # deleting the old bond and retrying, so the new pairing always goes ahead.
            self._delete_peer(_conn_key(conn))

    def _finish_pairing(self, conn, keys):
        if conn.reported:
            return
        conn.reported = True
        session = self._device.smp_manager.sessions.get(conn.handle)
        ltk = keys.ltk or keys.ltk_central
        conn.authenticated = bool(ltk is not None and ltk.authenticated)
        conn.bonded = bool(session is not None and session.bonding)
        if session is not None and session.preq and session.pres:
            # Bumble's virtual controller sends the v1 Encryption Change event, which has no
            # key size: use the one the pairing negotiated (byte 4 of request and response).
            conn.key_size = min(session.preq[4], session.pres[4])
        conn.pairing = False
        self._report_security(conn)

    def _on_paired(self, conn, keys):
        self._finish_pairing(conn, keys)

    def _on_pairing_failed(self, conn):
        conn.pairing = False
        if conn.passkey is not None and not conn.passkey[1].done():
            conn.passkey[1].set_result(None)
        # NimBLE reports a failed procedure through BLE_GAP_EVENT_ENC_CHANGE, which MicroPython
        # turns into _IRQ_ENCRYPTION_UPDATE with the link's actual (unencrypted) state.
        conn.reported = True
        self._report_security(conn)

    def _pairing_config(self, connection):
        conn = self._conns.get(connection.handle)
        delegate = _Delegate(self, conn or _Conn(connection), self._io)
        return PairingConfig(
            sc=self._le_secure, mitm=self._mitm, bonding=self._bond, delegate=delegate
        )

    async def _ask(self, conn, action, passkey):
        future = self._loop.create_future()
        conn.passkey = (action, future)
        try:
            self._irq(_IRQ_PASSKEY_ACTION, (conn.handle, action, passkey))
            try:
                return await asyncio.wait_for(asyncio.shield(future), self.passkey_timeout_s)
            except asyncio.TimeoutError:
                return None
        finally:
            conn.passkey = None

    # ---- secrets ---------------------------------------------------------------------------

    def _get_secret(self, sec_type, index, key):
        views = []
        if key is not None:
            key = memoryview(bytes(key))
            views.append(key)
        value = self._irq(_IRQ_GET_SECRET, (sec_type, index, key), views)
        if value is None:
            return None
        try:
            value = bytes(value)
        except TypeError:
            return None
        return value if len(value) == _SEC_LEN else None

    def _set_secret(self, sec_type, key, value):
        key_view = memoryview(bytes(key))
        views = [key_view]
        value_view = None
        if value is not None:
            value_view = memoryview(bytes(value))
            views.append(value_view)
        return bool(self._irq(_IRQ_SET_SECRET, (sec_type, key_view, value_view), views))

    def _has_bond(self, conn):
        record = self._get_secret(SECRET_TYPE_PEER_SEC, 0, _conn_key(conn))
        return record is not None and bool(struct.unpack(_SEC_FORMAT, record)[3] & _SEC_LTK)

    def _conn_for_name(self, name):
        address = hci.Address(name)
        for conn in self._conns.values():
            session = self._device.smp_manager.sessions.get(conn.handle)
            peer_identity = session.peer_bd_addr if session is not None else None
            if bytes(conn.connection.peer_address) == bytes(address) or (
                peer_identity is not None and bytes(peer_identity) == bytes(address)
            ):
                return conn
        return None

    def _store_keys(self, name, keys):
        conn = self._conn_for_name(name)
        if conn is not None and conn.pairing:
            # NimBLE raises the encryption event first, then persists the keys.
            self._finish_pairing(conn, keys)
        session = self._device.smp_manager.sessions.get(conn.handle) if conn else None
        if session is None or not session.bonding:
            return  # Bumble stores keys even without bonding; NimBLE does not
        # SC has one LTK; after legacy pairing a central encrypts with the LTK we distributed,
        # which Bumble's responder files under ltk_central.
        ltk = keys.ltk or keys.ltk_central
        if ltk is None:
            return
        flags = _SEC_LTK
        if ltk.authenticated:
            flags |= _SEC_AUTHENTICATED
        if session.sc:
            flags |= _SEC_SC
        irk = b"\x00" * 16
        if keys.irk is not None:
            flags |= _SEC_IRK
            irk = keys.irk.value
        address = hci.Address(name)
        key = _secret_key(name)
        record = struct.pack(
            _SEC_FORMAT, _SEC_VERSION, 1 if address.is_random else 0, bytes(address), flags,
            conn.connection.encryption_key_size or conn.key_size or 16, ltk.value, irk,
        )
        # The order of NimBLE's ble_sm_persist_keys (ours, then the peer's); it ignores the
        # results: a store that still refuses leaves the link encrypted but the bond not kept.
        self._store_secret(SECRET_TYPE_OUR_SEC, key, record)
        self._store_secret(SECRET_TYPE_PEER_SEC, key, record)

    def _store_secret(self, sec_type, key, record):
        # ble_store_write with MicroPython's store_status_cb, ble_store_util_status_rr: a refused
        # write (BLE_HS_ESTORE_CAP) makes NimBLE unpair the oldest bonded peer it can enumerate
        # (and drop its link), then try again; with no bond left the write fails.
        for _ in range(_STORE_RETRIES):
            if self._set_secret(sec_type, key, record):
                return True
            oldest = self._get_secret(SECRET_TYPE_PEER_SEC, 0, None)
            if oldest is None:
                return False
            _, addr_type, addr, _, _, _, _ = struct.unpack(_SEC_FORMAT, oldest)
            self._unpair(bytes([addr_type]) + addr)
        self._violation("SET_SECRET kept refusing while bonds were evicted: NimBLE would loop")
        return False

    def _unpair(self, key):
        # ble_gap_unpair: end the peer's link, then delete its records.
        for conn in list(self._conns.values()):
            if _conn_key(conn) == key:
                self._schedule(conn.connection.disconnect)
        self._delete_peer(key)

    def _delete_peer(self, key):
        # ble_store_util_delete_peer: ble_store_util_delete_all deletes each type until a delete
        # reports "not found" (SET_SECRET(..., None) returning False).
        for sec_type in (SECRET_TYPE_OUR_SEC, SECRET_TYPE_PEER_SEC):
            for _ in range(_STORE_RETRIES):
                if not self._set_secret(sec_type, key, None):
                    break
            else:
                self._violation("SET_SECRET(%d, key, None) never returned False: NimBLE would "
                                "loop deleting it" % sec_type)

    def _violation(self, message):
        # What would hang or misbehave on the board: printed, and kept for tests to assert on.
        self.violations.append(message)
        print("ble_bumble: " + message, file=sys.stderr)

    def _keys_from_record(self, record):
        _, addr_type, _, flags, _, ltk, irk = struct.unpack(_SEC_FORMAT, record)
        keys = PairingKeys(address_type=hci.AddressType(addr_type))
        authenticated = bool(flags & _SEC_AUTHENTICATED)
        if flags & _SEC_LTK:
            keys.ltk = PairingKeys.Key(value=ltk, authenticated=authenticated)
        if flags & _SEC_IRK:
            keys.irk = PairingKeys.Key(value=irk, authenticated=authenticated)
        return keys

    def _load_keys(self, name):
        # The LTK lookup on an encryption request reads "our" record, as NimBLE does.
        record = self._get_secret(SECRET_TYPE_OUR_SEC, 0, _secret_key(name))
        if record is None:
            return None
        keys = self._keys_from_record(record)
        conn = self._conn_for_name(name)
        if conn is not None and keys.ltk is not None:
            conn.stored_authenticated = keys.ltk.authenticated
            conn.stored_key_size = struct.unpack(_SEC_FORMAT, record)[4]
        return keys

    def _all_keys(self):
        found = []
        for index in range(_SECRET_SCAN_MAX):
            record = self._get_secret(SECRET_TYPE_PEER_SEC, index, None)
            if record is None:
                break
            _, addr_type, addr, _, _, _, _ = struct.unpack(_SEC_FORMAT, record)
            address = hci.Address(addr, hci.AddressType(addr_type))
            found.append((str(address), self._keys_from_record(record)))
        return found


# ---- making adapters ---------------------------------------------------------------------


PUMP_ADDRESS = "C0:00:00:00:00:01"
CENTRAL_ADDRESS = "C0:00:00:00:00:02"


def _device_on(link, name, address):
    controller = Controller(name, link=link)
    host = Host(controller, AsyncPipeSink(controller))
    return Device(name=name, address=hci.Address(address), host=host)


async def open_pair(**knobs):
    """An in-process pump adapter and a central Bumble Device on one LocalLink, both powered
    on. Returns (ble, central_device); the adapter is not active yet, as after boot."""
    link = LocalLink()
    pump = _device_on(link, "pump", PUMP_ADDRESS)
    central = _device_on(link, "central", CENTRAL_ADDRESS)
    await pump.power_on()
    await central.power_on()
    ble = BLE(pump, **knobs)
    ble.link = link
    return ble, central


async def add_central(ble, address):
    """Another central Device, powered on, on the link of an adapter from open_pair."""
    device = _device_on(ble.link, "central " + address, address)
    await device.power_on()
    return device


async def open_hci(transport_name, **knobs):
    """The pump adapter on an external controller reached through any Bumble transport name
    ("tcp-client:127.0.0.1:9001", "usb:0", "serial:/dev/ttyACM0"...). Returns (ble,
    transport), powered on."""
    transport = await open_transport(transport_name)
    pump = Device.with_hci("pump", hci.Address(PUMP_ADDRESS), transport.source, transport.sink)
    await pump.power_on()
    return BLE(pump, **knobs), transport


async def open_tcp_server(spec, **knobs):
    """The pump adapter on its own virtual controller, plus a second controller on the same
    link whose HCI is served at Bumble's `tcp-server:<spec>` (e.g. "_:9001" or
    "127.0.0.1:9001"). Another process runs a Bumble host over `tcp-client:<host>:<port>`
    and becomes a central that can connect to the pump. Returns (ble, transport): close the
    transport to stop serving."""
    link = LocalLink()
    pump = _device_on(link, "pump", PUMP_ADDRESS)
    transport = await open_transport("tcp-server:" + spec)
    # Kept alive by the link, which holds its controllers.
    Controller("remote", host_source=transport.source, host_sink=transport.sink, link=link)
    await pump.power_on()
    ble = BLE(pump, **knobs)
    ble.link = link
    return ble, transport
