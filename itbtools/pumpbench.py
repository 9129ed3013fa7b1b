# `pumpbench`: the bench rig's accuracy tests. Trumpet analysis of a balance log, a live test on
# the real rig (board over mpremote, balance over pyserial), and the same pipeline on the sim.
"""Commands (docs/bench-tests.md):

  pumpbench trumpet LOG.csv --rate-ul-h R     analyse a balance log: JSON report and PNG plots
  pumpbench bolus LOG.csv --volume-ul V       bolus accuracy from a bolus log
  pumpbench run --balance PORT --board PORT --rate-ul-h R --hours H   a test on the real rig
  pumpbench run ... --boluses 25 --bolus-ul V                          a bolus test
  pumpbench run --ble ADDRESS --key FILE ...  (or --sim-radio HOST:PORT)  the pump over BLE
  pumpbench sim --rate-ul-h 10 --hours 24     the whole pipeline on the virtual pump
  pumpbench sim --boluses 25 --bolus-ul 20    a bolus test on the virtual pump

Every failure ends in one sentence on stderr and a non-zero exit code (1: the test or analysis
could not be completed, a partial report is written where data exists; 2: bad command line;
5: a bug in pumpbench)."""

import json
import math
import shutil
import subprocess
import sys
import time
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import click
from rich.console import Console
from rich.live import Live
from rich.table import Table

from itbtools import balance as B
from itbtools import trumpet as T
from itbtools.doses import bolus_dose_ng, programme_summary, programmed_ng_per_day, set_rate_ul_h
from itbtools.doses import num_text as _num
from itbtools.errors import sentence, usage_sentence

ROOT = Path(__file__).resolve().parent.parent
EXIT_PARTIAL = 1
EXIT_USAGE = 2
EXIT_BUG = 5  # as pumpctl's
SLEEP = time.sleep  # the bolus series' waits (a test against an accelerated pump shortens them)

# The reference rig's pulse (boards/sim and firmware/rig.py share its geometry): one full step of
# a 10 mL syringe of 14.5 mm bore on an M5 lead screw, 660.520 nL (exact fraction below).
_REF_CAL = None


def reference_pulse_nl():
    """The reference rig's pulse volume in nL, exactly (from the firmware's calibration)."""
    global _REF_CAL
    if _REF_CAL is None:
        from boards.sim import board

        c = board.calibration()
        _REF_CAL = Fraction(c.ml_num * 10**6, c.ml_den)
    return _REF_CAL


# The simulated balance of the reference rig: a microbalance (1 ug readability, 1 ug noise) with
# a beaker under a paraffin-oil layer that still loses 0.02 mg/h. bench.md a.1: at 10 uL/h and a
# 30 s interval only 0.083 mg arrive per sample, so a 1 ug (6-decimal) balance is needed.
REFERENCE_BALANCE = {"resolution_g": "0.000001", "noise_g": "0.000001",
                     "evaporation_mg_h": "0.02", "start_g": "10.000000", "capacity_g": "22"}
SIM_STRENGTH = 500  # ug/mL: the commissioning strength of the virtual pump
SIM_FILL_NL = 20_000_000


class BenchError(Exception):
    """A failure the user must hear about in one sentence; .code is the exit code."""

    maybe_done = False  # the pump may have acted on the request (the link failed after it)

    def __init__(self, text, code=EXIT_PARTIAL):
        super().__init__(text)
        self.code = code


def _complete(rep):
    """0 for a complete trumpet report; else the sentence of what is missing."""
    if not rep.complete:
        raise BenchError("The analysis is partial: %s" % (
            rep.notes[0].rstrip(".") if rep.notes else "no window could be computed"))
    return 0


def _decimal_option(text, what, positive=True):
    try:
        v = T.exact(text, what)
    except ValueError as e:
        raise BenchError(str(e), EXIT_USAGE) from None
    if positive and v <= 0:
        raise BenchError("%s must be above zero, not %s" % (what, text), EXIT_USAGE)
    return v


# The options only one kind of test uses: given for the other kind, they are refused rather than
# silently ignored.
RATE_ONLY = ("rate_ul_h", "hours", "interval_s", "analysis_start_min", "analysis_end_min",
             "windows", "no_plots", "balance_mode", "confirm_increase")  # fmt: skip
BOLUS_ONLY = ("bolus_ul", "bolus_s", "settle_s")
MAX_WAIT_S = 86_400  # a bolus lasts at most a day (the pump's limit); so does a settling wait


def _given(name):
    """Whether the user gave the option (not its default)."""
    ctx = click.get_current_context()
    src = ctx.get_parameter_source(name)
    return src is not None and src != click.core.ParameterSource.DEFAULT


def _refuse_unused(bolus_test):
    """Refuse options that the chosen test would not use (a rate test's with --boluses, a bolus
    test's without): one sentence naming them."""
    ctx = click.get_current_context()
    unused = [n for n in (RATE_ONLY if bolus_test else BOLUS_ONLY)
              if n in ctx.params and _given(n)]  # fmt: skip
    if unused:
        names = ", ".join("--" + n.replace("_", "-") for n in unused)
        raise BenchError("%s %s not used by a %s test" % (
            names, "is" if len(unused) == 1 else "are", "bolus" if bolus_test else "rate"),
            EXIT_USAGE)  # fmt: skip


def _bolus_options(boluses, bolus_ul, bolus_s, settle_s):
    """The bolus-test options, checked (and the other test's refused)."""
    if boluses is not None and (bolus_ul is None or boluses < 1):
        raise BenchError("A bolus test needs --boluses of at least 1 and --bolus-ul", EXIT_USAGE)
    _refuse_unused(boluses is not None)
    if not 1 <= bolus_s <= MAX_WAIT_S:
        raise BenchError("--bolus-s must be from 1 to %d s, not %d" % (MAX_WAIT_S, bolus_s),
                         EXIT_USAGE)  # fmt: skip
    if not 0 <= settle_s <= MAX_WAIT_S:
        raise BenchError("--settle-s must be from 0 to %d s, not %d" % (MAX_WAIT_S, settle_s),
                         EXIT_USAGE)  # fmt: skip


def _windows_option(text):
    if text is None:
        return None
    out = []
    for part in text.split(","):
        out.append(_decimal_option(part.strip(), "each of --windows"))
    return tuple(out)


def _analysis_options(start, end, windows):
    """--analysis-start-min, --analysis-end-min and --windows, checked: (start, end, windows)."""
    s = None if start is None else _decimal_option(start, "--analysis-start-min", positive=False)
    if s is not None and s < 0:
        raise BenchError("--analysis-start-min must not be negative, not %s" % start, EXIT_USAGE)
    e = None if end is None else _decimal_option(end, "--analysis-end-min")
    if e is not None and e <= (T.DEFAULT_ANALYSIS_START_MIN if s is None else s):
        raise BenchError("--analysis-end-min (%s) must be after the analysis start (%s min)"
                         % (end, _num(T.DEFAULT_ANALYSIS_START_MIN if s is None else s)),
                         EXIT_USAGE)  # fmt: skip
    return s, e, _windows_option(windows)


