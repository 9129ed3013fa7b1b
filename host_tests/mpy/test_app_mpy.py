# Under MicroPython: the acceptance scenarios of host_tests/test_app.py (host_tests/appscen.py)
# with fixed parameters, from .py sources, then with the application and core compiled by
# mpy-cross as a board runs them. A hung task, a stall, a clock jump, a power cut mid-bolus.
# req: SR-13, SR-14, SR-20, SR-21, SR-23, SR-24, SR-40, SR-43, SR-44, SR-45

import gc
import hashlib
import os
import sys
import time

from _compiled import compile_core, find_mpy_cross, remove_tree

MIN = 60_000
HOUR = 3_600_000
DAY = 86_400_000


def load():
    """Import the application, the core, the sim board and the scenarios afresh."""
    for name in list(sys.modules):
        if name in ("app", "pump", "boards", "host_tests") or name.startswith(
            ("pump.", "boards.", "host_tests.")
        ):
            del sys.modules[name]
    import app
    from host_tests import appscen
    from pump import engine

    # Flash images in files: 256 KB bytearrays, one per scenario, fragment a 2 MB heap.
    appscen.FLASH_DIR = os.getenv("TMPDIR") or "/tmp"
    return app, engine, appscen


class Runs:
    """The fixed scenarios, with their twins made once per pass (the modules are new)."""

    def __init__(self, S):
        self.S = S
        self.twins = {}
        self.ops = {}

    def twin(self, until, actions=()):
        key = (until, actions)
        if key not in self.twins:
            self.twins[key] = self.S.Scenario().play(list(actions), until).finish()
        return self.twins[key]

    def hung(self, task, at):
        S = self.S
        return S.hung_task(task, at, S.HUNG_UNTIL, self.twin(S.HUNG_UNTIL))

    def stall(self, jam, length, during):
        S = self.S
        return S.stall(jam, length, during, S.STALL_UNTIL, self.twin(S.STALL_UNTIL))

    def jump(self, jump, at, reboot, after, set_after):
        S = self.S
        return S.clock_jump(jump, at, reboot, after, set_after, S.JUMP_UNTIL,
                            self.twin(S.JUMP_UNTIL))  # fmt: skip

    def bolus(self, kind, eighth, tear, down):
        # A cut at the given eighth of the bolus's flash operations.
        S = self.S
        if kind not in self.ops:
            self.ops[kind] = S.bolus_ops(kind)
        first, last = self.ops[kind]
        op = first + (last - first) * eighth // 8
        return S.bolus_cut(kind, S.BOLUS_AT, op, tear, down, S.BOLUS_UNTIL,
                           self.twin(S.BOLUS_UNTIL, ((S.BOLUS_AT, kind, None),)),
                           self.twin(S.BOLUS_UNTIL))  # fmt: skip

    def request(self, kind, offset):
        return request_now(self.S, kind, offset)

    def flash(self):
        # The file-backed flash these runs use, through MicroPython's block-device protocol,
        # against the RAM flash: the same scenario (a cut mid-bolus, torn) leaves the same
        # files, counters and deliveries. First, while the heap still has room for an image.
        S = self.S
        from boards.sim import flash

        seen = []
        for dev in (flash.RamFlash(4096, S.BLOCKS),
                    flash.FileFlash(S.FLASH_DIR + "/itb-compare.flash", 4096, S.BLOCKS)):
            scen = S.Scenario(flash_dev=dev)
            scen.play([(S.BOLUS_AT, "patient", None), (S.BOLUS_AT + 1, "cut_at_op",
                                                       (dev.ops + 60, 16))], S.BOLUS_AT + HOUR)
            seen.append((dev.ops, dev.erase_total, dev.reads, dev.cuts,
                         list(scen.vp.delivered), digest(dev)))  # fmt: skip
            out = scen.finish()
            if isinstance(dev, flash.FileFlash):
                dev.close(remove=True)
            del dev, scen
            gc.collect()
        fail = []
        if seen[0] != seen[1]:
            fail.append("RAM and file flash differ: %r" % ([x[:4] for x in seen],))
        if seen[0][3] != 1 or seen[0][5][1] < 3:
            fail.append("no power cut happened, or too few files: %r" % (seen[0][:4],))
        return fail, out


