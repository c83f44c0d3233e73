"""The service directory: names, VIPs, labels and policy, balancing."""