# ---- output ----


def console(err=False):
    return Console(stderr=err, highlight=False, soft_wrap=True)


def window_table(rep, title):
    t = Table(title=title)
    for col in ("P (min)", "m", "Ep(max) %", "Ep(min) %", "quantisation band %",
                "spread/band"):
        t.add_column(col, justify="right", no_wrap=True)
    for w in rep.windows:
        if w.skipped:
            continue
        band = "-" if w.bound is None else "%s..%s" % (_num(w.bound.low_pct, 2),
                                                        _num(w.bound.high_pct, 2))
        ratio = "-"
        if w.bound is not None and w.bound.spread_pct and len(w.errors) > 1:
            ratio = _num(w.spread / w.bound.spread_pct, 3)
        t.add_row(_num(w.p_min), str(w.m), _num(w.ep_max, 2), _num(w.ep_min, 2), band, ratio)
    return t


def print_report(out, rep, title):
    if rep.overall is not None:
        d = rep.as_dict()["analysis"]
        line = "A = %s %% (mean %s uL/h for %s uL/h set, %s..%s min)" % (
            _num(rep.overall, 3), _num(rep.mean_rate, 4), _num(rep.rate, 4),
            _num(d["start_min"]), _num(d["end_min"]))  # fmt: skip
        if rep.overall_bound is not None:
            line += "; quantisation alone allows %s..%s %%" % (
                _num(rep.overall_bound.low_pct, 3), _num(rep.overall_bound.high_pct, 3))
        out.print(line)
    out.print(window_table(rep, title))
    why = {}
    for w in rep.windows:
        if w.skipped:
            why.setdefault(w.skipped, []).append(_num(w.p_min))
    for reason, ps in why.items():
        out.print("skipped P = %s min: %s" % (", ".join(ps), reason))
    for n in rep.notes:
        out.print(n)


