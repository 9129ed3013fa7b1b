# The contract of host_tests/fakes/bluetooth.py, the strict stand-in for MicroPython's `bluetooth`
# module: the real module's names and call shapes, GATT rules, security, pairing, views, faults.

import importlib.util
import os
import subprocess
import sys
import uuid as pyuuid
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parent.parent
FAKES = ROOT / "host_tests" / "fakes"
STUBS = Path(sys.prefix) / "stubs"

_spec = importlib.util.spec_from_file_location("_fake_bluetooth", FAKES / "bluetooth.py")
bt = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bt)  # a private name: no other test sees a `bluetooth` module

_W_ENC, _W_AUTH, _R_ENC, _R_AUTH = 0x1000, 0x2000, 0x0200, 0x0400
NUS = "6E400001-B5A3-F393-E0A9-E50E24DCCA9E"


class App:
    """A well-behaved application: copies what it needs out of each event."""

    def __init__(self, ble, store=None):
        self.ble = ble
        self.events = []
        self.secrets = {} if store is None else store
        self.accept_store = True
        self.enumerate = True  # answer GET_SECRET(type, index, None)
        self.read_rc = 0
        self.answer = None  # (action, value) to give gap_passkey from inside the handler
        ble.irq(self.irq)

    def irq(self, event, data):
        if event in (1, 2):
            self.events.append((event, data[0], data[1], bytes(data[2])))
            return None
        if event == 29:
            sec_type, index, key = data
            self.events.append((29, sec_type, index, None if key is None else bytes(key)))
            if key is None:
                if not self.enumerate:
                    return None
                found = [v for (t, _), v in self.secrets.items() if t == sec_type]
                return found[index] if index < len(found) else None
            return self.secrets.get((sec_type, bytes(key)))
        if event == 30:
            sec_type, key, value = data
            k = (sec_type, bytes(key))
            self.events.append((30, sec_type, bytes(key), None if value is None else len(value)))
            if value is None:
                return self.secrets.pop(k, None) is not None
            if not self.accept_store:
                return False
            self.secrets[k] = bytes(value)
            return True
        self.events.append((event, *data))
        if event == 4:
            return self.read_rc
        if event == 31 and self.answer is not None:
            self.ble.gap_passkey(data[0], data[1], self.answer)
        return None

    def of(self, event):
        return [e for e in self.events if e[0] == event]

    def bonds(self):
        return sorted({k for (t, k) in self.secrets if t in (1, 2)})


SERVICES = (
    (
        bt.UUID(NUS),
        (
            (bt.UUID(0x2A19), bt.FLAG_READ | bt.FLAG_NOTIFY),
            (
                bt.UUID(0x2A20),
                bt.FLAG_WRITE | bt.FLAG_INDICATE,
                ((bt.UUID(0x2901), bt.FLAG_READ | bt.FLAG_WRITE | _W_AUTH),),
            ),
            (bt.UUID(0x2A21), bt.FLAG_WRITE | _W_ENC | _W_AUTH),
            (bt.UUID(0x2A22), bt.FLAG_READ | _R_ENC | _R_AUTH),
            (bt.UUID(0x2A23), bt.FLAG_READ | bt.FLAG_WRITE | _R_ENC | _W_ENC),
            (bt.UUID(0x2A24), bt.FLAG_WRITE_NO_RESPONSE),
        ),
    ),
)


@pytest.fixture
def radio():
    """An active radio with SERVICES registered and connectable advertising; yields
    (ble, app, handles)."""
    bt._reset()
    ble = bt.BLE()
    app = App(ble)
    ble.active(True)
    ble.config(io=1, mitm=True, le_secure=True, bond=True)
    (handles,) = ble.gatts_register_services(SERVICES)
    ble.gap_advertise(100_000, b"\x02\x01\x06")
    yield ble, app, handles
    bt._check()


def _advertise(ble):
    ble.gap_advertise(100_000)


# --- names, call shapes, stubs ------------------------------------------------------------------

