# Key provisioning (tools/provision.py) and the pump's keys file (firmware/link/keys.py): fresh
# keys per pump and role, files that refuse damage, never overwritten, never printed.

import json
import stat

import pytest

from link import codes as K
from link import keys as KF
from tools import provision as P


def test_provision_writes_matching_private_files_and_prints_no_key(tmp_path, capsys):
    assert P.main(["--pump-id", "ITB-0001", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    pump_id, keys = KF.decode((tmp_path / "ITB-0001.pump").read_bytes())
    assert pump_id == b"ITB-0001" and set(keys) == {K.CLINICIAN, K.PATIENT}
    for role, name in K.ROLE_NAMES.items():
        path = tmp_path / ("ITB-0001-%s.json" % name)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        pid, r, key, counter = P.load_key_file(path)
        assert (pid, r, key, counter) == (b"ITB-0001", role, keys[role], 0)
        assert key.hex() not in out
    assert stat.S_IMODE((tmp_path / "ITB-0001.pump").stat().st_mode) == 0o600


def test_two_pumps_never_share_keys(tmp_path):
    a = P.provision("A", tmp_path)
    b = P.provision("B", tmp_path)
    ka = KF.decode(a["pump"].read_bytes())[1]
    kb = KF.decode(b["pump"].read_bytes())[1]
    assert not set(ka.values()) & set(kb.values())


def test_keys_are_never_overwritten(tmp_path, capsys):
    P.provision("ITB-0001", tmp_path)
    before = (tmp_path / "ITB-0001.pump").read_bytes()
    assert P.main(["--pump-id", "ITB-0001", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "never overwritten" in err and "Traceback" not in err
    assert (tmp_path / "ITB-0001.pump").read_bytes() == before


def test_a_damaged_keys_file_is_refused(tmp_path):
    buf = bytearray(P.provision("ITB-0001", tmp_path)["pump"].read_bytes())
    for i in (0, 5, len(buf) // 2, len(buf) - 1):
        bad = bytearray(buf)
        bad[i] ^= 0x10
        with pytest.raises(ValueError, match="damaged"):
            KF.decode(bytes(bad))
    with pytest.raises(ValueError, match="damaged"):
        KF.decode(bytes(buf[:-1]))


@pytest.mark.parametrize(
    "keys, why",
    [
        ({}, "no role keys"),
        ({K.CLINICIAN: bytes(32)}, "random"),
        ({K.CLINICIAN: bytes(range(31))}, "32 bytes"),
        ({0x99: bytes(range(32))}, "unknown role"),
        ({K.CLINICIAN: bytes(range(32)), K.PATIENT: bytes(range(32))}, "its own key"),
    ],
)
def test_degenerate_keys_are_refused(keys, why):
    with pytest.raises(ValueError, match=why):
        KF.encode(b"ITB-0001", keys)


def test_the_counter_in_a_key_file_only_rises(tmp_path):
    path = P.provision("ITB-0001", tmp_path)["clinician"]
    P.save_counter(path, 12)
    P.save_counter(path, 5)
    assert P.load_key_file(path)[3] == 12
    assert json.loads(path.read_text())["role"] == "clinician"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_install_goes_to_the_boards_data_folder(tmp_path, capsys):
    assert P.main(["--pump-id", "X1", "--out", str(tmp_path), "--port", "/dev/ttyUSB0",
                   "--dry-run"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "fs cp %s :/data/keys" % (tmp_path / "X1.pump") in out


def test_the_install_path_is_where_the_board_looks():
    import rig

    assert P.BOARD_PATH == rig.DATA_PREFIX + KF.PATH