def write_outputs(out_dir, report_dict, rep, plots=True):
    """report.json, and trumpet.png and startup.png when the data allow."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(json.dumps(report_dict, indent=2) + "\n")
    written = [out_dir / "report.json"]
    if plots and rep is not None:
        written += plot(out_dir, rep)
    return written


def plot(out_dir, rep):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    pts = [(float(t), float(q)) for t, q in rep.startup if q is not None]
    if pts:
        fig, ax = plt.subplots(figsize=(8, 4.5))
        ax.step([p[0] for p in pts], [p[1] for p in pts], where="post", lw=0.8,
                label="flow per %s s interval" % _num(rep.interval_s))
        ax.axhline(float(rep.rate), color="k", lw=1, label="set rate %s uL/h" % _num(rep.rate))
        if rep.k0 is not None:
            a = float(rep.k0 * rep.interval_s / 60)
            b = float(rep.k1 * rep.interval_s / 60)
            ax.axvspan(a, b, color="tab:green", alpha=0.08, label="analysis period")
        ax.set_xlabel("time (min)")
        ax.set_ylabel("flow (uL/h)")
        ax.set_title("Start-up curve")
        ax.legend(loc="best", fontsize=8)
        fig.tight_layout()
        f = out_dir / "startup.png"
        fig.savefig(f, dpi=110)
        plt.close(fig)
        files.append(f)
    used = [w for w in rep.windows if not w.skipped]
    if used:
        # Hour-scale windows sit within a few per cent of A, invisible next to the short
        # windows' mouth: they get a second panel at their own scale.
        long = [w for w in used if w.p_min >= 31]
        two = len(long) >= 2 and len(long) < len(used)
        fig, axes = plt.subplots(1, 2 if two else 1, figsize=(12 if two else 8, 4.5))
        axes = list(axes) if two else [axes]
        _trumpet_axes(axes[0], used, rep, legend=True)
        if two:
            _trumpet_axes(axes[1], long, rep, legend=False)
            axes[1].set_title("windows from 31 min (zoomed)")
        axes[0].set_title("Trumpet curve at %s uL/h" % _num(rep.rate))
        fig.tight_layout()
        f = out_dir / "trumpet.png"
        fig.savefig(f, dpi=110)
        plt.close(fig)
        files.append(f)
    return files


def _trumpet_axes(ax, used, rep, legend):
    ps = [float(w.p_min) for w in used]
    ax.plot(ps, [float(w.ep_max) for w in used], "o-", color="tab:red", label="Ep(max)")
    ax.plot(ps, [float(w.ep_min) for w in used], "o-", color="tab:blue", label="Ep(min)")
    ax.axhline(float(rep.overall), color="k", lw=1, label="A = %s %%" % _num(rep.overall, 2))
    bounded = [w for w in used if w.bound is not None]
    if bounded:
        ax.fill_between([float(w.p_min) for w in bounded],
                        [float(w.bound.low_pct) for w in bounded],
                        [float(w.bound.high_pct) for w in bounded], color="0.5", alpha=0.18,
                        label="pure quantisation band (%s nL pulses)"
                        % _num(rep.pulse_nl, 3))  # fmt: skip
    ax.set_xscale("log")
    ax.set_xticks(ps)
    ax.set_xticklabels([_num(p) for p in ps], fontsize=8)
    ax.minorticks_off()
    ax.set_xlabel("observation window P (min)")
    ax.set_ylabel("error (%)")
    ax.grid(True, which="major", alpha=0.3)
    if legend:
        ax.legend(loc="best", fontsize=8)


# ---- the acquisition loop (the real rig and the virtual pump alike) ----


class Acquisition:
    """Reads the balance every interval_s for duration_s (or listens to its continuous output),
    logging every reading and problem as it comes. Stops early, with a sentence in .stopped, when
    the balance falls silent or its port goes away; what was logged stays."""

    def __init__(self, bal, log, clock, wait_until, interval_s, duration_s, mode="poll",
                 display=None, t0=None):  # fmt: skip
        self.bal = bal
        self.log = log
        self.clock = clock
        self.wait_until = wait_until
        self.interval_s = interval_s
        self.duration_s = duration_s
        self.mode = mode
        self.display = display
        self.t0 = clock() if t0 is None else t0
        self.readings = []  # (t_s from t0, grams)
        self.problems = []
        self.stopped = None

    def _take(self, events):
        for e in events:
            if isinstance(e, B.Reading):
                self.log.reading(e, self.t0)
                self.readings.append((e.t - self.t0, e.grams))
            else:
                self.log.problem(e, self.t0)
                self.problems.append(e)
                if e.kind in (B.SILENCE, B.DISCONNECTED) and self.stopped is None:
                    self.stopped = "%s %s s into the test" % (
                        e.sentence().rstrip("."), _num(e.t - self.t0, 1))
        if self.display is not None:
            self.display(self)

    def _listen(self, until):
        # Continuous output is read as it comes, so that each line is timed on arrival; the
        # analysis puts the readings on its grid.
        while not self.stopped and not self.bal.closed:
            before = self.clock()
            self._take(self.bal.receive(min(0.5, max(0.0, float(until - before)))))
            if self.clock() >= until:
                break
            if self.clock() == before:  # a port that does not block: let time pass
                self.wait_until(until)

    def run(self):
        n = int(self.duration_s // self.interval_s)
        if self.mode == "continuous":
            self._take(self.bal.start_continuous())
        try:
            for i in range(n + 1):
                if self.stopped:
                    break
                target = self.t0 + i * self.interval_s
                if self.mode == "continuous":
                    self._listen(target)
                else:
                    self.wait_until(target)
                    self._take(self.bal.immediate(timeout_s=min(2, self.interval_s / 2)))
        except KeyboardInterrupt:
            self.stopped = "the test was interrupted (Ctrl-C)"
        finally:
            if self.mode == "continuous" and not self.bal.closed:
                self._take(self.bal.stop())
        return self


def live_display(out, total_s):
    """A rich live view for a terminal, or None (a pipe gets the summary only)."""
    if not out.is_terminal:
        return None, None
    live = Live(console=out, refresh_per_second=2, transient=False)

    def show(acq):
        t = Table.grid(padding=(0, 2))
        el = acq.readings[-1][0] if acq.readings else 0
        t.add_row("elapsed", "%s / %s min" % (_num(el / 60, 1), _num(total_s / 60, 1)))
        t.add_row("readings", str(len(acq.readings)))
        if acq.readings:
            t.add_row("last mass", "%s g" % acq.readings[-1][1])
        if len(acq.readings) >= 2:
            (ta, wa), (tb, wb) = acq.readings[-2], acq.readings[-1]
            if tb > ta:
                q = (Decimal(wb) - Decimal(wa)) * 3_600_000 / Decimal(str(tb - ta))
                t.add_row("last flow", "%s uL/h (density 1)" % _num(q, 2))
        t.add_row("problems", str(len(acq.problems)))
        if acq.problems:
            t.add_row("last problem", acq.problems[-1].sentence())
        live.update(t)

    return live, show


# ---- analysis of an acquisition ----


def analyse_and_report(out, out_dir, readings, rate, density, interval_s, pulse_nl,
                       start_min, end_min, windows, meta, plots, title):  # fmt: skip
    rep = T.analyse(readings, rate, density, interval_s, start_min, end_min, windows, pulse_nl)
    d = dict(meta)
    d["trumpet"] = rep.as_dict()
    files = write_outputs(out_dir, d, rep, plots)
    print_report(out, rep, title)
    out.print("wrote " + ", ".join(str(f) for f in files))
    return rep, d


# ---- the virtual pump ----


class SimRig:
    """The virtual pump on the plant model (boards/sim/plant.py), commissioned with a full
    syringe at SIM_STRENGTH and programmed for a continuous rate. mass_g(t_s) is the balance's
    load: the beaker plus what left the catheter tip since the programme started."""

    def __init__(self, rate_ul_h, seed=1, density=T.DEFAULT_DENSITY, start_g="10"):
        from boards.sim import plant as PL
        from boards.sim import vpump
        from pump import rx as RX

        self.plant = PL.Plant()
        self.vp = vp = vpump.VirtualPump(seed=seed, mech=self.plant)
        vp.boot()
        vp.run_until(1_000)
        self.conc = SIM_STRENGTH
        self.rate_ng = programmed_ng_per_day(rate_ul_h, self.conc)
        self.set_rate = set_rate_ul_h(self.rate_ng, self.conc)
        steps = [("set_clock", 1_767_225_600_000), ("refill_begin", 0)]
        for name, *args in steps:
            self.request(name, *args)
        self.plant.refill(SIM_FILL_NL, self.conc)
        for name, *args in [("refill_fill", SIM_FILL_NL, self.conc), ("refill_commit",)]:
            self.request(name, *args)
        vp.app.acknowledge_all()
        vp.run_until(vp.loop.now + 1_000)
        self.request("program", RX.continuous(self.conc, self.rate_ng), True)
        self.t0_ms = vp.loop.now
        self.out0 = self.plant.out_u(self.t0_ms)
        self.density = T.exact(density)
        self.start_g = T.exact(start_g)

    def request(self, name, *args):
        bad = self.vp.submit(name, *args)
        if bad is not None:
            why = bad.message() if hasattr(bad, "message") else str(bad)
            raise BenchError("The virtual pump refused %s (%s)" % (name.replace("_", " "), why))
        self.vp.run_until(self.vp.loop.now + 1_000)

    def now_s(self):
        return Fraction(self.vp.loop.now - self.t0_ms, 1000)

    def run_to(self, t_s):
        self.vp.run_until(self.t0_ms + math.ceil(Fraction(t_s) * 1000))

    def wait(self, s):
        self.run_to(self.now_s() + T.exact(s))

    def delivered_nl(self, t_s=None):
        """What left the catheter tip from the programme's start to t_s (default now), in nL
        exactly: the truth the balance only estimates."""
        ms = self.vp.loop.now if t_s is None else self.t0_ms + math.floor(Fraction(t_s) * 1000)
        return Fraction(self.plant.out_u(ms) - self.out0, self.plant.unit_den)

    def mass_g(self, t_s):
        return self.start_g + self.delivered_nl(t_s) * self.density / 10**6

    def stop(self):
        self.vp.stop()


def _sim_balance(rig, seed, balance_opts):
    """The simulated balance under the virtual pump's catheter tip, on the rig's clock."""
    sb = B.SimBalance(rig.mass_g, rig.now_s, resolution_g=balance_opts["resolution_g"],
                      noise_g=balance_opts["noise_g"],
                      evaporation_mg_h=balance_opts["evaporation_mg_h"],
                      capacity_g=balance_opts["capacity_g"], seed=seed,
                      garbage=balance_opts.get("garbage", 0.0),
                      dropout=balance_opts.get("dropout", 0.0),
                      dead_after_s=balance_opts.get("dead_after_s"))  # fmt: skip
    return B.Balance(sb, rig.now_s, B.Parser(silence_s=balance_opts.get("silence_s", 120)))


def _sim_meta(command, rig, seed, balance_opts, **more):
    meta = {"command": command, "strength_ug_per_ml": rig.conc, "seed": seed,
            "pulse_nl": _num(reference_pulse_nl(), 6)}  # fmt: skip
    meta.update(more)
    meta["balance"] = " ".join("%s=%s" % kv for kv in sorted(balance_opts.items()))
    return meta


def run_sim(out, rate, hours, seed, out_dir, interval_s, density, start_min, end_min, windows,
            balance_opts, plots=True):  # fmt: skip
    """The sim pipeline: returns (trumpet Report, report dict, Acquisition)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rig = SimRig(rate, seed, density, balance_opts["start_g"])
    set_rate = rig.set_rate
    bal = _sim_balance(rig, seed, balance_opts)
    meta = _sim_meta("pumpbench sim", rig, seed, balance_opts,
                     rate_ul_h_requested=_num(rate, 6), rate_ul_h_set=_num(set_rate, 6),
                     programme_ng_per_day=rig.rate_ng, density_g_ml=_num(density, 6),
                     interval_s=_num(interval_s, 6), hours=_num(hours, 6))  # fmt: skip
    log = B.CsvLog(out_dir / "balance.csv", meta, sync=False)
    try:
        acq = Acquisition(bal, log, rig.now_s, rig.run_to, T.exact(interval_s),
                          T.exact(hours) * 3600, t0=Fraction(0)).run()  # fmt: skip
        for p in bal.close():
            acq._take([p])
    finally:
        log.close()
        rig.stop()
    meta["readings"] = len(acq.readings)
    meta["problems"] = [p.sentence() for p in acq.problems]
    meta["stopped"] = acq.stopped
    title = "pumpbench sim: %s uL/h on the virtual pump, %s h" % (_num(set_rate, 4), hours)
    rep, d = analyse_and_report(out, out_dir, acq.readings, set_rate, density, interval_s,
                                reference_pulse_nl(), start_min, end_min, windows, meta, plots,
                                title)  # fmt: skip
    return rep, d, acq


