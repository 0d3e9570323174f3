"""sa-ejhead's measurement lab, beside the package (which never imports it): one module per job.

* :mod:`.specs`: which configs (``[LABEL=]SOURCE[,KEY=VALUE...]``) and the models they build;
* :mod:`.measure`: parameters, FLOPs, time (:func:`~.measure.time_calls`, the one timing helper)
  and memory;
* :mod:`.profile`: self CPU time per op (``tools/benchmark.py --profile``);
* :mod:`.report`: the Markdown tables;
* :mod:`.deploy`: random-head conditioning and the latency of exported models (``--deploy``);
* :mod:`.coco_eval`: synthetic COCO data and the timing of COCO evaluation (``--coco-eval``).

``tools/benchmark.py`` is the entry point; scripts and tests put ``projects/lab`` on
``sys.path`` and import ``sa_ejhead_lab``.
"""
