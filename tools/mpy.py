# Runs a script under the real MicroPython unix port (or CPython) with the firmware importable.
# Used by host_tests and handy by hand: python tools/mpy.py [--heapsize 64k] script.py [args]

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIRMWARE = ROOT / "firmware"
COMPILED = ROOT / "build" / "mpy"
DEFAULT_TIMEOUT_S = 300

# Header comment naming the safety requirements a script demonstrates: "# req: SR-11, SR-33".
_REQ_LINE = re.compile(r"^#\s*req:\s*(.*)$")


class MpyError(Exception):
    """A setup problem to report as one sentence (interpreter or build output missing)."""


def find_micropython():
    """Path of the micropython executable: $MICROPYTHON, else the venv's, else PATH."""
    override = os.environ.get("MICROPYTHON")
    if override:
        found = shutil.which(override)
        if not found:
            raise MpyError(f"MICROPYTHON={override} is not an executable.")
        # Absolute, because the interpreter is started with the repo root as its cwd.
        return os.path.abspath(found)
    # The venv's bin is next to the running interpreter when this runs under .venv/bin/python.
    for candidate in (Path(sys.executable).parent / "micropython", ROOT / ".venv/bin/micropython"):
        if os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("micropython")
    if found:
        return found
    raise MpyError("No micropython executable found; run `make .venv` or set MICROPYTHON.")


def import_roots(compiled=False):
    """Directories that make `import pump...` and `import boards...` work, in search order."""
    if not compiled:
        return [FIRMWARE, ROOT]
    # .mpy imports are what a board runs and keep bytecode off the heap, which matters when
    # measuring allocations; `make mpy` produces them.
    if not (COMPILED / "firmware").is_dir():
        raise MpyError("build/mpy/ has no compiled firmware; run `make mpy` first.")
    return [COMPILED / "firmware", COMPILED]


def run_micropython(script, args=(), heapsize=None, compiled=False, timeout=DEFAULT_TIMEOUT_S):
    """Run `script` under MicroPython; return (exit code, stdout, stderr) as text."""
    env = dict(os.environ)
    # MICROPYPATH replaces the default search path, so .frozen must be named again for the
    # interpreter's built-in frozen modules (asyncio and friends) to import.
    env["MICROPYPATH"] = os.pathsep.join([str(p) for p in import_roots(compiled)] + [".frozen"])
    cmd = [find_micropython()]
    if heapsize:
        cmd += ["-X", f"heapsize={heapsize}"]
    cmd += [str(Path(script).resolve()), *map(str, args)]
    return _run(cmd, env, timeout, script)


def run_cpython(script, args=(), timeout=DEFAULT_TIMEOUT_S):
    """Run `script` under this CPython with the same import roots; return (code, out, err)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(str(p) for p in import_roots())
    # A fixed hash seed makes any dependence on set order reproducible from run to run.
    env["PYTHONHASHSEED"] = "0"
    cmd = [sys.executable, "-B", str(Path(script).resolve()), *map(str, args)]
    return _run(cmd, env, timeout, script)


def _run(cmd, env, timeout, script):
    try:
        proc = subprocess.run(
            cmd, env=env, cwd=ROOT, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired:
        return 124, "", f"{Path(script).name} did not finish within {timeout} s"
    return proc.returncode, _text(proc.stdout), _text(proc.stderr)


def _text(data):
    return data.decode("utf-8", "replace")


def read_req_ids(path):
    """Requirement ids from the script's leading comment block, in order, without repeats."""
    ids = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith("#"):
                break
            match = _REQ_LINE.match(line)
            if match:
                for rid in re.split(r"[,\s]+", match.group(1).strip()):
                    if rid and rid not in ids:
                        ids.append(rid)
    return ids


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Run a script under MicroPython with firmware/ and the repo root importable."
    )
    parser.add_argument("--heapsize", help="MicroPython heap size, e.g. 64k")
    parser.add_argument(
        "--compiled", action="store_true", help="import the .mpy files from build/mpy/"
    )
    parser.add_argument(
        "--cpython", action="store_true", help="run under this CPython instead, same paths"
    )
    parser.add_argument("script")
    parser.add_argument("args", nargs=argparse.REMAINDER)
    opts = parser.parse_args(argv)
    try:
        if opts.cpython:
            code, out, err = run_cpython(opts.script, opts.args)
        else:
            code, out, err = run_micropython(
                opts.script, opts.args, heapsize=opts.heapsize, compiled=opts.compiled
            )
    except MpyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(out)
    sys.stderr.write(err)
    return code


if __name__ == "__main__":
    sys.exit(main())
