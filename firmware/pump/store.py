# Power-loss-safe storage on the board's littlefs: the state file kept in two copies (A/B),
# the hash-chained event log in rotating segments, and the daily totals (docs/storage.md).

import hashlib

from pump import codec as C

STATE_KIND = 1
LOG_KIND = 2
DAYS_KIND = 3
VERSION = 1
HASH_LEN = 16
ZERO_HASH = bytes(HASH_LEN)

STATE_DIR = "/state"
LOG_DIR = "/log"
DAYS_FILE = "/log/days"
MARKER_FILE = "/state/reset"


def _exists(fs, path):
    try:
        fs.stat(path)
        return True
    except OSError:
        return False


def _read(fs, path):
    with fs.open(path, "rb") as f:
        return f.read()


def write_atomic(fs, path, data):
    """Replace path with data (bytes, or a tuple of parts written in order): old or new after
    a power cut, never a mix. littlefs commits a file at close, and a rename is atomic even
    across a power loss."""
    tmp = path + ".tmp"
    with fs.open(tmp, "wb") as f:
        if isinstance(data, tuple):
            for part in data:
                f.write(part)
        else:
            f.write(data)
        f.flush()
    fs.rename(tmp, path)


def ensure_dirs(fs):
    for d in (STATE_DIR, LOG_DIR):
        if not _exists(fs, d):
            fs.mkdir(d)


def chain_hash(record):
    return hashlib.sha256(record).digest()[:HASH_LEN]


class StateFiles:
    """Two copies of the state record. Each save overwrites the older copy, so the newer one
    survives whatever happens to this write."""

    NAMES = ("a", "b")

    def __init__(self, fs):
        self.fs = fs
        self.seq = 0
        self._next = 0  # index of the copy the next save overwrites

    def _path(self, i):
        return "%s/state.%s" % (STATE_DIR, self.NAMES[i])

    def read_all(self):
        """[(seq, payload, name)] of the valid copies, newest first, and {name: problem} of the
        others (missing, torn, corrupt, other version)."""
        good = []
        bad = {}
        for i in range(2):
            name = self.NAMES[i]
            try:
                buf = _read(self.fs, self._path(i))
            except OSError:
                bad[name] = "missing"
                continue
            try:
                seq, payload = C.unframe(buf, STATE_KIND, VERSION)
            except C.FormatError as e:
                bad[name] = str(e)
                continue
            good.append((seq, payload, name))
        good.sort(key=lambda g: -g[0])
        return good, bad

    def adopt(self, seq, name):
        """Go on after the copy `name` (sequence seq) was loaded: the other copy is next."""
        self.seq = seq
        self._next = 1 - self.NAMES.index(name)

    def save(self, payload):
        self.seq += 1
        write_atomic(self.fs, self._path(self._next), C.frame_parts(STATE_KIND, VERSION,
                                                                      self.seq, payload))
        self._next = 1 - self._next
        return self.seq


def _segment_name(first_seq):
    return "%s/%08x.seg" % (LOG_DIR, first_seq)


def _segment_first(path):
    """The first sequence number of a segment, from its name (_segment_name's inverse)."""
    return int(path[len(LOG_DIR) + 1 : -4], 16)


