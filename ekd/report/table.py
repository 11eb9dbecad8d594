"""The comparison table of distillation methods, built from ``results.json`` files.

**Tables.** One table per training dataset and, within it, per set of runs that may be averaged
together (see *Comparable runs*). Rows are (student, method) pairs -- the teacher first, then per
student the no-KD baseline and the methods in the order of the EKD paper's Table 2 -- and columns are
the verification sets (LFW, CFP-FP, CPLFW, AgeDB, CALFW for real data, the synthetic sets for
synthetic runs), the 1:1 template sets' TPR@FPR when present (the paper's IJB-C@1e-4, IJB-C@1e-5,
IJB-B@1e-4, and ``SynthIJB@<fpr>`` for the synthetic IJB-style set ``synth_ijb``, one column per FPR
some run recorded), and ``Avg``, the mean over the verification-set columns (template columns are not
part of it), computed per run first so that its spread is that of the runs' averages. Values are
percentages. The paper's numbers (Table 2 of the EKD paper, shipped as ``paper_tables.csv``) stand
alongside for the MobileFaceNet rows and the ResNet50 teacher; ``Paper dAvg`` is the paper's average
gain of the method over its no-KD student, a reference for the direction and size of the effect when
the columns themselves are not comparable (synthetic data, another student).

**Statistics.** Every cell aggregates the n finished runs of its row (normally one per seed), values
v_1..v_n, in float64:

    mean  = (1/n) sum_i v_i
    std   = s = sqrt( sum_i (v_i - mean)^2 / (n - 1) )          sample std; none for n = 1
    ci95  = t_{0.975, n-1} * s / sqrt(n)                         half-width of the two-sided 95 %
                                                                 t interval mean +- ci95; none for n = 1
    delta = mean(row) - mean(no-KD row of the same student)      percentage points

and each method row is tested against the no-KD row of its student, per column, by Welch's t-test
over seeds (row a: mean m_a, std s_a, n_a runs; no-KD row b):

    se    = sqrt( s_a^2 / n_a + s_b^2 / n_b )
    t     = delta / se
    df    = se^4 / ( (s_a^2/n_a)^2 / (n_a - 1) + (s_b^2/n_b)^2 / (n_b - 1) )   (Welch-Satterthwaite)
    p     = 2 * (1 - F_t(|t|; df))                                two-sided; F_t the t distribution's CDF
    delta_ci95 = t_{0.975, df} * se                               95 % interval of the difference

There is no test (empty p) when either row has fewer than 2 runs, or when neither row varies
(se = 0); the table says which rows were not tested. The teacher row and the no-KD rows themselves
are not tested (the teacher keeps its difference to a single no-KD student as a reference).

**Multiple comparisons.** The family is the table: every test of every method row in every column
shown (verification sets, template-set TPRs and ``Avg``), m tests in all, adjusted together by Holm's
step-down method: with the p-values sorted p_(1) <= ... <= p_(m),
``p_holm_(i) = max_{j <= i} min(1, (m - j + 1) p_(j))``. Holm controls the family-wise error rate
under any dependence between the tests (``Avg`` depends on the other columns, the columns share runs),
so adjusting per table rather than per column is the conservative choice: a mark means the
difference holds even after accounting for every comparison the table makes. Significance marks on
the difference come from p_holm: ``*`` < 0.05, ``**`` < 0.01, ``***`` < 0.001; the legend under each
table says so and gives m. The t distribution is :mod:`scipy.stats`'.

**Comparable runs.** Runs are averaged together only when they were scored alike and distilled from
the same teacher. Within a dataset, runs are split into separate tables by (1) ``eval_protocol`` as a
whole (embedding precision, pair-set protocol, IJB protocol; files without it form a group of their
own, "eval protocol not recorded"), (2) ``data_record`` (for synthetic data the generator version
and its arguments; keys ``root`` and ``path`` are ignored) and (3) the teacher of the distilled runs
(``teacher`` with ``teacher_sha256``, or its checkpoint path when no hash was recorded). Runs without
a teacher (no-KD students) appear in every teacher's table; the teacher's own run (method
``teacher``) appears in the table of the teacher whose checkpoint lies in its run folder, or in every
table when it matches none. Each split table's title names what sets it apart (``group``). Failed runs
record no protocol: each joins the first table of its data and teacher that holds finished runs of
its row (else the first table of its data and teacher). Splitting (rather than refusing) keeps every
run visible while never averaging incomparable numbers.

**Cost.** Per row, means over its finished runs of: ``Fit time`` (``fit_time_s``, seconds in
``Trainer.fit``), ``Train img/s`` (``train_images_per_s``: images trained in the run's last fit per
second of it; for older files ``global_step * train_batch_size / fit_time_s``) and ``Peak mem``
(``peak_memory_mib``, MiB). A cost column is shown when some row of the table has it.

Runs whose fit failed (``status: "failed"`` in results.json) contribute no values: each row counts
them (``Runs`` is ``2 (+1 failed)``), a row whose runs all failed still appears without values, and
the failed runs are listed under the table with their folder and the exception.

**Outputs.** Markdown (``mean ± std (delta marks) [paper]``), CSV (long form, one line per row x
column -- ``column`` names the column, ``metric`` its metric -- with n, failed, seeds, mean, std, delta,
paper, ci95, p_value, p_holm, delta_ci95, the row's cost and the table's ``group``; a row without
values has one line with an empty column), LaTeX (booktabs, marks as superscripts, the legend as the
table's last line; failed runs as comments under the table), a bar chart PNG (95 % intervals as error
bars, inside the axes) and a ``wandb.Table`` of the CSV.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import warnings
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from ekd.report.results import ResultsError, RunResults

# Verification sets of the paper, in its column order: results key -> column label.
PAPER_SETS: dict[str, str] = {
    "lfw": "LFW",
    "cfp_fp": "CFP-FP",
    "cplfw": "CPLFW",
    "agedb_30": "AgeDB",
    "calfw": "CALFW",
}


@dataclass(frozen=True)
class TemplateSet:
    """A 1:1 template set (IJB style): TPR at fixed FPRs, its own columns, never part of ``Avg``."""

    key: str  # results key, normalised (lower case, no '-' or '_')
    label: str  # column label prefix: ``<label>@<fpr>``
    fprs: tuple[str, ...]  # the FPR keys of its columns, in column order
    always: bool  # True: every FPR column whenever the set is present (the paper's); False: those recorded


# Template sets in column order: the paper's IJB columns (IJB-C@1e-4, IJB-C@1e-5, IJB-B@1e-4), then the
# synthetic IJB-style set of the synthetic benchmark.
TEMPLATE_SETS: tuple[TemplateSet, ...] = (
    TemplateSet("ijbc", "IJB-C", ("1e-4", "1e-5"), True),
    TemplateSet("ijbb", "IJB-B", ("1e-4",), True),
    TemplateSet("synthijb", "SynthIJB", ("1e-3", "1e-4", "1e-5"), False),
)
PAPER_TEMPLATE_SETS = ("ijbb", "ijbc")
# (results key, FPR key, label) of the paper's IJB columns
IJB_COLUMNS: tuple[tuple[str, str, str], ...] = tuple(
    (s.key, fpr, f"{s.label}@{fpr}") for s in TEMPLATE_SETS if s.key in PAPER_TEMPLATE_SETS for fpr in s.fprs
)
# Rows are ordered, labelled and matched to the paper's rows by what each run recorded in results.json
# (``order``, ``label``, ``paper_row``: the method file's, see conf/distill); the paper's no-KD row is the
# baseline of its average gain. The paper's student is MobileFaceNet and its teacher an (i)ResNet50.
PAPER_BASELINE_ROW = "MobileFaceNet (no KD)"
PAPER_STUDENT = "mobilefacenet"
PAPER_TEACHER = "iresnet50"
NO_KD = "none"
TEACHER = "teacher"
AVERAGE = "Avg"

CONFIDENCE = 0.95
# significance marks from the Holm-adjusted p-value: (threshold, mark), strictest first
SIGNIFICANCE: tuple[tuple[float, str], ...] = ((0.001, "***"), (0.01, "**"), (0.05, "*"))

# cost columns: (key of Row.cost, Markdown / LaTeX header)
COST_COLUMNS: tuple[tuple[str, str], ...] = (
    ("fit_time_s", "Fit time"),
    ("train_images_per_s", "Train img/s"),
    ("peak_memory_mib", "Peak mem (MiB)"),
)


def _normalise_set(name: str) -> str:
    return name.lower().replace("-", "_")


def _template_key(name: str) -> str | None:
    compact = name.lower().replace("-", "").replace("_", "")
    return compact if any(compact == s.key for s in TEMPLATE_SETS) else None


def _ijb_key(name: str) -> str | None:
    key = _template_key(name)
    return key if key in PAPER_TEMPLATE_SETS else None


def load_paper_table(table: str = "table2") -> dict[str, dict[str, float]]:
    """Rows of the shipped paper table: method name -> {column label: value in %} (blank cells left out)."""
    text = resources.files("ekd.report").joinpath("paper_tables.csv").read_text()
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    rows: dict[str, dict[str, float]] = {}
    for record in csv.DictReader(lines):
        if record["table"] != table:
            continue
        values = {}
        for key, value in record.items():
            if key in ("table", "method", "venue") or value in (None, ""):
                continue
            values[key] = float(value)
        rows[record["method"]] = values
    if not rows:
        raise ResultsError(f"paper_tables.csv has no rows for table {table!r}")
    return rows


# ----------------------------------------------------------------------------------------- statistics


def t_quantile(q: float, df: float) -> float:
    """The ``q`` quantile of Student's t distribution with ``df`` degrees of freedom."""
    from scipy import stats

    return float(stats.t.ppf(q, df))


