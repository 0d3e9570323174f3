"""The cost tool (``tools/benchmark.py``) in parts: :mod:`.specs` (which configs), :mod:`.measure`
(parameters, FLOPs, time, memory), :mod:`.profile` (self CPU time per op, ``--profile``) and
:mod:`.report` (the tables)."""