# What modbluetooth.c exposes on the ESP32 port (module globals and BLE.locals_dict), peripheral
# side; the central role (gap_scan, gap_connect, gattc_*) is deliberately absent from the fake.
PUBLIC = {
    "BLE": None,
    "UUID": None,
    "FLAG_READ": 0x02,
    "FLAG_WRITE_NO_RESPONSE": 0x04,
    "FLAG_WRITE": 0x08,
    "FLAG_NOTIFY": 0x10,
    "FLAG_INDICATE": 0x20,
}
# name -> (min, max) positional arguments after self, from MP_DEFINE_CONST_FUN_OBJ_* in the C.
CALL_SHAPES = {
    "active": (0, 1),
    "gap_disconnect": (1, 1),
    "gap_pair": (1, 1),
    "gap_passkey": (3, 3),
    "gatts_register_services": (1, 1),
    "gatts_read": (1, 1),
    "gatts_write": (2, 3),
    "gatts_notify": (2, 3),
    "gatts_indicate": (2, 3),
    "gatts_set_buffer": (2, 3),
}
KEYWORD_METHODS = {"config", "irq", "gap_advertise"}  # config/gap_advertise take keywords


def test_public_names_are_the_real_modules():
    public = {n for n in dir(bt) if not n.startswith("_")} - {"errno", "sys", "uctypes"}
    assert public == set(PUBLIC)
    for name, value in PUBLIC.items():
        if value is not None:
            assert getattr(bt, name) == value, name
    methods = {n for n in dir(bt.BLE) if not n.startswith("_")}
    assert methods == set(CALL_SHAPES) | KEYWORD_METHODS
    assert bt.BLE() is bt.BLE()


@pytest.mark.parametrize("name", sorted(CALL_SHAPES))
def test_call_shapes_match_the_c_functions(radio, name):
    ble, _, _ = radio
    lo, hi = CALL_SHAPES[name]
    method = getattr(ble, name)
    with pytest.raises(TypeError):
        method(*([1] * (hi + 1)))
    if lo:
        with pytest.raises(TypeError):
            method(*([1] * (lo - 1)))
    # C functions made with MP_DEFINE_CONST_FUN_OBJ_* take no keyword arguments at all: code
    # calling gatts_write(h, data, send_update=True) fails on the board.
    with pytest.raises(TypeError, match="keyword"):
        method(*([1] * lo), x=1)


# The stubs are generated from docstrings and are wrong where the C disagrees; each allowance
# names what the C source says instead.
STUB_ALLOWED = {
    # modbluetooth.c gap_advertise: interval_us defaults to 500000.
    'bluetooth.BLE.gap_advertise is inconsistent, runtime parameter "interval_us" has a default '
    "value but stub parameter does not",
    # The real UUID supports the buffer protocol and ordering (bluetooth_uuid_binary_op).
    "bluetooth.UUID.__bytes__ is not present in stub",
    "bluetooth.UUID.__lt__ is not present in stub",
}
CENTRAL_ROLE = {"gap_connect", "gap_scan", "gattc_discover_characteristics",
                "gattc_discover_descriptors", "gattc_discover_services", "gattc_exchange_mtu",
                "gattc_read", "gattc_write"}  # fmt: skip


@pytest.mark.parametrize("chip", ["esp32", "esp32s3", "esp32c3"])
def test_fake_matches_the_stubs(chip, tmp_path):
    stubs = STUBS / chip
    if not (stubs / "bluetooth.pyi").is_file():
        pytest.fail(f"the {chip} stubs are not installed in {stubs}; run `make venv`")
    cfg = tmp_path / "mypy.ini"
    # The stub's duplicated config/active overloads are an error in the stub file itself.
    cfg.write_text(
        "[mypy]\ncache_dir = {}\ndisable_error_code = overload-cannot-match\n"
        "[mypy-machine,vfs,_mpy_shed.*]\nignore_errors = True\n".format(tmp_path / "cache")
    )
    env = dict(os.environ, PYTHONPATH=str(FAKES), MYPYPATH=str(stubs))
    proc = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "bluetooth", "--concise",
         "--ignore-positional-only", "--custom-typeshed-dir", str(stubs),
         "--mypy-config-file", str(cfg)],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    assert lines, proc.stderr
    absent = {
        ln.split()[0].rsplit(".", 1)[1] for ln in lines if ln.endswith("not present at runtime")
    }
    assert absent == CENTRAL_ROLE, "\n".join(lines)
    wrong = [ln for ln in lines if not ln.endswith("not present at runtime")]
    assert set(wrong) == STUB_ALLOWED, "\n".join(wrong + [proc.stderr])


# --- UUID ---------------------------------------------------------------------------------------


@given(st.integers(0, 0xFFFF))
def test_uuid16_repr_and_value_equality(n):
    u = bt.UUID(n)
    assert repr(u) == "UUID(0x%04x)" % n
    assert u == bt.UUID(bytes([n & 0xFF, n >> 8])) and hash(u) == hash(bt.UUID(n))
    assert bytes(u) == n.to_bytes(2, "little")


