# HMAC-SHA256 (RFC 2104) over hashlib.sha256: MicroPython has no hmac module. The protocol's
# role proofs, session keys and command MACs are all made with it (docs/protocol.md).

import hashlib

BLOCK = 64
_IPAD = bytes(0x36 for _ in range(BLOCK))
_OPAD = bytes(0x5C for _ in range(BLOCK))


def _xor(key, pad):
    out = bytearray(pad)
    for i in range(len(key)):
        out[i] ^= key[i]
    return out


def hmac_sha256(key, *parts):
    """HMAC-SHA256 of the concatenation of parts (buffers) under key: 32 bytes."""
    if len(key) > BLOCK:
        key = hashlib.sha256(key).digest()
    inner = hashlib.sha256(_xor(key, _IPAD))
    for p in parts:
        inner.update(p)
    outer = hashlib.sha256(_xor(key, _OPAD))
    outer.update(inner.digest())
    return outer.digest()


def equal(a, b):
    """Compare two MACs in time that does not depend on where they differ."""
    if len(a) != len(b):
        return False
    d = 0
    for i in range(len(a)):
        d |= a[i] ^ b[i]
    return d == 0
