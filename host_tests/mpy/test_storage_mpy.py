# The pump's storage under MicroPython on vfs.VfsLfs2: a few hours of scenario, power cut at a
# stride of op indices, recovered and checked (prescription, accounting, log, source). With the
# argument `digest` it prints the files the uncut run leaves, for host_tests/test_powercut.py to
# compare with the same script under CPython (state and log bytes identical in both runtimes).
# req: SR-03, SR-20, SR-43

import binascii
import hashlib
import sys

from boards.sim import board, hw, lfs
from boards.sim.flash import PowerCut, RamFlash
from pump import limits as L
from pump import persist as P
from pump import rx as RX
from pump import supervisor as SV

BS = 4096
BLOCKS = 16  # 64 KB: MicroPython's default heap holds a few such images
BATCH = 32
MIN = 60_000
HOUR = 3_600_000
W0 = 19_675 * L.DAY_MS + 6 * HOUR
LIMITS = L.ClinicianLimits(800_000, 100_000, 10_000_000, 30)
RX_DAY = RX.Prescription(500, [(0, 300_000), (7 * 60, 380_000), (20 * 60, 320_000)],
                         [(7 * 60, 20_000, 1800)], patient_dose_ng=15_000,
                         patient_duration_s=600, patient_lockout_s=3 * 3600,
                         patient_max_per_24h=4)  # fmt: skip
# (real ms, request): clock, refill, programme, then patient boluses (the second refused).
PLAN = ((5 * MIN, "clock"), (10 * MIN, "refill"), (15 * MIN, "program"), (60 * MIN, "patient"),
        (90 * MIN, "patient"), (150 * MIN, "clinician"))  # fmt: skip
END = 4 * HOUR
STRIDE = 3


def plant():
    s = SV.Settings(board.PUMP_DEAD_VOLUME_NL, batch_pulses=BATCH)
    return P.Plant("sim", board.calibration(), board.RESERVOIR_NL["20ml"], board.CELL,
                   board.ENERGY, board.ADC_CAL, board.ERI_MARGIN_DAYS, s)  # fmt: skip


def key(sup):
    eng = sup.engine
    return (None if eng.rx is None else eng.rx.key(), tuple(eng.lim.as_tuple()),
            eng.next_conc(), eng.mode)  # fmt: skip


class Buzzer:
    # Silent: a recording one would keep every tone of hours of alarms on a small heap.
    def set(self, on):
        pass


class Run:
    """The shell loop of the scenario; `commits` keeps (first op, last op, real ms, key,
    moved pulses, log seq) of every commit when asked to record."""

    def __init__(self, flash, record=False):
        self.flash = flash
        self.commits = [] if record else None
        self.mech = hw.Mechanism()
        self.buzzer = Buzzer()
        self.shell = 0
        self.counter = 0

    def boot(self, real, rtc):
        self.base = real
        self.shell = 0
        fs = lfs.mount(self.flash)
        boot, self.store, self.journal = P.recover(fs, plant(), 0, rtc, "power_on",
                                                   (LIMITS, 500, 2_000_000))  # fmt: skip
        self.sup = boot.sup
        return boot

    def commit(self):
        sup = self.sup
        start = self.flash.ops
        if not self.store.commit(sup, self.journal):
            raise AssertionError("commit failed")
        if self.commits is not None:
            self.commits.append((start, self.flash.ops, self.base + self.shell, key(sup),
                                 sup.moved_pulses, self.store.log.seq))  # fmt: skip

    def advance(self, t):
        self.shell = t
        self.sup.advance(t, self.mech, self.buzzer)
        if self.sup.battery_due(t):
            self.sup.battery_sample(t, 1_500_000 * 16, 16)

    def run_to(self, real):
        sup = self.sup
        end = real - self.base
        while True:
            if self.journal.pending or sup.checkpoint_due():
                self.commit()
            t = sup.next_wake_ms()
            if t > end:
                break
            self.advance(t)
        self.advance(end)
        if self.journal.pending or sup.checkpoint_due():
            self.commit()

    def clinician(self, fn, *args):
        self.counter += 1
        self.sup.use_counter("clinician", self.counter)
        self.commit()
        fn(*args)
        self.commit()

    def scenario(self):
        lfs.format(self.flash)
        self.boot(0, None)
        self.commit()
        sup = self.sup
        for when, what in PLAN:
            self.run_to(when)
            if what == "clock":
                self.clinician(sup.set_clock, W0 + when)
            elif what == "refill":
                self.clinician(sup.refill_begin, 0)
                self.clinician(sup.refill_fill, 20_000_000, 500)
                self.clinician(sup.refill_commit)
            elif what == "program":
                self.clinician(sup.program, RX_DAY, True)
            elif what == "patient":
                sup.patient_bolus()
                self.commit()
            else:
                self.clinician(sup.clinician_bolus, 30_000, 1800)
        self.run_to(END)