@given(st.uuids())
def test_uuid128_from_string_and_buffer(u):
    s = str(u)
    a = bt.UUID(s.upper())
    assert repr(a) == "UUID('%s')" % s
    assert a == bt.UUID(u.bytes[::-1]) == bt.UUID(s.replace("-", ""))
    assert a != bt.UUID(0x180F)  # different sizes never compare equal


def test_uuid_errors_are_the_real_ones():
    with pytest.raises(ValueError, match="invalid UUID"):
        bt.UUID(0x10000)
    with pytest.raises(ValueError, match="too short"):
        bt.UUID(str(pyuuid.UUID(int=1))[:-1])
    with pytest.raises(ValueError, match="too long"):
        bt.UUID(str(pyuuid.UUID(int=1)) + "0")
    with pytest.raises(ValueError, match="invalid char"):
        bt.UUID("g" * 32)
    with pytest.raises(TypeError):
        bt.UUID(1.5)
    # A 4-character string is a 4-byte buffer to the C code: a 32-bit UUID, not hex digits.
    assert repr(bt.UUID("1234")) == "UUID(0x34333231)"


# --- services and values ------------------------------------------------------------------------


@given(
    st.lists(
        st.lists(st.tuples(st.sampled_from([0x02, 0x08, 0x12, 0x28, 0x3A]), st.integers(0, 3)),
                 min_size=1, max_size=6),
        min_size=1, max_size=8,
    )
)  # fmt: skip
def test_handles_flatten_in_definition_order(shape):
    bt._reset()
    ble = bt.BLE()
    ble.active(True)
    services = tuple(
        (bt.UUID(0xA000 + i), tuple(
            (bt.UUID(0xB000 + j), flags, tuple((bt.UUID(0x2901), 0x02) for _ in range(nd)))
            for j, (flags, nd) in enumerate(chars)
        ))
        for i, chars in enumerate(shape)
    )  # fmt: skip
    result = ble.gatts_register_services(services)
    flat = [h for svc in result for h in svc]
    assert flat == sorted(flat) and len(set(flat)) == len(flat)
    for svc, chars in zip(result, shape, strict=True):
        assert len(svc) == sum(1 + nd for _, nd in chars)
        i = 0
        for flags, nd in chars:
            value, descs = svc[i], svc[i + 1 : i + 1 + nd]
            cccd = 1 if flags & 0x30 else 0  # present, never returned
            assert list(descs) == list(range(value + 1 + cccd, value + 1 + cccd + nd))
            assert ble.gatts_read(value) == b""
            i += 1 + nd


def test_register_needs_active_radio_and_quiet_link(radio):
    ble, _, _ = radio
    with pytest.raises(OSError) as e:
        ble.gatts_register_services(SERVICES)
    assert e.value.args[0] == 16  # EBUSY: advertising
    ble.gap_advertise(None)
    c = bt._Central()
    _advertise(ble)
    c.connect()
    with pytest.raises(OSError):
        ble.gatts_register_services(SERVICES)  # connected
    c.disconnect()
    ble.active(False)
    with pytest.raises(OSError) as e:
        ble.gatts_register_services(SERVICES)
    assert e.value.args[0] == 19  # ENODEV
    ble.active(True)
    too_many = tuple((bt.UUID(i + 1), ()) for i in range(9))
    with pytest.raises(OSError) as e:
        ble.gatts_register_services(too_many)
    assert e.value.args[0] == 7  # E2BIG: eight services at most
    for bad in [((0x180F, ()),), ((bt.UUID(1), ((bt.UUID(2),),)),), ((bt.UUID(1),),)]:
        with pytest.raises(ValueError):
            ble.gatts_register_services(bad)


def _one_write_char():
    """A fresh active radio with one writable characteristic, and a central connected to it:
    (ble, central, value handle)."""
    bt._reset()
    ble = bt.BLE()
    ble.active(True)
    ((h,),) = ble.gatts_register_services(((bt.UUID(1), ((bt.UUID(2), bt.FLAG_WRITE),)),))
    ble.gap_advertise(100_000)
    c = bt._Central()
    c.connect()
    return ble, c, h


