# The radio protocol's service (docs/protocol.md): what the pump does with each control-point
# write. Pure: the radio shell (firmware/radio.py) hands it frames and sends what it returns.
"""The service never touches delivery by itself. A command reaches the pump only through
app.request(), after the link security, the end-to-end seal, the session, the MAC, the command
counter (saved before the command acts) and the role's allow-list have all passed; whatever
fails gets its own result code and changes nothing. Every command, accepted or refused, and
every connection, session and authentication failure is logged (rate-limited per connection, with
a count of what was not logged one by one)."""

import struct

from link import codes as K
from link import wire as W
from pump import engine as E
from pump import limits as L
from pump import reasons as R
from pump import rx as RX
from pump.compat import const

# The characteristics the service speaks on (the shell maps them to GATT handles).
CH_STATUS = const(0)
CH_CHANGED = const(1)
CH_ALARM = const(2)
CH_FEATURES = const(3)
CH_STATUS_CP = const(4)
CH_COMMAND_CP = const(5)
CH_COMMAND_DATA = const(6)
CH_RACP = const(7)
CH_HISTORY_DATA = const(8)
CH_AUTH_CP = const(9)
N_CHARS = const(10)
CONTROL_POINTS = (CH_STATUS_CP, CH_COMMAND_CP, CH_RACP, CH_AUTH_CP)
_RESPONSE_OP = {CH_STATUS_CP: K.STATUS_RESPONSE, CH_COMMAND_CP: K.COMMAND_RESPONSE,
                CH_RACP: K.RACP_RESPONSE}  # fmt: skip
_OPS = {CH_STATUS_CP: K.STATUS_OPS, CH_COMMAND_CP: K.COMMAND_OPS, CH_RACP: K.RACP_OPS}
# Ops that change nothing: their log entries need no commit of their own.
_READS = K.STATUS_OPS + K.RACP_OPS
DATA_CHAR = {CH_STATUS_CP: CH_COMMAND_DATA, CH_COMMAND_CP: CH_COMMAND_DATA,
              CH_RACP: CH_HISTORY_DATA}  # fmt: skip

SESSION_IDLE_MS = const(300_000)  # a session not used for 5 min ends
COUNTER_STEP_MAX = const(65_536)  # a command counter may jump at most this far above the last
COUNTER_RESERVE = const(1_024)  # counters saved ahead of use (see _authenticated)
AUTH_FREE_FAILURES = const(3)  # failed proofs before the pump starts making clients wait
LOCKOUT_FIRST_MS = const(5_000)  # then 5 s, doubling with each further failure ...
LOCKOUT_MAX_MS = const(600_000)  # ... up to 10 min
LOG_REFUSALS_PER_MIN = const(10)  # refused frames logged one by one per connection and minute
DEFAULT_MTU = const(23)
PROTOCOL_VERSION = const(1)

# Status flags (u8) in the status characteristic and GET_STATUS.
FLAG_FAULT = const(0x01)
FLAG_BOLUS = const(0x02)
FLAG_REFILL_OPEN = const(0x04)
FLAG_STAGED = const(0x08)
FLAG_CLOCK_UNSET = const(0x10)
FLAG_STORAGE_FAILING = const(0x20)
FLAG_RESERVOIR_LOW = const(0x40)
# Status-changed bits (u16).
CHANGED_STATUS = const(0x0001)
CHANGED_ALARM = const(0x0002)
CHANGED_PROGRAMME = const(0x0004)
CHANGED_HISTORY = const(0x0008)

_THERAPY_STATE = {E.MODE_STOPPED: K.MODE_STOP, E.MODE_PROGRAM: K.MODE_RUN,
                  E.MODE_MINIMUM: K.MODE_MINIMUM}  # fmt: skip
_MODE_FROM_CODE = {K.MODE_STOP: E.MODE_STOPPED, K.MODE_MINIMUM: E.MODE_MINIMUM}


class Session:
    __slots__ = ("role", "key", "last_counter", "used_ms")

    def __init__(self, role, key, last_counter, now_ms):
        self.role = role
        self.key = key
        self.last_counter = last_counter
        self.used_ms = now_ms


