# The virtual pump's runner: the device application on the sim board's plant, through a scenario
# with faults, with a progress line per day and a report folder (docs/sim.md). Both runtimes.

import json
import os
import sys
import time

from boards.sim import board, vpump
from boards.sim import plant as PL
from boards.sim import scenario as SC
from boards.sim.hw import Lcg
from pump import alarms as A
from pump import battery as B
from pump import store as ST
from pump.intmath import fmt_milli, gcd

MIN = 60_000
HOUR = 3_600_000
DAY = 86_400_000
STEP_MS = 1_000  # between two requests of a clinician's session: each is saved before the next
USAGE = ("usage: main.py RX_FILE OUT_DIR [--days N] [--accel N|max] [--seed N] "
         "[--fault TIME:KIND[:ARG]]...")  # fmt: skip

# Event kinds of the timeline, in the order they run when due at the same ms.
_SAMPLE = 0
_DAY_END = 1
_FAULT = 2
_VISIT = 3
_REQUEST = 4
_BUTTON = 5


def say(line):
    sys.stdout.write(line + "\n")
    if hasattr(sys.stdout, "flush"):
        sys.stdout.flush()


def _now_ms():
    if hasattr(time, "ticks_ms"):
        return time.ticks_ms()
    return int(time.monotonic() * 1000)


def _elapsed(t0):
    if hasattr(time, "ticks_diff"):
        return time.ticks_diff(time.ticks_ms(), t0)
    return _now_ms() - t0


def _count(text, what, low, high):
    if text == "max" and what == "--accel":
        return 0
    if not text.isdigit() or not low <= int(text) <= high:
        raise SC.ScenarioError("%s must be a whole number from %d to %d, not %r" % (
            what, low, high, text))  # fmt: skip
    return int(text)


def parse_args(argv):
    opts = {"days": 30, "accel": 0, "seed": 1, "faults": []}
    pos = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in ("--days", "--accel", "--seed", "--fault"):
            if i + 1 >= len(argv):
                raise SC.ScenarioError("%s needs a value" % a)
            v = argv[i + 1]
            i += 2
            if a == "--fault":
                opts["faults"].append(SC.parse_fault(v, "--fault"))
            elif a == "--days":
                opts["days"] = _count(v, a, 1, 3650)
            elif a == "--accel":
                opts["accel"] = _count(v, a, 1, 10**9)
            else:
                opts["seed"] = _count(v, a, 0, 2**31 - 1)
        elif a.startswith("--"):
            raise SC.ScenarioError("unknown option %s; %s" % (a, USAGE))
        else:
            pos.append(a)
            i += 1
    if len(pos) != 2:
        raise SC.ScenarioError(USAGE)
    return pos[0], pos[1], opts


# ---- small formatting helpers (integers in, text out) ----


def dec(num, den, places):
    """num/den as a decimal with `places` decimals, rounded to nearest."""
    s = 10**places
    q = (2 * num * s + den) // (2 * den) if num >= 0 else -((-2 * num * s + den) // (2 * den))
    return fmt_milli(q, s, places)


