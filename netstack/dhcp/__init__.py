"""The DHCPv4 server on the gateway address."""
