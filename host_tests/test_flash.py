# The power-cuttable RAM flash (boards/sim/flash.py) and real littlefs on it (boards/sim/lfs.py)
# on CPython: NOR semantics and counters, cuts and tears, atomic replace under every cut.

import hashlib
import sys

import littlefs
import pytest

from boards.sim import lfs
from boards.sim.flash import PowerCut, RamFlash
from tools.mpy import ROOT, run_micropython

MPY_SCRIPT = ROOT / "host_tests" / "mpy" / "test_flash_mpy.py"
BS = 4096


def fresh(blocks=32):
    flash = RamFlash(BS, blocks)
    lfs.format(flash)
    return flash


def read(fs, path):
    with fs.open(path, "rb") as h:
        return h.read()


def replace(fs, path, data):
    """The pattern the firmware uses: tmp, flush (lfs_file_sync), close, rename over."""
    tmp = path + ".tmp"
    h = fs.open(tmp, "wb")
    h.write(data)
    h.flush()
    h.close()
    fs.rename(tmp, path)


def append(fs, path, data):
    with fs.open(path, "ab") as h:
        h.write(data)


def record(flash):
    log = []
    flash.on_op = lambda kind, block, off, data: log.append((kind, block, off, data))
    return log


# --- the flash on its own -------------------------------------------------------------------


def test_nor_program_only_clears_bits_and_erase_sets_them():
    f = RamFlash(256, 4)
    assert f.image() == b"\xff" * 1024
    f.prog(1, 10, b"\x0f\xf0")
    f.prog(1, 10, b"\x3c\x3c")
    assert f.read(1, 9, 4) == b"\xff\x0c\x30\xff"
    assert f.overprogs == 1
    f.erase(1)
    assert f.read(1, 0, 256) == b"\xff" * 256
    assert RamFlash(256, 2, erased=0x00).read(0, 0, 3) == b"\0\0\0"


def test_counters_for_a_hand_made_sequence():
    f = RamFlash(256, 4)
    log = record(f)
    f.erase(2)
    f.prog(2, 0, b"ab")
    f.prog(2, 2, b"cd")
    f.erase(2)
    f.erase(0)
    f.read(2, 0, 4)
    f.prog(0, 255, b"z")
    assert (f.ops, f.progs, f.erase_total, f.reads) == (6, 3, 3, 1)
    assert f.erases == [1, 0, 2, 0]
    assert [(k, b, o) for k, b, o, _ in log] == [
        ("e", 2, 0),
        ("p", 2, 0),
        ("p", 2, 2),
        ("e", 2, 0),
        ("e", 0, 0),
        ("p", 0, 255),
    ]
    assert log[1][3] == b"ab" and log[0][3] is None
    with pytest.raises(ValueError):
        f.prog(0, 255, b"zz")
    with pytest.raises(ValueError):
        f.read(4, 0, 1)
    assert f.ops == 6


def test_cut_at_k_fails_the_kth_op_and_everything_after_until_revive():
    f = RamFlash(256, 4)
    f.prog(0, 0, b"\x00")
    f.cut_at = 3
    f.erase(1)
    before = f.image()
    with pytest.raises(PowerCut):
        f.prog(1, 0, b"\x00" * 8)
    assert f.dead and f.ops == 2 and f.cuts == 1 and f.image() == before
    for op in (lambda: f.read(0, 0, 1), lambda: f.prog(2, 0, b"x"), lambda: f.erase(2)):
        with pytest.raises(PowerCut):
            op()
    assert f.ops == 2 and f.erases == [0, 1, 0, 0]
    f.revive()
    assert not f.dead and f.cut_at is None and f.boots == 1
    f.prog(1, 0, b"\x00")
    assert f.ops == 3


def test_torn_program_and_erase():
    f = RamFlash(256, 4)
    f.tear = 3
    f.cut_at = 1
    with pytest.raises(PowerCut):
        f.prog(0, 4, b"\x00" * 8)
    f.revive()
    assert f.read(0, 0, 16) == b"\xff" * 4 + b"\x00" * 3 + b"\xff" * 9
    assert f.ops == 0 and f.progs == 0
    f.prog(1, 0, b"\x00" * 256)
    f.cut_at = f.ops + 1
    with pytest.raises(PowerCut):
        f.erase(1)
    f.revive()
    assert f.read(1, 0, 256) == b"\xff" * 3 + b"\x00" * 253
    assert f.erases[1] == 0


