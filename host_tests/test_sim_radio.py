# The virtual pump's radio from another process (tools/sim_radio.py): a Bumble central in this
# process reaches it over Bumble's TCP transport, pairs, authenticates and reads its status.

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from host_tests.blecentral import Central, free_port
from link import codes as K
from link import keys as KF
from link import service as SV
from tools import linksession as LS
from tools import provision as P

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.req("SR-25")
def test_a_programmer_in_another_process_reaches_the_virtual_pump(tmp_path):
    paths = P.provision("ITB-TCP-1", tmp_path)
    pump_id, role, key, counter = P.load_key_file(paths["patient"])
    assert KF.decode(paths["pump"].read_bytes())[0] == pump_id
    spec = "127.0.0.1:%d" % free_port()
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "tools" / "sim_radio.py"), "--keys", str(paths["pump"]),
         "--listen", spec, "--no-console", "--minutes", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
    )  # fmt: skip
    try:
        line = proc.stdout.readline()
        assert "serving BLE at tcp-server:%s" % spec in line, (line, proc.stderr.read())

        async def go():
            central, transport = await Central.over_tcp(spec)
            try:
                await central.connect()
                await central.pair()
                await central.exchange_mtu(247)
                await central.discover()
                s = LS.Session(central, pump_id, role, key, counter)
                await s.start()
                await s.login()
                reply = await s.ask(SV.CH_STATUS_CP, K.GET_STATUS)
                assert reply.ok and reply.data[0] == K.MODE_RUN
                P.save_counter(paths["patient"], s.client.counter)
            finally:
                await transport.close()

        asyncio.run(go())
        assert P.load_key_file(paths["patient"])[3] == 1  # one command, its counter kept
    finally:
        proc.terminate()
        proc.wait(10)


class _Loop:
    accel = 0

    def __init__(self):
        self.now = 0


class _Pump:
    """What realtime.drive uses of a VirtualPump: its loop's clock and run_until."""

    def __init__(self):
        self.loop = _Loop()

    def run_until(self, t_ms):
        assert t_ms >= self.loop.now
        self.loop.now = t_ms


def test_a_change_of_pace_takes_effect_from_then_on_without_a_jump():
    from boards.sim import realtime

    async def go():
        vp = _Pump()
        pace = {"accel": 1}
        aloop = asyncio.get_running_loop()
        driver = aloop.create_task(realtime.drive(vp, lambda: pace["accel"]))
        t0 = aloop.time()
        await asyncio.sleep(0.2)
        t_switch, sim_switch = aloop.time(), vp.loop.now
        pace["accel"] = 1000
        await asyncio.sleep(0.2)
        t_end, sim_end = aloop.time(), vp.loop.now
        driver.cancel()
        return t0, t_switch, sim_switch, t_end, sim_end

    t0, t_switch, sim_switch, t_end, sim_end = asyncio.run(go())
    # Before the change, simulated ms follow real ms; after it, 1000 simulated ms per real ms
    # counted from the change. A pace applied to the time before the change would put
    # sim_end about 200 s further on.
    assert sim_switch <= (t_switch - t0) * 1000 + 1
    want = sim_switch + (t_end - t_switch) * 1_000_000
    assert want - 30_000 <= sim_end <= want + 1_000, (sim_end, want)
