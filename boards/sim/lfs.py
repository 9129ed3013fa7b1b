# Real littlefs on a RamFlash in either runtime (vfs.VfsLfs2 on MicroPython, littlefs-python on
# CPython), behind the one small filesystem interface the firmware storage code uses.
"""Both runtimes run littlefs 2.11 with the configuration MicroPython gives an ESP32 "vfs"
partition (extmod/vfs_lfsx.c init_config; the ESP32 mounts it with the VfsLfs2 defaults):

    parameter          MicroPython VfsLfs2              CPython littlefs-python 0.19.0
    library            littlefs v2.11.x (lib/littlefs)  littlefs v2.11
    on-disk version    2.1                              2.1
    block size, count  from the flash (ioctl 5, 4)      from the flash
    read, prog size    32, 32                           32, 32
    cache_size         min(block, 4 * max(read, prog))  the same: 128
    lookahead_size     32 bytes (256 blocks)            32
    block_cycles       100                              100
    name/file/attr max 0: defaults 255 / 2^31-1 / 1022  0: the same defaults
    inline, metadata   0: littlefs defaults             0: the same
    file attributes    8-byte mtime attribute 't' on    none; littlefs-python ignores the
                       every file written (mtime=True)  attribute when it reads such a file
    mode "ab"          creates a missing file           the same (own flags: LittleFS.open's
                                                        "a" would not create)

Power cuts: a PowerCut raised by the flash reaches the caller as PowerCut in both runtimes,
by the same route. The block-device adapter catches it, hands littlefs LFS_ERR_IO and keeps the
exception; the wrapper raises it as soon as littlefs returns. littlefs-python's callbacks cannot
raise at all (an exception there is printed as "Exception ignored" and the callback returns 0,
so littlefs would take a failed program for a good one). MicroPython's would (the exception
longjmps through littlefs), but then littlefs never runs its error path: the interrupted file is
not marked errored, and its C finaliser later tries to write it again with a stale state. A
filesystem mounted before flash.revive() never touches the flash again: on a board its RAM
state died with the power.
"""

import sys

from boards.sim.flash import PowerCut

MICROPYTHON = sys.implementation.name == "micropython"
READ_SIZE = 32
PROG_SIZE = 32
LOOKAHEAD = 32
BLOCK_CYCLES = 100

# littlefs open flags (lfs.h); modes as MicroPython's vfs_lfsx_file.c maps them.
_O_RDONLY = 0x1
_O_WRONLY = 0x2
_O_CREAT = 0x100
_O_EXCL = 0x200
_O_TRUNC = 0x400
_O_APPEND = 0x800
MODES = {
    "rb": _O_RDONLY,
    "wb": _O_WRONLY | _O_CREAT | _O_TRUNC,
    "ab": _O_WRONLY | _O_CREAT | _O_APPEND,
    "xb": _O_WRONLY | _O_CREAT | _O_EXCL,
}
_LFS_ERR_IO = -5

if MICROPYTHON:
    import vfs

    _LfsError = OSError

else:
    from littlefs import LittleFSError as _LfsError
    from littlefs import UserContext
    from littlefs import lfs as _lfs


def cache_size(flash):
    return min(flash.block_size, 4 * max(READ_SIZE, PROG_SIZE))


class _Power:
    """Ties a mount to the power cycle it was made in and carries device exceptions over C."""

    def __init__(self, flash):
        self.flash = flash
        self.boot = flash.boots
        self.pending = None
        # Made now: a finaliser may reach the device under gc, when nothing can be allocated.
        self._lost = PowerCut("power was lost under this mount")

    def live(self):
        return not self.flash.dead and self.flash.boots == self.boot

    def fail(self, exc=None):
        """Keep the first exception for check() and give littlefs an I/O error instead."""
        if self.pending is None:
            self.pending = self._lost if exc is None else exc
        return _LFS_ERR_IO

    def check(self):
        if self.pending is not None:
            raise self.pending
        if not self.live():
            raise self._lost


