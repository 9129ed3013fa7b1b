# The entry point on the board (run by MicroPython at boot): build the hardware from board.py,
# boot the pump from flash and run it; on an unhandled error, stop the motor, say why, restart.

import asyncio
import sys
import time

import micropython

# A crash in a task (not awaited by anyone) reaches the loop's exception handler, not run():
# it re-raises there, so asyncio.run() ends with it and the restart below handles every crash.
# A KeyboardInterrupt (a developer's Ctrl-C, mpremote taking the console) stops the pump and
# leaves the REPL; the watchdog, once started, restarts the board within its timeout.
CONSOLE = "console"
# A pump that fails to boot waits this long before the next try, so a failure that repeats
# restarts the board once a minute rather than wearing the flash with a boot every second.
BOOT_RETRY_MS = 60_000


def _reraise(_loop, context):
    raise context["exception"]


async def _supervised(a):
    asyncio.get_event_loop().set_exception_handler(_reraise)
    await a.run()


def _mark(a, reason):
    # The marker tells the next boot this reset was intended (docs/storage.md); without a store
    # (a crash in boot) the next boot sees the hardware's cause.
    if a is None or a.store is None:
        return
    try:
        a.store.write_marker(reason)
    except Exception:  # noqa: BLE001 - a marker that cannot be written must not stop the restart
        pass


def _print_exception(e):
    # To the serial console, for whoever is at the bench; MicroPython's own traceback printer.
    show = getattr(sys, "print_exception", None)
    if show is not None:
        show(e)


def _sound_boot_failure(hal):
    # The pump cannot deliver: say so out loud (the high-priority pattern, five short tones
    # every ten seconds) until the next try, rather than wait in silence.
    waited = 0
    while waited < BOOT_RETRY_MS:
        for _ in range(5):
            hal.buzzer.set(True)
            time.sleep_ms(150)
            hal.buzzer.set(False)
            time.sleep_ms(150)
        time.sleep_ms(8_500)
        waited += 10_000


def _attach_radio(a, hal, board, app):
    # The radio, if the pump was provisioned: a pump without keys, or whose radio cannot start,
    # runs without one (and logs why); a radio problem never stops therapy.
    try:
        import radio

        radio.attach(a, hal, board.NAME, app.VERSION, hal.random)
    except Exception as e:  # noqa: BLE001
        a.note("ble_unavailable", repr(e))


def run(board, app, hal):
    """Boot and run one pump; returns the reason it stopped ("console" after a Ctrl-C, else a
    crash's exception name: "boot_failed:..." before therapy ran, "crash:..." after), once the
    motor is disabled and the marker written."""
    a = None
    stage = "boot_failed:"
    try:
        a = app.App(board, hal)
        a.boot()
        stage = "crash:"
        _attach_radio(a, hal, board, app)
        asyncio.run(_supervised(a))
        reason = "returned"
    except KeyboardInterrupt:
        reason = CONSOLE
    except Exception as e:  # noqa: BLE001 - any crash ends in a marked restart
        reason = stage + type(e).__name__
        _print_exception(e)
    finally:
        hal.motor.disable()
        asyncio.new_event_loop()  # no task of this run survives into a later one
    _mark(a, reason)
    return reason


def main():
    micropython.alloc_emergency_exception_buf(100)
    import board

    import app

    hal = board.make_hal()
    reason = run(board, app, hal)
    if reason == CONSOLE:
        return
    if reason.startswith("boot_failed:"):
        _sound_boot_failure(hal)
    hal.reboot()


if __name__ == "__main__":
    main()
