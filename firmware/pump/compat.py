# Runtime compatibility: the few MicroPython built-ins the core uses, shimmed for CPython.
# Keep this tiny; everything else in the core is plain Python that both runtimes share.

try:
    from micropython import const
except ImportError:

    def const(x):
        return x


try:
    from micropython import heap_lock, heap_unlock
except ImportError:
    # CPython has no heap lock; allocation-free paths are checked under MicroPython instead.

    def heap_lock():
        pass

    def heap_unlock():
        return 0
