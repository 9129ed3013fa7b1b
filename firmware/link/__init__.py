# The radio protocol's pure core (docs/protocol.md): codes, frames, authentication, the service.
# Nothing here touches the radio; firmware/radio.py is the shell that does.
