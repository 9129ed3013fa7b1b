# pumpctl, the clinician programmer (docs/pumpctl.md): status, history, programme changes with a
# side-by-side review, boluses, the guided refill, alarms, the clock and key provisioning.
"""Every failure reaches the user as one sentence on stderr and an exit code:
  1 the pump refused (its reason in words), 2 usage (arguments, files, wrong key file),
  3 the link or the protocol failed, 4 you answered no (nothing changed), 5 a bug in pumpctl.
Keys are never printed. The key file's command counter is raised after every session."""

import asyncio
import csv
import datetime
import json
import struct
import sys
import threading

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

import itbtools  # noqa: F401  (puts firmware/ and the repo root on sys.path)
from boards.sim import scenario as SC
from itbtools import gatt as G
from itbtools import pumpdata as D
from itbtools.errors import usage_sentence
from link import codes as K
from link import service as SV
from link import wire as W
from pump import codec as C
from pump import limits as L
from pump import reasons as R
from pump import rx as RX
from tools import linksession as LS
from tools import provision as P
from tools.linkclient import ProtocolError

EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_LINK = 3
EXIT_CANCELLED = 4
EXIT_BUG = 5
DEFAULT_SIM = "127.0.0.1:6402"
SEQ_MAX = 0xFFFFFFFF
U32_MAX = 0xFFFFFFFF  # the protocol's amounts (nL, ng, s) are u32
BATTERY_LEVEL = "00002a19-0000-1000-8000-00805f9b34fb"
# Results that are the pump saying no (exit 1); any other non-success is a link or protocol
# failure (exit 3).
_REFUSALS = (K.REFUSED, K.NOT_ALLOWED, K.LOCKED_OUT, K.NOT_SAVED)


class Failure(Exception):
    def __init__(self, message, code):
        super().__init__(message)
        self.code = code


def _cancelled(what):
    return Failure("Nothing changed: %s." % what, EXIT_CANCELLED)


class Options:
    def __init__(self, transport, address, key_path, bond_file, yes, timeout_s):
        self.transport = transport
        self.address = address
        self.key_path = key_path
        self.bond_file = bond_file
        self.yes = yes
        self.timeout_s = timeout_s
        width = None if sys.stdout.isatty() else 120
        self.out = Console(highlight=False, markup=False, width=width)

    def key(self):
        """(pump_id, role, key, counter) of the key file."""
        if not self.key_path:
            raise Failure("Give the pump's key file with --key FILE (from `pumpctl keys new`).",
                          EXIT_USAGE)  # fmt: skip
        try:
            return P.load_key_file(self.key_path)
        except P.ProvisionError as e:
            raise Failure(str(e), EXIT_USAGE) from None

    def gatt(self, confirm=None):
        G.quiet_stack_logs()
        if self.transport == "sim":
            from itbtools.gatt_bumble import BumbleGatt, default_bond_file

            bonds = self.bond_file or default_bond_file()
            return BumbleGatt(self.address or DEFAULT_SIM, bonds, confirm, self.timeout_s)
        from itbtools.gatt_bleak import BleakGatt

        return BleakGatt(self.address, confirm, self.timeout_s)

    def say(self, *lines, style=None):
        for line in lines:
            self.out.print(line, style=style, soft_wrap=True)


# ---- prompts (in a thread, so the radio keeps running while the user thinks) -------------


