# pumpbench's pump over the clinician protocol: a continuous rate (STAGE, then COMMIT of the
# staged CRC) or a clinician bolus, through pumpctl's session on bleak (a rig) or Bumble (sim).
"""The bench engineer programs the rig exactly as a clinician would, with the clinician's key
file: each command is one authenticated session (connect, encrypt with the bond, check the
pump's identity, log in, ask, end the session, disconnect), so a long test holds no link open
and the pump's idle timeout never cuts one mid-test. Every failure is a BenchError sentence;
one that came after the command itself was sent says the pump may have acted on it."""

import asyncio
from fractions import Fraction

from itbtools import gatt as G
from itbtools import pumpctl as CTL
from itbtools import pumpdata as D
from itbtools.doses import (
    bolus_dose_ng,
    num_text,
    programme_facts,
    programmed_ng_per_day,
    set_rate_ul_h,
)
from link import codes as K
from pump import rx as RX
from tools.linkclient import ProtocolError

USAGE = CTL.EXIT_USAGE


class BleBoard:
    """The pump reached over BLE: transport "ble" (bleak, address = a device address or None
    for the first pump advertising) or "sim" (Bumble, address = host:port of `make sim-radio`).
    error(sentence, code=1) -> the exception to raise (pumpbench's BenchError); the exception
    gets .maybe_done = True when the link failed after the command was sent."""

    def __init__(self, transport, address, key_path, bond_file, error, confirm_increase=False,
                 timeout_s=10.0):  # fmt: skip
        self.transport = transport
        self.address = address
        self.key_path = key_path
        self.error = error
        self.confirm_increase = confirm_increase
        self.opts = CTL.Options(transport, address, key_path, bond_file, True, timeout_s)
        self._sent = None  # what the last command was, once its final frame went out
        if key_path is not None:  # checked before any port is opened (a dry run has none)
            try:
                role = self.opts.key()[1]
            except CTL.Failure as e:
                raise error(str(e).rstrip("."), USAGE) from None
            if role != K.CLINICIAN:
                raise error("Commanding the pump needs the clinician's key file; %s is the "
                            "%s's" % (key_path, K.ROLE_NAMES[role]), USAGE)  # fmt: skip

    def describe(self):
        where = self.address or "the first pump advertising"
        if self.transport == "sim":
            return "the virtual pump's radio at %s (Bumble)" % where
        return "the pump at %s over BLE (bleak)" % where

    def plan(self, rate, volume_ul, bolus_s):
        """What a dry run shows: the protocol exchange for each request."""
        key = self.key_path or "<--key FILE>"
        if rate is not None:
            return ["  a clinician session (key %s): GET_STATUS and GET_PROGRAMME for the "
                    "strength, STAGE a one-step programme at %s uL/h converted to ng/day (no "
                    "periodic or patient bolus), check the echo, COMMIT its CRC, GET_STATUS to "
                    "see it running" % (key, num_text(rate, 6))]  # fmt: skip
        return ["  per bolus, a clinician session (key %s): GET_STATUS and GET_PROGRAMME for "
                "the strength, CLINICIAN_BOLUS of %s uL converted to ng over %d s"
                % (key, num_text(volume_ul, 6), bolus_s)]  # fmt: skip

    def _run(self, what, coro):
        self._sent = None
        try:
            return asyncio.run(coro)
        except CTL.Failure as e:
            raise self.error(str(e).rstrip("."), USAGE if e.code == USAGE else 1) from None
        except (G.LinkError, ProtocolError, D.DataError) as e:
            why = _lower_first(str(e)).rstrip(".")
            if self._sent is None:
                raise self.error("The pump did not take %s over BLE: %s" % (what, why)) from None
            err = self.error("The link failed after %s was sent, so the pump may have acted on "
                             "it: check with pumpctl status (%s)" % (self._sent, why))
            err.maybe_done = True
            raise err from None

    def program_rate(self, rate_ul_h):
        """Stage a continuous rate at the pump's own strength and commit it; (set rate in uL/h
        exactly, facts) as ReplBoard.program_rate returns them, with the programme replaced."""
        return self._run("the rate", self._program(rate_ul_h))

    async def _program(self, rate_ul_h):
        async with CTL.PumpLink(self.opts, clinician=True, what="Programming a rate") as p:
            _st, running, conc = await p.strength()
            ng = programmed_ng_per_day(rate_ul_h, conc)
            rx = RX.continuous(conc, ng)
            reply = await p.stage("the rate", rx, self.confirm_increase)
            if p.needs_confirm(reply):
                raise CTL.Failure("The pump needs this daily-dose increase confirmed: add "
                                  "--confirm-increase", 1)  # fmt: skip
            _running, staged = p.staged_echo("the rate", reply, rx)
            self._sent = "the commit"
            await p.commit(staged[2], self.confirm_increase)
            st = await p.status()
            if st["rate_ng_per_day"] != ng:
                raise CTL.Failure("The pump runs %s ng/day after the commit, not the %s ng/day "
                                  "committed: check with pumpctl status"
                                  % (st["rate_ng_per_day"], ng), 1)  # fmt: skip
            res = {"conc": conc, "rate_ng_per_day": ng, "programme_crc": staged[2],
                   "replaced": None if running is None else programme_facts(*running[:2])}
            return set_rate_ul_h(ng, conc), res

    def bolus(self, volume_ul, duration_s):
        """A clinician bolus of volume_ul at the pump's strength over duration_s; (set volume
        in uL exactly, facts) as ReplBoard.bolus returns them."""
        return self._run("the bolus", self._bolus(volume_ul, duration_s))

    async def _bolus(self, volume_ul, duration_s):
        async with CTL.PumpLink(self.opts, clinician=True, what="A clinician bolus") as p:
            _st, _running, conc = await p.strength()
            ng = bolus_dose_ng(volume_ul, conc)
            if ng <= 0:
                raise CTL.Failure("A bolus of %s uL at %d ug/mL rounds to no dose" % (
                    num_text(volume_ul, 6), conc), USAGE)  # fmt: skip
            self._sent = "the bolus"
            await p.clinician_bolus(ng, duration_s)
            return Fraction(ng, conc), {"conc": conc, "dose_ng": ng}


def _lower_first(s):
    return s if s[:2].isupper() else s[:1].lower() + s[1:]
