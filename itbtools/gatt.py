# What pumpctl's two transports (gatt_bumble: the virtual pump; gatt_bleak: a real radio) share:
# the link error they raise and the words for ATT errors, so both fail with the same sentences.

PUMP_NAME = "ITB"  # the pump advertises only its flags and this name (docs/protocol.md)
DEVICE_INFO_SERIAL = "00002a25-0000-1000-8000-00805f9b34fb"  # the pump id, encrypted link only
MTU = 247

# ATT error codes (Bluetooth Core Vol 3, Part F, 3.4.1.1) the pump's GATT server uses.
ATT_INSUFFICIENT_AUTHENTICATION = 0x05
ATT_INSUFFICIENT_AUTHORIZATION = 0x08
ATT_INSUFFICIENT_ENCRYPTION = 0x0F


def quiet_stack_logs():
    """Bumble and bleak log link events (and tracebacks of a lost transport) at WARNING and
    above; the tools say what matters in their own one sentence."""
    import logging

    for name in ("bumble", "bleak"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


class LinkError(Exception):
    """The radio link failed or the pump's GATT server refused an access (one sentence)."""


class Declined(LinkError):
    """The user did not confirm the pairing number: nothing was stored."""


def att_error_text(code):
    """The sentence for an ATT error the pump answered with."""
    if code in (ATT_INSUFFICIENT_AUTHENTICATION, ATT_INSUFFICIENT_ENCRYPTION):
        return ("The pump refused access because the link is not paired and encrypted: run "
                "`pumpctl pair` while the pump's pairing window is open.")  # fmt: skip
    if code == ATT_INSUFFICIENT_AUTHORIZATION:
        return "The pump refused the read because no session is open on this connection."
    return "The pump's GATT server answered with ATT error 0x%02X." % code