async def _in_thread(fn, *args, **kw):
    """fn(*args, **kw) in a daemon thread. Not the loop's executor: asyncio.run waits for that
    executor's threads when it ends, so Ctrl-C (which cancels the command) would hang on a
    prompt still blocked reading the terminal. A daemon thread is simply left behind."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()

    def settle(ok, value):
        if not done.done():
            (done.set_result if ok else done.set_exception)(value)

    def work():
        try:
            result = (True, fn(*args, **kw))
        except BaseException as e:  # noqa: BLE001 - handed to the awaiting coroutine
            result = (False, e)
        try:
            loop.call_soon_threadsafe(settle, *result)
        except RuntimeError:
            pass  # the loop is gone (the command was interrupted): nobody wants the answer

    threading.Thread(target=work, name="pumpctl-prompt", daemon=True).start()
    return await done


async def ask_yes(opts, question):
    if opts.yes:
        return True
    try:
        return await _in_thread(click.confirm, question, default=False)
    except click.exceptions.Abort:
        return False
    except KeyboardInterrupt:
        raise _cancelled("interrupted at the question") from None


async def ask_value(opts, given, question, parse):
    """An option's value, or the user's answer; parse(text) raises Failure if it is wrong."""
    if given is not None:
        return parse(given)
    if opts.yes:
        raise Failure("%s: give it as an option when using --yes." % question, EXIT_USAGE)
    try:
        text = await _in_thread(click.prompt, question, type=str)
    except (click.exceptions.Abort, KeyboardInterrupt):
        raise _cancelled("no answer was given") from None
    return parse(text)


def _ml_to_nl(text, what):
    try:
        nl = SC.decimal(text, 6, what)
    except SC.ScenarioError as e:
        raise Failure("The %s is not valid: %s." % (what, e), EXIT_USAGE) from None
    if nl < 0:
        raise Failure("The %s cannot be negative." % what, EXIT_USAGE)
    if nl > U32_MAX:
        raise Failure("The %s is too large: at most %s mL." % (what, D.ml(U32_MAX)), EXIT_USAGE)
    return nl


# ---- the session ------------------------------------------------------------------------


class PumpLink:
    """Connect, encrypt with the bond, check the pump is the key file's, authenticate the key
    file's role; on the way out end the session, save the command counter, disconnect."""

    def __init__(self, opts, clinician=False, what=None):
        self.opts = opts
        self.pump_id, self.role, self.key, self.counter = opts.key()
        if clinician and self.role != K.CLINICIAN:
            raise Failure("%s needs the clinician's key file; %s is the %s's." % (
                what, opts.key_path, K.ROLE_NAMES[self.role]), EXIT_USAGE)  # fmt: skip
        self.gatt = None
        self.session = None

    async def __aenter__(self):
        self.gatt = self.opts.gatt()
        await self.gatt.open()
        try:
            await self.gatt.connect()
            await self.gatt.secure()
            await self.gatt.setup()
            serial = (await self.gatt.read(G.DEVICE_INFO_SERIAL)).decode(errors="replace")
            if serial != self.pump_id.decode(errors="replace"):
                raise Failure("The key file %s is for pump %s, but this pump is %s." % (
                    self.opts.key_path, self.pump_id.decode(errors="replace"), serial),
                    EXIT_USAGE)  # fmt: skip
            self.session = LS.Session(self.gatt, self.pump_id, self.role, self.key,
                                      self.counter, self.opts.timeout_s)  # fmt: skip
            await self.session.start()
            await self.session.login(self._auth_refused)
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc):
        await self.close()

    def _auth_refused(self, frame):
        try:
            body, _n = W.unseal(bytes(frame))
        except W.Bad:
            return  # the client's own check gives the sentence
        if len(body) != 3 + W.PUMP_PROOF_LEN + 4 or W.op_of(body) != K.AUTH_RESULT:
            return
        result = body[2]
        role = K.ROLE_NAMES[self.role]
        if result == K.SUCCESS:
            return
        if result == K.BAD_MAC:
            raise Failure("The pump did not accept the %s key in %s: it is not this pump's key "
                          "(was the pump provisioned again?)." % (role, self.opts.key_path),
                          EXIT_REFUSED)  # fmt: skip
        if result == K.LOCKED_OUT:
            raise Failure("The pump refuses sessions for a while after repeated wrong keys: "
                          "wait a few minutes and try again.", EXIT_REFUSED)  # fmt: skip
        if result == K.BAD_OPERAND:
            raise Failure("The pump has no %s key (its keys file lacks that role)." % role,
                          EXIT_REFUSED)  # fmt: skip
        raise Failure("The pump refused the session (%s)." % K.RESULT_NAMES.get(
            result, "code 0x%02X" % result), EXIT_LINK)  # fmt: skip

    async def close(self):
        try:
            if self.session is not None:
                self._save_counter()
                if self.session.client.sk is not None and self.gatt is not None:
                    try:
                        ch = SV.CH_AUTH_CP
                        q = self.session.queues[ch]
                        await asyncio.wait_for(self.gatt.write(LS.uuid_of(ch),
                                                               self.session.client.seal(
                            ch, struct.pack("<H", K.AUTH_END))), 2.0)  # fmt: skip
                        await asyncio.wait_for(q.get(), 2.0)
                    except (G.LinkError, TimeoutError):
                        pass  # the disconnection ends the session anyway
        finally:
            self.session = None
            if self.gatt is not None:
                g = self.gatt
                self.gatt = None
                await g.close()

    def _save_counter(self):
        n = self.session.client.counter
        if n > self.counter:
            P.save_counter(self.opts.key_path, n)
            self.counter = n

    async def ask(self, what, ch, op, operand=b"", check=True):
        reply = await self.session.ask(ch, op, operand)
        self._save_counter()
        if check and not reply.ok:
            raise refusal(what, reply)
        return reply

    async def status(self):
        return D.status((await self.ask("the status", SV.CH_STATUS_CP, K.GET_STATUS)).data)

    async def programmes(self):
        reply = await self.ask("the programme", SV.CH_STATUS_CP, K.GET_PROGRAMME)
        return D.programmes(reply.data)

    async def alarms(self):
        return D.alarms((await self.ask("the alarms", SV.CH_STATUS_CP, K.GET_ALARMS)).data)

    async def strength(self):
        """(status, running programme, the strength a new programme must name)."""
        st = await self.status()
        running, _staged = await self.programmes()
        return st, running, next_strength(st, running)

    async def stage(self, what, rx, confirm):
        """STAGE rx; the reply unchecked (the caller decides on NEEDS_CONFIRM)."""
        return await self.ask(what, SV.CH_COMMAND_CP, K.STAGE,
                              W.encode_rx(rx) + bytes((W.flag(confirm),)), check=False)

    @staticmethod
    def needs_confirm(reply):
        """Whether a STAGE reply is the pump asking for a large increase to be confirmed."""
        reason = reply.reason()
        return not reply.ok and reason is not None and reason[0] == R.NEEDS_CONFIRM

    @staticmethod
    def staged_echo(what, reply, rx):
        """(running, staged) from a STAGE reply; a refusal, or an echo that is not rx, raises."""
        if not reply.ok:
            raise refusal(what, reply)
        running, staged = D.programmes(reply.data)
        if staged is None or staged[0] != rx:
            raise ProtocolError("The pump staged something other than what was sent.")
        return running, staged

    async def commit(self, crc, confirm):
        await self.ask("the commit", SV.CH_COMMAND_CP, K.COMMIT,
                       struct.pack("<I", crc) + bytes((W.flag(confirm),)))

    async def clinician_bolus(self, dose_ng, duration_s):
        await self.ask("the clinician bolus", SV.CH_COMMAND_CP, K.CLINICIAN_BOLUS,
                       struct.pack("<II", dose_ng, duration_s))

    async def count(self, first, last):
        reply = await self.ask("the history count", SV.CH_RACP, K.RACP_COUNT,
                               struct.pack("<II", first, last))  # fmt: skip
        if len(reply.data) != 4:
            raise D.DataError("The pump's record count is not 4 bytes.")
        return struct.unpack("<I", reply.data)[0]

    async def last_seq(self):
        """The sequence number of the newest record (0 if none), from counts alone."""
        n = await self.count(1, SEQ_MAX)
        if n == 0:
            return 0
        c = await self.count(1, n)
        if c > 0:
            return n + (n - c)  # the records kept run from n - c + 1 to that
        # count(1, lo) < n: the newest is above lo. hi stops at SEQ_MAX (the field's top),
        # where the count is n by definition.
        lo, hi = n, min(2 * n, SEQ_MAX)
        while await self.count(1, hi) < n:
            lo, hi = hi, min(2 * hi, SEQ_MAX)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if await self.count(1, mid) < n:
                lo = mid
            else:
                hi = mid
        return hi

    async def report(self, first, last, progress=None):
        """The history records first..last as one checked reply; progress(records_so_far)."""
        s = self.session
        ch = SV.CH_RACP
        data_ch = SV.CH_HISTORY_DATA
        await s.write(ch, s.client.command(ch, K.RACP_REPORT, struct.pack("<II", first, last)))
        rq = s.queues[ch]
        dq = s.queues[data_ch]
        loop = asyncio.get_running_loop()
        quiet_since = loop.time()
        seen = bytearray()
        at = 0
        n = 0
        while True:
            got = False
            while not dq.empty():
                frame = dq.get_nowait()
                s.client.record(data_ch, frame)
                seen.extend(W.unseal(frame)[0])
                got = True
            while progress is not None and len(seen) - at >= 16:
                try:
                    at += C.record_length(seen, at)
                except C.FormatError:
                    break  # not all of the record is in yet (or it is bad: checked below)
                n += 1
                progress(n)
            if not rq.empty():
                frame = rq.get_nowait()
                while not dq.empty():  # records sent before the response, still queued
                    s.client.record(data_ch, dq.get_nowait())
                break
            if got:
                quiet_since = loop.time()
            elif loop.time() - quiet_since > self.opts.timeout_s:
                raise ProtocolError("The pump stopped sending the history.")
            await asyncio.sleep(0.005)
        reply = s.client.response(ch, frame, data_ch)
        self._save_counter()
        if not reply.ok:
            raise refusal("the history", reply)
        return reply


