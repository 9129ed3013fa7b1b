# The fake `bluetooth` module's contract under the real MicroPython interpreter (the module the
# firmware's radio code runs on there): handles, buffers, security, pairing, indications, views.

import sys

sys.path.insert(0, __file__.rsplit("/", 2)[0] + "/fakes")  # before bluetooth is imported

import errno  # noqa: E402

import bluetooth  # noqa: E402

_NUS = "6E400001-B5A3-F393-E0A9-E50E24DCCA9E"
_SECURE_W = bluetooth.FLAG_WRITE | 0x1000 | 0x2000  # WRITE_ENCRYPTED | WRITE_AUTHENTICATED
_SECURE_R = bluetooth.FLAG_READ | 0x0200 | 0x0400


class App:
    """A well-behaved application: copies what it needs out of the event data."""

    def __init__(self, ble):
        self.ble = ble
        self.events = []
        self.secrets = {}
        self.accept_store = True
        self.read_rc = 0
        self.kept = None
        ble.irq(self.irq)

    def irq(self, event, data):
        if event in (1, 2):
            self.events.append((event, data[0], data[1], bytes(data[2])))
        elif event == 29:
            sec_type, index, key = data
            if key is None:
                found = [v for (t, _), v in self.secrets.items() if t == sec_type]
                return found[index] if index < len(found) else None
            return self.secrets.get((sec_type, bytes(key)))
        elif event == 30:
            sec_type, key, value = data
            k = (sec_type, bytes(key))
            self.events.append((30, sec_type))
            if value is None:
                return self.secrets.pop(k, None) is not None
            if not self.accept_store:
                return False
            self.secrets[k] = bytes(value)
            return True
        elif event == 4:
            self.events.append((4,) + tuple(data))
            return self.read_rc
        else:
            self.events.append((event,) + tuple(data))
        return None

    def of(self, event):
        return [e for e in self.events if e[0] == event]


def setup(services=None):
    bluetooth._reset()
    ble = bluetooth.BLE()
    app = App(ble)
    ble.active(True)
    ble.config(io=1, mitm=True, le_secure=True, bond=True)
    svc = services or (
        (
            bluetooth.UUID(_NUS),
            (
                (bluetooth.UUID(0x2A19), bluetooth.FLAG_READ | bluetooth.FLAG_NOTIFY),
                (
                    bluetooth.UUID(0x2A20),
                    bluetooth.FLAG_WRITE | bluetooth.FLAG_INDICATE,
                    ((bluetooth.UUID(0x2901), bluetooth.FLAG_READ),),
                ),
                (bluetooth.UUID(0x2A21), _SECURE_W),
                (bluetooth.UUID(0x2A22), _SECURE_R),
            ),
        ),
    )
    handles = ble.gatts_register_services(svc)
    ble.gap_advertise(100_000, b"\x02\x01\x06")
    return ble, app, handles


def raises(exc, fn, *args, **kw):
    try:
        fn(*args, **kw)
    except exc as e:
        return e
    raise AssertionError("%s not raised by %r" % (exc.__name__, fn))


def poke(view):
    view[0] = 1


def t_uuid():
    U = bluetooth.UUID
    assert repr(U(0x2A19)) == "UUID(0x2a19)"
    assert repr(U(_NUS)) == "UUID('6e400001-b5a3-f393-e0a9-e50e24dcca9e')"
    assert U(_NUS) == U(_NUS.lower()) and U(0x180F) == U(b"\x0f\x18")
    assert U(0x180F) != U(0x180A) and U(0x180F) != 0x180F
    assert repr(U(b"\x78\x56\x34\x12")) == "UUID(0x12345678)"
    assert hash(U(0x2A19)) == hash(U(b"\x19\x2a"))
    raises(ValueError, U, 0x10000)
    raises(ValueError, U, "6E400001-B5A3-F393-E0A9-E50E24DCCA9")
    raises(ValueError, U, "6E400001-B5A3-F393-E0A9-E50E24DCCA9EZ")
    raises(TypeError, U, value=1)