@given(st.integers(1, 64), st.binary(max_size=100))
def test_remote_writes_are_silently_truncated(size, data):
    ble, c, h = _one_write_char()
    ble.gatts_set_buffer(h, size)
    assert c.write(h, data) == 0
    assert ble.gatts_read(h) == data[:size]


@given(st.integers(1, 64), st.lists(st.binary(max_size=20), max_size=8))
def test_append_mode_concatenates_until_read(size, writes):
    ble, c, h = _one_write_char()
    ble.gatts_set_buffer(h, size, True)
    for w in writes:
        assert c.write(h, w) == 0
    assert ble.gatts_read(h) == b"".join(writes)[:size]
    assert ble.gatts_read(h) == b""


def test_local_values(radio):
    ble, app, h = radio
    assert ble.gatts_write(h[0], bytes(300)) == 300  # a local write grows the buffer
    assert ble.gatts_read(h[0]) == bytes(300)
    ble.gatts_set_buffer(h[0], 8)
    assert ble.gatts_read(h[0]) == b""  # resizing empties the value
    with pytest.raises(OSError) as e:
        ble.gatts_write(999, b"x")
    assert e.value.args[0] == 22
    assert ble.gatts_read(999) == b""  # the C ignores the lookup error
    ble.active(False)
    assert ble.gatts_read(h[0]) == b""
    with pytest.raises(OSError):
        ble.gatts_write(h[0], b"x")


def test_read_request_return_code_is_the_att_error(radio):
    ble, app, h = radio
    c = bt._Central()
    conn = c.connect()
    ble.gatts_write(h[0], b"\x55")
    assert c.read(h[0]) == (0, b"\x55")
    app.read_rc = 0x0E
    assert c.read(h[0]) == (0x0E, None)
    assert app.of(4) == [(4, conn, h[0]), (4, conn, h[0])]


def test_write_permissions_and_no_response(radio):
    ble, app, h = radio
    c = bt._Central()
    conn = c.connect()
    batt, cp, desc, sw, sr, rw, wnr = h
    assert c.write(batt, b"x") == 0x03
    assert c.write(wnr, b"x", response=True) == 0x03
    assert c.write(wnr, b"x", response=False) == 0
    assert c.write(cp, b"x", response=False) == 0x03
    assert c.write(cp, bytes(513)) == 0x0D
    assert c.write(4242, b"x") == 0x01
    with pytest.raises(AssertionError):
        c.write(wnr, bytes(21), response=False)  # a write command must fit MTU - 3
    assert app.of(3) == [(3, conn, wnr)]


# --- security -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "link, write_auth, write_enc, read_auth, read_enc",
    [
        ((0, 0), 0x05, 0x0F, 0x05, 0x0F),
        ((1, 0), 0x05, 0, 0x05, 0),  # Just Works: encrypted, not authenticated
        ((1, 1), 0, 0, 0, 0),
    ],
)
def test_security_flags_refuse_without_irq(
    radio, link, write_auth, write_enc, read_auth, read_enc
):
    ble, app, h = radio
    batt, cp, desc, sw, sr, rw, wnr = h
    c = bt._Central()
    c.connect()
    c.encrypted, c.authenticated = link  # the link state the stack keeps per connection
    before = len(app.events)
    assert c.write(sw, b"x") == write_auth
    assert c.write(rw, b"x") == write_enc
    assert c.read(sr)[0] == read_auth
    assert c.read(rw)[0] == read_enc
    expected = [write_auth, write_enc, read_auth, read_enc].count(0)
    assert len(app.events) - before == expected  # refused accesses never reach the app
    assert c.write(desc, b"d") == 0  # NimBLE ignores security flags on descriptors


def _pair(ble, app, pump_io, central_io, mitm=True, answer=1, le_secure=True):
    ble.config(io=pump_io, mitm=mitm, le_secure=le_secure)
    c = bt._Central(io=central_io, mitm=mitm, le_secure=le_secure)
    conn = c.connect()
    result = c.pair()
    acts = app.of(31)
    if result is None:
        (_, _, action, number) = acts[-1]
        if action == 4:
            value = answer
        elif action == 2:  # the pump types what the central displays
            value = c.displayed
        else:
            value = number or 246810
        ble.gap_passkey(conn, action, value)
        bt._run()
    return c, conn, acts


