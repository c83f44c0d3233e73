"""Links move Ethernet frames and know nothing above L2."""
