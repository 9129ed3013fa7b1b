# Power cuts on real littlefs, CI-sized: every op of the scenario's first hours, a stride over
# seven days, the programme-change and log-rotation commits, and random resets over 30 days.
# The full sweep runs in `make bench` (tools/bench_storage.py); the harness is powercut.py.

import functools
from pathlib import Path

import pytest

from host_tests import powercut as PC
from tools.mpy import run_cpython, run_micropython

BLOCKS = 64  # 256 KB: the scenario's files fit many times over, and images copy quickly
CUT_PARTS = 4


@functools.cache
def week():
    return PC.Recording(7, BLOCKS)


@functools.cache
def rotating():
    # 1 KB segments, at most three: the log rotates several times a day.
    return PC.Recording(2, BLOCKS, log_shape=(1024, 3))


def _assert_clean(n, failures):
    assert n > 0
    assert failures == [], failures[:5]


def _first_hours_points(rec, hours):
    # After the first commit (see test_cut_in_first_commit), up to `hours` of the scenario:
    # commissioning, clock, refill, programme, the first patient boluses.
    last = max(i for i, c in enumerate(rec.commits) if c.real <= hours * PC.HOUR)
    return [k for k in range(rec.commits[1].start_op + 1, rec.commits[last].end_op + 1)]


@pytest.mark.req("SR-03", "SR-20", "SR-28", "SR-43", "SR-45")
@pytest.mark.parametrize("part", range(CUT_PARTS))
@pytest.mark.parametrize("torn", [False, True], ids=["clean", "torn"])
def test_every_op_of_the_first_hours(torn, part):
    rec = week()
    points = _first_hours_points(rec, 3)[part::CUT_PARTS]
    n, failures, worst = PC.sweep(rec, points, tears=(torn,), hours=0.5)
    _assert_clean(n, failures)
    assert worst <= PC.BATCH


@pytest.mark.req("SR-03", "SR-20", "SR-28", "SR-43", "SR-45")
@pytest.mark.parametrize("torn", [False, True], ids=["clean", "torn"])
def test_stride_over_seven_days(torn):
    rec = week()
    points = [k for k in rec.cut_points() if k > rec.commits[1].start_op][::89]
    n, failures, worst = PC.sweep(rec, points, tears=(torn,), hours=1)
    _assert_clean(n, failures)
    assert len(points) > 100 and worst <= PC.BATCH


def test_rebuilt_image_is_the_rerun_image():
    rec = week()
    stage = _programme_change_commit(rec)
    picks = [
        (rec.commits[1].start_op + 1, False),
        (rec.ops_of(stage)[len(rec.ops_of(stage)) // 2], True),
        (rec.ops_of(stage)[-1], False),
        (rec.commits[40].end_op, True),
    ]
    # Kinds covered: a program and an erase, torn and not.
    kinds = {rec.ops[k - 1][0] for k, _t in picks}
    images = PC.Images(rec)
    for k, torn in picks:
        assert PC.rerun_image(rec, k, torn) == images.at(k, torn), (k, torn)
    assert kinds <= {"p", "e"} and "p" in kinds


def _programme_change_commit(rec):
    # The commit of commit_staged: the programme changes and the staged one is gone.
    for i in range(1, len(rec.commits)):
        a, b = rec.commits[i - 1].key, rec.commits[i].key
        if a[4] is not None and b[4] is None and a[0] != b[0]:
            return i
    raise AssertionError("no programme change in the scenario")


@pytest.mark.req("SR-03")
def test_cut_anywhere_in_the_programme_change():
    rec = week()
    i = _programme_change_commit(rec)
    images = PC.Images(rec)
    seen = set()
    for k in rec.ops_of(i):
        for torn in (False, True):
            for delay, valid in PC.CASES:
                out = PC.cut_once(rec, images, k, torn, delay, valid, 1 if delay == 0 else 0)
                assert out.failures == [], (k, torn, delay, valid, out.failures)
    # Both outcomes occur: the old programme (with the staged one) and the new one.
    for k in (rec.ops_of(i)[0], rec.ops_of(i)[-1] + 1):
        flash = PC.RamFlash(PC.BLOCK, rec.blocks)
        flash.load(images.at(k))
        rig = PC.Rig(flash)
        boot = rig.boot(rec.commits[i].real, PC.W0 + rec.commits[i].real)
        assert boot.source in PC.STATE_SOURCES and not boot.problems
        seen.add(PC.rx_key(boot.sup))
    assert seen == {rec.commits[i - 1].key, rec.commits[i].key}


@pytest.mark.req("SR-28")
def test_cut_anywhere_in_log_rotation():
    rec = rotating()
    assert len(rec.rotated) >= 2
    commits = sorted({rec.commit_of_seq(seq) for seq in rec.rotated})
    points = [k for i in commits[:3] for k in rec.ops_of(i)]
    n, failures, _worst = PC.sweep(rec, points, hours=1)
    _assert_clean(n, failures)


@pytest.mark.req("SR-20")
def test_cut_in_first_commit():
    # The log may hold the commissioning records before any state is saved: a new pump again.
    rec = week()
    n, failures, _worst = PC.sweep(rec, rec.ops_of(0), cases=((0, False),), hours=0)
    _assert_clean(n, failures)


@pytest.mark.req("SR-20", "SR-43")
def test_random_resets_over_thirty_days():
    resets, failures, worst, rig = PC.random_resets(50, days=30, blocks=BLOCKS, seed=4)
    assert resets == 50
    assert failures == [], failures[:5]
    assert worst <= PC.BATCH
    # The pump is still delivering the programme at the end, on the last refill's strength.
    assert rig.sup.engine.rx is not None and rig.sup.engine.next_conc() == 1000


def test_state_and_log_bytes_match_micropython():
    # The same few hours under both runtimes: every file's bytes and every record's hash agree.
    script = Path(__file__).parent / "mpy" / "test_storage_mpy.py"
    outs = []
    for run in (run_cpython, run_micropython):
        code, out, err = run(script, ["digest"])
        assert code == 0, err
        outs.append(out.splitlines())
    assert outs[0] == outs[1]
    lines = outs[0]
    assert any(x.startswith("/state/state.a ") for x in lines)
    assert sum(x.startswith("record ") for x in lines) > 20
    assert lines[-1].endswith("problems 0")
