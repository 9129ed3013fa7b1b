# CRC-16/MCRF4XX, the end-to-end check on every protocol frame (as the Insulin Delivery Service
# uses it): reflected polynomial 0x1021, initial value 0xFFFF, no final XOR. Safety, not security.

from array import array

_TABLE = array("H", bytes(512))


def _fill():
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x8408 if c & 1 else c >> 1
        _TABLE[i] = c


_fill()


def crc16(data, crc=0xFFFF):
    """The CRC of data (any buffer), continuing from crc; crc16(b"123456789") == 0x6F91."""
    t = _TABLE
    for b in data:
        crc = (crc >> 8) ^ t[(crc ^ b) & 0xFF]
    return crc
