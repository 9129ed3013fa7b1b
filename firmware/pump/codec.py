# Byte formats shared by the state file and the event log: a small self-describing value
# encoding (docs/storage.md) and the record frame with version, sequence number and CRC-32.

import binascii
import struct
from array import array as _array

# Value tags. Integers are zig-zag varints, so small values of either sign take one byte.
T_NONE = 0
T_INT = 1
T_STR = 2
T_BYTES = 3
T_LIST = 4
T_TRUE = 5
T_FALSE = 6

MAGIC = b"IT"
FRAME = "<2sBBII"  # magic, format version, kind, sequence number, payload length
FRAME_LEN = 12
INT_LIMIT = 1 << 64  # integers are stored only within +-2**64
_SMALL = 0x3FFFFFFF  # a small int on every port: no long arithmetic in the fast path
_NEG_LIMIT = -INT_LIMIT  # made once: a negation per encoded int allocated a long int each time
CRC_LEN = 4


class FormatError(ValueError):
    """Bytes that are not a valid record or value (torn, corrupted, or of another version)."""


def crc32(data, start=0):
    return binascii.crc32(data, start) & 0xFFFFFFFF


def _varint(out, n):
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)


def encode(value, out=None):
    """Append the encoding of value (None, bool, int, str, bytes, list or tuple, or an object
    with key() or as_tuple()) to the bytearray out; returns out. An int array is written as
    the list of its items. Integers must lie within
    +-2**64."""
    if out is None:
        out = bytearray()
    if value is None:
        out.append(T_NONE)
    elif value is True:
        out.append(T_TRUE)
    elif value is False:
        out.append(T_FALSE)
    elif isinstance(value, int):
        if not _NEG_LIMIT <= value <= INT_LIMIT:
            # decode() reads at most 11 varint bytes; refuse here rather than write what
            # could never be read back.
            raise ValueError("integer too large for the record format")
        out.append(T_INT)
        _varint(out, value * 2 if value >= 0 else -value * 2 - 1)
    elif isinstance(value, str):
        b = value.encode()
        out.append(T_STR)
        _varint(out, len(b))
        out.extend(b)
    elif isinstance(value, (bytes, bytearray)):
        out.append(T_BYTES)
        _varint(out, len(value))
        out.extend(value)
    elif isinstance(value, (list, tuple, _array)):
        out.append(T_LIST)
        _varint(out, len(value))
        for v in value:
            if type(v) is int and 0 <= v <= _SMALL:
                # Inline, as encode() would write it: most of a state record is such ints
                # (the limiter's 1,441 buckets), and the call per item was most of a commit.
                out.append(T_INT)
                z = v << 1
                while z > 0x7F:
                    out.append((z & 0x7F) | 0x80)
                    z >>= 7
                out.append(z)
            else:
                encode(v, out)
    elif hasattr(value, "key"):
        encode(value.key(), out)
    elif hasattr(value, "as_tuple"):
        encode(value.as_tuple(), out)
    else:
        raise TypeError("cannot encode %r" % (value,))
    return out


def _get_varint(buf, i):
    n = 0
    shift = 0
    while True:
        if i >= len(buf) or shift > 70:
            raise FormatError("truncated number")
        b = buf[i]
        i += 1
        n |= (b & 0x7F) << shift
        if b < 0x80:
            return n, i
        shift += 7


def _decode(buf, i, depth):
    if i >= len(buf):
        raise FormatError("truncated value")
    tag = buf[i]
    i += 1
    if tag == T_NONE:
        return None, i
    if tag == T_TRUE:
        return True, i
    if tag == T_FALSE:
        return False, i
    if tag == T_INT:
        z, i = _get_varint(buf, i)
        return (z >> 1) if not z & 1 else -((z + 1) >> 1), i
    if tag == T_STR or tag == T_BYTES:
        n, i = _get_varint(buf, i)
        if i + n > len(buf):
            raise FormatError("truncated text")
        b = bytes(buf[i : i + n])
        return (b.decode() if tag == T_STR else b), i + n
    if tag == T_LIST:
        if depth > 16:
            raise FormatError("nesting too deep")
        n, i = _get_varint(buf, i)
        if n > len(buf) - i:
            raise FormatError("list longer than its record")
        items = []
        for _ in range(n):
            v, i = _decode(buf, i, depth + 1)
            items.append(v)
        return items, i
    raise FormatError("unknown value tag %d" % tag)


def decode(buf):
    """The value encoded in buf (lists come back as lists); FormatError if buf is not exactly
    one value."""
    try:
        v, i = _decode(buf, 0, 0)
    except UnicodeError:
        raise FormatError("text is not UTF-8") from None
    if i != len(buf):
        raise FormatError("bytes after the value")
    return v


def frame_parts(kind, version, seq, payload):
    """The record as (header, payload, CRC): written one after the other they are frame()'s
    bytes, without a copy of a payload that may be kilobytes."""
    head = struct.pack(FRAME, MAGIC, version, kind, seq, len(payload))
    return head, payload, struct.pack("<I", crc32(payload, crc32(head)))


def frame(kind, version, seq, payload):
    """A record: header, payload, then the CRC-32 of both."""
    head, payload, crc = frame_parts(kind, version, seq, payload)
    return head + payload + crc


def unframe(buf, kind, version):
    """(seq, payload) of the record that starts buf and fills it exactly; FormatError if the
    magic, kind, version, length or CRC is wrong."""
    rec_len = record_length(buf, 0)
    if rec_len != len(buf):
        raise FormatError("record length does not match")
    magic, ver, knd, seq, _n = struct.unpack_from(FRAME, buf, 0)
    if knd != kind:
        raise FormatError("record of another kind")
    if ver != version:
        raise FormatError("record format version %d, expected %d" % (ver, version))
    return seq, bytes(buf[FRAME_LEN : rec_len - CRC_LEN])


def record_length(buf, at):
    """Length of the record starting at buf[at], after checking its magic and CRC."""
    if len(buf) - at < FRAME_LEN + CRC_LEN:
        raise FormatError("truncated record")
    magic, _ver, _knd, _seq, n = struct.unpack_from(FRAME, buf, at)
    if magic != MAGIC:
        raise FormatError("bad magic")
    end = at + FRAME_LEN + n + CRC_LEN
    if end > len(buf):
        raise FormatError("truncated record")
    (crc,) = struct.unpack_from("<I", buf, end - CRC_LEN)
    if crc != crc32(memoryview(buf)[at : end - CRC_LEN]):
        raise FormatError("CRC mismatch")
    return end - at


def header(buf, at):
    """(version, kind, seq) of a record whose length was checked."""
    _m, ver, knd, seq, _n = struct.unpack_from(FRAME, buf, at)
    return ver, knd, seq