def t_two_sided_p(t: float, df: float) -> float:
    """Two-sided p-value of statistic ``t`` under Student's t with ``df`` degrees of freedom."""
    from scipy import stats

    return float(min(1.0, 2.0 * stats.t.sf(abs(t), df)))


def _mean(values: Sequence[float]) -> float:
    return math.fsum(values) / len(values)


def _variance(values: Sequence[float]) -> float:
    mean = _mean(values)
    return math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1)


def confidence_halfwidth(values: Sequence[float], confidence: float = CONFIDENCE) -> float | None:
    """Half-width of the two-sided t interval of the mean: ``t_{(1+c)/2, n-1} s / sqrt(n)``; None for
    fewer than 2 values."""
    n = len(values)
    if n < 2:
        return None
    return t_quantile(0.5 + confidence / 2, n - 1) * math.sqrt(_variance(values) / n)


@dataclass(frozen=True)
class Welch:
    """Welch's t-test of mean(a) - mean(b) (see the module docstring for the formulas)."""

    delta: float  # mean(a) - mean(b)
    se: float  # standard error of the difference
    t: float
    df: float  # Welch-Satterthwaite degrees of freedom
    p_value: float  # two-sided
    ci95: float  # half-width of the 95 % interval of delta: t_{0.975, df} * se
    p_holm: float | None = None  # Holm-adjusted over the table's tests (set by the table)


def welch_test(a: Sequence[float], b: Sequence[float]) -> Welch | None:
    """Welch's two-sided t-test of the means of ``a`` and ``b``; None when either has fewer than 2
    values or neither varies (standard error 0)."""
    if len(a) < 2 or len(b) < 2:
        return None
    return welch_from_summary(_mean(a), _variance(a), len(a), _mean(b), _variance(b), len(b))