class SimBoard:
    """A SimRig's virtual pump as the bolus series' board: clinician boluses by request."""

    def __init__(self, rig):
        self.rig = rig

    def describe(self):
        return "the virtual pump on the plant model (in this process)"

    def bolus(self, volume_ul, duration_s):
        conc = self.rig.conc
        ng = bolus_dose_ng(volume_ul, conc)
        self.rig.request("clinician_bolus", ng, duration_s)
        return Fraction(ng, conc), {"conc": conc, "dose_ng": ng}


# The basal rate of a bolus test on the virtual pump: the pump's slowest flow (6 uL/day), so that
# what runs between weighings adds least to each bolus (docs/bench-tests.md, "A bolus test").
SIM_BOLUS_BASAL_UL_H = Fraction(1, 4)


def run_sim_boluses(out, count, volume_ul, bolus_s, settle_s, seed, out_dir, density,
                    balance_opts):  # fmt: skip
    """A bolus series on the virtual pump weighed by the simulated balance: its report, which
    also gives what truly left the catheter tip between weighings (`true_volumes_nl`, from the
    plant model), which only a simulation knows."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rig = SimRig(SIM_BOLUS_BASAL_UL_H, seed, density, balance_opts["start_g"])
    bal = _sim_balance(rig, seed, balance_opts)
    meta = _sim_meta("pumpbench sim --boluses", rig, seed, balance_opts,
                     basal_ul_h=_num(SIM_BOLUS_BASAL_UL_H, 6))  # fmt: skip
    res = T.exact(balance_opts["resolution_g"])
    if res * 100 > T.exact(volume_ul) * density / 1000:
        meta["notes"] = ["the balance's resolution (%s g) is more than 1 %% of a bolus's mass: "
                         "its rounding dominates the errors" % balance_opts["resolution_g"]]
        out.print("warning: " + sentence(meta["notes"][0]))
    # What left the tip, in nL, at each weighing (no pump time passes between a weighing and
    # the callback that marks it).
    marks = [rig.delivered_nl()]
    meta["true_volumes_nl"] = true = []

    def weighed(*_row):
        marks.append(rig.delivered_nl())
        true.append(_num(marks[-1] - marks[-2], 3))

    try:
        return run_boluses(out, bal, SimBoard(rig), count, volume_ul, bolus_s, settle_s,
                           density, out_dir, clock=rig.now_s, sleep=rig.wait, meta=meta,
                           watch=weighed)  # fmt: skip
    finally:
        rig.stop()


# ---- the real rig ----


SNIPPET = """\
import asyncio, json, board, app
from pump import rx as RX
hal = board.make_hal()
a = app.App(board, hal)
a.boot()
res = {"conc": a.sup.engine.conc}
def _req():
    conc = res["conc"]
%(prepare)s
async def _go():
    t = asyncio.create_task(a.run())
    args = _req()
    bad = await a.request(*args)
    res["refused"] = None if bad is None else (bad if isinstance(bad, str) else bad.message())
    t.cancel()
try:
    asyncio.run(_go())
finally:
    hal.motor.disable()
    a.store.write_marker("console")
