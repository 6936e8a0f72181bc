"""Report axes a reader can trust: histograms fit their data, not the outliers that set the bin range."""

from __future__ import annotations

import numpy as np

from orchestrator.app.report_figures import central_range


def hist(values, bins=64):
    counts, edges = np.histogram(values, bins=bins)
    return {"hist_counts": counts.tolist(), "hist_edges": edges.tolist()}


def test_a_few_outliers_do_not_stretch_the_axis_and_are_counted():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(size=10_000), [20.0, -20.0, 19.0]])
    low, high, hidden = central_range([hist(values)])
    assert -4.5 < low < -2.0 and 2.0 < high < 4.5  # within +-3 where the values are, not +-20
    assert 0 < hidden < 0.01


def test_two_histograms_share_one_axis_that_covers_both():
    rng = np.random.default_rng(1)
    first, last = rng.normal(0, 1, 5000), rng.normal(5, 0.5, 5000)
    low, high, _ = central_range([hist(first), hist(last)])
    assert low < -2 and high > 6


def test_skewed_relu_outputs_keep_zero_on_the_axis():
    rng = np.random.default_rng(2)
    relu = np.maximum(rng.normal(size=5000), 0)
    low, high, hidden = central_range([hist(relu)])
    assert low <= 0 < high and hidden < 0.02


def test_empty_histograms_give_a_plain_axis():
    assert central_range([{"hist_counts": [], "hist_edges": []}]) == (0.0, 1.0, 0.0)


def test_layer_names_reach_the_legend_without_compile_wrappers_or_a_leading_underscore():
    from orchestrator.app.report_figures import layer_label, new_figure

    assert layer_label("_orig_mod.0.weight") == "0.weight"  # a torch.compile'd model's parameter
    assert layer_label("_private.weight") == "private.weight"
    assert layer_label("encoder.0.weight") == "encoder.0.weight"
    ax = new_figure(4, 3).subplots()
    ax.plot([1, 2], [1, 2], label=layer_label("_orig_mod.0.weight"))
    assert [t.get_text() for t in ax.legend().get_texts()] == ["0.weight"]  # matplotlib drops labels starting "_"


def test_the_default_report_file_is_named_after_the_sweep_never_a_uris_query():
    from orchestrator.app.cli_report import default_report_file

    assert default_report_file("runs/digits/") == "digits-report.html"
    assert default_report_file("s3://KEY:SECRET@bkt/team/s3b?endpoint_override=127.0.0.1:9&scheme=http") == (
        "s3b-report.html")


def test_the_default_report_file_of_a_relative_sweep_path_is_named_after_its_folder(tmp_path, monkeypatch):
    # caviar report . inside a sweep folder wrote a hidden ".-report.html", and ./digits/. the same
    from orchestrator.app.cli_report import default_report_file

    (tmp_path / "digits").mkdir()
    monkeypatch.chdir(tmp_path / "digits")
    assert default_report_file(".") == default_report_file("./") == "digits-report.html"
    assert default_report_file("../digits/.") == "digits-report.html"
    assert default_report_file("..") == f"{tmp_path.name}-report.html"