def refusal(what, reply):
    code = EXIT_REFUSED if reply.result in _REFUSALS else EXIT_LINK
    return Failure(D.refusal_text(what, reply), code)


def run(coro):
    """Run a command's coroutine; every failure becomes one sentence and an exit code."""
    try:
        return asyncio.run(coro)
    except Failure as e:
        _fail(str(e), e.code)
    except G.Declined as e:
        _fail(str(e), EXIT_CANCELLED)
    except G.LinkError as e:
        _fail(str(e), EXIT_LINK)
    except ProtocolError as e:
        _fail(str(e), EXIT_LINK)
    except D.DataError as e:
        _fail(str(e), EXIT_LINK)
    except P.ProvisionError as e:
        _fail(str(e), EXIT_USAGE)
    except KeyboardInterrupt:
        _fail("Interrupted.", EXIT_CANCELLED)
    except click.exceptions.ClickException:
        raise
    except Exception as e:  # noqa: BLE001 - a bug must still be one sentence, not a traceback
        _fail("pumpctl failed unexpectedly (%s: %s); please report it." % (type(e).__name__, e),
              EXIT_BUG)  # fmt: skip


def _fail(message, code):
    click.echo("pumpctl: " + message, err=True)
    raise click.exceptions.Exit(code)


def checked(fn, *args):
    """fn(*args) outside the radio's coroutine, its Failure as the one sentence."""
    try:
        return fn(*args)
    except Failure as e:
        _fail(str(e), e.code)


# ---- the command line ---------------------------------------------------------------------


