"""The node side of Mace in a cluster: resolver, control loop, status publisher and HTTP endpoint.

``mace-agent serve --node NAME`` runs all of it (see :mod:`mace_agent.node.cli`).
"""
