"""netstack: a user-mode TCP/IP stack for rootless containers (slirp4netns drop-in)."""

__version__ = "0.1.0"
