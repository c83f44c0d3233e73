"""UDP from the guest, proxied through host UDP sockets."""