class _OneLineErrors(click.Group):
    """Click's own usage errors (an unknown option, a missing argument) as pumpctl's one line,
    not click's three (usage, hint, error)."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, False, **extra)
        except click.exceptions.NoArgsIsHelpError as e:  # `pumpctl` alone: its help
            click.echo(e.format_message(), err=True)
            sys.exit(EXIT_USAGE)
        except click.UsageError as e:
            click.echo("pumpctl: " + usage_sentence(e), err=True)
            sys.exit(EXIT_USAGE)
        except click.ClickException as e:
            click.echo("pumpctl: %s" % e.format_message(), err=True)
            sys.exit(e.exit_code)
        except click.Abort:
            click.echo("pumpctl: Interrupted.", err=True)
            sys.exit(EXIT_CANCELLED)
        sys.exit(rv if isinstance(rv, int) else 0)


@click.group(cls=_OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--transport", type=click.Choice(["sim", "ble"]), default="sim", show_default=True,
              envvar="PUMPCTL_TRANSPORT",
              help="sim: a virtual pump (make sim-radio); ble: a real pump over this computer's "
                   "Bluetooth.")  # fmt: skip
@click.option("--address", envvar="PUMPCTL_ADDRESS",
              help="sim: host:port of the virtual pump [%s]; ble: the pump's address or "
                   "advertised name [ITB]." % DEFAULT_SIM)  # fmt: skip
@click.option("--key", "key_path", envvar="PUMPCTL_KEY", metavar="FILE",
              help="the key file from provisioning (its counter is raised after each session).")
@click.option("--bonds", "bond_file", envvar="PUMPCTL_BONDS", metavar="FILE",
              help="sim: the file keeping this programmer's bonds "
                   "[~/.local/share/itb-pumpctl/bonds.json].")  # fmt: skip
@click.option("--yes", "-y", is_flag=True, help="answer yes to every question (for scripts).")
@click.option("--timeout", "timeout_s", type=float, default=10.0, show_default=True,
              help="seconds to wait for each answer from the pump.")  # fmt: skip
@click.pass_context
def cli(ctx, transport, address, key_path, bond_file, yes, timeout_s):
    """The clinician programmer for the ITB bench-prototype pump (never for use in humans)."""
    if not timeout_s > 0:
        _fail("--timeout must be above zero.", EXIT_USAGE)
    ctx.obj = Options(transport, address, key_path, bond_file, yes, timeout_s)


pass_opts = click.make_pass_decorator(Options)


@cli.command()
@click.option("--seconds", type=float, default=3.0, show_default=True, help="how long to listen.")
@pass_opts
def scan(opts, seconds):
    """List the devices advertising nearby (a pump advertises as ITB)."""

    async def go():
        g = opts.gatt()
        await g.open()
        try:
            return await g.scan(seconds)
        finally:
            await g.close()

    found = run(go())
    if not found:
        _fail("No device advertised within %s s." % seconds, EXIT_LINK)
    t = Table("address", "name", "RSSI (dBm)", title="Advertising devices")
    for address, name, rssi in found:
        t.add_row(address, name + ("  (an ITB pump)" if name == G.PUMP_NAME else ""),
                  str(rssi))  # fmt: skip
    opts.out.print(t)


@cli.command()
@pass_opts
def pair(opts):
    """Pair with the pump (its pairing window must be open: press its button)."""

    async def confirm(number):
        opts.say("Pairing number: %s (the pump logs it on its console)." % number)
        return await ask_yes(opts, "Does the pump show %s?" % number)

    async def go():
        g = opts.gatt(confirm)
        await g.open()
        try:
            await g.connect()
            await g.pair()
            await g.setup()
            return (await g.read(G.DEVICE_INFO_SERIAL)).decode(errors="replace"), g
        finally:
            await g.close()

    serial, g = run(go())
    where = getattr(g, "bond_file", None)
    opts.say("Paired with pump %s." % serial)
    if where is not None:
        opts.say("The bond is kept in %s." % where)
    if opts.key_path:
        pump_id = checked(opts.key)[0].decode(errors="replace")
        if pump_id != serial:
            _fail("The key file %s is for pump %s, not this one (%s)." % (
                opts.key_path, pump_id, serial), EXIT_USAGE)  # fmt: skip


@cli.command()
@pass_opts
def status(opts):
    """The pump's therapy, reservoir, programme and alarms."""

    async def go():
        async with PumpLink(opts) as p:
            st = await p.status()
            running, staged = await p.programmes()
            alarms = await p.alarms()
            try:
                battery = (await p.gatt.read(BATTERY_LEVEL))[0]
            except (G.LinkError, IndexError):
                battery = None
            return p, st, running, staged, alarms, battery

    p, st, running, staged, alarms, battery = run(go())
    conc = st["conc"]
    t = Table(show_header=False, title="Pump %s (%s key)" % (
        p.pump_id.decode(errors="replace"), K.ROLE_NAMES[p.role]))  # fmt: skip
    t.add_column(style="bold")
    t.add_column()
    t.add_row("therapy", st["state_text"])
    t.add_row("rate now", "%s µg/day (%s µL/h)" % (D.ug(st["rate_ng_per_day"]),
                                                 D.ul_per_h(st["rate_ng_per_day"], conc)))
    after = next_strength(st, running)
    t.add_row("reservoir", "%s mL at %d µg/mL%s" % (
        D.ml(st["reservoir_nl"]), conc,
        "" if after == conc else " (%d µg/mL after the bridge bolus)" % after))  # fmt: skip
    if running is not None:
        rx, daily, _crc = running
        t.add_row("programme", "\n".join(D.step_lines(rx)))
        t.add_row("periodic boluses", "\n".join(D.periodic_lines(rx)))
        t.add_row("patient bolus", D.patient_line(rx))
        t.add_row("daily dose", "%s µg (%s mL/day)" % (
            D.ug(daily), D.decimal_text(D.nl_per_day(daily, conc) / 1_000_000, 3)))  # fmt: skip
        left = D.lasts(st["reservoir_nl"], daily, conc, datetime.date.today())
        if left is not None:
            t.add_row("reservoir lasts", "%s days, until %s (at the programme)" % (
                D.decimal_text(left[0], 1), left[1].isoformat()))  # fmt: skip
    else:
        t.add_row("programme", "none")
    t.add_row("staged", "a programme is staged (not running)" if staged else "nothing")
    t.add_row("flags", "\n".join(st["flag_texts"]) or "none")
    if alarms:
        t.add_row("alarms", "\n".join(_alarm_line(a) for a in alarms))
    else:
        t.add_row("alarms", "none")
    if battery is not None:
        t.add_row("battery", "%d %%" % battery)
    opts.out.print(t)


def next_strength(st, running):
    """The strength the pump delivers once any bridge bolus is done: the running programme's
    (the status shows the strength in the line, the old one during a bridge)."""
    return running[0].conc_ug_per_ml if running is not None else st["conc"]


def _alarm_line(a):
    state = []
    state.append("present" if a["present"] else "condition gone")
    state.append("acknowledged" if a["acknowledged"] else "not acknowledged")
    if a["snoozed_until_ms"]:
        state.append("snoozed")
    return "%s [%s]: %s, %s" % (a["text"], a["name"], a["priority"], ", ".join(state))


# ---- history ---------------------------------------------------------------------------


@cli.command()
@click.option("--from", "first", type=int, default=1, show_default=True,
              help="the first sequence number to download.")  # fmt: skip
@click.option("--rows", type=int, default=40, show_default=True,
              help="how many of the newest records the table shows (exports have all).")
