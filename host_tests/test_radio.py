# The pump's radio shell (firmware/radio.py) through the whole application on the virtual pump,
# over the strict fake `bluetooth` (the scenarios are host_tests/radioscen.py, shared with the
# MicroPython run); the same path over a real BLE stack is host_tests/test_ble_e2e.py.

import pytest

from host_tests import radioscen as RS

REQS = {
    "pairing_window": ("SR-48", "SR-49"),
    "just_works_gets_nothing": ("SR-25",),
    "session_bolus_and_replay": ("SR-25", "SR-26", "SR-49"),
    "long_writes_are_whole": ("SR-03", "SR-47"),
    "link_lost_mid_programming": ("SR-27",),
    "congestion_and_silence": ("SR-27",),
    "status_indicated_on_change": ("SR-25",),
    "irq_handler_allocates_nothing": ("SR-33",),
    "other_pairing_methods_dropped": ("SR-48",),
    "radio_time_in_the_charge_budget": ("SR-39",),
}


@pytest.mark.parametrize(
    "scenario",
    [pytest.param(s, id=s.__name__, marks=pytest.mark.req(*REQS[s.__name__]))
     for s in RS.SCENARIOS],
)  # fmt: skip
def test_radio_scenario(scenario):
    assert RS.run(scenario) == []


def test_every_scenario_has_its_requirements():
    assert set(REQS) == {s.__name__ for s in RS.SCENARIOS}
