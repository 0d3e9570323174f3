"""`make demo`'s configs are the CPU ablation's protocol v2 rows, so that the v2 results (3 seeds)
are the demo's twin comparison (docs/demo.md): the resolved configs agree in everything but where
and how often they write and evaluate."""

import os

import pytest
from omegaconf import OmegaConf

from sa_ejhead.engine import load_lazy_config
from sa_ejhead.model_zoo import get_config_file

V2 = os.path.join(os.path.dirname(__file__), "..", "projects", "cpu_ablation", "configs_v2")
# where and how often a run writes and evaluates: not part of what it trains
RUN_KEYS = ("output_dir", "eval_period", "checkpointer", "log_period")


def _training_settings(path):
    data = OmegaConf.to_container(load_lazy_config(path), resolve=True)
    for key in RUN_KEYS:
        data["train"].pop(key)
    return data


@pytest.mark.parametrize(
    "demo, row", [("demo/sa_shapes.py", "safpn_ejhead"), ("demo/sa_shapes_baseline.py", "baseline")]
)
def test_demo_config_is_the_v2_row(demo, row):
    demo_cfg = _training_settings(get_config_file(demo))
    row_cfg = _training_settings(os.path.join(V2, f"{row}.py"))
    assert demo_cfg == row_cfg  # pytest -vv shows the differing keys
