# Tests of boards/sim/ble_bumble.py, MicroPython's `bluetooth` API over Bumble, driven by a real
# Bumble central (host_tests/blecentral.py) through ATT and SMP on an in-process virtual link.

import asyncio
import errno

import pytest
from bumble import att
from bumble.controller import Controller
from bumble.core import ProtocolError
from bumble.link import LocalLink
from bumble.transport import open_transport

from boards.sim import ble_bumble as bt
from boards.sim.ble_bumble import UUID
from host_tests.blecentral import (
    IO_DISPLAY_ONLY,
    IO_KEYBOARD_ONLY,
    IO_NONE,
    Central,
    free_port,
    next_value,
)

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

_FLAG_READ_ENCRYPTED = 0x0200
_FLAG_READ_AUTHENTICATED = 0x0400
_FLAG_WRITE_AUTHENTICATED = 0x2000

_ATT_WRITE_NOT_PERMITTED = 0x03
_ATT_INSUFFICIENT_AUTHENTICATION = 0x05
_ATT_INSUFFICIENT_ENCRYPTION = 0x0F
_PASSKEY_INPUT = 2
_PASSKEY_DISPLAY = 3
_NUMERIC_COMPARISON = 4

SVC = UUID("6E400001-B5A3-F393-E0A9-E50E24DCCA9E")
PLAIN = UUID("6E400002-B5A3-F393-E0A9-E50E24DCCA9E")
SECURE = UUID("6E400003-B5A3-F393-E0A9-E50E24DCCA9E")
ENCRYPTED = UUID("6E400004-B5A3-F393-E0A9-E50E24DCCA9E")
READ_ONLY = UUID("6E400005-B5A3-F393-E0A9-E50E24DCCA9E")
USER_DESCRIPTION = UUID(0x2901)
CCCD = UUID(0x2902)

SERVICES = (
    (SVC, (
        (PLAIN, bt.FLAG_READ | bt.FLAG_WRITE | bt.FLAG_NOTIFY | bt.FLAG_INDICATE,
         ((USER_DESCRIPTION, bt.FLAG_READ),)),
        (SECURE, bt.FLAG_READ | bt.FLAG_WRITE | _FLAG_READ_AUTHENTICATED
         | _FLAG_WRITE_AUTHENTICATED),
        (ENCRYPTED, bt.FLAG_READ | _FLAG_READ_ENCRYPTED),
        (READ_ONLY, bt.FLAG_READ),
    )),
)


def run(coro, timeout_s=10.0):
    return asyncio.run(asyncio.wait_for(coro, timeout_s))


