# Type-checks the firmware and each ESP32 board file with mypy against that board's published
# MicroPython stubs (`make lint`), so firmware only calls APIs that exist on the chip.
"""For each board folder whose board.py names a CHIP, mypy checks firmware/*.py (app, main, rig),
hal/ and pump/ with that board.py as the module `board` (as on the device), using the chip's
stub set (installed by tools/bootstrap.py into <venv>/stubs/<chip>/) as both the typeshed and
the modules machine, esp32, time, micropython... Settings: [tool.mypy] in pyproject.toml."""

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tools.deploy import board_chips  # noqa: E402 - needs the repo root on the path first


def firmware_files(root):
    fw = root / "firmware"
    files = sorted(fw.glob("*.py"))  # app.py, main.py, rig.py
    files += sorted((fw / "hal").rglob("*.py")) + sorted((fw / "pump").rglob("*.py"))
    return [f for f in files if f.is_file()]


def check_board(root, stubs_root, board, chip):
    """Run mypy for one board; returns (exit code, output)."""
    stubs = stubs_root / chip
    if not (stubs / "machine.pyi").is_file():
        return 2, (f"typecheck: the MicroPython stubs for {chip} are not in {stubs}; "
                   "run `make venv` (tools/bootstrap.py installs them).\n")  # fmt: skip
    env = dict(os.environ)
    # The stubs first, so `import time` is MicroPython's time; then the firmware import root and
    # the board's folder, where board.py is the module `board` that main.py imports.
    env["MYPYPATH"] = os.pathsep.join([str(stubs), str(root / "firmware"),
                                       str(root / "boards" / board)])  # fmt: skip
    files = [str(f.relative_to(root)) for f in firmware_files(root)]
    files.append(str((root / "boards" / board / "board.py").relative_to(root)))
    cmd = [sys.executable, "-m", "mypy", "--config-file", str(root / "pyproject.toml"),
           "--custom-typeshed-dir", str(stubs),
           "--cache-dir", str(root / "build" / "mypy" / board), *files]  # fmt: skip
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
    return proc.returncode, proc.stdout + proc.stderr


def main(argv=None):
    parser = argparse.ArgumentParser(description="Type-check the firmware per ESP32 board.")
    parser.add_argument("--root", type=Path, default=ROOT, help="repository root")
    parser.add_argument("--stubs", type=Path, default=Path(sys.prefix) / "stubs",
                        help="the per-chip stub sets (default <venv>/stubs)")  # fmt: skip
    args = parser.parse_args(argv)
    root = args.root.resolve()
    boards = board_chips(root)
    failed = []
    for board, chip in boards.items():
        code, out = check_board(root, args.stubs, board, chip)
        if code != 0:
            failed.append(board)
            sys.stdout.write(f"--- {board} ({chip} stubs) ---\n" + out)
    if failed:
        print("typecheck: mypy found problems for " + ", ".join(failed), file=sys.stderr)
        return 1
    print("typecheck: firmware and board files OK against the stubs of "
          + ", ".join(f"{b} ({c})" for b, c in boards.items()))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
