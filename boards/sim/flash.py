# A RAM model of SPI NOR flash that can lose power at any chosen program/erase, for power-loss
# tests of real littlefs on CPython (littlefs-python) and MicroPython (vfs.VfsLfs2).

# Block-device ioctl numbers of MicroPython's extended protocol (extmod/vfs.h).
IOCTL_INIT = 1
IOCTL_DEINIT = 2
IOCTL_SYNC = 3
IOCTL_BLOCK_COUNT = 4
IOCTL_BLOCK_SIZE = 5
IOCTL_BLOCK_ERASE = 6


class PowerCut(Exception):
    """Raised by the op at which power fails and by every op after it, until revive()."""


class RamFlash:
    """NOR flash in one bytearray: erase sets a block to `erased`, program can only clear bits.

    Counters: `ops` (completed programs + erases), `progs`, `erase_total`, `erases[block]`
    and `reads` (not in `ops`). A cut or torn op is not counted, so after a cut at op k,
    ops == k - 1. `on_op(kind, block, off, data)`, if set, sees every completed op ("p" with
    the data, "e" with None). Out-of-range access raises ValueError.

    Power loss: with `cut_at = k`, the op that would make ops == k fails. With `tear == 0` it
    leaves the flash untouched; with `tear > 0` a program writes only its first `tear` bytes
    (all of them if it is shorter) and an erase erases only the first `tear` bytes of the
    block. Either way it raises PowerCut and the device stays `dead` (every read, program and
    erase raises) until revive(), as a chip without supply would. `tear` stays set.
    """

    def __init__(self, block_size=4096, block_count=128, erased=0xFF):
        self._setup(block_size, block_count, erased)
        # Filled block by block, so the peak is one image plus one block (small heaps).
        self.buf = bytearray(block_size * block_count)
        for b in range(block_count):
            self.buf[b * block_size : (b + 1) * block_size] = self._blank
        # Reads copy out of a view: slicing the bytearray itself would allocate each time.
        self._view = memoryview(self.buf)

    def _setup(self, block_size, block_count, erased):
        # The geometry and the counters, whatever holds the bytes.
        self.block_size = block_size
        self.block_count = block_count
        self.erased = erased
        self._blank = bytes([erased]) * block_size
        # Compared and copied through views: slices of the blank block, the image or the data
        # would each allocate up to a block per program, heap a board's C driver never uses
        # (and that the virtual pump's heap figures would count against the firmware).
        self._blank_mv = memoryview(self._blank)
        self._scratch = bytearray(block_size)
        self.erases = [0] * block_count
        self.ops = 0
        self.progs = 0
        self.erase_total = 0
        self.reads = 0
        # Programs that cleared bits in bytes already programmed: littlefs is expected to
        # program only erased bytes, and this shows whether it ever does otherwise.
        self.overprogs = 0
        self.cut_at = None
        self.tear = 0
        self.dead = False
        self.cuts = 0
        # Power cycles so far; a filesystem mounted before a cycle must never write again, as
        # its RAM state is gone on a real board (see boards/sim/lfs.py).
        self.boots = 0
        self.on_op = None

    def _check(self, block, off, size):
        if not (0 <= block < self.block_count and off >= 0 and off + size <= self.block_size):
            raise ValueError(
                "flash access out of range: block %d off %d size %d" % (block, off, size)
            )

    def _alive(self):
        if self.dead:
            raise PowerCut("flash has no power")

    def _cut_now(self):
        # True when this op is the one chosen to fail; marks the device dead before the
        # caller tears the op, so nothing can run after a partial write.
        if self.cut_at is not None and self.ops + 1 >= self.cut_at:
            self.dead = True
            self.cuts += 1
            return True
        return False

    def _done(self, kind, block, off, data):
        self.ops += 1
        if self.on_op is not None:
            # MicroPython hands over a bytearray over a C buffer that is reused after return.
            self.on_op(kind, block, off, None if data is None else bytes(data))

    def read(self, block, off, size):
        self._alive()
        self._check(block, off, size)
        self.reads += 1
        start = block * self.block_size + off
        return bytes(self.buf[start : start + size])

    def prog(self, block, off, data):
        self._alive()
        size = len(data)
        self._check(block, off, size)
        cut = self._cut_now()
        n = min(self.tear, size) if cut else size
        start = block * self.block_size + off
        if n:
            old = self._old_at(start, n)
            if old == self._blank_mv[:n]:
                # Programming erased bytes, the usual case, is a plain copy.
                self._write_at(start, memoryview(data)[:n])
            else:
                # NOR: a program can only clear bits.
                self.overprogs += 1
                new = bytearray(n)
                for i in range(n):
                    new[i] = old[i] & data[i]
                self._write_at(start, new)
        if cut:
            raise PowerCut("power cut during program of block %d at %d" % (block, off))
        self.progs += 1
        self._done("p", block, off, data)

    def erase(self, block):
        self._alive()
        self._check(block, 0, self.block_size)
        start = block * self.block_size
        if self._cut_now():
            n = min(self.tear, self.block_size)
            if n:
                self._write_at(start, self._blank_mv[:n])
            raise PowerCut("power cut during erase of block %d" % block)
        self._write_at(start, self._blank)
        self.erases[block] += 1
        self.erase_total += 1
        self._done("e", block, 0, None)

    # Where the bytes live: the two places prog() and erase() touch them (FileFlash: a file).

    def _old_at(self, start, n):
        return self._view[start : start + n]

    def _write_at(self, start, data):
        self.buf[start : start + len(data)] = data

    def revive(self):
        self.cut_at = None
        self.dead = False
        self.boots += 1

    def image(self):
        return bytes(self.buf)

    def load(self, image):
        if len(image) != len(self.buf):
            raise ValueError("image is %d bytes, flash is %d" % (len(image), len(self.buf)))
        self.buf[:] = image

    # MicroPython block-device protocol. littlefs uses the extended form (with offset) and
    # never crosses a block; the simple form (offset None) erases and programs whole blocks.

    def readblocks(self, block_num, buf, offset=0):
        # Blocks are contiguous, so a read spanning several is one copy. littlefs reads a
        # 4 KB metadata block many times over while compacting, so this path stays short.
        if self.dead:
            raise PowerCut("flash has no power")
        start = block_num * self.block_size + offset
        end = start + len(buf)
        if block_num < 0 or offset < 0 or end > len(self.buf):
            raise ValueError(
                "flash read out of range: block %d off %d size %d" % (block_num, offset, len(buf))
            )
        self.reads += 1
        buf[:] = self._view[start:end]

    def writeblocks(self, block_num, buf, offset=None):
        simple = offset is None
        if simple:
            offset = 0
        pos = 0
        size = len(buf)
        while pos < size:
            n = min(size - pos, self.block_size - offset)
            if simple:
                self.erase(block_num)
            self.prog(block_num, offset, memoryview(buf)[pos : pos + n])
            pos += n
            block_num += 1
            offset = 0

    def ioctl(self, op, arg):
        if op in (IOCTL_INIT, IOCTL_DEINIT, IOCTL_SYNC):
            return 0
        if op == IOCTL_BLOCK_COUNT:
            return self.block_count
        if op == IOCTL_BLOCK_SIZE:
            return self.block_size
        if op == IOCTL_BLOCK_ERASE:
            self.erase(arg)
            return 0
        return None