def t_handles_in_definition_order():
    ble, app, handles = setup()
    (h,) = handles
    assert len(h) == 5, h  # 4 values + 1 user descriptor; CCCDs are not returned
    batt, cp, cp_desc, sw, sr = h
    assert batt < cp < cp_desc < sw < sr
    assert cp_desc > cp + 1  # the CP's CCCD sits between its value and the user descriptor
    assert bluetooth._handle_of(bluetooth.UUID(0x2901)) == cp_desc
    assert ble.gatts_read(batt) == b""


def t_register_rules():
    bluetooth._reset()
    ble = bluetooth.BLE()
    assert ble is bluetooth.BLE()
    e = raises(OSError, ble.gatts_register_services, ())
    assert e.args[0] == errno.ENODEV
    ble.active(True)
    raises(ValueError, ble.gatts_register_services, ((0x180F, ()),))
    raises(ValueError, ble.gatts_register_services, ((bluetooth.UUID(1), ((2, 2),)),))
    ble.gap_advertise(100_000)
    e = raises(OSError, ble.gatts_register_services, ())
    assert e.args[0] == 16  # MP_EBUSY: MicroPython's errno module has no EBUSY name
    ble.gap_advertise(None)
    assert ble.gatts_register_services(()) == ()


def t_config_asymmetries():
    bluetooth._reset()
    ble = bluetooth.BLE()
    assert ble.config("gap_name") == b"MPY ESP32"
    assert raises(OSError, ble.config, "mtu").args[0] == errno.ENODEV
    assert raises(OSError, ble.config, "mac").args[0] == errno.ENODEV
    assert raises(OSError, ble.config, mtu=100).args[0] == errno.ENODEV
    ble.active(True)
    assert ble.config("mtu") == 256
    ble.config(mtu=247)
    assert ble.config("mtu") == 247
    assert raises(OSError, ble.config, mtu=22).args[0] == errno.EINVAL
    for key in ("bond", "mitm", "io", "le_secure", "addr_mode", "rxbuf", "nonsense"):
        e = raises(ValueError, ble.config, key)
        assert e.args[0] == "unknown config param", e.args
    raises(ValueError, ble.config, rxbuf=512)
    assert raises(TypeError, ble.config).args[0] == "must query one param"
    assert raises(TypeError, ble.config, "mtu", mtu=30).args[0] == "can't specify pos and kw args"
    ble.config(gap_name="pump")
    assert ble.config("gap_name") == b"pump"
    raises(TypeError, ble.gatts_write, 1, b"x", send_update=True)  # C functions: no keywords


def t_truncation_and_append():
    ble, app, (h,) = setup()
    c = bluetooth._Central()
    c.connect()
    cp = h[1]
    assert c.write(cp, bytes(range(30))) == 0  # the default 20-byte buffer cuts it silently
    assert ble.gatts_read(cp) == bytes(range(20))
    ble.gatts_set_buffer(cp, 64, True)
    c.write(cp, b"ab")
    c.write(cp, b"cd")
    assert ble.gatts_read(cp) == b"abcd"
    assert ble.gatts_read(cp) == b""  # append mode: reading clears
    assert ble.gatts_write(h[0], bytes(40)) == 40  # a local write grows the buffer
    assert c.read(h[0]) == (0, bytes(40))


def t_security_refusal_without_irq():
    ble, app, (h,) = setup()
    c = bluetooth._Central()
    c.connect()
    n = len(app.events)
    assert c.write(h[3], b"x") == 0x05
    assert c.read(h[4]) == (0x05, None)
    assert len(app.events) == n  # the stack answered; the application heard nothing
    assert c.write(h[0], b"x") == 0x03 and c.read(h[1]) == (0x02, None)


def t_pairing_numeric_comparison():
    ble, app, (h,) = setup()
    c = bluetooth._Central()
    conn = c.connect()
    assert conn == 0  # handles start at 0: `if conn:` is a bug the fake exposes
    assert c.pair() is None  # waiting for the pump's answer
    (act,) = app.of(31)
    assert act[1:3] == (conn, 4) and 0 <= act[3] <= 999999
    ble.gap_passkey(conn, 4, 1)
    bluetooth._run()
    assert c.result is True
    assert app.of(28)[-1] == (28, conn, 1, 1, 1, 16)
    assert sorted(t for (t, _) in app.secrets) == [1, 2, 10]
    assert c.write(h[3], b"ok") == 0 and app.of(3)[-1] == (3, conn, h[3])


