"""Suite-wide settings: tests run tiny models on the CPU.

One intra-op thread for the whole session: for these tiny tensors the threading overhead costs
more than it gains, and with two threads per process a 2-core machine is oversubscribed as soon as
anything else runs (measured: one tiny training iteration 0.38 s with 1 thread against 6-12 s with
2 on a loaded 2-core machine). `make test` runs two pytest-xdist workers instead (the Makefile's
TEST_WORKERS), so the suite uses both cores: 225 s in one process, 86 s in two, quiet, here.

Built models hold reference cycles; collecting after each test keeps the suite's peak memory low
(test_configs: 3.3 GB instead of 7.5 GB). The objects that exist once the tests are collected
(torch, Detectron2, the test modules: about 400k) are frozen out of the collector, so that each
collection walks only what the tests made (0.23 s -> 0.01 s a test here).

The measurement lab (projects/lab) sits beside the package: its tests import ``sa_ejhead_lab``.
"""

import gc
import os
import sys

import pytest
import torch

_LAB = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "projects", "lab")
if _LAB not in sys.path:
    sys.path.insert(0, _LAB)


def pytest_collection_finish(session):
    gc.collect()
    gc.freeze()


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(autouse=True)
def _collect():
    yield
    gc.collect()