def hexdigest(data):
    return binascii.hexlify(hashlib.sha256(data).digest()).decode()


def read(fs, path):
    with fs.open(path, "rb") as f:
        return f.read()


def digest():
    flash = RamFlash(BS, BLOCKS)
    run = Run(flash)
    run.scenario()
    fs = lfs.mount(flash)
    for d in ("/state", "/log"):
        for name in sorted(fs.listdir(d)):
            data = read(fs, d + "/" + name)
            print(d + "/" + name, len(data), hexdigest(data))
    records, problems = run.store.log.scan()
    for seq, h, _v, n in records:
        print("record", seq, n, binascii.hexlify(h).decode())
    print("moved", run.sup.moved_pulses, "state", run.store.state.seq, "problems", len(problems))


def apply_op(buf, op, tear):
    kind, block, off, data = op
    start = block * BS + off
    if kind == "e":
        n = BS if tear < 0 else tear
        for i in range(n):
            buf[start + i] = 0xFF
        return
    n = len(data) if tear < 0 else min(tear, len(data))
    for i in range(n):
        buf[start + i] &= data[i]


def sweep():
    flash = RamFlash(BS, BLOCKS)
    ops = []
    flash.on_op = lambda kind, block, off, data: ops.append((kind, block, off, data))
    run = Run(flash, record=True)
    run.scenario()
    final = run.store.log.scan()[0]
    hashes = [r[1] for r in final]
    commits = run.commits
    run = flash = None
    image = bytearray(BS * BLOCKS)
    for i in range(BS * BLOCKS):
        image[i] = 0xFF
    f = RamFlash(BS, BLOCKS)
    done_ops = 0
    cuts = 0
    sources = {}
    first = commits[1][0] + 1  # a cut in the first commit is the harness's known exception
    for k in range(first, len(ops) + 1, STRIDE):
        while done_ops < k - 1:
            apply_op(image, ops[done_ops], -1)
            done_ops += 1
        ci = 0
        while not (commits[ci][0] < k <= commits[ci][1]):
            ci += 1
        now = commits[ci]
        before = commits[ci - 1]
        for torn in (False, True):
            # One flash for every recovery; revive() retires the previous mount.
            f.load(image)
            if torn:
                op = ops[k - 1]
                apply_op(f.buf, op, (BS if op[0] == "e" else len(op[3])) // 2)
            f.revive()
            r = Run(f)
            rtc = W0 + now[2] if now[2] >= 5 * MIN else None
            boot = r.boot(now[2], rtc)
            sup = boot.sup
            where = "cut at op %d%s" % (k, " torn" if torn else "")
            # g: state is never lost
            assert boot.source in ("a", "b"), where + ": source " + boot.source
            sources[boot.source] = sources.get(boot.source, 0) + 1
            # e: a verified chain, every record of a finished commit, identical hashes
            assert not boot.problems, where + ": " + repr(boot.problems)
            recs = r.store.log.scan()[0]
            assert recs and recs[-1][0] >= before[5], where + ": log lost records"
            for seq, h, _v, _n in recs:
                assert hashes[seq - 1] == h, where + ": record %d differs" % seq
            # a: the committed prescription or the one being committed, never a mix
            assert key(sup) in (before[3], now[3]), where + ": prescription mixed"
            # b: accounting within one batch above the truth
            counted = sup.moved_pulses + sup._uncertain
            assert now[4] <= counted <= now[4] + BATCH, where + ": accounting %d, truth %d" % (
                counted, now[4])
            cuts += 1
    print("cuts", cuts, "of", len(ops), "ops; sources", sorted(sources.items()))


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "digest":
        digest()
        return
    try:
        sweep()
    except PowerCut as e:
        raise AssertionError("a power cut escaped the sweep") from e
    print("OK")


main()
