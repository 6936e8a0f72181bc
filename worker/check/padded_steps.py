"""Zero-padded sequences beside a sequence model: caviar standardises every position, padding included.

A batch of variable-length series padded with zeros to one length, ``(N, T, F)`` or ``(N, T)``, reaches the model as
``(x - mean) / std`` per position, so a padded step is ``-mean / std``, not zero. A model that finds its lengths or
mask from zeros (``(x != 0).any(-1).sum(1)`` before ``pack_padded_sequence``, an attention mask) then sees every
sequence at full length and trains on the padding, without a word. Zero rows alone say nothing (the blank rows at
an image's edge), nor does a recurrent model alone: both together are named.
"""

from __future__ import annotations

import torch

from worker.data.splits import Splits

SAMPLE = 2048  # rows read
MIN_SHARE = 0.1  # of the sampled sequences padded: a few series that end in real zeros are not padding
SEQUENCE_LAYERS = (torch.nn.RNNBase, torch.nn.MultiheadAttention)


def padded_steps_note(model: torch.nn.Module, splits: Splits) -> str | None:
    """One line when standardised float sequences of shape ``(T,)`` or ``(T, F)`` end or begin in all-zero steps of
    varying length (in their first ``SAMPLE`` rows) and the model holds a recurrent or attention layer."""
    if not splits.input_dtype.is_floating_point or splits.mean is None or splits.std is None:
        return None
    if len(splits.input_shape) not in (1, 2) or splits.input_shape[0] < 3:
        return None
    layers = sorted({type(m).__name__ for m in model.modules() if isinstance(m, SEQUENCE_LAYERS)})
    if not layers:
        return None
    x = splits.sample_inputs(SAMPLE)[:SAMPLE].cpu().double()
    if len(x) < 2:
        return None
    zero = -splits.mean.double().cpu() / splits.std.double().cpu()  # where a raw 0 lands after standardisation
    is_zero = (x - zero).abs() <= 1e-5 * (1 + zero.abs())
    steps = is_zero if is_zero.ndim == 2 else is_zero.all(dim=2)  # (n, T): the step holds only zeros
    padded = torch.maximum(_run_length(steps), _run_length(steps.flip(1)))  # zero steps at the end or the start
    padded = padded[(padded > 0) & (padded < steps.shape[1])]  # a sequence of only zeros is no length
    if len(padded) < MIN_SHARE * len(x) or len(padded.unique()) < 2:
        return None
    dtype = str(splits.input_dtype).removeprefix("torch.")
    return (f"load_data: {len(padded)} of the first {len(x)} training sequences ({dtype}, shape "
            f"{tuple(splits.input_shape)}) end or begin in {int(padded.min())} to {int(padded.max())} all-zero "
            f"steps, beside a model with {', '.join(layers)}: if that is padding, caviar standardises every position "
            f"((x - mean) / std), so padded steps reach the model as non-zero values and lengths or masks found from "
            f"zeros see none; set normalize = False in the task and standardise the real steps yourself")


def _run_length(steps: torch.Tensor) -> torch.Tensor:
    """Per row, how many steps at the end are True."""
    return steps.flip(1).long().cumprod(dim=1).sum(dim=1)
