# Saving and restoring the whole pump: the commit that writes log then state, and the boot path
# (self test, reset cause, recovery from A, B or the log, resume). Pure: the filesystem comes in.

from pump import alarms as A
from pump import battery as B
from pump import codec as C
from pump import engine as E
from pump import limits as L
from pump import reservoir as RS
from pump import rx as RX
from pump import store as S
from pump import supervisor as SV
from pump.limiter import Limiter

MAX_OUTAGE_MS = 366 * L.DAY_MS  # an RTC further ahead than this is not believed
RETRY_MS = 60_000  # after a failed save, the next try waits this long


def _nothing(_value):
    return False


class Journal:
    """The log sink every core module writes to: events wait in RAM until the next commit,
    which writes them before the state that follows from them."""

    def __init__(self):
        self.pending = []
        self.clock = None  # returns the wall time in ms; set once the supervisor exists

    def __call__(self, name, *args):
        self.pending.append((self.clock() if self.clock else 0, name, args))


class Plant:
    """What the board fixes: mechanism, reservoir, cell and the supervisor's settings. Their
    identity is stored with the state, so state saved on other hardware is not taken."""

    def __init__(self, name, calib, capacity_nl, cell, energy, adc, eri_margin_days, settings):
        if settings.batch_pulses < 1:
            raise ValueError("storage needs a checkpoint batch of at least one pulse")
        self.name = name
        self.calib = calib
        self.capacity_nl = capacity_nl
        self.cell = cell
        self.energy = energy
        self.adc = adc
        self.eri_margin_days = eri_margin_days
        self.settings = settings

    def identity(self):
        c = self.calib
        return [self.name, c.ml_num, c.ml_den, c.usteps_per_pulse, self.capacity_nl,
                self.cell.name]  # fmt: skip

    def build(self, lim, conc, low_nl, fill_nl, journal, saved=None):
        """A supervisor at engine time 0 over new parts, or, given a saved snapshot, over parts
        restored from it (restored before the supervisor is built, so that its start-up checks
        see the saved reservoir and alarms and change nothing)."""
        lim = lim if isinstance(lim, L.ClinicianLimits) else L.ClinicianLimits(*lim)
        limiter = Limiter(self.calib, lim, conc)
        eng = E.Engine(self.calib, limiter, lim, conc, journal)
        res = RS.Reservoir(self.calib, self.capacity_nl, low_nl, fill_nl)
        bat = B.Monitor(self.cell, self.energy, self.adc, journal, self.eri_margin_days)
        al = A.Alarms(journal)
        wall_off = 0
        if saved is not None:
            eng.restore(saved[0])
            limiter.restore(saved[1])
            res.restore(saved[2])
            bat.restore(saved[3])
            al.restore(saved[4], eng.now_ms())
            wall_off = saved[10]
        journal.clock = lambda: eng.now_ms() + wall_off
        sup = SV.Supervisor(eng, res, bat, al, self.settings, journal)
        if saved is not None:
            sup.restore(saved)
        journal.clock = sup.wall_ms
        return sup


