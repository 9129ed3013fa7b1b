# The hardware layers: each module implements docs/hardware.md for one chip family.
# Only this package and boards/ may import machine, esp32 or bluetooth (make lint checks it).
