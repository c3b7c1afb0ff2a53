"""The chaos soak's Django app: its workflows, its settings and the tables its activities
write their side effects to (``benchmarks/chaos.py`` runs it)."""
