"""The statistics of ekd-table (Welch's t-test, 95 % intervals, Holm) against values worked out by hand,
and the table on fabricated sweeps: marks, CSV columns, LaTeX, the chart, comparable-run splitting and
the cost columns.

Reference values come from the formulas written out with ``math`` in float64: the t distribution's
closed forms for 1 and 2 degrees of freedom, and otherwise its density integrated numerically (Simpson)
-- nothing here calls the library the table uses for the t distribution, except one cross-check.
"""

from __future__ import annotations

import csv
import functools
import io
import math

import pytest

from ekd.report import RunResults, build_tables, save_tables, to_csv, to_latex, to_markdown
from ekd.report.table import (
    CSV_FIELDS,
    Stat,
    bar_figure,
    confidence_halfwidth,
    format_cost,
    holm,
    significance_mark,
    welch_from_summary,
    welch_test,
)
from tests.report.test_table import _row

_row = functools.cache(_row)  # label / order / paper row of a method file, read once

# ------------------------------------------------------------------------------ reference formulas


def _var(values):
    mean = math.fsum(values) / len(values)
    return math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1)


def _t_density(x, df):
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    return math.exp(log_c - (df + 1) / 2 * math.log1p(x * x / df))


def _t_tail(t, df, intervals=20000):
    """P(T > t) for t > 0: Simpson on x = t / u, u in (0, 1] (the integrand is 0 at u = 0 for df > 1)."""

    def integrand(u):
        return 0.0 if u == 0.0 else _t_density(t / u, df) * t / (u * u)

    h = 1.0 / intervals
    total = integrand(0.0) + integrand(1.0)
    total += 4 * math.fsum(integrand((2 * k - 1) * h) for k in range(1, intervals // 2 + 1))
    total += 2 * math.fsum(integrand(2 * k * h) for k in range(1, intervals // 2))
    return total * h / 3


def _p_two_sided(t, df):
    return 2 * _t_tail(abs(t), df)


def _t_quantile_975(df):
    """t_{0.975, df} by bisection on the integrated tail: P(T > q) = 0.025."""
    low, high = 0.0, 100.0
    for _ in range(80):
        middle = (low + high) / 2
        low, high = (middle, high) if _t_tail(middle, df, 4000) > 0.025 else (low, middle)
    return (low + high) / 2


def _welch_by_hand(a, b):
    """(delta, se, t, df, two-sided p) of Welch's test, from the formulas."""
    va, vb = _var(a) / len(a), _var(b) / len(b)
    se = math.sqrt(va + vb)
    delta = math.fsum(a) / len(a) - math.fsum(b) / len(b)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return delta, se, delta / se, df, _p_two_sided(delta / se, df)


# ------------------------------------------------------------------------------------ the statistics


def test_welch_with_two_degrees_of_freedom_in_closed_form():
    # equal n and equal variances: df = 2 (n - 1) = 2, where the t CDF is 1/2 + t / (2 sqrt(2 + t^2))
    a, b = [1.0, 3.0], [6.0, 8.0]  # means 2 and 7, variances 2 and 2
    test = welch_test(a, b)
    se = math.sqrt(2 / 2 + 2 / 2)
    t = -5.0 / se
    assert (test.delta, test.se, test.t) == (pytest.approx(-5.0), pytest.approx(se), pytest.approx(t))
    assert test.df == pytest.approx(2.0, rel=1e-12)  # (1 + 1)^2 / (1^2 / 1 + 1^2 / 1)
    assert test.p_value == pytest.approx(1 - abs(t) / math.sqrt(2 + t * t), rel=1e-10)  # 0.0715
    # t_{0.975, 2} = (2q - 1) / sqrt(2 q (1 - q)) for q = 0.975
    q = 0.975
    assert test.ci95 == pytest.approx((2 * q - 1) / math.sqrt(2 * q * (1 - q)) * se, rel=1e-10)
    assert test.p_holm is None  # adjusted by the table, over its family


def test_welch_textbook_example():
    """Wikipedia's "Welch's t-test", example 1 (two samples of 15): t = -2.46, df = 25.0, p = 0.021."""
    a = [27.5, 21.0, 19.0, 23.6, 17.0, 17.9, 16.9, 20.1, 21.9, 22.6, 23.1, 19.6, 19.0, 21.7, 21.4]
    b = [27.1, 22.0, 20.8, 23.4, 23.4, 23.5, 25.8, 22.0, 24.8, 20.2, 21.9, 22.1, 22.9, 20.5, 24.4]
    test = welch_test(a, b)
    delta, se, t, df, p = _welch_by_hand(a, b)
    assert (test.delta, test.se, test.t, test.df) == pytest.approx((delta, se, t, df), rel=1e-12)
    assert test.p_value == pytest.approx(p, rel=1e-8)
    assert round(test.t, 2) == -2.46 and round(test.df, 1) == 25.0 and round(test.p_value, 3) == 0.021
    assert test.ci95 == pytest.approx(_t_quantile_975(df) * se, rel=1e-6)
    # the library the table relies on agrees (cross-check)
    from scipy import stats

    reference = stats.ttest_ind(a, b, equal_var=False)
    assert (test.t, test.p_value) == pytest.approx((reference.statistic, reference.pvalue), rel=1e-10)


def test_welch_from_a_tables_summary_statistics():
    """The same example from each side's mean, std and n (what a comparison.csv row keeps): the
    by-hand values, and scipy's ttest_ind_from_stats as an independent check."""
    a = [27.5, 21.0, 19.0, 23.6, 17.0, 17.9, 16.9, 20.1, 21.9, 22.6, 23.1, 19.6, 19.0, 21.7, 21.4]
    b = [27.1, 22.0, 20.8, 23.4, 23.4, 23.5, 25.8, 22.0, 24.8, 20.2, 21.9, 22.1, 22.9, 20.5, 24.4]
    mean_a, mean_b = math.fsum(a) / 15, math.fsum(b) / 15
    test = welch_from_summary(mean_a, _var(a), 15, mean_b, _var(b), 15)
    delta, se, t, df, p = _welch_by_hand(a, b)
    assert (test.delta, test.se, test.t, test.df) == pytest.approx((delta, se, t, df), rel=1e-12)
    assert test.p_value == pytest.approx(p, rel=1e-8)
    from scipy import stats

    reference = stats.ttest_ind_from_stats(
        mean_a, math.sqrt(_var(a)), 15, mean_b, math.sqrt(_var(b)), 15, equal_var=False
    )
    assert (test.t, test.p_value) == pytest.approx((reference.statistic, reference.pvalue), rel=1e-10)
    assert welch_from_summary(1.0, 2.0, 1, 2.0, 2.0, 5) is None  # one run on a side: no test
    assert welch_from_summary(1.0, 0.0, 3, 2.0, 0.0, 5) is None  # neither varies


def test_welch_when_one_side_does_not_vary_and_when_there_is_no_test():
    # b constant: se^2 = s_a^2 / n_a and df = n_a - 1 = 3 (a one-sample t-test against mean(b))
    a, b = [1.0, 2.0, 4.0, 5.0], [2.0, 2.0, 2.0]
    test = welch_test(a, b)
    se = math.sqrt(_var(a) / 4)  # var 10/3
    assert test.df == pytest.approx(3.0, rel=1e-12)
    assert test.t == pytest.approx(1.0 / se, rel=1e-12)
    assert test.p_value == pytest.approx(_p_two_sided(1.0 / se, 3), rel=1e-8)
    assert welch_test([1.0], [2.0, 3.0]) is None  # fewer than 2 runs on a side
    assert welch_test([1.0, 2.0], [3.0]) is None
    assert welch_test([1.0, 1.0], [3.0, 3.0]) is None  # neither varies: no test


def test_confidence_interval_by_hand():
    # n = 2: t_{0.975, 1} = tan(pi (0.975 - 1/2)) (Cauchy); s = sqrt(2), so ci = t * sqrt(2) / sqrt(2)
    assert confidence_halfwidth([1.0, 3.0]) == pytest.approx(math.tan(math.pi * 0.475), rel=1e-10)  # 12.706
    # n = 3: t_{0.975, 2} = 0.95 / sqrt(2 * 0.975 * 0.025) = 4.3027, s = 1
    t2 = 0.95 / math.sqrt(2 * 0.975 * 0.025)
    assert confidence_halfwidth([1.0, 2.0, 3.0]) == pytest.approx(t2 / math.sqrt(3), rel=1e-10)
    # n = 5: t_{0.975, 4} = 2.776 (t tables), from the integrated density
    values = [99.1, 99.4, 99.2, 99.6, 99.3]
    expected = _t_quantile_975(4) * math.sqrt(_var(values) / 5)
    assert round(_t_quantile_975(4), 3) == 2.776
    assert Stat(values).ci95 == pytest.approx(expected, rel=1e-6)
    assert Stat([99.0]).ci95 is None and confidence_halfwidth([]) is None


def test_holm_by_hand():
    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1: 0.02, 0.03, 0.06, 0.04 -> running max 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.6]) == [1.0, 1.0]  # capped at 1, and never below an earlier step
    assert holm([0.02]) == [0.02] and holm([]) == []


def test_significance_marks():
    assert [significance_mark(p) for p in (0.0009, 0.001, 0.0099, 0.01, 0.0499, 0.05, 0.5, None)] == [
        "***",
        "**",
        "**",
        "*",
        "*",
        "",
        "",
        "",
    ]


# ------------------------------------------------------------------------------ the table on fabricated runs

PROTOCOL = {"precision": "32-true", "pair_sets": {"flip": "sum", "n_folds": 10}, "ijb": None}
DATA = {"generator_version": 4, "identities": 400, "root": "/data/synthetic"}
SHA = "ab" * 32

# (synth_pose, synth_age, (SynthIJB TPR@1e-3, TPR@1e-4)) per seed, in percent
NONE = [
    (80.0, 70.0, (60.0, 40.0)),
    (81.0, 72.0, (62.0, 41.0)),
    (79.0, 71.0, (61.0, 43.0)),
    (80.0, 71.0, (61.0, 40.0)),
]
KD = [
    (85.0, 71.0, (66.0, 44.0)),
    (86.0, 73.0, (67.0, 42.0)),
    (84.0, 70.0, (66.0, 45.0)),
    (85.0, 72.0, (65.0, 43.0)),
]
EKD = [(80.5, 75.0, (62.0, 41.0)), (81.5, 76.0, (63.0, 42.0)), (80.0, 75.5, (62.5, 44.0))]
COLUMNS = ["synth_pose", "synth_age", "SynthIJB@1e-3", "SynthIJB@1e-4", "Avg"]


def _run(method, seed, pose, age, tpr=None, **extra):
    metrics = {"synth_pose": {"accuracy": pose / 100}, "synth_age": {"accuracy": age / 100}}
    if tpr is not None:
        metrics["synth_ijb"] = {
            "tpr_at_fpr": {"1e-3": tpr[0] / 100, "1e-4": tpr[1] / 100},
            "impostors": 1_200_000,
            "genuine": 24_000,
        }
    distilled = method not in ("none", "teacher")
    fields = dict(
        method=method,
        **_row(method),
        dataset="synthetic",
        student="iresnet50" if method == "teacher" else "mobilefacenet",
        student_label="IResNet50" if method == "teacher" else "MobileFaceNet",
        seed=seed,
        metrics=metrics,
        eval_protocol=PROTOCOL,
        data_record=DATA,
        teacher="iresnet50" if distilled else None,
        teacher_sha256=SHA if distilled else None,
        teacher_checkpoint="/runs/teacher/last.ckpt" if distilled else None,
        fit_time_s=100.0 + seed,
        global_step=500,
        train_batch_size=64,
        peak_memory_mib=1000.0 + 10 * seed,
    )
    return RunResults(**{**fields, **extra})


def _sweep():
    runs = [_run("teacher", 0, 95.0, 90.0, (90.0, 80.0), output_dir="/runs/teacher")]
    runs += [_run("none", s, p, a, t) for s, (p, a, t) in enumerate(NONE)]
    runs += [_run("kd", s, p, a, t) for s, (p, a, t) in enumerate(KD)]
    runs += [_run("ekd", s, p, a, t) for s, (p, a, t) in enumerate(EKD)]
    runs += [_run("rkd", 0, 83.0, 72.0, (63.0, 42.0))]  # one seed: no test
    return runs


def _column_values(seeds, label):
    if label == "Avg":
        return [(pose + age) / 2 for pose, age, _ in seeds]
    index = {"synth_pose": 0, "synth_age": 1}.get(label)
    return [s[index] for s in seeds] if index is not None else [s[2][label.endswith("1e-4")] for s in seeds]


def test_tests_and_holm_over_the_table_by_hand():
    (table,) = build_tables(_sweep())
    assert table.group == "" and table.labels == COLUMNS
    # the family: KD and EKD (2 or more runs) x 5 columns; not the teacher, no-KD or single-run RKD rows
    family = [(method, label) for method in ("kd", "ekd") for label in COLUMNS]
    assert table.n_tests == 10
    by_hand = {}
    for method, seeds in (("kd", KD), ("ekd", EKD)):
        for label in COLUMNS:
            by_hand[method, label] = _welch_by_hand(_column_values(seeds, label), _column_values(NONE, label))
    adjusted = holm([by_hand[key][4] for key in family])  # holm itself is checked by hand above
    for key, p_holm in zip(family, adjusted):
        test = table.row(key[0]).tests[key[1]]
        delta, se, t, df, p = by_hand[key]
        assert (test.delta, test.se, test.t, test.df) == pytest.approx((delta, se, t, df), rel=1e-9), key
        assert test.p_value == pytest.approx(p, rel=1e-7), key
        assert test.p_holm == pytest.approx(p_holm, rel=1e-7), key
    # KD synth_pose: 85 +- 0.816 vs 80 +- 0.816 (n 4 each): t = 5 / sqrt(2/3 / 4 * 2) = 8.66, df 6
    kd = table.row("kd").tests["synth_pose"]
    assert kd.t == pytest.approx(5 / math.sqrt(1 / 3), rel=1e-12) and kd.df == pytest.approx(6.0)
    assert kd.p_holm == pytest.approx(10 * kd.p_value)  # the smallest of 10 p-values: times 10
    assert table.row("rkd").tests == {} and table.row("none").tests == {} and table.row("teacher").tests == {}
    assert table.row("rkd").untested == dict.fromkeys(COLUMNS, "fewer than 2 runs in the row")
    assert table.notes == ["no Welch test, fewer than 2 runs in the row (empty p, no mark): RKD"]
    # marks from the adjusted p-values (computed above): KD pose and TPR@1e-3 p_holm 0.0013, Avg 0.038;
    # EKD age 0.0025, Avg 0.023; the rest >= 0.15
    marks = {(m, label): table.row(m).mark(label) for m, label in family}
    assert {key: mark for key, mark in marks.items() if mark} == {
        ("kd", "synth_pose"): "**",
        ("kd", "SynthIJB@1e-3"): "**",
        ("kd", "Avg"): "*",
        ("ekd", "synth_age"): "**",
        ("ekd", "Avg"): "*",
    }


def test_markdown_shows_marks_legend_and_cost():
    runs = _sweep()
    markdown = to_markdown(build_tables(runs))
    lines = markdown.splitlines()
    header = (
        "| Method | Runs | synth_pose | synth_age | SynthIJB@1e-3 | SynthIJB@1e-4 | Avg | Paper ΔAvg | "
        "Fit time | Train img/s | Peak mem (MiB) |"
    )
    assert header in lines
    # KD: fit 100..103 s -> 101.5 s; 500 steps x 64 images over 100..103 s -> mean of 32000 / fit
    images = math.fsum(32000 / (100.0 + s) for s in range(4)) / 4
    assert f"{images:.0f}" == "315"
    assert (
        "| KD | 4 | 85.00 ± 0.82 (+5.00**) | 71.50 ± 1.29 (+0.50) | 66.00 ± 0.82 (+5.00**) | "
        "43.50 ± 1.29 (+2.50) | 78.25 ± 1.04 (+2.75*) | -0.01 | 102 s | 315 | 1015 |"
    ) in lines
    assert (
        "| RKD | 1 | 83.00 (+3.00) | 72.00 (+1.00) | 63.00 (+2.00) | 42.00 (+1.00) | 77.50 (+2.00) |"
        in markdown
    )
    assert (
        "Marks: Welch's two-sided t-test over seeds of the difference to the no-KD row of the same student, "
        "p Holm-adjusted over this table's 10 tests: * p < 0.05, ** p < 0.01, *** p < 0.001; no mark: not "
        "significant or not tested."
    ) in markdown
    assert "- note: no Welch test, fewer than 2 runs in the row (empty p, no mark): RKD" in lines
    assert "(1,200,000 impostor comparisons / 24,000 genuine comparisons); not part of Avg." in markdown
    # one seed per row (the demo): nothing to test, said plainly
    single = [r for r in runs if r.seed == 0]
    text = to_markdown(build_tables(single))
    assert "No significance tests: no method row and the no-KD row of its student both have 2" in text
    assert "*" not in text.split("\n\n")[1]  # no marks in the table itself


def test_csv_keeps_its_columns_and_gains_the_statistics():
    old_columns = "dataset metric method label student teacher column n failed seeds mean std delta paper"
    old_columns = old_columns.split()
    assert list(CSV_FIELDS[: len(old_columns)]) == old_columns
    for name in ("n", "mean", "std", "ci95", "delta", "p_value", "p_holm"):
        assert name in CSV_FIELDS
    (table,) = build_tables(_sweep())
    rows = list(csv.DictReader(io.StringIO(to_csv(table))))
    assert list(rows[0]) == list(CSV_FIELDS)
    assert len(rows) == 5 * 5  # one line per method x column
    line = next(r for r in rows if r["method"] == "kd" and r["column"] == "synth_pose")
    values = [85.0, 86.0, 84.0, 85.0]
    t3 = 3.182446305284263  # t_{0.975, 3} of t tables; checked against the integrated density below
    assert _t_quantile_975(3) == pytest.approx(t3, rel=1e-6)
    assert float(line["ci95"]) == pytest.approx(t3 * math.sqrt(_var(values) / 4), rel=1e-6)
    assert float(line["std"]) == pytest.approx(math.sqrt(2 / 3))
    test = table.row("kd").tests["synth_pose"]
    assert float(line["p_value"]) == test.p_value and float(line["p_holm"]) == test.p_holm
    assert float(line["delta"]) == pytest.approx(5.0) and float(line["delta_ci95"]) == test.ci95
    assert (line["fit_time_s"], line["peak_memory_mib"], line["group"]) == ("101.5", "1015.0", "")
    # the metric names the column's metric; untested rows have empty p-values
    tpr = next(r for r in rows if r["method"] == "kd" and r["column"] == "SynthIJB@1e-4")
    assert tpr["metric"] == "tpr@1e-4"
    rkd = [r for r in rows if r["method"] == "rkd"]
    assert {(r["p_value"], r["p_holm"], r["ci95"]) for r in rkd} == {("", "", "")}
    assert {r["p_value"] for r in rows if r["method"] in ("none", "teacher")} == {""}


def test_latex_carries_marks_and_legend():
    latex = to_latex(build_tables(_sweep())).splitlines()
    kd = next(line for line in latex if line.startswith("KD & 4 &"))
    assert kd.startswith(
        "KD & 4 & 85.00$\\pm$0.82 {\\scriptsize (+5.00$^{**}$)} & 71.50$\\pm$1.29 {\\scriptsize (+0.50)}"
    )
    assert kd.endswith("& 102 s & 315 & 1015 \\\\")
    assert latex[latex.index("\\bottomrule") + 1] == (
        "\\multicolumn{10}{l}{\\scriptsize $^{*}$ $p < 0.05$, $^{**}$ $p < 0.01$, $^{***}$ $p < 0.001$: "
        "Welch's t-test over seeds against the no-KD student, Holm-adjusted over the table's 10 tests.} \\\\"
    )
    assert latex[-1] == "\\end{tabular}"


def test_chart_draws_intervals_inside_the_axes(tmp_path):
    import matplotlib.pyplot as plt

    tables = build_tables(_sweep())
    figure = bar_figure(tables)
    left, right = figure.axes[:2]
    low, high = left.get_ylim()
    for row in tables[0].rows:
        for stat in row.cells.values():
            half = stat.ci95 or 0.0
            assert low < stat.mean - half and stat.mean + half < high
    low, high = right.get_ylim()
    for row in tables[0].rows:
        if "Avg" in row.tests:
            test = row.tests["Avg"]
            assert low < test.delta - test.ci95 and test.delta + test.ci95 < high
    plt.close(figure)
    paths = save_tables(tables, tmp_path)
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert all(path.stat().st_size > 0 for path in paths.values())


def test_template_set_columns():
    run = _run("none", 0, 80.0, 70.0)
    run.metrics["synth_ijb"] = {"tpr@1e-3": 0.61, "tpr@1e-4": 0.42, "impostors": 1_000_000, "genuine": 5000}
    run.metrics["ijbc"] = {"tpr_at_fpr": {"1e-4": 0.89}}
    other = _run("none", 1, 81.0, 71.0)
    other.metrics["synth_ijb"] = {
        "tpr_at_fpr": {"0.001": 0.63, "1e-4": 0.44, "1e-5": 0.2},
        "impostors": 2_000_000,
    }
    (table,) = build_tables([run, other])
    # the paper's IJB columns always (IJB-C@1e-5 too); SynthIJB's for the FPRs some run recorded
    labels = ["synth_pose", "synth_age", "IJB-C@1e-4", "IJB-C@1e-5", "SynthIJB@1e-3", "SynthIJB@1e-4"]
    assert table.labels == [*labels, "SynthIJB@1e-5", "Avg"]
    row = table.row("none")
    assert row.cells["SynthIJB@1e-3"].values == pytest.approx([61.0, 63.0])  # flat key and "0.001"
    assert row.cells["SynthIJB@1e-5"].values == pytest.approx([20.0])
    assert row.cells["Avg"].values == pytest.approx([75.0, 76.0])  # template sets are not averaged
    assert table.template_counts == {"impostor": (1_000_000, 2_000_000), "genuine": (5000, 5000)}
    assert "(1,000,000-2,000,000 impostor comparisons / 5,000 genuine comparisons)" in to_markdown(table)


def test_incomparable_runs_are_split_never_averaged():
    other_sha = "cd" * 32
    second_teacher = {"teacher_sha256": other_sha, "teacher_checkpoint": "/runs/teacher2/backbone.pth"}
    runs = [
        *_sweep(),
        _run("teacher", 1, 96.0, 91.0, (91.0, 81.0), output_dir="/runs/teacher2"),
        *(_run("kd", s, p + 1, a, t, **second_teacher) for s, (p, a, t) in enumerate(KD)),
        *(
            _run("none", s, p, a, t, eval_protocol={**PROTOCOL, "precision": "bf16-mixed"})
            for s, (p, a, t) in enumerate(NONE[:2])
        ),
        _run("none", 0, 70.0, 60.0, data_record={**DATA, "generator_version": 3, "root": "/elsewhere"}),
        _run("ekd", 9, 80.0, 70.0).as_failed(RuntimeError("boom"), step=3),
    ]
    tables = build_tables(runs)
    common = "precision 32-true; generator_version 4"
    assert [(t.group, [(r.method, r.n, r.n_failed) for r in t.rows]) for t in tables] == [
        (
            f"{common}; teacher iresnet50 (sha256 abababababab)",
            [("teacher", 1, 0), ("none", 4, 0), ("kd", 4, 0), ("rkd", 1, 0), ("ekd", 3, 1)],
        ),
        (
            f"{common}; teacher iresnet50 (sha256 cdcdcdcdcdcd)",
            [("teacher", 1, 0), ("none", 4, 0), ("kd", 4, 0)],
        ),
        ("precision bf16-mixed; generator_version 4", [("none", 2, 0)]),
        ("precision 32-true; generator_version 3", [("none", 1, 0)]),
    ]
    first, second = tables[:2]
    # each teacher's table has its own teacher run and the same no-KD baseline
    assert first.row("teacher").seeds == [0] and second.row("teacher").seeds == [1]
    assert second.row("kd").cells["synth_pose"].mean == pytest.approx(86.0)
    assert first.row("none").cells["synth_pose"].values == second.row("none").cells["synth_pose"].values
    assert first.row("none").cells["synth_pose"].values == pytest.approx([80.0, 81.0, 79.0, 80.0])
    markdown = to_markdown(tables)
    assert (
        "### verification accuracy (%) on synthetic — precision bf16-mixed; generator_version 4" in markdown
    )
    groups = {r["group"] for r in csv.DictReader(io.StringIO(to_csv(tables)))}
    assert groups == {t.group for t in tables}


def test_cost_columns():
    runs = [_run("none", 0, 80.0, 70.0), _run("none", 1, 81.0, 71.0, fit_time_s=7300.0, peak_memory_mib=None)]
    (table,) = build_tables(runs)
    cost = table.row("none").cost
    assert cost["fit_time_s"].mean == pytest.approx((100.0 + 7300.0) / 2)
    assert cost["train_images_per_s"].values == pytest.approx([32000 / 100.0, 32000 / 7300.0])
    assert cost["peak_memory_mib"].values == [1000.0]  # from the run that recorded it
    assert format_cost("fit_time_s", Stat([90.0])) == "90 s"
    assert format_cost("fit_time_s", Stat([600.0])) == "10.0 min"
    assert format_cost("fit_time_s", Stat([9000.0])) == "2.5 h"
    assert format_cost("train_images_per_s", Stat([12.34])) == "12.3"
    assert format_cost("peak_memory_mib", None) == "—"
    # nothing recorded: no cost columns
    bare = _run("none", 0, 80.0, 70.0, fit_time_s=None, train_batch_size=None, peak_memory_mib=None)
    (plain,) = build_tables([bare])
    assert plain.cost_columns == [] and "Fit time" not in to_markdown(plain)
    # no batch size: no images/s
    (partial,) = build_tables([_run("none", 0, 80.0, 70.0, train_batch_size=None)])
    assert [key for key, _ in partial.cost_columns] == ["fit_time_s", "peak_memory_mib"]


def test_new_record_fields_round_trip(tmp_path):
    import json

    from ekd.report import load_results, write_results

    path = write_results(tmp_path / "run", _run("kd", 0, 85.0, 71.0))
    data = json.loads(path.read_text())
    assert (data["train_batch_size"], data["peak_memory_mib"], data["data_record"]) == (64, 1000.0, DATA)
    read = load_results(path)
    assert (read.train_batch_size, read.peak_memory_mib, read.data_record) == (64, 1000.0, DATA)
    # files written before these fields existed read as not recorded
    for key in ("train_batch_size", "peak_memory_mib", "data_record"):
        del data[key]
    path.write_text(json.dumps(data))
    read = load_results(path)
    assert (read.train_batch_size, read.peak_memory_mib, read.data_record) == (None, None, None)