@pytest.mark.parametrize(
    "pump_io, central_io, mitm, action, authenticated",
    [
        (1, 1, True, 4, 1),  # DisplayYesNo both sides: numeric comparison
        (1, 4, True, 4, 1),
        (4, 4, True, 4, 1),
        (1, 3, True, None, 0),  # the central has no IO: Just Works even with mitm
        (3, 1, True, None, 0),
        (1, 1, False, None, 0),  # nobody asks for MITM: Just Works
        (0, 2, True, 3, 1),  # the pump displays, the central types
        (2, 0, True, 2, 1),  # the pump types what the central displays
    ],
)
def test_pairing_method_and_outcome(radio, pump_io, central_io, mitm, action, authenticated):
    ble, app, _ = radio
    c, conn, acts = _pair(ble, app, pump_io, central_io, mitm)
    assert [a[2] for a in acts] == ([] if action is None else [action])
    assert c.result is True
    assert app.of(28)[-1] == (28, conn, 1, authenticated, 1, 16)
    assert len(app.bonds()) == 1 and app.of(30)[-2:] == [
        (30, 1, bt._sec_key(c), bt._SEC_VALUE_LEN),
        (30, 2, bt._sec_key(c), bt._SEC_VALUE_LEN),
    ]


def test_numeric_comparison_rejected_by_either_side(radio):
    ble, app, h = radio
    c, conn, _ = _pair(ble, app, 1, 1, answer=0)
    assert c.result is False and app.of(28)[-1] == (28, conn, 0, 0, 0, 0)
    assert app.bonds() == [] and c.write(h[3], b"x") == 0x05
    c.accept = False
    c.pair()
    ble.gap_passkey(conn, 4, 1)
    bt._run()
    assert c.result is False and app.bonds() == []


def test_wrong_passkey_typed_fails(radio):
    ble, app, _ = radio
    ble.config(io=0)
    c = bt._Central(io=2)
    conn = c.connect()
    c.passkey = 111111
    c.pair()
    ble.gap_passkey(conn, 3, 222222)
    bt._run()
    assert c.result is False and app.of(28)[-1][2] == 0


def test_passkey_answers_are_checked(radio):
    ble, app, _ = radio
    c = bt._Central()
    conn = c.connect()
    with pytest.raises(OSError):
        ble.gap_passkey(conn, 4, 1)  # nothing asked
    c.pair()
    with pytest.raises(OSError):
        ble.gap_passkey(conn, 3, 1)  # not the action asked
    with pytest.raises(OSError):
        ble.gap_passkey(conn, 7, 1)
    ble.gap_passkey(conn, 4, 1)
    assert c.result is None  # the stack finishes after the call returns
    bt._run()
    assert c.result is True


def test_answer_from_inside_the_handler_completes_after_it(radio):
    ble, app, _ = radio
    app.answer = 1
    c = bt._Central()
    assert (c.connect(), c.pair()) == (0, True)


def test_pairing_never_answered_times_out(radio):
    ble, app, _ = radio
    c = bt._Central()
    conn = c.connect()
    c.pair()
    c.time_out_pairing()
    assert c.result is False and app.of(28)[-1] == (28, conn, 0, 0, 0, 0)


def test_gap_pair_asks_the_central(radio):
    ble, app, _ = radio
    app.answer = 1
    c = bt._Central()
    conn = c.connect()
    ble.gap_pair(conn)
    assert app.of(31) == []  # the security request is answered later
    bt._run()
    assert c.result is True
    with pytest.raises(OSError):
        ble.gap_pair(3)


def test_refused_store_leaves_the_link_encrypted_but_unbonded(radio):
    ble, app, h = radio
    app.accept_store = False
    app.answer = 1
    c = bt._Central()
    conn = c.connect()
    assert c.pair() is False
    assert app.of(28)[-1] == (28, conn, 1, 1, 0, 16)
    assert app.bonds() == [] and c.ltk is None
    # The stack's own security check sees an encrypted, authenticated link all the same: only the
    # application can tell this link was never bonded.
    assert c.write(h[3], b"x") == 0


def test_refused_store_makes_nimble_evict_the_oldest_bond(radio):
    # MicroPython sets store_status_cb = ble_store_util_status_rr: when SET_SECRET says False the
    # stack enumerates bonds (GET_SECRET with key None), deletes the oldest and tries again. An
    # application that enumerates its bonds and refuses a new one therefore loses them all.
    ble, app, _ = radio
    app.answer = 1
    first = bt._Central(addr=b"\xc0\x00\x00\x00\x00\x01")
    first.connect()
    assert first.pair() is True
    first.disconnect()
    app.accept_store = False
    _advertise(ble)
    second = bt._Central(addr=b"\xc0\x00\x00\x00\x00\x02")
    second.connect()
    assert second.pair() is False
    assert app.bonds() == []  # the first central's bond was evicted
    assert (29, 1, 0, None) in app.events


