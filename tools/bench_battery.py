# Battery and alarm bench metrics for build/bench.json: a simulated full discharge of the sim
# board's cell through a real Supervisor, and the worst alarm latency in a scripted mix.

import multiprocessing
import statistics
import sys
from fractions import Fraction
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "firmware") not in sys.path:
    sys.path[:0] = [str(ROOT / "firmware"), str(ROOT)]

from boards.sim import board, hw  # noqa: E402
from pump import alarms as A  # noqa: E402
from pump import battery as B  # noqa: E402
from pump import engine as E  # noqa: E402
from pump import limits as L  # noqa: E402
from pump import reservoir as RS  # noqa: E402
from pump import rx as RX  # noqa: E402
from pump import supervisor as S  # noqa: E402
from pump.limiter import Limiter  # noqa: E402

DAY = L.DAY_MS
HOUR = 3_600_000
MIN = 60_000
YEAR_DAYS = 365
ERRORS_PCT = (-10, 0, 10)  # the true cell draws this much more than the firmware's model
# A pulse is 16 microsteps for about 25 ms (the board's energy comment); a reading of 16 ADC
# conversions is taken to span 20 ms. A reading overlapping either sees the motor's sag.
PULSE_MS = 25
READ_MS = 20
READS = 16
# Radio use: the patient's remote 2 min a day, a clinician session of 30 min every 30 days
# (which is also when the reservoir is refilled: the 40 mL variant lasts the interval).
PATIENT_RADIO_MS = 2 * MIN
CLINIC_RADIO_MS = 30 * MIN
CLINIC_EVERY_DAYS = 30
GENEROUS = L.ClinicianLimits(
    L.HARD_MAX_24H_NG, L.HARD_MAX_BOLUS_NG, L.HARD_MAX_RATE_NL_PER_DAY, L.DOSE_STEP_PCT_MAX
)


class _Log:
    def __init__(self):
        self.records = []

    def __call__(self, *rec):
        if rec[0] != "forecast":
            self.records.append(rec)


def _pump(fill_nl, capacity_nl, limiter_lim=GENEROUS, log=None, program=True):
    cal = board.calibration()
    eng = E.Engine(cal, Limiter(cal, limiter_lim, 500), GENEROUS, 500, log=log)
    res = RS.Reservoir(cal, capacity_nl, 2_000_000, fill_nl)
    bat = B.Monitor(board.CELL, board.ENERGY, board.ADC_CAL, log=log,
                    eri_margin_days=board.ERI_MARGIN_DAYS)  # fmt: skip
    al = A.Alarms(log=log)
    sup = S.Supervisor(eng, res, bat, al, S.Settings(board.PUMP_DEAD_VOLUME_NL), log=log)
    if program:
        assert sup.program(RX.continuous(500, 350_000), confirm=True) is None
    return sup


