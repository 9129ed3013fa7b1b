# A strict in-process stand-in for MicroPython's `bluetooth` module (ESP32 port, NimBLE, sync
# events), peripheral role, for host tests of the radio code on CPython and on MicroPython.
"""Modelled on extmod/modbluetooth.c and extmod/nimble/modbluetooth_nimble.c (snapshot 1c3c2011)
and ../shared/reference/ble.md (c), (d). Only the public names the real module has; everything
else is a test control with an underscore name (as in the machine fake):

  _reset()            forget everything (services, connections, handler, faults, violations)
  _Central(addr, ...) a fake central: connect, exchange_mtu, pair (Just Works, numeric comparison
                      or passkey, chosen from both sides' io/mitm/le_secure like SMP does), resume
                      (reconnect encryption from the bond), write, read, subscribe, ack/time_out
                      of indications, disconnect; it records notifications and indications
  _run()              let the radio work: deliver what the stack does "later" (indication acks,
                      the end of a pairing after gap_passkey, a disconnect asked by the pump)
  _fail_next(op, nth) make the nth next gatts_notify/gatts_indicate raise OSError (ENOMEM default)
  _advertising()      the current advertising state (None when off), for asserting payloads
  _handle_of(uuid)    the value handle of a registered characteristic or descriptor
  _state              counters and records: irq_errors, violations, bonds_made
  _check()            raise AssertionError for each misuse the fake saw (a kept memoryview, ...)

Stale memoryviews: every addr/key/value view handed to the handler is read-only and its bytes are
overwritten with 0xEE once the handler returns, so code that kept a view reads garbage (both
runtimes). On CPython the view is also released (any later use raises ValueError) and a handler
that kept a reference to the data tuple or a view is recorded as a violation at once. MicroPython
has no refcounts and no memoryview.release(): there, only the poisoned contents show the bug.

The secret store is driven as NimBLE drives it: a refused SET_SECRET makes the stack enumerate
bonds (GET_SECRET with key None), delete the oldest and retry (ble_store_util_status_rr); a
delete is repeated until SET_SECRET(..., None) returns False; a repeat pairing deletes the
peer's old bond first. Loops NimBLE would never leave are reported instead. A refused store
leaves the link encrypted (and authenticated after numeric comparison) but not bonded. An
exception in the handler is printed and switches the handler off, as on the board.

Deliberately not modelled: the central role (gap_scan, gap_connect, gattc_*), L2CAP, connection
parameter updates, service discovery, CCCD persistence (it is never persisted on MicroPython
anyway), *_AUTHORIZED flags (NimBLE-version dependent: authorise in the application), signed
writes, legacy-pairing details beyond the method table, OOB, the 30 s ATT/SMP timers (the test
says when a timeout happens), radio timing."""

import sys

try:
    import uctypes  # MicroPython: lets the fake overwrite the bytes behind a stale view
except ImportError:
    uctypes = None

_CPYTHON = sys.implementation.name == "cpython"

# MicroPython's MP_E* numbers (the unix port's errno module lacks some of them, e.g. EBUSY).
_ENOENT = 2
_E2BIG = 7
_ENOMEM = 12
_EBUSY = 16
_ENODEV = 19
_EINVAL = 22
_ENOTCONN = 107
_EALREADY = 114

FLAG_READ = 0x0002
FLAG_WRITE_NO_RESPONSE = 0x0004
FLAG_WRITE = 0x0008
FLAG_NOTIFY = 0x0010
FLAG_INDICATE = 0x0020

_F_READ_ENC = 0x0200
_F_READ_AUTHEN = 0x0400
_F_WRITE_ENC = 0x1000
_F_WRITE_AUTHEN = 0x2000

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

_ACT_INPUT = 2
_ACT_DISPLAY = 3
_ACT_NUMCMP = 4

_IO_DISPLAY_ONLY = 0
_IO_DISPLAY_YESNO = 1
_IO_KEYBOARD_ONLY = 2
_IO_NO_INPUT_OUTPUT = 3
_IO_KEYBOARD_DISPLAY = 4

_ATT_INVALID_HANDLE = 0x01
_ATT_READ_NOT_PERMITTED = 0x02
_ATT_WRITE_NOT_PERMITTED = 0x03
_ATT_REQ_NOT_SUPPORTED = 0x06
_ATT_INSUFFICIENT_AUTHEN = 0x05
_ATT_INVALID_LENGTH = 0x0D
_ATT_INSUFFICIENT_ENC = 0x0F

_SEC_OUR = 1  # NimBLE BLE_STORE_OBJ_TYPE_OUR_SEC
_SEC_PEER = 2  # BLE_STORE_OBJ_TYPE_PEER_SEC
_SEC_IRK = 10  # MicroPython's SECRET_TYPE_OUR_IRK
_SEC_VALUE_LEN = 80  # the fake's size of NimBLE's opaque ble_store_value_sec blob

