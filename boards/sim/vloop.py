# The virtual pump's event loop: the part of asyncio the application uses, on a simulated clock
# that jumps to the next timer when every task waits, so days of therapy pass in seconds.
# Runs on CPython and MicroPython alike (coroutines are driven with send/throw).

import time


class CancelledError(BaseException):
    pass


class Reset(BaseException):
    """Raised out of run() when the simulated board resets: the application is gone, its
    tasks never run again, and only the flash, the mechanism and the clocks remain."""

    def __init__(self, cause):
        super().__init__(cause)
        self.cause = cause


class _Suspend:
    # The one object every wait awaits: the first next() hands control to the loop, the next
    # one (when the loop resumes the task) ends the await. One instance serves every task,
    # since arming and the first next() happen with no other task running in between.
    def __init__(self):
        self.armed = False

    def __iter__(self):
        return self

    def __await__(self):
        return self

    def __next__(self):
        if self.armed:
            self.armed = False
            return None
        raise StopIteration


class Task:
    def __init__(self, loop, coro, name):
        self.loop = loop
        self.coro = coro
        self.name = name
        self.wake = None  # timer, in loop ms
        self.gen = 0  # bumped at every wake-up: stale timer entries are skipped
        self.flag = None  # the flag it waits on
        self.done = False
        self.hung = False  # its next wait never ends (a fault injected by the simulation)
        self.exc = None

    def cancel(self):
        if self.done:
            return False
        self.loop._throw(self, CancelledError())
        return True


class ThreadSafeFlag:
    """One waiter; set() before wait() is remembered, like asyncio.ThreadSafeFlag."""

    def __init__(self, loop):
        self.loop = loop
        self.state = False
        self.waiter = None

    def set(self):
        w = self.waiter
        if w is not None:
            self.loop._ready_task(w)
        else:
            self.state = True

    def clear(self):
        self.state = False

    async def wait(self):
        if self.state:
            self.state = False
            return
        await self.loop._park(None, self)


Event = ThreadSafeFlag  # the application only uses single-waiter events


class Loop:
    """now: simulated ms since the loop was made. accel: 0 runs as fast as possible, N runs N
    simulated ms per real ms. watchdog: an object with deadline() (loop ms or None); when the
    clock passes it, run() raises Reset("watchdog")."""

    def __init__(self, now=0, accel=0):
        self.now = now
        self.accel = accel
        self.tasks = []
        self._ready = []
        self._timers = []  # [wake, seq, task, gen], kept sorted by (wake, seq)
        self._seq = 0
        self._cur = None
        self._suspend = _Suspend()
        self.watchdog = None
        self.wakeups = 0
        self._real0 = None

    # ---- the asyncio names the application uses ----

    def create_task(self, coro, name=""):
        t = Task(self, coro, name)
        self.tasks.append(t)
        self._ready.append(t)
        return t

    def ThreadSafeFlag(self):  # noqa: N802 (named as the asyncio class it stands for)
        return ThreadSafeFlag(self)

    def sleep_ms(self, ms):
        return self._park(self.now + (ms if ms > 0 else 0), None)

    def wait_until(self, t, flag):
        """Wait until the loop's clock reaches t, or flag is set (it is then cleared)."""
        if flag.state:
            flag.state = False
            return _DONE
        return self._park(t, flag)

    # ---- scheduling ----

    def _park(self, wake, flag):
        t = self._cur
        t.wake = wake
        t.flag = flag
        if flag is not None:
            flag.waiter = t
        if wake is not None:
            self._seq += 1
            self._insert([wake, self._seq, t, t.gen])
        self._suspend.armed = True
        return self._suspend

    def _insert(self, entry):
        # Few timers are ever pending (one per task), so a sorted list beats a heap here.
        # Sequence numbers only grow, so the new entry goes after every one due at its time.
        tm = self._timers
        w = entry[0]
        i = len(tm)
        while i and tm[i - 1][0] > w:
            i -= 1
        tm.insert(i, entry)

    def _ready_task(self, t):
        if t.done:
            return
        if t.flag is not None:
            t.flag.waiter = None
            t.flag = None
        t.wake = None
        t.gen += 1
        if t.hung:
            return  # an injected hang: nothing wakes it again
        self._ready.append(t)

    def _throw(self, t, exc):
        self._ready_task(t)
        if t in self._ready:
            self._ready.remove(t)
        self._step(t, exc)

    def _step(self, t, exc=None):
        self._cur = t
        try:
            if exc is None:
                t.coro.send(None)
            else:
                t.coro.throw(exc)
        except StopIteration:
            t.done = True
        except CancelledError:
            t.done = True
        except Reset:
            raise
        except Exception as e:  # noqa: BLE001 - a task that dies is reported by run()
            t.done = True
            t.exc = e
            raise
        finally:
            self._cur = None
        if t.done and t in self.tasks:
            self.tasks.remove(t)

    def hang(self, name):
        """Fault injection: the named task's current or next wait never ends."""
        for t in self.tasks:
            if t.name == name:
                t.hung = True
                if t in self._ready:
                    self._ready.remove(t)
                return True
        return False

    def run_until(self, until):
        """Run tasks until the clock would pass `until`; the clock then stands at `until`.
        A task that raises stops the run with its exception; a watchdog that expires raises
        Reset("watchdog") with the clock at its deadline."""
        ready = self._ready
        timers = self._timers
        while True:
            while ready:
                t = ready.pop(0)
                self.wakeups += 1
                self._step(t)
            # Drop timers of tasks that woke another way.
            while timers and timers[0][3] != timers[0][2].gen:
                timers.pop(0)
            nxt = timers[0][0] if timers else None
            wd = self.watchdog.deadline() if self.watchdog is not None else None
            if wd is not None and wd < until and (nxt is None or wd < nxt):
                self._advance(wd)
                raise Reset("watchdog")
            if nxt is None or nxt > until:
                self._advance(until)
                return
            entry = timers.pop(0)
            self._advance(entry[0])
            self._ready_task(entry[2])

    def _advance(self, t):
        if t <= self.now:
            return
        if self.accel:
            # Pace the simulated clock against the real one.
            if self._real0 is None:
                self._real0 = (_real_ms(), self.now)
            real0, sim0 = self._real0
            due = real0 + (t - sim0) // self.accel
            left = due - _real_ms()
            if left > 0:
                time.sleep(left / 1000)
        self.now = t

    def shutdown(self):
        """The board lost power or reset: every task is dropped without running its cleanup,
        as on real hardware (their finally blocks never run)."""
        for t in self.tasks:
            # Gone with the RAM: nothing may run them again. (When CPython's garbage collector
            # finalises an old coroutine, its `finally` may cancel others; that must not step
            # them on this loop, in the middle of a task of the application booted next.)
            t.done = True
        self.tasks = []
        self._ready = []
        self._timers = []


def _real_ms():
    if hasattr(time, "ticks_ms"):
        return time.ticks_ms()
    return int(time.monotonic() * 1000)


class _Done:
    def __iter__(self):
        return self

    def __await__(self):
        return self

    def __next__(self):
        raise StopIteration


_DONE = _Done()