print("PUMPBENCH " + json.dumps(res))
"""

_RATE_PREPARE = """\
    ng = (2 * %(num)d * conc + 10000 * %(den)d) // (20000 * %(den)d) * 10
    res["rate_ng_per_day"] = ng
    rx = a.sup.engine.rx
    res["replaced"] = None if rx is None else {
        "daily_dose_ng": RX.daily_dose_ng(rx), "steps": [list(x) for x in rx.steps],
        "periodic": [list(x) for x in rx.periodic], "patient_dose_ng": rx.patient_dose_ng,
        "patient_max_per_24h": rx.patient_max_per_24h}
    return ("program", RX.continuous(conc, ng), True)"""

_BOLUS_PREPARE = """\
    ng = (2 * %(num)d * conc + %(den)d) // (2 * %(den)d)
    res["dose_ng"] = ng
    return ("clinician_bolus", ng, %(duration_s)d)"""


def rate_snippet(rate_ul_h):
    nl = T.exact(rate_ul_h) * 24_000
    return SNIPPET % {"prepare": _RATE_PREPARE % {"num": nl.numerator, "den": nl.denominator}}


def bolus_snippet(volume_ul, duration_s):
    v = T.exact(volume_ul)  # uL x ug/mL = ng
    return SNIPPET % {"prepare": _BOLUS_PREPARE % {"num": v.numerator, "den": v.denominator,
                                                   "duration_s": duration_s}}


class ReplBoard:
    """The board commanded over its serial REPL with mpremote: connecting stops the running pump
    (Ctrl-C), the snippet boots it from flash, makes one request and waits until it is saved,
    then `reset` restarts the board, which resumes therapy from flash with the change."""

    def __init__(self, port, mpremote=None, run=subprocess.run, timeout_s=90):
        self.port = port
        self.mpremote = mpremote or _mpremote()
        self.run = run
        self.timeout_s = timeout_s

    def command(self, snippet):
        return [self.mpremote, "connect", self.port, "exec", snippet, "+", "reset"]

    def describe(self):
        return "the board on %s (serial REPL through mpremote)" % self.port

    def plan(self, rate, volume_ul, bolus_s):
        """What a dry run shows: the command line and the snippet run for each request."""
        snippet = rate_snippet(rate) if rate is not None else bolus_snippet(volume_ul, bolus_s)
        return ["  " + " ".join(_quote(a) for a in self.command("<snippet>")), "snippet:",
                snippet.rstrip("\n")]  # fmt: skip

    def _do(self, snippet, what):
        cmd = self.command(snippet)
        try:
            p = self.run(cmd, capture_output=True, text=True, timeout=self.timeout_s)
        except FileNotFoundError:
            raise BenchError("mpremote was not found (%s); run make venv"
                             % self.mpremote) from None  # fmt: skip
        except subprocess.TimeoutExpired:
            raise BenchError("The board did not answer over %s within %d s"
                             % (self.port, self.timeout_s)) from None  # fmt: skip
        for line in (p.stdout or "").splitlines():
            if line.startswith("PUMPBENCH "):
                try:
                    res = json.loads(line[len("PUMPBENCH "):])
                except ValueError:
                    break
                if res.get("refused"):
                    raise BenchError("The pump refused %s (%s)" % (what, res["refused"]))
                return res
        err = (p.stderr or p.stdout or "").strip().splitlines()
        raise BenchError("The board did not confirm %s over %s (%s)" % (
            what, self.port, err[-1] if err else "no output"))  # fmt: skip

    def program_rate(self, rate_ul_h):
        res = self._do(rate_snippet(rate_ul_h), "the rate")
        return set_rate_ul_h(res["rate_ng_per_day"], res["conc"]), res

    def bolus(self, volume_ul, duration_s):
        res = self._do(bolus_snippet(volume_ul, duration_s), "the bolus")
        return Fraction(res["dose_ng"], res["conc"]), res  # uL exactly


def _mpremote():
    venv = ROOT / ".venv" / "bin" / "mpremote"
    return str(venv) if venv.exists() else (shutil.which("mpremote") or "mpremote")


class Series:
    """A bolus series as it goes: the (before, after) weighings, the set volume (uL, exact),
    why it stopped early (a sentence, or None), how many boluses the pump took or may have
    taken. Unpacks as that 4-tuple."""

    def __init__(self):
        self.pairs = []
        self.set_ul = None
        self.why = None
        self.given = 0

    def __iter__(self):
        return iter((self.pairs, self.set_ul, self.why, self.given))


def bolus_series(bal, board, log_rows, clock, sleep, count, volume_ul, duration_s, settle_s,
                 stable_timeout_s=60, on_row=None, series=None):  # fmt: skip
    """count boluses, each weighed stable before and after, into series (a Series, kept up to
    date as it goes, so that whatever ends the series leaves what was done); returns it.
    on_row(n, before, after, set_ul) as each bolus is weighed."""
    sr = Series() if series is None else series

    def stable_mass():
        end = clock() + stable_timeout_s
        while clock() < end:
            before = clock()
            for e in bal.stable(timeout_s=min(10, stable_timeout_s)):
                if isinstance(e, B.Reading) and e.stable:
                    return e.grams, None
                if isinstance(e, B.Problem) and e.kind in (B.SILENCE, B.DISCONNECTED,
                                                           B.OVERLOAD, B.UNDERLOAD):
                    return None, e.sentence()
            if clock() == before:
                sleep(1)  # nothing stable yet, and the port did not wait: ask again in 1 s
        return None, "The balance gave no stable weight within %d s." % stable_timeout_s

    after = None
    for i in range(count):
        # Boluses follow each other: the weight after one is the weight before the next.
        before, why = (after, None) if after is not None else stable_mass()
        if before is None:
            sr.why = why
            return sr
        try:
            sr.set_ul, _res = board.bolus(volume_ul, duration_s)
        except BenchError as e:
            # A refusal (or a board that stopped answering) ends the series; the boluses done
            # still make a report, and one the pump may have started counts as given.
            sr.why = str(e)
            sr.given += 1 if e.maybe_done else 0
            return sr
        sr.given += 1
        sleep(duration_s + settle_s)
        after, why = stable_mass()
        if after is None:
            sr.why = why
            return sr
        sr.pairs.append((before, after))
        log_rows.write("%d,%s,%s\n" % (i + 1, before, after))
        log_rows.flush()
        if on_row is not None:
            on_row(i + 1, before, after, sr.set_ul)
    return sr


# ---- the CLI ----


CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.group(context_settings=CONTEXT)
def cli():
    """Bench-rig accuracy tests for the ITB pump prototype (IEC 60601-2-24 gravimetric method;
    a characterisation, not a compliance claim)."""


def _common_analysis(f):
    f = click.option("--density", default="0.998", show_default=True,
                     help="density of the test liquid (g/mL)")(f)
    f = click.option("--interval-s", default="30", show_default=True,
                     help="sample interval of the analysis grid (s)")(f)
    f = click.option("--analysis-start-min", default=None,
                     help="start of the analysis period (min; default 60)")(f)
    f = click.option("--analysis-end-min", default=None,
                     help="end of the analysis period (min; default the end of the log)")(f)
    f = click.option("--windows", default=None,
                     help="observation windows in min, comma-separated (default "
                     "1,2,5,11,19,31,60,120,240,480,960)")(f)
    f = click.option("--no-plots", is_flag=True, help="skip the PNG plots")(f)
    return f


def _bolus_test(boluses_help):
    """The options of a bolus test (`run` and `sim`)."""

    def options(f):
        f = click.option("--settle-s", default=120, show_default=True, type=int,
                         help="wait after each bolus before weighing (s)")(f)
        f = click.option("--bolus-s", default=300, show_default=True, type=int,
                         help="duration of each bolus (s)")(f)
        f = click.option("--bolus-ul", default=None, help="volume of each bolus (uL)")(f)
        return click.option("--boluses", default=None, type=int, help=boluses_help)(f)

    return options


@cli.command()
@click.argument("log", type=click.Path(dir_okay=True, path_type=Path))
@click.option("--rate-ul-h", required=True, help="set rate of the test (uL/h)")
@click.option("--pulse-nl", default=None,
              help="the rig's pulse volume for the quantisation band (nL; default the reference "
              "rig's 660.52)")
@click.option("--out", "out_dir", default=None, type=click.Path(path_type=Path),
              help="report folder (default LOG's name with _report, next to it)")
@_common_analysis
def trumpet(log, rate_ul_h, pulse_nl, out_dir, density, interval_s, analysis_start_min,
            analysis_end_min, windows, no_plots):  # fmt: skip
    """Trumpet analysis of a balance log (CSV with t_s and mass_g columns)."""
    rate = _decimal_option(rate_ul_h, "--rate-ul-h")
    dens = _decimal_option(density, "--density")
    dt = _decimal_option(interval_s, "--interval-s")
    pulse = reference_pulse_nl() if pulse_nl is None else _decimal_option(pulse_nl, "--pulse-nl")
    start, end, wins = _analysis_options(analysis_start_min, analysis_end_min, windows)
    try:
        data = B.read_log(str(log))
    except B.BalanceError as e:
        raise BenchError(str(e)) from None
    out = console()
    if out_dir is None:
        out_dir = log.with_name(log.stem + "_report")
    if not data.samples:
        write_outputs(out_dir, {"log": str(log), "problems": [p[1] for p in data.problems]},
                      None, plots=False)
        raise BenchError("The log %s holds no usable reading%s" % (
            log, " (%s)" % data.problems[0][1] if data.problems else ""))  # fmt: skip
    meta = {"command": "pumpbench trumpet", "log": str(log), "log_meta": data.meta,
            "dropped_rows": [p[1] for p in data.problems],
            "logged_problems": data.logged_problems}  # fmt: skip
    for _no, why in data.problems[:5]:
        console(err=True).print("warning: " + sentence(why))
    if len(data.problems) > 5:
        console(err=True).print("warning: %d more rows dropped." % (len(data.problems) - 5))
    rep, _d = analyse_and_report(out, out_dir, data.samples, rate, dens, dt, pulse, start, end,
                                 wins, meta, not no_plots, "Trumpet: %s" % log.name)
    return _complete(rep)


@cli.command()
@click.argument("log", type=click.Path(path_type=Path))
@click.option("--volume-ul", required=True, help="set volume of each bolus (uL)")
@click.option("--density", default="0.998", show_default=True, help="g/mL")
@click.option("--out", "out_dir", default=None, type=click.Path(path_type=Path),
              help="report folder (default LOG's name with _report)")
def bolus(log, volume_ul, density, out_dir):
    """Bolus accuracy from a bolus log (CSV: n,before_g,after_g per bolus)."""
    v = _decimal_option(volume_ul, "--volume-ul")
    dens = _decimal_option(density, "--density")
    pairs, problems = read_bolus_log(log)
    rep = report_bolus(console(), pairs, v, dens)
    out_dir = log.with_name(log.stem + "_report") if out_dir is None else out_dir
    write_outputs(out_dir, {"command": "pumpbench bolus", "log": str(log),
                            "dropped_rows": problems, "bolus": rep.as_dict()}, None)  # fmt: skip
    if rep.n == 0:
        raise BenchError("The bolus log %s holds no complete bolus" % log)
    return 0


def read_bolus_log(path):
    try:
        lines = B.read_bytes(path, "bolus log").decode("utf-8", "replace").splitlines()
    except B.BalanceError as e:
        raise BenchError(str(e)) from None
    pairs, problems = [], []
    for no, line in enumerate(lines, 1):
        s = line.strip()
        if not s or s.startswith("#") or s.lower().startswith("n,"):
            continue
        parts = [p.strip() for p in s.split(",")]
        try:
            if len(parts) != 3:
                raise ValueError
            pairs.append((T.exact(parts[1]), T.exact(parts[2])))
        except ValueError:
            problems.append("line %d is not n,before_g,after_g" % no)
    return pairs, problems


def report_bolus(out, pairs, volume_ul, density):
    rep = T.bolus_accuracy(pairs, volume_ul, density)
    if rep.n:
        out.print("%d bolus%s of %s uL: mean error %s %%, largest %s %%, smallest %s %%%s" % (
            rep.n, "" if rep.n == 1 else "es", _num(volume_ul, 4), _num(rep.mean, 2),
            _num(rep.max, 2), _num(rep.min, 2), "" if rep.n >= T.BOLUS_STANDARD_COUNT else
            " (the method asks for %d)" % T.BOLUS_STANDARD_COUNT))  # fmt: skip
    return rep


@cli.command()
@click.option("--rate-ul-h", default="10", show_default=True, help="set rate (uL/h)")
@click.option("--hours", default="24", show_default=True, help="length of the run (h)")
@click.option("--seed", default=1, show_default=True, type=int, help="noise seed")
@click.option("--out", "out_dir", default="build/pumpbench-sim", show_default=True,
              type=click.Path(path_type=Path), help="report folder")
@click.option("--resolution-g", default=REFERENCE_BALANCE["resolution_g"], show_default=True)
@click.option("--noise-g", default=REFERENCE_BALANCE["noise_g"], show_default=True,
              help="balance noise, one standard deviation (g)")
@click.option("--evaporation-mg-h", default=REFERENCE_BALANCE["evaporation_mg_h"],
              show_default=True)
@click.option("--garbage", default=0.0, show_default=True, type=float,
              help="share of balance answers replaced by garbage")
@click.option("--dropout", default=0.0, show_default=True, type=float,
              help="share of balance commands left unanswered")
@click.option("--balance-dies-after-min", default=None, hidden=True,
              help="the simulated balance stops answering then (a test of the failure path)")
@_bolus_test("a bolus test instead: this many clinician boluses (basal 0.25 uL/h)")
@_common_analysis
def sim(rate_ul_h, hours, seed, out_dir, resolution_g, noise_g, evaporation_mg_h, garbage,
        dropout, balance_dies_after_min, boluses, bolus_ul, bolus_s, settle_s, density,
        interval_s, analysis_start_min, analysis_end_min, windows, no_plots):  # fmt: skip
    """The whole pipeline on the virtual pump with a simulated balance: a rate test, or a bolus
    test with --boluses and --bolus-ul."""
    _bolus_options(boluses, bolus_ul, bolus_s, settle_s)
    rate = _decimal_option(rate_ul_h, "--rate-ul-h")
    hrs = _decimal_option(hours, "--hours")
    dens = _decimal_option(density, "--density")
    dt = _decimal_option(interval_s, "--interval-s")
    for name, v in (("--garbage", garbage), ("--dropout", dropout)):
        if not 0 <= v < 1:
            raise BenchError("%s must be a share from 0 to below 1, not %s" % (name, v),
                             EXIT_USAGE)
    _decimal_option(resolution_g, "--resolution-g")
    _decimal_option(noise_g, "--noise-g", positive=False)
    _decimal_option(evaporation_mg_h, "--evaporation-mg-h", positive=False)
    if hrs > 24 * 60:
        raise BenchError("--hours must be at most 1440 (60 days)", EXIT_USAGE)
    start, end, wins = _analysis_options(analysis_start_min, analysis_end_min, windows)
    opts = dict(REFERENCE_BALANCE, resolution_g=resolution_g, noise_g=noise_g,
                evaporation_mg_h=evaporation_mg_h, garbage=garbage, dropout=dropout)
    if balance_dies_after_min is not None:
        opts["dead_after_s"] = _decimal_option(balance_dies_after_min,
                                               "--balance-dies-after-min") * 60
    out = console()
    if boluses is not None:
        vol = _decimal_option(bolus_ul, "--bolus-ul")
        run_sim_boluses(out, boluses, vol, bolus_s, settle_s, seed, out_dir, dens, opts)
        return 0
    rep, _d, acq = run_sim(out, rate, hrs, seed, out_dir, dt, dens, start, end, wins, opts,
                           plots=not no_plots)  # fmt: skip
    if acq.stopped:
        raise BenchError("The test stopped early: %s; the report covers what was logged"
                         % acq.stopped)  # fmt: skip
    return _complete(rep)


@cli.command()
@click.option("--balance", "balance_port", default=None, help="the balance's serial port")
@click.option("--baud", default=9600, show_default=True, type=int)
@click.option("--balance-mode", default="poll", show_default=True,
              type=click.Choice(["poll", "continuous"]),
              help="poll: SI every interval; continuous: SIR output, resampled")
@click.option("--board", "board_port", default=None,
              help="the pump board's serial port (commanded through mpremote)")
@click.option("--ble", "ble_address", default=None, metavar="ADDRESS",
              help="command the pump over BLE instead (bleak; the device address)")
@click.option("--sim-radio", "sim_radio", default=None, metavar="HOST:PORT",
              help="command the virtual pump's radio (make sim-radio) over BLE instead")
@click.option("--key", "key_path", default=None, metavar="FILE",
              help="the clinician's key file, for --ble and --sim-radio")
@click.option("--bonds", "bond_file", default=None, metavar="FILE",
              help="pumpctl's bond file, for --sim-radio [pumpctl's default]")
@click.option("--confirm-increase", is_flag=True,
              help="over BLE: confirm a rate whose daily dose rises beyond the pump's step")
@click.option("--rate-ul-h", default=None, help="run this continuous rate (uL/h)")
@click.option("--hours", default="2", show_default=True, help="length of a rate test (h)")
@_bolus_test("run this many boluses instead")
@click.option("--silence-s", default=60, show_default=True, type=int,
              help="stop when the balance says nothing for this long (s)")
@click.option("--out", "out_dir", default=None, type=click.Path(path_type=Path),
              help="report folder (default build/pumpbench-run-<date>)")
@click.option("--dry-run", is_flag=True, help="print what would be done; touch no port")
@_common_analysis
def run(balance_port, baud, balance_mode, board_port, ble_address, sim_radio, key_path,
        bond_file, confirm_increase, rate_ul_h, hours, boluses, bolus_ul, bolus_s, settle_s,
        silence_s, out_dir, dry_run, density, interval_s, analysis_start_min, analysis_end_min,
        windows, no_plots):  # fmt: skip
    """A test on the real rig: the board runs a rate (or boluses), the balance is logged live."""
    if (rate_ul_h is None) == (boluses is None):
        raise BenchError("Give either --rate-ul-h (a rate test) or --boluses with --bolus-ul",
                         EXIT_USAGE)
    _bolus_options(boluses, bolus_ul, bolus_s, settle_s)
    dens = _decimal_option(density, "--density")
    dt = _decimal_option(interval_s, "--interval-s")
    hrs = _decimal_option(hours, "--hours")
    rate = None if rate_ul_h is None else _decimal_option(rate_ul_h, "--rate-ul-h")
    vol = None if bolus_ul is None else _decimal_option(bolus_ul, "--bolus-ul")
    # Checked before anything is sent: a typo must not cost a test of several hours.
    start, end, wins = _analysis_options(analysis_start_min, analysis_end_min, windows)
    if out_dir is None:
        out_dir = ROOT / "build" / ("pumpbench-run-" + time.strftime("%Y%m%d-%H%M%S"))
    out = console()
    board = pump_board(board_port, ble_address, sim_radio, key_path, bond_file,
                       confirm_increase, dry_run)  # fmt: skip
    if dry_run:
        return dry_run_plan(out, board, balance_port, baud, balance_mode, rate, hrs, dt,
                            boluses, vol, bolus_s, settle_s, out_dir)  # fmt: skip
    if not balance_port:
        raise BenchError("A test on the rig needs --balance PORT", EXIT_USAGE)
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        bal = _open_balance(balance_port, baud, silence_s, out_dir)
    except BenchError:
        if created and not any(out_dir.iterdir()):
            out_dir.rmdir()  # no empty report folder is left behind
        raise
    if boluses is not None:
        run_boluses(out, bal, board, boluses, vol, bolus_s, settle_s, dens, out_dir)
        return 0
    try:
        set_rate, res = board.program_rate(rate)
    except BenchError:
        bal.close()
        raise
    meta = {"command": "pumpbench run", "rate_ul_h_requested": _num(rate, 6),
            "rate_ul_h_set": _num(set_rate, 6), "programme_ng_per_day": res["rate_ng_per_day"],
            "strength_ug_per_ml": res["conc"], "density_g_ml": _num(dens, 6),
            "interval_s": _num(dt, 6), "hours": _num(hrs, 6), "balance_port": balance_port,
            "pump": board.describe(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "replaced_programme": res.get("replaced")}  # fmt: skip
    out.print("The pump's programme (%s) is replaced by one step of %s uL/h for this test; put "
              "it back afterwards with pumpctl program." % (programme_summary(res.get("replaced")),
                                                           _num(set_rate, 4)))  # fmt: skip
    log = B.CsvLog(out_dir / "balance.csv", meta, sync=True)
    live, show = live_display(out, float(hrs * 3600))

    def wait_until(t):
        d = float(t) - time.monotonic()
        if d > 0:
            time.sleep(d)

    try:
        acq = Acquisition(bal, log, time.monotonic, wait_until, float(dt), float(hrs * 3600),
                          balance_mode, show)  # fmt: skip
        if live is not None:
            with live:
                acq.run()
        else:
            acq.run()
        for p in bal.close():
            acq._take([p])
    finally:
        log.close()
    meta["readings"] = len(acq.readings)
    meta["problems"] = [p.sentence() for p in acq.problems]
    meta["stopped"] = acq.stopped
    rep, _d = analyse_and_report(out, out_dir, acq.readings, set_rate, dens, dt,
                                 reference_pulse_nl(), start, end, wins, meta, not no_plots,
                                 "pumpbench run: %s uL/h" % _num(set_rate, 4))  # fmt: skip
    if acq.stopped:
        raise BenchError("The test stopped early: %s; the log and a partial report are in %s"
                         % (acq.stopped, out_dir))  # fmt: skip
    return _complete(rep)


def pump_board(board_port, ble_address, sim_radio, key_path, bond_file, confirm_increase,
               dry_run=False):  # fmt: skip
    """The pump to command: ReplBoard for --board, BleBoard for --ble or --sim-radio."""
    given = [n for n, v in (("--board", board_port), ("--ble", ble_address),
                            ("--sim-radio", sim_radio)) if v is not None]  # fmt: skip
    if len(given) > 1:
        raise BenchError("Give one way to reach the pump, not %s" % " and ".join(given),
                         EXIT_USAGE)  # fmt: skip
    radio = ble_address is not None or sim_radio is not None
    if not radio:
        if key_path or bond_file or confirm_increase:
            raise BenchError("--key, --bonds and --confirm-increase are for --ble or "
                             "--sim-radio", EXIT_USAGE)  # fmt: skip
        if board_port is None and not dry_run:
            raise BenchError("A test on the rig needs the pump: --board PORT, --ble ADDRESS or "
                             "--sim-radio HOST:PORT", EXIT_USAGE)  # fmt: skip
        return ReplBoard(board_port or "<--board PORT>")
    if key_path is None and not dry_run:
        raise BenchError("Commanding the pump over BLE needs the clinician's key file: "
                         "--key FILE", EXIT_USAGE)  # fmt: skip
    if bond_file is not None and sim_radio is None:
        raise BenchError("--bonds is for --sim-radio (bleak keeps bonds in the system)",
                         EXIT_USAGE)  # fmt: skip
    from itbtools.bench_ble import BleBoard

    transport, address = ("sim", sim_radio) if sim_radio is not None else ("ble", ble_address)
    return BleBoard(transport, address, key_path, bond_file, BenchError, confirm_increase)


def _open_balance(port, baud, silence_s, out_dir):
    """The balance's port, everything passing on it recorded in out_dir/balance.mtsics (a
    transcript: the raw session, for a question the CSV cannot answer, and for the tests)."""
    try:
        return B.Balance.open(port, time.monotonic, baud=baud, silence_s=silence_s,
                              transcript=out_dir / "balance.mtsics")  # fmt: skip
    except B.BalanceError as e:
        raise BenchError(str(e)) from None


def run_boluses(out, bal, board, count, volume_ul, bolus_s, settle_s, density, out_dir,
                clock=time.monotonic, sleep=None, meta=None, watch=None):  # fmt: skip
    """A bolus series logged to boluses.csv and reported in report.json (written whatever ends
    the series); returns the report, or raises BenchError if the series stopped early.
    watch(n, before, after, set_ul) after each weighing."""
    path = out_dir / "boluses.csv"
    meta = dict(meta or {"command": "pumpbench run --boluses"}, pump=board.describe())
    sr = Series()
    ended = False  # the series ran its course (else an exception is on its way out)

    def row(n, before, after, set_ul):
        err = T.bolus_accuracy([(before, after)], set_ul, density).errors[0]
        out.print("bolus %d/%d: %s g -> %s g, error %s %%" % (n, count, before, after,
                                                             _num(err, 2)))  # fmt: skip
        if watch is not None:
            watch(n, before, after, set_ul)

    try:
        with open(path, "w") as f:
            f.write("# volume_ul: %s\nn,before_g,after_g\n" % volume_ul)
            f.flush()
            try:
                bolus_series(bal, board, f, clock, sleep or SLEEP, count, volume_ul, bolus_s,
                             settle_s, on_row=row, series=sr)  # fmt: skip
                ended = True
            finally:
                bal.close()
    finally:
        pairs, set_ul, why, given = sr
        why = why if ended else "pumpbench failed during the series"
        set_ul = volume_ul if set_ul is None else set_ul
        rep = report_bolus(out, pairs, set_ul, density)
        meta.update(bolus=rep.as_dict(), stopped=why, given=given)
        write_outputs(out_dir, meta, None)
    if why:
        why = why.strip().rstrip(".")
        extra = ""
        if given > len(pairs):
            extra = " (%d given, the last not weighed)" % given
        raise BenchError("The bolus series stopped after %d of %d boluses%s: %s" % (
            len(pairs), count, extra, why[:1].lower() + why[1:]))  # fmt: skip
    return meta


def dry_run_plan(out, board, balance_port, baud, mode, rate, hrs, dt, boluses, vol, bolus_s,
                 settle_s, out_dir):  # fmt: skip
    out.print("dry run: no port is opened, nothing is sent.")
    out.print("balance: %s at %d baud, 8N1, MT-SICS %s" % (
        balance_port or "<--balance PORT>", baud,
        "SI every %s s" % _num(dt) if mode == "poll" else "SIR continuous output, stopped by @"))
    out.print("pump: %s" % board.describe())
    if rate is not None:
        out.print("program a continuous %s uL/h at the pump's own strength (the running "
                  "programme is replaced, its periodic and patient boluses too):" % _num(rate, 6))
    else:
        out.print("%d clinician boluses of %s uL over %d s, each weighed stable (S) before and "
                  "%d s after; per bolus:" % (boluses, _num(vol, 6), bolus_s, settle_s))
    for line in board.plan(rate, vol, bolus_s):
        out.print(line, markup=False)
    if rate is not None:
        n = int(hrs * 3600 // dt) + 1
        out.print("log: %d readings over %s h to %s, then the trumpet analysis and plots in %s"
                  % (n, _num(hrs), out_dir / "balance.csv", out_dir))  # fmt: skip
    else:
        out.print("log: %s, then the bolus report in %s" % (out_dir / "boluses.csv", out_dir))
    out.print("transcript: every byte on the balance's port to %s" % (out_dir / "balance.mtsics"))
    return 0


def _quote(a):
    if a and all(c.isalnum() or c in "-_./:<>+" for c in a):
        return a
    return "'" + a.replace("'", "'\\''") + "'"


# ---- entry point ----


def main(argv=None):
    """The console script: every failure is one sentence and an exit code, never a traceback."""
    err = console(err=True)
    try:
        rv = cli.main(args=argv, prog_name="pumpbench", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as e:
        click.echo(e.format_message())  # `pumpbench` alone: the help, as a usage error
        return EXIT_USAGE
    except click.UsageError as e:
        err.print("pumpbench: " + usage_sentence(e), markup=False)
        return EXIT_USAGE
    except click.Abort:
        err.print("pumpbench: interrupted.")
        return EXIT_PARTIAL
    except BenchError as e:
        err.print("pumpbench: " + sentence(e), markup=False)
        return e.code
    except KeyboardInterrupt:
        err.print("pumpbench: interrupted.")
        return EXIT_PARTIAL
    except (B.BalanceError, ValueError) as e:
        err.print("pumpbench: " + sentence(e), markup=False)
        return EXIT_PARTIAL
    except OSError as e:
        err.print("pumpbench: " + sentence("%s (%s)" % (
            e.strerror or type(e).__name__, e.filename or "")), markup=False)
        return EXIT_PARTIAL
    except Exception as e:  # noqa: BLE001 - a bug must still be one sentence, not a traceback
        err.print("pumpbench: " + sentence("an unexpected error stopped pumpbench (%s: %s); "
                                            "please report it" % (type(e).__name__, e)),
                  markup=False)  # fmt: skip
        return EXIT_BUG
    return rv if isinstance(rv, int) else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