_DEFAULT_ATTR_LEN = 20  # MP_BLUETOOTH_DEFAULT_ATTR_LEN
_MAX_ATTR_LEN = 512  # ATT maximum attribute value (long writes/reads)
_MAX_SERVICES = 8  # MP_BLUETOOTH_NIMBLE_MAX_SERVICES
_MAX_CONNECTIONS = 4  # CONFIG_BT_NIMBLE_MAX_CONNECTIONS in ports/esp32/boards/sdkconfig.ble
_PREFERRED_MTU = 256  # ESP-IDF CONFIG_BT_NIMBLE_ATT_PREFERRED_MTU default
_MTU_MIN = 23
_MTU_MAX = 527  # NimBLE BLE_ATT_MTU_MAX
_GAP_NAME_MAX = 31  # ESP-IDF CONFIG_BT_NIMBLE_GAP_DEVICE_NAME_MAX_LEN default
_DEFAULT_GAP_NAME = b"MPY ESP32"  # sdkconfig.ble
_ADV_DATA_MAX = 31
_FIRST_USER_HANDLE = 10  # after NimBLE's own GAP (0x1800) and GATT (0x1801) services
_STATUS_ENOTCONN = 7  # BLE_HS_ENOTCONN, passed through raw as the INDICATE_DONE status
_STATUS_ETIMEOUT = 13  # BLE_HS_ETIMEOUT
_LOOP_BOUND = 8  # NimBLE loops on the store callbacks; the fake stops and reports instead
_POISON = 0xEE
_PUBLIC_ADDR = b"\x24\x0a\xc4\xf0\x00\x01"

_state = {}
_r = None  # the radio: everything _reset() forgets


class _Radio:
    def __init__(self):
        self.handler = None
        self.active = False
        self.gap_name = _DEFAULT_GAP_NAME
        self.addr_mode = 0
        self.mtu = _PREFERRED_MTU
        self.sm = {"bond": False, "mitm": False, "le_secure": False, "io": _IO_NO_INPUT_OUTPUT}
        self.attrs = {}  # value handle -> _Attr
        self.n_services = 0
        self.adv = None
        self.adv_data = b""
        self.resp_data = b""
        self.conns = {}  # conn handle -> _Central
        self.later = []
        self.faults = {}  # "notify"/"indicate" -> [calls left before the fault, count, errno]


class _Attr:
    def __init__(self, uuid, flags, is_dsc, cccd=None):
        self.uuid = uuid
        self.flags = flags
        self.is_dsc = is_dsc
        self.cccd = cccd  # the CCCD handle for a characteristic that can notify/indicate
        self.data = b""
        self.alloc = _DEFAULT_ATTR_LEN
        self.append = False


def _reset():
    global _r
    _r = _Radio()
    _state.clear()
    _state["irq_errors"] = []  # (event, "ExcType: message") per exception the handler raised
    _state["violations"] = []  # misuse the fake detected; _check() raises them
    _state["bonds_made"] = 0


_reset()


def _violation(text):
    _state["violations"].append(text)


def _check():
    v = _state["violations"]
    if v:
        raise AssertionError("fake bluetooth: " + "; ".join(v))


def _int(x):
    if not isinstance(x, int):
        raise TypeError("can't convert %s to int" % type(x).__name__)
    return x


def _buf(x):
    if isinstance(x, str):
        return x.encode()
    if isinstance(x, (bytes, bytearray, memoryview)):
        return bytes(x)
    raise TypeError("object with buffer protocol required")


def _nargs(name, args, kw, lo, hi):
    if kw:
        raise TypeError("function doesn't take keyword arguments")
    if not lo <= len(args) <= hi:
        raise TypeError("function %s takes %d..%d positional arguments" % (name, lo + 1, hi + 1))


# --- the IRQ handler call, with views that die when it returns ---------------------------------


def _view(data):
    if _CPYTHON:
        backing = bytearray(data)
        return memoryview(backing).toreadonly(), backing
    backing = bytes(bytearray(data))  # a fresh object, never a shared literal
    return memoryview(backing), backing


def _poison(views):
    for v, backing in views:
        n = len(backing)
        if _CPYTHON:
            backing[:] = bytes([_POISON]) * n
            try:
                v.release()
            except BufferError:
                _violation("an IRQ memoryview was still exported after the handler returned")
        elif uctypes is not None and n:
            uctypes.bytearray_at(uctypes.addressof(backing), n)[:] = bytes([_POISON]) * n


def _irq(event, items, buffers=()):
    """Call the handler as modbluetooth.c does: `items` are the ints, then one read-only
    memoryview per entry of `buffers` (None stays None); the return value is passed back."""
    r = _r
    h = r.handler
    if h is None or not r.active:
        return None
    views = []
    data = list(items)
    for b in buffers:
        if b is None:
            data.append(None)
        else:
            vb = _view(b)
            views.append(vb)
            data.append(vb[0])
    data = tuple(data)
    if _CPYTHON:
        base = [sys.getrefcount(data)] + [sys.getrefcount(v) for v, _ in views]
    result = None
    try:
        result = h(event, data)
    except Exception as e:  # noqa: BLE001 - the port catches everything, prints it, goes on
        _handler_failed(event, e)
        result = None
    if _CPYTHON:
        now = [sys.getrefcount(data)] + [sys.getrefcount(v) for v, _ in views]
        if now != base:
            _violation("the handler kept the data tuple or a memoryview of event %d" % event)
    _poison(views)
    return result


