"""The service directory: names, VIPs and labels; syscall-level bypass through seccomp."""
