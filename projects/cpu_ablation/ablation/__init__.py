"""The CPU ablation's parts: protocols (which rows, where), the results store, the tables."""
