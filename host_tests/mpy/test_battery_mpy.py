# MicroPython-side battery monitor: a deterministic noisy discharge (and, on the LiPo, a recharge)
# through Monitor on both boards' cells, with the same transitions at the same samples as CPython.
# req: SR-19, SR-34

from boards.esp32_devkitc import board as devkit
from boards.sim import board as simb
from boards.sim import hw
from pump import battery as B

HOUR = 3_600_000
READS = 16
# Worked out on CPython: (sample index, old, new) of every change, and the samples taken.
EXPECTED = {
    "sim": ([(459, B.OK, B.ERI), (493, B.ERI, B.EOS)], 520),
    "devkit": (
        [(465, B.OK, B.ERI), (486, B.ERI, B.EOS), (558, B.EOS, B.ERI), (568, B.ERI, B.OK)],
        700,
    ),
}


def run(b, energy, seed, steps, hold, up):
    mon = B.Monitor(b.CELL, energy, b.ADC_CAL)
    cell = hw.SimCell(b.CELL, b.ADC_CAL, seed=seed, noise_uv=8_000)
    full = b.CELL.capacity_uah * B.NC_PER_UAH
    changes = []
    mvs = []
    n = 0
    for i in range(steps + hold + up):
        if i < steps:
            cell.used_nc = full * (i + 1) // steps
        elif i >= steps + hold:
            cell.used_nc = full - full * (i - steps - hold + 1) // up
        s, c = cell.sample(READS)
        ch = mon.sample((i + 1) * HOUR, s, c)
        mvs.append(mon.mv)
        n += 1
        if ch is not None:
            changes.append((i, ch[0], ch[1]))
    return changes, n, mvs, mon


def check_window(cell, mvs, changes, k):
    # Every change lands on the k-th consecutive sample across its threshold.
    for i, old, new in changes:
        w = mvs[i - k + 1 : i + 1]
        assert len(w) == k, "change before %d samples" % k
        if new > old:
            thr = cell.eos_mv if new == B.EOS else cell.eri_mv
            assert all(v < thr for v in w), "forward without %d low samples at %d" % (k, i)
        else:
            thr = (cell.eos_mv if old == B.EOS else cell.eri_mv) + cell.hyst_mv
            assert all(v >= thr for v in w), "back without %d high samples at %d" % (k, i)


def main():
    # The dev board's own model (40 mA) spends its budget in a day; a 1 uA model keeps the
    # budget out of a voltage test.
    low = B.Energy(1, 0, 0, 20)
    for name, b, energy, args in (
        ("sim", simb, simb.ENERGY, (11, 500, 20, 0)),
        ("devkit", devkit, low, (12, 500, 50, 150)),
    ):
        changes, n, mvs, mon = run(b, energy, *args)
        want, want_n = EXPECTED[name]
        assert n == want_n, "%s: %d samples" % (name, n)
        assert changes == want, "%s: %r" % (name, changes)
        check_window(b.CELL, mvs, changes, mon.debounce)
        print(name, changes)
    print("OK")


main()
