"""Examples shared between splits are named in one warning line before the sweep (worker/check/overlap.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from tests.worker.test_inputs import plain_task
from worker.check import overlap
from worker.check.contract import validate_contract
from worker.check.overlap import row_hashes, shared_examples
from worker.data.splits import prepare


def blobs(n: int, seed: int, width: int = 5, dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, width)).astype(dtype), rng.integers(0, 2, n)


def test_rows_hash_equal_exactly_when_their_bytes_are_equal():
    x = np.random.default_rng(0).normal(size=(20_000, 7)).astype(np.float32)  # 28 bytes a row: padded to 32
    hashes = row_hashes(x)
    assert len(np.unique(hashes)) == len(x)
    assert np.array_equal(row_hashes(x[::-1].copy()), hashes[::-1])
    changed = x.copy()
    changed[5, 6] = np.nextafter(changed[5, 6], np.float32(np.inf))  # one bit of one value
    assert (row_hashes(changed) != hashes).sum() == 1
    images = np.random.default_rng(1).integers(0, 256, size=(50, 1, 3, 3), dtype=np.uint8)  # 9 bytes a row
    assert np.array_equal(row_hashes(torch.from_numpy(images)), row_hashes(images))


def test_hashing_in_blocks_gives_the_hashes_of_one_pass(monkeypatch):
    x = np.random.default_rng(2).normal(size=(1000, 13)).astype(np.float64)
    whole = row_hashes(x)
    monkeypatch.setattr(overlap, "_BLOCK_BYTES", 13 * 8 * 7)  # 7 rows a block
    assert np.array_equal(row_hashes(x), whole)


def test_the_same_examples_as_val_and_test_are_named():
    train, held = blobs(300, 0), blobs(100, 1)
    assert shared_examples(prepare((train, held, held))) == ["val and test hold the same 100 examples"]
    shuffled = (held[0][::-1].copy(), held[1][::-1].copy())  # the same rows in another order
    assert shared_examples(prepare((train, held, shuffled))) == ["val and test hold the same 100 examples"]


def test_test_rows_from_train_are_counted_from_one_percent():
    (xt, yt), val = blobs(300, 0), blobs(100, 1)
    xs, ys = blobs(200, 2)
    leaky = (np.concatenate([xs[:190], xt[:10]]), ys)  # 10 of 200 test rows are training rows: 5%
    assert shared_examples(prepare(((xt, yt), val, leaky))) == ["10 of 200 test examples (5%) are also in train"]
    one = (np.concatenate([xs[:199], xt[:1]]), ys)  # one row in 200: the data's own duplicate, not a leak
    assert shared_examples(prepare(((xt, yt), val, one))) == []
    assert shared_examples(prepare(((xt, yt), val, (xs, ys)))) == []
    val_leak = (np.concatenate([val[0][:80], xt[:20]]), val[1])
    said = shared_examples(prepare(((xt, yt), val_leak, (xs, ys))))
    assert said == ["20 of 100 val examples (20%) are also in train"]


def test_the_contract_check_warns_once_in_one_line_and_goes_on(caplog):
    train, held = blobs(300, 0), blobs(100, 1)
    task = plain_task(lambda config: nn.Linear(5, 2), load_data=lambda: (train, held, held))
    with caplog.at_level("WARNING", logger="caviar"):
        splits = validate_contract(task, [{"lr": 0.05, "batch_size": 16, "optimizer": "adam"}])
    assert splits.x_test is not None
    [record] = [r for r in caplog.records if "val and test" in r.getMessage()]
    assert record.getMessage().startswith("load_data: val and test hold the same 100 examples: test numbers")
    assert "\n" not in record.getMessage()


@pytest.mark.parametrize("dtype", [np.float32, np.int64])
def test_inputs_of_any_dtype_are_compared_as_given(dtype):
    x = np.arange(60, dtype=dtype).reshape(20, 3)
    y = np.zeros(20, np.int64)
    assert shared_examples(prepare(((x, y), (x[:10], y[:10]), (x[10:], y[10:])), normalize=False)) == [
        "10 of 10 test examples (100%) are also in train", "10 of 10 val examples (100%) are also in train"]


def test_classes_that_train_never_shows_are_named_in_one_line_before_the_sweep(caplog):
    from worker.check.validate import warn_if_classes_missing_from_train

    rng = np.random.default_rng(4)
    x = rng.normal(size=(120, 5)).astype(np.float32)
    y = np.arange(120) % 4  # classes 0..3
    train = (x[:60], np.where(y[:60] == 3, 0, y[:60]))  # train never shows class 3
    val = (x[60:90], y[60:90])
    test = (x[90:], np.where(y[90:] == 2, 0, y[90:]))
    task = plain_task(lambda config: nn.Linear(5, 4), load_data=lambda: (train, val, test))
    with caplog.at_level("WARNING", logger="caviar"):
        validate_contract(task, [{"lr": 0.05, "batch_size": 16, "optimizer": "adam"}])
    [line] = [r.getMessage() for r in caplog.records if "never shows" in r.getMessage()]
    assert line == ("load_data: val holds class 3 (7 targets); test holds class 3 (8 targets) that train never shows: "
                    "no trial can learn it, so those targets are errors in every number; a stratified split keeps "
                    "each class in train")
    assert warn_if_classes_missing_from_train(prepare(((x[:60], y[:60]), val, (x[90:], y[90:])))) == []
    # Padding (-100, torch's ignore_index) in a per-position task is no class.
    tags = np.where(rng.random((120, 6)) < 0.2, -100, rng.integers(0, 3, (120, 6)))
    tokens = rng.integers(0, 9, (120, 6))
    assert warn_if_classes_missing_from_train(prepare(((tokens[:60], tags[:60]), (tokens[60:90], tags[60:90]),
                                                       (tokens[90:], tags[90:])))) == []


def test_tabular_data_with_few_distinct_rows_is_not_called_shared_unless_more_than_its_own_repeats():
    """27 possible rows (three features of 0, 1 or 2), split at random: every test row was "also in train" ("200 of
    200 test examples (100%)": give each split examples of its own), which such data cannot do. A test split copied
    from training rows of data that rarely repeats is still named."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 3, size=(1200, 3)).astype(np.float32)
    y = rng.integers(0, 2, 1200)
    splits = ((x[:800], y[:800]), (x[800:1000], y[800:1000]), (x[1000:], y[1000:]))
    assert shared_examples(prepare(splits)) == []
    wide = rng.integers(0, 3, size=(1200, 12)).astype(np.float32)  # 3**12 possible rows: few repeat by chance
    wide[1000:1100] = wide[:100]  # half the test split copied from train
    splits = ((wide[:800], y[:800]), (wide[800:1000], y[800:1000]), (wide[1000:], y[1000:]))
    assert shared_examples(prepare(splits)) == ["100 of 200 test examples (50%) are also in train"]


def test_classes_that_val_or_test_lacks_are_named_in_one_line_before_the_sweep(caplog):
    """A fraud-like split, 1% positives: val drew none. Every metric of the positive class (AP, ROC AUC, F1) is then
    0 or NaN for every trial and the sweep ranked on ties without a word; the line names the split and the class."""
    from worker.check.absent_classes import warn_if_classes_absent

    rng = np.random.default_rng(5)
    x = rng.normal(size=(700, 5)).astype(np.float32)
    y = (np.arange(700) % 100 == 0).astype(np.int64)  # one positive in a hundred
    train, val, test = (x[:500], y[:500]), (x[501:600], y[501:600]), (x[600:], y[600:])
    task = plain_task(lambda config: nn.Linear(5, 2), load_data=lambda: (train, val, test))
    with caplog.at_level("WARNING", logger="caviar"):
        validate_contract(task, [{"lr": 0.05, "batch_size": 16, "optimizer": "adam"}])
    [line] = [r.getMessage() for r in caplog.records if "holds no example" in r.getMessage()]
    assert line == ("load_data: val (99 examples) holds no example of class 1 (5 in train): a metric of such a class "
                    "(its recall or precision, an F1, average precision, ROC AUC) is undefined or the same for every "
                    "trial on val, so a sweep ranked by one ranks on ties; a stratified split keeps every class in "
                    "each split")
    # Labels 0, 3 and 7 (not contiguous): only classes train holds count, never the indices between them.
    labels = np.array([0, 3, 7])[np.arange(700) % 3]
    assert warn_if_classes_absent(prepare(((x[:500], labels[:500]), (x[500:600], np.where(labels[500:600] == 7, 0,
                                           labels[500:600])), (x[600:], labels[600:])))) == [
        "val (100 examples) holds no example of class 7 (166 in train)"]
    assert warn_if_classes_absent(prepare(((x[:500], labels[:500]), (x[500:600], labels[500:600]),
                                           (x[600:], labels[600:])))) == []
    # A class per position (a mask) lacks classes in a split as a matter of course: not said.
    tags = np.where(rng.random((120, 6)) < 0.2, -100, rng.integers(0, 3, (120, 6)))
    tokens = rng.integers(0, 9, (120, 6))
    assert warn_if_classes_absent(prepare(((tokens[:60], tags[:60]), (tokens[60:90], np.minimum(tags[60:90], 1)),
                                           (tokens[90:], tags[90:])))) == []


def test_bfloat16_inputs_of_a_bfloat16_model_are_compared_by_their_bytes(caplog):
    # numpy has no bfloat16: a contract check that read the rows through .numpy() raised TypeError before any trial
    train, held = blobs(300, 0), blobs(100, 1)
    as_bf16 = [(torch.from_numpy(x).to(torch.bfloat16), torch.from_numpy(y)) for x, y in (train, held, held)]
    task = plain_task(lambda config: nn.Linear(5, 2).to(torch.bfloat16), load_data=lambda: tuple(as_bf16))
    with caplog.at_level("WARNING", logger="caviar"):
        splits = validate_contract(task, [{"lr": 0.05, "batch_size": 16, "optimizer": "adam"}])
    assert splits.x_train.dtype == torch.bfloat16
    assert any("val and test hold the same 100 examples" in r.getMessage() for r in caplog.records)
    assert np.array_equal(row_hashes(as_bf16[0][0]), row_hashes(as_bf16[0][0].view(torch.int16).numpy()))