def test_refused_store_keeps_bonds_when_enumeration_is_withheld(radio):
    ble, app, _ = radio
    app.answer = 1
    first = bt._Central(addr=b"\xc0\x00\x00\x00\x00\x01")
    first.connect()
    first.pair()
    first.disconnect()
    app.accept_store = False
    app.enumerate = False
    _advertise(ble)
    second = bt._Central(addr=b"\xc0\x00\x00\x00\x00\x02")
    second.connect()
    assert second.pair() is False
    assert app.bonds() == [bt._sec_key(first)]


def test_delete_that_never_fails_would_hang_nimble(radio):
    ble, app, _ = radio
    app.answer = 1
    c = bt._Central()
    c.connect()
    c.pair()
    ble.irq(lambda e, d: True if e == 30 else app.irq(e, d))  # "deleted" forever
    c.disconnect()
    _advertise(ble)
    c.connect()
    with pytest.raises(AssertionError, match="loop forever"):
        c.pair()  # a repeat pairing deletes the old bond first
    bt._state["violations"].clear()


def test_repeat_pairing_deletes_the_old_bond_first(radio):
    ble, app, _ = radio
    app.answer = 1
    c = bt._Central()
    c.connect()
    c.pair()
    old = dict(app.secrets)
    c.disconnect()
    _advertise(ble)
    c.connect()
    n = len(app.events)
    assert c.pair() is True
    key = bt._sec_key(c)
    assert app.events[n : n + 3] == [(29, 2, 0, key), (30, 1, key, None), (30, 1, key, None)]
    assert app.secrets != old and len(app.bonds()) == 1


def test_resume_restores_encryption_from_the_store(radio):
    ble, app, h = radio
    app.answer = 1
    c = bt._Central()
    c.connect()
    c.pair()
    c.disconnect()
    _advertise(ble)
    conn = c.connect()
    assert c.write(h[3], b"x") == 0x05
    assert c.resume() is True
    assert app.of(28)[-1] == (28, conn, 1, 1, 1, 16)
    assert c.write(h[3], b"x") == 0
    app.secrets.clear()  # the pump forgot the bond
    c.disconnect()
    _advertise(ble)
    conn = c.connect()
    assert c.resume() is False and app.of(28)[-1] == (28, conn, 0, 0, 0, 0)


def test_activation_loads_or_makes_our_irk():
    bt._reset()
    ble = bt.BLE()
    app = App(ble)
    ble.active(True)
    assert app.events[:2] == [(29, 10, 0, b"irk"), (30, 10, b"irk", 16)]
    ble.active(False)
    app.events.clear()
    ble.active(True)
    assert app.events == [(29, 10, 0, b"irk")]


# --- notifications, indications, MTU -----------------------------------------------------------


def test_indications_one_in_flight_and_done_later(radio):
    ble, app, h = radio
    c = bt._Central()
    conn = c.connect()
    cp = h[1]
    ble.gatts_indicate(conn, cp, b"one")
    with pytest.raises(OSError) as e:
        ble.gatts_indicate(conn, cp, b"two")
    assert e.value.args[0] == 114  # EALREADY
    assert app.of(20) == []  # acknowledged later, never inside the call
    bt._run()
    assert app.of(20) == [(20, conn, cp, 0)]
    c.ack_mode = 0x80
    ble.gatts_indicate(conn, cp)
    bt._run()
    assert app.of(20)[-1] == (20, conn, cp, 0x80)
    c.ack_mode = "hold"
    ble.gatts_indicate(conn, cp, b"three")
    c.disconnect()
    assert app.of(20)[-1] == (20, conn, cp, 7)  # ENOTCONN status, then the disconnect
    assert app.events[-1][0] == 2
    assert c.indications[cp] == [b"one", b"", b"three"]


def test_withheld_indication_times_out_and_drops_the_link(radio):
    ble, app, h = radio
    c = bt._Central()
    conn = c.connect()
    c.ack_mode = "hold"
    ble.gatts_indicate(conn, h[1], b"x")
    bt._run()
    assert app.of(20) == []
    c.time_out()
    assert app.of(20) == [(20, conn, h[1], 13)] and app.of(2) and not c.connected