def welch_from_summary(
    mean_a: float, var_a: float, n_a: int, mean_b: float, var_b: float, n_b: int
) -> Welch | None:
    """Welch's test from each side's mean, sample variance (n - 1 denominator) and count, as a table's
    ``mean``, ``std`` and ``n`` give them; None under the conditions of :func:`welch_test`."""
    if n_a < 2 or n_b < 2:
        return None
    sq_a, sq_b = var_a / n_a, var_b / n_b
    se2 = sq_a + sq_b
    if se2 <= 0.0:
        return None
    se = math.sqrt(se2)
    delta = mean_a - mean_b
    t = delta / se
    df = se2**2 / (sq_a**2 / (n_a - 1) + sq_b**2 / (n_b - 1))
    half = t_quantile(0.5 + CONFIDENCE / 2, df) * se
    return Welch(delta=delta, se=se, t=t, df=df, p_value=t_two_sided_p(t, df), ci95=half)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment, in the input order: with p sorted ascending,
    ``p_holm_(i) = max_{j <= i} min(1, (m - j + 1) p_(j))``."""
    m = len(p_values)
    adjusted = [0.0] * m
    running = 0.0
    for rank, index in enumerate(sorted(range(m), key=lambda i: p_values[i])):
        running = max(running, min(1.0, (m - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted


def significance_mark(p: float | None) -> str:
    """``***`` / ``**`` / ``*`` for p below 0.001 / 0.01 / 0.05, else (or without a test) ``""``."""
    if p is None:
        return ""
    for threshold, mark in SIGNIFICANCE:
        if p < threshold:
            return mark
    return ""


def significance_legend() -> str:
    return ", ".join(f"{mark} p < {threshold:g}" for threshold, mark in reversed(SIGNIFICANCE))


# ------------------------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class Column:
    """A table column: ``metric`` of verification set ``set_key`` (``tpr@<fpr>``, ``accuracy``, ...)."""

    set_key: str
    metric: str
    label: str
    in_average: bool  # verification-set columns make up Avg; template-set (IJB) columns do not


@dataclass
class Stat:
    """The values of one cell: their mean, sample std and 95 % interval (None for a single run)."""

    values: list[float]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return _mean(self.values)

    @property
    def std(self) -> float | None:
        if len(self.values) < 2:
            return None
        return math.sqrt(_variance(self.values))

    @property
    def ci95(self) -> float | None:
        """Half-width of the 95 % t interval of the mean (None for a single run)."""
        return confidence_halfwidth(self.values)


@dataclass(frozen=True)
class FailedRun:
    """A run of a row whose fit raised: its seed, its folder and the recorded ``error``."""

    seed: int
    folder: str
    error: Mapping[str, Any]

    @property
    def reason(self) -> str:
        """``Type at step N: first line of the message`` (the parts that were recorded)."""
        kind = str(self.error.get("type") or "error")
        step = self.error.get("step")
        message = str(self.error.get("message") or "").strip().splitlines()
        text = kind if step is None else f"{kind} at step {step}"
        if message:
            # one line: the reason goes into list items and LaTeX comments
            first = message[0] if len(message[0]) <= REASON_CHARS else message[0][: REASON_CHARS - 1] + "…"
            text += f": {first}"
        return text


REASON_CHARS = 300


@dataclass
class Row:
    method: str
    student: str
    student_label: str
    teacher: str | None
    label: str
    order: float = 0.0
    paper_row: str | None = None
    seeds: list[int] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)  # results files of the finished runs
    failed: list[FailedRun] = field(default_factory=list)  # runs whose fit raised (no values)
    cells: dict[str, Stat] = field(default_factory=dict)  # column label (and Avg) -> values
    delta: dict[str, float] = field(default_factory=dict)  # column label -> mean - no-KD mean
    tests: dict[str, Welch] = field(default_factory=dict)  # column label -> test against no-KD
    untested: dict[str, str] = field(default_factory=dict)  # column label -> why there is no test
    cost: dict[str, Stat] = field(default_factory=dict)  # COST_COLUMNS key -> values of the runs
    paper: dict[str, float] = field(default_factory=dict)  # column label (and Avg) -> paper value
    paper_delta_avg: float | None = None

    @property
    def n(self) -> int:
        """Finished runs (the ones the cells aggregate)."""
        return len(self.runs)

    @property
    def n_failed(self) -> int:
        return len(self.failed)

    def mark(self, label: str) -> str:
        """The significance mark of column ``label`` (from the Holm-adjusted p; "" without a test)."""
        test = self.tests.get(label)
        return "" if test is None else significance_mark(test.p_holm)


@dataclass
class ComparisonTable:
    dataset: str
    metric: str
    columns: list[Column]
    rows: list[Row]
    notes: list[str] = field(default_factory=list)
    # IJB protocol (+ precision) of the runs with IJB values, as :func:`ijb_protocol_label` names them
    ijb_protocols: list[str] = field(default_factory=list)
    # what sets this table's runs apart from the other tables of its dataset ("" when it is the only one)
    group: str = ""
    # impostor / genuine comparison counts of the synthetic template set, as recorded (min, max)
    template_counts: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def labels(self) -> list[str]:
        """Column labels including the average (when there are columns to average)."""
        labels = [c.label for c in self.columns]
        if any(c.in_average for c in self.columns):
            labels.append(AVERAGE)
        return labels

    @property
    def failures(self) -> list[tuple[Row, FailedRun]]:
        """The failed runs of every row, in row order."""
        return [(row, run) for row in self.rows for run in row.failed]

    @property
    def n_tests(self) -> int:
        """Tests in the table: the size of the Holm family."""
        return sum(len(row.tests) for row in self.rows)

    @property
    def cost_columns(self) -> list[tuple[str, str]]:
        """The cost columns (key, header) some row of the table has."""
        return [(key, header) for key, header in COST_COLUMNS if any(key in row.cost for row in self.rows)]

    def row(self, method: str, student: str | None = None) -> Row:
        """The row of ``method`` (for ``student`` when several students are in the table)."""
        matches = [r for r in self.rows if r.method == method and (student is None or r.student == student)]
        if len(matches) != 1:
            raise KeyError(f"{len(matches)} rows for method={method!r} student={student!r} in {self.dataset}")
        return matches[0]


def _fpr_value(key: str) -> float | None:
    try:
        return float(key)
    except (TypeError, ValueError):
        return None


def _tpr_at(set_metrics: Mapping[str, Any], fpr: str) -> Any:
    """TPR at ``fpr`` from ``tpr_at_fpr`` (key ``1e-4``, or any key of the same number) or a flat
    ``tpr@<fpr>`` key; None when not recorded."""
    table = set_metrics.get("tpr_at_fpr") or {}
    if isinstance(table, Mapping):
        if table.get(fpr) is not None:
            return table[fpr]
        wanted = _fpr_value(fpr)
        for key, value in table.items():
            if value is not None and wanted is not None and _fpr_value(key) == wanted:
                return value
    return set_metrics.get(f"tpr@{fpr}")


def metric_value(set_metrics: Mapping[str, Any], metric: str) -> float | None:
    """One number from a set's metrics, as a percentage: ``accuracy``, ``tpr@1e-4``, ``auc``, ``eer``."""
    value = _tpr_at(set_metrics, metric[4:]) if metric.startswith("tpr@") else set_metrics.get(metric)
    if value is None:
        return None
    return 100.0 * float(value)


def _recorded_fprs(set_metrics: Mapping[str, Any]) -> set[str]:
    """The FPRs of :data:`TEMPLATE_SETS` at which ``set_metrics`` holds a TPR."""
    return {fpr for spec in TEMPLATE_SETS for fpr in spec.fprs if _tpr_at(set_metrics, fpr) is not None}


def _row_label(result: RunResults, student_label: str, several_students: bool) -> str:
    if result.method in (TEACHER, NO_KD):
        return f"{student_label} ({result.label})"
    return f"{result.label} ({student_label})" if several_students else result.label


def _columns(results: Sequence[RunResults], metric: str) -> list[Column]:
    present: dict[str, None] = {}  # insertion-ordered set: other sets keep the order the runs list them
    templates: dict[str, set[str]] = {}  # template set key -> FPRs some run recorded
    for result in results:
        for name, values in result.metrics.items():
            key = _template_key(name)
            if key:
                templates.setdefault(key, set()).update(_recorded_fprs(values or {}))
            else:
                present.setdefault(_normalise_set(name), None)
    columns = [Column(key, metric, label, True) for key, label in PAPER_SETS.items() if key in present]
    columns += [Column(key, metric, key, True) for key in present if key not in PAPER_SETS]
    for spec in TEMPLATE_SETS:
        if spec.key in templates:
            fprs = spec.fprs if spec.always else [fpr for fpr in spec.fprs if fpr in templates[spec.key]]
            columns += [Column(spec.key, f"tpr@{fpr}", f"{spec.label}@{fpr}", False) for fpr in fprs]
    return columns


def ijb_protocol_label(result: RunResults) -> str:
    """How a run scored IJB, for captions: ``tface, 32-true``; ``not recorded`` for files written
    before ekd recorded it (``eval_protocol`` null: the insightface protocol then)."""
    record = result.eval_protocol or {}
    ijb = record.get("ijb") or {}
    label = ijb.get("label") or ijb.get("preset")
    if not label:
        return "not recorded"
    precision = record.get("precision")
    return f"{label}, {precision}" if precision else str(label)


