# The device application: boots the pump from flash and runs it as asyncio tasks around the
# supervisor. Hardware comes in as one `hal` object (docs/hardware.md); nothing here imports it.

from pump import alarms as A
from pump import persist as P
from pump.compat import const

# The tasks the watchdog waits for. Each promises to check in again by a deadline; the
# watchdog task feeds the hardware watchdog only while no promise is broken.
DOSING = const(0)
MONITOR = const(1)
STORAGE = const(2)
BUTTON = const(3)
TASK_NAMES = ("dosing", "monitor", "storage", "button")
_IDLE = const(-1)  # a task waiting for work that is not due: no deadline

# A woken task gets this long to do its work and check in again. Generous against the event
# loop's worst latency (a flash erase, a BLE event), short against the watchdog's timeout.
GRACE_MS = const(5_000)
# A commit rewrites a few blocks of flash: a few hundred ms on an ESP32, more when littlefs
# compacts a directory; this leaves a wide margin.
COMMIT_MAX_MS = const(10_000)
VERSION = "0.1.0.dev0"  # the firmware's version, as Device Information shows it
# What request() returns for a change that was applied but could not be saved (storage failed:
# the self-test alarm is on, and a power cut would undo it).
NOT_SAVED = "not_saved"
# The requests a programmer (the radio, the sim's script) may make, by supervisor method.
REQUESTS = ("program", "set_mode", "set_limits", "clinician_bolus", "patient_bolus", "prime",
            "clear_fault", "set_low_threshold", "acknowledge", "snooze", "alarm_test",
            "refill_begin", "refill_fill", "refill_commit", "refill_abandon", "stage",
            "commit_staged", "use_counter", "set_clock")  # fmt: skip
BATTERY_READINGS = const(16)  # ADC readings summed into one battery sample
# The RTC and the pump's own clock may drift apart by this before it is called a jump.
RTC_TOLERANCE_MS = const(60_000)


