"""eBPF C sources of the Mace agent (package data)."""
