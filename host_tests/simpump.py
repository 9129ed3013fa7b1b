# A virtual pump with its radio in another process (tools/sim_radio.py on a free port, fresh
# keys), paired once by pumpctl: what the host tools' end-to-end tests drive.

import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from host_tests.blecentral import free_port  # the pumpctl tests import it from here too
from itbtools import pumpctl as CTL
from tools import provision as P

ROOT = Path(__file__).resolve().parent.parent
PUMP_ID = "ITB-CTL-1"


class SimPump:
    """tools/sim_radio.py with fresh keys on a free port, paired once by pumpctl."""

    def __init__(self, folder, accel=1):
        """accel: simulated ms per real ms once paired (pairing itself runs at 1, inside the
        pump's 60 s window)."""
        self.dir = folder
        self.paths = P.provision(PUMP_ID, folder)
        self.spec = "127.0.0.1:%d" % free_port()
        self.bonds = folder / "bonds.json"
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "tools" / "sim_radio.py"), "--keys",
             str(self.paths["pump"]), "--listen", self.spec, "--minutes", str(60 * accel)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            cwd=ROOT,
        )  # fmt: skip
        line = self.proc.stdout.readline()
        assert "serving BLE at tcp-server:%s" % self.spec in line, (line, self.proc.stderr.read())
        self.paired = self.ctl("--yes", "pair", key=None)
        if accel != 1:
            self.proc.stdin.write("accel %d\n" % accel)
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
            assert "%d simulated ms per real ms" % accel in line, line

    def ctl(self, *args, key="clinician", input=None, bonds=None, address=None):
        """pumpctl in this process, as a user at a terminal would run it."""
        argv = ["--address", address or self.spec, "--bonds", str(bonds or self.bonds)]
        if key is not None:
            argv += ["--key", str(self.paths.get(key, key))]
        return CliRunner().invoke(CTL.cli, argv + list(args), input=input)

    def close(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
