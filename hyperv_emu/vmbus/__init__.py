"""VMBus, host side: the channel messages and ring layouts (``*_protocol.py``), ring buffers over
guest memory, GPADLs and the channel manager (server) on the SynIC's host ports."""