async def until(predicate, timeout_s=2.0):
    """Wait for something the stack does asynchronously (an IRQ after an SMP exchange)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in %.1f s" % timeout_s)
        await asyncio.sleep(0.002)


class Firmware:
    """The firmware's side: an IRQ handler that records copies of what it was given, keeps
    secrets in a dict, and answers passkey actions as told."""

    def __init__(self, ble):
        self.ble = ble
        self.events = []
        self.secrets = {}
        self.read_error = 0  # returned from _IRQ_GATTS_READ_REQUEST
        self.store_ok = True  # False: _IRQ_SET_SECRET refuses every store
        self.capacity = 4  # how many peers' bonds the store keeps
        self.numcmp = 1  # gap_passkey answer to numeric comparison; None: no answer
        self.shown = 123456  # the passkey the pump displays (io=DisplayOnly)
        self.kept = []  # raw data tuples kept past the call (a firmware bug)
        ble.irq(self.irq)

    def irq(self, event, data):
        self.kept.append(data)
        self.events.append((event, tuple(
            bytes(item) if isinstance(item, memoryview) else item for item in data
        )))
        if event == _IRQ_GATTS_READ_REQUEST:
            return self.read_error
        if event == _IRQ_GET_SECRET:
            sec_type, index, key = data
            if key is None:  # the index-th value of that type, oldest first
                matches = [v for (t, _), v in self.secrets.items() if t == sec_type]
                return matches[index] if index < len(matches) else None
            return self.secrets.get((sec_type, bytes(key)))
        if event == _IRQ_SET_SECRET:
            sec_type, key, value = data
            if value is None:  # True only when something was deleted
                return self.secrets.pop((sec_type, bytes(key)), None) is not None
            peers = {k for (_, k) in self.secrets} | {bytes(key)}
            if not self.store_ok or len(peers) > self.capacity:
                return False
            self.secrets[(sec_type, bytes(key))] = bytes(value)
            return True
        if event == _IRQ_PASSKEY_ACTION:
            conn, action, _ = data
            if action == _NUMERIC_COMPARISON and self.numcmp is not None:
                self.ble.gap_passkey(conn, action, self.numcmp)
            elif action == _PASSKEY_DISPLAY:
                self.ble.gap_passkey(conn, action, self.shown)
        return None

    def of(self, event):
        return [data for (code, data) in self.events if code == event]


async def start(io=1, **knobs):
    """The pump active, configured for LESC bonding with numeric comparison (io=1), services
    registered and advertising; a central connected with everything discovered."""
    ble, central_device = await bt.open_pair(**knobs)
    fw = Firmware(ble)
    ble.active(True)
    ble.config(bond=True, mitm=True, le_secure=True, io=io, gap_name="ITB pump")
    handles = ble.gatts_register_services(SERVICES)
    ble.gap_advertise(100000, b"\x02\x01\x06")
    await ble.settle()
    central = Central(central_device)
    await central.connect()
    await central.discover()
    await until(lambda: fw.of(_IRQ_CENTRAL_CONNECT))
    conn = fw.of(_IRQ_CENTRAL_CONNECT)[0][0]
    return ble, fw, central, conn, handles[0]


async def reconnect(ble, central):
    await central.disconnect()
    ble.gap_advertise(100000)
    await ble.settle()
    await central.connect()
    await central.discover()


def test_uuid_forms_compare_by_value():
    assert UUID(0x2A19) == UUID(b"\x19\x2a")
    assert repr(UUID(0x2A19)) == "UUID(0x2a19)"
    long = UUID("6E400001-B5A3-F393-E0A9-E50E24DCCA9E")
    assert repr(long) == "UUID('6e400001-b5a3-f393-e0a9-e50e24dcca9e')"
    assert bytes(long) == bytes(reversed(bytes.fromhex("6E400001B5A3F393E0A9E50E24DCCA9E")))
    assert UUID(bytes(long)) == long and hash(UUID(bytes(long))) == hash(long)
    with pytest.raises(ValueError):
        UUID("6E400001")


def test_registration_returns_value_handles_in_definition_order():
    async def body():
        ble, fw, central, conn, handles = await start()
        plain, description, secure, encrypted, read_only = handles
        ch = central.characteristic
        assert [plain, secure, encrypted, read_only] == [
            ch(PLAIN).handle, ch(SECURE).handle, ch(ENCRYPTED).handle, ch(READ_ONLY).handle
        ]
        descriptors = {UUID(bytes(d.type.to_bytes())): d.handle for d in ch(PLAIN).descriptors}
        assert descriptors[USER_DESCRIPTION] == description
        # The CCCD is created for NOTIFY/INDICATE but not returned.
        assert CCCD in descriptors and descriptors[CCCD] not in handles
        assert await central.read(UUID(0x2A00)) == b"ITB pump"  # gap_name reaches the GAP service
        ble.active(False)
        with pytest.raises(OSError) as raised:
            ble.gatts_register_services(SERVICES)
        assert raised.value.errno == errno.ENODEV

    run(body())


def test_read_request_allows_and_refuses_with_the_returned_att_error():
    async def body():
        ble, fw, central, conn, (plain, _, _, _, read_only) = await start()
        ble.gatts_write(plain, b"status")
        assert await central.read(PLAIN) == b"status"
        assert fw.of(_IRQ_GATTS_READ_REQUEST) == [(conn, plain)]
        fw.read_error = 0x80
        with pytest.raises(att.ATT_Error) as raised:
            await central.read(PLAIN)
        assert raised.value.error_code == 0x80
        with pytest.raises(att.ATT_Error) as raised:
            await central.write(READ_ONLY, b"x")
        assert raised.value.error_code == _ATT_WRITE_NOT_PERMITTED
        assert fw.of(_IRQ_GATTS_WRITE) == []

    run(body())


def test_remote_write_truncated_to_the_buffer_unless_set_buffer():
    async def body():
        ble, fw, central, conn, (plain, *_) = await start()
        await central.write(PLAIN, bytes(range(30)))  # the default buffer is 20 bytes
        assert fw.of(_IRQ_GATTS_WRITE) == [(conn, plain)]
        assert ble.gatts_read(plain) == bytes(range(20))
        ble.gatts_set_buffer(plain, 200)
        await central.write(PLAIN, bytes(range(30)))
        assert ble.gatts_read(plain) == bytes(range(30))
        # Longer than MTU-3: Bumble's central uses Prepare/Execute Write; one write event.
        long_value = bytes(i % 251 for i in range(150))
        await central.write(PLAIN, long_value)
        assert ble.gatts_read(plain) == long_value
        assert len(fw.of(_IRQ_GATTS_WRITE)) == 3
        # A local write grows the buffer.
        assert ble.gatts_write(plain, bytes(300)) == 300
        assert await central.read(PLAIN) == bytes(300)

    run(body())


def test_append_mode_concatenates_until_read():
    async def body():
        ble, fw, central, conn, (plain, *_) = await start()
        ble.gatts_set_buffer(plain, 8, True)
        await central.write(PLAIN, b"abc")
        await central.write(PLAIN, b"def")
        assert ble.gatts_read(plain) == b"abcdef"
        assert ble.gatts_read(plain) == b""  # reading in append mode clears the buffer
        await central.write(PLAIN, b"0123456789")
        assert ble.gatts_read(plain) == b"01234567"

    run(body())


def test_notify_and_indicate_reach_the_central():
    async def body():
        ble, fw, central, conn, (plain, *_) = await start(indicate_timeout_s=0.3)
        # Sent regardless of the CCCD: the central never subscribed.
        unsubscribed = central.listen(plain)
        ble.gatts_notify(conn, plain, b"unasked")
        assert await next_value(unsubscribed) == b"unasked"
        notified = await central.subscribe(PLAIN)
        ble.gatts_write(plain, b"stored value")
        ble.gatts_notify(conn, plain)  # data=None sends the stored value
        assert await next_value(notified) == b"stored value"
        ble.gatts_notify(conn, plain, bytes(range(40)))  # cut to MTU-3 = 20 bytes
        assert await next_value(notified) == bytes(range(20))
        with pytest.raises(OSError) as raised:
            ble.gatts_notify(conn + 7, plain, b"x")
        assert raised.value.errno == errno.ENOTCONN

        indications = central.listen(plain)
        ble.gatts_indicate(conn, plain, b"ind")
        with pytest.raises(OSError) as raised:
            ble.gatts_indicate(conn, plain, b"second")  # one in flight per connection
        assert raised.value.errno == errno.EALREADY
        assert await next_value(indications) == b"ind"
        await until(lambda: fw.of(_IRQ_GATTS_INDICATE_DONE))
        assert fw.of(_IRQ_GATTS_INDICATE_DONE) == [(conn, plain, 0)]

        central.hold_confirmations()
        ble.gatts_indicate(conn, plain, b"lost")
        await until(lambda: len(fw.of(_IRQ_GATTS_INDICATE_DONE)) == 2)
        assert fw.of(_IRQ_GATTS_INDICATE_DONE)[1][2] != 0

    run(body())


def test_send_update_follows_the_subscription():
    async def body():
        ble, fw, central, conn, (plain, *_) = await start()
        heard = central.listen(plain)
        ble.gatts_write(plain, b"quiet", send_update=True)
        await asyncio.sleep(0.05)
        assert heard.empty()
        queue = await central.subscribe(PLAIN)
        ble.gatts_write(plain, b"loud", send_update=True)
        assert await next_value(queue) == b"loud"
        assert fw.of(_IRQ_GATTS_INDICATE_DONE) == []
        indicated = await central.subscribe(PLAIN, indicate=True)
        ble.gatts_write(plain, b"acked", send_update=True)
        assert await next_value(indicated) == b"acked"
        await until(lambda: fw.of(_IRQ_GATTS_INDICATE_DONE))
        assert fw.of(_IRQ_GATTS_INDICATE_DONE) == [(conn, plain, 0)]

    run(body())


def test_notify_burst_gives_enomem_when_the_pool_is_limited():
    async def body():
        ble, fw, central, conn, (plain, *_) = await start(notify_pool=4)
        sent = 0
        with pytest.raises(OSError) as raised:
            for _ in range(100):
                ble.gatts_notify(conn, plain, b"burst")
                sent += 1
        assert raised.value.errno == errno.ENOMEM and sent == 4
        await asyncio.sleep(0.05)  # the controller drains the queue
        ble.gatts_notify(conn, plain, b"later")

    run(body())


def test_authenticated_characteristic_needs_lesc_numeric_comparison():
    async def body():
        ble, fw, central, conn, (_, _, secure, _, _) = await start()
        ble.gatts_write(secure, b"secret")
        for attempt in (central.read(SECURE), central.write(SECURE, b"forged")):
            with pytest.raises(att.ATT_Error) as raised:
                await attempt
            assert raised.value.error_code == _ATT_INSUFFICIENT_AUTHENTICATION
        # The stack refused: the application heard nothing and nothing changed.
        assert fw.of(_IRQ_GATTS_READ_REQUEST) == [] and fw.of(_IRQ_GATTS_WRITE) == []
        assert ble.gatts_read(secure) == b"secret"

        await central.pair()
        await until(lambda: fw.of(_IRQ_ENCRYPTION_UPDATE))
        assert fw.of(_IRQ_PASSKEY_ACTION) == [(conn, _NUMERIC_COMPARISON, central.compared[0])]
        assert fw.of(_IRQ_ENCRYPTION_UPDATE) == [(conn, 1, 1, 1, 16)]
        assert await central.read(SECURE) == b"secret"
        await central.write(SECURE, b"allowed")
        assert ble.gatts_read(secure) == b"allowed"
        assert fw.of(_IRQ_GATTS_WRITE) == [(conn, secure)]

    run(body())


def test_just_works_encrypts_but_is_not_authenticated():
    async def body():
        ble, fw, central, conn, (_, _, secure, _, _) = await start()
        await central.pair(io=IO_NONE)
        await until(lambda: fw.of(_IRQ_ENCRYPTION_UPDATE))
        assert fw.of(_IRQ_PASSKEY_ACTION) == []
        assert fw.of(_IRQ_ENCRYPTION_UPDATE) == [(conn, 1, 0, 1, 16)]
        assert await central.read(ENCRYPTED) == b""  # encryption alone is enough here
        with pytest.raises(att.ATT_Error) as raised:
            await central.read(SECURE)
        assert raised.value.error_code == _ATT_INSUFFICIENT_AUTHENTICATION

    run(body())


def test_rejected_or_unanswered_numeric_comparison_fails_the_pairing():
    async def body():
        ble, fw, central, conn, _ = await start(passkey_timeout_s=0.2)
        fw.numcmp = 0
        with pytest.raises(ProtocolError):
            await central.pair()
        await until(lambda: fw.of(_IRQ_ENCRYPTION_UPDATE))
        assert fw.of(_IRQ_ENCRYPTION_UPDATE) == [(conn, 0, 0, 0, 0)]
        assert fw.secrets == {}
        with pytest.raises(att.ATT_Error):
            await central.read(SECURE)

        fw.numcmp = None  # nobody presses the button: the pairing times out
        await reconnect(ble, central)
        with pytest.raises(ProtocolError):
            await central.pair()
        assert all(update[1] == 0 for update in fw.of(_IRQ_ENCRYPTION_UPDATE))
        with pytest.raises(OSError) as raised:
            ble.gap_passkey(conn, _NUMERIC_COMPARISON, 1)  # no pairing waits any more
        assert raised.value.errno in (errno.ENOENT, errno.ENOTCONN)

    run(body())


def test_passkey_answered_later_from_a_task():
    async def body():
        ble, fw, central, conn, _ = await start()
        fw.numcmp = None

        async def press_button_later():
            await until(lambda: fw.of(_IRQ_PASSKEY_ACTION))
            await asyncio.sleep(0.05)
            ble.gap_passkey(conn, _NUMERIC_COMPARISON, 1)

        task = asyncio.get_running_loop().create_task(press_button_later())
        await central.pair()
        await task
        await until(lambda: fw.of(_IRQ_ENCRYPTION_UPDATE))
        assert fw.of(_IRQ_ENCRYPTION_UPDATE) == [(conn, 1, 1, 1, 16)]

    run(body())


def test_legacy_pairing_is_never_authenticated_with_yes_no():
    async def body():
        # le_secure=False, or a central without LE Secure Connections: legacy pairing has no
        # numeric comparison, so DisplayYesNo on both sides falls back to Just Works.
        ble, fw, central, conn, _ = await start()
        ble.config(le_secure=False)
        await central.pair(sc=False)
        await until(lambda: fw.of(_IRQ_ENCRYPTION_UPDATE))
        assert fw.of(_IRQ_PASSKEY_ACTION) == []
        assert fw.of(_IRQ_ENCRYPTION_UPDATE) == [(conn, 1, 0, 1, 16)]
        await reconnect(ble, central)
        await central.encrypt()  # the legacy bond is kept and reused
        await until(lambda: len(fw.of(_IRQ_ENCRYPTION_UPDATE)) == 2)
        assert fw.of(_IRQ_ENCRYPTION_UPDATE)[1][1:] == (1, 0, 1, 16)

    run(body())


def test_advertising_data_reuse_and_stop():
    async def body():
        ble, scanner = await bt.open_pair()
        ble.active(True)
        payload = b"\x02\x01\x06\x05\x09pump"
        seen = []
        scanner.on("advertisement", lambda adv: seen.append(bytes(adv.data_bytes)))
        await scanner.start_scanning(filter_duplicates=False)
        ble.gap_advertise(20000, payload)
        await ble.settle()
        await until(lambda: payload in seen)
        ble.gap_advertise(None)  # stops
        await ble.settle()
        assert not ble.device.is_advertising
        seen.clear()
        ble.gap_advertise(20000)  # adv_data=None reuses the previous payload
        await ble.settle()
        await until(lambda: payload in seen)
        ble.gap_advertise(20000, b"")  # b"" clears it
        await ble.settle()
        seen.clear()
        await until(lambda: seen)
        assert seen[-1] == b""

    run(body())


def test_passkey_displayed_by_the_pump_and_typed_at_the_central():
    async def body():
        ble, fw, central, conn, _ = await start(io=0)  # DisplayOnly
        central.passkey = fw.shown
        await central.pair(io=IO_KEYBOARD_ONLY)
        await until(lambda: fw.of(_IRQ_ENCRYPTION_UPDATE))
        assert fw.of(_IRQ_PASSKEY_ACTION) == [(conn, _PASSKEY_DISPLAY, 0)]
        assert fw.of(_IRQ_ENCRYPTION_UPDATE) == [(conn, 1, 1, 1, 16)]

        ble, fw, central, conn, _ = await start(io=0)
        central.passkey = fw.shown + 1  # mistyped
        with pytest.raises(ProtocolError):
            await central.pair(io=IO_KEYBOARD_ONLY)
        await until(lambda: fw.of(_IRQ_ENCRYPTION_UPDATE))
        assert fw.of(_IRQ_ENCRYPTION_UPDATE) == [(conn, 0, 0, 0, 0)]

    run(body())


def test_passkey_typed_at_the_pump():
    async def body():
        ble, fw, central, conn, _ = await start(io=2)  # KeyboardOnly

        async def type_what_the_central_shows():
            await until(lambda: fw.of(_IRQ_PASSKEY_ACTION) and central.displayed)
            ble.gap_passkey(conn, _PASSKEY_INPUT, central.displayed[0])

        task = asyncio.get_running_loop().create_task(type_what_the_central_shows())
        await central.pair(io=IO_DISPLAY_ONLY)
        await task
        await until(lambda: fw.of(_IRQ_ENCRYPTION_UPDATE))
        assert fw.of(_IRQ_PASSKEY_ACTION) == [(conn, _PASSKEY_INPUT, 0)]
        assert fw.of(_IRQ_ENCRYPTION_UPDATE) == [(conn, 1, 1, 1, 16)]

    run(body())


def test_bond_reused_on_reconnect_and_att_error_follows_nimble():
    async def body():
        ble, fw, central, conn, _ = await start()
        # NimBLE answers an unencrypted access "insufficient authentication" without a bond...
        with pytest.raises(att.ATT_Error) as raised:
            await central.read(ENCRYPTED)
        assert raised.value.error_code == _ATT_INSUFFICIENT_AUTHENTICATION
        await central.pair()
        await until(lambda: fw.of(_IRQ_ENCRYPTION_UPDATE))
        kinds = sorted(sec_type for (sec_type, _) in fw.secrets)
        assert kinds == [bt.SECRET_TYPE_OUR_SEC, bt.SECRET_TYPE_PEER_SEC]
        assert fw.of(_IRQ_SET_SECRET)[0][1][1:] == bytes(reversed(bytes.fromhex("C00000000002")))

        await reconnect(ble, central)
        # ... and "insufficient encryption" once a bond exists, so the central re-encrypts.
        with pytest.raises(att.ATT_Error) as raised:
            await central.read(ENCRYPTED)
        assert raised.value.error_code == _ATT_INSUFFICIENT_ENCRYPTION
        await central.encrypt()
        await until(lambda: len(fw.of(_IRQ_ENCRYPTION_UPDATE)) == 2)
        conn2 = fw.of(_IRQ_CENTRAL_CONNECT)[1][0]
        assert fw.of(_IRQ_ENCRYPTION_UPDATE)[1] == (conn2, 1, 1, 1, 16)
        assert await central.read(SECURE) == b""

    run(body())


def test_repeat_pairing_deletes_the_old_bond_first():
    async def body():
        ble, fw, central, conn, _ = await start()
        await central.pair()
        await until(lambda: fw.of(_IRQ_ENCRYPTION_UPDATE))
        old = dict(fw.secrets)
        await reconnect(ble, central)
        del fw.events[:]
        await central.pair()  # a bonded central (or one spoofing its address) pairs again
        await until(lambda: fw.of(_IRQ_ENCRYPTION_UPDATE))
        sets = fw.of(_IRQ_SET_SECRET)
        deletes = [i for i, (_, _, value) in enumerate(sets) if value is None]
        stores = [i for i, (_, _, value) in enumerate(sets) if value is not None]
        assert deletes and stores and max(deletes) < min(stores)
        assert fw.secrets.keys() == old.keys() and fw.secrets != old  # new keys replaced them

    run(body())


def test_refused_secret_means_the_bond_is_not_kept():
    async def body():
        ble, fw, central, conn, _ = await start()
        fw.store_ok = False
        await central.pair()  # the pairing itself succeeds
        await until(lambda: fw.of(_IRQ_ENCRYPTION_UPDATE))
        assert fw.of(_IRQ_ENCRYPTION_UPDATE) == [(conn, 1, 1, 1, 16)]
        assert len(fw.of(_IRQ_SET_SECRET)) == 2 and fw.secrets == {}
        await reconnect(ble, central)
        with pytest.raises(ProtocolError):
            await central.encrypt()  # the pump has no key for this central any more
        with pytest.raises(att.ATT_Error) as raised:
            await central.read(ENCRYPTED)
        assert raised.value.error_code == _ATT_INSUFFICIENT_AUTHENTICATION

    run(body())


def test_full_store_evicts_the_oldest_bond_as_nimble_does():
    async def body():
        ble, fw, first, conn, _ = await start()
        fw.capacity = 1
        await first.pair()
        await until(lambda: fw.of(_IRQ_ENCRYPTION_UPDATE))
        first_key = b"\x01" + bytes(reversed(bytes.fromhex("C00000000002")))
        assert {k for (_, k) in fw.secrets} == {first_key}
        lost = asyncio.get_running_loop().create_future()
        first.connection.once("disconnection", lambda reason: lost.set_result(reason))

        second = Central(await bt.add_central(ble, "C0:00:00:00:00:04"))
        ble.gap_advertise(100000)
        await ble.settle()
        await second.connect()
        await second.pair()
        await until(lambda: len(fw.of(_IRQ_ENCRYPTION_UPDATE)) == 2)
        # The refused store made NimBLE unpair the oldest bond and drop that central's link.
        await asyncio.wait_for(lost, 2.0)
        second_key = b"\x01" + bytes(reversed(bytes.fromhex("C00000000004")))
        assert {k for (_, k) in fw.secrets} == {second_key}
        assert ble.violations == []

        # A store whose delete never reports "not found" would hang NimBLE: reported.
        ble.irq(lambda event, data: True if event == _IRQ_SET_SECRET else fw.irq(event, data))
        await ble.device.keystore.delete("C0:00:00:00:00:04")
        assert ble.violations and "never returned False" in ble.violations[0]

    run(body())


def test_pump_initiated_pairing_with_gap_pair():
    async def body():
        ble, fw, central, conn, _ = await start()
        ble.gap_pair(conn)
        await until(lambda: central.security_task is not None)
        await central.security_task
        await until(lambda: fw.of(_IRQ_ENCRYPTION_UPDATE))
        assert fw.of(_IRQ_ENCRYPTION_UPDATE) == [(conn, 1, 1, 1, 16)]

    run(body())


def test_mtu_exchange_raises_mtu_exchanged():
    async def body():
        ble, fw, central, conn, (plain, *_) = await start()
        assert ble.config("mtu") == 256
        assert await central.exchange_mtu(247) == 247
        await until(lambda: fw.of(_IRQ_MTU_EXCHANGED))
        assert fw.of(_IRQ_MTU_EXCHANGED) == [(conn, 247)]
        queue = await central.subscribe(PLAIN)
        ble.gatts_notify(conn, plain, bytes(244))
        assert await next_value(queue) == bytes(244)  # MTU-3 per notification

    run(body())


def test_configured_mtu_caps_the_exchange():
    async def body():
        ble, fw, central, conn, _ = await start()
        ble.config(mtu=100)
        assert await central.exchange_mtu(247) == 100
        await until(lambda: fw.of(_IRQ_MTU_EXCHANGED))
        assert fw.of(_IRQ_MTU_EXCHANGED) == [(conn, 100)]

    run(body())


def test_connect_and_disconnect_tuples():
    async def body():
        ble, fw, central, conn, _ = await start()
        address = bytes.fromhex("C00000000002")  # MSB first, as MicroPython gives it
        assert fw.of(_IRQ_CENTRAL_CONNECT) == [(conn, 1, address)]
        assert ble.gap_disconnect(conn + 9) is False
        assert ble.gap_disconnect(conn) is True
        await until(lambda: fw.of(_IRQ_CENTRAL_DISCONNECT))
        assert fw.of(_IRQ_CENTRAL_DISCONNECT) == [(conn, 1, address)]

    run(body())


def test_pending_indication_fails_before_the_disconnect_event():
    async def body():
        ble, fw, central, conn, (plain, *_) = await start()
        central.hold_confirmations()
        ble.gatts_indicate(conn, plain, b"in flight")
        ble.gap_disconnect(conn)
        await until(lambda: fw.of(_IRQ_CENTRAL_DISCONNECT))
        order = [code for (code, _) in fw.events if code in (20, 2)]
        assert order == [_IRQ_GATTS_INDICATE_DONE, _IRQ_CENTRAL_DISCONNECT]
        assert fw.of(_IRQ_GATTS_INDICATE_DONE)[0][2] != 0

    run(body())


def test_handler_exception_is_printed_and_swallowed(capsys):
    async def body():
        ble, fw, central, conn, (plain, *_) = await start()

        def broken(event, data):
            raise RuntimeError("bug in the handler")

        ble.irq(broken)
        await central.write(PLAIN, b"still accepted")
        assert ble.gatts_read(plain) == b"still accepted"

    run(body())
    err = capsys.readouterr().err
    assert "Unhandled exception in IRQ callback handler" in err
    assert "bug in the handler" in err


def test_memoryviews_are_invalid_after_the_handler_returns():
    async def body():
        ble, fw, central, conn, _ = await start()
        _, _, addr = fw.kept[[code for code, _ in fw.events].index(_IRQ_CENTRAL_CONNECT)]
        with pytest.raises(ValueError):
            bytes(addr)

    run(body())


def test_config_asymmetries():
    async def body():
        ble, _ = await bt.open_pair()
        assert ble.active() is False
        with pytest.raises(OSError) as raised:
            ble.config("mtu")  # needs the stack active
        assert raised.value.errno == errno.ENODEV
        ble.active(True)
        ble.config(gap_name="pump")
        assert ble.config("gap_name") == b"pump"
        addr_type, mac = ble.config("mac")
        assert (addr_type, mac) == (1, bytes.fromhex("C00000000001"))
        for write_only in ("bond", "mitm", "io", "le_secure", "addr_mode", "rxbuf", "nope"):
            with pytest.raises(ValueError):
                ble.config(write_only)
        with pytest.raises(ValueError):
            ble.config(nope=1)
        with pytest.raises(TypeError):
            ble.config("mtu", gap_name=b"x")
        with pytest.raises(TypeError):
            ble.config()
        with pytest.raises(OSError) as raised:
            ble.config(mtu=10)
        assert raised.value.errno == errno.EINVAL
        with pytest.raises(ValueError):
            ble.irq(5)
        assert bt.BLE() is ble  # BLE() is the singleton, as on the board

    run(body())


def test_deactivation_drops_connections_and_services():
    async def body():
        ble, fw, central, conn, (plain, *_) = await start()
        lost = asyncio.get_running_loop().create_future()
        central.connection.once("disconnection", lambda reason: lost.set_result(reason))
        heard = len(fw.events)
        ble.active(False)
        await asyncio.wait_for(lost, 2.0)
        await asyncio.sleep(0.01)
        assert len(fw.events) == heard  # an inactive stack calls no handler
        with pytest.raises(OSError) as raised:
            ble.gatts_read(plain)
        assert raised.value.errno == errno.ENODEV
        ble.active(True)
        with pytest.raises(OSError) as raised:
            ble.gatts_read(plain)  # services must be registered again
        assert raised.value.errno == errno.EINVAL

    run(body())


def test_tcp_transport_lets_another_host_connect():
    async def body():
        port = free_port()
        ble, server = await bt.open_tcp_server("127.0.0.1:%d" % port)
        fw = Firmware(ble)
        ble.active(True)
        ((plain, *_),) = ble.gatts_register_services(SERVICES)
        ble.gatts_write(plain, b"over tcp")
        ble.gap_advertise(100000)
        await ble.settle()
        central, client = await Central.over_tcp("127.0.0.1:%d" % port)
        try:
            await central.connect()
            await central.discover()
            assert await central.read(PLAIN) == b"over tcp"
            assert fw.of(_IRQ_CENTRAL_CONNECT)[0][1:] == (1, bytes.fromhex("C00000000003"))
            await central.disconnect()
        finally:
            await client.close()
            await server.close()

    run(body())


def test_pump_on_an_external_controller_over_tcp_client():
    async def body():
        port = free_port()
        # Stands in for a controller process (e.g. Bumble's `bumble-controllers` app).
        link = LocalLink()
        served = await open_transport("tcp-server:127.0.0.1:%d" % port)
        Controller("external", host_source=served.source, host_sink=served.sink, link=link)
        central_device = bt._device_on(link, "central", bt.CENTRAL_ADDRESS)
        await central_device.power_on()
        ble, client = await bt.open_hci("tcp-client:127.0.0.1:%d" % port)
        try:
            fw = Firmware(ble)
            ble.active(True)
            ((plain, *_),) = ble.gatts_register_services(SERVICES)
            ble.gatts_write(plain, b"external")
            ble.gap_advertise(100000)
            await ble.settle()
            central = Central(central_device)
            await central.connect()
            await central.discover()
            assert await central.read(PLAIN) == b"external"
            assert fw.of(_IRQ_GATTS_READ_REQUEST)
        finally:
            await client.close()
            await served.close()

    run(body())