class _File:
    """A file of either runtime: read(n=-1), write(b), flush(), close(), context manager."""

    def __init__(self, fs, handle):
        self._fs = fs
        self._h = handle
        self.closed = False

    def read(self, n=-1):
        return self._fs._call(self._h.read, n)

    def write(self, data):
        return self._fs._call(self._h.write, data)

    def flush(self):
        self._fs._call(self._h.flush)

    def close(self):
        if not self.closed:
            self._fs._call(self._h.close)
            self.closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class _Fs:
    """The interface: open, rename, remove, listdir, mkdir, stat (size), unmount."""

    def __init__(self, flash, power, raw):
        self.flash = flash
        self._power = power
        self._raw = raw

    def _call(self, fn, *args):
        power = self._power
        power.check()
        try:
            result = fn(*args)
        except _LfsError as e:
            power.check()
            if MICROPYTHON:
                raise
            raise OSError(-e.code, "littlefs %s" % e.name) from None
        power.check()
        return result

    def open(self, path, mode):
        if mode not in MODES:
            raise ValueError("mode must be one of rb, wb, ab, xb: %r" % (mode,))
        return _File(self, self._call(self._raw.open, path, mode))

    def rename(self, src, dst):
        self._call(self._raw.rename, src, dst)

    def remove(self, path):
        self._call(self._raw.remove, path)

    def listdir(self, path="/"):
        return self._call(self._raw.listdir, path)

    def mkdir(self, path):
        self._call(self._raw.mkdir, path)

    def stat(self, path):
        return self._call(self._raw.stat, path)

    def unmount(self):
        self._call(self._raw.unmount)


if MICROPYTHON:

    class _Dev(_Power):
        """The block device VfsLfs2 sees; returns are error codes, it never raises."""

        def readblocks(self, block_num, buf, offset=0):
            flash = self.flash
            if flash.dead or flash.boots != self.boot:
                return self.fail()
            try:
                flash.readblocks(block_num, buf, offset)
            except Exception as exc:
                return self.fail(exc)
            return 0

        def writeblocks(self, block_num, buf, offset=None):
            if not self.live():
                return self.fail()
            try:
                self.flash.writeblocks(block_num, buf, offset)
            except Exception as exc:
                return self.fail(exc)
            return 0

        def ioctl(self, op, arg):
            if op != 6:
                # Sync always succeeds: a failed sync would leave the file unmarked as errored,
                # so its finaliser would try to write it once more.
                return self.flash.ioctl(op, arg)
            if not self.live():
                return self.fail()
            try:
                return self.flash.ioctl(op, arg)
            except Exception as exc:
                return self.fail(exc)

    class _Raw:
        def __init__(self, v):
            self.v = v

        def open(self, path, mode):
            return self.v.open(path, mode)

        def rename(self, src, dst):
            self.v.rename(src, dst)

        def remove(self, path):
            self.v.remove(path)

        def listdir(self, path):
            return [entry[0] for entry in self.v.ilistdir(path)]

        def mkdir(self, path):
            self.v.mkdir(path)

        def stat(self, path):
            return self.v.stat(path)[6]

        def unmount(self):
            self.v.umount()

    def _mount(flash):
        dev = _Dev(flash)
        dev.check()
        v = vfs.VfsLfs2(dev, readsize=READ_SIZE, progsize=PROG_SIZE, lookahead=LOOKAHEAD)
        dev.check()
        return _Fs(flash, dev, _Raw(v))

    def format(flash):
        dev = _Dev(flash)
        dev.check()
        vfs.VfsLfs2.mkfs(dev, readsize=READ_SIZE, progsize=PROG_SIZE, lookahead=LOOKAHEAD)
        dev.check()