def frac(num, den):
    g = gcd(num, den)
    return "%d/%d" % (num // g, den // g)


def span(ms):
    if ms % MIN == 0:
        return "%d min" % (ms // MIN)
    return "%d ms" % ms


def ml(nl):
    return dec(nl, 1_000_000, 2)


def _overlap_pg(s, e, dose_ng, a, b):
    # The part of a bolus [s, e) of dose_ng, spread evenly, that falls in [a, b), in pg.
    lo = s if s > a else a
    hi = e if e < b else b
    return dose_ng * 1000 * (hi - lo) // (e - s) if hi > lo else 0


class Obj:
    """A JSON object that keeps its keys in order (MicroPython's dict does not)."""

    def __init__(self, *pairs):
        self.pairs = list(pairs)

    def add(self, key, value):
        self.pairs.append((key, value))


class Num:
    """A JSON number written as given (an exact decimal made from integers)."""

    def __init__(self, text):
        self.text = text


def jdump(v, ind=""):
    if isinstance(v, Obj):
        if not v.pairs:
            return "{}"
        inner = ind + "  "
        items = [inner + json.dumps(k) + ": " + jdump(x, inner) for k, x in v.pairs]
        return "{\n" + ",\n".join(items) + "\n" + ind + "}"
    if isinstance(v, Num):
        return v.text
    if isinstance(v, (list, tuple)):
        if not v:
            return "[]"
        if all(not isinstance(x, (Obj, list, tuple)) for x in v):
            return "[" + ", ".join(jdump(x, ind) for x in v) + "]"
        inner = ind + "  "
        return "[\n" + ",\n".join(inner + jdump(x, inner) for x in v) + "\n" + ind + "]"
    return json.dumps(plain(v))


def plain(v):
    """A log argument as JSON can hold it: bytes (hashes) as hex."""
    if isinstance(v, (bytes, bytearray)):
        return "".join("%02x" % b for b in v)
    if isinstance(v, (list, tuple)):
        return [plain(x) for x in v]
    return v


def makedirs(path):
    at = ""
    for part in path.split("/"):
        at = at + part + "/" if part else (at or "/")
        if part:
            try:
                os.mkdir(at)
            except OSError:
                pass


# ---- the run ----


class Run:
    def __init__(self, sc, out, days, accel, seed, faults):
        self.sc = sc
        self.out = out
        self.days = days
        self.end = days * DAY
        self.accel = accel
        self.seed = seed
        self.faults = sorted(sc.faults + faults, key=lambda f: f[0])
        self.plant = PL.Plant()
        self.vp = vpump.VirtualPump(seed=seed, accel=accel, mech=self.plant)
        p = self.plant
        self.unit_den = p.unit_den
        self.pulse_u = p.pulse_u
        self.vol_dec = dec(p.pulse_u, p.unit_den, 6)
        self.vol_exact = frac(p.pulse_u, p.unit_den)
        self._dose_text = {}
        self.hours = days * 24
        self.bins = {}  # hour: [pulses, dose (units x ug/mL)] until its sample is taken
        self.day_acc = [0, 0, 0]  # pulses, dose, programmed pg of the day so far
        self.prog_pg = 0  # programmed, all run
        self.pulses = 0
        self.dose_num = 0
        self.prog_start = None  # loop ms the programme was accepted
        self.boluses = []  # (start, end, dose ng) of granted patient boluses not yet over
        self.granted = 0
        self.refused = {}
        self.day_granted = 0
        self.day_refused = 0
        self.refills = []
        self.fault_notes = []
        self.presses = 0
        self.tones = 0
        self.fill_i = 0
        self.boots_seen = 0

    # -- helpers --

    def wall(self, t):
        return self.sc.start_wall_ms + t

    def when(self, t):
        """'day D HH:MM' of a loop time: the day of the run (day 1 is its first 24 h) and the
        wall clock's time of day."""
        m = (self.sc.start_wall_ms + t) % DAY // MIN
        return "day %d %02d:%02d" % (t // DAY + 1, m // 60, m % 60)

    def submit(self, name, *args):
        return self.vp.submit(name, *args)

    def settle(self):
        # Let the pump save what it was just asked to do before the next request.
        self.advance(self.vp.loop.now + STEP_MS)

    def advance(self, t):
        self.vp.run_until(t)
        self.drain()
        self.report_boots()

    def drain(self):
        times = self.vp.delivered
        doses = self.plant.doses
        n = len(times)
        if n != len(doses):
            raise RuntimeError("the rig's record and the plant's disagree")
        if not n:
            return
        rows = []
        last = self.hours - 1
        for i in range(n):
            t = times[i]
            d = doses[i]
            h = t // HOUR
            if h > last:
                h = last
            b = self.bins.get(h)
            if b is None:
                b = self.bins[h] = [0, 0]
            b[0] += 1
            b[1] += d
            self.dose_num += d
            rows.append("%d,%s,%s,%s\n" % (t, self.vol_dec, self.vol_exact, self.dose_text(d)))
        self.csv.write("".join(rows))
        self.pulses += n
        times.clear()
        doses.clear()

    def drain_buzzer(self):
        # Count the finished tones and forget them, keeping a tone still sounding, so that the
        # record stays small however long the run.
        bz = self.vp.buzzer
        ch = bz.changes
        self.tones += len(bz.tones())
        keep = ch[-1:] if ch and ch[-1][1] else []
        ch.clear()
        ch.extend(keep)

    def dose_text(self, d):
        s = self._dose_text.get(d)
        if s is None:
            s = dec(d, self.unit_den * 1000, 6)
            if len(self._dose_text) < 64:
                self._dose_text[d] = s
        return s

    def report_boots(self):
        log = self.vp.boot_log
        while self.boots_seen < len(log):
            began, t, hw_cause, cause, source, late = log[self.boots_seen]
            self.boots_seen += 1
            if self.boots_seen == 1:
                continue
            late = "" if late is None else " (the %s task was late)" % late
            back = "" if t == began else ", power back after " + span(t - began)
            say("  %s  reset: %s%s%s; the pump found %s, state from %s" % (
                self.when(began), hw_cause, late, back, cause, source))  # fmt: skip

    # -- the clinician's first session --

    def commission(self):
        vp = self.vp
        vp.boot("power_on")
        self.boots_seen = 0
        self.settle()
        for what, name, args in SC.commissioning(self.sc, 0):
            if name == "set_clock":
                args = (self.wall(vp.loop.now),)
            elif name == "refill_fill":
                self.plant.refill(args[0], args[1])
            elif name == "program":
                self.acknowledge_all()
            bad = self.submit(name, *args)
            if bad is not None:
                raise SC.ScenarioError("the pump refuses %s: %s" % (what, bad.message()))
            self.settle()
        self.prog_start = vp.loop.now

    def acknowledge_all(self):
        # The clinician, through the programmer: every latched alarm not yet acknowledged.
        for cid, _n, _p, _present, acked, _s in self.vp.sup.alarms.active():
            if not acked:
                self.submit("acknowledge", cid)

    # -- the timeline --

    def timeline(self):
        """The events of the run, a day at a time (a long run never holds them all)."""
        sc = self.sc
        wall0 = sc.start_wall_ms
        t0 = self.vp.loop.now
        faults = self.faults
        fi = 0
        for d in range(self.days):
            lo = d * DAY
            hi = lo + DAY  # events in (lo, hi]
            ev = [(hi, _DAY_END, d + 1)]
            for k in range(d * 24 + 1, d * 24 + 25):
                ev.append((k * HOUR, _SAMPLE, None))
            while fi < len(faults) and faults[fi][0] <= hi:
                ev.append((faults[fi][0], _FAULT, faults[fi]))
                fi += 1
            # A day either side: a jittered request may cross midnight.
            for c in range((wall0 + lo) // DAY - 1, (wall0 + hi) // DAY + 2):
                base = c * DAY - wall0
                for i in range(len(sc.requests_min)):
                    j = 0
                    if sc.jitter_min:
                        # Drawn from the day and the request, so it is the same whichever
                        # window asks.
                        j = Lcg(self.seed * 7919 + c * 1009 + i).uniform(-sc.jitter_min,
                                                                          sc.jitter_min)
                    ev.append((base + (sc.requests_min[i] + j) * MIN, _REQUEST, None))
                for m in sc.button_min:
                    ev.append((base + m * MIN, _BUTTON, None))
                if sc.refill_at_min is not None:
                    ev.append((base + sc.refill_at_min * MIN, _VISIT, None))
            keep = []
            for e in ev:
                t = e[0]
                if e[1] <= _FAULT or (lo < t <= hi and t0 < t < self.end):
                    keep.append(e)
            keep.sort(key=lambda e: (e[0], e[1]))
            for e in keep:
                yield e

    def run(self):
        self.csv = open(self.out + "/deliveries.csv", "w")
        self.csv.write("t_ms,volume_nl,volume_nl_exact,dose_ng\n")
        self.hourly = open(self.out + "/hourly.csv", "w")
        self.hourly.write("hour,t_ms,pulses,delivered_pg,programmed_pg,reservoir_nl,syringe_nl,"
                          "tip_out_nl,compliance_nl,battery_mv,cell_mv,charge_used_uah,"
                          "cell_used_uah,alarms\n")  # fmt: skip
        t_start = _now_ms()
        self.commission()
        say("  %s  commissioned: clock set, %s mL filled at %d ug/mL, programme running" % (
            self.when(self.vp.loop.now), ml(self.sc.first_fill_nl), self.sc.conc))  # fmt: skip
        for t, kind, arg in self.timeline():
            self.advance(t)
            if kind == _SAMPLE:
                self.sample(t)
            elif kind == _DAY_END:
                self.day_line(arg)
            elif kind == _FAULT:
                self.fault(arg)
            elif kind == _VISIT:
                self.visit()
            elif kind == _REQUEST:
                self.request()
            else:
                self.button(False)
        self.advance(self.end)
        self.drain_buzzer()
        self.sim_ms = _elapsed(t_start)
        self.csv.close()
        self.hourly.close()

    def sample(self, t):
        self.drain_buzzer()
        k = t // HOUR - 1
        pulses, dose = self.bins.pop(k, (0, 0))
        prog = self.programmed_pg(k * HOUR, t)
        self.prog_pg += prog
        acc = self.day_acc
        acc[0] += pulses
        acc[1] += dose
        acc[2] += prog
        vp = self.vp
        sup = vp.sup
        alarms = ";".join(x[1] for x in sup.alarms.active())
        self.hourly.write("%d,%d,%d,%d,%d,%d,%d,%d,%d,%d,%d,%d,%d,%s\n" % (
            k, t, pulses, dose // self.unit_den, prog, sup.reservoir.remaining_nl(),
            self.plant.content_nl(), self.plant.out_nl(t), self.plant.stored_nl(t),
            sup.battery.mv, vp.cell.terminal_mv(), sup.battery.used_nc // B.NC_PER_UAH,
            vp.cell.used_nc // B.NC_PER_UAH, alarms))  # fmt: skip

    def programmed_pg(self, a, b):
        """The programme's dose over loop ms [a, b), in pg (each piece rounded down): the steps
        by the wall clock's time of day, periodic boluses and granted patient boluses spread
        over their durations."""
        if self.prog_start is None or b <= self.prog_start:
            return 0
        if a < self.prog_start:
            a = self.prog_start
        rx = self.sc.rx
        wall0 = self.sc.start_wall_ms
        pg = 0
        t = a
        steps = rx.steps
        while t < b:
            tod = (wall0 + t) % DAY
            rate = steps[0][1]
            nxt = DAY
            for start, r in steps:
                if start * MIN <= tod:
                    rate = r
                elif start * MIN < nxt:
                    nxt = start * MIN
            end = t + nxt - tod
            if end > b:
                end = b
            pg += rate * 1000 * (end - t) // DAY
            t = end
        # Periodic boluses on the days around [a, b), from the programme's start on.
        for c in range((wall0 + a) // DAY - 1, (wall0 + b) // DAY + 1):
            for start_min, dose, dur_s in rx.periodic:
                s = c * DAY + start_min * MIN - wall0
                if s >= self.prog_start:
                    pg += _overlap_pg(s, s + dur_s * 1000, dose, a, b)
        keep = []
        for s, e, dose in self.boluses:
            if e > b:
                keep.append((s, e, dose))
            pg += _overlap_pg(s, e, dose, a, b)
        self.boluses = keep
        return pg

    def day_line(self, d):
        sup = self.vp.sup
        pulses, dose, prog = self.day_acc
        names = ",".join(x[1] for x in sup.alarms.active()) or "-"
        say("day %3d  pulses %5d  dose %7s ug (programmed %7s)  patient %d ok %d refused  "
            "reservoir %6s mL  battery %4d mV  alarms %s" % (
                d, pulses, dec(dose, self.unit_den * 1_000_000, 1), dec(prog, 1_000_000, 1),
                self.day_granted, self.day_refused, ml(sup.reservoir.remaining_nl()),
                sup.battery.mv, names))  # fmt: skip
        self.day_acc = [0, 0, 0]
        self.day_granted = 0
        self.day_refused = 0

    # -- what happens --

    def request(self):
        bad = self.submit("patient_bolus")
        if bad is None:
            self.granted += 1
            self.day_granted += 1
            rx = self.sc.rx
            t = self.vp.loop.now
            self.boluses.append((t, t + rx.patient_duration_s * 1000, rx.patient_dose_ng))
        else:
            why = bad.message()
            self.refused[why] = self.refused.get(why, 0) + 1
            self.day_refused += 1

    def button(self, always):
        # The patient presses the pump's button when it is sounding an alarm not yet
        # acknowledged (or the fault file says so).
        if not always:
            pending = False
            for _c, _n, _p, _present, acked, _s in self.vp.sup.alarms.active():
                if not acked:
                    pending = True
            if not pending:
                return
        self.vp.button.press()
        self.presses += 1

    def visit(self):
        sc = self.sc
        sup = self.vp.sup
        due = sup.alarms.is_latched(A.RES_LOW)
        if sc.refill_when == "refill_due":
            due = due or sup.alarms.is_latched(A.REFILL_DUE)
        if not due:
            return
        fill, conc = sc.fills[self.fill_i if self.fill_i < len(sc.fills) else -1]
        self.fill_i += 1
        t = self.vp.loop.now
        expected = sup.reservoir.remaining_nl()
        withdrawn = expected if expected > 0 else 0
        old_conc = sup.engine.next_conc()
        rec = Obj(("t_ms", t), ("withdrawn_nl", withdrawn), ("fill_nl", fill),
                ("strength_from", old_conc), ("strength_to", conc))  # fmt: skip
        bad = self.submit("refill_begin", withdrawn)
        residual = None
        if bad is None:
            self.settle()
            residual = self.plant.refill(fill, conc)
            bad = self.submit("refill_fill", fill, conc)
        if bad is None:
            self.settle()
            bad = self.submit("refill_commit")
        if bad is not None:
            if self.vp.sup.refill_status() is not None:
                self.submit("refill_abandon")
        self.settle()
        rec.add("true_residual_nl", residual)
        rec.add("refused", None if bad is None else bad.message())
        self.refills.append(rec)
        if bad is None:
            bridge = self.vp.sup.engine.bridge_pulses_left()
            say("  %s  refill: withdrew %s mL (true residual %s), filled %s mL at %d ug/mL%s" % (
                self.when(t), ml(withdrawn), ml(residual), ml(fill), conc,
                ", bridge of %d pulses at %d ug/mL" % (bridge, old_conc) if bridge else ""))
        else:
            say("  %s  refill refused: %s" % (self.when(t), bad.message()))
        self.button(True)

    def fault(self, f):
        t, kind, arg = f
        vp = self.vp
        p = self.plant
        note = ""
        if kind == "power_cut":
            if arg[0] == "ops":
                note = "during the flash write or erase number %d from now" % arg[1]
            elif arg[1]:
                note = "off for " + span(arg[1])
        elif kind == "clock_jump":
            note = "%+d ms" % arg
        elif kind == "hang":
            # Said first: the task is found now, its watchdog reset comes later.
            note = "task " + arg if vp.loop.hang(arg) else "no task %s was running" % arg
        say("  %s  fault: %s%s" % (self.when(t), kind, " (" + note + ")" if note else ""))
        self.fault_notes.append(Obj(("t_ms", t), ("kind", kind),
                                    ("arg", list(arg) if isinstance(arg, tuple) else arg),
                                    ("note", note)))  # fmt: skip
        if kind == "stall":
            p.jam()
        elif kind == "stall_end":
            p.free()
        elif kind == "occlusion":
            p.occlude()
        elif kind == "occlusion_end":
            p.clear_occlusion()
        elif kind == "power_cut":
            if arg[0] == "ops":
                vp.power_cut(after_ops=arg[1])
            else:
                vp.power_cut(down_ms=arg[1])
                self.drain()
                self.report_boots()
        elif kind == "clock_jump":
            vp.rtc.jump(arg)
        elif kind == "rtc_lost":
            vp.rtc.lose()
        elif kind == "button":
            self.button(True)

    # -- the report --

    def read_log(self):
        log = ST.EventLog(self.vp.fs, board.LOG_SEGMENT_BYTES, board.LOG_SEGMENTS)
        records, problems = log.scan()
        problems = log.verify(records, problems)
        raised = {}
        with open(self.out + "/events.jsonl", "w") as f:
            for seq, _h, value, _n in records:
                _link, wall_ms, name, args = value
                if name == "alarm_raise":
                    raised[args[0]] = raised.get(args[0], 0) + 1
                f.write('{"seq": %d, "wall_ms": %d, "name": %s, "args": %s}\n' % (
                    seq, wall_ms, json.dumps(name), json.dumps(plain(args))))  # fmt: skip
        first = records[0][0] if records else 0
        last = records[-1][0] if records else 0
        return first, last, len(records), problems, raised

    def charge_at_eos_uah(self):
        # What the pump's model leaves in the cell on its projected replacement date: the
        # end-of-service reserve and the margin it keeps against its own error.
        bat = self.vp.sup.battery
        cell = board.CELL
        cap = cell.capacity_uah * B.NC_PER_UAH
        budget = bat.budget_nc()
        left = cap * cell.eos_reserve_pct // 100
        if budget > 0:
            left += budget - budget * (100 - board.ENERGY.margin_pct) // 100
        return left // B.NC_PER_UAH

    def summary(self, first, last, n_records, problems, raised):
        vp = self.vp
        sup = vp.sup
        p = self.plant
        sc = self.sc
        u = self.unit_den
        pulses = self.pulses
        dose_total = self.dose_num
        prog_pg = self.prog_pg
        now = sup.now_ms()
        life = sup.battery.life_ms(now)
        eos_wall = None if life is None else now + life + sup.wall_off_ms
        runtime = sys.implementation.name
        v = sys.implementation.version
        runtime += " %d.%d.%d" % (v[0], v[1], v[2])
        resets = []
        for began, t, hw_cause, cause, source, late in vp.boot_log[1:]:
            resets.append(Obj(("t_ms", began), ("when", self.when(began)), ("boot_t_ms", t),
                            ("cause", hw_cause), ("firmware_cause", cause),
                            ("state_from", source), ("late_task", late)))  # fmt: skip
        refused_total = 0
        refusals = Obj()
        for k in sorted(self.refused):
            refusals.add(k, self.refused[k])
            refused_total += self.refused[k]
        raised_o = Obj()
        for k in sorted(raised):
            raised_o.add(k, raised[k])
        total_ms = _elapsed(self.t_total)
        sim_ms = self.sim_ms if self.sim_ms > 0 else 1
        s = Obj(
            ("runtime", runtime),
            ("scenario", sc.name),
            ("title", sc.title),
            ("days", self.days),
            ("start", SC.wall_text(sc.start_wall_ms)),
            ("start_wall_ms", sc.start_wall_ms),
            ("seed", self.seed),
            ("accel", self.accel),
            ("pulse_volume_nl", Num(self.vol_dec)),
            ("pulse_volume_nl_exact", self.vol_exact),
            ("pulses", Obj(
                ("delivered", pulses),
                ("pump_counted", sup.moved_pulses),
                ("not_delivered", sup.undelivered_pulses),
                ("failed", sup.failed_pulses),
                ("lost_at_force_limit", p.lost),
                ("end_stop", p.end_stops))),
            ("volume_nl", Obj(
                ("delivered", Num(dec(pulses * self.pulse_u, u, 3))),
                ("delivered_exact", frac(pulses * self.pulse_u, u)),
                ("pushed_by_plunger", Num(dec(p.pushed_u, u, 3))),
                ("out_of_catheter_tip", Num(dec(p.out_u(self.end), u, 3))),
                ("in_compliance", Num(dec(p.pushed_u - p.out_u(self.end), u, 3))))),
            ("dose_ug", Obj(
                ("delivered", Num(dec(dose_total, u * 1_000_000, 3))),
                ("programmed", Num(dec(prog_pg, 1_000_000, 3))),
                ("delivered_per_programmed_pct",
                 Num(dec(dose_total * 100, u * (prog_pg if prog_pg else 1), 2))))),
            ("boluses", Obj(
                ("patient_granted", self.granted),
                ("patient_refused", refused_total),
                ("refusals", refusals))),
            ("alarms", Obj(
                ("raised", raised_o),
                ("latched_at_end", [x[1] for x in sup.alarms.active()]),
                ("button_presses", self.presses),
                ("buzzer_tones", self.tones))),
            ("resets", resets),
            ("refills", self.refills),
            ("faults", self.fault_notes),
            ("reservoir", Obj(
                ("estimate_nl", sup.reservoir.remaining_nl()),
                ("syringe_nl", p.content_nl()),
                ("low_threshold_nl", sup.reservoir.low_nl),
                ("capacity_nl", sup.reservoir.capacity_nl),
                ("strength_ug_per_ml", sup.engine.next_conc()))),
            ("battery", Obj(
                ("measured_mv", sup.battery.mv),
                ("cell_mv", vp.cell.terminal_mv()),
                ("state", B.STATE_NAMES[sup.battery.state]),
                ("charge_used_uah", sup.battery.used_nc // B.NC_PER_UAH),
                ("charge_at_replacement_uah", self.charge_at_eos_uah()),
                ("capacity_uah", board.CELL.capacity_uah),
                ("eri_mv", board.CELL.eri_mv),
                ("eos_mv", board.CELL.eos_mv),
                ("projected_replacement_wall_ms", eos_wall),
                ("projected_replacement", None if eos_wall is None else
                 SC.wall_text(eos_wall)[:10]),
                ("projected_replacement_day", None if eos_wall is None else
                 (eos_wall - sc.start_wall_ms) // DAY + 1))),
            ("log", Obj(
                ("records", n_records),
                ("first_seq", first),
                ("last_seq", last),
                ("problems", problems),
                ("pending_not_on_flash", len(vp.app.journal.pending)),
                ("commits_since_boot", vp.app.store.commits))),
            ("wakeups", vp.loop.wakeups),
            ("runtime_ms", total_ms),
            ("simulation_ms", self.sim_ms),
            ("days_per_s", Num(dec(self.days * 1000, sim_ms, 2))),
            ("files", ["deliveries.csv", "events.jsonl", "hourly.csv", "summary.json"]),
        )  # fmt: skip
        with open(self.out + "/summary.json", "w") as f:
            f.write(jdump(s) + "\n")


def main(argv):
    t_total = _now_ms()
    try:
        rx_path, out, opts = parse_args(argv)
        sc = SC.load(rx_path)
        SC.check(sc)
    except SC.ScenarioError as e:
        sys.stderr.write("error: %s.\n" % e)
        return 2
    makedirs(out)
    try:
        open(out + "/summary.json", "w").close()
    except OSError:
        sys.stderr.write("error: cannot write the report folder %s.\n" % out)
        return 2
    run = Run(sc, out, opts["days"], opts["accel"], opts["seed"], opts["faults"])
    run.t_total = t_total
    say("Virtual pump: %s" % sc.title)
    say("  %d days from %s on %s, seed %d, %s; pulse %s nL; report in %s" % (
        run.days, SC.wall_text(sc.start_wall_ms), sys.implementation.name, run.seed,
        "as fast as possible" if not run.accel else "%dx real time" % run.accel,
        run.vol_dec, out))  # fmt: skip
    try:
        run.run()
    except SC.ScenarioError as e:
        sys.stderr.write("error: %s.\n" % e)
        return 2
    log = run.read_log()
    run.summary(*log)
    run.vp.stop()
    say("done: %d pulses in %d ms (%s simulated days per second)" % (
        run.pulses, run.sim_ms, dec(run.days * 1000, run.sim_ms or 1, 2)))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
