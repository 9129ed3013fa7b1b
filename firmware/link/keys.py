# The role keys file on the pump's filesystem (written by tools/provision.py at manufacture):
# its format, and reading it back. The keys never leave the pump over the radio.
"""Format: one record frame (docs/storage.md) of kind KEYS_KIND whose payload is the value
[pump id (bytes), [[role code, key (32 bytes)], ...]], so a torn or corrupted file is refused by
its CRC. There are no default keys: a pump without this file runs without its radio."""

from link import codes as K
from pump import codec as C

PATH = "/keys"
KEYS_KIND = 4
VERSION = 1
KEY_LEN = 32


def encode(pump_id, keys):
    """The file's bytes for pump_id (bytes) and keys {role code: 32-byte key}."""
    check(pump_id, keys)
    roles = [[role, bytes(keys[role])] for role in sorted(keys)]
    return C.frame(KEYS_KIND, VERSION, 0, bytes(C.encode([bytes(pump_id), roles])))


def decode(buf):
    """(pump_id, {role: key}) from the file's bytes, or ValueError saying what is wrong."""
    try:
        _seq, payload = C.unframe(buf, KEYS_KIND, VERSION)
        pump_id, roles = C.decode(payload)
    except (C.FormatError, ValueError, TypeError):
        raise ValueError("the keys file is damaged or of another format") from None
    keys = {}
    for pair in roles:
        if len(pair) != 2:
            raise ValueError("the keys file is damaged or of another format")
        keys[pair[0]] = pair[1]
    check(pump_id, keys)
    return pump_id, keys


def check(pump_id, keys):
    if not isinstance(pump_id, bytes) or not 1 <= len(pump_id) <= 32:
        raise ValueError("a pump id is 1 to 32 bytes")
    if not keys:
        raise ValueError("no role keys")
    for role, key in keys.items():
        if role not in K.ROLE_NAMES:
            raise ValueError("unknown role %r" % (role,))
        if not isinstance(key, bytes) or len(key) != KEY_LEN:
            raise ValueError("a role key is 32 bytes")
        if key == bytes(KEY_LEN) or len(set(key)) < 8:
            raise ValueError("a role key must be random")
    if len(set(keys.values())) != len(keys):
        raise ValueError("each role needs its own key")


def load(fs):
    """(pump_id, keys) from the pump's filesystem, or None if there is no keys file."""
    try:
        with fs.open(PATH, "rb") as f:
            buf = f.read()
    except OSError:
        return None
    return decode(buf)
