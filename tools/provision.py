# Key provisioning for a new pump (docs/protocol.md, "Authentication"): fresh random role keys,
# the pump's keys file, and one key file per role for the programmers. Keys are never printed.
"""Usage:
  provision.py --pump-id ITB-0001 --out keys/            # write the three files
  provision.py --pump-id ITB-0001 --out keys/ --port /dev/ttyUSB0 [--dry-run]
                                                          # ... and install the pump's file

Files (created with mode 0600, never overwritten):
  keys/ITB-0001.pump             the pump's keys file, /data/keys on the board
  keys/ITB-0001-clinician.json   the clinician programmer's key file
  keys/ITB-0001-patient.json     the patient remote's key file
A programmer's key file holds the pump id, the role, the key and the last command counter the
programmer used (it raises it as it goes)."""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "firmware")]

from link import codes as K  # noqa: E402
from link import keys as KF  # noqa: E402

BOARD_PATH = "/data" + KF.PATH  # firmware/rig.py's DATA_PREFIX, then the keys file


class ProvisionError(Exception):
    pass


def make_keys(random=os.urandom):
    """{role: key}: fresh, distinct, random."""
    while True:
        keys = {role: random(KF.KEY_LEN) for role in K.ROLE_NAMES}
        try:
            KF.check(b"x", keys)
            return keys
        except ValueError:
            continue  # astronomically rare: a degenerate draw; draw again


def _write_new(path, data):
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ProvisionError("%s exists already; keys are never overwritten." % path) from None
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def provision(pump_id, out_dir, random=os.urandom):
    """Write the pump's keys file and one key file per role; returns their paths."""
    pid = pump_id.encode()
    try:
        KF.check(pid, {K.CLINICIAN: bytes(range(32))})
    except ValueError as e:
        raise ProvisionError("The pump id is not valid: %s." % e) from None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    keys = make_keys(random)
    paths = {"pump": out / ("%s.pump" % pump_id)}
    for role in K.ROLE_NAMES:
        paths[K.ROLE_NAMES[role]] = out / ("%s-%s.json" % (pump_id, K.ROLE_NAMES[role]))
    for p in paths.values():
        if p.exists():
            raise ProvisionError("%s exists already; keys are never overwritten." % p)
    _write_new(paths["pump"], KF.encode(pid, keys))
    for role, key in keys.items():
        doc = {"pump_id": pump_id, "role": K.ROLE_NAMES[role], "key": key.hex(), "counter": 0}
        _write_new(paths[K.ROLE_NAMES[role]], (json.dumps(doc, indent=2) + "\n").encode())
    return paths


def load_key_file(path):
    """(pump_id bytes, role code, key bytes, counter) from a programmer's key file."""
    try:
        doc = json.loads(Path(path).read_text())
        role = {v: k for k, v in K.ROLE_NAMES.items()}[doc["role"]]
        key = bytes.fromhex(doc["key"])
        counter = int(doc["counter"])
        pump_id = doc["pump_id"].encode()
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ProvisionError("%s is not a readable key file (%s)." % (path, e)) from None
    if len(key) != KF.KEY_LEN or counter < 0:
        raise ProvisionError("%s is not a valid key file." % path)
    return pump_id, role, key, counter


def save_counter(path, counter):
    """Raise the key file's counter (never lower it), replacing the file atomically."""
    p = Path(path)
    doc = json.loads(p.read_text())
    if counter <= doc["counter"]:
        return
    doc["counter"] = counter
    tmp = p.with_suffix(p.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(doc, indent=2) + "\n")
    os.replace(tmp, p)


def install_command(pump_file, port):
    return [str(Path(sys.executable).parent / "mpremote"), "connect", port, "fs", "cp",
            str(pump_file), ":" + BOARD_PATH]  # fmt: skip


def main(argv=None):
    ap = argparse.ArgumentParser(description="Make the role keys of a new pump.")
    ap.add_argument("--pump-id", required=True, help="the pump's identity (its serial)")
    ap.add_argument("--out", required=True, help="folder for the key files")
    ap.add_argument("--port", help="also copy the pump's keys file to the board on this port")
    ap.add_argument("--dry-run", action="store_true", help="print the install command only")
    args = ap.parse_args(argv)
    try:
        paths = provision(args.pump_id, args.out)
    except ProvisionError as e:
        print("provision: %s" % e, file=sys.stderr)
        return 1
    for what, p in paths.items():
        print("provision: wrote %s (%s)" % (p, what))
    if args.port:
        cmd = install_command(paths["pump"], args.port)
        print("provision: " + " ".join(cmd))
        if not args.dry_run and subprocess.run(cmd).returncode != 0:
            print("provision: mpremote could not copy the keys file to the board.",
                  file=sys.stderr)  # fmt: skip
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