def _counter_refused(s, counter):
    """The result refusing a command counter session s cannot take (0 if it can): not above the
    last one, or so far above it that one frame could use up the role's counters for good."""
    if counter <= s.last_counter:
        return K.REPLAYED
    if counter - s.last_counter > COUNTER_STEP_MAX:
        return K.BAD_OPERAND
    return 0


class Conn:
    """One BLE connection: its link security, MTU, end-to-end counters and session."""

    def __init__(self, handle):
        self.handle = handle
        self.secure = False  # encrypted, authenticated (MITM-protected), bonded, 16-byte key
        self.mtu = DEFAULT_MTU
        self.e2e_in = [-1] * N_CHARS  # last accepted counter per control point (-1: none yet)
        self.e2e_out = [0] * N_CHARS  # next counter per characteristic the pump sends on
        self.session = None
        self.challenge = None  # (role, client nonce, pump nonce) between START and PROOF
        self.busy = False  # a procedure runs (its final answer not yet handed over)
        self.proc = 0  # procedures started on this connection
        self.abort = False  # an authenticated RACP abort arrived during a report
        self.log_minute = -1
        self.logged = 0
        self.unlogged = 0  # refusals past the per-minute budget, logged as a count


class Service:
    """app: the device application (sup, submit(), request(), note()). keys: {role: key
    bytes} from provisioning. pump_id: bytes naming this pump in every proof. random(n): n
    random bytes. clock.now_ms(): monotonic ms. send(conn, ch, data, indicate): coroutine that
    returns True once sent (indications: acknowledged)."""

    def __init__(self, app, keys, pump_id, random, clock, send):
        self.app = app
        self.keys = keys
        self.pump_id = bytes(pump_id)
        self.random = random
        self.clock = clock
        self.send = send
        self.conns = {}
        self.failures = 0  # consecutive failed authentications, across connections
        self.locked_until_ms = 0
        self.changed = 0  # status-changed bits since a client last reset them

    # ---- the link, as the shell reports it ----

    def connected(self, handle, addr):
        self.conns[handle] = Conn(handle)
        self._note("ble_connect", handle, addr)

    def disconnected(self, handle):
        c = self.conns.pop(handle, None)
        if c is None:
            return
        self._flush_unlogged(c)
        if c.session is not None:
            self._note("ble_session_end", handle, K.ROLE_NAMES[c.session.role], "disconnect")
        self._note("ble_disconnect", handle)

    def security(self, handle, encrypted, authenticated, bonded, key_size):
        c = self.conns.get(handle)
        if c is None:
            return
        # Bonded too: a pairing whose keys the pump refused to store (outside the pairing
        # window) still leaves an encrypted, authenticated link, and it must serve nothing.
        c.secure = bool(encrypted and authenticated and bonded and key_size == 16)
        self._note("ble_security", handle, encrypted, authenticated, bonded, key_size)

    def mtu(self, handle, mtu):
        c = self.conns.get(handle)
        if c is not None:
            c.mtu = mtu

    def read_allowed(self, handle, ch):
        """0 if the connection may read ch now, else the ATT error (Insufficient Authorization):
        status needs a session; features only a secure link. Allocates nothing (IRQ context)."""
        c = self.conns.get(handle)
        if c is None or not c.secure:
            return 0x05
        if ch == CH_FEATURES:
            return 0
        s = c.session
        if s is None or self.clock.now_ms() - s.used_ms > SESSION_IDLE_MS:
            return 0x08
        return 0

    # ---- writes ----

    async def write(self, handle, ch, frame):
        """One write to control point ch. Answers it (indication on ch) unless the connection
        is gone. Returns the result code (for the shell's own log and tests)."""
        c = self.conns.get(handle)
        if c is None:
            return None
        if c.busy:
            if ch == CH_AUTH_CP:
                # A session must not change under a running procedure.
                self._refused_frame(c, ch, 0, K.BUSY)
                await self._auth_answer(c, K.BUSY, bytes(W.PUMP_PROOF_LEN), 0, False)
                return K.BUSY
            return await self._while_busy(c, ch, frame)
        # A procedure runs from here until its final answer is handed to the radio (a client
        # may write its next frame as soon as it has that answer, before the pump has heard
        # the acknowledgement); the token keeps a finished procedure from clearing the flags
        # of the next one.
        c.proc += 1
        token = c.proc
        c.busy = True
        try:
            if ch == CH_AUTH_CP:
                return await self._auth(c, frame)
            return await self._command(c, ch, frame)
        finally:
            if c.proc == token:
                c.busy = False
                c.abort = False

    async def _command(self, c, ch, frame):
        resp_op = _RESPONSE_OP[ch]
        op = 0
        counter = 0
        try:
            if not c.secure:
                raise W.Bad(K.INSECURE, "link not secure")
            body, e2e = self._unseal(c, ch, frame)
            op, counter, operand, mac = W.parse_command(body)
            if op not in _OPS[ch]:
                raise W.Bad(K.UNKNOWN_OP, "not an op code of this control point")
            s = self._session(c)
            if not W.check_command_mac(s.key, op, counter, operand, mac):
                raise W.Bad(K.BAD_MAC, "bad MAC")
        except W.Bad as e:
            self._refused_frame(c, ch, op, e.code)
            await self._respond(c, ch, None, resp_op, op, counter, e.code)
            return e.code
        # Authenticated from here: answers carry a MAC.
        c.e2e_in[ch] = e2e
        result, data = await self._authenticated(c, ch, s, op, counter, operand)
        # A read that succeeded is logged with the next commit; a change, and any refusal of
        # an authenticated command, is saved at once.
        self._note("ble_command", c.handle, K.ROLE_NAMES[s.role], op, result,
                   commit=op not in _READS or result != K.SUCCESS)  # fmt: skip
        if result == K.SUCCESS and ch == CH_RACP and op == K.RACP_REPORT:
            result = await self._report(c, s, counter, operand)
            return result
        digest = W.EMPTY_DIGEST
        if data:
            h = W.sha256()
            if not await self._records(c, DATA_CHAR[ch], data, h):
                return None  # the link failed under the records: no response to send
            digest = h.digest()
        await self._respond(c, ch, s, resp_op, op, counter, result, digest)
        return result

    def _unseal(self, c, ch, frame):
        """(body, e2e counter); DUPLICATE if the counter is the last accepted frame's. The
        caller records the counter (self._seen) only once the frame is accepted, so a refused
        frame changes nothing, not even the duplicate check."""
        body, e2e = W.unseal(frame)
        if e2e == c.e2e_in[ch]:
            raise W.Bad(K.DUPLICATE, "end-to-end counter repeats")
        return body, e2e

    def _session(self, c):
        s = c.session
        if s is None:
            raise W.Bad(K.NO_SESSION, "no session")
        if self.clock.now_ms() - s.used_ms > SESSION_IDLE_MS:
            c.session = None
            self._note("ble_session_end", c.handle, K.ROLE_NAMES[s.role], "idle")
            raise W.Bad(K.NO_SESSION, "session ended (idle)")
        return s

    async def _authenticated(self, c, ch, s, op, counter, operand):
        """(result, data) of an authenticated command."""
        bad = _counter_refused(s, counter)
        if bad:
            return bad, b""
        name = self._take_counter(s, counter)
        if name is not None:
            # Saved before the command acts, so no reboot can make this counter valid again.
            res = await self.app.request("use_counter", name, counter + COUNTER_RESERVE)
            if res is not None and res != self.app.NOT_SAVED:
                if res.code == R.ALREADY_DONE:
                    return K.REPLAYED, b""
                if res.code != R.STORAGE_FAILED:
                    return K.REFUSED, W.refusal_data(res.code, res.field)
                # While storage fails the counter lives in RAM only; the session key, which
                # no reboot keeps, still makes every frame of this session worthless in any
                # other.
        if s.role not in K.ALLOWED.get(op, ()):
            return K.NOT_ALLOWED, b""
        try:
            return await self._do(c, s, op, W.Reader(operand))
        except W.Bad as e:
            return e.code, b""

    def _take_counter(self, s, counter):
        """Mark counter used by session s; the role's name when it passes what the flash holds
        (a reservation of the next COUNTER_RESERVE counters is then due: a client reading the
        status often writes the flash once per COUNTER_RESERVE reads, not at each), else None."""
        s.used_ms = self.clock.now_ms()
        s.last_counter = counter
        name = K.ROLE_NAMES[s.role]
        return name if counter > self.app.sup.counters.get(name, 0) else None

    async def _while_busy(self, c, ch, frame):
        # Only an abort of a running report is taken now; anything else waits its turn, which
        # the client learns as BUSY (nothing changed).
        counter = 0
        op = 0
        try:
            if not c.secure:
                raise W.Bad(K.INSECURE, "link not secure")
            body, e2e = self._unseal(c, ch, frame)
            op, counter, operand, mac = W.parse_command(body)
            s = self._session(c)
            if (ch != CH_RACP or op != K.RACP_ABORT or operand
                    or not W.check_command_mac(s.key, op, counter, operand, mac)):  # fmt: skip
                raise W.Bad(K.BUSY, "a procedure is running")
            bad = _counter_refused(s, counter)
            if bad:
                raise W.Bad(bad, "counter")
        except W.Bad as e:
            self._refused_frame(c, ch, op, e.code)
            await self._respond(c, ch, None, _RESPONSE_OP[ch], op, counter, e.code, final=False)
            return e.code
        c.e2e_in[ch] = e2e
        name = self._take_counter(s, counter)
        if name is not None:
            self.app.submit("use_counter", name, counter + COUNTER_RESERVE)
        c.abort = True
        self._note("ble_command", c.handle, K.ROLE_NAMES[s.role], op, K.SUCCESS, commit=False)
        await self._respond(c, ch, s, K.RACP_RESPONSE, op, counter, K.SUCCESS, final=False)
        return K.SUCCESS

    # ---- the operations ----

    async def _do(self, c, s, op, r):
        sup = self.app.sup
        if op == K.GET_STATUS:
            r.done()
            return K.SUCCESS, self.status_record()
        if op == K.GET_PROGRAMME:
            r.done()
            return K.SUCCESS, self._programmes()
        if op == K.GET_LIMITS:
            r.done()
            return K.SUCCESS, struct.pack("<IIIB", *sup.engine.lim.as_tuple())
        if op == K.GET_ALARMS:
            r.done()
            return K.SUCCESS, self._alarms()
        if op == K.GET_REFILL:
            r.done()
            return K.SUCCESS, self._refill()
        if op == K.RESET_CHANGED:
            r.done()
            self.changed = 0
            return K.SUCCESS, b""
        if op == K.RACP_COUNT:
            first = r.u32()
            last = r.u32()
            r.done()
            return K.SUCCESS, struct.pack("<I", self._count(first, last))
        if op == K.RACP_REPORT:
            r.u32()
            r.u32()
            r.done()
            return K.SUCCESS, b""  # streamed by _report()
        if op == K.RACP_ABORT:
            r.done()
            return K.SUCCESS, b""  # nothing running: nothing to abort
        name, args = self._request(op, r)
        r.done()
        res = await self.app.request(name, *args)
        if res is None:
            if op == K.STAGE:
                return K.SUCCESS, self._programmes()
            return K.SUCCESS, b""
        if res == self.app.NOT_SAVED:
            return K.NOT_SAVED, b""
        return K.REFUSED, W.refusal_data(res.code, res.field)

    def _request(self, op, r):
        """The supervisor request an op code makes: (name, args)."""
        sup = self.app.sup
        if op == K.STAGE:
            rx = W.read_rx(r, RX.Prescription)
            return "stage", (rx, r.flag())
        if op == K.COMMIT:
            crc = r.u32()
            confirm = r.flag()
            staged = sup.staged
            if staged is None or W.crc32(W.encode_rx(staged)) != crc:
                # The echo the clinician saw is not what is staged: refused by the pump's own
                # rule (commit_staged of something else refuses with NO_STAGED).
                return "commit_staged", (None, confirm)
            return "commit_staged", (staged, confirm)
        if op == K.SET_MODE:
            return "set_mode", (_MODE_FROM_CODE[r.code(_MODE_FROM_CODE)],)
        if op == K.SET_LIMITS:
            lim = L.ClinicianLimits(r.u32(), r.u32(), r.u32(), r.u8())
            return "set_limits", (lim,)
        if op == K.CLINICIAN_BOLUS:
            dose = r.u32()
            return "clinician_bolus", (dose, r.u32())
        if op == K.PATIENT_BOLUS:
            return "patient_bolus", ()
        if op == K.ACK_ALARM:
            return "acknowledge", (K.ALARM_IDS[r.code(K.ALARM_IDS)],)
        if op == K.SNOOZE_ALARM:
            cid = K.ALARM_IDS[r.code(K.ALARM_IDS)]
            return "snooze", (cid, r.u16() * 60_000)
        if op == K.CLEAR_FAULT:
            return "clear_fault", ()
        if op == K.PRIME:
            return "prime", (r.u32(),)
        if op == K.SET_LOW_THRESHOLD:
            return "set_low_threshold", (r.u32(),)
        if op == K.ALARM_TEST:
            return "alarm_test", ()
        if op == K.SET_CLOCK:
            return "set_clock", (r.u64(),)
        if op == K.REFILL_BEGIN:
            return "refill_begin", (r.u32(),)
        if op == K.REFILL_FILL:
            fill = r.u32()
            return "refill_fill", (fill, r.u16())
        if op == K.REFILL_COMMIT:
            return "refill_commit", ()
        if op == K.REFILL_ABANDON:
            return "refill_abandon", ()
        raise W.Bad(K.UNKNOWN_OP, "no such command")

    # ---- what the pump tells ----

    def status_record(self):
        """The status (docs/protocol.md, "Status"): 14 bytes."""
        sup = self.app.sup
        eng = sup.engine
        flags = 0
        if eng.fault:
            flags |= FLAG_FAULT
        if eng.stream_left_ng():
            flags |= FLAG_BOLUS
        if sup.refill_status() is not None:
            flags |= FLAG_REFILL_OPEN
        if sup.staged is not None:
            flags |= FLAG_STAGED
        if eng.held_rate_ng() >= 0:
            flags |= FLAG_CLOCK_UNSET
        if not sup.storage_ok:
            flags |= FLAG_STORAGE_FAILING
        if sup.reservoir.is_low():
            flags |= FLAG_RESERVOIR_LOW
        active = sup.alarms.active()
        top = K.ALARM_CODES[active[0][0]] if active else 0
        return struct.pack("<BBIHIBB", _THERAPY_STATE[eng.mode], flags,
                           sup.reservoir.remaining_nl(), eng.conc, self._rate_ng(), len(active),
                           top)  # fmt: skip

    def alarm_record(self):
        """The highest-priority latched alarm (docs/protocol.md, "Alarm"): 5 bytes, zeros
        when none."""
        active = self.app.sup.alarms.active()
        if not active:
            return bytes(5)
        cid, _name, prio, present, acked, _snooze = active[0]
        return struct.pack("<BBBBB", K.ALARM_CODES[cid], prio, W.flag(present), W.flag(acked),
                           len(active))  # fmt: skip

    def features(self):
        """Protocol version, the clinician limits, reservoir capacity and strength."""
        sup = self.app.sup
        lim = sup.engine.lim
        return struct.pack("<BIIIBIH", PROTOCOL_VERSION, lim.max_24h_ng, lim.max_bolus_ng,
                           lim.max_rate_nl_per_day, lim.dose_step_pct,
                           sup.reservoir.capacity_nl, sup.engine.conc)  # fmt: skip

    def battery_level(self):
        """Battery Level (0-100 %): the charge budget left above the end-of-service reserve."""
        b = self.app.sup.battery
        left = b.budget_nc()
        usable = left + b.used_nc
        if left <= 0 or usable <= 0:
            return 0
        return min(100, left * 100 // usable)

    def _rate_ng(self):
        eng = self.app.sup.engine
        if eng.mode == E.MODE_PROGRAM:
            held = eng.held_rate_ng()
            if held >= 0:
                return held
            return eng.rx.step_rate_at(eng.schedule_tod_ms() // L.MIN_MS)
        return eng.mode_rate_ng()

    def _programmes(self):
        # The running programme and the staged one, each with its daily dose: the clinician
        # reviews them side by side before committing (the commit names the staged one's CRC).
        sup = self.app.sup
        out = bytearray()
        for rx in (sup.engine.rx, sup.staged):
            if rx is None:
                out.extend(b"\x00\x00")
                continue
            b = W.encode_rx(rx)
            out.extend(struct.pack("<H", len(b)))
            out.extend(b)
            out.extend(struct.pack("<II", RX.daily_dose_ng(rx), W.crc32(b)))
        return bytes(out)

    def _alarms(self):
        out = bytearray()
        for cid, _name, prio, present, acked, snooze in self.app.sup.alarms.active():
            out.extend(struct.pack("<BBBBQ", K.ALARM_CODES[cid], prio, W.flag(present),
                                   W.flag(acked),
                                   max(snooze, 0) if snooze else 0))  # fmt: skip
        return bytes(out)

    def _refill(self):
        st = self.app.sup.refill_status()
        if st is None:
            return b""
        withdrawn, expected, tol, _out_of_tolerance, fill, conc = st
        # Before the fill is entered the pump holds -1 for it: sent as 0 (no fill yet).
        return struct.pack("<IIIiIH", withdrawn, expected, tol, withdrawn - expected,
                           fill if fill > 0 else 0, conc if fill > 0 else 0)  # fmt: skip

    def _count(self, first, last):
        return self.app.history_count(first, last)

    # ---- sending ----

    def _next_out(self, c, ch):
        n = c.e2e_out[ch]
        c.e2e_out[ch] = (n + 1) & 0xFF
        return n

    def _live(self, c):
        # A connection handle is reused after a disconnect: send only to the very Conn the
        # request came on.
        return self.conns.get(c.handle) is c

    async def _respond(self, c, ch, s, resp_op, req_op, counter, result, digest=W.EMPTY_DIGEST,
                       final=True):  # fmt: skip
        if not self._live(c):
            return False
        if final:
            c.busy = False  # the procedure is over once its response is out
        body = W.response(None if s is None else s.key, resp_op, req_op, counter, result,
                          digest)  # fmt: skip
        return await self.send(c.handle, ch, W.seal(body, self._next_out(c, ch)), True)

    async def _records(self, c, ch, data, h):
        """Send data as sealed notifications sized to the MTU, adding it to the hash h; False
        if the link failed under it."""
        size = c.mtu - 3 - W.E2E_LEN
        for piece in W.chunks(data, size):
            h.update(piece)
            if not self._live(c):
                return False
            if not await self.send(c.handle, ch, W.seal(piece, self._next_out(c, ch)), False):
                return False
        return True

    async def _report(self, c, s, counter, operand):
        """RACP report: the raw log records with first <= seq <= last, streamed on History
        Data, then the response (its MAC covers all of them)."""
        first, last = struct.unpack("<II", operand)
        h = W.sha256()
        result = K.SUCCESS
        for raw in self.app.history(first, last):
            if c.abort:
                result = K.REFUSED  # aborted: the response says the report is incomplete
                break
            if not await self._records(c, CH_HISTORY_DATA, raw, h):
                return None
        await self._respond(c, CH_RACP, s, K.RACP_RESPONSE, K.RACP_REPORT, counter, result,
                            h.digest())  # fmt: skip
        return result

    # ---- authentication ----

    async def _auth(self, c, frame):
        now = self.clock.now_ms()
        try:
            if not c.secure:
                raise W.Bad(K.INSECURE, "link not secure")
            body, e2e = self._unseal(c, CH_AUTH_CP, frame)
            if len(body) < 2:
                raise W.Bad(K.BAD_LENGTH, "no op code")
            c.e2e_in[CH_AUTH_CP] = e2e
            op = W.op_of(body)
            if op == K.AUTH_START:
                if len(body) != 3 + W.NONCE_LEN:
                    raise W.Bad(K.BAD_LENGTH, "AUTH_START is 15 bytes")
                role = body[2]
                if role not in self.keys:
                    raise W.Bad(K.BAD_OPERAND, "no such role")
                if now < self.locked_until_ms:
                    raise W.Bad(K.LOCKED_OUT, "locked out")
                self._end_session(c, "new start")
                np = bytes(self.random(W.NONCE_LEN))
                c.challenge = (role, bytes(body[3:]), np)
                c.busy = False  # the challenge is the procedure's final answer
                await self.send(c.handle, CH_AUTH_CP,
                                W.seal(W.auth_challenge(np), self._next_out(c, CH_AUTH_CP)),
                                True)  # fmt: skip
                return K.SUCCESS
            if op == K.AUTH_PROOF:
                if len(body) != 2 + W.PROOF_LEN:
                    raise W.Bad(K.BAD_LENGTH, "AUTH_PROOF is 17 bytes")
                ch = c.challenge
                c.challenge = None
                if ch is None:
                    raise W.Bad(K.NO_SESSION, "no challenge to answer")
                if now < self.locked_until_ms:
                    raise W.Bad(K.LOCKED_OUT, "locked out")
                role, nc, np = ch
                key = self.keys[role]
                want = W.client_proof(key, self.pump_id, role, nc, np)
                if not W.equal(want, body[2:]):
                    self._auth_failed(c, role, now)
                    raise W.Bad(K.BAD_MAC, "wrong proof")
                self.failures = 0
                name = K.ROLE_NAMES[role]
                last = self.app.sup.counters.get(name, 0)
                c.session = Session(role, W.session_key(key, self.pump_id, role, nc, np), last,
                                    now)  # fmt: skip
                # The session's frames count from zero on every other characteristic.
                for i in range(N_CHARS):
                    if i != CH_AUTH_CP:
                        c.e2e_in[i] = -1
                        c.e2e_out[i] = 0
                self._note("ble_session", c.handle, name)
                proof = W.pump_proof(key, self.pump_id, role, nc, np)
                await self._auth_answer(c, K.SUCCESS, proof, last)
                return K.SUCCESS
            if op == K.AUTH_END:
                if len(body) != 2:
                    raise W.Bad(K.BAD_LENGTH, "AUTH_END is 2 bytes")
                self._end_session(c, "ended by client")
                await self._auth_answer(c, K.SUCCESS, bytes(W.PUMP_PROOF_LEN), 0)
                return K.SUCCESS
            raise W.Bad(K.UNKNOWN_OP, "not an authentication op code")
        except W.Bad as e:
            self._refused_frame(c, CH_AUTH_CP, 0, e.code)
            await self._auth_answer(c, e.code, bytes(W.PUMP_PROOF_LEN), 0)
            return e.code

    async def _auth_answer(self, c, result, proof, last, final=True):
        if not self._live(c):
            return
        if final:
            c.busy = False
        frame = W.seal(W.auth_result(result, proof, last), self._next_out(c, CH_AUTH_CP))
        await self.send(c.handle, CH_AUTH_CP, frame, True)

    def _auth_failed(self, c, role, now):
        self.failures += 1
        extra = self.failures - AUTH_FREE_FAILURES - 1
        wait = 0
        if extra >= 0:
            wait = LOCKOUT_FIRST_MS << min(extra, 10)
            if wait > LOCKOUT_MAX_MS:
                wait = LOCKOUT_MAX_MS
            self.locked_until_ms = now + wait
        self._note("ble_auth_failed", c.handle, K.ROLE_NAMES[role], self.failures, wait)

    def _end_session(self, c, why):
        s = c.session
        c.session = None
        c.challenge = None
        if s is not None:
            self._note("ble_session_end", c.handle, K.ROLE_NAMES[s.role], why)

    # ---- the log ----

    def _note(self, name, *args, commit=True):
        self.app.note(name, *args, commit=commit)

    def _refused_frame(self, c, ch, op, code):
        minute = self.clock.now_ms() // 60_000
        if minute != c.log_minute:
            self._flush_unlogged(c)
            c.log_minute = minute
            c.logged = 0
        if c.logged < LOG_REFUSALS_PER_MIN:
            c.logged += 1
            self._note("ble_refused", c.handle, ch, op, code)
        else:
            c.unlogged += 1

    def _flush_unlogged(self, c):
        if c.unlogged:
            self._note("ble_refused_count", c.handle, c.unlogged)
            c.unlogged = 0