def _count_range(low: int, high: int) -> str:
    return f"{low:,}" if low == high else f"{low:,}-{high:,}"


def ijb_caption(table: ComparisonTable) -> str | None:
    """The caption sentence(s) of a table with template-set columns (None without them)."""
    keys = {column.set_key for column in table.columns if not column.in_average}
    sentences = []
    if keys & set(PAPER_TEMPLATE_SETS):
        protocols = " / ".join(table.ijb_protocols) or "not recorded"
        sentences.append(
            f"IJB columns: TPR (%) at the FPR named, IJB-B/C 1:1 protocol {protocols} (docs/methods.md)."
        )
    if "synthijb" in keys:
        counts = table.template_counts
        sizes = [
            f"{_count_range(*counts[kind])} {kind} comparisons"
            for kind in ("impostor", "genuine")
            if kind in counts
        ]
        sentences.append(
            "SynthIJB columns: TPR (%) at the FPR named on the synthetic IJB-style 1:1 template set"
            + (f" ({' / '.join(sizes)})" if sizes else "")
            + "; not part of Avg."
        )
    return " ".join(sentences) or None


def _set_metrics(result: RunResults, set_key: str) -> Mapping[str, Any] | None:
    for name, values in result.metrics.items():
        if _normalise_set(name) == set_key or _template_key(name) == set_key:
            return values
    return None


def _order_key(row: Row) -> tuple:
    # the teacher first, then the rows of each student together, in the methods' recorded order
    return (row.method != TEACHER, row.student, row.order, row.method)


def run_cost(result: RunResults) -> dict[str, float]:
    """A finished run's cost: ``fit_time_s``, ``train_images_per_s`` (as recorded; for older files
    ``global_step x train_batch_size / fit_time_s``) and ``peak_memory_mib``, those it recorded."""

    def finite(value: Any) -> float | None:
        if value is None or isinstance(value, bool):
            return None
        value = float(value)
        return value if math.isfinite(value) else None

    cost: dict[str, float] = {}
    fit = finite(result.fit_time_s)
    if fit is not None:
        cost["fit_time_s"] = fit
    measured = finite(result.train_images_per_s)
    steps, batch = finite(result.global_step), finite(result.train_batch_size)
    if measured is not None:
        cost["train_images_per_s"] = measured
    elif fit and fit > 0 and steps is not None and batch:  # files without the measured rate
        cost["train_images_per_s"] = steps * batch / fit
    peak = finite(result.peak_memory_mib)
    if peak is not None:
        cost["peak_memory_mib"] = peak
    return cost


# ------------------------------------------------------------------------------ comparable runs


IGNORED_DATA_KEYS = ("root", "path")  # where the data lies does not change what it is


def machine_label(result: RunResults) -> str:
    """``cpu [capability] + accelerator`` from a run's ``machine`` record; "machine not recorded" for
    files written before ekd recorded it."""
    machine = result.machine
    if not machine:
        return "machine not recorded"
    label = f"{machine.get('cpu')} [{machine.get('cpu_capability')}]"
    return label + (f" + {machine['accelerator']}" if machine.get("accelerator") else "")


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _eval_key(result: RunResults) -> str | None:
    return None if result.eval_protocol is None else _canonical(result.eval_protocol)


def _data_fields(result: RunResults) -> dict[str, Any] | None:
    if result.data_record is None:
        return None
    return {k: v for k, v in result.data_record.items() if k not in IGNORED_DATA_KEYS}


def _data_key(result: RunResults) -> str | None:
    fields = _data_fields(result)
    return None if fields is None else _canonical(fields)


def teacher_key(result: RunResults) -> tuple[str, str] | None:
    """The teacher a run was distilled from: (name, sha256 of its file, else its checkpoint path);
    None for runs without a teacher."""
    if result.teacher is None:
        return None
    return (result.teacher, result.teacher_sha256 or result.teacher_checkpoint or "")


def _teacher_text(key: tuple[str, str]) -> str:
    name, which = key
    if not which:
        return name
    is_hash = len(which) == 64 and all(ch in "0123456789abcdef" for ch in which.lower())
    return f"{name} (sha256 {which[:12]})" if is_hash else f"{name} ({which})"


@dataclass
class _Group:
    """Runs that may be averaged together (see the module docstring's *Comparable runs*)."""

    eval_protocol: dict[str, Any] | None
    data: dict[str, Any] | None
    teacher: tuple[str, str] | None
    runs: list[RunResults]
    eval_known: bool = True  # False for a group of failed runs only (they record no protocol)

    def holds_row(self, result: RunResults) -> bool:
        return any(
            (r.student, r.method) == (result.student, result.method) for r in self.runs if not r.failed
        )


def _within(path: str | None, folder: str | None) -> bool:
    if not path or not folder:
        return False
    try:
        return Path(path).is_relative_to(Path(folder))
    except (TypeError, ValueError):
        return False


def _split_by_teacher(runs: list[RunResults]) -> list[tuple[tuple[str, str] | None, list[RunResults]]]:
    teachers: dict[tuple[str, str], set[str]] = {}  # teacher key -> checkpoints its runs name
    for result in runs:
        key = teacher_key(result)
        if key is not None:
            teachers.setdefault(key, set()).add(result.teacher_checkpoint or "")
    if len(teachers) <= 1:
        return [(next(iter(teachers), None), runs)]
    groups = []
    for key in teachers:
        members = []
        for result in runs:
            if result.teacher is not None:
                if teacher_key(result) == key:
                    members.append(result)
            elif result.method == TEACHER:
                # the teacher's own run: in the table of the teacher it produced, or in all of them
                owners = [
                    k for k, files in teachers.items() if any(_within(f, result.output_dir) for f in files)
                ]
                if not owners or key in owners:
                    members.append(result)
            else:
                members.append(result)  # no teacher (no-KD): the baseline of every teacher's table
        groups.append((key, members))
    return groups


def split_comparable(results: Sequence[RunResults]) -> list[tuple[str, list[RunResults]]]:
    """The runs of one dataset in groups that may be averaged together, each with a description of
    what sets it apart from the others (``""`` when there is one group); see the module docstring."""
    base: dict[tuple[str | None, str | None], list[RunResults]] = {}
    for result in results:
        if not result.failed:
            base.setdefault((_eval_key(result), _data_key(result)), []).append(result)
    groups: list[_Group] = []
    for runs in base.values():
        for key, members in _split_by_teacher(runs):
            groups.append(_Group(members[0].eval_protocol, _data_fields(members[0]), key, members))
    for result in results:
        if not result.failed:
            continue
        key, data = teacher_key(result), _data_key(result)
        matches = [
            g
            for g in groups
            if (None if g.data is None else _canonical(g.data)) == data
            and (key is None or g.teacher is None or g.teacher == key)
        ]
        with_row = [g for g in matches if g.holds_row(result)]
        if with_row or matches:
            (with_row or matches)[0].runs.append(result)
        else:
            groups.append(_Group(None, _data_fields(result), key, [result], eval_known=False))
    if len(groups) == 1:
        return [("", groups[0].runs)]
    return list(zip(_describe(groups), (g.runs for g in groups)))


