"""The comparison table of distillation methods, built from ``results.json`` files.

One table per training dataset. Rows are (student, method) pairs -- the teacher first, then per
student the no-KD baseline and the methods in the order of the EKD paper's Table 2 -- and columns are
the verification sets (LFW, CFP-FP, CPLFW, AgeDB, CALFW for real data, the synthetic sets for
synthetic runs), IJB TPR@FPR when present, and their average. Every cell aggregates the runs of that
row (normally one per seed):

    mean = (1/n) sum_i v_i,   std = sqrt( sum_i (v_i - mean)^2 / (n - 1) )   (sample std; none for n = 1)
    delta = mean(row) - mean(no-KD row of the same student)                 (percentage points)

Values are percentages. ``Avg`` is the mean over the verification-set columns, computed per run
first so that its std is the spread of the runs' averages. The paper's numbers (Table 2 of the EKD
paper, shipped as ``paper_tables.csv``) stand alongside for the MobileFaceNet rows and the ResNet50
teacher; ``Paper dAvg`` is the paper's average gain of the method over its no-KD student, a reference
for the direction and size of the effect when the columns themselves are not comparable (synthetic
data, another student).

IJB cells are only comparable when scored alike: the caption names the IJB protocol (and embedding
precision) the runs recorded in ``eval_protocol`` (docs/methods.md), and a note says so when the runs
of one table used different ones.

Runs whose fit failed (``status: "failed"`` in results.json) contribute no values: each row counts
them (``Runs`` is ``2 (+1 failed)``), a row whose runs all failed still appears without values, and
the failed runs are listed under the table with their folder and the exception.

Outputs: Markdown, CSV (long form, one line per row x column, a ``failed`` count on each; a row
without values has one line with an empty column), LaTeX (booktabs; failed runs as comments under
the table), a bar chart PNG and a ``wandb.Table``.
"""

from __future__ import annotations

import csv
import io
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
# IJB columns of the paper: (results key, FPR key, label).
IJB_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("ijbc", "1e-4", "IJB-C@1e-4"),
    ("ijbc", "1e-5", "IJB-C@1e-5"),
    ("ijbb", "1e-4", "IJB-B@1e-4"),
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


def _normalise_set(name: str) -> str:
    return name.lower().replace("-", "_")


def _ijb_key(name: str) -> str | None:
    compact = name.lower().replace("-", "").replace("_", "")
    return compact if compact in ("ijbb", "ijbc") else None


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


@dataclass(frozen=True)
class Column:
    """A table column: ``metric`` of verification set ``set_key`` (``tpr@<fpr>``, ``accuracy``, ...)."""

    set_key: str
    metric: str
    label: str
    in_average: bool  # verification-set columns make up Avg; IJB columns do not


@dataclass
class Stat:
    """Mean and sample std (None for a single run) of the values of one cell."""

    values: list[float]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return math.fsum(self.values) / len(self.values)

    @property
    def std(self) -> float | None:
        if len(self.values) < 2:
            return None
        mean = self.mean
        return math.sqrt(math.fsum((v - mean) ** 2 for v in self.values) / (len(self.values) - 1))


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
    paper: dict[str, float] = field(default_factory=dict)  # column label (and Avg) -> paper value
    paper_delta_avg: float | None = None

    @property
    def n(self) -> int:
        """Finished runs (the ones the cells aggregate)."""
        return len(self.runs)

    @property
    def n_failed(self) -> int:
        return len(self.failed)


@dataclass
class ComparisonTable:
    dataset: str
    metric: str
    columns: list[Column]
    rows: list[Row]
    notes: list[str] = field(default_factory=list)
    # IJB protocol (+ precision) of the runs with IJB values, as :func:`ijb_protocol_label` names them
    ijb_protocols: list[str] = field(default_factory=list)

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

    def row(self, method: str, student: str | None = None) -> Row:
        """The row of ``method`` (for ``student`` when several students are in the table)."""
        matches = [r for r in self.rows if r.method == method and (student is None or r.student == student)]
        if len(matches) != 1:
            raise KeyError(f"{len(matches)} rows for method={method!r} student={student!r} in {self.dataset}")
        return matches[0]


def metric_value(set_metrics: Mapping[str, Any], metric: str) -> float | None:
    """One number from a set's metrics, as a percentage: ``accuracy``, ``tpr@1e-4``, ``auc``, ``eer``."""
    if metric.startswith("tpr@"):
        value = (set_metrics.get("tpr_at_fpr") or {}).get(metric[4:])
    else:
        value = set_metrics.get(metric)
    if value is None:
        return None
    return 100.0 * float(value)


def _row_label(result: RunResults, student_label: str, several_students: bool) -> str:
    if result.method in (TEACHER, NO_KD):
        return f"{student_label} ({result.label})"
    return f"{result.label} ({student_label})" if several_students else result.label