def discharge(error_pct, seed=1, after_eos_days=10, max_days=4000):
    """Run the sim board's cell from fresh to EOS (and after_eos_days beyond) under the
    reference programme. Returns a dict of what happened, times in days."""
    log = _Log()
    cap = board.RESERVOIR_NL["40ml"]
    sup = _pump(cap, cap, log=log)
    en = board.ENERGY
    cell = hw.SimCell(board.CELL, board.ADC_CAL, seed=seed, error_pct=error_pct)
    jitter = hw.Lcg(seed * 7919 + 1)
    mech = hw.Mechanism()
    clock = [0]
    buz = hw.RecordingBuzzer(lambda: clock[0])
    t = 0
    last_pulse = -DAY
    changes = []  # (ms, old, new)
    samples = under_load = pulses = 0
    eos_ms = None
    pulses_at_eos = 0
    dod_at_eos = None
    radio_end = None  # end of the session in progress
    radio_next = 9 * HOUR + jitter.uniform(0, 10 * HOUR)
    radio_len = PATIENT_RADIO_MS
    day_of_session = 0
    end_ms = max_days * DAY
    while t < end_ms:
        nxt = sup.next_wake_ms()
        ev = radio_end if radio_end is not None else radio_next
        if ev < nxt:
            nxt = ev
        # The cell's quiescent draw for the time that passed (uA x ms = nC).
        cell.draw(en.quiescent_ua * (nxt - t))
        t = nxt
        clock[0] = t
        done = sup.advance(t, mech, buz)
        if done:
            pulses += done
            cell.draw(en.pulse_nc * done)
            last_pulse = t
        if radio_end is not None and t >= radio_end:
            sup.radio_on(radio_len)
            cell.draw(en.radio_ua * radio_len)
            radio_end = None
            day_of_session += 1
            d = t // DAY + 1
            radio_next = d * DAY + 9 * HOUR + jitter.uniform(0, 10 * HOUR)
            radio_len = CLINIC_RADIO_MS if d % CLINIC_EVERY_DAYS == 0 else PATIENT_RADIO_MS
        elif radio_end is None and t >= radio_next:
            radio_end = t + radio_len
            if radio_len == CLINIC_RADIO_MS:
                _refill(sup)
        if sup.battery_due(t):
            load = 0
            nxt_pulse = sup.engine.next_due_ms()
            if last_pulse + PULSE_MS > t or nxt_pulse <= t + READ_MS:
                load += board.MOTOR_CURRENT_MA
                under_load += 1
            if radio_end is not None:
                load += en.radio_ua // 1000
            s, c = cell.sample(READS, load)
            ch = sup.battery_sample(t, s, c)
            samples += 1
            if ch is not None:
                changes.append((t, ch[0], ch[1]))
                if ch[1] == B.EOS and eos_ms is None:
                    eos_ms = t
                    pulses_at_eos = pulses
                    dod_at_eos = cell.dod_ppm()
                    end_ms = t + after_eos_days * DAY
    first = {}
    for ms, _old, new in changes:
        first.setdefault(new, ms)
    raised = [r for r in log.records if r[0] == "alarm_raise" and r[1].startswith("battery")]
    return {
        "error_pct": error_pct,
        "eri_day": first[B.ERI] / DAY if B.ERI in first else None,
        "eos_day": first[B.EOS] / DAY if B.EOS in first else None,
        "changes": [(ms / DAY, B.STATE_NAMES[o], B.STATE_NAMES[n]) for ms, o, n in changes],
        "back": sum(1 for _ms, o, n in changes if n < o),
        "first_year": sum(1 for ms, _o, _n in changes if ms < YEAR_DAYS * DAY),
        "alarms": [r[1] for r in raised],
        "samples": samples,
        "under_load": under_load,
        "pulses_after_eos": pulses - pulses_at_eos,
        "days_after_eos": 0 if eos_ms is None else (t - eos_ms) / DAY,
        "loads_cut": sup.loads_cut(),
        "true_dod_ppm_at_eos": dod_at_eos,
        "end_day": t / DAY,
    }


def _refill(sup):
    # The clinician's visit: withdraw exactly what the estimate says, fill the reservoir again.
    res = sup.reservoir
    left = res.remaining_nl()
    assert sup.refill_begin(left if left > 0 else 0) is None
    assert sup.refill_fill(res.capacity_nl, 500) is None
    assert sup.refill_commit() is None


def _discharge_job(error_pct):
    return discharge(error_pct, seed=1000 + error_pct)


