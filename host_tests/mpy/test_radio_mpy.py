# Under MicroPython: the pump's radio shell (firmware/radio.py) on the virtual pump over the fake
# `bluetooth`, the scenarios of host_tests/test_radio.py, including the IRQ handler's events
# under heap_lock.
# req: SR-03, SR-25, SR-26, SR-27, SR-33, SR-39, SR-47, SR-48, SR-49

import os

from host_tests import appscen as S
from host_tests import radioscen as RS

S.FLASH_DIR = os.getenv("TMPDIR") or "/tmp"


def main():
    failed = 0
    for scenario in RS.SCENARIOS:
        bad = RS.run(scenario)
        print("%s: %s" % (scenario.__name__, "ok" if not bad else "; ".join(bad)))
        failed += len(bad)
    print("OK" if not failed else "FAILED %d" % failed)


main()