def _handler_failed(event, e):
    # As on the board: printed, swallowed, and the handler is switched off (modbluetooth.c
    # invoke_irq_handler_run_protected sets irq_handler = None).
    _state["irq_errors"].append((event, "%s: %s" % (type(e).__name__, e)))
    print("Unhandled exception in IRQ callback handler", file=sys.stderr)
    if _CPYTHON:
        import traceback

        traceback.print_exception(type(e), e, e.__traceback__, file=sys.stderr)
    else:
        sys.print_exception(e, sys.stderr)
    _r.handler = None


def _later(fn, *args):
    _r.later.append((fn, args))


def _run():
    """Deliver what the stack does after the current call returns (acks, pairing ends, ...)."""
    n = 0
    while _r.later:
        fn, args = _r.later.pop(0)
        fn(*args)
        n += 1
        if n > 10000:
            raise AssertionError("fake bluetooth: deferred work does not settle")
    _check()


# --- the secret store as NimBLE drives it -------------------------------------------------------


def _sec_key(c):
    # ble_addr_t: type then the address in NimBLE's little-endian order.
    return bytes([c.addr_type]) + bytes(reversed(c.addr))


def _sec_value(c, ltk, authenticated):
    v = _sec_key(c) + bytes([16]) + ltk + bytes([1 if authenticated else 0, 1])
    return v + bytes(_SEC_VALUE_LEN - len(v))


def _get_secret(sec_type, index, key):
    v = _irq(_IRQ_GET_SECRET, (sec_type, index), (key,))
    if v is None:
        return None
    v = _buf(v)
    return v if len(v) == _SEC_VALUE_LEN else None  # wrong length: "not found", as NimBLE


def _set_secret(sec_type, key, value):
    return bool(_irq(_IRQ_SET_SECRET, (sec_type,), (key, value)))


def _delete_all(sec_type, key):
    # ble_store_util_delete_all: delete until the store says there is nothing left.
    for _ in range(_LOOP_BOUND):
        if not _set_secret(sec_type, key, None):
            return
    _violation("SET_SECRET(delete) kept returning True for one key: NimBLE would loop forever")


def _delete_peer(key):
    _delete_all(_SEC_OUR, key)
    _delete_all(_SEC_PEER, key)


def _store(sec_type, key, value):
    # ble_store_write with MicroPython's store_status_cb = ble_store_util_status_rr: a refused
    # write (False) makes NimBLE evict the oldest bond it can enumerate and try again.
    for _ in range(_LOOP_BOUND):
        if _set_secret(sec_type, key, value):
            return True
        oldest = _get_secret(_SEC_OUR, 0, None)
        if oldest is None:
            return False
        victim = oldest[:7]
        _delete_peer(victim)
        for c in list(_r.conns.values()):
            if _sec_key(c) == victim:
                c._dropped()
    _violation("SET_SECRET refused after evicting bonds %d times: NimBLE would loop" % _LOOP_BOUND)
    return False


# --- module API ---------------------------------------------------------------------------------


class UUID:
    def __init__(self, *args, **kw):
        if kw:
            raise TypeError("function doesn't take keyword arguments")
        if len(args) != 1:
            raise TypeError("function takes 1 positional arguments but %d were given" % len(args))
        value = args[0]
        if isinstance(value, int):
            if value > 65535:
                raise ValueError("invalid UUID")
            self._data = bytes([value & 0xFF, (value >> 8) & 0xFF])
            return
        raw = _buf(value)
        if len(raw) in (2, 4, 16):
            self._data = raw  # a buffer of these lengths is taken as the little-endian value
            return
        digits = []
        for ch in raw:
            c = chr(ch)
            if c == "-":
                continue
            if c not in "0123456789abcdefABCDEF":
                raise ValueError("invalid char in UUID")
            digits.append(int(c, 16))
            if len(digits) > 32:
                raise ValueError("UUID too long")
        if len(digits) < 32:
            raise ValueError("UUID too short")
        self._data = bytes(
            [digits[2 * i] << 4 | digits[2 * i + 1] for i in range(15, -1, -1)]
        )  # little-endian storage, as modbluetooth.c

    def _key(self, other):
        if not isinstance(other, UUID):
            return None
        a, b = self._data, other._data
        return (len(a), bytes(reversed(a))), (len(b), bytes(reversed(b)))

    def __eq__(self, other):
        k = self._key(other)
        return NotImplemented if k is None else k[0] == k[1]

    def __ne__(self, other):
        k = self._key(other)
        return NotImplemented if k is None else k[0] != k[1]

    def __lt__(self, other):
        k = self._key(other)
        return NotImplemented if k is None else k[0] < k[1]

    def __hash__(self):
        return hash(self._data)

    def __bytes__(self):
        return self._data

    def __repr__(self):
        d = self._data
        n = len(d)
        out = "UUID(" + ("0x" if n <= 4 else "'")
        for i in range(n):
            if n == 16 and i in (4, 6, 8, 10):
                out += "-"
            out += "%02x" % d[n - 1 - i]
        return out + ("'" if n == 16 else "") + ")"


