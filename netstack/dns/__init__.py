"""DNS on the virtual DNS address: forwarded to the host resolver's nameservers."""