def test_notify_ignores_subscriptions_but_send_update_does_not(radio):
    ble, app, h = radio
    c = bt._Central()
    conn = c.connect()
    ble.gatts_notify(conn, h[0], b"a")
    assert c.notifications[h[0]] == [b"a"] and c.unsubscribed == 1
    ble.gatts_write(h[0], b"b", True)
    assert c.notifications[h[0]] == [b"a"]  # not subscribed: no update
    assert c.subscribe(h[0]) == 0
    ble.gatts_write(h[0], b"c", True)
    assert c.notifications[h[0]] == [b"a", b"c"]
    assert c.subscribe(h[0], notify=False, indicate=True) == 0x06  # batt cannot indicate
    c.subscribe(h[1], notify=False, indicate=True)
    c.ack_mode = "hold"
    ble.gatts_write(h[1], b"1", True)
    ble.gatts_write(h[1], b"2", True)  # queued behind the one in flight
    assert c.indications[h[1]] == [b"1"]
    c.ack()
    assert c.indications[h[1]] == [b"1", b"2"]


def test_notify_errors_and_enomem_injection(radio):
    ble, app, h = radio
    c = bt._Central()
    conn = c.connect()
    with pytest.raises(OSError) as e:
        ble.gatts_notify(conn + 1, h[0], b"x")
    assert e.value.args[0] == 107
    with pytest.raises(OSError) as e:
        ble.gatts_notify(conn, 999, b"x")
    assert e.value.args[0] == 2
    bt._fail_next("notify", nth=3, count=2)
    sent = []
    for i in range(6):
        try:
            ble.gatts_notify(conn, h[0], bytes([i]))
            sent.append(i)
        except OSError as err:
            assert err.args[0] == 12
    assert sent == [0, 1, 4, 5] and c.notifications[h[0]] == [b"\0", b"\1", b"\4", b"\5"]
    bt._fail_next("indicate", err=110)
    with pytest.raises(OSError):
        ble.gatts_indicate(conn, h[1], b"x")


def test_mtu_exchange_and_payload_limit(radio):
    ble, app, h = radio
    ble.config(mtu=200)
    c = bt._Central(mtu=247)
    conn = c.connect()
    ble.gatts_notify(conn, h[0], bytes(range(30)))
    assert c.notifications[h[0]][-1] == bytes(range(20)) and c.truncated == 1
    assert c.exchange_mtu() == 200 and app.of(21) == [(21, conn, 200)]
    ble.gatts_notify(conn, h[0], bytes(197))
    assert len(c.notifications[h[0]][-1]) == 197 and c.truncated == 1
    with pytest.raises(AssertionError):
        c.exchange_mtu()  # once per connection


# --- config, activity, advertising ---------------------------------------------------------------


def test_config_asymmetries():
    bt._reset()
    ble = bt.BLE()
    for key in ("mtu", "mac"):
        with pytest.raises(OSError) as e:
            ble.config(key)
        assert e.value.args[0] == 19
    for kw in ({"mtu": 100}, {"addr_mode": 1}):
        with pytest.raises(OSError):
            ble.config(**kw)
    ble.config(bond=True, mitm=True, io=1, le_secure=True, gap_name=b"pump")  # fine inactive
    assert ble.config("gap_name") == b"pump"
    ble.active(True)
    assert ble.config("mtu") == 256 and ble.config("mac")[0] == 0
    for key in ("bond", "mitm", "io", "le_secure", "addr_mode", "rxbuf", "x"):
        with pytest.raises(ValueError, match="unknown config param"):
            ble.config(key)
    with pytest.raises(ValueError, match="unknown config param"):
        ble.config(rxbuf=100)
    with pytest.raises(TypeError, match="must query one param"):
        ble.config()
    with pytest.raises(TypeError, match="must query one param"):
        ble.config("mtu", "mac")
    with pytest.raises(TypeError, match="pos and kw"):
        ble.config("mtu", mtu=100)
    for bad in (22, 528):
        with pytest.raises(OSError):
            ble.config(mtu=bad)
    with pytest.raises(OSError):
        ble.config(gap_name=b"x" * 32)
    ble.config(addr_mode=2)
    with pytest.raises(OSError):
        ble.config("mac")  # the C cannot report an RPA
    with pytest.raises(ValueError, match="invalid handler"):
        ble.irq(5)


