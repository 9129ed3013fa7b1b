# The file-backed sim flash (boards/sim/flash.FileFlash) behaves as the RAM flash does: the same
# bytes, counters, power cuts and tears, op by op and under real littlefs.

import os
import tempfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from boards.sim import flash, lfs

BS = 256
BLOCKS = 8

OPS = st.one_of(
    st.tuples(st.just("prog"), st.integers(0, BLOCKS - 1), st.integers(0, BS - 1),
              st.binary(min_size=1, max_size=64)),
    st.tuples(st.just("erase"), st.integers(0, BLOCKS - 1)),
    st.tuples(st.just("read"), st.integers(0, BLOCKS - 1), st.integers(0, BS - 1),
              st.integers(1, 64)),
    st.tuples(st.just("readblocks"), st.integers(0, BLOCKS - 1), st.integers(0, BS - 1),
              st.integers(1, 300)),
    st.tuples(st.just("writeblocks"), st.integers(0, BLOCKS - 1),
              st.binary(min_size=BS, max_size=BS)),
    st.tuples(st.just("cut"), st.integers(1, 4), st.sampled_from([0, 1, 5, 100])),
    st.tuples(st.just("revive")),
)  # fmt: skip


def _do(dev, op):
    """Apply op; returns what it returned or the exception's type and message."""
    try:
        kind = op[0]
        if kind == "prog":
            return dev.prog(op[1], op[2], op[3])
        if kind == "erase":
            return dev.erase(op[1])
        if kind == "read":
            return dev.read(op[1], op[2], op[3])
        if kind == "readblocks":
            buf = bytearray(op[3])
            dev.readblocks(op[1], buf, op[2])
            return bytes(buf)
        if kind == "writeblocks":
            return dev.writeblocks(op[1], op[2])
        if kind == "cut":
            dev.cut_at = dev.ops + op[1]
            dev.tear = op[2]
            return None
        dev.revive()
        return None
    except (flash.PowerCut, ValueError) as e:
        return (type(e).__name__, str(e))


def _state(dev):
    return (dev.image(), dev.ops, dev.progs, dev.erase_total, list(dev.erases), dev.reads,
            dev.overprogs, dev.dead, dev.cuts, dev.boots, dev.cut_at, dev.tear)  # fmt: skip


@settings(max_examples=max(20, settings.default.max_examples // 2))
@given(ops=st.lists(OPS, max_size=40))
def test_file_flash_matches_ram_flash_op_by_op(ops):
    ram = flash.RamFlash(BS, BLOCKS)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "f.bin")
        dev = flash.FileFlash(path, BS, BLOCKS)
        seen = ([], [])
        dev.on_op = lambda *a: seen[0].append(a)
        ram.on_op = lambda *a: seen[1].append(a)
        try:
            for op in ops:
                assert _do(dev, op) == _do(ram, op), op
                assert seen[0] == seen[1], op
                assert _state(dev) == _state(ram), op
        finally:
            dev.close(remove=True)
        assert not os.path.exists(path)


@pytest.mark.parametrize("cut", [None, 37, 90])
def test_littlefs_on_file_flash_writes_the_same_image(tmp_path, cut):
    # The same files written through littlefs, with a power cut (torn) part-way or none.
    images = []
    for dev in (flash.RamFlash(4096, 16), flash.FileFlash(str(tmp_path / "g.bin"), 4096, 16)):
        lfs.format(dev)
        dev.cut_at = cut
        dev.tear = 48
        try:
            fs = lfs.mount(dev)
            fs.mkdir("/d")
            for i in range(12):
                with fs.open("/d/f%d" % (i % 3), "ab") as f:
                    f.write(bytes([i]) * (300 + 97 * i))
            fs.rename("/d/f0", "/d/g")
        except flash.PowerCut:
            pass
        images.append((dev.image(), dev.ops, dev.erase_total, dev.cuts))
        if isinstance(dev, flash.FileFlash):
            dev.revive()
            names = lfs.mount(dev).listdir("/d") if cut is None else None
            dev.close(remove=True)
    assert images[0] == images[1]
    assert images[0][3] == (0 if cut is None else 1)
    if cut is None:
        assert sorted(names) == ["f1", "f2", "g"]


@pytest.mark.parametrize("tear", [0, 1, 100, BS])
@pytest.mark.parametrize("kind", ["prog", "erase"])
def test_torn_operation_leaves_the_same_bytes(tmp_path, kind, tear):
    # A block programmed twice (the second clears more bits), then cut in a third op.
    ops = [("prog", 2, 0, bytes(range(200))), ("prog", 2, 100, b"\x0f" * 100),
           ("cut", 1, tear)]  # fmt: skip
    ops.append(("prog", 2, 8, b"\x00" * 150) if kind == "prog" else ("erase", 2))
    ram = flash.RamFlash(BS, BLOCKS)
    dev = flash.FileFlash(str(tmp_path / "t.bin"), BS, BLOCKS)
    results = [(_do(dev, op), _do(ram, op)) for op in ops[:-1]]
    before = dev.image()
    results.append((_do(dev, ops[-1]), _do(ram, ops[-1])))
    assert all(a == b for a, b in results), results
    assert results[-1][0][0] == "PowerCut" and _state(dev) == _state(ram)
    # The torn part of the op reached the bytes, and nothing else did.
    assert (dev.image() != before) == (tear > 0)
    dev.close(remove=True)
