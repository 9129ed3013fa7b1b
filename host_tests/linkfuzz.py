# Hypothesis strategies over the radio protocol's control-point frames, shared by the CI fuzz
# test (host_tests/test_link.py) and the 100,000-frame run of `make bench` (tools/bench_link.py).
"""Each drawn frame is one of KINDS, made against a live patient session (client c):

  random          bytes of any length on any control point
  mutated         a valid command with one to three bytes changed, then sealed (CRC good)
  truncated       a valid command cut short, sealed
  padded          a valid command with bytes added, sealed
  bad_crc         a valid command sealed, then the CRC damaged
  bad_mac         a valid command with its MAC damaged, sealed
  old_counter     a valid command (MAC good) with a counter already used
  garbage_operand a valid command (MAC good, fresh counter) with a random operand, for an op
                  the patient may send whose success changes no therapy: it spends a counter,
                  and must be refused or answered as a read

The check after each frame (check()) is the same for all: nothing escapes, an unauthenticated
frame never succeeds, the therapy never changes, and the counters move only by the garbage
frames' own counters."""

import struct

from hypothesis import strategies as st

from host_tests import appscen as S
from link import codes as K
from link import service as SV
from link import wire as W

KINDS = ("random", "mutated", "truncated", "padded", "bad_crc", "bad_mac", "old_counter",
         "garbage_operand")  # fmt: skip
# Valid commands to start from: (control point, op, operand).
VALID = (
    (SV.CH_COMMAND_CP, K.PATIENT_BOLUS, b""),
    (SV.CH_STATUS_CP, K.GET_STATUS, b""),
    (SV.CH_COMMAND_CP, K.STAGE, W.encode_rx(S.DEMO) + b"\xf0"),
    (SV.CH_RACP, K.RACP_COUNT, bytes(8)),
    (SV.CH_COMMAND_CP, K.ACK_ALARM, b"\x0f"),
    (SV.CH_COMMAND_CP, K.SNOOZE_ALARM, b"\x0f\x0a\x00"),
)
# Ops for garbage operands: a success is a read, or an alarm op on no latched alarm (refused).
GARBAGE_OPS = ((SV.CH_STATUS_CP, K.GET_STATUS), (SV.CH_STATUS_CP, K.GET_ALARMS),
               (SV.CH_RACP, K.RACP_COUNT), (SV.CH_COMMAND_CP, K.ACK_ALARM),
               (SV.CH_COMMAND_CP, K.SNOOZE_ALARM))  # fmt: skip


def draw(data, c, spent_last):
    """(kind, control point, frame, counter spent or None) drawn with hypothesis data;
    spent_last: the highest counter the pump has taken from this role."""
    kind = data.draw(st.sampled_from(KINDS), label="kind")
    seal = data.draw(st.integers(0, 255), label="e2e")
    if kind == "random":
        ch = data.draw(st.sampled_from(SV.CONTROL_POINTS))
        return kind, ch, data.draw(st.binary(max_size=300)), None
    if kind == "garbage_operand":
        ch, op = data.draw(st.sampled_from(GARBAGE_OPS))
        c.counter += 1
        operand = data.draw(st.binary(max_size=40))
        return kind, ch, W.seal(W.command(c.sk, op, c.counter, operand), seal), c.counter
    ch, op, operand = data.draw(st.sampled_from(VALID))
    if kind == "old_counter":
        # How far back, not the counter itself: the strategy must not depend on the session.
        old = max(0, spent_last - data.draw(st.integers(0, 1000)))
        return kind, ch, W.seal(W.command(c.sk, op, old, operand), seal), None
    # A fresh counter, so that only the damage can be why it is refused.
    body = bytearray(W.command(c.sk, op, c.counter + 1, operand))
    if kind == "mutated":
        # Distinct bytes, each changed: two changes of one byte could undo each other and
        # leave the valid command.
        for i in data.draw(st.lists(st.integers(0, len(body) - 1), min_size=1, max_size=3,
                                    unique=True)):  # fmt: skip
            body[i] ^= data.draw(st.integers(1, 255))
    elif kind == "truncated":
        body = body[: data.draw(st.integers(0, len(body) - 1))]
    elif kind == "padded":
        body += data.draw(st.binary(min_size=1, max_size=16))
    elif kind == "bad_mac":
        body[-1 - data.draw(st.integers(0, W.MAC_LEN - 1))] ^= data.draw(st.integers(1, 255))
    frame = bytearray(W.seal(bytes(body), seal))
    if kind == "bad_crc":
        frame[-1 - data.draw(st.integers(0, 1))] ^= data.draw(st.integers(1, 255))
    return kind, ch, bytes(frame), None


class Checker:
    """The pump's state before fuzzing, and the check after each frame: a list of failures
    (phrases), empty when all is well."""

    def __init__(self, rig):
        self.rig = rig
        self.therapy = rig.state()
        self.counters = dict(rig.vp.sup.counters)
        # The highest counter the pump has taken from the patient role (what draw() calls an
        # old counter is at or below it).
        self.used = rig.svc.conns[1].session.last_counter

    def saved(self):
        return self.counters.get("patient", 0)

    def _spent(self, n):
        # Counter n was spent: the pump saves it (with a reservation of the next ones) if it is
        # beyond what was saved.
        self.used = n
        if n > self.saved():
            self.counters["patient"] = n + SV.COUNTER_RESERVE

    def check(self, kind, ch, frame, spent, result):
        bad = []
        rig = self.rig
        if spent is not None and result != K.DUPLICATE:
            self._spent(spent)  # a valid MAC and a fresh counter
        elif result == K.SUCCESS and ch != SV.CH_AUTH_CP:
            bad.append("an unauthenticated %s frame succeeded: %s" % (kind, frame.hex()))
        if rig.state() != self.therapy:
            # Only a valid authenticated command may change anything (a random operand that
            # happens to acknowledge a latched alarm, say).
            if spent is None or result != K.SUCCESS:
                bad.append("a %s frame changed the therapy: %s" % (kind, frame.hex()))
            self.therapy = rig.state()
        if rig.vp.sup.counters != self.counters:
            bad.append("a %s frame moved the counters: %s" % (kind, frame.hex()))
            self.counters = dict(rig.vp.sup.counters)
        return bad

    def alive(self, c):
        """The positive control: a valid command from the session still succeeds."""
        # The fuzz's own frames bypassed the client: bring its end-to-end counters in step
        # with what the pump last accepted and sent (what a client that wrote them would know).
        conn = self.rig.svc.conns[1]
        c._in.clear()
        c._data.clear()
        c._pending.clear()
        c._out[SV.CH_STATUS_CP] = (conn.e2e_in[SV.CH_STATUS_CP] + 1) & 0xFF
        reply = self.rig.ask(c, SV.CH_STATUS_CP, K.GET_STATUS)
        self._spent(c.counter)
        return reply.ok and struct.unpack_from("<B", reply.data, 0)[0] == K.MODE_RUN
