"""The shipped configs' models compute the numbers recorded in tests/data/equality_reference.pt.

``tests/make_equality_reference.py`` recorded, before the model code was refactored, what every
shipped config's tiny model computes on a fixed batch (training losses and gradients, inference
boxes, scores, classes and masks), and what the model zoo's trained SA-Shapes model predicts.
A refactoring must not move them. The comparison is exact (``torch.equal``) where the reference
was made with this torch version on this CPU kind: the pooling, the refinement (chunked or not:
these batches have fewer RoIs than a chunk) and the heads run the same operations in the same
order. Elsewhere another build of the kernels (e.g. AVX512 against AVX2) may sum in another
order, so there it is ``assert_close`` with float32 tolerances, the absolute one scaled by each
tensor's largest magnitude: a gradient gathered through a deep model (R-101) carries the rounding
of its many terms, which a record small beside the tensor's largest shows as a large relative
difference (0.7% on a record of 1.6 whose tensor reaches 72, AVX512 against AVX2).
"""

import pytest
import torch

import make_equality_reference as ref

REFERENCE = torch.load(ref.REFERENCE, weights_only=False)
SAME_BUILD = (REFERENCE["torch"], REFERENCE["cpu"]) == (
    torch.__version__,
    torch.backends.cpu.get_cpu_capability(),
)


def _differences(actual, expected, where):
    """The places where two nested records (dicts, lists, tensors, names) differ."""
    if isinstance(expected, dict):
        if set(actual) != set(expected):
            return [f"{where}: keys {sorted(actual)} != {sorted(expected)}"]
        return [d for k in expected for d in _differences(actual[k], expected[k], f"{where}.{k}")]
    if isinstance(expected, list):
        if len(actual) != len(expected):
            return [f"{where}: {len(actual)} items != {len(expected)}"]
        if expected and not isinstance(expected[0], (dict, list, torch.Tensor)):
            return [] if actual == expected else [f"{where}: {actual} != {expected}"]
        return [
            d
            for i, (a, e) in enumerate(zip(actual, expected))
            for d in _differences(a, e, f"{where}[{i}]")
        ]
    if SAME_BUILD:
        same = actual.shape == expected.shape and actual.dtype == expected.dtype
        if same and torch.equal(actual, expected):
            return []
        return [f"{where}: not bit-identical"]
    try:
        scale = (
            float(expected.abs().max()) if expected.is_floating_point() and expected.numel() else 0
        )
        torch.testing.assert_close(actual, expected, rtol=1e-4, atol=max(1e-5, 5e-4 * scale))
    except AssertionError as e:
        return [f"{where}: {str(e).splitlines()[0]}"]
    return []


def test_the_reference_covers_every_shipped_config():
    assert REFERENCE["configs"] == ref.shipped_configs()
    assert set(REFERENCE["index"]) == set(REFERENCE["configs"])


@pytest.mark.slow
def test_every_shipped_config_computes_the_recorded_numbers():
    """Each distinct tiny model is built and run once, and compared with the record of every
    config that shares it."""
    torch.manual_seed(0)
    failures, groups = [], ref.groups(REFERENCE["configs"])
    for members, build in groups:
        torch.manual_seed(0)
        record = ref.compute(build())
        for config in members:
            expected = REFERENCE["records"][REFERENCE["index"][config]]
            failures += _differences(record, expected, config)
    assert not failures, "\n".join(failures)
    # the records differ between configs: the comparison can fail
    records = REFERENCE["records"]
    assert len(groups) > 20 and not torch.equal(
        records[0]["losses"]["values"], records[1]["losses"]["values"]
    )


def test_the_model_zoo_checkpoint_loads_whole_and_predicts_as_recorded():
    model, missing = ref.zoo_model()
    assert missing == []
    expected = REFERENCE["zoo"]["predictions"]
    assert len(expected["scores"]) > 5 and expected["scores"][0] > 0.9  # a trained model
    failures = _differences(ref.zoo_predictions(model), expected, REFERENCE["zoo"]["config"])
    assert not failures, "\n".join(failures)