class Storage:
    """The pump's files on one littlefs volume."""

    def __init__(self, fs, identity, seg_bytes=8192, max_segments=16):
        S.ensure_dirs(fs)
        self.fs = fs
        self.identity = identity
        self.state = S.StateFiles(fs)
        self.log = S.EventLog(fs, seg_bytes, max_segments)
        self.days = S.DayTotals(fs)
        self.day = -1  # last wall day whose total is written
        self.commits = 0
        self._retry_at = 0

    def commit(self, sup, journal, rtc_ms=None):
        """Write the pending events, then the state that follows from them; tell the supervisor
        the next batch may go. rtc_ms: the real-time clock's reading now, if it is running (a
        restart measures its outage against it). A storage error keeps therapy going (see
        storage_failed)."""
        if not sup.storage_ok and sup.now_ms() < self._retry_at:
            return False
        try:
            day = sup.wall_ms() // L.DAY_MS
            if self.day >= 0 and day > self.day:
                self.days.append(self.day, [sup.moved_pulses, sup.engine.delivered,
                                            sup.reservoir.remaining_nl()])  # fmt: skip
            self.day = day
            self.log.append(journal.pending, lambda: anchor(sup))
            journal.pending = []
            payload = C.encode([self.identity, self.log.seq, self.log.head, self.day, rtc_ms,
                                sup.snapshot(copy=False)])  # fmt: skip
            self.state.save(payload)
        except (OSError, ValueError) as e:
            # Nothing is dropped: unwritten events stay pending, and the log's end is re-read
            # (only the last record kept in RAM) so that sequence numbers carry on from what is
            # really on flash. The next try waits a minute.
            self._retry_at = sup.now_ms() + RETRY_MS
            try:
                records, _problems = self.log.scan(_nothing)
                self.log.resume(records)
            except OSError:
                pass
            sup.storage_failed(str(e))
            return False
        self.commits += 1
        sup.checkpointed()
        if not sup.storage_ok:
            sup.storage_restored()
        return True

    def write_marker(self, reason):
        """Before an intentional reset: say why, so the next boot can tell it from a brownout
        (which the ESP32 reports as a watchdog reset)."""
        S.write_atomic(self.fs, S.MARKER_FILE, reason.encode())

    def take_marker(self):
        try:
            with self.fs.open(S.MARKER_FILE, "rb") as f:
                reason = f.read().decode()
        except (OSError, UnicodeError):
            return None
        self.fs.remove(S.MARKER_FILE)
        return reason

    def clean_tmp(self):
        # A power cut between creating a .tmp file and its rename leaves it behind.
        for d in (S.STATE_DIR, S.LOG_DIR):
            for n in self.fs.listdir(d):
                if n.endswith(".tmp"):
                    self.fs.remove(d + "/" + n)


def reset_cause(marker, hw_cause):
    """Our own marker names an intentional reset; without one, the hardware's cause, where a
    power-on may also be a brownout (MicroPython 1.29 on the ESP32 reports both alike)."""
    if marker:
        return "intended:" + marker
    if hw_cause == "power_on":
        return "power_on_or_brownout"
    return hw_cause or "unknown"


def clock_valid(rtc_wall_ms, last_wall_ms):
    return rtc_wall_ms is not None and last_wall_ms <= rtc_wall_ms <= last_wall_ms + MAX_OUTAGE_MS


def outage(rtc_now_ms, rtc_saved_ms, wall_saved_ms):
    """Time since the save by the RTC, or None if it cannot be trusted. Measured against the
    RTC's own reading at the save when there is one, so the drift between the RTC and the
    pump's time since the clock was set does not count."""
    ref = wall_saved_ms if rtc_saved_ms is None else rtc_saved_ms
    if not clock_valid(rtc_now_ms, ref):
        return None
    return rtc_now_ms - ref


class Boot:
    """The outcome of a boot: the supervisor to run, where its state came from, and what the
    self test found."""

    def __init__(self, sup, source, cause, problems):
        self.sup = sup
        self.source = source  # "a", "b", "log", "new" or "none"
        self.cause = cause
        self.problems = problems


def _restore(plant, journal, payload, identity):
    ident, log_seq, log_head, day, rtc, st = C.decode(payload)
    if ident != identity:
        raise ValueError("state was saved for other hardware or calibration")
    eng_s, res_s = st[0], st[2]
    # Limits, strength and fill come from the record; the parts' restore() sets every field.
    sup = plant.build(eng_s[18], eng_s[2], res_s[3], res_s[1], journal, st)
    return sup, log_seq, log_head, day, rtc


