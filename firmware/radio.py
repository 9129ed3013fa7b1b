# The BLE shell around the protocol service (docs/protocol.md): the GATT database, advertising,
# the pairing window, the IRQ handler and the task that runs the service. It is handed
# MicroPython's `bluetooth` API as objects (the board's BLE() and UUID) and never imports it.
"""The IRQ handler only copies small integers (and at most a 6-byte address) into a ring of
preallocated event slots and sets a flag; all work happens in the radio task. A control-point
value is read there, not in the handler: the protocol allows one frame in flight per control
point (a client writes the next only after the response), so the value waits for the task.
Secrets (bond keys) are the exception: NimBLE asks for them synchronously during pairing, so
the handler answers from a RAM table (pairing is rare, and only inside the pairing window).

No radio event changes delivery by itself: frames go to the service, which reaches the pump only
through App.request() with an authenticated, allowed command."""

import struct

from link import keys as KF
from link import service as SV
from link import wire as W
from pump import codec as C
from pump import store as ST
from pump.compat import const

# MicroPython's bluetooth IRQ event codes.
_IRQ_CENTRAL_CONNECT = const(1)
_IRQ_CENTRAL_DISCONNECT = const(2)
_IRQ_GATTS_WRITE = const(3)
_IRQ_GATTS_READ_REQUEST = const(4)
_IRQ_GATTS_INDICATE_DONE = const(20)
_IRQ_MTU_EXCHANGED = const(21)
_IRQ_ENCRYPTION_UPDATE = const(28)
_IRQ_GET_SECRET = const(29)
_IRQ_SET_SECRET = const(30)
_IRQ_PASSKEY_ACTION = const(31)
_PASSKEY_NUMERIC_COMPARISON = const(4)
_SECRET_OUR_IRK = const(10)
_IO_DISPLAY_YESNO = const(1)

# Characteristic flags (the bluetooth module's FLAG_* values).
_READ = const(0x0002)
_WRITE = const(0x0008)
_NOTIFY = const(0x0010)
_INDICATE = const(0x0020)
_READ_ENC = const(0x0200)
_READ_AUTHN = const(0x0400)
_WRITE_AUTHN = const(0x2000)

PUMP_SERVICE = "6a1f0000-3b9e-4c2d-8f5a-7e41c0d2b9a3"


def pump_uuid(n):
    return "6a1f%04x-3b9e-4c2d-8f5a-7e41c0d2b9a3" % n


# The pump service's characteristics, in the service's order (docs/protocol.md, "GATT").
CHARS = (
    (SV.CH_STATUS, 0x0001, _READ | _INDICATE | _READ_AUTHN),
    (SV.CH_CHANGED, 0x0002, _READ | _INDICATE | _READ_AUTHN),
    (SV.CH_ALARM, 0x0003, _READ | _INDICATE | _READ_AUTHN),
    (SV.CH_FEATURES, 0x0004, _READ | _READ_AUTHN),
    (SV.CH_STATUS_CP, 0x0005, _WRITE | _INDICATE | _WRITE_AUTHN),
    (SV.CH_COMMAND_CP, 0x0006, _WRITE | _INDICATE | _WRITE_AUTHN),
    (SV.CH_COMMAND_DATA, 0x0007, _NOTIFY | _READ_AUTHN),
    (SV.CH_RACP, 0x0008, _WRITE | _INDICATE | _WRITE_AUTHN),
    (SV.CH_HISTORY_DATA, 0x0009, _NOTIFY | _READ_AUTHN),
    (SV.CH_AUTH_CP, 0x000A, _WRITE | _INDICATE | _WRITE_AUTHN),
)
CP_BUFFER = const(512)  # the longest frame (a full programme is under 300 bytes), never cut
PAIRING_WINDOW_MS = const(60_000)
PAIRING_FINISH_MS = const(30_000)  # SMP's own timeout: an accepted pairing ends within it
# ATT's own transaction timeout is 30 s: an indication not acknowledged by then leaves the link
# unusable (the spec's rule), so the pump gives up a little later and drops the link.
INDICATE_TIMEOUT_MS = const(31_000)
NOTIFY_RETRIES = const(50)  # ENOMEM: the stack's buffers are full; wait and try again
STATUS_EVERY_MS = const(1_000)
# One programmer at a time: a control point's value is one buffer shared by every link, and the
# IRQ handler does not copy it (that would allocate), so a second link could overwrite a frame
# before the task reads it. Advertising stops while a programmer is connected.
MAX_CONN = const(1)
RESTART_MS = const(5_000)  # after a fault, the radio waits this long before starting again
_EVENTS = const(32)  # ring slots; an overflow is counted and logged, never silent
# Slot fields: kind, connection, a, b, c, d.
_KIND = const(0)
_CONN = const(1)
_A = const(2)
_B = const(3)
_C = const(4)
_D = const(5)
_FIELDS = const(6)