class BLE:
    _single = None

    def __new__(cls):
        if BLE._single is None:
            BLE._single = object.__new__(cls)
        return BLE._single

    def __init__(self):
        pass

    def active(self, *args, **kw):
        _nargs("active", args, kw, 0, 1)
        if args:
            if args[0]:
                _deinit()
                _init()
            else:
                _deinit()
        return _r.active

    def config(self, *args, **kw):
        r = _r
        if not kw:
            if len(args) != 1:
                raise TypeError("must query one param")
            name = args[0]
            if name == "gap_name":
                return bytes(r.gap_name)
            if name == "mac":
                if not r.active:
                    raise OSError(_ENODEV)
                if r.addr_mode == 0:
                    return (0, _PUBLIC_ADDR)
                if r.addr_mode in (1, 3):
                    return (1, bytes([0xC0 | 0x1A]) + _PUBLIC_ADDR[1:])
                raise OSError(_EINVAL)
            if name == "mtu":
                if not r.active:
                    raise OSError(_ENODEV)
                return r.mtu
            raise ValueError("unknown config param")
        if args:
            raise TypeError("can't specify pos and kw args")
        for name in kw:
            value = kw[name]
            if name == "gap_name":
                b = _buf(value)
                if len(b) > _GAP_NAME_MAX:
                    raise OSError(_EINVAL)
                r.gap_name = b
            elif name == "mtu":
                m = _int(value)
                if not r.active:
                    raise OSError(_ENODEV)
                if not _MTU_MIN <= m <= _MTU_MAX:
                    raise OSError(_EINVAL)
                r.mtu = m
            elif name == "addr_mode":
                m = _int(value)
                if not r.active:
                    raise OSError(_ENODEV)
                if 0 <= m <= 3:
                    r.addr_mode = m
            elif name in ("bond", "mitm", "le_secure"):
                r.sm[name] = bool(value)
            elif name == "io":
                r.sm["io"] = _int(value)
            else:
                raise ValueError("unknown config param")
        return None

    def irq(self, handler):
        if handler is not None and not callable(handler):
            raise ValueError("invalid handler")
        _r.handler = handler
        return None

    def gap_advertise(
        self, interval_us=500000, adv_data=None, *, resp_data=None, connectable=True
    ):
        r = _r
        if interval_us is None:
            r.adv = None
            return None
        units = _int(interval_us) // 625
        if not r.active:
            raise OSError(_ENODEV)
        r.adv = None
        if adv_data is not None:
            b = _buf(adv_data)
            if len(b) > _ADV_DATA_MAX:
                raise OSError(_EINVAL)
            r.adv_data = b
        if resp_data is not None:
            b = _buf(resp_data)
            if len(b) > _ADV_DATA_MAX:
                raise OSError(_EINVAL)
            r.resp_data = b
        if units and not 0x20 <= units <= 0x4000:
            raise OSError(_EINVAL)
        r.adv = {"interval_us": units * 625, "connectable": bool(connectable)}
        return None

    def gap_disconnect(self, *args, **kw):
        _nargs("gap_disconnect", args, kw, 1, 1)
        conn = _int(args[0])
        if not _r.active:
            raise OSError(_ENODEV)
        c = _r.conns.get(conn)
        if c is None:
            return False
        _later(c._end)
        return True

    def gap_pair(self, *args, **kw):
        _nargs("gap_pair", args, kw, 1, 1)
        c = _r.conns.get(_int(args[0]))
        if c is None:
            raise OSError(_ENOTCONN)
        _later(c._security_request)
        return None

    def gap_passkey(self, *args, **kw):
        _nargs("gap_passkey", args, kw, 3, 3)
        conn, action, passkey = _int(args[0]), _int(args[1]), _int(args[2])
        if action not in (_ACT_INPUT, _ACT_DISPLAY, _ACT_NUMCMP):
            raise OSError(_EINVAL)
        c = _r.conns.get(conn)
        if c is None or c._pairing is None or c._pairing.get("answer") is not None:
            raise OSError(_ENOENT)
        if action != c._pairing["action"] or (
            action != _ACT_NUMCMP and not 0 <= passkey <= 999999
        ):
            raise OSError(_EINVAL)
        c._pairing["answer"] = passkey
        _later(c._pair_step)
        return None

    def gatts_register_services(self, *args, **kw):
        _nargs("gatts_register_services", args, kw, 1, 1)
        services = args[0]
        r = _r
        if not r.active:
            raise OSError(_ENODEV)
        if r.adv is not None or r.conns:
            raise OSError(_EBUSY)  # ble_gatts_reset refuses while advertising/connected
        r.attrs = {}
        r.n_services = 0
        result = []
        handle = _FIRST_USER_HANDLE - 1  # the last handle in use
        for svc in services:
            svc = _fixed(svc, 2)
            if r.n_services == _MAX_SERVICES:
                raise OSError(_E2BIG)
            if not isinstance(svc[0], UUID):
                raise ValueError("invalid service UUID")
            r.n_services += 1
            handle += 1  # the service declaration
            out = []
            for ch in svc[1]:
                if not isinstance(ch, (tuple, list)):
                    raise TypeError("object isn't a tuple or list")
                if not 2 <= len(ch) <= 3:
                    raise ValueError("invalid characteristic tuple")
                if not isinstance(ch[0], UUID):
                    raise ValueError("invalid characteristic UUID")
                flags = _int(ch[1])
                value = handle + 2  # after the characteristic declaration
                cccd = None
                handle = value
                if flags & (FLAG_NOTIFY | FLAG_INDICATE):
                    handle += 1
                    cccd = handle
                r.attrs[value] = _Attr(ch[0], flags, False, cccd)
                out.append(value)
                for d in ch[2] if len(ch) == 3 else ():
                    d = _fixed(d, 2)
                    if not isinstance(d[0], UUID):
                        raise ValueError("invalid descriptor UUID")
                    handle += 1
                    r.attrs[handle] = _Attr(d[0], _int(d[1]), True)
                    out.append(handle)
            result.append(tuple(out))
        return tuple(result)

    def gatts_read(self, *args, **kw):
        _nargs("gatts_read", args, kw, 1, 1)
        a = _r.attrs.get(_int(args[0])) if _r.active else None
        if a is None:
            return b""  # modbluetooth.c ignores the error and returns an empty value
        v = a.data
        if a.append:
            a.data = b""
        return bytes(v)

    def gatts_write(self, *args, **kw):
        _nargs("gatts_write", args, kw, 2, 3)
        h = _int(args[0])
        data = _buf(args[1])
        send_update = len(args) == 3 and bool(args[2])
        if not _r.active:
            raise OSError(_ENODEV)
        a = _r.attrs.get(h)
        if a is None:
            raise OSError(_EINVAL)
        if len(data) > a.alloc:
            a.alloc = len(data)  # a local write grows the buffer
        a.data = data
        if send_update:
            for c in list(_r.conns.values()):
                c._updated(h, a)
        return len(data)

    def gatts_notify(self, *args, **kw):
        _nargs("gatts_notify", args, kw, 2, 3)
        c, h, payload = _send_args("notify", args)
        c._receive(h, payload, False)
        return None

    def gatts_indicate(self, *args, **kw):
        _nargs("gatts_indicate", args, kw, 2, 3)
        c, h, payload = _send_args("indicate", args)
        c._receive(h, payload, True)
        return None

    def gatts_set_buffer(self, *args, **kw):
        _nargs("gatts_set_buffer", args, kw, 2, 3)
        h, n = _int(args[0]), _int(args[1])
        append = len(args) == 3 and bool(args[2])
        if not _r.active:
            raise OSError(_ENODEV)
        a = _r.attrs.get(h)
        if a is None:
            raise OSError(_EINVAL)
        a.alloc = n
        a.data = b""  # mp_bluetooth_gatts_db_resize empties the value
        a.append = append
        return None


