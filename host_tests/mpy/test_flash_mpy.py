# The RAM flash and real littlefs (vfs.VfsLfs2) under MicroPython: cuts propagate, every cut of a
# small write sequence leaves old or new data. `export PATH` / `import PATH` trade images with
# host_tests/test_flash.py, which checks littlefs-python reads them the same way.

import binascii
import hashlib
import sys

import vfs

from boards.sim import lfs
from boards.sim.flash import PowerCut, RamFlash

BS = 4096
STATE = "/state/s.bin"
LOG = "/state/log"
# Files whose C finaliser must never run: a cut that longjmps through littlefs leaves them
# unflushed, and closing one later would write with a half-updated littlefs state.
HELD = []


def read(fs, path):
    with fs.open(path, "rb") as h:
        return h.read()


def replace(fs, path, data):
    tmp = path + ".tmp"
    h = fs.open(tmp, "wb")
    h.write(data)
    h.flush()
    h.close()
    fs.rename(tmp, path)


def append(fs, path, data):
    with fs.open(path, "ab") as h:
        h.write(data)


def raises(exc, fn, *args):
    try:
        fn(*args)
    except exc:
        return
    raise AssertionError("%s not raised" % exc.__name__)


def fresh(blocks=32):
    f = RamFlash(BS, blocks)
    lfs.format(f)
    return f


def listing(fs, path="/"):
    out = []
    for name in sorted(fs.listdir(path)):
        full = path.rstrip("/") + "/" + name
        try:
            data = read(fs, full)
        except OSError:
            out.extend(listing(fs, full))
            continue
        digest = binascii.hexlify(hashlib.sha256(data).digest()).decode()
        out.append("%s %d %s" % (full, len(data), digest))
    return out


def native_propagation():
    # The flash itself as VfsLfs2's block device, no wrapper: the exception crosses littlefs.
    f = RamFlash(BS, 16)
    vfs.VfsLfs2.mkfs(f)
    v = vfs.VfsLfs2(f)
    f.cut_at = f.ops + 3
    h = v.open("/a", "wb")
    HELD.append(h)
    try:
        h.write(b"x" * 5000)
        h.close()
    except PowerCut:
        pass
    else:
        raise AssertionError("PowerCut did not cross VfsLfs2")
    assert f.dead and f.ops == f.cut_at - 1


def basics():
    f = RamFlash(BS, 32)
    raises(OSError, lfs.mount, f)
    assert f.ops == 0
    fs = lfs.mount(f, format_if_needed=True)
    fs.mkdir("/state")
    replace(fs, "/state/a.bin", b"one" * 1000)
    replace(fs, "/state/b.bin", b"two")
    fs.rename("/state/b.bin", "/state/a.bin")
    append(fs, LOG, b"r1")
    append(fs, LOG, b"r2")
    fs2 = lfs.mount(f)
    assert sorted(fs2.listdir("/state")) == ["a.bin", "log"]
    assert read(fs2, "/state/a.bin") == b"two"
    assert read(fs2, LOG) == b"r1r2" and fs2.stat(LOG) == 4
    try:
        fs2.stat("/state/b.bin")
    except OSError as e:
        assert e.errno == 2
    else:
        raise AssertionError("stat of a missing file")
    assert f.overprogs == 0
    assert f.read(0, 8, 8) == b"littlefs" and f.read(0, 20, 4) == b"\x01\x00\x02\x00"

    f.cut_at = f.ops + 2
    raises(PowerCut, replace, fs2, "/state/a.bin", b"new" * 1000)
    raises(PowerCut, fs2.listdir, "/")
    raises(PowerCut, f.read, 0, 0, 1)
    raises(PowerCut, lfs.mount, f, True)
    frozen = f.image()
    f.revive()
    raises(PowerCut, fs2.open, "/state/a.bin", "rb")
    assert f.image() == frozen
    assert read(lfs.mount(f), "/state/a.bin") == b"two"


def versions(n):
    return [bytes([65 + i]) * (2000 + 300 * i) for i in range(n)]


def warm_image():
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


def sweep(tear, image):
    probe = RamFlash(BS, 16)
    probe.load(image)
    fs = lfs.mount(probe)
    start = probe.ops
    erases = probe.erase_total
    run_sequence(fs, [])
    total = probe.ops - start
    assert total >= 45 and probe.erase_total - erases == 3
    vs = versions(3)
    overprogs = probe.overprogs
    # One flash for the whole sweep: fresh 64 KB buffers per cut fragment MicroPython's heap,
    # and every small allocation then gets slow.
    f = RamFlash(BS, 16)
    for k in range(1, total + 1):
        f.load(image)
        f.overprogs = 0
        fs = lfs.mount(f)
        f.tear = tear
        f.cut_at = f.ops + k
        progress = []
        raises(PowerCut, run_sequence, fs, progress)
        assert f.ops == f.cut_at - 1
        f.revive()
        fs = lfs.mount(f)
        done = 0
        for kind, i in progress:
            if kind == "s":
                done = i
        state = read(fs, STATE)
        assert state in (vs[done], vs[min(done + 1, 2)]), "cut %d: partial state" % k
        log = read(fs, LOG)
        if progress and progress[-1][0] == "l":
            assert log == b"L0L1"
        else:
            assert log in (b"L0", b"L0L1"), "cut %d: log %r" % (k, log)
        replace(fs, STATE, b"after")
        assert read(lfs.mount(f), STATE) == b"after"
        overprogs += f.overprogs
    assert overprogs == 0
    return total


def op_counts():
    f = fresh()
    fs = lfs.mount(f)
    fs.mkdir("/state")
    replace(fs, STATE, b"a" * 3000)
    p, e = f.progs, f.erase_total
    replace(fs, STATE, b"b" * 3000)
    assert (f.progs - p, f.erase_total - e) == (27, 1)
    replace(fs, "/state/big", b"c" * 10240)
    p, e = f.progs, f.erase_total
    append(fs, "/state/big", b"d" * 100)
    assert (f.progs - p, f.erase_total - e) == (18, 1)


def export(path):
    f = fresh()
    fs = lfs.mount(f)
    fs.mkdir("/state")
    replace(fs, "/state/a.bin", bytes(range(256)) * 12)
    replace(fs, "/state/small", b"inline")
    append(fs, "/state/log", b"r" * 9000)
    append(fs, "/state/log", b"s" * 100)
    replace(fs, "/cfg", b"written by micropython")
    with open(path, "wb") as out:
        out.write(f.image())
    for line in listing(fs):
        print(line)


def import_(path):
    with open(path, "rb") as src:
        image = src.read()
    f = RamFlash(BS, len(image) // BS)
    f.load(image)
    for line in listing(lfs.mount(f)):
        print(line)


def main():
    if len(sys.argv) > 2:
        {"export": export, "import": import_}[sys.argv[1]](sys.argv[2])
        return
    native_propagation()
    basics()
    image = warm_image()
    for tear in (0, 1, 77):
        print("tear", tear, "cuts", sweep(tear, image))
    op_counts()
    print("OK")


main()