class FileFlash(RamFlash):
    """The same NOR flash with its contents in a host file instead of a bytearray, so that the
    image is not on the interpreter's heap (MicroPython heap measurements, long runs). Every
    counter, the power-cut and tear behaviour and the block-device protocol are RamFlash's;
    only where the bytes live differs. The file is created (erased) at `path`; close() closes
    it and, with remove=True, deletes it."""

    def __init__(self, path, block_size=4096, block_count=128, erased=0xFF):
        # RamFlash.__init__ would allocate the whole image: only its geometry and counters.
        self._setup(block_size, block_count, erased)
        self.path = path
        self._f = open(path, "w+b")
        for _ in range(block_count):
            self._f.write(self._blank)
        self._f.flush()

    def close(self, remove=False):
        if self._f is not None:
            self._f.close()
            self._f = None
        if remove:
            import os

            os.remove(self.path)

    def _read_at(self, start, size):
        f = self._f
        f.seek(start)
        data = f.read(size)
        if len(data) != size:
            raise OSError("flash file %s is shorter than the flash" % self.path)
        return data

    def _write_at(self, start, data):
        f = self._f
        f.seek(start)
        f.write(data)

    def read(self, block, off, size):
        self._alive()
        self._check(block, off, size)
        self.reads += 1
        return bytes(self._read_at(block * self.block_size + off, size))

    def _old_at(self, start, n):
        old = memoryview(self._scratch)[:n]
        f = self._f
        f.seek(start)
        if f.readinto(old) != n:
            raise OSError("flash file %s is shorter than the flash" % self.path)
        return old

    def image(self):
        return bytes(self._read_at(0, self.block_size * self.block_count))

    def load(self, image):
        size = self.block_size * self.block_count
        if len(image) != size:
            raise ValueError("image is %d bytes, flash is %d" % (len(image), size))
        self._write_at(0, image)

    def readblocks(self, block_num, buf, offset=0):
        if self.dead:
            raise PowerCut("flash has no power")
        start = block_num * self.block_size + offset
        size = len(buf)
        if block_num < 0 or offset < 0 or start + size > self.block_size * self.block_count:
            raise ValueError(
                "flash read out of range: block %d off %d size %d" % (block_num, offset, size)
            )
        self.reads += 1
        f = self._f
        f.seek(start)
        if f.readinto(buf) != size:
            raise OSError("flash file %s is shorter than the flash" % self.path)