def _eval_facets(protocol: Mapping[str, Any]) -> dict[str, tuple[str, str]]:
    """Facet name -> (value compared, value shown) of a recorded eval protocol."""
    facets = {}
    for key, value in protocol.items():
        if key == "precision":
            facets["precision"] = (str(value), str(value))
        elif key == "pair_sets" and isinstance(value, Mapping):
            shown = ", ".join(f"{k} {v}" for k, v in sorted(value.items()))
            facets["pair sets"] = (_canonical(value), shown)
        elif key == "ijb":
            label = (value.get("label") or value.get("preset")) if isinstance(value, Mapping) else None
            shown = "none" if not value else str(label or _canonical(value))
            facets["IJB"] = (_canonical(value), shown)
        else:
            facets[f"eval {key}"] = (_canonical(value), _canonical(value))
    return facets


Facets = dict[str, tuple[str, str]]


def _section(records: Sequence[tuple[Facets | None, str]], salient: str, fallback: str) -> list[list[str]]:
    """Per group, the ``name value`` parts of one aspect (eval protocol, data) that set it apart.

    ``records``: per group its facets, or None with the text saying it was not recorded. Shown: the
    facets whose values differ between the recorded groups; "not recorded" for the unrecorded groups
    when others recorded it, and then the ``salient`` facet (or ``fallback``) for the recorded ones
    whose facets do not differ among themselves."""
    recorded = [facets for facets, _ in records if facets is not None]
    names = list(dict.fromkeys(name for facets in recorded for name in facets))
    differing = [n for n in names if len({facets.get(n, (None, ""))[0] for facets in recorded}) > 1]
    mixed = 0 < len(recorded) < len(records)
    parts = []
    for facets, unrecorded in records:
        if facets is None:
            parts.append([unrecorded] if mixed else [])
        elif differing:
            parts.append([f"{name} {facets[name][1]}" for name in differing if name in facets])
        elif mixed:
            parts.append([f"{salient} {facets[salient][1]}" if salient in facets else fallback])
        else:
            parts.append([])
    return parts


def _describe(groups: Sequence[_Group]) -> list[str]:
    """Per group: what sets it apart from the other groups of its dataset (``name value; ...``): its
    eval protocol, its data record and its teacher, where these differ."""
    evals = _section(
        [
            (
                None if g.eval_protocol is None or not g.eval_known else _eval_facets(g.eval_protocol),
                "eval protocol not recorded" + ("" if g.eval_known else " (failed runs only)"),
            )
            for g in groups
        ],
        salient="precision",
        fallback="eval protocol recorded",
    )
    data = _section(
        [
            (
                None if g.data is None else {k: (_canonical(v), str(v)) for k, v in sorted(g.data.items())},
                "data record not recorded",
            )
            for g in groups
        ],
        salient="generator_version",
        fallback="data record recorded",
    )
    # the teacher sets a group apart only from groups with another teacher (no-KD runs have none)
    teachers = {g.teacher for g in groups if g.teacher is not None}
    parts = []
    for group, eval_parts, data_parts in zip(groups, evals, data):
        teacher = [f"teacher {_teacher_text(group.teacher)}"] if len(teachers) > 1 and group.teacher else []
        parts.append("; ".join(eval_parts + data_parts + teacher))
    return parts


# ------------------------------------------------------------------------------------------- building


def build_tables(results: Iterable[RunResults], metric: str = "accuracy") -> list[ComparisonTable]:
    """:class:`ComparisonTable` per dataset of ``results`` and, within a dataset, per group of runs
    that may be averaged together (see the module docstring)."""
    by_dataset: dict[str, list[RunResults]] = defaultdict(list)
    for result in results:
        by_dataset[result.dataset].append(result)
    if not by_dataset:
        raise ResultsError("no results to tabulate")
    paper = load_paper_table("table2")
    tables = []
    for dataset, runs in sorted(by_dataset.items()):
        for group, members in split_comparable(runs):
            tables.append(_build_table(dataset, members, metric, paper, group))
    return tables


def _build_table(
    dataset: str,
    results: list[RunResults],
    metric: str,
    paper: Mapping[str, Mapping[str, float]],
    group: str = "",
) -> ComparisonTable:
    columns = _columns(results, metric)
    averaged = [c for c in columns if c.in_average]
    students = {r.student for r in results if r.method != TEACHER}
    notes: list[str] = []
    rows: dict[tuple[str, str], Row] = {}
    ijb_keys = {c.set_key for c in columns if c.set_key in PAPER_TEMPLATE_SETS}
    ijb_protocols: dict[str, None] = {}  # insertion-ordered set
    counts: dict[str, list[int]] = defaultdict(list)  # synthetic template set: impostor / genuine counts
    machines: dict[str, int] = defaultdict(int)  # machine label -> finished runs
    for result in results:
        key = (result.student, result.method)
        if key not in rows:
            student_label = result.student_label or result.student
            rows[key] = Row(
                method=result.method,
                student=result.student,
                student_label=student_label,
                teacher=result.teacher,
                label=_row_label(result, student_label, len(students) > 1),
                order=result.order,
                paper_row=result.paper_row,
            )
        row = rows[key]
        if result.failed:
            folder = str(Path(result.path).parent) if result.path else (result.output_dir or "?")
            row.failed.append(FailedRun(result.seed, folder, result.error or {}))
            continue  # a failed record has no metrics
        if result.seed in row.seeds:
            notes.append(f"{row.label}: seed {result.seed} appears in more than one run; all are averaged")
        row.seeds.append(result.seed)
        row.runs.append(result.path or "")
        machines[machine_label(result)] += 1
        if any(_set_metrics(result, key) is not None for key in ijb_keys):
            ijb_protocols.setdefault(ijb_protocol_label(result), None)
        synthetic_ijb = _set_metrics(result, "synthijb") or {}
        for kind, name in (("impostor", "impostors"), ("genuine", "genuine")):
            if isinstance(synthetic_ijb.get(name), (int, float)):
                counts[kind].append(int(synthetic_ijb[name]))
        for name, value in run_cost(result).items():
            row.cost.setdefault(name, Stat([])).values.append(value)
        run_values = []
        for column in columns:
            set_metrics = _set_metrics(result, column.set_key)
            value = None if set_metrics is None else metric_value(set_metrics, column.metric)
            if value is None:
                continue
            row.cells.setdefault(column.label, Stat([])).values.append(value)
            if column.in_average:
                run_values.append(value)
        if averaged and len(run_values) == len(averaged):
            row.cells.setdefault(AVERAGE, Stat([])).values.append(math.fsum(run_values) / len(run_values))
    for row in rows.values():
        if AVERAGE in row.cells and row.cells[AVERAGE].n != row.n:
            notes.append(
                f"{row.label}: {AVERAGE} uses the {row.cells[AVERAGE].n} of {row.n} runs with every set"
            )
        cells_n = {label: stat.n for label, stat in row.cells.items()}
        if any(n != row.n for n in cells_n.values()):
            notes.append(f"{row.label}: some sets are missing from some runs ({cells_n} of {row.n} runs)")
    if len(machines) > 1:
        listed = "; ".join(f"{label}: {n} run{'s' * (n != 1)}" for label, n in machines.items())
        notes.append(
            f"the runs come from {len(machines)} machines ({listed}): training time and images/s compare "
            "only within one, and a seed need not train the same on both"
        )

    ordered = sorted(rows.values(), key=_order_key)
    _fill_deltas(ordered, notes)
    _fill_tests(ordered, notes)
    if metric == "accuracy":
        _fill_paper(ordered, columns, paper)
    return ComparisonTable(
        dataset=dataset,
        metric=metric,
        columns=columns,
        rows=ordered,
        notes=notes,
        ijb_protocols=list(ijb_protocols),
        group=group,
        template_counts={kind: (min(values), max(values)) for kind, values in counts.items()},
    )


