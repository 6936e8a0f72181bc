"""The numbers a resume compares its data by: the same data computed again with other rounding pass, other data not."""

from __future__ import annotations

import torch

from worker.data.summary import first_difference, split_summary


def test_rounding_passes_and_a_negated_feature_or_an_edited_row_does_not():
    # A sha256 of the bytes refused data computed again with other rounding (torch's reductions split by thread
    # count, a GPU feature extractor): a resume could then never go on
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(5000, 6, generator=gen), torch.randint(0, 3, (5000,), generator=gen)
    stored = split_summary(x, y)
    assert first_difference(stored, split_summary(x.clone(), y.clone())) is None
    rounded = x * (1 + 1e-6 * torch.randn(x.shape, generator=gen))  # float32 noise of other kernels, and more
    assert first_difference(stored, split_summary(rounded, y)) is None
    negated = x.clone()
    negated[:, 0] *= -1  # zero mean, the same spread: the mean and rms alone would not see it
    assert first_difference(stored, split_summary(negated, y)) == 0
    edited = x.clone()
    edited[1234] = torch.randn(6, generator=gen)
    assert first_difference(stored, split_summary(edited, y)) == 0
    relabelled = y.clone()
    relabelled[7] = (relabelled[7] + 1) % 3
    assert first_difference(stored, split_summary(x, relabelled)) == 1
    assert first_difference(stored, split_summary(x[:-1], y[:-1])) == 0
