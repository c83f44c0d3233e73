"""The host side: the only package that touches the event loop and host sockets."""