@click.option("--csv", "csv_path", metavar="FILE", help="also write the records as CSV.")
@click.option("--json", "json_path", metavar="FILE", help="also write the records as JSON.")
@pass_opts
def history(opts, first, rows, csv_path, json_path):
    """Download the pump's event log (checked record by record and along its hash chain)."""
    if not 1 <= first <= SEQ_MAX:
        _fail("--from must be a sequence number from 1 to %d." % SEQ_MAX, EXIT_USAGE)

    async def go():
        async with PumpLink(opts) as p:
            total = await p.count(first, SEQ_MAX)
            with Progress(TextColumn("downloading the history"), BarColumn(),
                          MofNCompleteColumn(), console=Console(stderr=True),
                          transient=True) as bar:  # fmt: skip
                task = bar.add_task("history", total=total)
                reply = await p.report(first, SEQ_MAX,
                                       lambda n: bar.update(task, completed=min(n, total)))
        return D.history(reply.data)

    records, problems = run(go())
    for path, write in ((csv_path, _write_csv), (json_path, _write_json)):
        if path:
            try:
                write(path, records)
            except OSError as e:
                _fail("Cannot write %s: %s." % (path, e.strerror or e), EXIT_USAGE)
    shown = records[-rows:] if rows > 0 else []
    t = Table("seq", "time", "event", "details", title="History: %d records" % len(records))
    for r in shown:
        t.add_row(str(r["seq"]), r["time"], r["event"], D.args_text(r["event"], r["args"]))
    opts.out.print(t)
    if len(shown) < len(records):
        opts.say("%d older records not shown (--rows, or export with --csv/--json)."
                 % (len(records) - len(shown)))  # fmt: skip
    for path in (csv_path, json_path):
        if path:
            opts.say("Wrote %d records to %s." % (len(records), path))
    if problems:
        _fail("The history does not check out: %s." % "; ".join(problems), EXIT_LINK)


def _write_csv(path, records):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["seq", "wall_ms", "time", "event", "args"])
        for r in records:
            w.writerow([r["seq"], r["wall_ms"], r["time"], r["event"],
                        json.dumps(r["args"], separators=(",", ":"))])  # fmt: skip


def _write_json(path, records):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(records, f, indent=1)
        f.write("\n")


# ---- programme ---------------------------------------------------------------------------


def load_prescription(path):
    """(programme object, strength or None) from a prescription file: a scenario file like
    examples/demo.json (its strength and programme), {"strength_ug_per_ml", "programme"}, or a
    bare programme {"steps", "periodic", "patient"}. Checked now, built at the pump's
    strength later."""
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except OSError as e:
        raise Failure("Cannot read the prescription file %s: %s." % (path, e.strerror or e),
                      EXIT_USAGE) from None  # fmt: skip
    except ValueError:
        raise Failure("The prescription file %s is not valid JSON." % path, EXIT_USAGE) from None
    if not isinstance(obj, dict):
        raise Failure("The prescription file %s must hold a JSON object." % path, EXIT_USAGE)
    prog = obj.get("programme", obj if "steps" in obj else None)
    if prog is None:
        raise Failure("The prescription file %s has no programme (its steps)." % path,
                      EXIT_USAGE)  # fmt: skip
    strength = obj.get("strength_ug_per_ml")
    if strength is not None and not RX.conc_allowed(strength):
        raise Failure("The prescription file %s: strength_ug_per_ml must be one of %s." % (
            path, ", ".join(str(c) for c in L.CONCENTRATIONS_UG_PER_ML)), EXIT_USAGE)
        # fmt: skip
    build(prog, strength or L.CONCENTRATIONS_UG_PER_ML[0], path)  # check it now
    return prog, strength


def build(prog, strength, path):
    try:
        rx = SC._programme(prog, strength)
    except SC.ScenarioError as e:
        raise Failure("The prescription file %s is not valid: %s." % (path, e),
                      EXIT_USAGE) from None  # fmt: skip
    problem = _unsendable(rx)
    if problem:
        raise Failure("The prescription file %s is not valid: %s." % (path, problem), EXIT_USAGE)
    return rx


def _unsendable(rx):
    """Why rx cannot be put in the protocol's fields (docs/protocol.md, "Prescription"), or
    None. The pump judges the values themselves; these only have to fit."""
    if len(rx.steps) > 255 or len(rx.periodic) > 255:
        return "a programme has at most 255 steps and 255 periodic boluses"
    amounts = [("programme.steps[%d].ug_per_day" % i, rate) for i, (_s, rate)
               in enumerate(rx.steps)]  # fmt: skip
    amounts += [("programme.periodic[%d].dose_ug" % i, dose) for i, (_s, dose, _d)
                in enumerate(rx.periodic)]  # fmt: skip
    amounts.append(("programme.patient.dose_ug", rx.patient_dose_ng))
    for where, ng in amounts:
        if not 0 <= ng <= U32_MAX:
            return "%s must be from 0 to %s" % (where, D.ug(U32_MAX))
    if not 0 <= rx.patient_max_per_24h <= 255:
        return "programme.patient.max_per_24h must be from 0 to 255"
    return None


