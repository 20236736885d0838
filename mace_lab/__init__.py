"""Lab tools for tests, benchmarks and the demo: namespace topologies, traffic, the agent as a process.

Everything here builds its own network namespaces and never changes the root namespace. It ships with
a source checkout only, not in the agent and operator images.
"""
