"""The cost tool (``tools/benchmark.py``) in parts: :mod:`.specs` (which configs), :mod:`.measure`
(parameters, FLOPs, time, memory) and :mod:`.report` (the tables)."""