def battery_metrics(runs=None):
    """battery.eri_to_eos_days (median over the model errors), its minimum, and
    battery.false_alarms (state changes in the first year plus any back transition)."""
    if runs is None:
        with multiprocessing.Pool(2) as pool:
            runs = pool.map(_discharge_job, ERRORS_PCT)
    spans = []
    for r in runs:
        if r["eri_day"] is None or r["eos_day"] is None:
            raise SystemExit("discharge at error %+d%% did not reach ERI and EOS" % r["error_pct"])
        spans.append(r["eos_day"] - r["eri_day"])
        print(
            "  discharge error %+3d%%: ERI day %.1f, EOS day %.1f (%.1f days apart), "
            "true depth at EOS %.1f %%, %d samples, %d under load, alarms %s"
            % (
                r["error_pct"],
                r["eri_day"],
                r["eos_day"],
                spans[-1],
                r["true_dod_ppm_at_eos"] / 10_000,
                r["samples"],
                r["under_load"],
                ",".join(r["alarms"]),
            )
        )
        # At EOS therapy goes on at the programmed rate and the radio's advertising is cut.
        cal = board.calibration()
        pulse_nl = Fraction(cal.ml_num * 1_000_000, cal.ml_den)
        want = Fraction(r["days_after_eos"]) * 700_000 / pulse_nl
        if abs(r["pulses_after_eos"] - want) > 2 or not r["loads_cut"]:
            raise SystemExit("after EOS: %d pulses in %.2f days (want %.1f), loads cut %s"
                             % (r["pulses_after_eos"], r["days_after_eos"], want,
                                r["loads_cut"]))  # fmt: skip
    false = sum(r["first_year"] + r["back"] for r in runs)
    return {
        "battery.eri_to_eos_days": statistics.median(spans),
        "battery.eri_to_eos_days_min": min(spans),
        "battery.false_alarms": false,
        "battery.readings_under_load": sum(r["under_load"] for r in runs),
    }


# ---- alarm latency ----


def decode_patterns(changes):
    """Pattern starts heard on a buzzer, from its (ms, on) changes alone:
    [(start_ms, set of priorities it can be)]. Within a pattern every tone and pause has its
    set length; a pattern ends when it is complete or when a tone or pause differs (cut short,
    followed by a new pattern). A first tone cut short leaves the priority open among those
    whose first tone is longer."""
    tones = hw.tones(changes)
    prios = (A.HIGH, A.MEDIUM, A.LOW)
    starts = []
    i = 0
    while i < len(tones):
        s, d = tones[i]
        full = [p for p in prios if A.PATTERNS[p][0] == d]
        if not full:
            cands = {p for p in prios if A.PATTERNS[p][0] > d}
            if not cands:
                raise AssertionError("tone at %d ms of %d ms fits no pattern" % (s, d))
            starts.append((s, cands))
            i += 1
            continue
        p = full[0]
        starts.append((s, {p}))
        pat = A.PATTERNS[p]
        k = 0  # index of the current tone in pat
        while True:
            s, d = tones[i]
            i += 1
            if d > pat[k]:
                raise AssertionError("tone at %d ms longer than its pattern" % s)
            if d < pat[k] or k + 1 == len(pat) or i == len(tones):
                break  # cut short, complete, or the record ends
            if tones[i][0] - (s + d) != pat[k + 1]:
                break  # stopped after this tone: the next one starts a new pattern
            k += 2
    return starts


class _Mech(hw.Mechanism):
    """Records the shell time of every attempt and whether it was done."""

    def __init__(self, clock):
        super().__init__()
        self.clock = clock
        self.log = []

    def pulse(self):
        ok = super().pulse()
        self.log.append((self.clock[0], ok))
        return ok