def recover(fs, plant, shell_now_ms, rtc_wall_ms, hw_cause, first_boot, seg_bytes=8192,
            max_segments=16):  # fmt: skip
    """Power-on self test and recovery. Returns (Boot, Storage, Journal).

    first_boot: (limits, conc, low_nl), the commissioning settings. A pump whose flash holds
    nothing starts from them, stopped. A pump whose state is lost starts from them only if the
    log holds no programme either, and then stopped, with the high-priority alarm."""
    journal = Journal()
    store = Storage(fs, plant.identity(), seg_bytes, max_segments)
    cause = reset_cause(store.take_marker(), hw_cause)
    store.clean_tmp()
    problems = []
    good, bad = store.state.read_all()
    for name in sorted(bad):
        if bad[name] != "missing":
            problems.append("state copy %s: %s" % (name, bad[name]))
    heads = []
    for _seq, payload, _name in good:
        try:
            heads.append(C.decode(payload)[1])
        except C.FormatError:
            pass
    digest = _LogDigest()
    records, log_problems = store.log.scan(digest, heads)
    store.log.resume(records)
    sup = None
    source = None
    for seq, payload, name in good:
        try:
            sup, log_seq, log_head, day, saved_rtc = _restore(plant, journal, payload,
                                                              plant.identity())  # fmt: skip
        except (ValueError, TypeError, IndexError, KeyError, AttributeError,
                C.FormatError) as e:  # a malformed record: try the other copy (not MemoryError)

            problems.append("state copy %s: %s" % (name, e))
            journal.pending = []
            continue
        store.state.adopt(seq, name)
        store.day = day
        problems.extend(store.log.verify(records, log_problems, log_seq, log_head))
        source = name
        break
    if sup is not None:
        sup.log("reset", cause, source, store.state.seq)
        sup.resume(shell_now_ms, outage(rtc_wall_ms, saved_rtc, sup._last + sup.wall_off_ms),
                   plant.settings.batch_pulses)  # fmt: skip
    else:
        problems.extend(store.log.verify(records, log_problems))
        damaged = [n for n in bad if bad[n] != "missing"]
        # A counter in the log means a command was taken, so a state was saved once.
        if not good and not damaged and not digest.counters and _never_saved(records):
            sup = _new(plant, journal, first_boot, shell_now_ms, rtc_wall_ms)
            source = "new"
            sup.log("reset", cause, source, 0)
        else:
            sup = _from_log(plant, journal, records, digest, shell_now_ms, rtc_wall_ms)
            source = "log" if sup is not None else "none"
            if sup is None:
                sup = _stopped(plant, journal, first_boot, shell_now_ms)
            sup.log("reset", cause, source, 0)
            sup.log("state_lost", source)
            # A moment, not a lasting condition: it ends once a clinician acknowledges it.
            sup.alarms.event(A.SELF_TEST, sup.now_ms(), "state_lost")
    for p in problems:
        sup.log("storage_problem", p)
    return Boot(sup, source, cause, problems), store, journal


def _start(sup, shell_now_ms, rtc_wall_ms, last_wall_ms):
    # A fresh supervisor stands at engine time 0: map the shell's clock onto it, and take the
    # wall clock if it can be believed.
    sup._offset = sup.engine.now_ms() - shell_now_ms
    if rtc_wall_ms is not None and rtc_wall_ms >= last_wall_ms:
        sup.set_clock(rtc_wall_ms)
    else:
        sup.engine.clock_lost()
        sup.alarms.condition(A.CLOCK, True, sup.now_ms())


def _new(plant, journal, first_boot, shell_now_ms, rtc_wall_ms):
    lim, conc, low_nl = first_boot
    sup = plant.build(lim, conc, low_nl, 0, journal)
    sup.log("commissioned", list(sup.engine.lim.as_tuple()), conc, low_nl,
            plant.identity())  # fmt: skip
    _start(sup, shell_now_ms, rtc_wall_ms, 0)
    return sup


def _stopped(plant, journal, first_boot, shell_now_ms):
    # Nothing to go on: stop (the high-priority alarm says so) with the commissioning limits,
    # so that a clinician can program the pump again.
    lim, conc, low_nl = first_boot
    sup = plant.build(lim, conc, low_nl, 0, journal)
    _start(sup, shell_now_ms, None, 0)
    return sup


class _LogDigest:
    """What the boot path needs from the log, gathered while it is scanned, so that only a
    few records stay in RAM: the rare ones by name, the highest value of each replay counter,
    and the boluses of the last 24 h."""

    RARE = ("program", "mode", "limits", "commissioned", "limiter_block", "fault_cleared",
            "bridge_start", "low_threshold", "reset", "segment_start")  # fmt: skip

    def __init__(self):
        self.counters = {}
        self.boluses = []  # (wall ms, dose ng) of bolus_start records within 24 h of the last

    def __call__(self, value):
        name = value[2]
        if name == "counter":
            self._count(value[3][0], value[3][1])
            return False
        if name == "segment_start":
            for key, v in value[3][6]:
                self._count(key, v)
        if name == "bolus_start":
            wall = value[1]
            self.boluses = [b for b in self.boluses if b[0] > wall - L.DAY_MS]
            self.boluses.append((wall, value[3][1]))
            return False
        return name in self.RARE

    def _count(self, key, v):
        if v > self.counters.get(key, 0):
            self.counters[key] = v