def _fixed(obj, n):
    if not isinstance(obj, (tuple, list)):
        raise TypeError("object isn't a tuple or list")
    if len(obj) != n:
        raise ValueError("tuple/list has wrong length")
    return obj


def _send_args(op, args):
    conn, h = _int(args[0]), _int(args[1])
    data = args[2] if len(args) == 3 else None
    r = _r
    if not r.active:
        raise OSError(_ENODEV)
    f = r.faults.get(op)
    if f is not None:
        f[0] -= 1
        if f[0] <= 0:
            f[1] -= 1
            if f[1] <= 0:
                del r.faults[op]
            raise OSError(f[2])
    c = r.conns.get(conn)
    if c is None:
        raise OSError(_ENOTCONN)
    a = r.attrs.get(h)
    if a is None:
        raise OSError(_ENOENT)
    if op == "indicate" and c._inflight is not None:
        raise OSError(_EALREADY)  # one indication in flight per connection
    return c, h, a.data if data is None else _buf(data)


def _fail_next(op, nth=1, err=_ENOMEM, count=1):
    """The nth next call of gatts_<op> (op "notify" or "indicate") raises OSError(err), and the
    count - 1 calls after it too, as NimBLE does when its mbuf pool is exhausted."""
    if op not in ("notify", "indicate"):
        raise ValueError("op is notify or indicate")
    _r.faults[op] = [nth, count, err]


def _advertising():
    r = _r
    if r.adv is None:
        return None
    d = dict(r.adv)
    d["adv_data"] = r.adv_data
    d["resp_data"] = r.resp_data
    return d


def _handle_of(uuid):
    for h in sorted(_r.attrs):
        if _r.attrs[h].uuid == uuid:
            return h
    raise KeyError(repr(uuid))


