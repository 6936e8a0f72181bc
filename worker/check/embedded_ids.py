"""Token ids given as floats beside a model with an embedding: caviar standardises float inputs, ids included.

``x = torch.zeros(n, T)`` filled with ids, or ids joined with float features into one float32 tensor, reach the
model as ``(id - mean) / std``; ``self.embed(x.long())`` then indexes rows -1, 0 and 1 (torch's range error, which
names no cause) or, with ids skewed towards small values (word frequencies), only rows 0 and 1, without a word.
Whole-number floats alone say nothing (pixel values 0-255 are standardised on purpose), nor does an embedding alone
(a learned position embedding over float features): both together are named.
"""

from __future__ import annotations

import torch

from worker.data.splits import Splits

SAMPLE = 2048  # rows read


def standardised_ids_note(model: torch.nn.Module, splits: Splits) -> str | None:
    """One line when float inputs that caviar standardises hold only whole numbers >= 0 in some positions (in their
    first ``SAMPLE`` rows) and the model holds an ``nn.Embedding`` or ``nn.EmbeddingBag`` whose table they fit."""
    if not splits.input_dtype.is_floating_point or splits.mean is None or splits.std is None:
        return None
    sizes = [m.num_embeddings for m in model.modules() if isinstance(m, (torch.nn.Embedding, torch.nn.EmbeddingBag))]
    if not sizes:
        return None
    x = splits.sample_inputs(SAMPLE)[:SAMPLE].cpu()  # standardised, in memory or streamed
    if len(x) < 2:
        return None
    # The inputs as load_data gave them, from the first rows: enough to tell ids, without a copy of large images.
    raw = (x.double() * splits.std.double().cpu() + splits.mean.double().cpu()).flatten(1)
    whole = (raw - raw.round()).abs() <= 1e-3 + 1e-6 * raw.abs()  # float32's rounding of the standardised values
    low, high = raw.amin(dim=0), raw.amax(dim=0)
    # 0/1 indicator features beside a position embedding are not ids: a vocabulary has more than two words
    ids = whole.all(dim=0) & (low > -0.5) & (high > 1.5) & (high < max(sizes) - 0.5)
    if not bool(ids.any()):
        return None
    dtype = str(x.dtype).removeprefix("torch.")
    low, high = round(float(low[ids].min())), round(float(high[ids].max()))
    return (f"load_data: the inputs are {dtype} and {int(ids.sum())} of their {raw.shape[1]} positions hold only "
            f"whole numbers from {low} to {high}, beside a model with an embedding: if they are token ids, caviar "
            f"standardises them as it does every float input ((x - mean) / std), so an embedding indexed by them "
            f"gets other rows; give the ids as int64 (X.astype('int64'), never standardised), or set normalize = "
            f"False in the task")