else:

    class _Ctx(UserContext, _Power):
        # UserContext.__init__ would allocate its own buffer; the flash is the storage.
        def __init__(self, flash):
            _Power.__init__(self, flash)

        def read(self, cfg, block, off, size):
            if not self.live():
                self.fail()
            else:
                try:
                    return self.flash.read(block, off, size)
                except Exception as exc:  # carried over the C layer, raised by check()
                    self.fail(exc)
            # littlefs-python takes no error code from read; littlefs goes on with this filler
            # until its next program or erase fails, and nothing reaches the flash meanwhile.
            return bytes(size)

        def prog(self, cfg, block, off, data):
            if not self.live():
                return self.fail()
            try:
                self.flash.prog(block, off, data)
            except Exception as exc:
                return self.fail(exc)
            return 0

        def erase(self, cfg, block):
            if not self.live():
                return self.fail()
            try:
                self.flash.erase(block)
            except Exception as exc:
                return self.fail(exc)
            return 0

        def sync(self, cfg):
            return 0

    def _config(ctx, flash):
        return _lfs.LFSConfig(
            context=ctx,
            block_size=flash.block_size,
            block_count=flash.block_count,
            read_size=READ_SIZE,
            prog_size=PROG_SIZE,
            cache_size=cache_size(flash),
            lookahead_size=LOOKAHEAD,
            block_cycles=BLOCK_CYCLES,
        )

    class _Handle:
        """An open littlefs file, unbuffered like MicroPython's: flush() is lfs_file_sync."""

        def __init__(self, raw, fh):
            self.raw = raw
            self.fh = fh

        def read(self, n=-1):
            if n is None or n < 0:
                n = _lfs.file_size(self.raw.fs, self.fh) - _lfs.file_tell(self.raw.fs, self.fh)
            return _lfs.file_read(self.raw.fs, self.fh, n)

        def write(self, data):
            return _lfs.file_write(self.raw.fs, self.fh, bytes(data))

        def flush(self):
            _lfs.file_sync(self.raw.fs, self.fh)

        def close(self):
            _lfs.file_close(self.raw.fs, self.fh)

    class _Raw:
        def __init__(self, ctx, flash):
            # littlefs keeps pointers into cfg and ctx, so both live as long as the mount.
            self.ctx = ctx
            self.cfg = _config(ctx, flash)
            self.fs = _lfs.LFSFilesystem()

        def open(self, path, mode):
            return _Handle(self, _lfs.file_open(self.fs, path, MODES[mode]))

        def rename(self, src, dst):
            _lfs.rename(self.fs, src, dst)

        def remove(self, path):
            _lfs.remove(self.fs, path)

        def listdir(self, path):
            dh = _lfs.dir_open(self.fs, path)
            names = []
            try:
                while True:
                    info = _lfs.dir_read(self.fs, dh)
                    if info is None:
                        return names
                    if info.name not in (".", ".."):
                        names.append(info.name)
            finally:
                _lfs.dir_close(self.fs, dh)

        def mkdir(self, path):
            _lfs.mkdir(self.fs, path)

        def stat(self, path):
            return _lfs.stat(self.fs, path).size

        def unmount(self):
            _lfs.unmount(self.fs)

    def _mount(flash):
        ctx = _Ctx(flash)
        raw = _Raw(ctx, flash)
        fs = _Fs(flash, ctx, raw)
        fs._call(_lfs.mount, raw.fs, raw.cfg)
        return fs

    def format(flash):
        ctx = _Ctx(flash)
        raw = _Raw(ctx, flash)
        _Fs(flash, ctx, raw)._call(_lfs.format, raw.fs, raw.cfg)


def mount(flash, format_if_needed=False):
    """Mount littlefs on `flash`; OSError if there is none (or format first, if asked)."""
    try:
        return _mount(flash)
    except OSError:
        # A PowerCut is not an OSError, so a cut during mount is never "fixed" by a format.
        if not format_if_needed:
            raise
    format(flash)
    return _mount(flash)
