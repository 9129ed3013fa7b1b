# Puts the firmware on an ESP32 board: `deploy` (compiled files by mpremote), `flash` (a stock
# MicroPython image by esptool), `firmware` (a frozen image from the user's MicroPython tree).
"""Every command prints what it runs; --dry-run prints the commands and runs nothing, so the
steps can be checked without a board. docs/deploy.md walks through them."""

import argparse
import ast
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIRMWARE = ROOT / "firmware"
BOARDS = ROOT / "boards"
# Where esptool writes a stock image, per chip (MicroPython's ports/esp32/boards/*/board.json,
# "flash_offset"): the classic ESP32's bootloader sits at 0x1000, the newer chips' at 0.
FLASH_OFFSET = {"esp32": "0x1000", "esp32s3": "0x0", "esp32c3": "0x0", "esp32c6": "0x0"}
FLASH_BAUD = 460_800
# What deploy copies into /lib (as .mpy); board.py and main.py go to the root as source.
LIB_PACKAGES = ("pump", "hal", "link")
LIB_MODULES = ("app", "radio", "rig")
# Runs on the board before the copy (tools/deploy_prep.py): holds off the pump's watchdog for
# the copy and removes the old firmware from /lib, never the pump's data.
PREP = ROOT / "tools" / "deploy_prep.py"


class DeployError(Exception):
    """A problem to report to the user as one sentence."""