def compare_table(old, new, reservoir_nl):
    """The running and the new programme side by side, with volume rates at each strength,
    daily doses and how long the reservoir lasts at each."""
    t = Table("", "running now", "new", title="Programme change")
    t.columns[0].style = "bold"

    def col(entry, fn):
        return "none" if entry is None else fn(*entry)

    today = datetime.date.today()

    def lasts(rx, daily, _crc):
        left = D.lasts(reservoir_nl, daily, rx.conc_ug_per_ml, today)
        worst = D.lasts(reservoir_nl, D.worst_daily_ng(rx), rx.conc_ug_per_ml, today)
        if left is None:
            return "-"
        text = "empty by %s (%s days)" % (left[1].isoformat(), D.decimal_text(left[0], 1))
        if worst is not None and worst[1] != left[1]:
            text += "\nby %s with every patient bolus" % worst[1].isoformat()
        return text

    rows = (
        ("strength", lambda rx, d, c: "%d µg/mL" % rx.conc_ug_per_ml),
        ("steps", lambda rx, d, c: "\n".join(D.step_lines(rx))),
        ("periodic boluses", lambda rx, d, c: "\n".join(D.periodic_lines(rx))),
        ("patient bolus", lambda rx, d, c: D.patient_line(rx)),
        ("daily dose", lambda rx, d, c: "%s µg" % D.ug(d)),
        ("daily volume", lambda rx, d, c: "%s mL" % D.decimal_text(
            D.nl_per_day(d, rx.conc_ug_per_ml) / 1_000_000, 3)),
        ("refill: %s mL left" % D.ml(reservoir_nl), lasts),
    )  # fmt: skip
    for name, fn in rows:
        t.add_row(name, col(old, fn), col(new, fn))
    return t


@cli.command()
@click.argument("rx_file", metavar="RX.json")
@click.option("--confirm-increase", is_flag=True,
              help="confirm a daily dose increase beyond the pump's step limit (needed with "
                   "--yes; asked otherwise).")  # fmt: skip
@pass_opts
def program(opts, rx_file, confirm_increase):
    """Stage a new programme from a prescription file, review it beside the running one, and
    commit it if you confirm."""
    prog, strength = checked(load_prescription, rx_file)

    async def go():
        async with PumpLink(opts, clinician=True, what="Changing the programme") as p:
            st, _running, conc = await p.strength()
            rx = build(prog, strength or conc, rx_file)
            confirm = confirm_increase
            reply = await p.stage("the new programme", rx, confirm)
            if p.needs_confirm(reply):
                opts.say("The new daily dose rises by more than the pump's step limit.",
                         style="bold yellow")  # fmt: skip
                if opts.yes and not confirm_increase:
                    raise Failure("The pump needs the increase confirmed: add "
                                  "--confirm-increase.", EXIT_REFUSED)  # fmt: skip
                if not await ask_yes(opts, "Confirm the large increase?"):
                    raise _cancelled("the pump keeps its running programme")
                confirm = True
                reply = await p.stage("the new programme", rx, confirm)
            running, staged = p.staged_echo("the new programme", reply, rx)
            opts.out.print(compare_table(running, staged, st["reservoir_nl"]))
            if not await ask_yes(opts, "Commit the new programme?"):
                raise _cancelled("the pump keeps running its programme (the new one stays "
                                 "staged, unused)")  # fmt: skip
            await p.commit(staged[2], confirm)
            return staged

    staged = run(go())
    opts.say("Committed: the pump runs the new programme (daily dose %s µg)." % D.ug(staged[1]))


# ---- bolus -------------------------------------------------------------------------------


