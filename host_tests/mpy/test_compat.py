# MicroPython-side check that the core's compat shim resolves to the real built-ins here.
# req: SR-34

from pump.compat import const, heap_lock, heap_unlock

_FIVE = const(5)
assert _FIVE == 5
assert const(5) == 5

# Under MicroPython the real heap lock is in force: allocating must fail until unlocked.
heap_lock()
try:
    items = [1, 2, 3]
    allocated = True
except MemoryError:
    allocated = False
heap_unlock()
assert not allocated, "heap_lock() did not stop allocation"

print("OK")