def _init():
    r = _r
    r.active = True
    r.mtu = _PREFERRED_MTU
    r.addr_mode = 0
    # load_irk(): read our IRK, or make one and offer it to the store.
    irk = _irq(_IRQ_GET_SECRET, (_SEC_IRK, 0), (b"irk",))
    if irk is None or len(_buf(irk)) != 16:
        _set_secret(_SEC_IRK, b"irk", bytes([0x5A ^ i for i in range(16)]))


def _deinit():
    r = _r
    if not r.active:
        return
    # The stack shuts down with the handler unreachable: connections drop without events.
    for c in list(r.conns.values()):
        c._forget()
    r.active = False
    r.attrs = {}
    r.n_services = 0
    r.adv = None
    r.later = []


# --- the fake central ---------------------------------------------------------------------------


def _method(pump_io, central_io, sc, mitm):
    """SMP pairing method (Core spec Vol 3 Part H 2.3.5.1), the pump as responder:
    "jw", "nc", "pump_displays" (central types) or "pump_inputs" (central displays)."""
    if not mitm or _IO_NO_INPUT_OUTPUT in (pump_io, central_io):
        return "jw"
    p, c = pump_io, central_io
    if p == _IO_DISPLAY_ONLY:
        return "pump_displays" if c in (_IO_KEYBOARD_ONLY, _IO_KEYBOARD_DISPLAY) else "jw"
    if p == _IO_DISPLAY_YESNO:
        if c == _IO_KEYBOARD_ONLY:
            return "pump_displays"
        if c in (_IO_DISPLAY_YESNO, _IO_KEYBOARD_DISPLAY):
            return "nc" if sc else ("jw" if c == _IO_DISPLAY_YESNO else "pump_displays")
        return "jw"
    if p == _IO_KEYBOARD_ONLY:
        return "pump_inputs"
    # KEYBOARD_DISPLAY
    if c == _IO_DISPLAY_ONLY:
        return "pump_inputs"
    if c == _IO_KEYBOARD_ONLY:
        return "pump_displays"
    return "nc" if sc else ("pump_inputs" if c == _IO_DISPLAY_YESNO else "pump_displays")


