# pumpbench's pump over the clinician protocol: a continuous rate (STAGE, then COMMIT of the
# staged CRC) or a clinician bolus, through pumpctl's session on bleak (a rig) or Bumble (sim).
"""The bench engineer programs the rig exactly as a clinician would, with the clinician's key
file: each command is one authenticated session (connect, encrypt with the bond, check the
pump's identity, log in, ask, end the session, disconnect), so a long test holds no link open
and the pump's idle timeout never cuts one mid-test. Every failure is a BenchError sentence."""

import asyncio
import struct
from fractions import Fraction

from itbtools import gatt as G
from itbtools import pumpctl as CTL
from itbtools import pumpdata as D
from link import codes as K
from link import service as SV
from link import wire as W
from pump import reasons as R
from pump import rx as RX
from tools.linkclient import ProtocolError


class BleBoard:
    """The pump reached over BLE: transport "ble" (bleak, address = a device address or None
    for the first pump advertising) or "sim" (Bumble, address = host:port of `make sim-radio`).
    error(sentence) -> the exception to raise (pumpbench's BenchError)."""

    def __init__(self, transport, address, key_path, bond_file, error, confirm_increase=False,
                 timeout_s=10.0):  # fmt: skip
        self.transport = transport
        self.address = address
        self.key_path = key_path
        self.error = error
        self.confirm_increase = confirm_increase
        self.opts = CTL.Options(transport, address, key_path, bond_file, True, timeout_s)
        if key_path is not None:  # checked before any port is opened (a dry run has none)
            try:
                role = self.opts.key()[1]
            except CTL.Failure as e:
                raise error(str(e).rstrip("."), CTL.EXIT_USAGE) from None
            if role != K.CLINICIAN:
                raise error("Commanding the pump needs the clinician's key file; %s is the "
                            "%s's" % (key_path, K.ROLE_NAMES[role]), CTL.EXIT_USAGE)

    def describe(self):
        where = self.address or "the first pump advertising"
        if self.transport == "sim":
            return "the virtual pump's radio at %s (Bumble)" % where
        return "the pump at %s over BLE (bleak)" % where

    def plan(self, rate, volume_ul, bolus_s):
        """What a dry run shows: the protocol exchange for each request."""
        from itbtools.pumpbench import _num

        key = self.key_path or "<--key FILE>"
        if rate is not None:
            return ["  a clinician session (key %s): GET_STATUS and GET_PROGRAMME for the "
                    "strength, STAGE a one-step programme at %s uL/h converted to ng/day, check "
                    "the echo, COMMIT its CRC, GET_STATUS to see it running"
                    % (key, _num(rate, 6))]  # fmt: skip
        return ["  per bolus, a clinician session (key %s): GET_STATUS and GET_PROGRAMME for "
                "the strength, CLINICIAN_BOLUS of %s uL converted to ng over %d s"
                % (key, _num(volume_ul, 6), bolus_s)]  # fmt: skip

    def _run(self, what, coro):
        try:
            return asyncio.run(coro)
        except CTL.Failure as e:
            raise self.error(str(e).rstrip("."), _code(e)) from None
        except (G.LinkError, ProtocolError, D.DataError) as e:
            raise self.error("The pump did not take %s over BLE: %s" % (
                what, _lower_first(str(e)).rstrip("."))) from None  # fmt: skip

    def program_rate(self, rate_ul_h):
        """Stage a continuous rate at the pump's own strength and commit it; (set rate in uL/h
        exactly, facts) as ReplBoard.program_rate returns them."""
        return self._run("the rate", self._program(rate_ul_h))

    async def _program(self, rate_ul_h):
        from itbtools import pumpbench as PB

        async with CTL.PumpLink(self.opts, clinician=True, what="Programming a rate") as p:
            st = await p.status()
            running, _staged = await p.programmes()
            conc = CTL.next_strength(st, running)
            ng = PB.programmed_ng_per_day(rate_ul_h, conc)
            rx = RX.continuous(conc, ng)
            reply = await p.ask("the rate", SV.CH_COMMAND_CP, K.STAGE,
                                W.encode_rx(rx) + bytes((W.flag(self.confirm_increase),)),
                                check=False)  # fmt: skip
            reason = reply.reason()
            if not reply.ok and reason is not None and reason[0] == R.NEEDS_CONFIRM:
                raise self.error("The pump needs this daily-dose increase confirmed: add "
                                 "--confirm-increase")  # fmt: skip
            if not reply.ok:
                raise CTL.refusal("the rate", reply)
            _old, staged = D.programmes(reply.data)
            if staged is None or staged[0] != rx:
                raise ProtocolError("The pump staged something other than what was sent.")
            await p.ask("the commit", SV.CH_COMMAND_CP, K.COMMIT,
                        struct.pack("<I", staged[2]) + bytes((W.flag(self.confirm_increase),)))
            st = await p.status()
            if st["rate_ng_per_day"] != ng:
                raise ProtocolError("The pump reports %s ng/day after the commit, not the %s "
                                    "ng/day committed." % (st["rate_ng_per_day"], ng))
            res = {"conc": conc, "rate_ng_per_day": ng, "programme_crc": staged[2]}
            return PB.set_rate_ul_h(ng, conc), res

    def bolus(self, volume_ul, duration_s):
        """A clinician bolus of volume_ul at the pump's strength over duration_s; (set volume
        in uL exactly, facts) as ReplBoard.bolus returns them."""
        return self._run("the bolus", self._bolus(volume_ul, duration_s))

    async def _bolus(self, volume_ul, duration_s):
        from itbtools import pumpbench as PB

        async with CTL.PumpLink(self.opts, clinician=True, what="A clinician bolus") as p:
            st = await p.status()
            running, _staged = await p.programmes()
            conc = CTL.next_strength(st, running)
            ng = PB.bolus_dose_ng(volume_ul, conc)
            if ng <= 0:
                raise self.error("A bolus of %s uL at %d ug/mL rounds to no dose" % (
                    volume_ul, conc))  # fmt: skip
            await p.ask("the clinician bolus", SV.CH_COMMAND_CP, K.CLINICIAN_BOLUS,
                        struct.pack("<II", ng, duration_s))
            return Fraction(ng, conc), {"conc": conc, "dose_ng": ng}


def _code(failure):
    """pumpbench's exit code for a pumpctl failure: usage stays usage, the rest is a test that
    could not be done."""
    return CTL.EXIT_USAGE if failure.code == CTL.EXIT_USAGE else 1


def _lower_first(s):
    return s if s[:2].isupper() else s[:1].lower() + s[1:]
