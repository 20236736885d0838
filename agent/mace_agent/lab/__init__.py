"""Lab tools for tests, benchmarks and the demo: namespace topologies, traffic, the agent as a process.

Everything here builds its own network namespaces and never changes the root namespace.
"""