class EventLog:
    """Append-only records, each with a sequence number that never resets, the wall time, a
    CRC, and the hash of the record before it. Segments of up to seg_bytes; when there are
    more than max_segments, the oldest goes, and a record says which and what its last hash
    was, so the chain stays verifiable from the oldest segment kept."""

    def __init__(self, fs, seg_bytes=8192, max_segments=16):
        self.fs = fs
        self.seg_bytes = seg_bytes
        self.max_segments = max_segments
        self.seq = 0  # of the last record written
        self.head = ZERO_HASH  # its hash
        self._seg = None  # path of the segment being appended to
        self._seg_size = 0
        self.remembered = {}  # seq: hash, for the sequence numbers scan() was asked to keep

    def segments(self):
        names = [n for n in self.fs.listdir(LOG_DIR) if n.endswith(".seg")]
        names.sort()
        return [LOG_DIR + "/" + n for n in names]

    def scan(self, keep=None, remember=()):
        """Read every segment: (records, problems). records: [(seq, hash, value, raw_len)] in
        order; problems: phrases for each break in the chain, CRC or sequence.

        keep(value) -> bool, if given, chooses the records to return (the first, the last and
        every log_rotated record are always returned): a full log does not fit in a board's
        RAM. The hashes of the sequence numbers in remember are kept in self.remembered."""
        records = []
        problems = []
        self.remembered = {}
        last = None
        prev_hash = None
        prev_seq = None
        for path in self.segments():
            try:
                buf = _read(self.fs, path)
            except OSError:
                problems.append("%s unreadable" % path)
                continue
            at = 0
            while at < len(buf):
                try:
                    n = C.record_length(buf, at)
                    ver, kind, seq = C.header(buf, at)
                    if kind != LOG_KIND or ver != VERSION:
                        raise C.FormatError("not a log record of this version")
                    raw = bytes(buf[at : at + n])
                    value = C.decode(raw[C.FRAME_LEN : n - C.CRC_LEN])
                except C.FormatError as e:
                    problems.append("%s at byte %d: %s" % (path, at, e))
                    break
                link = value[0]
                # The oldest record kept links to a rotated one: verify() checks that link.
                if prev_seq is not None:
                    if seq != prev_seq + 1:
                        problems.append("sequence jumps from %d to %d" % (prev_seq, seq))
                    elif link != prev_hash:
                        problems.append("hash chain broken at %d" % seq)
                prev_hash = chain_hash(raw)
                prev_seq = seq
                last = (seq, prev_hash, value, n)
                if seq in remember:
                    self.remembered[seq] = prev_hash
                if keep is None or not records or value[2] == "log_rotated" or keep(value):
                    records.append(last)
                    last = None
                at += n
        if last is not None:
            records.append(last)
        return records, problems

    def verify(self, records, problems, expect_seq=None, expect_head=None):
        """All problems with the log: those scan() found, a first record whose link is not
        explained by a rotation record, and a head other than the one the state recorded."""
        out = list(problems)
        if records:
            first_seq, _h, first, _n = records[0]
            if first[0] != ZERO_HASH or first_seq != 1:
                ok = False
                for _s, _h2, v, _n2 in records:
                    if v[2] == "log_rotated" and v[3][1] == first_seq - 1 and v[3][2] == first[0]:
                        ok = True
                if not ok:
                    out.append("the oldest record %d links to nothing recorded" % first_seq)
        if expect_seq:
            last = records[-1][0] if records else 0
            seen = self.remembered
            if last < expect_seq:
                out.append("log ends at %d, the state recorded %d" % (last, expect_seq))
            else:
                for r in records:
                    if r[0] == expect_seq and r[1] != expect_head:
                        out.append("record %d is not the one the state recorded" % expect_seq)
                if expect_seq in seen and seen[expect_seq] != expect_head:
                    out.append("record %d is not the one the state recorded" % expect_seq)
        return out

    def raw_records(self, first, last):
        """The stored records with first <= seq <= last, oldest first, as the bytes on flash
        (frame, payload and CRC: a reader can check each record and the hash chain itself).
        One segment is in RAM at a time; segments wholly outside the range are not read. A
        record that does not parse ends its segment, as in scan()."""
        segs = self.segments()
        for i, path in enumerate(segs):
            if i + 1 < len(segs) and _segment_first(segs[i + 1]) <= first:
                continue  # the next segment starts at or before first: nothing here
            if _segment_first(path) > last:
                return
            try:
                buf = _read(self.fs, path)
            except OSError:
                continue
            at = 0
            while at < len(buf):
                try:
                    n = C.record_length(buf, at)
                    seq = C.header(buf, at)[2]
                except C.FormatError:
                    break
                if seq > last:
                    return
                if seq >= first:
                    yield bytes(buf[at : at + n])
                at += n

    def resume(self, records):
        """Go on appending after the records scan() returned."""
        if records:
            self.seq = records[-1][0]
            self.head = records[-1][1]
        segs = self.segments()
        if segs:
            self._seg = segs[-1]
            try:
                self._seg_size = self.fs.stat(self._seg)
            except OSError:
                self._seg = None

    def append(self, entries, restate=None):
        """Write [(wall_ms, name, args)] in one go; returns the records' (first, last) seq.
        restate() gives the arguments of the segment_start record that opens a new segment
        (the therapy as it stands), so recovery from the log never needs the oldest one."""
        if not entries:
            return None
        out = bytearray()
        first = self.seq + 1
        for wall_ms, name, args in entries:
            if self._seg is None or self._seg_size + len(out) >= self.seg_bytes:
                self._flush(out)
                out = bytearray()
                self._rotate(wall_ms)
                self._seg = _segment_name(self.seq + 1)
                self._seg_size = 0
                if restate is not None:
                    self._add(out, wall_ms, "segment_start", restate())
            self._add(out, wall_ms, name, args)
        self._flush(out)
        return first, self.seq

    def _add(self, out, wall_ms, name, args):
        self.seq += 1
        payload = C.encode([self.head, wall_ms, name, list(args)])
        rec = C.frame(LOG_KIND, VERSION, self.seq, payload)
        self.head = chain_hash(rec)
        out.extend(rec)

    def _flush(self, out):
        if out:
            with self.fs.open(self._seg, "ab") as f:
                f.write(out)
                f.flush()
            self._seg_size += len(out)

    def _rotate(self, wall_ms):
        # As a new segment starts, the oldest go while too many would remain. The record that
        # says so is written before the segment is removed: a power cut in between leaves a
        # segment the log has already declared gone, which the next rotation removes.
        segs = self.segments()
        while len(segs) + 1 > self.max_segments:
            path = segs.pop(0)
            last_seq, last_hash = _last_record(_read(self.fs, path))
            first_seq = _segment_first(path)
            rec = bytearray()
            self._add(rec, wall_ms, "log_rotated", (first_seq, last_seq, last_hash))
            self._flush(rec)
            self.fs.remove(path)


def _last_record(buf):
    at = 0
    last = (0, ZERO_HASH)
    while at < len(buf):
        try:
            n = C.record_length(buf, at)
        except C.FormatError:
            break
        last = (C.header(buf, at)[2], chain_hash(bytes(buf[at : at + n])))
        at += n
    return last


class DayTotals:
    """One record per finished day, in a file of its own that rotation never touches. The
    record's sequence number is the day's number, so appending needs no read of the file."""

    def __init__(self, fs):
        self.fs = fs

    def read(self):
        try:
            buf = _read(self.fs, DAYS_FILE)
        except OSError:
            return []
        out = []
        at = 0
        while at < len(buf):
            try:
                n = C.record_length(buf, at)
            except C.FormatError:
                break
            ver, kind, seq = C.header(buf, at)
            if kind == DAYS_KIND and ver == VERSION:
                row = C.decode(bytes(buf[at + C.FRAME_LEN : at + n - C.CRC_LEN]))
                out.append([seq] + row)
            at += n
        return out

    def append(self, day, row):
        """Append the totals of wall-clock day `day` (days since 1970)."""
        with self.fs.open(DAYS_FILE, "ab") as f:
            f.write(C.frame(DAYS_KIND, VERSION, day, C.encode(row)))
            f.flush()