def test_deactivation_forgets_services_and_drops_links_silently(radio):
    ble, app, h = radio
    c = bt._Central()
    c.connect()
    n = len(app.events)
    assert ble.active(False) is False
    assert not c.connected and len(app.events) == n  # no disconnect event reaches the app
    assert ble.active(True) is True
    assert ble.gatts_read(h[0]) == b"" and bt._advertising() is None
    with pytest.raises(OSError):
        ble.gatts_write(h[0], b"x")  # re-register after re-activation
    ble.gatts_register_services(SERVICES)
    ble.active(True)  # activating again re-initialises the stack: services gone again
    with pytest.raises(OSError):
        ble.gatts_write(h[0], b"x")


def test_advertising(radio):
    ble, app, _ = radio
    assert bt._advertising() == {"interval_us": 100_000, "connectable": True,
                                 "adv_data": b"\x02\x01\x06", "resp_data": b""}  # fmt: skip
    ble.gap_advertise(100_300, resp_data=b"\x05\x09pump")
    adv = bt._advertising()
    assert adv["interval_us"] == 100_000 and adv["adv_data"] == b"\x02\x01\x06"  # kept
    ble.gap_advertise(100_000, b"")
    assert bt._advertising()["adv_data"] == b""
    with pytest.raises(OSError):
        ble.gap_advertise(100_000, bytes(32))
    with pytest.raises(OSError):
        ble.gap_advertise(10_000)  # under 20 ms
    ble.gap_advertise(100_000, connectable=False)
    with pytest.raises(AssertionError):
        bt._Central().connect()
    ble.gap_advertise(None)
    assert bt._advertising() is None


def test_connections_handles_and_disconnect(radio):
    ble, app, _ = radio
    cs = []
    for i in range(4):
        _advertise(ble)
        c = bt._Central(addr=bytes([0xC0, 0, 0, 0, 0, i]))
        assert c.connect() == i
        assert bt._advertising() is None  # a connection ends advertising
        cs.append(c)
    _advertise(ble)
    with pytest.raises(AssertionError):
        bt._Central(addr=b"\xc0\x00\x00\x00\x00\x09").connect()
    assert app.of(1)[1] == (1, 1, 1, b"\xc0\x00\x00\x00\x00\x01")
    assert ble.gap_disconnect(2) is True
    assert cs[2].connected  # the disconnect event comes later
    bt._run()
    assert not cs[2].connected and app.of(2) == [(2, 2, 1, b"\xc0\x00\x00\x00\x00\x02")]
    assert ble.gap_disconnect(2) is False


# --- the handler --------------------------------------------------------------------------------


def test_handler_exception_is_printed_swallowed_and_disables_the_handler(radio, capsys):
    ble, app, h = radio

    def bad(event, data):
        raise KeyError("boom")

    ble.irq(bad)
    c = bt._Central()
    c.connect()
    err = capsys.readouterr().err
    assert "Unhandled exception in IRQ callback handler" in err and "KeyError" in err
    assert bt._state["irq_errors"] == [(1, "KeyError: 'boom'")]
    assert c.write(h[1], b"x") == 0  # the write still succeeds at ATT level
    assert len(bt._state["irq_errors"]) == 1  # no handler any more: nothing else was called


def test_views_are_read_only_and_die_with_the_call(radio):
    ble, app, _ = radio
    seen = []

    def handler(event, data):
        if event == 1:
            addr = data[2]
            with pytest.raises(TypeError):
                addr[0] = 0  # read-only
            seen.append(bytes(addr))

    ble.irq(handler)
    bt._Central(addr=b"\xc0\x01\x02\x03\x04\x05").connect()
    assert seen == [b"\xc0\x01\x02\x03\x04\x05"]
    assert bt._state["violations"] == []


@pytest.mark.parametrize("keep", ["view", "slice", "tuple"])
def test_kept_event_data_is_caught(radio, keep):
    ble, app, _ = radio
    kept = []

    def handler(event, data):
        if event == 1:
            kept.append({"view": data[2], "slice": data[2][1:], "tuple": data}[keep])

    ble.irq(handler)
    c = bt._Central(addr=b"\xc0\x01\x02\x03\x04\x05")
    if keep == "slice":
        # A kept slice is a new object the fake cannot count: its bytes are poisoned instead.
        c.connect()
        assert bytes(kept[0]) == b"\xee" * 5
        return
    with pytest.raises(AssertionError, match="kept"):
        c.connect()
    view = kept[0] if keep == "view" else kept[0][2]
    with pytest.raises(ValueError):
        bytes(view)  # released
    bt._state["violations"].clear()