class RadioFault(Exception):
    """The radio is out of step with the stack: run() restarts it."""


class Radio:
    """ble: the BLE() object; uuid: the UUID class; keys: {role: key}; pump_id: bytes; random:
    n -> bytes; info: (manufacturer, model, serial, firmware) strings for Device Information;
    secrets: a store with load() -> {(type, key): value} and save(table) (may be None)."""

    def __init__(self, ble, uuid, keys, pump_id, random, info, secrets=None):
        self.ble = ble
        self.uuid = uuid
        self.keys = keys
        self.pump_id = pump_id
        self.random = random
        self.info = info
        self.secret_store = secrets
        self.secrets = {} if secrets is None else secrets.load()
        self.app = None
        self.service = None
        self.handles = [0] * SV.N_CHARS
        self._ch_of = {}  # value handle: characteristic
        self.battery_handle = 0
        self._ring = [0] * (_EVENTS * _FIELDS)
        self._addr = [bytearray(6) for _ in range(_EVENTS)]
        self._head = 0  # next slot the handler fills
        self._tail = 0  # next slot the task takes
        self._lost = 0  # events the full ring could not take
        self._flag = None
        self._ind_flags = None  # per connection slot: the radio task saw its INDICATE_DONE
        self._ind_status = [-1] * MAX_CONN  # per connection slot: INDICATE_DONE status
        self._ind_busy = [False] * MAX_CONN  # per connection slot: an indication is out
        self._conn_slot = {}
        self.pairing_until_ms = 0
        self._store_until_ms = 0
        self._refused_stores = 0
        self._status_due = [0] * MAX_CONN  # per connection slot: characteristics to indicate
        self._secrets_dirty = False
        self._status_value = None
        self._counter = [0] * SV.N_CHARS  # seal counters of the readable characteristics
        self._alarm_value = None
        self._battery_level = -1
        self._changed_value = -1
        self._rx_seen = self._staged_seen = None  # what the Status changed bits last saw
        self._log_seq = 0
        self._connected_changed = False

    # ---- the IRQ handler: copy, signal, nothing else ----

    def _irq(self, event, data):
        # One exception here would switch the board's handler off for good: none may escape.
        try:
            return self._on_irq(event, data)
        except Exception:  # noqa: BLE001
            self._lost += 1
            return None

    def _on_irq(self, event, data):
        if event == _IRQ_GATTS_READ_REQUEST:
            svc = self.service
            ch = self._ch_of.get(data[1], -1)
            if svc is None or ch < 0:
                return 0
            return svc.read_allowed(data[0], ch)
        if event == _IRQ_GET_SECRET:
            return self._get_secret(data[0], data[1], data[2])
        if event == _IRQ_SET_SECRET:
            return self._set_secret(data[0], data[1], data[2])
        n = self._head
        if (n + 1) % _EVENTS == self._tail:
            self._lost += 1
        else:
            r = self._ring
            i = n * _FIELDS
            r[i + _KIND] = event
            r[i + _CONN] = data[0]
            if event == _IRQ_CENTRAL_CONNECT or event == _IRQ_CENTRAL_DISCONNECT:
                r[i + _A] = data[1]
                a = self._addr[n]
                src = data[2]
                for k in range(6):
                    a[k] = src[k]
            elif event == _IRQ_GATTS_WRITE or event == _IRQ_MTU_EXCHANGED:
                r[i + _A] = data[1]
            elif event == _IRQ_GATTS_INDICATE_DONE:
                r[i + _A] = data[1]
                r[i + _B] = data[2]
            elif event == _IRQ_ENCRYPTION_UPDATE:
                r[i + _A] = data[1]
                r[i + _B] = data[2]
                r[i + _C] = data[3]
                r[i + _D] = data[4]
            elif event == _IRQ_PASSKEY_ACTION:
                r[i + _A] = data[1]
                r[i + _B] = data[2]
            else:
                return None
            self._head = (n + 1) % _EVENTS
        if self._flag is not None:
            self._flag.set()
        return None

    def _get_secret(self, sec_type, index, key):
        if key is None:
            # NimBLE lists the bonds to evict one when a store is refused: outside the pairing
            # window there is nothing to list, so nothing is evicted.
            if not self._storing_allowed():
                return None
            i = 0
            for (t, _k), v in self.secrets.items():
                if t == sec_type:
                    if i == index:
                        return v
                    i += 1
            return None
        return self.secrets.get((sec_type, bytes(key)))

    def _set_secret(self, sec_type, key, value):
        # The pump's own identity key (type 10) is stored whenever the stack asks; a bond is made
        # or removed only inside the pairing window (a repeat pairing from a spoofed address
        # must not wipe a clinician's bond). A delete says True only if something went.
        k = (sec_type, bytes(key))
        if sec_type != _SECRET_OUR_IRK and not self._storing_allowed():
            self._refused_stores += 1  # logged by the task
            if self._flag is not None:
                self._flag.set()
            return False
        if value is None:
            if self.secrets.pop(k, None) is None:
                return False
        else:
            self.secrets[k] = bytes(value)
        self._secrets_dirty = True
        if self._flag is not None:
            self._flag.set()
        return True

    def _window_open(self):
        return self.app is not None and self.app.clock.now_ms() < self.pairing_until_ms

    def _storing_allowed(self):
        # Inside the window, or finishing a pairing the pump accepted inside it.
        if self.app is None:
            return False
        now = self.app.clock.now_ms()
        return now < self.pairing_until_ms or now < self._store_until_ms

    # ---- the pairing window ----

    def open_pairing(self):
        """The pump's button: new bonds are accepted for PAIRING_WINDOW_MS."""
        self.pairing_until_ms = self.app.clock.now_ms() + PAIRING_WINDOW_MS
        self.app.note("ble_pairing_window", PAIRING_WINDOW_MS)

    # ---- set-up ----

    def _register(self):
        ble = self.ble
        U = self.uuid
        dis = (U(0x180A), (
            (U(0x2A29), _READ), (U(0x2A24), _READ), (U(0x2A25), _READ | _READ_ENC),
            (U(0x2A26), _READ),
        ))  # fmt: skip
        bas = (U(0x180F), ((U(0x2A19), _READ | _NOTIFY | _READ_ENC),))
        pump = (U(PUMP_SERVICE), tuple((U(pump_uuid(n)), flags) for _ch, n, flags in CHARS))
        (h_dis, h_bas, h_pump) = ble.gatts_register_services((dis, bas, pump))
        for h, text in zip(h_dis, self.info):
            ble.gatts_write(h, text.encode() if isinstance(text, str) else text)
        self.battery_handle = h_bas[0]
        for (ch, _n, flags), h in zip(CHARS, h_pump):
            self.handles[ch] = h
            self._ch_of[h] = ch
            if flags & _WRITE:
                ble.gatts_set_buffer(h, CP_BUFFER)

    def _advertise(self):
        # Flags, then the complete local name "ITB": nothing about the patient or therapy.
        adv = b"\x02\x01\x06\x04\x09ITB"
        self.ble.gap_advertise(500_000, adv)

    # ---- the task ----

    async def run(self, app):
        """The radio task (App.radio): set up, then serve events until cancelled. A fault in
        the radio restarts the radio, never the pump."""
        while True:
            try:
                await self._run(app)
            except Exception as e:  # noqa: BLE001
                app.note("ble_error", -1, -1, repr(e))
                self.service = None
                try:
                    self.ble.active(False)
                except Exception:  # noqa: BLE001, S110 - it is being restarted anyway
                    pass
                await app.aio.sleep_ms(RESTART_MS)

    async def _run(self, app):
        self.app = app
        aio = app.aio
        self._flag = aio.ThreadSafeFlag()
        self._ind_flags = [aio.ThreadSafeFlag() for _ in range(MAX_CONN)]
        self.service = SV.Service(app, self.keys, self.pump_id, self.random, app.clock,
                                  self._send)  # fmt: skip
        ble = self.ble
        ble.irq(self._irq)  # before activation: the stack asks for the pump's IRK then
        ble.active(True)
        ble.config(gap_name="ITB")
        ble.config(bond=True, mitm=True, le_secure=True, io=_IO_DISPLAY_YESNO)
        self._conn_slot = {}
        self._head = self._tail = 0
        self._status_due = [0] * MAX_CONN
        self._ind_busy = [False] * MAX_CONN
        self._status_value = self._alarm_value = None
        self._changed_value = self._battery_level = -1
        self._register()
        self._update_values(True)
        advertising = False
        counted_ms = app.clock.now_ms()
        try:
            while True:
                now = app.clock.now_ms()
                if self._conn_slot:
                    # Time with a programmer connected goes into the battery's charge budget
                    # (the energy model's radio current); advertising is in its quiescent draw.
                    app.sup.radio_on(now - counted_ms)
                counted_ms = now
                self._drain()
                if self._connected_changed:
                    # A connection ends advertising; a disconnection frees the pump to start
                    # it again (below, at once).
                    advertising = False
                cut = app.sup.loads_cut()
                if not cut and not advertising and len(self._conn_slot) < MAX_CONN:
                    self._advertise()
                    advertising = True
                elif cut and advertising:
                    ble.gap_advertise(None)
                    advertising = False
                if self._secrets_dirty and self.secret_store is not None:
                    self._secrets_dirty = False
                    self.secret_store.save(self.secrets)
                self._update_values(False)
                self._send_due()
                wake = now + STATUS_EVERY_MS
                for due in self._status_due:
                    if due:
                        wake = now + 50  # an indication waits for the link: look again soon
                await app.clock.wait_until(wake, self._flag)
        finally:
            ble.gap_advertise(None)
            for h in list(self._conn_slot):
                ble.gap_disconnect(h)

    def _drain(self):
        self._connected_changed = False
        r = self._ring
        while self._tail != self._head:
            n = self._tail
            i = n * _FIELDS
            kind = r[i + _KIND]
            conn = r[i + _CONN]
            if kind == _IRQ_CENTRAL_CONNECT:
                used = list(self._conn_slot.values())
                slot = 0
                while slot in used:
                    slot += 1
                if slot >= MAX_CONN:
                    self.ble.gap_disconnect(conn)  # more links than the pump serves
                    self.app.note("ble_connection_refused", conn, "busy")
                    self._tail = (n + 1) % _EVENTS
                    continue
                self._conn_slot[conn] = slot
                self.service.connected(conn, bytes(self._addr[n]))
                self._connected_changed = True
            elif kind == _IRQ_CENTRAL_DISCONNECT:
                slot = self._conn_slot.pop(conn, None)
                if slot is not None:
                    self._ind_flags[slot].set()  # a send waiting on this link gives up now
                self.service.disconnected(conn)
                self._connected_changed = True
            elif kind == _IRQ_GATTS_WRITE:
                ch = self._ch_of.get(r[i + _A], -1)
                if ch >= 0:
                    frame = self.ble.gatts_read(r[i + _A])
                    self.app.aio.create_task(self._serve(conn, ch, frame))
            elif kind == _IRQ_MTU_EXCHANGED:
                self.service.mtu(conn, r[i + _A])
            elif kind == _IRQ_GATTS_INDICATE_DONE:
                slot = self._conn_slot.get(conn)
                if slot is not None:
                    self._ind_status[slot] = r[i + _B]
                    self._ind_flags[slot].set()
            elif kind == _IRQ_ENCRYPTION_UPDATE:
                self.service.security(conn, r[i + _A], r[i + _B], r[i + _C], r[i + _D])
            elif kind == _IRQ_PASSKEY_ACTION:
                self._passkey(conn, r[i + _A], r[i + _B])
            self._tail = (n + 1) % _EVENTS
        if self._refused_stores:
            self.app.note("ble_bond_refused", self._refused_stores)
            self._refused_stores = 0
        if self._lost:
            n = self._lost
            self._lost = 0
            # An event the full ring could not take may have been a connection or a
            # disconnection: start the radio again rather than go on out of step with it.
            raise RadioFault("%d BLE events lost" % n)

    async def _serve(self, conn, ch, frame):
        # Nothing a frame does may end the radio task, let alone the pump: a fault here is
        # logged, and the connection dropped so that the client starts clean.
        try:
            await self.service.write(conn, ch, frame)
        except Exception as e:  # noqa: BLE001
            self.app.note("ble_error", conn, ch, repr(e))
            self.ble.gap_disconnect(conn)

    def _passkey(self, conn, action, passkey):
        # Numeric comparison, inside the pairing window opened by the button: the pump shows
        # the number in its log (a bench board's console) and accepts. Anything else is
        # refused: outside the window, and any other method (the pump has no display, and a
        # passkey it answered with would be a fixed one a central could type) drops the link.
        ok = action == _PASSKEY_NUMERIC_COMPARISON and self._window_open()
        self.app.note("ble_pairing", conn, action, passkey, ok)
        if ok:
            # The bond's keys are stored at the end of this pairing, which SMP ends within
            # 30 s: the store may come after the window, and is accepted until then. This
            # does not extend the window for any new pairing.
            now = self.app.clock.now_ms()
            if self._store_until_ms < now + PAIRING_FINISH_MS:
                self._store_until_ms = now + PAIRING_FINISH_MS
            self.ble.gap_passkey(conn, action, 1)
        elif action == _PASSKEY_NUMERIC_COMPARISON:
            self.ble.gap_passkey(conn, action, 0)
        else:
            self.ble.gap_disconnect(conn)

    # ---- sending (the service's send) ----

    async def _send(self, conn, ch, data, indicate):
        slot = self._conn_slot.get(conn)
        if slot is None:
            return False
        h = self.handles[ch]
        aio = self.app.aio
        if not indicate:
            for _ in range(NOTIFY_RETRIES):
                try:
                    self.ble.gatts_notify(conn, h, data)
                    return True
                except OSError:
                    await aio.sleep_ms(20)
                    if conn not in self._conn_slot:
                        return False
            self.app.note("ble_send_failed", conn, ch)
            return False
        # One indication in flight per connection: wait for the link to be free (a status
        # indication may be out), send, then wait for the acknowledgement.
        until = self.app.clock.now_ms() + INDICATE_TIMEOUT_MS
        while self._ind_busy[slot]:
            if self.app.clock.now_ms() >= until or self._conn_slot.get(conn) != slot:
                self.app.note("ble_indicate_timeout", conn, ch)
                return False
            await aio.sleep_ms(5)
        self._ind_busy[slot] = True
        try:
            self._ind_status[slot] = -1
            try:
                self.ble.gatts_indicate(conn, h, data)
            except OSError:
                self.app.note("ble_send_failed", conn, ch)
                return False
            until = self.app.clock.now_ms() + INDICATE_TIMEOUT_MS
            while self._ind_status[slot] < 0:
                if self._conn_slot.get(conn) != slot:
                    return False
                if self.app.clock.now_ms() >= until:
                    self.app.note("ble_indicate_timeout", conn, ch)
                    self.ble.gap_disconnect(conn)
                    return False
                await self.app.clock.wait_until(until, self._ind_flags[slot])
            return self._ind_status[slot] == 0
        finally:
            self._ind_busy[slot] = False

    # ---- the readable characteristics ----

    def _seal_value(self, ch, body):
        n = self._counter[ch]
        self._counter[ch] = (n + 1) & 0xFF
        return W.seal(body, n)

    def _publish(self, ch, body, first):
        # The new value, sealed, and (after the first) indicated to every subscriber.
        self.ble.gatts_write(self.handles[ch], self._seal_value(ch, body))
        if not first:
            self._indicate_all(ch)

    def _update_values(self, first):
        svc = self.service
        ble = self.ble
        status = svc.status_record()
        if first or status != self._status_value:
            if not first:
                svc.changed |= SV.CHANGED_STATUS
            self._status_value = status
            self._publish(SV.CH_STATUS, status, first)
        alarm = svc.alarm_record()
        if first or alarm != self._alarm_value:
            if not first:
                svc.changed |= SV.CHANGED_ALARM
            self._alarm_value = alarm
            self._publish(SV.CH_ALARM, alarm, first)
        # A new running or staged programme is a new object; a new record, a new sequence number.
        rx = self.app.sup.engine.rx
        staged = self.app.sup.staged
        if not first and (rx is not self._rx_seen or staged is not self._staged_seen):
            svc.changed |= SV.CHANGED_PROGRAMME
        self._rx_seen = rx
        self._staged_seen = staged
        seq = self.app.store.log.seq
        if not first and seq != self._log_seq:
            svc.changed |= SV.CHANGED_HISTORY
        self._log_seq = seq
        if svc.changed != self._changed_value:
            self._changed_value = svc.changed
            self._publish(SV.CH_CHANGED, struct.pack("<H", svc.changed), first)
        if first:
            ble.gatts_write(self.handles[SV.CH_FEATURES],
                            self._seal_value(SV.CH_FEATURES, svc.features()))
        level = svc.battery_level()
        if level != self._battery_level:
            self._battery_level = level
            value = bytes((level,))
            ble.gatts_write(self.battery_handle, value)
            if not first:
                # Battery Level notifies every secure link (a state: a lost one is harmless,
                # the value stays readable).
                for conn in list(self._conn_slot):
                    c = svc.conns.get(conn)
                    if c is not None and c.secure:
                        try:
                            ble.gatts_notify(conn, self.battery_handle, value)
                        except OSError:
                            pass

    def _indicate_all(self, ch):
        # Marked due for every connection with a session, and sent by _send_due() when the
        # link has no indication out: control-point responses go first, and a burst of
        # changes becomes one indication of the latest value.
        svc = self.service
        for conn, slot in self._conn_slot.items():
            c = svc.conns.get(conn)
            if c is not None and c.session is not None:
                self._status_due[slot] |= 1 << ch

    def _send_due(self):
        for conn, slot in self._conn_slot.items():
            due = self._status_due[slot]
            if not due or self._ind_busy[slot]:
                continue
            for ch in (SV.CH_STATUS, SV.CH_ALARM, SV.CH_CHANGED):
                if due & (1 << ch):
                    self._status_due[slot] = due & ~(1 << ch)
                    value = self.ble.gatts_read(self.handles[ch])
                    self.app.aio.create_task(self._send(conn, ch, value, True))
                    break