class _Central:
    """A central on the other end of the link, driven by the test. ack_mode: "auto" (indications
    acknowledged at the next _run()), "hold" (until ack() or time_out()), or an int status."""

    def __init__(self, addr=b"\xc0\x11\x22\x33\x44\x55", addr_type=1, io=_IO_DISPLAY_YESNO,
                 mitm=True, le_secure=True, bond=True, mtu=247):  # fmt: skip
        self.addr = bytes(addr)
        self.addr_type = addr_type
        self.io = io
        self.mitm = mitm
        self.le_secure = le_secure
        self.bond = bond
        self.mtu_wanted = mtu
        self.ack_mode = "auto"
        self.accept = True  # the central user's answer to a numeric comparison
        self.passkey = None  # what the central user types; None: what the pump displayed
        self.displayed = 123456  # what the central shows when the pump must type it
        self.notifications = {}  # value handle -> [bytes, ...]
        self.indications = {}
        self.truncated = 0  # notifications/indications cut to MTU - 3
        self.unsubscribed = 0  # sent although the central had not subscribed
        self.ltk = None  # set once a bond was made: resume() uses it
        self._reset_link()

    def _reset_link(self):
        self.conn = None
        self.mtu = 23
        self._mtu_done = False
        self.encrypted = 0
        self.authenticated = 0
        self.bonded = 0
        self.key_size = 0
        self._inflight = None
        self._queued = []
        self._pairing = None
        self._cccd = {}  # value handle -> bits (1 notify, 2 indicate)
        self.result = None  # outcome of the last pairing: True, False, or None while pending

    # -- link ---------------------------------------------------------------------------------
    def connect(self):
        _run()
        r = _r
        if not r.active or r.adv is None or not r.adv["connectable"]:
            raise AssertionError("fake bluetooth: the pump is not advertising connectably")
        if self.conn is not None:
            raise AssertionError("fake bluetooth: this central is already connected")
        if len(r.conns) >= _MAX_CONNECTIONS:
            raise AssertionError("fake bluetooth: the pump has no free connection")
        h = 0
        while h in r.conns:
            h += 1
        self.conn = h
        r.conns[h] = self
        r.adv = None  # a connection ends connectable advertising
        _irq(_IRQ_CENTRAL_CONNECT, (h, self.addr_type), (self.addr,))
        _run()
        return h

    def disconnect(self):
        _run()
        if self.conn is not None:
            self._end()
        _run()

    def _end(self):
        if self.conn is None:
            return
        h = self.conn
        if self._inflight is not None:
            _irq(_IRQ_GATTS_INDICATE_DONE, (h, self._inflight, _STATUS_ENOTCONN))
        self._forget()
        _irq(_IRQ_CENTRAL_DISCONNECT, (h, self.addr_type), (self.addr,))

    def _dropped(self):
        _later(self._end)

    def _forget(self):
        _r.conns.pop(self.conn, None)
        self._reset_link()

    @property
    def connected(self):
        return self.conn is not None

    def _need(self):
        _run()
        if self.conn is None:
            raise AssertionError("fake bluetooth: the central is not connected")

    def exchange_mtu(self, mtu=None):
        self._need()
        if self._mtu_done:
            raise AssertionError("fake bluetooth: ATT allows one MTU exchange per connection")
        self._mtu_done = True
        self.mtu = min(self.mtu_wanted if mtu is None else mtu, _r.mtu)
        _irq(_IRQ_MTU_EXCHANGED, (self.conn, self.mtu))
        _run()
        return self.mtu

    # -- security -----------------------------------------------------------------------------
    def pair(self):
        """Start pairing; returns True (done), False (failed) or None (waiting for the pump to
        answer its PASSKEY_ACTION with gap_passkey: call _run() once it has)."""
        self._need()
        self._start_pairing()
        _run()
        return self.result

    def _security_request(self):
        if self.conn is None or self._pairing is not None:
            return
        if self.ltk is not None:
            self._resume()
        else:
            self._start_pairing()

    def _start_pairing(self):
        r = _r
        key = _sec_key(self)
        # A bond already stored for this address is a repeat pairing: MicroPython's handler
        # deletes the old bond and lets the pairing go on (BLE_GAP_REPEAT_PAIRING_RETRY).
        if _get_secret(_SEC_PEER, 0, key) is not None:
            _delete_peer(key)
        sc = bool(r.sm["le_secure"]) and bool(self.le_secure)
        mitm = bool(r.sm["mitm"]) or bool(self.mitm)
        how = _method(r.sm["io"], self.io, sc, mitm)
        self.result = None
        self._pairing = {"method": how, "action": None, "answer": None}
        if how == "jw":
            self._pairing["ok"] = True
            self._finish()
            return
        if how == "nc":
            self._pairing["action"] = _ACT_NUMCMP
            self._pairing["number"] = 314159
        elif how == "pump_displays":
            self._pairing["action"] = _ACT_DISPLAY
            self._pairing["number"] = 0
        else:
            self._pairing["action"] = _ACT_INPUT
            self._pairing["number"] = 0
        _irq(_IRQ_PASSKEY_ACTION, (self.conn, self._pairing["action"], self._pairing["number"]))

    def _pair_step(self):
        p = self._pairing
        if p is None or self.conn is None:
            return
        a = p["answer"]
        if p["action"] == _ACT_NUMCMP:
            p["ok"] = a != 0 and bool(self.accept)
        elif p["action"] == _ACT_DISPLAY:
            typed = a if self.passkey is None else self.passkey
            p["ok"] = typed == a
        else:
            p["ok"] = a == self.displayed
        self._finish()

    def time_out_pairing(self):
        """SMP's 30 s timer ran out while the pump had not answered its passkey action."""
        _run()
        if self._pairing is not None:
            self._pairing["ok"] = False
            self._finish()
        _run()

    def _finish(self):
        p = self._pairing
        self._pairing = None
        if not p["ok"]:
            self.result = False
            self._enc_update()  # ENC_CHANGE with a failure status still reaches the app
            return
        self.encrypted = 1
        self.authenticated = 0 if p["method"] == "jw" else 1
        self.key_size = 16
        self.result = True
        if _r.sm["bond"] and self.bond:
            _state["bonds_made"] += 1
            ltk = bytes([(i * 37 + _state["bonds_made"]) & 0xFF for i in range(16)])
            value = _sec_value(self, ltk, self.authenticated)
            key = _sec_key(self)
            # The link is already encrypted when the keys are persisted; a refused store leaves it
            # encrypted but not bonded (the conservative reading of NimBLE).
            if _store(_SEC_OUR, key, value) and _store(_SEC_PEER, key, value):
                self.bonded = 1
                self.ltk = ltk
            else:
                self.result = False
        if self.conn is not None:
            self._enc_update()

    def _enc_update(self):
        _irq(_IRQ_ENCRYPTION_UPDATE, (self.conn, self.encrypted, self.authenticated,
                                      self.bonded, self.key_size))  # fmt: skip

    def resume(self):
        """Re-encrypt a new connection with the bond made earlier (the pump looks the LTK up
        through GET_SECRET); returns True if the link is encrypted afterwards."""
        self._need()
        self._resume()
        _run()
        return bool(self.encrypted)

    def _resume(self):
        value = _get_secret(_SEC_OUR, 0, _sec_key(self))
        if self.ltk is None or value is None or value[8:24] != self.ltk:
            self.result = False
            self._enc_update()
            return
        self.encrypted = 1
        self.authenticated = value[24]
        self.bonded = 1
        self.key_size = 16
        self.result = True
        self._enc_update()

    # -- GATT ---------------------------------------------------------------------------------
    def _refused(self, a, write):
        enc = _F_WRITE_ENC if write else _F_READ_ENC
        authen = _F_WRITE_AUTHEN if write else _F_READ_AUTHEN
        if a.is_dsc:
            return 0  # NimBLE ignores security flags on descriptors
        if a.flags & authen and not (self.encrypted and self.authenticated):
            return _ATT_INSUFFICIENT_AUTHEN
        if a.flags & enc and not self.encrypted:
            return _ATT_INSUFFICIENT_ENC
        return 0

    def _cccd_of(self, h):
        for vh, a in _r.attrs.items():
            if a.cccd == h:
                return vh, a
        return None, None

    def write(self, handle, data, response=True):
        """An ATT write (long write when response and longer than MTU - 3). Returns 0 or the ATT
        error; a write without response returns what the stack did, the central sees nothing."""
        self._need()
        data = bytes(data)
        vh, ca = self._cccd_of(handle)
        if ca is not None:
            return self._write_cccd(vh, ca, data)
        a = _r.attrs.get(handle)
        if a is None:
            return _ATT_INVALID_HANDLE
        if not response and len(data) > self.mtu - 3:
            raise AssertionError("fake bluetooth: a write without response must fit MTU - 3")
        if len(data) > _MAX_ATTR_LEN:
            return _ATT_INVALID_LENGTH
        need = FLAG_WRITE if response else FLAG_WRITE_NO_RESPONSE
        if a.is_dsc:
            need = FLAG_WRITE | FLAG_WRITE_NO_RESPONSE
        if not a.flags & need:
            return _ATT_WRITE_NOT_PERMITTED
        err = self._refused(a, True)
        if err:
            return err  # answered by the stack: the application hears nothing
        if a.append:
            a.data = (a.data + data)[: a.alloc]
        else:
            a.data = data[: a.alloc]  # silently truncated, success all the same
        _irq(_IRQ_GATTS_WRITE, (self.conn, handle))
        _run()
        return 0

    def _write_cccd(self, vh, a, data):
        bits = (data[0] if data else 0) & 3
        if len(data) != 2:
            return _ATT_INVALID_LENGTH
        if bits & 1 and not a.flags & FLAG_NOTIFY or bits & 2 and not a.flags & FLAG_INDICATE:
            return _ATT_REQ_NOT_SUPPORTED
        self._cccd[vh] = bits  # NimBLE raises no event the MicroPython app can see
        return 0

    def subscribe(self, value_handle, notify=True, indicate=False):
        a = _r.attrs.get(value_handle)
        if a is None or a.cccd is None:
            raise AssertionError("fake bluetooth: handle %d has no CCCD" % value_handle)
        bits = (1 if notify else 0) | (2 if indicate else 0)
        return self.write(a.cccd, bytes([bits, 0]))

    def read(self, handle):
        """An ATT read (long read for values over MTU - 1): (0, value) or (ATT error, None)."""
        self._need()
        vh, ca = self._cccd_of(handle)
        if ca is not None:
            return 0, bytes([self._cccd.get(vh, 0), 0])
        a = _r.attrs.get(handle)
        if a is None:
            return _ATT_INVALID_HANDLE, None
        if not a.flags & FLAG_READ:
            return _ATT_READ_NOT_PERMITTED, None
        err = self._refused(a, False)
        if err:
            return err, None
        rc = _irq(_IRQ_GATTS_READ_REQUEST, (self.conn, handle))
        _run()
        rc = rc if isinstance(rc, int) else 0
        if rc:
            return rc & 0xFF, None
        return 0, bytes(a.data)

    def _receive(self, h, payload, indication):
        limit = self.mtu - 3
        if len(payload) > limit:
            self.truncated += 1  # NimBLE cuts the PDU to the MTU without telling anyone
            payload = payload[:limit]
        if not self._cccd.get(h, 0) & (2 if indication else 1):
            self.unsubscribed += 1
        (self.indications if indication else self.notifications).setdefault(h, []).append(payload)
        if indication:
            self._inflight = h
            if self.ack_mode != "hold":
                status = 0 if self.ack_mode == "auto" else self.ack_mode
                _later(self._acked, self.conn, status)

    def _updated(self, h, a):
        bits = self._cccd.get(h, 0)
        if bits & 1 and a.flags & FLAG_NOTIFY:
            self._receive(h, a.data, False)
        elif bits & 2 and a.flags & FLAG_INDICATE:
            if self._inflight is None:
                self._receive(h, a.data, True)
            else:
                self._queued.append(h)  # NimBLE sends it once the pending one is confirmed

    def _acked(self, conn, status):
        if self.conn != conn or self._inflight is None:
            return
        h = self._inflight
        self._inflight = None
        _irq(_IRQ_GATTS_INDICATE_DONE, (conn, h, status))
        if self._queued and self.conn == conn:
            q = self._queued.pop(0)
            self._receive(q, _r.attrs[q].data, True)

    def ack(self, status=0):
        """Confirm (status 0) or fail the indication in flight that ack_mode "hold" kept."""
        _run()
        if self._inflight is None:
            raise AssertionError("fake bluetooth: no indication in flight")
        self._acked(self.conn, status)
        _run()

    def time_out(self):
        """The held indication was never confirmed: after ATT's 30 s NimBLE reports a timeout
        and ends the connection."""
        _run()
        if self._inflight is None:
            raise AssertionError("fake bluetooth: no indication in flight")
        h = self.conn
        self._acked(h, _STATUS_ETIMEOUT)
        self._end()
        _run()