def _fill_deltas(rows: list[Row], notes: list[str]) -> None:
    baselines = {row.student: row for row in rows if row.method == NO_KD}
    for row in rows:
        if row.method == NO_KD:
            continue
        baseline = baselines.get(row.student)
        if row.method == TEACHER and baseline is None and len(baselines) == 1:
            baseline = next(iter(baselines.values()))  # the teacher's gap to the one student
        if baseline is None:
            if row.method != TEACHER:
                notes.append(f"{row.label}: no no-KD run of {row.student} in this table, so no deltas")
            continue
        for label, stat in row.cells.items():
            if label in baseline.cells:
                row.delta[label] = stat.mean - baseline.cells[label].mean


def _fill_tests(rows: list[Row], notes: list[str]) -> None:
    """Welch's test of every method row against the no-KD row of its student, per column, then
    Holm's adjustment over all of the table's tests; notes name the rows that could not be tested."""
    baselines = {row.student: row for row in rows if row.method == NO_KD}
    family: list[tuple[Row, str]] = []
    for row in rows:
        baseline = baselines.get(row.student)
        if row.method in (NO_KD, TEACHER) or baseline is None:
            continue
        for label, stat in row.cells.items():
            other = baseline.cells.get(label)
            if other is None:
                continue
            test = welch_test(stat.values, other.values)
            if test is not None:
                row.tests[label] = test
                family.append((row, label))
            elif stat.n < 2:
                row.untested[label] = "fewer than 2 runs in the row"
            elif other.n < 2:
                row.untested[label] = "fewer than 2 runs in the no-KD row"
            else:
                row.untested[label] = "no spread in either row"
    adjusted = holm([row.tests[label].p_value for row, label in family])
    for (row, label), p_holm in zip(family, adjusted):
        row.tests[label] = dataclasses.replace(row.tests[label], p_holm=p_holm)
    by_reason: dict[str, list[str]] = defaultdict(list)
    for row in rows:
        reasons = dict.fromkeys(row.untested.values())
        for reason in reasons:
            labels = [label for label, why in row.untested.items() if why == reason]
            whole = len(labels) == len(row.untested) and not row.tests
            by_reason[reason].append(row.label if whole else f"{row.label} ({', '.join(labels)})")
    for reason, names in by_reason.items():
        notes.append(f"no Welch test, {reason} (empty p, no mark): {', '.join(names)}")


def _paper_average(values: Mapping[str, float]) -> float | None:
    if all(label in values for label in PAPER_SETS.values()):
        return math.fsum(values[label] for label in PAPER_SETS.values()) / len(PAPER_SETS)
    return None


def _fill_paper(rows: list[Row], columns: list[Column], paper: Mapping[str, Mapping[str, float]]) -> None:
    baseline_avg = _paper_average(paper.get(PAPER_BASELINE_ROW, {}))
    paper_labels = {c.label for c in columns if c.set_key in PAPER_SETS or c.set_key in PAPER_TEMPLATE_SETS}
    for row in rows:
        name = row.paper_row
        if name is None or name not in paper:
            continue
        values = paper[name]
        average = _paper_average(values)
        if average is not None and baseline_avg is not None and row.method != TEACHER:
            row.paper_delta_avg = average - baseline_avg if row.method != NO_KD else 0.0
        comparable = row.student == PAPER_TEACHER if row.method == TEACHER else row.student == PAPER_STUDENT
        if not comparable:
            continue
        for label in paper_labels:
            if label in values:
                row.paper[label] = values[label]
        # the paper's average is over its five sets: comparable only when the table averages the same five
        if average is not None and {c.set_key for c in columns if c.in_average} == set(PAPER_SETS):
            row.paper[AVERAGE] = average


# ----------------------------------------------------------------------------------------------- output


def _fmt(value: float | None, signed: bool = False) -> str:
    if value is None:
        return ""
    return f"{value:+.2f}" if signed else f"{value:.2f}"


def format_cell(row: Row, label: str, paper: bool = True) -> str:
    """``mean ± std (delta marks) [paper]`` with the parts that exist."""
    stat = row.cells.get(label)
    text = "—" if stat is None else _fmt(stat.mean)
    if stat is not None and stat.std is not None:
        text += f" ± {_fmt(stat.std)}"
    if label in row.delta:
        text += f" ({_fmt(row.delta[label], signed=True)}{row.mark(label)})"
    if paper and label in row.paper:
        text += f" [{_fmt(row.paper[label])}]"
    return text


def format_cost(key: str, stat: Stat | None) -> str:
    """A cost cell: the mean over the row's runs (``—`` when none recorded it)."""
    if stat is None:
        return "—"
    value = stat.mean
    if key == "fit_time_s":
        if value < 120:
            return f"{value:.0f} s"
        return f"{value / 60:.1f} min" if value < 7200 else f"{value / 3600:.1f} h"
    if key == "train_images_per_s":
        return f"{value:.0f}" if value >= 100 else f"{value:.1f}"
    return f"{value:.0f}"


def runs_cell(row: Row) -> str:
    """The ``Runs`` cell: finished runs, plus the failed ones when there are any (``2 (+1 failed)``)."""
    return f"{row.n} (+{row.n_failed} failed)" if row.failed else str(row.n)


def failure_lines(table: ComparisonTable) -> list[str]:
    """One ``<row>, seed <s>: <folder> -- <reason>`` line per failed run of ``table``."""
    return [f"{row.label}, seed {run.seed}: {run.folder} -- {run.reason}" for row, run in table.failures]


def _title(table: ComparisonTable) -> str:
    what = "verification accuracy" if table.metric == "accuracy" else table.metric
    title = f"{what} (%) on {table.dataset}"
    return f"{title} — {table.group}" if table.group else title


def statistics_legend(table: ComparisonTable) -> str:
    """The sentence that explains the significance marks (and says when nothing was tested)."""
    if not table.n_tests:
        return (
            "No significance tests: no method row and the no-KD row of its student both have 2 or more "
            "runs in a column."
        )
    return (
        f"Marks: Welch's two-sided t-test over seeds of the difference to the no-KD row of the same "
        f"student, p Holm-adjusted over this table's {table.n_tests} tests: {significance_legend()}; "
        "no mark: not significant or not tested. 95 % confidence intervals: the CSV (ci95, delta_ci95) "
        "and the chart's error bars."
    )


