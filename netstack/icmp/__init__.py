"""ICMP echo from the guest: answered for virtual hosts, proxied for others."""
