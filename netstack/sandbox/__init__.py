"""Isolation of the stack process itself: --enable-sandbox and --enable-seccomp."""
