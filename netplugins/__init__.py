"""Network plugins (none, host, bridge, cni); the namespace setup lands with the networking work."""