def latency_run(phase_ms):
    """One scripted mix of alarm conditions. Returns (conditions, decoded latencies in ms,
    Alarms.max_latency_ms); a condition is (shell ms, priority, name)."""
    log = _Log()
    cap = board.RESERVOIR_NL["20ml"]
    # The limiter is given a lower maximum rate than the engine checks requests against (a
    # configuration fault), so a fast clinician bolus the engine accepts is blocked: a provoked
    # block. The engine asks the limiter itself about the 24 h dose, so that cannot be used.
    tight = L.ClinicianLimits(L.HARD_MAX_24H_NG, L.HARD_MAX_BOLUS_NG, 1_000_000, 30)
    sup = _pump(2_300_000, cap, limiter_lim=tight, log=log, program=False)
    al = sup.alarms
    res = sup.reservoir
    # The buzzer and every condition are timed on a monotonic clock (the shell's clock plus
    # how far it was set back), so a backwards jump does not scramble the record.
    clock = [0]
    jumped = 0
    buz = hw.RecordingBuzzer(lambda: clock[0])
    mech = _Mech(clock)
    cell = hw.SimCell(board.CELL, board.ADC_CAL, seed=phase_ms + 3)
    full_nc = board.CELL.capacity_uah * B.NC_PER_UAH
    ph = phase_ms
    # (shell ms, action). Hardware changes happen before the wake at that time; requests come
    # right after it, as a shell serving a request first brings the supervisor up to date
    # (a request is stamped with the supervisor's time of its last wake).
    # The programme starts at the phase, so pulses, battery samples and repeats fall
    # differently against each other from one phase to the next.
    script = [
        (ph, "program"),
        (10 * HOUR + ph, "jam"),  # near the low-reservoir crossing (about 10.3 h)
        (10 * HOUR + 40 * MIN + ph, "free"),
        (12 * HOUR + ph, "ack"),
        (26 * HOUR + ph, "eri"),  # the true cell drops under ERI; the monitor debounces it
        (27 * HOUR + 50 * MIN + ph, "jam"),  # repeating high tones when ERI is confirmed
        (28 * HOUR + 20 * MIN + ph, "free"),
        (29 * HOUR + ph, "ack"),
        (34 * HOUR + ph, "eos"),
        (44 * HOUR + ph, "bolus"),
        (60 * HOUR + ph, "clear"),
        # After the empty crossing (about 95 h): a jam, and a refill (with a discrepancy, to a
        # fill that is soon low) entered at the very wake the stall is declared, so a high, a
        # medium and a low alarm arise at once and the low one waits longest.
        (99 * HOUR + ph, "jam"),
        (99 * HOUR + ph, "refill"),
        (99 * HOUR + 30 * MIN + ph, "free"),
        (101 * HOUR + ph, "ack"),
        (104 * HOUR + ph, "backwards"),
        (110 * HOUR + ph, "clear"),
        (120 * HOUR, "end"),
    ]
    conds = []
    refill = False
    fails = 0
    stalled = False
    low = empty = False
    fault = False
    t = 0
    k = 0
    n_log = 0
    while True:
        nxt = sup.next_wake_ms()
        if script[k][0] < nxt:
            nxt = script[k][0]
        t = nxt if nxt > t else t
        clock[0] = t + jumped
        todo = []
        while k < len(script) and script[k][0] <= t:
            todo.append(script[k][1])
            k += 1
        for what in todo:
            if what == "jam":
                mech.jam()
            elif what == "free":
                mech.free()
            elif what == "eri":
                cell.used_nc = full_nc * 94 // 100
            elif what == "eos":
                cell.used_nc = full_nc * 995 // 1000
            elif what == "backwards":
                t -= 3 * HOUR
                jumped += 3 * HOUR
                conds.append((t + jumped, A.MEDIUM, "clock"))
                # The script's later times are on the shell's clock, which jumped too.
                script[k:] = [(w - 3 * HOUR, x) for w, x in script[k:]]
        n0 = len(mech.log)
        sup.advance(t, mech, buz)
        new_stall = False
        for at, ok in mech.log[n0:]:
            fails = 0 if ok else fails + 1
            if ok and stalled:
                stalled = False
            if fails >= sup.settings.stall_count and not stalled:
                stalled = new_stall = True
                conds.append((at, A.HIGH, "stall"))
        left = res.remaining_nl()
        if not low and left <= res.low_nl:
            low = True
            conds.append((t + jumped, A.MEDIUM, "reservoir_low"))
        if not empty and left <= 0:
            empty = True
            conds.append((t + jumped, A.HIGH, "reservoir_empty"))
        if sup.engine.fault and not fault:
            fault = True
            conds.append((t + jumped, A.HIGH, "limiter_block"))
        for rec in log.records[n_log:]:
            if rec[0] == "pulses_skipped_late":
                raise AssertionError("the driver overslept: %r" % (rec,))
        n_log = len(log.records)
        if sup.battery_due(t):
            s, c = cell.sample(READS)
            ch = sup.battery_sample(t, s, c)
            if ch is not None:
                p = A.HIGH if ch[1] == B.EOS else A.MEDIUM
                conds.append((t + jumped, p, "battery_" + B.STATE_NAMES[ch[1]]))
        for what in todo:
            if what == "end":
                return conds, _latencies(conds, buz.changes), al.max_latency_ms
            if what == "program":
                assert sup.program(RX.continuous(500, 350_000), confirm=True) is None
                if sup.low_at_ms - sup.settings.refill_notice_ms <= t:
                    conds.append((t + jumped, A.LOW, "refill_due"))  # the small fill is soon low
            elif what == "ack":
                for cid, *_rest in al.active():
                    sup.acknowledge(cid)
            elif what == "bolus":
                bad = sup.clinician_bolus(60_000, 3600)
                assert bad is None, (bad.code, bad.field)
            elif what == "clear":
                if sup.engine.fault:
                    sup.clear_fault()
                    fault = False
            elif what == "refill":
                refill = True
        if refill and new_stall:
            refill = False
            left = res.remaining_nl()
            withdrawn = (left if left > 0 else 0) + 2_000_000
            tol = max(1_000_000, res.used_nl() * 20 // 100)
            assert sup.refill_begin(withdrawn) is None
            assert sup.refill_fill(2_500_000, 500) is None
            assert sup.refill_commit() is None
            if abs(withdrawn - left) > tol:
                conds.append((t + jumped, A.MEDIUM, "discrepancy"))
            if sup.low_at_ms - sup.settings.refill_notice_ms <= t + jumped:
                conds.append((t + jumped, A.LOW, "refill_due"))
            low = empty = False


def _latencies(conds, changes):
    starts = decode_patterns(changes)
    out = []
    for tc, p, nm in conds:
        lat = None
        for s, cands in starts:
            if s >= tc and p in cands:
                lat = s - tc
                break
        if lat is None:
            raise AssertionError("%s at %d ms was never annunciated" % (nm, tc))
        out.append((nm, tc, lat))
    return out


PHASES_MS = (0, 1, 37, 411, 2_050, 4_100, 7_777, 12_345, 29_999, 45_000, 59_999, 81_000)


def _latency_job(ph):
    conds, lats, own = latency_run(ph)
    return ph, lats, own


def alarm_metrics(results=None):
    """alarms.max_latency_s: the worst condition-to-first-tone time over the scripted mix at
    several phases, measured on the buzzer and by the alarms themselves (which must agree)."""
    if results is None:
        results = [_latency_job(ph) for ph in PHASES_MS]
    worst = 0
    names = set()
    for ph, lats, own in results:
        heard = max(lat for _nm, _tc, lat in lats)
        if heard != own:
            raise AssertionError(
                "phase %d: buzzer says %d ms, Alarms.max_latency_ms %d" % (ph, heard, own)
            )
        worst = max(worst, heard)
        names.update(nm for nm, _tc, _lat in lats)
    print("  alarm latency: worst %d ms over %d phases; conditions: %s"
          % (worst, len(results), ", ".join(sorted(names))))  # fmt: skip
    return {"alarms.max_latency_s": worst / 1000}


def metrics():
    """All the battery and alarm metrics, the simulations spread over two processes."""
    with multiprocessing.Pool(2) as pool:
        runs = pool.map_async(_discharge_job, ERRORS_PCT, chunksize=1)
        lat = pool.map_async(_latency_job, PHASES_MS, chunksize=1)
        runs, lat = runs.get(), lat.get()
    out = battery_metrics(runs)
    out.update(alarm_metrics(lat))
    return out


if __name__ == "__main__":
    import time

    t0 = time.perf_counter()
    m = metrics()
    for key in sorted(m):
        print("  %-44s %r" % (key, m[key]))
    print("%.0f s" % (time.perf_counter() - t0))