def _therapy_from_log(records):
    """(mode, prescription, limits, low threshold, faulted) as the log's records leave them,
    read in order; segment_start records restate them all, so rotation loses nothing."""
    mode = E.MODE_STOPPED
    rx = lim = None
    low = conc = 0
    fault = False
    for _seq, _h, value, _n in records:
        name = value[2]
        args = value[3]
        if name == "commissioned":
            lim, conc, low = args[0], args[1], args[2]
        elif name == "limits":
            lim = args[1]
        elif name == "program":
            rx = RX.Prescription(*args[1])
            conc = rx.conc_ug_per_ml
            mode = E.MODE_PROGRAM
        elif name == "mode":
            mode = args[1]
        elif name == "bridge_start":
            conc = args[1]
            if rx is not None:
                rx = rx.with_concentration(conc)
        elif name == "low_threshold":
            low = args[1]
        elif name == "limiter_block":
            fault = True
        elif name == "fault_cleared":
            fault = False
        elif name == "segment_start":
            mode, key, lim, fault = args[0], args[1], args[2], bool(args[3])
            rx = None if key is None else RX.Prescription(*key)
            low, conc = args[4], args[5]
    return mode, rx, lim, low, fault, conc


def anchor(sup):
    """What a new log segment restates first: the therapy as it stands."""
    eng = sup.engine
    return [eng.mode, None if eng.rx is None else eng.rx.key(), list(eng.lim.as_tuple()),
            1 if eng.fault else 0, sup.reservoir.low_nl, eng.next_conc(),
            sorted([k, v] for k, v in sup.counters.items())]  # fmt: skip


def _never_saved(records):
    # A new pump, or one whose first commits were cut after their log writes: the log is
    # whole from record 1, no programme ever ran, and every boot in it found a new pump.
    # Nothing is lost by starting it anew.
    if not records:
        return True
    if records[0][0] != 1:
        return False
    for _seq, _h, value, _n in records:
        name = value[2]
        if name in ("program", "mode", "limits") or (name == "reset" and value[3][1] != "new"):
            return False
    return True


def _from_log(plant, journal, records, digest, shell_now_ms, rtc_wall_ms):
    """Both state copies are lost: go on with the last programme the log recorded, treating
    everything the log cannot tell conservatively (docs/storage.md, "Recovery")."""
    t = _therapy_from_log(records)
    if t is None:
        return None
    mode, rx, lim, low_nl, fault, conc = t
    minimum = mode == E.MODE_MINIMUM
    if fault or lim is None or not (minimum or (mode == E.MODE_PROGRAM and rx is not None)):
        # Stopped, or stopped for an overdose risk, or nothing to run: it stays stopped.
        return None
    try:
        # The reservoir is unknown: it is taken as empty (the alarm asks for a refill, and
        # delivery goes on, as it does on any empty estimate).
        sup = plant.build(lim, conc, low_nl, 0, journal)
    except ValueError:
        return None
    last_wall = records[-1][2][1]
    wall = rtc_wall_ms if clock_valid(rtc_wall_ms, last_wall) else None
    # Without a trusted clock, the last time the log knew is the best guess: the programme
    # starts there, and its rate at that time is held until the clock is set.
    sup.set_clock(last_wall if wall is None else wall)
    if minimum:
        if sup.set_mode(E.MODE_MINIMUM) is not None:
            return None
    elif sup.program(rx, confirm=True) is not None:
        return None
    # The replay counters never go back: the highest value the log saw for each.
    for name in digest.counters:
        sup.counters[name] = digest.counters[name]
    # The limiter's window is lost too. Counted as delivered over the last day: the highest
    # daily dose of any programme the log shows, spread evenly, and every bolus it granted in
    # the last 24 h, in the newest minute.
    eng = sup.engine
    daily = RX.daily_dose_ng(rx)
    for _seq, _h, value, _n in records:
        if value[2] == "program" and (wall is None or value[1] > wall - L.DAY_MS):
            for key in value[3]:
                if key is not None:
                    daily = max(daily, RX.daily_dose_ng(RX.Prescription(*key)))
    per_min = -(-daily // L.MINUTES_PER_DAY)
    past = [per_min] * L.MINUTES_PER_DAY
    for at, dose in digest.boluses:
        if wall is None or at > wall - L.DAY_MS:
            past[0] += dose
    eng.limiter.preload(eng.day, eng.tod_ms(), past)
    sup._offset = eng.now_ms() - shell_now_ms
    if wall is None:
        eng.clock_lost()
        sup.alarms.condition(A.CLOCK, True, sup.now_ms())
    return sup