def board_chips(root=ROOT):
    """{board name: chip} of every board folder whose board.py names a CHIP (the ESP32 ones).
    Read from the source, so nothing of the board is imported."""
    out = {}
    for path in sorted((root / "boards").glob("*/board.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in tree.body:
            if (
                isinstance(node, ast.Assign)
                and any(isinstance(t, ast.Name) and t.id == "CHIP" for t in node.targets)
                and isinstance(node.value, ast.Constant)
            ):
                out[path.parent.name] = node.value.value
    return out


def _board_constant(board, name):
    path = BOARDS / board / "board.py"
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if (
            isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == name for t in node.targets)
            and isinstance(node.value, ast.Constant)
        ):
            return node.value.value
    raise DeployError(f"boards/{board}/board.py has no {name} = \"...\" line.")


def check_board(board, verb):
    if not board:
        names = ", ".join(board_chips())
        raise DeployError(f"{verb}: say which board, e.g. BOARD=esp32_devkitc (one of: {names}).")
    chips = board_chips()
    if board not in chips:
        if (BOARDS / board / "board.py").is_file():
            raise DeployError(
                f"{verb}: {board} is not a real board (it names no CHIP); the virtual pump runs "
                "with `make sim`."
            )
        raise DeployError(f"{verb}: there is no board {board!r}; the boards are: "
                          + ", ".join(chips) + ".")  # fmt: skip
    return chips[board]


def check_port(port, verb):
    if not port:
        raise DeployError(f"{verb}: say which serial port the board is on, e.g. "
                          "PORT=/dev/ttyUSB0 (`mpremote connect list` shows them).")  # fmt: skip


def _tool(name):
    # The venv's own copy when this runs from it (make does), else whatever is on PATH.
    local = Path(sys.executable).parent / name
    return _rel(local) if local.exists() else name


def library_sources(root=ROOT):
    """[(source, path under /lib without suffix)] of the firmware files deploy compiles."""
    out = []
    fw = root / "firmware"
    for pkg in LIB_PACKAGES:
        for src in sorted((fw / pkg).rglob("*.py")):
            out.append((src, src.relative_to(fw).with_suffix("").as_posix()))
    for mod in LIB_MODULES:
        out.append((fw / (mod + ".py"), mod))
    return out


def deploy_commands(board, port, stage):
    """The commands, in order: one mpy-cross per firmware file, then one mpremote session that
    prepares the board, copies, and resets it."""
    cmds = []
    for src, name in library_sources():
        out = stage / "lib" / (name + ".mpy")
        cmds.append([_tool("mpy-cross"), "-o", _rel(out), "-s", _rel(src), _rel(src)])
    session = [_tool("mpremote"), "connect", port, "run", _rel(PREP)]
    for pkg in LIB_PACKAGES:
        session += ["+", "cp", "-r", _rel(stage / "lib" / pkg), ":/lib"]
    for mod in LIB_MODULES:
        session += ["+", "cp", _rel(stage / "lib" / (mod + ".mpy")), f":/lib/{mod}.mpy"]
    session += ["+", "cp", _rel(BOARDS / board / "board.py"), ":/board.py"]
    session += ["+", "cp", _rel(FIRMWARE / "main.py"), ":/main.py"]
    session += ["+", "reset"]
    cmds.append(session)
    return cmds


def flash_commands(chip, port, firmware, erase):
    base = [_tool("esptool"), "--chip", chip, "--port", port, "--baud", str(FLASH_BAUD)]
    cmds = []
    if erase:
        cmds.append([*base, "erase-flash"])
    cmds.append([*base, "write-flash", FLASH_OFFSET[chip], firmware])
    return cmds


def firmware_commands(board, mpy_dir):
    """A MicroPython build with the firmware frozen in (the board's manifest.py); needs the
    user's ESP-IDF environment (`source export.sh`) in the shell."""
    mp_board = _board_constant(board, "MICROPYTHON_BOARD")
    manifest = str((BOARDS / board / "manifest.py").resolve())
    port_dir = str(Path(mpy_dir) / "ports" / "esp32")
    make = ["make", "-C", port_dir, f"BOARD={mp_board}", f"FROZEN_MANIFEST={manifest}"]
    return [
        ["make", "-C", str(Path(mpy_dir) / "mpy-cross")],
        [*make, "submodules"],
        make,
    ]


def _rel(path):
    path = Path(path)
    try:
        return path.resolve().relative_to(ROOT).as_posix()
    except ValueError:
        return str(path)


def run(cmds, dry_run):
    for cmd in cmds:
        print(shlex.join(cmd))
        if dry_run:
            continue
        if cmd[0].endswith("mpy-cross"):
            out = ROOT / cmd[cmd.index("-o") + 1]
            out.parent.mkdir(parents=True, exist_ok=True)
        try:
            code = subprocess.run(cmd, cwd=ROOT).returncode
        except FileNotFoundError:
            raise DeployError(f"{cmd[0]} is not installed; run `make venv`.") from None
        if code != 0:
            raise DeployError(f"{Path(cmd[0]).name} failed (exit {code}); its message is above.")


def main(argv=None):
    parser = argparse.ArgumentParser(description="Put the pump firmware on an ESP32 board.")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run none")
    sub = parser.add_subparsers(dest="verb", required=True)
    p = sub.add_parser("deploy", help="compile and copy the firmware with mpremote, then reset")
    p.add_argument("--board", default="")
    p.add_argument("--port", default="")
    p = sub.add_parser("flash", help="write a MicroPython image with esptool")
    p.add_argument("--board", default="")
    p.add_argument("--port", default="")
    p.add_argument("--firmware", default="", help="the .bin image")
    p.add_argument("--erase", action="store_true", help="erase the whole flash first (all data)")
    p = sub.add_parser("firmware", help="build an image with the firmware frozen in")
    p.add_argument("--board", default="")
    p.add_argument("--mpy-dir", default="", help="your MicroPython source tree")
    for p in sub.choices.values():
        p.add_argument("--dry-run", action="store_true", default=argparse.SUPPRESS,
                       help="print the commands, run none")  # fmt: skip
    args = parser.parse_args(argv)
    try:
        chip = check_board(args.board, args.verb)
        if args.verb == "deploy":
            check_port(args.port, "deploy")
            stage = ROOT / "build" / "deploy" / args.board
            if not args.dry_run:
                shutil.rmtree(stage, ignore_errors=True)
            cmds = deploy_commands(args.board, args.port, stage)
        elif args.verb == "flash":
            check_port(args.port, "flash")
            if not args.firmware:
                raise DeployError(
                    "flash: say which MicroPython image to write, e.g. "
                    "FIRMWARE=ESP32_GENERIC-<date>-v1.29.0.bin (docs/deploy.md)."
                )
            if not args.dry_run and not Path(args.firmware).is_file():
                raise DeployError(f"flash: there is no file {args.firmware}.")
            cmds = flash_commands(chip, args.port, args.firmware, args.erase)
        else:
            if not args.mpy_dir:
                raise DeployError("firmware: say where your MicroPython source tree is, e.g. "
                                  "MPY_DIR=~/micropython.")  # fmt: skip
            mpy_dir = Path(args.mpy_dir).expanduser()
            if not args.dry_run and not (mpy_dir / "ports" / "esp32").is_dir():
                raise DeployError(f"firmware: {mpy_dir} has no ports/esp32; give the root of a "
                                  "MicroPython source tree.")  # fmt: skip
            cmds = firmware_commands(args.board, mpy_dir)
        run(cmds, args.dry_run)
    except DeployError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.verb == "firmware" and not args.dry_run:
        mp_board = _board_constant(args.board, "MICROPYTHON_BOARD")
        image = mpy_dir / "ports" / "esp32" / f"build-{mp_board}" / "firmware.bin"
        print(f"firmware: the image is {image}; write it with "
              f"make flash BOARD={args.board} PORT=... FIRMWARE={image}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
