# Runs on the board (mpremote run) at the start of `make deploy`, after mpremote has stopped the
# pump: gives the copy time before the watchdog fires, and clears the old firmware out of /lib.

import os

import machine

# The pump's watchdog (60 s) keeps running at the REPL; a copy over the serial link can take
# longer. The reset at the end of the deploy ends this long timeout again.
machine.WDT(id=0, timeout=600_000)


def _remove(path):
    try:
        mode = os.stat(path)[0]
    except OSError:
        return  # not there
    if mode & 0x4000:  # a directory
        for name in os.listdir(path):
            _remove(path + "/" + name)
        os.rmdir(path)
    else:
        os.remove(path)


# Only the firmware's own files: the pump's state and log under /data stay as they are.
for _path in ("/lib/pump", "/lib/hal", "/lib/link", "/lib/app.mpy", "/lib/app.py",
              "/lib/radio.mpy", "/lib/radio.py", "/lib/rig.mpy", "/lib/rig.py"):
    _remove(_path)
try:
    os.mkdir("/lib")
except OSError:
    pass  # already there
print("deploy: board ready for the copy")
