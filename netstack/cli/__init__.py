"""The command line and process life: slirp4netns-compatible arguments, entering the
target namespace, ready-fd and exit-fd."""