BONDS_PATH = "/bonds"
_BONDS_KIND = 5


class BondStore:
    """The stack's secrets (bonds) in one CRC-checked file on the pump's filesystem, rewritten
    atomically. On a board, flash encryption is what keeps them from a reader of the chip."""

    def __init__(self, fs):
        self.fs = fs

    def load(self):
        try:
            with self.fs.open(BONDS_PATH, "rb") as f:
                buf = f.read()
            _seq, payload = C.unframe(buf, _BONDS_KIND, 1)
            return {(t, k): v for t, k, v in C.decode(payload)}
        except (OSError, ValueError, TypeError):
            return {}  # no bonds (or damaged ones): clients pair again, inside the window

    def save(self, table):
        rows = [[t, k, v] for (t, k), v in sorted(table.items())]
        ST.write_atomic(self.fs, BONDS_PATH, C.frame(_BONDS_KIND, 1, 0, bytes(C.encode(rows))))


def attach(app, hal, model, firmware_version, random):
    """Give app its radio if the pump was provisioned (a keys file) and the board has BLE;
    returns the Radio or None. Without keys the pump runs without a radio, and says so."""
    api = getattr(hal, "ble_api", None)
    if api is None:
        return None
    try:
        found = KF.load(hal.fs)
    except ValueError as e:
        app.note("ble_keys_damaged", str(e))
        return None
    if found is None:
        app.note("ble_no_keys")
        return None
    pump_id, keys = found
    ble, uuid = api()
    info = ("ITB open firmware", model, pump_id, firmware_version)
    app.radio = Radio(ble, uuid, keys, pump_id, random, info, BondStore(hal.fs))
    return app.radio