def t_pairing_refused_by_pump_and_just_works():
    ble, app, _ = setup()
    c = bluetooth._Central()
    conn = c.connect()
    c.pair()
    ble.gap_passkey(conn, 4, 0)
    bluetooth._run()
    assert c.result is False and app.of(28)[-1] == (28, conn, 0, 0, 0, 0)
    assert [t for (t, _) in app.secrets] == [10]
    jw = bluetooth._Central(addr=b"\xc0\x00\x00\x00\x00\x02", io=3)
    c.disconnect()
    ble.gap_advertise(100_000)
    conn = jw.connect()
    assert jw.pair() is True  # no passkey action for Just Works
    assert app.of(28)[-1] == (28, conn, 1, 0, 1, 16)  # authenticated = 0


def t_secret_refused():
    ble, app, (h,) = setup()
    app.accept_store = False
    c = bluetooth._Central()
    conn = c.connect()
    c.pair()
    ble.gap_passkey(conn, 4, 1)
    bluetooth._run()
    assert c.result is False
    assert app.of(28)[-1] == (28, conn, 1, 1, 0, 16)  # encrypted yet not bonded
    assert [t for (t, _) in app.secrets] == [10]


def t_indications():
    ble, app, (h,) = setup()
    c = bluetooth._Central()
    conn = c.connect()
    cp = h[1]
    c.ack_mode = "hold"
    ble.gatts_indicate(conn, cp, b"r1")
    assert raises(OSError, ble.gatts_indicate, conn, cp, b"r2").args[0] == errno.EALREADY
    bluetooth._run()
    assert app.of(20) == []
    c.ack()
    assert app.of(20) == [(20, conn, cp, 0)]
    ble.gatts_indicate(conn, cp, b"r3")
    c.time_out()
    assert app.of(20)[-1] == (20, conn, cp, 13) and app.of(2) and not c.connected
    assert c.indications[cp] == [b"r1", b"r3"]


def t_notify_enomem_and_mtu():
    ble, app, (h,) = setup()
    c = bluetooth._Central()
    conn = c.connect()
    bluetooth._fail_next("notify", 2)
    ble.gatts_notify(conn, h[0], b"a")
    assert raises(OSError, ble.gatts_notify, conn, h[0], b"b").args[0] == errno.ENOMEM
    ble.gatts_notify(conn, h[0], bytes(30))
    assert c.notifications[h[0]] == [b"a", bytes(20)] and c.truncated == 1
    assert c.exchange_mtu(247) == 247 and app.of(21) == [(21, conn, 247)]
    ble.gatts_notify(conn, h[0], bytes(244))
    assert c.notifications[h[0]][-1] == bytes(244)
    assert raises(OSError, ble.gatts_notify, 3, h[0], b"x").args[0] == errno.ENOTCONN


def t_stale_views_are_poisoned():
    ble, app, _ = setup()
    kept = []
    ble.irq(lambda e, d: kept.append(d[2]) if e == 1 else None)
    c = bluetooth._Central(addr=b"\xc0\x01\x02\x03\x04\x05")
    c.connect()
    assert bytes(kept[0]) == b"\xee" * 6  # what a kept view shows once the handler returned
    assert bytes(kept[0][1:3]) == b"\xee\xee"
    raises(TypeError, poke, kept[0])  # and it was read-only all along


def t_handler_exception_is_swallowed_and_disables_irq():
    ble, app, _ = setup()

    def bad(event, data):
        raise RuntimeError("boom")

    ble.irq(bad)
    c = bluetooth._Central()
    c.connect()  # does not raise here: printed and swallowed, as on the board
    assert bluetooth._state["irq_errors"] == [(1, "RuntimeError: boom")]
    c.disconnect()
    assert len(bluetooth._state["irq_errors"]) == 1  # the port switched the handler off


def main():
    names = sorted(n for n in globals() if n.startswith("t_"))
    for n in names:
        globals()[n]()
    print("%d fake-bluetooth checks" % len(names))
    print("OK")


main()
