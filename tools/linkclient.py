# The client side of the radio protocol (docs/protocol.md), transport-free: builds the frames a
# programmer writes and checks the ones the pump sends. The BLE tests and pumpctl sit on it.
"""A Client holds one role's key, its command counter and, once authenticated, the session key.
It makes frames (auth_start, proof, command) and takes the pump's frames (challenge, result,
record, response); every check a client owes the pump's answers is here: the end-to-end CRC and
counter continuity, the pump's proof, and the MAC over each response and the records before it."""

import os
import struct

from link import codes as K
from link import wire as W


class ProtocolError(Exception):
    """The pump's answer cannot be trusted or understood (one sentence in str())."""


class Reply:
    """A checked response: result code, the records' data, and the request it answers."""

    def __init__(self, op, counter, result, data):
        self.op = op
        self.counter = counter
        self.result = result
        self.data = data

    @property
    def ok(self):
        return self.result == K.SUCCESS

    def reason(self):
        """The pump's refusal as (reason code, field), or None."""
        if self.result != K.REFUSED or len(self.data) < 2:
            return None
        n = self.data[1]
        return self.data[0], bytes(self.data[2 : 2 + n]).decode()

    def __repr__(self):
        return "Reply(%#06x, %s)" % (self.op, K.RESULT_NAMES.get(self.result, self.result))


class Client:
    def __init__(self, pump_id, role, key, counter=0, random=os.urandom):
        self.pump_id = bytes(pump_id)
        self.role = role
        self.key = bytes(key)
        self.counter = counter  # the last command counter used
        self.random = random
        self.sk = None
        self._nc = None
        self._np = None
        self._out = {}  # next end-to-end counter per control point
        self._in = {}  # last end-to-end counter seen per characteristic
        self._pending = {}  # (control point, counter): op of each request not yet answered
        self._data = {}  # data characteristic: bytearray of records since the last response
        self._digest = {}

    # ---- the end-to-end seal ----

    def seal(self, ch, body):
        n = self._out.get(ch, 0)
        self._out[ch] = (n + 1) & 0xFF
        return W.seal(body, n)

    def unseal(self, ch, frame):
        try:
            body, n = W.unseal(bytes(frame))
        except W.Bad as e:
            raise ProtocolError("The pump sent a corrupted frame (%s)." % e) from None
        last = self._in.get(ch)
        if last is not None and n != (last + 1) & 0xFF:
            raise ProtocolError("A frame from the pump was lost or repeated (counter %d after %d)."
                                % (n, last))  # fmt: skip
        self._in[ch] = n
        return body

    # ---- authentication ----

    def auth_start(self, ch):
        self._nc = bytes(self.random(W.NONCE_LEN))
        return self.seal(ch, W.auth_start(self.role, self._nc))

    def auth_proof(self, ch, challenge):
        body = self.unseal(ch, challenge)
        if len(body) == 2 + 1 + W.PUMP_PROOF_LEN + 4 and W.op_of(body) == K.AUTH_RESULT:
            raise ProtocolError("The pump refused to start a session: %s."
                                % K.RESULT_NAMES.get(body[2], "code %#x" % body[2]))  # fmt: skip
        if len(body) != 2 + W.NONCE_LEN or W.op_of(body) != K.AUTH_CHALLENGE:
            raise ProtocolError("The pump's challenge is malformed.")
        self._np = bytes(body[2:])
        proof = W.client_proof(self.key, self.pump_id, self.role, self._nc, self._np)
        return self.seal(ch, W.auth_proof(proof))

    def auth_result(self, ch, frame):
        """Check the pump's result and proof; returns the pump's last counter for this role."""
        body = self.unseal(ch, frame)
        if len(body) != 2 + 1 + W.PUMP_PROOF_LEN + 4 or W.op_of(body) != K.AUTH_RESULT:
            raise ProtocolError("The pump's authentication result is malformed.")
        result = body[2]
        if result != K.SUCCESS:
            raise ProtocolError("The pump refused the session: %s."
                                % K.RESULT_NAMES.get(result, "code %#x" % result))  # fmt: skip
        proof = bytes(body[3 : 3 + W.PUMP_PROOF_LEN])
        want = W.pump_proof(self.key, self.pump_id, self.role, self._nc, self._np)
        if not W.equal(proof, want):
            raise ProtocolError("The pump could not prove it holds this pump's key.")
        last = struct.unpack_from("<I", body, 3 + W.PUMP_PROOF_LEN)[0]
        self.sk = W.session_key(self.key, self.pump_id, self.role, self._nc, self._np)
        if last > self.counter:
            self.counter = last
        return last

    # ---- commands ----

    def command(self, ch, op, operand=b""):
        if self.sk is None:
            raise ProtocolError("No session: authenticate first.")
        self.counter += 1
        self._pending[(ch, self.counter)] = op
        return self.seal(ch, W.command(self.sk, op, self.counter, operand))

    def record(self, ch, frame):
        """A data notification: kept until the response that covers it."""
        body = self.unseal(ch, frame)
        self._data.setdefault(ch, bytearray()).extend(body)

    def response(self, ch, frame, data_ch):
        """The response on control point ch, with the records received on data_ch since the last
        response there; raises ProtocolError if it is not the pump's answer to our request."""
        body = self.unseal(ch, frame)
        try:
            resp_op, counter, result, mac = W.parse_response(body)
        except W.Bad:
            raise ProtocolError("The pump's response is malformed.") from None
        if resp_op not in (K.STATUS_RESPONSE, K.COMMAND_RESPONSE, K.RACP_RESPONSE):
            raise ProtocolError("The pump answered with an unknown response op code.")
        op = self._pending.get((ch, counter))
        if op is not None and mac != bytes(W.MAC_LEN):
            # An abort's response covers no records: the report's records are covered by the
            # report's own response, which follows.
            data = b"" if op == K.RACP_ABORT else bytes(self._data.pop(data_ch, b""))
            digest = W.sha256(data).digest()
            if not W.equal(W.response_mac(self.sk, resp_op, op, counter, result, digest), mac):
                raise ProtocolError("The pump's response failed its MAC check.")
            del self._pending[(ch, counter)]
            return Reply(op, counter, result, data)
        # Unauthenticated: the pump refused the frame before it could check it was ours
        # (wrong length, CRC, MAC, no session, busy...). Only a refusal may be unauthenticated.
        if result == K.SUCCESS:
            raise ProtocolError("The pump's success response is not authenticated.")
        self._pending.pop((ch, counter), None)
        return Reply(op or 0, counter, result, b"")
