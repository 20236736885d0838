"""``kubectl mace``: live views of LatencyProbes through the Kubernetes API server (``kubectl-mace``)."""