def test_image_load_and_block_device_protocol():
    f = RamFlash(256, 4)
    f.writeblocks(1, b"\x01" * 300)  # simple form: erase then program, over two blocks
    assert f.erases == [0, 1, 1, 0] and f.progs == 2
    f.writeblocks(3, b"\x02\x02", 10)  # extended form: program only
    assert f.erases[3] == 0
    buf = bytearray(300)
    f.readblocks(1, buf)
    assert bytes(buf) == b"\x01" * 300
    buf = bytearray(4)
    f.readblocks(3, buf, 9)
    assert bytes(buf) == b"\xff\x02\x02\xff"
    assert [f.ioctl(op, 0) for op in (1, 2, 3, 4, 5)] == [0, 0, 0, 4, 256]
    assert f.ioctl(6, 1) == 0 and f.read(1, 0, 1) == b"\xff"
    snap = f.image()
    g = RamFlash(256, 4)
    g.load(snap)
    assert g.image() == snap
    with pytest.raises(ValueError):
        g.load(snap[:-1])


# --- littlefs on it --------------------------------------------------------------------------


def test_real_littlefs_format_write_remount_rename_listdir():
    f = RamFlash(BS, 32)
    with pytest.raises(OSError):
        lfs.mount(f)  # blank flash: LFS_ERR_CORRUPT, never formatted behind the caller's back
    assert f.ops == 0
    fs = lfs.mount(f, format_if_needed=True)
    fs.mkdir("/state")
    replace(fs, "/state/a.bin", b"one" * 1000)
    replace(fs, "/state/b.bin", b"two")
    fs.rename("/state/b.bin", "/state/a.bin")  # replaces an existing file; no remove first
    append(fs, "/state/log", b"r1")
    append(fs, "/state/log", b"r2")
    fs2 = lfs.mount(f)
    assert sorted(fs2.listdir("/")) == ["state"]
    assert sorted(fs2.listdir("/state")) == ["a.bin", "log"]
    assert read(fs2, "/state/a.bin") == b"two"
    assert read(fs2, "/state/log") == b"r1r2"
    assert fs2.stat("/state/log") == 4
    with pytest.raises(OSError) as e:
        fs2.stat("/state/b.bin")
    assert e.value.errno == 2
    fs2.remove("/state/log")
    with pytest.raises(OSError):
        fs2.open("/state/log", "rb")
    with pytest.raises(OSError):
        fs2.rename("/state/a.bin", "/state")  # littlefs renames only onto the same type
    assert f.overprogs == 0
    superblock = f.read(0, 0, 24)
    assert superblock[8:16] == b"littlefs"
    assert superblock[20:24] == b"\x01\x00\x02\x00"  # on-disk version 2.1


def test_littlefs_python_swallows_callback_exceptions(monkeypatch):
    """Why lfs.py carries exceptions itself: littlefs-python prints them and goes on."""

    class Raising(littlefs.UserContext):
        def __init__(self):
            super().__init__(BS * 16)
            self.progs = 0

        def prog(self, cfg, block, off, data):
            self.progs += 1
            if self.progs == 3:  # the first program after format: creating the file
                raise RuntimeError("device failed")
            return super().prog(cfg, block, off, data)

    seen = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: seen.append(u.exc_type))
    fs = littlefs.LittleFS(context=Raising(), block_size=BS, block_count=16, mount=False)
    fs.format()
    fs.mount()
    # The program "succeeded" (the callback returned 0) without writing, so littlefs later
    # trips over what it reads back: an unrelated error code, never our RuntimeError.
    with pytest.raises(littlefs.LittleFSError):
        with fs.open("a", "wb") as h:
            h.write(b"x" * 100)
    assert seen == [RuntimeError]


def test_power_cut_propagates_and_stale_mounts_stay_dead():
    f = fresh()
    fs = lfs.mount(f)
    replace(fs, "/a", b"old")
    f.cut_at = f.ops + 2
    with pytest.raises(PowerCut) as e:
        replace(fs, "/a", b"new" * 1000)
    assert "during" in str(e.value)  # the flash's own exception, not a converted one
    with pytest.raises(PowerCut):
        fs.listdir("/")
    with pytest.raises(PowerCut):
        lfs.mount(f, format_if_needed=True)  # a cut is never "repaired" by formatting
    frozen = f.image()
    f.revive()
    with pytest.raises(PowerCut):
        fs.open("/a", "rb")  # mounted in the previous power cycle
    assert f.image() == frozen
    assert read(lfs.mount(f), "/a") == b"old"


def test_bad_mode_is_refused():
    fs = lfs.mount(fresh())
    with pytest.raises(ValueError):
        fs.open("/a", "w")


# --- exhaustive power-cut sweep --------------------------------------------------------------

STATE = "/state/s.bin"
LOG = "/state/log"


def versions(n):
    return [bytes([65 + i]) * (2000 + 300 * i) for i in range(n)]


def warm_image():
    """An image whose next replace compacts the directory's metadata pair (an erase)."""
    f = fresh(16)
    fs = lfs.mount(f)
    fs.mkdir("/state")
    append(fs, LOG, b"L0")
    replace(fs, STATE, versions(1)[0])
    while True:
        snap = f.image()
        erases = f.erase_total
        replace(fs, STATE, versions(1)[0])
        if f.erase_total - erases > 1:
            return snap


