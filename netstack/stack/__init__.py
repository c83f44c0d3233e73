"""The stack: configuration, counters, and the dispatcher that sorts guest frames."""