# (scenario, arguments, also from .mpy): the .mpy pass runs one of each kind, for time.
CASES = (
    ("flash", (), False),
    ("hung", ("dosing", 10 * HOUR + 123_457), True),
    ("hung", ("monitor", 20 * HOUR + 7_001), False),
    ("hung", ("storage", 9 * HOUR + 31_337), False),
    ("stall", (20 * HOUR + 777, 3 * HOUR, False), True),
    ("stall", (10 * HOUR + 1_234, 50 * MIN, True), False),
    ("jump", (-3 * DAY, DAY + 3 * HOUR + 4_321, None, 0, 30 * MIN), False),
    ("jump", (200 * DAY, 9 * HOUR, ("hang", "storage"), 2 * HOUR, 3 * HOUR), False),
    # Back by days and a restart before the pump looked at the RTC: the clock is not trusted.
    ("jump", (-18 * DAY, 6 * HOUR + 40 * MIN, ("cut", 0), 19_040, None), True),
    ("bolus", ("clinician_bolus", 0, 0, 0), False),
    ("bolus", ("clinician_bolus", 3, 16, 5 * MIN), True),
    ("bolus", ("clinician_bolus", 8, 2048, HOUR), False),
    ("bolus", ("patient", 1, 0, 0), False),
    ("bolus", ("patient", 5, 16, 10 * MIN), True),
    ("bolus", ("patient", 8, 0, 0), False),
    ("request", ("clinician_bolus", 60_000), True),
    ("request", ("set_clock", 50_000), False),
)


def digest(dev):
    """(SHA-256 over every file's path and bytes, file count) of the flash (not its raw blocks:
    MicroPython's littlefs stamps each file with the host's real time)."""
    from boards.sim import lfs

    fs = lfs.mount(dev)
    h = hashlib.sha256()
    n = 0
    todo = ["/"]
    while todo:
        d = todo.pop()
        for name in sorted(fs.listdir(d)):
            path = d.rstrip("/") + "/" + name
            try:
                with fs.open(path, "rb") as f:
                    data = f.read()
            except OSError:
                todo.append(path)  # a directory
                continue
            h.update(path.encode())
            h.update(data)
            n += 1
    return h.digest(), n


def request_now(S, kind, offset):
    # As test_a_request_between_wakeups_acts_at_its_own_time.
    at = DAY + 4 * HOUR + 999 + offset
    out = S.Scenario().play([(at, kind, None)], at + 2 * HOUR).finish()
    fail = []
    for name in ("pulses_skipped_late", "rtc_jump"):
        if out.events(name):
            fail.append("%s logged: %r" % (name, out.events(name)))
    if out.alarm_events(9) or out.refused:
        fail.append("clock alarm %r, refused %r" % (out.alarm_events(9), out.refused))
    if kind == "set_clock":
        if out.events("wall_clock")[-1][1] != [S.W0 + at, S.W0 + at]:
            fail.append("clock set as %r, at %d" % (out.events("wall_clock")[-1], S.W0 + at))
    else:
        starts = [w for w, a in out.events("bolus_start") if a[0] != "periodic"]
        if starts != [S.W0 + at]:
            fail.append("bolus started at %r, asked at %d" % (starts, S.W0 + at))
    return fail, out


def run_suite(kind):
    app, engine, S = load()
    failures = []
    if kind == "mpy":
        for mod in (app, engine):
            if not mod.__file__.endswith(".mpy"):
                failures.append("mpy: %s came from %s" % (mod.__name__, mod.__file__))
    runs = Runs(S)
    for name, args, compiled in CASES:
        if kind == "mpy" and not compiled:
            continue
        t0 = time.ticks_ms()
        fail, out = getattr(runs, name)(*args)
        print("%s %s %r: %d pulses, restarts %r, %d ms%s" % (
            kind, name, args, len(out.delivered), out.resets,
            time.ticks_diff(time.ticks_ms(), t0), " FAILED" if fail else ""))  # fmt: skip
        failures.extend("%s %s %r: %s" % (kind, name, args, f) for f in fail)
    return failures, app.__file__.rsplit("/", 1)[0]


def main():
    failures, fw_dir = run_suite("py")
    tmp = compile_core(fw_dir + "/pump")
    app_mpy = tmp + "/app.mpy"
    try:
        rc = os.system("'%s' -o '%s' '%s/app.py'" % (find_mpy_cross(fw_dir + "/pump"), app_mpy,
                                                     fw_dir))  # fmt: skip
        assert rc == 0, "mpy-cross failed on app.py"
        sys.path.insert(0, tmp)
        more, _ = run_suite("mpy")
        failures += more
    finally:
        if tmp in sys.path:
            sys.path.remove(tmp)
        try:
            os.remove(app_mpy)
        except OSError:
            pass
        remove_tree(tmp)
    for f in failures:
        print("FAIL " + f)
    assert not failures, "%d failure(s), see above" % len(failures)
    print("OK")


main()