def _columns(results: Sequence[RunResults], metric: str) -> list[Column]:
    present: dict[str, None] = {}  # insertion-ordered set: other sets keep the order the runs list them
    ijb_present: set[str] = set()
    for result in results:
        for name in result.metrics:
            ijb = _ijb_key(name)
            if ijb:
                ijb_present.add(ijb)
            else:
                present.setdefault(_normalise_set(name), None)
    columns = [Column(key, metric, label, True) for key, label in PAPER_SETS.items() if key in present]
    columns += [Column(key, metric, key, True) for key in present if key not in PAPER_SETS]
    columns += [
        Column(key, f"tpr@{fpr}", label, False) for key, fpr, label in IJB_COLUMNS if key in ijb_present
    ]
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


def ijb_caption(table: ComparisonTable) -> str | None:
    """The caption sentence of a table with IJB columns (None without them)."""
    if not any(not column.in_average for column in table.columns):
        return None
    protocols = " / ".join(table.ijb_protocols) or "not recorded"
    return f"IJB columns: TPR (%) at the FPR named, IJB-B/C 1:1 protocol {protocols} (docs/methods.md)."


def _set_metrics(result: RunResults, set_key: str) -> Mapping[str, Any] | None:
    for name, values in result.metrics.items():
        if _normalise_set(name) == set_key or _ijb_key(name) == set_key:
            return values
    return None


def _order_key(row: Row) -> tuple:
    # the teacher first, then the rows of each student together, in the methods' recorded order
    return (row.method != TEACHER, row.student, row.order, row.method)


def build_tables(results: Iterable[RunResults], metric: str = "accuracy") -> list[ComparisonTable]:
    """One :class:`ComparisonTable` per dataset of ``results`` (see the module docstring)."""
    by_dataset: dict[str, list[RunResults]] = defaultdict(list)
    for result in results:
        by_dataset[result.dataset].append(result)
    if not by_dataset:
        raise ResultsError("no results to tabulate")
    paper = load_paper_table("table2")
    return [_build_table(dataset, runs, metric, paper) for dataset, runs in sorted(by_dataset.items())]


def _build_table(
    dataset: str, results: list[RunResults], metric: str, paper: Mapping[str, Mapping[str, float]]
) -> ComparisonTable:
    columns = _columns(results, metric)
    averaged = [c for c in columns if c.in_average]
    students = {r.student for r in results if r.method != TEACHER}
    notes: list[str] = []
    rows: dict[tuple[str, str], Row] = {}
    ijb_keys = {c.set_key for c in columns if not c.in_average}
    ijb_protocols: dict[str, None] = {}  # insertion-ordered set
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
        if any(_set_metrics(result, key) is not None for key in ijb_keys):
            ijb_protocols.setdefault(ijb_protocol_label(result), None)
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

    if len(ijb_protocols) > 1:
        notes.append(
            f"the runs scored IJB with different protocols ({'; '.join(ijb_protocols)}): "
            "their IJB cells are not comparable"
        )
    ordered = sorted(rows.values(), key=_order_key)
    _fill_deltas(ordered, notes)
    if metric == "accuracy":
        _fill_paper(ordered, columns, paper)
    return ComparisonTable(
        dataset=dataset,
        metric=metric,
        columns=columns,
        rows=ordered,
        notes=notes,
        ijb_protocols=list(ijb_protocols),
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


def _paper_average(values: Mapping[str, float]) -> float | None:
    if all(label in values for label in PAPER_SETS.values()):
        return math.fsum(values[label] for label in PAPER_SETS.values()) / len(PAPER_SETS)
    return None


def _fill_paper(rows: list[Row], columns: list[Column], paper: Mapping[str, Mapping[str, float]]) -> None:
    baseline_avg = _paper_average(paper.get(PAPER_BASELINE_ROW, {}))
    paper_labels = {c.label for c in columns if c.set_key in PAPER_SETS or not c.in_average}
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
    """``mean ± std (delta) [paper]`` with the parts that exist."""
    stat = row.cells.get(label)
    text = "—" if stat is None else _fmt(stat.mean)
    if stat is not None and stat.std is not None:
        text += f" ± {_fmt(stat.std)}"
    if label in row.delta:
        text += f" ({_fmt(row.delta[label], signed=True)})"
    if paper and label in row.paper:
        text += f" [{_fmt(row.paper[label])}]"
    return text


def runs_cell(row: Row) -> str:
    """The ``Runs`` cell: finished runs, plus the failed ones when there are any (``2 (+1 failed)``)."""
    return f"{row.n} (+{row.n_failed} failed)" if row.failed else str(row.n)


def failure_lines(table: ComparisonTable) -> list[str]:
    """One ``<row>, seed <s>: <folder> -- <reason>`` line per failed run of ``table``."""
    return [f"{row.label}, seed {run.seed}: {run.folder} -- {run.reason}" for row, run in table.failures]


def _title(table: ComparisonTable) -> str:
    what = "verification accuracy" if table.metric == "accuracy" else table.metric
    return f"{what} (%) on {table.dataset}"


def to_markdown(tables: ComparisonTable | Sequence[ComparisonTable]) -> str:
    """Markdown tables with a legend (one section per dataset)."""
    if isinstance(tables, ComparisonTable):
        tables = [tables]
    parts = []
    for table in tables:
        header = ["Method", "Runs", *table.labels, "Paper ΔAvg"]
        lines = [
            f"### {_title(table)}",
            "",
            "| " + " | ".join(header) + " |",
            "|" + "|".join([" --- "] + [" ---: "] * (len(header) - 1)) + "|",
        ]
        for row in table.rows:
            cells = [row.label, runs_cell(row), *(format_cell(row, label) for label in table.labels)]
            cells.append(_fmt(row.paper_delta_avg, signed=True))
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
)