def run_sequence(fs, progress):
    vs = versions(3)
    for i in (1, 2):
        replace(fs, STATE, vs[i])
        progress.append(("s", i))
    append(fs, LOG, b"L1")
    progress.append(("l", 1))


def check_after_cut(f, progress):
    fs = lfs.mount(f)
    vs = versions(3)
    done_s = max([i for k, i in progress if k == "s"] or [0])
    state = read(fs, STATE)
    assert state in (vs[done_s], vs[min(done_s + 1, 2)]), "partial or stale state file"
    log = read(fs, LOG)
    done_l = any(k == "l" for k, _ in progress)
    assert log in ((b"L0L1",) if done_l else (b"L0", b"L0L1")), log
    # The filesystem stays writable after recovery.
    replace(fs, STATE, b"after")
    assert read(lfs.mount(f), STATE) == b"after"
    return state == vs[done_s]


@pytest.mark.parametrize("tear", [0, 1, 77])
def test_every_cut_leaves_old_or_new_never_partial(tear):
    image = warm_image()
    probe = RamFlash(BS, 16)
    probe.load(image)
    fs = lfs.mount(probe)
    start = probe.ops
    erases = probe.erase_total
    run_sequence(fs, [])
    total = probe.ops - start
    # two new data blocks, and the compaction of the directory's metadata pair
    assert total >= 45 and probe.erase_total - erases == 3
    outcomes = {True: 0, False: 0}
    overprogs = 0
    for k in range(1, total + 1):
        f = RamFlash(BS, 16)
        f.load(image)
        fs = lfs.mount(f)
        f.tear = tear
        f.cut_at = f.ops + k
        progress = []
        with pytest.raises(PowerCut):
            run_sequence(fs, progress)
        assert f.ops == f.cut_at - 1
        f.revive()
        outcomes[check_after_cut(f, progress)] += 1
        overprogs += f.overprogs
    assert sum(outcomes.values()) == total
    # littlefs programs only erased bytes, even when it recovers from a torn program or erase
    # (disk version 2.1 checks that the rest of a metadata block is still erased).
    assert overprogs + probe.overprogs == 0


# --- the op counts the report quotes ----------------------------------------------------------


def test_block_ops_of_a_replace_and_an_append():
    f = fresh()
    fs = lfs.mount(f)
    fs.mkdir("/state")
    replace(fs, STATE, b"a" * 3000)
    log = record(f)
    replace(fs, STATE, b"b" * 3000)
    kinds = [k for k, *_ in log]
    # create the tmp entry, erase + 24 programs of 128 bytes, sync commit, rename commit
    assert (kinds.count("p"), kinds.count("e")) == (27, 1)
    replace(fs, "/state/big", b"c" * 10240)
    log = record(f)
    append(fs, "/state/big", b"d" * 100)
    kinds = [k for k, *_ in log]
    programmed = sum(len(d) for k, _, _, d in log if k == "p")
    # littlefs copies the 2060-byte tail block (pointers + data) to a new block, then commits
    assert (kinds.count("p"), kinds.count("e")) == (18, 1)
    assert programmed >= 2060 + 100
    assert read(lfs.mount(f), "/state/big") == b"c" * 10240 + b"d" * 100


# --- images cross between the runtimes --------------------------------------------------------


def listing(fs, path="/"):
    """name size sha256 for every file under path, in sorted order."""
    out = []
    for name in sorted(fs.listdir(path)):
        full = path.rstrip("/") + "/" + name
        try:
            data = read(fs, full)
        except OSError:
            out.extend(listing(fs, full))
            continue
        out.append("%s %d %s" % (full, len(data), hashlib.sha256(data).hexdigest()))
    return out


def test_images_cross_between_micropython_and_cpython(tmp_path):
    mp_img = tmp_path / "mp.img"
    code, out, err = run_micropython(MPY_SCRIPT, ["export", mp_img])
    assert code == 0, err
    claimed = out.strip().splitlines()
    f = RamFlash(BS, 32)
    f.load(mp_img.read_bytes())
    fs = lfs.mount(f)
    assert listing(fs) == claimed
    assert f.read(0, 20, 4) == b"\x01\x00\x02\x00"  # MicroPython also writes disk version 2.1
    # And back: CPython changes the MicroPython image, MicroPython reads it.
    replace(fs, "/state/a.bin", b"from cpython" * 100)
    fs.mkdir("/cp")
    append(fs, "/cp/log", b"x" * 5000)
    cp_img = tmp_path / "cp.img"
    cp_img.write_bytes(f.image())
    code, out, err = run_micropython(MPY_SCRIPT, ["import", cp_img])
    assert code == 0, err
    assert out.strip().splitlines() == listing(fs)
