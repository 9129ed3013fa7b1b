# Unit and property tests of the storage core (issue 4): codec and frames, snapshot/restore
# equivalence, the clock and its hold, the event log's chain, staging and replay counters.

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from boards.sim import board, flash, hw, lfs
from host_tests.exactness import GENEROUS
from host_tests.gen import DataChooser, RandomChooser, gen_bolus, gen_rx
from pump import alarms as A
from pump import codec as C
from pump import engine as E
from pump import limits as L
from pump import persist as P
from pump import reasons as R
from pump import rx as RX
from pump import store as S
from pump import supervisor as SV
from tools.sim import DEMO, LIMITS

DAY = L.DAY_MS
HOUR = 3_600_000
W0 = 19_700 * DAY + 6 * HOUR  # a wall clock at 06:00 local time
FILL_NL = 20_000_000
HEAVY = max(4, settings.default.max_examples // 8)


# ---- helpers -------------------------------------------------------------------------------


def plant(batch=32, capacity=board.RESERVOIR_NL["20ml"]):
    s = SV.Settings(board.PUMP_DEAD_VOLUME_NL, batch_pulses=batch)
    return P.Plant("sim", board.calibration(), capacity, board.CELL, board.ENERGY, board.ADC_CAL,
                   board.ERI_MARGIN_DAYS, s)  # fmt: skip


def new_fs(blocks=96):
    fl = flash.RamFlash(block_size=4096, block_count=blocks)
    lfs.format(fl)
    return fl, lfs.mount(fl)


class TimedMech(hw.Mechanism):
    """A mechanism that remembers the engine time of every pulse it moved."""

    def __init__(self):
        super().__init__()
        self.sup = None
        self.times = []

    def pulse(self):
        ok = super().pulse()
        if ok:
            self.times.append(self.sup.engine.now_ms())
        return ok


class Rig:
    """One pump with its shell loop: commits through a Storage, or (store None) a checkpoint
    that saves nothing, for the in-memory tests."""

    def __init__(self, sup, store=None, journal=None):
        self.sup = sup
        self.store = store
        self.journal = journal
        self.mech = TimedMech()
        self.mech.sup = sup
        self.buz = hw.RecordingBuzzer(lambda: 0)

    def save(self):
        if self.store is not None:
            assert self.store.commit(self.sup, self.journal)
        else:
            if self.journal is not None:
                self.journal.pending = []
            self.sup.checkpointed()

    def run(self, until):
        """Advance to shell time `until` (inclusive of events due then)."""
        sup = self.sup
        while True:
            if (self.journal is not None and self.journal.pending) or sup.checkpoint_due():
                self.save()
            t = sup.next_wake_ms()
            if t > until:
                break
            sup.advance(t, self.mech, self.buz)
        sup.advance(until, self.mech, self.buz)
        if (self.journal is not None and self.journal.pending) or sup.checkpoint_due():
            self.save()

    def shell_now(self):
        return self.sup.now_ms() - self.sup._offset


def boot(fs, pl, shell_now=0, rtc=W0, cause="power_on", first=(LIMITS, 500, 2_000_000)):
    b, store, journal = P.recover(fs, pl, shell_now, rtc, cause, first)
    return b, Rig(b.sup, store, journal)


def commissioned(rx=DEMO, batch=32, lim=LIMITS):
    """A formatted flash, first boot, a 20 mL fill, the clock set and rx running, saved."""
    fl, fs = new_fs()
    pl = plant(batch)
    b, rig = boot(fs, pl, first=(lim, rx.conc_ug_per_ml, 2_000_000))
    sup = rig.sup
    assert sup.refill_begin(0) is None
    assert sup.refill_fill(FILL_NL, rx.conc_ug_per_ml) is None
    assert sup.refill_commit() is None
    assert sup.set_clock(W0) is None
    assert sup.program(rx, confirm=True) is None
    ack_all(sup)
    rig.save()
    return fl, fs, pl, rig


def ack_all(sup):
    # The empty-reservoir alarms of commissioning would otherwise sound (and wake the loop)
    # all through the run.
    for a in sup.alarms.active():
        if not a[4]:
            assert sup.acknowledge(a[0]) is None
    assert all(a[4] for a in sup.alarms.active())


def names(journal_or_records):
    return [e[1] for e in journal_or_records]


def log_records(fs):
    records, problems = S.EventLog(fs).scan()
    assert problems == []
    return records


def cycle(fl):
    """A power cycle: the old mount is dead, a new one sees what reached the flash."""
    fl.revive()
    return lfs.mount(fl)


def copy(fl):
    """The flash as it is now, in a second device, so the original pump can go on too."""
    c = flash.RamFlash(fl.block_size, fl.block_count)
    c.load(fl.image())
    return lfs.mount(c)


def flip_byte(fs, path, at):
    with fs.open(path, "rb") as f:
        buf = bytearray(f.read())
    buf[at % len(buf)] ^= 0x5A
    with fs.open(path, "wb") as f:
        f.write(buf)


def newest_copy(store):
    return "/state/state.%s" % S.StateFiles.NAMES[1 - store.state._next]


def older_copy(store):
    return "/state/state.%s" % S.StateFiles.NAMES[store.state._next]


def latched(sup, cid):
    for a in sup.alarms.active():
        if a[0] == cid:
            return a
    return None


# ---- codec ---------------------------------------------------------------------------------

values = st.recursive(
    st.none() | st.booleans() | st.integers(-(1 << 64), 1 << 64) | st.text() | st.binary(),
    lambda inner: st.lists(inner, max_size=6),
    max_leaves=30,
)


@given(values)
def test_codec_round_trip(v):
    out = C.encode(v)
    back = C.decode(bytes(out))
    assert back == v
    # bool is a subclass of int: the tags must keep True apart from 1.
    assert type(back) is type(v) or isinstance(v, list)


@given(st.integers(min_value=-(1 << 64), max_value=1 << 64))
def test_codec_integers_of_either_sign_up_to_64_bits(n):
    assert C.decode(C.encode(n)) == n
    # Zig-zag: small magnitudes of either sign take two bytes (tag + one varint byte).
    if -64 <= n < 64:
        assert len(C.encode(n)) == 2


@pytest.mark.parametrize("n", [(1 << 64) + 1, -(1 << 64) - 1, 1 << 76, -(1 << 76) - 1])
def test_codec_refuses_integers_it_could_not_read_back(n):
    # Beyond +-2**64 decode() would stop reading the varint: encode() refuses instead of
    # writing a record that could never be read.
    with pytest.raises(ValueError):
        C.encode(n)


@given(st.binary(max_size=64))
def test_decode_of_arbitrary_bytes_is_a_value_or_format_error(buf):
    try:
        C.decode(buf)
    except C.FormatError:
        pass


def test_decode_refuses_deep_nesting_and_trailing_bytes():
    deep = []
    for _ in range(40):
        deep = [deep]
    with pytest.raises(C.FormatError):
        C.decode(bytes(C.encode(deep)))
    with pytest.raises(C.FormatError):
        C.decode(bytes(C.encode(5)) + b"\0")
    with pytest.raises(C.FormatError):
        C.decode(bytes([C.T_STR, 2, 0xFF, 0xFE]))


@given(st.integers(0, 255), st.integers(0, 255), st.integers(0, 0xFFFFFFFF), values,
       st.integers(1, 255))  # fmt: skip
def test_every_byte_flip_and_truncation_of_a_record_is_refused(kind, version, seq, v, mask):
    payload = bytes(C.encode(v))
    rec = bytes(C.frame(kind, version, seq, payload))
    assert C.unframe(rec, kind, version) == (seq, payload)
    for i in range(len(rec)):
        bad = bytearray(rec)
        bad[i] ^= mask
        with pytest.raises(C.FormatError):
            C.unframe(bytes(bad), kind, version)
    for n in range(len(rec)):
        with pytest.raises(C.FormatError):
            C.unframe(rec[:n], kind, version)
    with pytest.raises(C.FormatError):
        C.unframe(rec + b"\0", kind, version)
    with pytest.raises(C.FormatError):
        C.unframe(rec, (kind + 1) % 256, version)
    with pytest.raises(C.FormatError):
        C.unframe(rec, kind, (version + 1) % 256)


# ---- snapshot -> restore equivalence -------------------------------------------------------


def _memory_pump(pl, rx, lim=GENEROUS):
    """A filled pump in RAM (no flash) with the clock set and rx running."""
    journal = P.Journal()
    sup = pl.build(lim, rx.conc_ug_per_ml, 2_000_000, 0, journal)
    assert sup.refill_begin(0) is None
    assert sup.refill_fill(FILL_NL, rx.conc_ug_per_ml) is None
    assert sup.refill_commit() is None
    assert sup.set_clock(W0) is None
    assert sup.program(rx, confirm=True) is None
    ack_all(sup)
    return Rig(sup, None, journal)


def _restored(pl, rig):
    """Encode the state as a commit would, decode it, and build a fresh pump from it the way
    the boot path does."""
    payload = bytes(C.encode([pl.identity(), 7, S.ZERO_HASH, 0, 12345, rig.sup.snapshot()]))
    journal = P.Journal()
    sup, log_seq, log_head, _day, rtc = P._restore(pl, journal, payload, pl.identity())
    assert (log_seq, log_head, rtc) == (7, S.ZERO_HASH, 12345)
    rig.save()  # the original goes on from a checkpoint too
    return Rig(sup, None, journal)


def _state(sup):
    eng = sup.engine
    return (eng.snapshot(), eng.limiter.snapshot(), sup.reservoir.snapshot(),
            [a[:5] for a in sup.alarms.active()], sup.moved_pulses, sup.wall_ms(),
            eng.streams(), sup.battery.snapshot())  # fmt: skip


def _equivalence(g, horizon):
    pl = plant(batch=g.integer(1, 64))
    rx = gen_rx(g, max_rate_ng=g.choice((100_000, 400_000, 1_000_000)))
    bolus_at = g.integer(1, horizon)
    dose, dur = gen_bolus(g, rx.conc_ug_per_ml)
    patient_at = g.integer(1, horizon)
    cut = g.integer(0, horizon)
    plan = sorted([(bolus_at, "bolus"), (patient_at, "patient"), (cut, "snap")])

    def act(rig, what):
        if what == "bolus":
            return rig.sup.clinician_bolus(dose, dur)
        if what == "patient":
            return rig.sup.patient_bolus()
        return None

    a = _memory_pump(pl, rx)
    b = None
    n_at_snap = 0
    for t, what in plan:
        a.run(t)
        if b is not None:
            b.run(t)
        if what == "snap":
            b = _restored(pl, a)
            n_at_snap = len(a.mech.times)
            assert _state(b.sup) == _state(a.sup)
            continue
        ra = act(a, what)
        if b is not None:
            assert act(b, what) == ra
    a.run(horizon)
    b.run(horizon)
    # Pulses after the snapshot: the same instants, and the same state at the end.
    assert b.mech.times == a.mech.times[n_at_snap:]
    assert _state(b.sup) == _state(a.sup)
    return a, b


@pytest.mark.req("SR-20")
@settings(max_examples=HEAVY, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_snapshot_restore_goes_on_exactly_as_if_nothing_happened(data):
    _equivalence(DataChooser(data), 26 * HOUR)


@pytest.mark.req("SR-20")
@pytest.mark.parametrize("seed", range(3))
def test_commit_then_recover_on_flash_goes_on_exactly(seed):
    g = RandomChooser(seed)
    rx = gen_rx(g, max_rate_ng=400_000)
    fl, fs, pl, a = commissioned(rx, batch=16, lim=GENEROUS)
    cut = g.integer(HOUR, 20 * HOUR)
    a.run(cut)
    assert not a.journal.pending and not a.sup.checkpoint_due()
    # Reboot on the same flash, the RTC right and no time lost: nothing is uncertain.
    b_boot, b = boot(copy(fl), pl, shell_now=a.shell_now(), rtc=a.sup.wall_ms())
    assert b_boot.source in ("a", "b") and b_boot.problems == []
    assert _state(b.sup) == _state(a.sup)
    end = cut + 8 * HOUR
    n_before = len(a.mech.times)
    a.run(end)
    b.run(end)
    assert b.mech.times == a.mech.times[n_before:]
    assert _state(b.sup) == _state(a.sup)


# ---- the clock -----------------------------------------------------------------------------


def _memory_demo(rx=DEMO, lim=LIMITS):
    return _memory_pump(plant(), rx, lim)


def test_setting_the_clock_moves_the_schedule_not_engine_time():
    rig = _memory_demo()
    rig.run(3 * HOUR)  # 09:00 on the schedule
    sup = rig.sup
    eng = sup.engine
    before = (eng.now_ms(), eng.limiter.snapshot(), eng.limiter.recent_ng(eng.day, eng.tod_ms()))
    assert eng.schedule_tod_ms() == 9 * HOUR
    assert sup.set_clock(W0 + 3 * HOUR + 5 * HOUR) is None  # forward to 14:00
    assert (eng.now_ms(), eng.limiter.snapshot(),
            eng.limiter.recent_ng(eng.day, eng.tod_ms())) == before  # fmt: skip
    assert eng.schedule_tod_ms() == 14 * HOUR
    assert sup.wall_ms() == W0 + 8 * HOUR
    assert eng.rate_ru() * L.RATE_RES_NG_PER_DAY == DEMO.step_rate_at(14 * 60)
    assert ("wall_clock", (W0 + 3 * HOUR, W0 + 8 * HOUR)) in [e[1:] for e in rig.journal.pending]


def _bolus_heavy():
    # A large morning bolus: repeating it within 24 h would pass the daily limit.
    lim = L.ClinicianLimits(max_24h_ng=380_000, max_bolus_ng=150_000,
                            max_rate_nl_per_day=10_000_000, dose_step_pct=30)  # fmt: skip
    rx = RX.Prescription(500, [(0, 100_000)], [(8 * 60, 150_000, 3 * 3600)])
    return rx, lim


@pytest.mark.req("SR-21")
def test_backward_clock_set_that_would_repeat_a_periodic_bolus_is_refused_and_changes_nothing():
    rx, lim = _bolus_heavy()
    assert RX.validate(rx, lim) is None
    rig = _memory_demo(rx, lim)
    rig.run(6 * HOUR)  # 12:00: the 08:00 bolus (three hours long) is done
    sup = rig.sup
    assert sup.engine.streams() == []
    before = (sup.snapshot(), sup.wall_ms())
    n_events = len(rig.journal.pending)
    # Back to 07:30: 08:00 would come again within 24 h of the last one.
    assert sup.set_clock(W0 + 90 * 60_000) == R.Refusal(R.DAILY_LIMIT, "tod_ms")
    assert (sup.snapshot(), sup.wall_ms()) == before
    assert rig.journal.pending[n_events:][-1][1:] == ("refused", ("set_clock", R.DAILY_LIMIT,
                                                                  "tod_ms"))  # fmt: skip
    # A backward set that repeats no bolus is fine.
    assert sup.set_clock(W0 + 5 * HOUR) is None
    assert sup.engine.schedule_tod_ms() == 11 * HOUR


def _saved_then_rebooted(rtc_of, batch=8, hours=5):
    fl, fs, pl, a = commissioned(DEMO, batch=batch)
    a.run(hours * HOUR)
    a.save()  # the checkpoint is the instant of the cut
    last_wall = a.sup.wall_ms()
    eng_t = a.sup.engine.now_ms()
    tod = a.sup.engine.schedule_tod_ms()
    moved = a.sup.moved_pulses
    b_boot, b = boot(cycle(fl), pl, shell_now=123_456, rtc=rtc_of(last_wall),
                     cause="power_on")  # fmt: skip
    return a, b_boot, b, (last_wall, eng_t, tod, moved)


INVALID_RTC = {
    "none": lambda w: None,
    "behind": lambda w: w - 1,
    "too_far": lambda w: w + P.MAX_OUTAGE_MS + 1,
}


@pytest.mark.req("SR-20", "SR-21")
@pytest.mark.parametrize("rtc", sorted(INVALID_RTC))
def test_invalid_rtc_at_boot_holds_the_mean_basal_rate_from_the_checkpoint(rtc):
    batch = 8
    a, b_boot, b, (last_wall, eng_t, tod, moved) = _saved_then_rebooted(INVALID_RTC[rtc], batch)
    sup = b.sup
    eng = sup.engine
    assert b_boot.source in ("a", "b")
    assert latched(sup, A.CLOCK) is not None and latched(sup, A.CLOCK)[3]  # present
    assert not eng.clock_set
    # Not the step at the last known time: held all day, a peak step would exceed the daily dose.
    mean = RX.mean_basal_ng_per_day(DEMO)
    assert eng.held_rate_ng() == mean < DEMO.step_rate_at(tod // L.MIN_MS)
    # Engine time goes on from the checkpoint; the wall clock as last known.
    assert eng.now_ms() == eng_t and sup.wall_ms() == last_wall
    # The first `batch` pulses may have gone out before the cut: counted, not moved.
    b.run(b.shell_now() + 6 * HOUR)
    assert b.mech.done == sup.moved_pulses - moved - batch
    assert sup.moved_pulses - moved > batch
    # Held: across the 13:00 and 15:00 steps of DEMO the pulse spacing never changes.
    gaps = {y - x for x, y in zip(b.mech.times, b.mech.times[1:], strict=False)}
    assert max(gaps) - min(gaps) <= 1
    assert eng.streams() == []


@pytest.mark.req("SR-21")
def test_clock_hold_refuses_schedule_changes_until_set():
    rx, lim = _bolus_heavy()
    fl, fs, pl, a = commissioned(rx, batch=8, lim=lim)
    a.run(HOUR)  # 07:00
    _b, b = boot(cycle(fl), pl, shell_now=0, rtc=None)
    sup = b.sup
    held = sup.engine.held_rate_ng()
    assert held == 100_000
    unset = R.Refusal(R.CLOCK_UNSET, "clock")
    snap = sup.snapshot()
    assert sup.program(DEMO, confirm=True) == unset
    assert sup.clinician_bolus(10_000, 600) == unset
    assert sup.prime(10_000) == unset
    assert sup.set_limits(GENEROUS) == unset
    assert sup.stage(rx) is not None
    assert sup.snapshot()[:5] == snap[:5]
    # Through 08:00: no periodic bolus while held.
    b.run(3 * HOUR)
    assert sup.engine.streams() == []
    assert sup.engine.held_rate_ng() == held
    t = sup.engine.now_ms()
    lim_before = sup.engine.limiter.snapshot()
    assert sup.set_clock(a.sup.wall_ms() + 3 * HOUR) is None
    assert sup.engine.clock_set and sup.engine.held_rate_ng() == -1
    assert sup.engine.now_ms() == t and sup.engine.limiter.snapshot() == lim_before
    clock = latched(sup, A.CLOCK)
    assert clock is None or not clock[3]  # the condition has ended
    assert sup.program(rx, confirm=True) is None


# ---- recovery paths on real littlefs -------------------------------------------------------


@pytest.mark.req("SR-20", "SR-21")
def test_first_boot_is_new_and_stopped_without_self_test_alarm():
    _fl, fs = new_fs()
    b, rig = boot(fs, plant(), cause="power_on")
    assert (b.source, b.cause, b.problems) == ("new", "power_on_or_brownout", [])
    assert rig.sup.engine.mode == E.MODE_STOPPED
    assert latched(rig.sup, A.SELF_TEST) is None
    assert "commissioned" in names(rig.journal.pending)
    assert "reset" in names(rig.journal.pending)
    assert "state_lost" not in names(rig.journal.pending)


@pytest.mark.req("SR-20", "SR-21")
@pytest.mark.parametrize("which", ["newest", "older"])
def test_one_corrupt_state_copy_loads_the_other_and_says_so(which):
    fl, fs, pl, a = commissioned()
    a.run(2 * HOUR)
    newest = newest_copy(a.store)
    bad = newest if which == "newest" else older_copy(a.store)
    flip_byte(fs, bad, 40)
    b, rig = boot(cycle(fl), pl, shell_now=a.shell_now(), rtc=a.sup.wall_ms())
    assert b.source == ("b" if bad.endswith("a") else "a")
    assert len(b.problems) == 1 and bad[-1] in b.problems[0]
    assert ("storage_problem", (b.problems[0],)) in [e[1:] for e in rig.journal.pending]
    assert rig.sup.engine.rx == DEMO and rig.sup.engine.mode == E.MODE_PROGRAM
    assert latched(rig.sup, A.SELF_TEST) is None
    if which == "older":
        assert _state(rig.sup)[:3] == _state(a.sup)[:3]
    else:
        # One checkpoint older: at most one batch behind, never ahead.
        assert 0 <= a.sup.moved_pulses - rig.sup.moved_pulses <= pl.settings.batch_pulses


@pytest.mark.req("SR-20", "SR-21")
def test_both_copies_corrupt_runs_the_last_programme_from_the_log():
    fl, fs, pl, a = commissioned()
    a.run(3 * HOUR)
    flip_byte(fs, "/state/state.a", 30)
    flip_byte(fs, "/state/state.b", 30)
    b, rig = boot(cycle(fl), pl, shell_now=0, rtc=a.sup.wall_ms() + 60_000)
    sup = rig.sup
    eng = sup.engine
    assert b.source == "log"
    assert len(b.problems) >= 2
    assert eng.rx == DEMO and eng.mode == E.MODE_PROGRAM
    assert sup.reservoir.is_empty() and latched(sup, A.RES_EMPTY) is not None
    st_ = latched(sup, A.SELF_TEST)
    assert st_ is not None and st_[2] == A.HIGH
    assert eng.limiter.recent_ng(eng.day, eng.tod_ms()) >= RX.daily_dose_ng(DEMO)
    evs = names(rig.journal.pending)
    assert "state_lost" in evs and "storage_problem" in evs
    assert eng.clock_set and sup.wall_ms() == a.sup.wall_ms() + 60_000
    # It delivers: the limiter's preload is conservative but does not block the basal rate.
    rig.run(2 * HOUR)
    assert rig.mech.done > 0


@pytest.mark.req("SR-20", "SR-21")
def test_log_recovery_with_invalid_rtc_holds_the_mean_basal_rate():
    fl, fs, pl, a = commissioned()
    a.run(3 * HOUR)  # 09:00, the 400 ug/day step of DEMO
    a.save()
    last_wall = a.store.log.scan()[0][-1][2][1]
    flip_byte(fs, "/state/state.a", 30)
    flip_byte(fs, "/state/state.b", 30)
    b, rig = boot(cycle(fl), pl, shell_now=0, rtc=None)
    sup = rig.sup
    assert b.source == "log" and latched(sup, A.CLOCK) is not None
    assert sup.engine.held_rate_ng() == RX.mean_basal_ng_per_day(DEMO)
    assert sup.wall_ms() >= last_wall


@pytest.mark.req("SR-20", "SR-21")
def test_nothing_valid_but_files_present_stops_with_the_high_alarm():
    _fl, fs = new_fs()
    pl = plant()
    _b, rig = boot(fs, pl)
    rig.save()  # commissioned, never programmed
    rig.save()
    flip_byte(fs, "/state/state.a", 20)
    flip_byte(fs, "/state/state.b", 20)
    b, rig2 = boot(fs, pl)
    sup = rig2.sup
    assert b.source == "none"
    assert sup.engine.mode == E.MODE_STOPPED
    st_ = latched(sup, A.SELF_TEST)
    assert st_ is not None and st_[2] == A.HIGH and not st_[4]  # latched until acknowledged
    evs = [e[1:] for e in rig2.journal.pending]
    assert ("state_lost", ("none",)) in evs
    # No default therapy: a clinician sets the clock and programs it again.
    assert sup.program(DEMO, confirm=True) == R.Refusal(R.CLOCK_UNSET, "clock")
    assert sup.set_clock(W0) is None
    assert sup.engine.mode == E.MODE_STOPPED
    assert sup.program(DEMO, confirm=True) is None


@pytest.mark.req("SR-21")
def test_state_of_other_hardware_is_not_taken():
    fl, fs, pl, a = commissioned()
    a.run(HOUR)
    other = plant(capacity=board.RESERVOIR_NL["40ml"])
    b, rig = boot(cycle(fl), other, rtc=a.sup.wall_ms())
    assert b.source not in ("a", "b")
    assert any("other hardware" in p for p in b.problems)
    assert latched(rig.sup, A.SELF_TEST) is not None
    assert rig.sup.reservoir.capacity_nl == board.RESERVOIR_NL["40ml"]


@pytest.mark.req("SR-20")
def test_valid_rtc_skips_the_outage_without_a_catch_up_burst():
    batch = 8
    outage = 6 * HOUR
    a, b_boot, b, (last_wall, eng_t, _tod, moved) = _saved_then_rebooted(
        lambda w: w + outage, batch)  # fmt: skip
    sup = b.sup
    assert b_boot.source in ("a", "b") and latched(sup, A.CLOCK) is None
    assert sup.engine.now_ms() == eng_t + outage and sup.wall_ms() == last_wall + outage
    # The batch that may have gone out is counted; nothing was moved on the way.
    assert sup.moved_pulses == moved + batch and b.mech.attempts == 0
    resume = [e for e in b.journal.pending if e[1] == "resume"][-1]
    assert resume[2][0] == outage and resume[2][1] == batch and resume[2][2] > 0
    # The next hour moves what the programme asks for in an hour, not the missed six.
    b.run(b.shell_now() + HOUR)
    per_hour = RX.daily_dose_ng(DEMO) // 24
    pulse_ng = sup.reservoir.pulse_volume_nl_ceil() * DEMO.conc_ug_per_ml // 1000
    assert b.mech.done <= per_hour * 2 // max(1, pulse_ng) + 2


# ---- reset cause ---------------------------------------------------------------------------


@pytest.mark.req("SR-20", "SR-21")
def test_reset_marker_names_an_intended_reset_and_is_consumed():
    fl, fs, pl, a = commissioned()
    a.run(HOUR)
    a.store.write_marker("update")
    b, rig = boot(cycle(fl), pl, shell_now=0, rtc=a.sup.wall_ms(), cause="watchdog")
    assert b.cause == "intended:update"
    with pytest.raises(OSError):
        rig.store.fs.stat(S.MARKER_FILE)
    rig.save()
    last_reset = [r[2] for r in log_records(rig.store.fs) if r[2][2] == "reset"][-1]
    assert last_reset[3][0] == "intended:update"
    # The next reset has no marker: the hardware's power-on may be a brownout.
    b2, rig2 = boot(cycle(fl), pl, shell_now=0, rtc=rig.sup.wall_ms(), cause="power_on")
    assert b2.cause == "power_on_or_brownout"
    rig2.save()
    last_reset = [r[2] for r in log_records(rig2.store.fs) if r[2][2] == "reset"][-1]
    assert last_reset[3][0] == "power_on_or_brownout"


# ---- the event log -------------------------------------------------------------------------


def _filled_log(n=240, seg_bytes=400, max_segments=4):
    _fl, fs = new_fs(48)
    S.ensure_dirs(fs)
    log = S.EventLog(fs, seg_bytes, max_segments)
    for i in range(0, n, 7):
        log.append([(W0 + k, "ev", (k, "x" * (k % 5))) for k in range(i, min(n, i + 7))])
    return fs, log


@pytest.mark.req("SR-28")
def test_chain_verifies_across_appends_and_rotation():
    fs, log = _filled_log()
    segs = log.segments()
    assert 2 <= len(segs) <= 4
    records, problems = log.scan()
    assert problems == []
    assert [r[0] for r in records] == list(range(records[0][0], log.seq + 1))
    assert records[0][0] > 1  # the oldest went
    assert any(r[2][2] == "log_rotated" for r in records)
    assert log.verify(records, problems, log.seq, log.head) == []
    # Appending goes on after a re-read, as after a reboot.
    again = S.EventLog(fs, 400, 4)
    again.resume(records)
    again.append([(W0, "more", (1,))])
    rec2, prob2 = again.scan()
    assert again.verify(rec2, prob2, again.seq, again.head) == []
    assert rec2[-1][0] > log.seq and rec2[-1][2][2:] == ["more", [1]]


def _verify(fs, log):
    rec, prob = S.EventLog(fs).scan()
    return S.EventLog(fs).verify(rec, prob, log.seq, log.head)


@pytest.mark.req("SR-28")
def test_deleting_a_middle_segment_is_evident():
    fs, log = _filled_log()
    segs = log.segments()
    fs.remove(segs[1])
    assert any("sequence jumps" in p for p in _verify(fs, log))


@pytest.mark.req("SR-28")
def test_deleting_the_oldest_segment_without_a_rotation_record_is_evident():
    fs, log = _filled_log()
    fs.remove(log.segments()[0])
    assert any("links to nothing" in p for p in _verify(fs, log))


def _starts(buf):
    at = 0
    out = []
    while at < len(buf):
        out.append(at)
        at += C.record_length(buf, at)
    return out


def _rewrite_record(fs, path, index, new_args):
    """Replace record `index` of a segment by one with other arguments, CRC made right."""
    with fs.open(path, "rb") as f:
        buf = f.read()
    at = 0
    out = bytearray()
    i = 0
    while at < len(buf):
        n = C.record_length(buf, at)
        raw = buf[at : at + n]
        if i == index:
            _v, _k, seq = C.header(buf, at)
            link, wall, name, args = C.decode(raw[C.FRAME_LEN : n - C.CRC_LEN])
            raw = C.frame(S.LOG_KIND, S.VERSION, seq, C.encode([link, wall, name, new_args]))
        out.extend(raw)
        at += n
        i += 1
    with fs.open(path, "wb") as f:
        f.write(out)
    return i


@pytest.mark.req("SR-28")
@pytest.mark.parametrize("where", ["middle", "last"])
def test_an_edited_record_with_a_fixed_crc_is_evident(where):
    fs, log = _filled_log()
    path = log.segments()[1] if where == "middle" else log.segments()[-1]
    with fs.open(path, "rb") as f:
        count = len(_starts(f.read()))
    _rewrite_record(fs, path, 2 if where == "middle" else count - 1, [999_999, "edited"])
    rec, prob = S.EventLog(fs).scan()
    problems = S.EventLog(fs).verify(rec, prob, log.seq, log.head)
    if where == "middle":
        assert any("hash chain broken" in p for p in problems)
    else:
        # The newest record has no successor: the head the state saved gives it away.
        assert any("not the one the state recorded" in p for p in problems)


@pytest.mark.req("SR-28")
def test_truncating_the_newest_records_is_evident():
    fs, log = _filled_log()
    last = log.segments()[-1]
    with fs.open(last, "rb") as f:
        buf = f.read()
    starts = _starts(buf)
    # Drop the last record whole, then cut it part-way, then drop the whole newest segment.
    with fs.open(last, "wb") as f:
        f.write(buf[: starts[-1]])
    assert any("log ends at" in p for p in _verify(fs, log))
    with fs.open(last, "wb") as f:
        f.write(buf[: starts[-1] + C.FRAME_LEN + C.CRC_LEN])
    problems = _verify(fs, log)
    assert any("log ends at" in p for p in problems)
    assert any("truncated" in p or "CRC" in p for p in problems)
    fs.remove(last)
    assert any("log ends at" in p for p in _verify(fs, log))


@pytest.mark.req("SR-28")
def test_day_totals_appear_after_a_day_change_and_survive_rotation():
    fl, fs = new_fs()
    pl = plant(batch=32)
    _b, first = boot(fs, pl)
    sup = first.sup
    store = P.Storage(fs, pl.identity(), seg_bytes=256, max_segments=2)
    rig = Rig(sup, store, first.journal)
    assert sup.refill_begin(0) is None
    assert sup.refill_fill(FILL_NL, 500) is None
    assert sup.refill_commit() is None
    assert sup.set_clock(W0) is None
    assert sup.program(DEMO, confirm=True) is None
    rig.save()
    assert S.DayTotals(fs).read() == []
    rig.run(2 * DAY + HOUR)
    rows = S.DayTotals(fs).read()
    first_day = W0 // DAY
    assert [r[0] for r in rows] == [first_day, first_day + 1]
    assert rows[0][1] < rows[1][1] <= sup.moved_pulses
    records, problems = store.log.scan()
    assert any(r[2][2] == "log_rotated" for r in records)
    assert records[0][0] > 1
    assert store.log.verify(records, problems, store.log.seq, store.log.head) == []


# ---- staging and counters ------------------------------------------------------------------


@pytest.mark.req("SR-03")
def test_stage_validates_without_applying_and_commit_needs_the_same_programme():
    rig = _memory_demo()
    sup = rig.sup
    other = RX.continuous(500, 320_000)
    before = sup.snapshot()
    assert sup.stage(other, confirm=True) is None
    assert sup.engine.rx == DEMO and sup.staged == other
    assert sup.snapshot()[:5] == before[:5]
    assert sup.commit_staged(RX.continuous(500, 330_000), confirm=True) == R.Refusal(
        R.NO_STAGED, "staged")  # fmt: skip
    assert sup.engine.rx == DEMO and sup.staged == other
    assert sup.commit_staged(other, confirm=True) is None
    assert sup.engine.rx == other and sup.staged is None
    assert sup.commit_staged(other, confirm=True) == R.Refusal(R.NO_STAGED, "staged")


@pytest.mark.req("SR-03")
def test_a_refused_stage_changes_nothing():
    rig = _memory_demo()
    sup = rig.sup
    assert sup.stage(RX.continuous(500, 320_000), confirm=True) is None
    before = sup.snapshot()
    too_much = RX.continuous(500, 790_000)  # above the 24 h limit of 800 ug with what ran
    bad = sup.stage(too_much)
    assert bad is not None
    assert sup.snapshot() == before
    assert sup.staged == RX.continuous(500, 320_000)


@pytest.mark.req("SR-03", "SR-20")
def test_staged_programme_and_counters_survive_commit_and_recover():
    fl, fs, pl, a = commissioned()
    other = RX.continuous(500, 320_000)
    assert a.sup.stage(other, confirm=True) is None
    assert a.sup.use_counter("ble", 5) is None
    assert a.sup.use_counter("ble", 5) == R.Refusal(R.ALREADY_DONE, "ble")
    assert a.sup.use_counter("ble", 4) == R.Refusal(R.ALREADY_DONE, "ble")
    assert a.sup.use_counter("ble", "6") is not None
    assert a.sup.use_counter("other", 1) is None
    a.save()
    _b, b = boot(cycle(fl), pl, shell_now=0, rtc=a.sup.wall_ms())
    sup = b.sup
    assert sup.counters == {"ble": 5, "other": 1}
    assert sup.use_counter("ble", 5) == R.Refusal(R.ALREADY_DONE, "ble")
    assert sup.use_counter("ble", 6) is None
    assert sup.staged == other and sup.engine.rx == DEMO
    assert sup.commit_staged(other, confirm=True) is None


@pytest.mark.req("SR-03")
def test_a_programme_change_is_on_flash_only_after_its_commit():
    fl, fs, pl, a = commissioned()
    other = RX.continuous(500, 320_000)
    assert a.sup.program(other, confirm=True) is None
    # A reset before the commit: the old programme, whole.
    _b, b = boot(copy(fl), pl, shell_now=0, rtc=a.sup.wall_ms())
    assert b.sup.engine.rx == DEMO
    a.save()
    _b, c = boot(cycle(fl), pl, shell_now=0, rtc=a.sup.wall_ms())
    assert c.sup.engine.rx == other


# ---- a failing flash keeps therapy going ---------------------------------------------------


class FailingFs:
    """Wraps a mounted fs; while `broken`, every open for writing raises OSError (a worn or
    faulty flash, not a power cut)."""

    def __init__(self, fs):
        self.fs = fs
        self.broken = False

    def open(self, path, mode):
        if self.broken and "r" not in mode:
            raise OSError(5, "flash write failed")
        return self.fs.open(path, mode)

    def __getattr__(self, name):
        return getattr(self.fs, name)


@pytest.mark.req("SR-14")
def test_a_failing_flash_keeps_therapy_going_alarms_and_loses_no_event():
    fl, fs = new_fs()
    ffs = FailingFs(fs)
    pl = plant(batch=8)
    b, rig = boot(ffs, pl)
    sup = rig.sup
    assert sup.refill_begin(0) is None
    assert sup.refill_fill(FILL_NL, 500) is None
    assert sup.refill_commit() is None
    assert sup.set_clock(W0) is None
    assert sup.program(DEMO, confirm=True) is None
    ack_all(sup)
    rig.save()
    seq0 = rig.store.log.seq
    ffs.broken = True
    rig.__class__ = LenientRig
    done0 = rig.mech.done
    rig.run(3 * HOUR)
    # More than a batch went out: without storage the batch bound is lifted, not therapy.
    assert rig.mech.done - done0 > 8 * 4
    assert not sup.storage_ok
    assert latched(sup, A.SELF_TEST) is not None and latched(sup, A.SELF_TEST)[3]
    waiting = names(rig.journal.pending)
    assert "storage_failed" in waiting and rig.store.log.seq == seq0
    ffs.broken = False
    rig.run(4 * HOUR)
    assert sup.storage_ok and not latched(sup, A.SELF_TEST)[3]
    logged = [r[2][2] for r in log_records(fs)]
    # Every event held back while the flash failed reached the log, in order, once.
    for name in ("storage_failed", "storage_restored"):
        assert logged.count(name) == 1, name
    assert rig.journal.pending == []


class LenientRig(Rig):
    # The shell goes on whatever commit() answers: False (storage failed) is not an error.
    def save(self):
        self.store.commit(self.sup, self.journal)


@pytest.mark.req("SR-46")
def test_log_recovery_takes_the_strength_of_the_last_refill():
    fl, fs, pl, rig = commissioned()
    sup = rig.sup
    rig.run(2 * HOUR)
    assert sup.refill_begin(sup.reservoir.remaining_nl()) is None
    assert sup.refill_fill(FILL_NL, 1000) is None
    assert sup.refill_commit() is None
    rig.run(3 * HOUR)
    store = rig.store
    for path in (newest_copy(store), older_copy(store)):
        flip_byte(fs, path, 40)
    b, rig2 = boot(cycle(fl), pl, shell_now=rig.shell_now(), rtc=sup.wall_ms())
    assert b.source == "log"
    eng = rig2.sup.engine
    assert eng.next_conc() == 1000 and eng.rx == DEMO.with_concentration(1000)


# ---- fixes after review: clock drift, requests, lost programme records, log recovery -------


def recording_events(rig):
    """A list that collects every event the in-memory rig's saves would otherwise discard."""
    seen = []
    save = rig.save

    def keep():
        seen.extend(rig.journal.pending)
        save()

    rig.save = keep
    return seen


@pytest.mark.req("SR-44")
def test_setting_the_clock_back_over_a_periodic_bolus_does_not_repeat_it():
    # DEMO's periodic bolus starts at 07:00. At 07:40 the clock is set back to 06:50 (a
    # daylight-saving fall-back, or a correction): 07:00 comes round again 10 min later.
    rig = _memory_demo()
    sup = rig.sup
    seen = recording_events(rig)

    def periodic_starts():
        return [e for e in seen if e[1] == "bolus_start" and e[2][0] == "periodic"]

    rig.run(100 * 60_000)
    assert len(periodic_starts()) == 1
    assert sup.set_clock(W0 + 50 * 60_000) is None
    rig.run(rig.shell_now() + 2 * HOUR)
    assert len(periodic_starts()) == 1 and "periodic_skipped" in names(seen)
    # The next day it runs as usual.
    rig.run(rig.shell_now() + DAY)
    assert len(periodic_starts()) == 2


@pytest.mark.req("SR-43")
def test_delivery_waits_for_the_commit_of_an_accepted_request():
    rig = _memory_demo()
    sup = rig.sup
    rig.run(3 * HOUR)  # 09:00, after the periodic bolus
    assert sup.clinician_bolus(20_000, 600) is None
    assert sup.checkpoint_due()
    done = rig.mech.done
    for _ in range(5):
        t = sup.next_wake_ms()
        sup.advance(t, rig.mech, rig.buz)
    # No pulse of the bolus goes out until its state is saved, however often the shell wakes.
    assert rig.mech.done == done and sup.next_wake_ms() == t
    sup.checkpointed()
    rig.run(rig.shell_now() + 10 * 60_000)
    assert rig.mech.done > done + 10


def test_while_storage_fails_changes_are_refused_but_stopping_is_not():
    rig = _memory_demo()
    sup = rig.sup
    rig.run(HOUR)
    sup.storage_failed("test")
    failed = R.Refusal(R.STORAGE_FAILED, "storage")
    before = sup.snapshot()
    assert sup.program(DEMO, confirm=True) == failed
    assert sup.clinician_bolus(10_000, 600) == failed
    assert sup.patient_bolus() == failed
    assert sup.set_limits(LIMITS) == failed
    assert sup.set_clock(W0) == failed
    assert sup.use_counter("clinician", 5) == failed
    assert sup.refill_begin(0) == failed
    assert sup.stage(DEMO) == failed
    assert sup.snapshot() == before
    assert sup.set_mode(E.MODE_MINIMUM) is None


@pytest.mark.req("SR-43", "SR-45")
def test_a_slow_rtc_at_restart_sends_nothing_twice():
    # The pump saves with the RTC's reading; pulses then go out until a cut. The RTC at the
    # restart reads a few seconds behind the truth (crystal drift): the pulses it makes look
    # not yet due may have gone out, so they stay counted-but-unsent.
    fl, fs, pl, a = commissioned(batch=32)
    sup = a.sup
    assert sup.clinician_bolus(20_000, 600) is None  # fast pulses: seconds apart
    a.store.commit(sup, a.journal, sup.wall_ms())
    sup.checkpointed()
    before = a.mech.done
    while a.mech.done - before < 20:
        t = sup.next_wake_ms()
        sup.advance(t, a.mech, a.buz)
    cut_shell = a.shell_now()
    sent = a.mech.done - before
    truth_moved = sup.moved_pulses
    twin = copy(fl)  # the flash as the power failed: the save before these pulses
    slow = 4_000
    b_boot, b = boot(twin, pl, shell_now=0, rtc=sup.wall_ms() - slow)
    assert b_boot.source in ("a", "b")
    b.run(b.shell_now() + HOUR)
    a.run(cut_shell + HOUR)
    # Motor pulses: before the cut plus after the restart never exceed the uncut run's.
    assert before + sent + b.mech.done <= a.mech.done
    assert b.sup.moved_pulses >= truth_moved


@pytest.mark.req("SR-46")
def test_a_pump_whose_programme_record_rotated_out_runs_it_from_the_log():
    fl, fs, pl, rig = commissioned()
    rig.run(4 * HOUR)
    store = rig.store
    # Small segments, so the programme's record rotates out of the log.
    store.log.seg_bytes, store.log.max_segments = 600, 2
    for _ in range(30):
        assert rig.sup.acknowledge(A.STALL) is not None  # refusals: log records, no change
        rig.save()
    assert S.EventLog(fs).scan()[0][0][0] > 1
    fs.remove("/state/state.a")
    fs.remove("/state/state.b")
    b, rig2 = boot(cycle(fl), pl, shell_now=0, rtc=rig.sup.wall_ms())
    # Not new: the programme goes on, restated by the segment_start record of a segment
    # that rotation kept, and the loss of the state is announced.
    assert b.source == "log" and rig2.sup.engine.rx == DEMO
    assert rig2.sup.engine.mode == E.MODE_PROGRAM
    a = latched(rig2.sup, A.SELF_TEST)
    assert a is not None and not a[4]


@pytest.mark.req("SR-46")
def test_log_recovery_keeps_the_counters_and_a_limiter_stop():
    fl, fs, pl, rig = commissioned()
    sup = rig.sup
    assert sup.use_counter("clinician", 41) is None
    rig.run(2 * HOUR)
    store = rig.store
    for path in (newest_copy(store), older_copy(store)):
        flip_byte(fs, path, 40)
    b, rig2 = boot(copy(fl), pl, shell_now=0, rtc=sup.wall_ms())
    assert b.source == "log" and rig2.sup.counters.get("clinician") == 41
    # A pump stopped by the limiter (an overdose risk) stays stopped when its state is lost.
    rig.journal("limiter_block", 0, 0)
    rig.save()
    for path in (newest_copy(store), older_copy(store)):
        flip_byte(fs, path, 41)
    b, rig3 = boot(copy(fl), pl, shell_now=0, rtc=sup.wall_ms())
    assert b.source == "none" and rig3.sup.engine.mode == E.MODE_STOPPED


@pytest.mark.req("SR-46")
def test_log_recovery_keeps_the_minimum_rate_even_under_tightened_limits():
    fl, fs, pl, rig = commissioned()
    sup = rig.sup
    assert sup.set_mode(E.MODE_MINIMUM) is None
    rig.save()
    # Limits the stored programme no longer fits: only the minimum rate runs now.
    tight = L.ClinicianLimits(200_000, 50_000, 10_000_000, 30)
    assert sup.set_limits(tight) is None
    rig.run(HOUR)
    store = rig.store
    for path in (newest_copy(store), older_copy(store)):
        flip_byte(fs, path, 40)
    b, rig2 = boot(copy(fl), pl, shell_now=0, rtc=sup.wall_ms())
    assert b.source == "log" and rig2.sup.engine.mode == E.MODE_MINIMUM
    assert rig2.sup.engine.lim.as_tuple() == tight.as_tuple()


def test_a_programme_change_at_the_bolus_time_still_gives_that_bolus():
    rig = _memory_demo()
    sup = rig.sup
    seen = recording_events(rig)
    rig.run(HOUR)  # 07:00:00.000, the periodic bolus has just started
    assert sup.engine.streams() and sup.engine.streams()[0][0] == "periodic"
    assert sup.program(DEMO, confirm=True) is None
    assert sup.engine.streams() and sup.engine.streams()[0][0] == "periodic"
    rig.run(2 * HOUR)
    assert "periodic_skipped" not in names(seen + rig.journal.pending)


@pytest.mark.req("SR-46")
def test_counters_survive_rotation_through_segment_start_records():
    fl, fs, pl, rig = commissioned()
    sup = rig.sup
    assert sup.use_counter("patient", 7) is None
    rig.save()
    store = rig.store
    store.log.seg_bytes, store.log.max_segments = 600, 2
    for _ in range(30):
        assert sup.acknowledge(A.STALL) is not None
        rig.save()
    assert not any(r[2][2] == "counter" for r in S.EventLog(fs).scan()[0])
    for path in (newest_copy(store), older_copy(store)):
        flip_byte(fs, path, 40)
    b, rig2 = boot(copy(fl), pl, shell_now=0, rtc=sup.wall_ms())
    assert b.source == "log" and rig2.sup.counters.get("patient") == 7