@cli.command()
@click.option("--dose-ug", metavar="µG", help="a clinician bolus of this dose (with --minutes).")
@click.option("--minutes", type=int, help="the clinician bolus's duration.")
@pass_opts
def bolus(opts, dose_ug, minutes):
    """The programme's patient bolus, or a clinician bolus with --dose-ug and --minutes."""
    clinician = dose_ug is not None or minutes is not None
    if clinician and (dose_ug is None or minutes is None):
        _fail("A clinician bolus needs both --dose-ug and --minutes.", EXIT_USAGE)
    if clinician:
        try:
            dose_ng = SC.decimal(dose_ug, 3, "--dose-ug")
        except SC.ScenarioError as e:
            _fail("The bolus dose is not valid: %s." % e, EXIT_USAGE)
        if dose_ng <= 0 or minutes <= 0:
            _fail("The bolus dose and duration must be above zero.", EXIT_USAGE)
        if dose_ng > U32_MAX:
            _fail("The bolus dose is too large: at most %s µg." % D.ug(U32_MAX), EXIT_USAGE)
        if minutes * 60 > U32_MAX:
            _fail("The bolus duration is too long: at most %d min." % (U32_MAX // 60),
                  EXIT_USAGE)  # fmt: skip

    async def go():
        async with PumpLink(opts, clinician=clinician, what="A clinician bolus") as p:
            if clinician:
                if not await ask_yes(opts, "Give a clinician bolus of %s µg over %d min?" % (
                        D.ug(dose_ng), minutes)):  # fmt: skip
                    raise _cancelled("no bolus was given")
                await p.clinician_bolus(dose_ng, minutes * 60)
                return "Clinician bolus started: %s µg over %d min." % (D.ug(dose_ng), minutes)
            running, _staged = await p.programmes()
            await p.ask("the patient bolus", SV.CH_COMMAND_CP, K.PATIENT_BOLUS)
            if running is None:
                return "Patient bolus started."
            rx = running[0]
            return "Patient bolus started: %s µg over %s min." % (
                D.ug(rx.patient_dose_ng), D.decimal_text(D.Fraction(rx.patient_duration_s, 60),
                                                         1))  # fmt: skip

    opts.say(run(go()))


# ---- refill ------------------------------------------------------------------------------


@cli.command()
@click.option("--withdrawn-ml", help="the volume withdrawn (asked if not given).")
@click.option("--fill-ml", help="the new volume put in (asked if not given).")
@click.option("--strength", type=int, help="the new fill's strength in µg/mL [the current one].")
@pass_opts
def refill(opts, withdrawn_ml, fill_ml, strength):
    """The guided refill: withdrawn volume and the discrepancy check, the new volume and
    strength, the bridge bolus, then commit (or abandon: nothing changes)."""
    if opts.yes and (withdrawn_ml is None or fill_ml is None):
        _fail("With --yes, give --withdrawn-ml and --fill-ml.", EXIT_USAGE)
    # Volumes given as options are checked before the refill starts (the same checks run
    # again on the answers to the questions).
    if withdrawn_ml is not None:
        checked(_ml_to_nl, withdrawn_ml, "withdrawn volume")
    if fill_ml is not None:
        checked(_ml_to_nl, fill_ml, "fill volume")
    if strength is not None:
        checked(_strength_allowed, strength)

    async def go():
        async with PumpLink(opts, clinician=True, what="A refill") as p:
            st = await p.status()
            running, _staged = await p.programmes()
            old_conc = next_strength(st, running)
            opts.say("Step 1: empty the reservoir and measure what you withdrew. The pump "
                     "expects about %s mL." % D.ml(st["reservoir_nl"]))  # fmt: skip
            withdrawn = await ask_value(opts, withdrawn_ml, "Volume withdrawn (mL)",
                                        lambda t: _ml_to_nl(t, "withdrawn volume"))
            await p.ask("the refill's withdrawn volume", SV.CH_COMMAND_CP, K.REFILL_BEGIN,
                        struct.pack("<I", withdrawn))  # fmt: skip
            try:
                return await _refill_steps(opts, p, old_conc, running, fill_ml, strength)
            except BaseException:
                await _abandon(p)
                raise

    opts.say(run(go()))


async def _abandon(p):
    try:
        await p.ask("abandoning the refill", SV.CH_COMMAND_CP, K.REFILL_ABANDON)
        p.opts.say("The refill was abandoned: the pump's reservoir and strength are as before.")
    except (Failure, G.LinkError, ProtocolError) as e:
        p.opts.say("The refill could not be abandoned (%s); the pump drops it after an hour."
                   % str(e).rstrip("."))  # fmt: skip


async def _refill_steps(opts, p, old_conc, running, fill_ml, strength):
    info = D.refill((await p.ask("the refill check", SV.CH_STATUS_CP, K.GET_REFILL)).data)
    if info is None:
        raise ProtocolError("The pump shows no open refill after its first steps.")
    diff = info["difference_nl"]
    opts.say("Step 2: the discrepancy check. Withdrawn %s mL, expected %s mL, difference %s mL "
             "(tolerance %s mL)." % (D.ml(info["withdrawn_nl"]), D.ml(info["expected_nl"]),
                                     D.ml(diff), D.ml(info["tolerance_nl"])))  # fmt: skip
    if info["discrepancy"]:
        more = "more" if diff > 0 else "less"
        opts.say("DISCREPANCY: %s mL %s came out than the pump expected: suspected %s-infusion. "
                 "Check the patient and the catheter; the pump raises its discrepancy alarm "
                 "whether the refill is committed or abandoned."
                 % (D.ml(abs(diff)), more, "under" if diff > 0 else "over"),
                 style="bold red")  # fmt: skip
        if not await ask_yes(opts, "Go on with the refill despite the discrepancy?"):
            raise _cancelled("the refill was stopped at the discrepancy")
    else:
        opts.say("Within tolerance.")
    fill = await ask_value(opts, fill_ml, "Step 3: new volume put in (mL)",
                           lambda t: _ml_to_nl(t, "fill volume"))  # fmt: skip
    if fill <= 0:
        raise Failure("The fill volume must be above zero.", EXIT_USAGE)
    conc = old_conc if strength is None else strength
    _strength_allowed(conc)
    await p.ask("the new fill", SV.CH_COMMAND_CP, K.REFILL_FILL, struct.pack("<IH", fill, conc))
    opts.say("New fill: %s mL at %d µg/mL." % (D.ml(fill), conc))
    if conc != old_conc:
        opts.say("Step 4: the bridge bolus. The pump's tubing and catheter still hold the old "
                 "drug at %d µg/mL: the pump first delivers that dead volume at the old strength, "
                 "then %d µg/mL applies. The doses stay in µg/day; the volume rates change."
                 % (old_conc, conc), style="bold yellow")  # fmt: skip
        if running is not None:
            for line in _rates_change(running[0], old_conc, conc):
                opts.say("  " + line)
    else:
        opts.say("Step 4: no bridge bolus (the strength does not change).")
    if not await ask_yes(opts, "Commit the refill?"):
        raise _cancelled("the refill was not committed")
    await p.ask("the refill", SV.CH_COMMAND_CP, K.REFILL_COMMIT)
    p.opts.say("Refill committed: %s mL at %d µg/mL." % (D.ml(fill), conc))
    return await _bridge_report(p, conc != old_conc)


def _strength_allowed(conc):
    if not RX.conc_allowed(conc):
        raise Failure("The strength must be one of %s µg/mL." % ", ".join(
            str(c) for c in L.CONCENTRATIONS_UG_PER_ML), EXIT_USAGE)  # fmt: skip


def _rates_change(rx, old_conc, conc):
    out = []
    for start, rate in rx.steps:
        out.append("from %s: %s µg/day, %s µL/h now, %s µL/h after the bridge" % (
            D.hhmm(start), D.ug(rate), D.ul_per_h(rate, old_conc), D.ul_per_h(rate, conc)))
        # fmt: skip
    return out


async def _bridge_report(p, bridged):
    """The pump's own record of the refill (from the end of its history)."""
    last = await p.last_seq()
    reply = await p.report(max(1, last - 40), SEQ_MAX)
    records, _problems = D.history(reply.data)
    done = [r for r in records if r["event"] == "refill"]
    if not done:
        return "The pump's log does not show the refill yet."
    args = done[-1]["args"]
    pulses = args[5] if len(args) > 5 else 0
    text = "The pump logged the refill"
    if pulses:
        text += ": bridge bolus of %d pulses at %d µg/mL, then %d µg/mL" % (pulses, args[3],
                                                                           args[4])
    elif bridged:
        text += " (no bridge pulses were needed)"
    if len(args) > 6 and args[6]:
        text += "; the discrepancy alarm is raised"
    return text + "."


# ---- alarms ------------------------------------------------------------------------------


@cli.group()
def alarms():
    """List, acknowledge, snooze and test the pump's alarms."""


@alarms.command("list")
@pass_opts
def alarms_list(opts):
    """The latched alarms, highest priority first."""

    async def go():
        async with PumpLink(opts) as p:
            return await p.alarms()

    found = run(go())
    if not found:
        opts.say("No alarms.")
        return
    t = Table("alarm", "name", "priority", "condition", "acknowledged", "snoozed")
    for a in found:
        t.add_row(a["text"], a["name"], a["priority"], "present" if a["present"] else "gone",
                  "yes" if a["acknowledged"] else "no",
                  "yes" if a["snoozed_until_ms"] else "no")  # fmt: skip
    opts.out.print(t)


def _alarm_code(name):
    if name not in D.ALARM_CODE_BY_NAME:
        _fail("Unknown alarm %r: one of %s." % (name, ", ".join(sorted(D.ALARM_CODE_BY_NAME))),
              EXIT_USAGE)  # fmt: skip
    return D.ALARM_CODE_BY_NAME[name]


@alarms.command("ack")
@click.argument("name")
@pass_opts
def alarms_ack(opts, name):
    """Acknowledge an alarm by its name (see `alarms list`), or `all`."""
    code = None if name == "all" else _alarm_code(name)

    async def go():
        async with PumpLink(opts) as p:
            codes = [code] if code is not None else [a["code"] for a in await p.alarms()
                                                     if not a["acknowledged"]]  # fmt: skip
            for c in codes:
                await p.ask("acknowledging %s" % D.alarm_text(c), SV.CH_COMMAND_CP, K.ACK_ALARM,
                            bytes((c,)))  # fmt: skip
            return codes

    codes = run(go())
    if not codes:
        opts.say("Nothing to acknowledge.")
    for c in codes:
        opts.say("Acknowledged: %s." % D.alarm_text(c))


@alarms.command("snooze")
@click.argument("name")
@click.option("--minutes", type=click.IntRange(1, 65535), default=15, show_default=True)
@pass_opts
def alarms_snooze(opts, name, minutes):
    """Silence an alarm for a while (at most 15 min high, 24 h medium, 7 days low)."""
    code = _alarm_code(name)

    async def go():
        async with PumpLink(opts) as p:
            await p.ask("snoozing %s" % D.alarm_text(code), SV.CH_COMMAND_CP, K.SNOOZE_ALARM,
                        struct.pack("<BH", code, minutes))  # fmt: skip

    run(go())
    opts.say("Snoozed for %d min: %s." % (minutes, D.alarm_text(code)))


@alarms.command("test")
@pass_opts
def alarms_test(opts):
    """Sound every alarm pattern once (the pump logs the test)."""

    async def go():
        async with PumpLink(opts, clinician=True, what="The alarm test") as p:
            await p.ask("the alarm test", SV.CH_COMMAND_CP, K.ALARM_TEST)

    run(go())
    opts.say("Alarm test started: listen for the high, medium and low patterns.")


# ---- clock -------------------------------------------------------------------------------


@cli.command("set-time")
@click.argument("when", required=False, metavar="['YYYY-MM-DD HH:MM']")
@pass_opts
def set_time(opts, when):
    """Set the pump's clock to this computer's local time, or to a given local time."""
    if when is None:
        now = datetime.datetime.now()
        wall_ms = D.local_wall_ms(now.replace(microsecond=0))
    else:
        try:
            wall_ms = SC.parse_start(when, "the time")
        except SC.ScenarioError as e:
            _fail("%s." % str(e).capitalize().rstrip("."), EXIT_USAGE)

    async def go():
        async with PumpLink(opts, clinician=True, what="Setting the clock") as p:
            if not await ask_yes(opts, "Set the pump's clock to %s?" % D.wall_text(wall_ms)):
                raise _cancelled("the clock was not set")
            await p.ask("the new time", SV.CH_COMMAND_CP, K.SET_CLOCK,
                        struct.pack("<Q", wall_ms))  # fmt: skip

    run(go())
    opts.say("The pump's clock is set to %s." % D.wall_text(wall_ms))


# ---- keys --------------------------------------------------------------------------------


@cli.group()
def keys():
    """Key provisioning for a new pump."""


@keys.command("new")
@click.option("--pump-id", required=True, help="the pump's identity (its serial).")
@click.option("--out", "out_dir", required=True, metavar="DIR", help="folder for the key files.")
@pass_opts
def keys_new(opts, pump_id, out_dir):
    """Make a new pump's role keys: the pump's keys file and one key file per role."""
    try:
        paths = P.provision(pump_id, out_dir)
    except P.ProvisionError as e:
        _fail(str(e), EXIT_USAGE)
    except OSError as e:
        _fail("Cannot write the key files in %s: %s." % (out_dir, e.strerror or e), EXIT_USAGE)
    for what, path in paths.items():
        opts.say("wrote %s (%s)" % (path, "the pump's keys file: copy it to the board"
                                    if what == "pump" else "the %s's key file" % what))
    opts.say("Copy the pump's file to the board with tools/provision.py --port, or "
             "`mpremote fs cp %s :%s`." % (paths["pump"], P.BOARD_PATH))  # fmt: skip


def main(argv=None):
    """The console script; exits with pumpctl's exit codes."""
    try:
        return cli.main(args=argv, prog_name="pumpctl")
    except Failure as e:
        click.echo("pumpctl: " + str(e), err=True)
        sys.exit(e.code)


if __name__ == "__main__":
    main()