def cost_legend(table: ComparisonTable) -> str | None:
    names = {
        "fit_time_s": "Fit time: seconds in Trainer.fit",
        "train_images_per_s": "Train img/s: training images per second of fit",
        "peak_memory_mib": "Peak mem: the run's peak memory in MiB",
    }
    parts = [names[key] for key, _ in table.cost_columns]
    return f"Cost (means over the runs): {'; '.join(parts)}." if parts else None


def to_markdown(tables: ComparisonTable | Sequence[ComparisonTable]) -> str:
    """Markdown tables with a legend (one section per table)."""
    if isinstance(tables, ComparisonTable):
        tables = [tables]
    parts = []
    for table in tables:
        costs = table.cost_columns
        header = ["Method", "Runs", *table.labels, "Paper ΔAvg", *(name for _, name in costs)]
        lines = [
            f"### {_title(table)}",
            "",
            "| " + " | ".join(header) + " |",
            "|" + "|".join([" --- "] + [" ---: "] * (len(header) - 1)) + "|",
        ]
        for row in table.rows:
            cells = [row.label, runs_cell(row), *(format_cell(row, label) for label in table.labels)]
            cells.append(_fmt(row.paper_delta_avg, signed=True))
            cells += [format_cost(key, row.cost.get(key)) for key, _ in costs]
            lines.append("| " + " | ".join(cells) + " |")
        lines += [
            "",
            "Cells: mean ± sample std over runs (seeds), (difference to the no-KD student, in points), "
            "[the EKD paper's Table 2, MobileFaceNet student / ResNet50 teacher on MS1MV2]. "
            "Paper ΔAvg: the paper's 5-benchmark average of the method minus that of its no-KD student.",
        ]
        caption = ijb_caption(table)
        if caption:
            lines[-1] += " " + caption
        lines += ["", statistics_legend(table)]
        cost = cost_legend(table)
        if cost:
            lines[-1] += " " + cost
        lines += [f"- note: {note}" for note in table.notes]
        if table.failures:
            lines += ["", f"Failed runs ({len(table.failures)}, no values in the table):"]
            lines += [f"- {line}" for line in failure_lines(table)]
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


CSV_FIELDS = (
    "dataset",
    "metric",
    "method",
    "label",
    "student",
    "teacher",
    "column",
    "n",
    "failed",
    "seeds",
    "mean",
    "std",
    "delta",
    "paper",
    "ci95",
    "p_value",
    "p_holm",
    "delta_ci95",
    "fit_time_s",
    "train_images_per_s",
    "peak_memory_mib",
    "group",
)
# CSV fields that hold numbers (the W&B table's numeric columns)
TEXT_FIELDS = frozenset(
    {"dataset", "metric", "method", "label", "student", "teacher", "column", "seeds", "group"}
)
NUMERIC_FIELDS = frozenset(CSV_FIELDS) - TEXT_FIELDS


def _number(value: float | None) -> str:
    return "" if value is None else repr(float(value))


def to_csv(tables: ComparisonTable | Sequence[ComparisonTable]) -> str:
    """Long-form CSV: one line per (row, column), the average included as column ``Avg``; ``metric`` is
    the column's metric (``tpr@<fpr>`` for template-set columns)."""
    if isinstance(tables, ComparisonTable):
        tables = [tables]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for table in tables:
        metrics = {c.label: c.metric for c in table.columns}
        for row in table.rows:
            common = {
                "dataset": table.dataset,
                "metric": table.metric,
                "method": row.method,
                "label": row.label,
                "student": row.student,
                "teacher": row.teacher or "",
                "failed": row.n_failed,
                "seeds": " ".join(str(s) for s in row.seeds),
                "group": table.group,
                **{key: _number(row.cost[key].mean) if key in row.cost else "" for key, _ in COST_COLUMNS},
            }
            if not row.cells:
                # a row without values (e.g. all its runs failed) still shows up, with its counts
                writer.writerow({**common, "column": "", "n": row.n})
            for label in table.labels:
                stat = row.cells.get(label)
                if stat is None:
                    continue
                test = row.tests.get(label)
                writer.writerow(
                    {
                        **common,
                        "metric": metrics.get(label, table.metric),
                        "column": label,
                        "n": stat.n,
                        "mean": repr(stat.mean),
                        "std": _number(stat.std),
                        "delta": _number(row.delta.get(label)),
                        "paper": _number(row.paper.get(label)),
                        "ci95": _number(stat.ci95),
                        "p_value": "" if test is None else repr(test.p_value),
                        "p_holm": "" if test is None else _number(test.p_holm),
                        "delta_ci95": "" if test is None else repr(test.ci95),
                    }
                )
    return out.getvalue()


_LATEX_SPECIAL = {"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}"}


def _latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)


def _latex_legend(table: ComparisonTable) -> str:
    if not table.n_tests:
        return "No significance tests (fewer than 2 runs per row)."
    marks = ", ".join(f"$^{{{mark}}}$ $p < {threshold:g}$" for threshold, mark in reversed(SIGNIFICANCE))
    return (
        f"{marks}: Welch's t-test over seeds against the no-KD student, "
        f"Holm-adjusted over the table's {table.n_tests} tests."
    )


def to_latex(tables: ComparisonTable | Sequence[ComparisonTable]) -> str:
    """booktabs tables: ``mean$\\pm$std`` with the delta to no-KD (significance marks as superscripts)
    and the paper's value underneath, the marks' legend as the table's last line; the failed runs as
    ``%`` comments after the table (kept out of the typeset output)."""
    if isinstance(tables, ComparisonTable):
        tables = [tables]
    parts = []
    for table in tables:
        labels = table.labels
        costs = table.cost_columns
        caption = ijb_caption(table)
        width = 2 + len(labels) + len(costs)
        lines = [
            f"% {_title(table)}; cells: mean $\\pm$ sample std over runs, (delta to no-KD), [paper]",
            *([f"% {caption}"] if caption else []),
            *([f"% {cost_legend(table)}"] if costs else []),
            "\\begin{tabular}{l r " + " ".join("c" for _ in labels) + "".join(" r" for _ in costs) + "}",
            "\\toprule",
            " & ".join(
                ["Method", "Runs", *(_latex_escape(label) for label in labels)]
                + [_latex_escape(name) for _, name in costs]
            )
            + " \\\\",
            "\\midrule",
        ]
        for row in table.rows:
            cells = [_latex_escape(row.label), runs_cell(row)]
            for label in labels:
                stat = row.cells.get(label)
                if stat is None:
                    cells.append("--")
                    continue
                cell = _fmt(stat.mean)
                if stat.std is not None:
                    cell += f"$\\pm${_fmt(stat.std)}"
                extras = []
                if label in row.delta:
                    mark = row.mark(label)
                    extras.append(
                        f"({_fmt(row.delta[label], signed=True)}" + (f"$^{{{mark}}}$)" if mark else ")")
                    )
                if label in row.paper:
                    extras.append(f"[{_fmt(row.paper[label])}]")
                if extras:
                    cell += " {\\scriptsize " + " ".join(extras) + "}"
                cells.append(cell)
            cells += [
                _latex_escape(format_cost(key, row.cost.get(key))).replace("—", "--") for key, _ in costs
            ]
            lines.append(" & ".join(cells) + " \\\\")
        lines += [
            "\\bottomrule",
            f"\\multicolumn{{{width}}}{{l}}{{\\scriptsize {_latex_legend(table)}}} \\\\",
            "\\end{tabular}",
        ]
        if table.failures:
            lines.append(f"% failed runs ({len(table.failures)}, no values in the table):")
            lines += [f"% {line}" for line in failure_lines(table)]
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def _padded_limits(low: float, high: float, floor: float | None = None) -> tuple[float, float]:
    """Axis limits holding [low, high] with a margin (not below ``floor`` when it holds low)."""
    pad = 0.08 * (high - low) + 0.5
    bottom = low - pad
    if floor is not None and low >= floor:
        bottom = max(floor, bottom)
    return bottom, high + pad