def to_csv(tables: ComparisonTable | Sequence[ComparisonTable]) -> str:
    """Long-form CSV: one line per (row, column), the average included as column ``Avg``."""
    if isinstance(tables, ComparisonTable):
        tables = [tables]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for table in tables:
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
            }
            if not row.cells:
                # a row without values (e.g. all its runs failed) still shows up, with its counts
                writer.writerow({**common, "column": "", "n": row.n})
            for label in table.labels:
                stat = row.cells.get(label)
                if stat is None:
                    continue
                writer.writerow(
                    {
                        **common,
                        "column": label,
                        "n": stat.n,
                        "mean": repr(stat.mean),
                        "std": "" if stat.std is None else repr(stat.std),
                        "delta": repr(row.delta[label]) if label in row.delta else "",
                        "paper": repr(row.paper[label]) if label in row.paper else "",
                    }
                )
    return out.getvalue()


_LATEX_SPECIAL = {"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}"}


def _latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)


def to_latex(tables: ComparisonTable | Sequence[ComparisonTable]) -> str:
    """booktabs tables: ``mean$\\pm$std`` with the delta to no-KD and the paper's value underneath;
    the failed runs as ``%`` comments after the table (kept out of the typeset output)."""
    if isinstance(tables, ComparisonTable):
        tables = [tables]
    parts = []
    for table in tables:
        labels = table.labels
        caption = ijb_caption(table)
        lines = [
            f"% {_title(table)}; cells: mean $\\pm$ sample std over runs, (delta to no-KD), [paper]",
            *([f"% {caption}"] if caption else []),
            "\\begin{tabular}{l r " + " ".join("c" for _ in labels) + "}",
            "\\toprule",
            " & ".join(["Method", "Runs", *(_latex_escape(label) for label in labels)]) + " \\\\",
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
                    extras.append(f"({_fmt(row.delta[label], signed=True)})")
                if label in row.paper:
                    extras.append(f"[{_fmt(row.paper[label])}]")
                if extras:
                    cell += " {\\scriptsize " + " ".join(extras) + "}"
                cells.append(cell)
            lines.append(" & ".join(cells) + " \\\\")
        lines += ["\\bottomrule", "\\end{tabular}"]
        if table.failures:
            lines.append(f"% failed runs ({len(table.failures)}, no values in the table):")
            lines += [f"% {line}" for line in failure_lines(table)]
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def plot_bars(tables: ComparisonTable | Sequence[ComparisonTable], path: str | Path) -> Path:
    """Bar chart PNG: per dataset, each method's mean per column (std as error bars) and its Avg gain."""
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
        for index, row in enumerate(table.rows):
            xs, means, errs = [], [], []
            for position, label in enumerate(labels):
                stat = row.cells.get(label)
                if stat is not None:
                    xs.append(position + (index - (len(table.rows) - 1) / 2) * width)
                    means.append(stat.mean)
                    errs.append(stat.std or 0.0)
            has_spread = any(e > 0 for e in errs)
            colour = colours[index % len(colours)]
            left.bar(
                xs, means, width, yerr=errs if has_spread else None, label=row.label, capsize=2, color=colour
            )
        every = [s.mean for r in table.rows for s in r.cells.values()]
        if every:
            low, high = min(every), max(every)
            left.set_ylim(max(0.0, low - 0.15 * (high - low + 1e-9) - 1), min(100.0, high + 0.5))
        left.set_xticks(range(len(labels)), labels, rotation=20)
        left.set_ylabel(f"{table.metric} (%)")
        left.set_title(_title(table))
        left.legend(fontsize=7, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.12))
        gains = [r for r in table.rows if AVERAGE in r.delta]
        positions = range(len(gains))
        right.bar(positions, [r.delta[AVERAGE] for r in gains], color="tab:blue", label="this run")
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
        right.axhline(0.0, color="black", linewidth=0.8)
        right.set_xticks(list(positions), [r.label for r in gains], rotation=30, ha="right")
        right.set_ylabel(f"{AVERAGE} - no-KD {AVERAGE} (points)")
        right.set_title("gain over the no-KD student")
        right.legend(fontsize=8)
    figure.tight_layout()
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
    numeric = {"n", "failed", "mean", "std", "delta", "paper"}
    data = []
    for record in reader:
        data.append(
            [
                (float(value) if value else None) if name in numeric else value
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