class App:
    """One pump on one board. boot() recovers it from flash (synchronously, before any task
    runs); run() is the main coroutine. `board` is the board module (plant(), FIRST_BOOT,
    WDT_TIMEOUT_MS, LOG_SEGMENT_BYTES, LOG_SEGMENTS); `hal` its hardware."""

    NOT_SAVED = NOT_SAVED  # for the radio's service, which does not import this module

    def __init__(self, board, hal):
        self.board = board
        self.hal = hal
        self.aio = hal.aio
        self.clock = hal.clock
        self.plant = board.plant()
        self.sup = None
        self.store = None
        self.journal = None
        self.boot_info = None
        self.deadline = [_IDLE, _IDLE, _IDLE, _IDLE]
        self.hung = None  # the first task found late, once the watchdog stops being fed
        self._tasks = []
        self._flags = None
        self._commit_wanted = False
        self._attempts = 0  # commits tried, for requests waiting for theirs
        self._rtc_jump = False
        self._presses = 0  # button presses the button task has taken
        self._press_waiting = False  # a press was waiting at the watchdog's last look
        self.radio = None  # the BLE shell (firmware/radio.py): run(app), open_pairing()

    # ---- boot ----

    def boot(self):
        """Reset cause, self test, recovery, resume: the state the pump runs on is on flash
        before the first pulse."""
        hal = self.hal
        b = self.board
        boot, store, journal = P.recover(hal.fs, self.plant, self.clock.now_ms(),
                                         hal.rtc.now_ms(), hal.reset_cause(), b.FIRST_BOOT,
                                         b.LOG_SEGMENT_BYTES, b.LOG_SEGMENTS)  # fmt: skip
        self.boot_info = boot
        self.sup = sup = boot.sup
        self.store = store
        self.journal = journal
        for problem in hal.self_test():
            sup.log("self_test_failed", problem)
            sup.alarms.event(A.SELF_TEST, sup.now_ms(), problem)
        self._commit()
        return boot

    # ---- requests ----

    def submit(self, name, *args):
        """Apply one request to the supervisor now. Returns None, or the Refusal that says
        why nothing changed. An accepted request holds delivery until its commit is saved."""
        if name not in REQUESTS:
            raise ValueError("unknown request " + name)
        sup = self.sup
        # The supervisor stands at its last event, up to a pulse period ago: bring it to now
        # first, so the request takes effect (and is logged) at its own time.
        sup.advance(self.clock.now_ms(), self.hal.motor, self.hal.buzzer)
        bad = getattr(sup, name)(*args)
        if bad is None and name == "set_clock":
            self.hal.rtc.set_ms(args[0])
            self._rtc_jump = False
        self._want_commit()
        self._wake(DOSING)
        return bad

    async def request(self, name, *args):
        """submit(), then wait for the commit that saves it: only then may a programmer be told
        it was done. Returns None (done and saved), the Refusal (nothing changed), or NOT_SAVED
        (done, but the commit failed: it runs from RAM, and a power cut would undo it)."""
        bad = self.submit(name, *args)
        if bad is not None:
            return bad
        n = self._attempts
        # While storage is failing, the request could only be one of the few still allowed
        # (set_mode, clear_fault, acknowledge): answer at once rather than after the retry.
        while self._attempts == n and self._commit_wanted and self.sup.storage_ok:
            await self.aio.sleep_ms(10)
        return None if not self._commit_wanted else NOT_SAVED

    def note(self, name, *args, commit=True):
        """Log an event that changes no therapy (the radio's connections and commands). It is
        written with the next commit, which it asks for unless commit is False (events of
        reads, which ride on the next commit rather than write the flash each time)."""
        self.sup.log(name, *args)
        if commit:
            self._want_commit()

    def history(self, first, last):
        """The event log's records first..last as stored (bytes each), oldest first."""
        return self.store.log.raw_records(first, last)

    def history_count(self, first, last):
        n = 0
        for _raw in self.store.log.raw_records(first, last):
            n += 1
        return n

    def acknowledge_all(self):
        """The pump's button: acknowledge every latched alarm not yet acknowledged."""
        sup = self.sup
        sup.advance(self.clock.now_ms(), self.hal.motor, self.hal.buzzer)  # as submit() does
        n = 0
        for cid, _name, _prio, _present, acked, _snooze in sup.alarms.active():
            if not acked and sup.acknowledge(cid) is None:
                n += 1
        if n:
            self._want_commit()
            self._wake(DOSING)
        return n

    # ---- the tasks ----

    async def run(self):
        """The main coroutine: start the tasks, then be the watchdog's supervisor. The motor
        driver is disabled whatever ends it."""
        aio = self.aio
        hal = self.hal
        self._flags = [aio.ThreadSafeFlag() for _ in TASK_NAMES]
        self._presses = hal.button.presses  # presses before this boot are not ours to take
        hal.button.attach(self._flags[BUTTON])
        try:
            self._tasks = [
                aio.create_task(self._dosing(), "dosing"),
                aio.create_task(self._monitor(), "monitor"),
                aio.create_task(self._storage(), "storage"),
                aio.create_task(self._button(), "button"),
            ]
            if self.radio is not None:
                # The BLE shell: it reaches the pump only through request().
                self._tasks.append(aio.create_task(self.radio.run(self), "radio"))
            await self._watchdog()
        finally:
            hal.motor.disable()
            for t in self._tasks:
                t.cancel()

    def _wake(self, i):
        if self._flags is not None:
            self._flags[i].set()

    def _want_commit(self):
        if not self._commit_wanted:
            self._commit_wanted = True
            self.deadline[STORAGE] = self.clock.now_ms() + COMMIT_MAX_MS
            self._wake(STORAGE)

    async def _dosing(self):
        clock = self.clock
        flag = self._flags[DOSING]
        try:
            while True:
                t = self.dose(clock.now_ms())
                if t < 0:
                    await flag.wait()
                else:
                    await clock.wait_until(t, flag)
        finally:
            self.hal.motor.disable()

    def dose(self, now):
        """One wake-up of the dosing task: deliver what is due, hand work to the other tasks,
        and return when to wake next (-1: when the storage task has saved the checkpoint the
        batch waits for). The hot path: it allocates nothing (host_tests/mpy)."""
        sup = self.sup
        sup.advance(now, self.hal.motor, self.hal.buzzer)
        if sup.battery_due(now):
            # The first hand-off sets the monitor's deadline; later ones (the sample still
            # due two seconds on) must not push it away, or a hung monitor would never be late.
            if self.deadline[MONITOR] == _IDLE:
                self.deadline[MONITOR] = now + GRACE_MS
            self._wake(MONITOR)
        if self.journal.pending or sup.checkpoint_due():
            self._want_commit()
        if sup.waiting_for_checkpoint():
            self.deadline[DOSING] = now + COMMIT_MAX_MS + GRACE_MS
            return -1
        t = sup.next_wake_ms()
        self.deadline[DOSING] = (t if t > now else now) + GRACE_MS
        return t

    async def _monitor(self):
        hal = self.hal
        clock = self.clock
        flag = self._flags[MONITOR]
        sup = self.sup
        while True:
            self.deadline[MONITOR] = _IDLE
            await flag.wait()
            now = clock.now_ms()
            if sup.battery_due(now):
                sum_uv, count = hal.battery.sample(BATTERY_READINGS)
                sup.battery_sample(now, sum_uv, count)
            self._check_rtc(now)
            self._wake(DOSING)

    def _check_rtc(self, now):
        # The RTC only serves to measure outages across a restart; delivery runs on the
        # monotonic clock. An RTC that leaves the pump's own time is reported once per jump.
        rtc = self.hal.rtc.now_ms()
        sup = self.sup
        if rtc is None or not sup.engine.clock_set:
            return
        d = rtc - sup.wall_ms()
        jumped = d > RTC_TOLERANCE_MS or -d > RTC_TOLERANCE_MS
        if jumped and not self._rtc_jump:
            sup.log("rtc_jump", d)
            sup.alarms.event(A.CLOCK, sup.now_ms(), "rtc_jump", d)
            self._want_commit()
        self._rtc_jump = jumped

    async def _storage(self):
        clock = self.clock
        flag = self._flags[STORAGE]
        while True:
            if not self._commit_wanted:
                self.deadline[STORAGE] = _IDLE
                await flag.wait()
                continue
            ok = self._commit()
            self._wake(DOSING)
            if not ok:
                # Therapy goes on without the batch bound (the alarm says so); try again in
                # a minute, as Storage.commit allows.
                self.deadline[STORAGE] = clock.now_ms() + P.RETRY_MS + GRACE_MS
                await clock.wait_until(clock.now_ms() + P.RETRY_MS, flag)

    def _commit(self):
        # The RTC as it read at the supervisor's last advance, where the saved state stands: a
        # commit made later (a button press, a hung dosing task) would otherwise make the next
        # boot's outage too short by the difference, and the schedule slip by as much.
        rtc = self.hal.rtc.now_ms()
        if rtc is not None:
            rtc -= self.clock.now_ms() - self.sup.last_advance_ms()
        ok = self.store.commit(self.sup, self.journal, rtc)
        self._attempts += 1
        if ok:
            self._commit_wanted = False
        return ok

    async def _button(self):
        flag = self._flags[BUTTON]
        button = self.hal.button
        while True:
            await flag.wait()
            self._presses = button.presses
            self.acknowledge_all()
            if self.radio is not None:
                # The same physical action opens the radio's pairing window.
                self.radio.open_pairing()

    async def _watchdog(self):
        hal = self.hal
        clock = self.clock
        timeout = self.board.WDT_TIMEOUT_MS
        wdt = hal.watchdog(timeout)
        period = timeout // 3  # fed twice or three times before it could expire
        while True:
            now = clock.now_ms()
            if self.hung is None:
                late = self._late(now)
                if late is None:
                    wdt.feed()
                else:
                    # Never fed again: the hardware resets the board. The storage task may
                    # save the record before then, unless it is the one that is stuck.
                    self.hung = TASK_NAMES[late]
                    self.sup.log("task_hung", self.hung)
                    self._want_commit()
            await self.aio.sleep_ms(period)

    def _late(self, now):
        # The task whose deadline passed first: the one that waits on a hung task breaks its
        # own promise later (dosing waits for storage's commit), so this names the cause.
        d = self.deadline
        late = None
        for i in range(len(d)):
            if d[i] != _IDLE and now > d[i] and (late is None or d[i] < d[late]):
                late = i
        # The button task has no timer: a press its interrupt counted that is still not taken
        # at two looks in a row (a third of the watchdog's timeout apart) means it is stuck.
        waiting = self.hal.button.presses != self._presses
        if late is None and waiting and self._press_waiting:
            late = BUTTON
        self._press_waiting = waiting
        return late