def bar_figure(tables: ComparisonTable | Sequence[ComparisonTable]) -> Any:
    """The matplotlib figure of :func:`plot_bars` (two axes per table: means, gains)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    if isinstance(tables, ComparisonTable):
        tables = [tables]
    figure, axes = plt.subplots(len(tables), 2, figsize=(15, 5.5 * len(tables)), squeeze=False)
    for (left, right), table in zip(axes, tables):
        labels = table.labels
        width = 0.8 / max(len(table.rows), 1)
        colours = plt.get_cmap("tab20").colors  # 20 distinct colours: one per row of the paper's table
        ends: list[float] = []  # bar tops and interval ends: the y range to show
        for index, row in enumerate(table.rows):
            xs, means, errs = [], [], []
            for position, label in enumerate(labels):
                stat = row.cells.get(label)
                if stat is not None:
                    xs.append(position + (index - (len(table.rows) - 1) / 2) * width)
                    means.append(stat.mean)
                    half = stat.ci95
                    errs.append(math.nan if half is None else half)  # nan: no bar drawn (one run)
                    ends += [stat.mean] if half is None else [stat.mean - half, stat.mean + half]
            has_spread = any(e > 0 for e in errs)
            colour = colours[index % len(colours)]
            left.bar(
                xs, means, width, yerr=errs if has_spread else None, label=row.label, capsize=2, color=colour
            )
        if ends:
            left.set_ylim(*_padded_limits(min(ends), max(ends), floor=0.0))
        left.set_xticks(range(len(labels)), labels, rotation=20)
        left.set_ylabel(f"{table.metric} (%), 95 % CI")
        left.set_title(_title(table), fontsize=10)
        left.legend(fontsize=7, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.16))
        gains = [r for r in table.rows if AVERAGE in r.delta]
        positions = list(range(len(gains)))
        values = [r.delta[AVERAGE] for r in gains]
        errors = [r.tests[AVERAGE].ci95 if AVERAGE in r.tests else 0.0 for r in gains]
        right.bar(
            positions,
            values,
            yerr=[e if e else math.nan for e in errors] if any(errors) else None,
            capsize=3,
            color="tab:blue",
            label="this study (95 % CI of the difference)",
        )
        ends = [0.0] + [v - e for v, e in zip(values, errors)] + [v + e for v, e in zip(values, errors)]
        for position, row, value, error in zip(positions, gains, values, errors):
            mark = row.mark(AVERAGE)
            if mark:
                top = value + error if value >= 0 else value - error
                right.annotate(
                    mark,
                    (position, top),
                    xytext=(0, 2 if value >= 0 else -2),
                    textcoords="offset points",
                    ha="center",
                    va="bottom" if value >= 0 else "top",
                )
        paper = [(i, r.paper_delta_avg) for i, r in enumerate(gains) if r.paper_delta_avg is not None]
        if paper:
            right.scatter(
                [i for i, _ in paper],
                [v for _, v in paper],
                marker="D",
                color="tab:red",
                zorder=3,
                label="paper",
            )
            ends += [v for _, v in paper]
        low, high = min(ends), max(ends)
        pad = 0.12 * (high - low) + 0.2  # room for the marks above the intervals
        right.set_ylim(low - pad, high + pad)
        right.axhline(0.0, color="black", linewidth=0.8)
        right.set_xticks(positions, [r.label for r in gains], rotation=30, ha="right")
        right.set_ylabel(f"{AVERAGE} - no-KD {AVERAGE} (points)")
        right.set_title(
            f"gain over the no-KD student (marks: Holm-adjusted Welch p; {significance_legend()})"
        )
        right.title.set_fontsize(9)
        right.legend(fontsize=8)
    figure.tight_layout()
    return figure


def plot_bars(tables: ComparisonTable | Sequence[ComparisonTable], path: str | Path) -> Path:
    """Bar chart PNG: per table, each method's mean per column with its 95 % confidence interval as the
    error bar, and each method's Avg gain over the no-KD student with the 95 % interval of the difference
    (Welch) and its significance mark; the axes hold every bar and interval."""
    import matplotlib.pyplot as plt

    figure = bar_figure(tables)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def to_wandb_table(tables: ComparisonTable | Sequence[ComparisonTable]) -> Any:
    """A ``wandb.Table`` with the long-form CSV's columns."""
    import wandb

    text = to_csv(tables)
    reader = csv.reader(io.StringIO(text))
    header = next(reader)
    data = []
    for record in reader:
        data.append(
            [
                (float(value) if value else None) if name in NUMERIC_FIELDS else value
                for name, value in zip(header, record)
            ]
        )
    return wandb.Table(columns=header, data=data)


def log_to_wandb(tables: Sequence[ComparisonTable], key: str = "comparison") -> None:
    """Log the table to the active W&B run (a run must be active)."""
    import wandb

    if wandb.run is None:
        warnings.warn("log_to_wandb: no active W&B run; nothing logged", stacklevel=2)
        return
    wandb.run.log({key: to_wandb_table(tables)})


FORMATS: tuple[str, ...] = ("md", "csv", "tex", "png")


def save_tables(
    tables: Sequence[ComparisonTable],
    directory: str | Path,
    stem: str = "comparison",
    formats: Iterable[str] = FORMATS,
) -> dict[str, Path]:
    """Write ``<stem>.md/.csv/.tex/.png`` into ``directory``; return the paths by format."""
    formats = list(formats)
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        raise ValueError(f"unknown table formats {unknown}; known: {', '.join(FORMATS)}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    writers = {"md": to_markdown, "csv": to_csv, "tex": to_latex}
    paths: dict[str, Path] = {}
    for fmt in formats:
        path = directory / f"{stem}.{fmt}"
        if fmt == "png":
            plot_bars(tables, path)
        else:
            path.write_text(writers[fmt](tables))
        paths[fmt] = path
    return paths
