"""Classes that train shows but val or test lacks: named in one warning line before the sweep.

On imbalanced data a small or unstratified split easily holds no example of the rare class. Validation then
cannot score that class: its recall, precision, F1, average precision or ROC AUC is undefined or one constant
for every trial (scikit-learn returns 0 or NaN), and a sweep ranked by such a metric prunes, narrows and
chooses its ensemble on ties. Test numbers likewise say nothing of the class. Never a refusal: a task may mean
it (a rare class that a small split happens to lack, ranked by accuracy).
"""

from __future__ import annotations

import logging

import torch

from worker.data.splits import Splits

log = logging.getLogger("caviar")


def warn_if_classes_absent(splits: Splits) -> list[str]:
    """One warning line when val or test lacks a class train holds; returns its clauses (for tests).

    Hard labels, one per example, only: a class per position (a segmentation mask) or multi-label rows lack
    classes in a split as a matter of course, and soft labels have no absent class.
    """
    kind = splits.target_kind
    if kind.kind != "classification" or kind.multilabel or kind.soft or kind.per_position:
        return []
    if splits.y_train is None:
        return []
    classes, counts = torch.unique(splits.y_train, return_counts=True)
    in_train = dict(zip(classes.tolist(), counts.tolist()))
    said, val_lacks = [], False
    for split, y in (("val", splits.y_val), ("test", splits.y_test)):
        if y is None or not len(y):
            continue
        missing = sorted(set(in_train) - set(torch.unique(y).tolist()))
        if missing:
            val_lacks |= split == "val"
            shown = ", ".join(f"{c} ({in_train[c]} in train)" for c in missing[:8])
            more = f" and {len(missing) - 8} more" if len(missing) > 8 else ""
            said.append(f"{split} ({len(y)} examples) holds no example of class{'es' if len(missing) > 1 else ''} "
                        f"{shown}{more}")
    if said:
        why = ("a metric of such a class (its recall or precision, an F1, average precision, ROC AUC) is undefined or "
               "the same for every trial on val, so a sweep ranked by one ranks on ties") if val_lacks else \
            "test numbers say nothing of such a class"
        log.warning("load_data: %s: %s; a stratified split keeps every class in each split", "; ".join(said), why)
    return said
