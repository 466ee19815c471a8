"""`jade summarize RUNS...`: one table of many runs.

Each row is a group of runs whose configurations differ only in `--seed` (or, with `--by-seed`,
one run). The columns are the options whose values differ between the runs, then the final
metrics from each manifest as mean ± sample standard deviation over the group's completed runs,
with their number n. A run that did not complete (failed, interrupted, still running) gets a row
of its own with its status and is never part of a mean.

    jade summarize 'runs/sweep/*' --format csv --out sweep.csv

The grouping works on `RunRecord`s, manifest-like records that need not come from a run folder
(benchmarks.accuracy builds them from its own results), and `mean_std` is the one place a
"mean ± std" cell is computed and written (every benchmark uses it).

This module imports neither torch nor the engine: reading a hundred manifests takes a moment.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import math
import os
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from jadecli.config import SummarizeConfig
from jadecli.errors import RunDirError, UsageError
from jadecli.progress import Reporter

# jadecli.run's MANIFEST and SCHEMA_VERSION (tests/test_summarize.py checks they agree): that
# module imports torch, and a summary of a hundred manifests should not wait for torch to load
MANIFEST = "manifest.yaml"
SCHEMA_VERSION = 6
COMPLETED = "completed"
SEED = "seed"
# Options that say where the data are, how they were loaded or where the run was also logged
# (`--log`), not what was computed: runs that differ only in these are the same recipe (`--show`
# makes one a column, and so a group key).
NOT_COMPARED = ("data_dir", "download", "memory_budget", "log")


@dataclass(frozen=True)
class Metric:
    """A final metric: its key in `RunRecord.metrics` and how the markdown table shows it."""

    key: str
    label: str
    scale: float = 1.0  # markdown shows value * scale (accuracies as percentages)
    digits: int = 2


METRICS = (
    Metric("primary_test_accuracy", "primary test %", 100.0),
    Metric("auxiliary_test_accuracy", "aux test %", 100.0),
    Metric("primary_val_accuracy", "val %", 100.0),
    Metric("selected_epoch", "best epoch", digits=1),
    Metric("train_seconds", "train s", digits=1),
)


# --------------------------------------------------------------------------- numbers


@dataclass(frozen=True)
class Stat:
    """The finite values of one metric over a group of runs."""

    values: tuple[float, ...]

    @classmethod
    def of(cls, values: Iterable[float | None]) -> Stat:
        """None (not measured) and non-finite values (no measurement) are left out."""
        return cls(tuple(float(v) for v in values if v is not None and math.isfinite(v)))

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float | None:
        return statistics.mean(self.values) if self.values else None

    @property
    def std(self) -> float | None:
        """The sample standard deviation (n - 1 in the denominator); None below 2 values."""
        return statistics.stdev(self.values) if self.n >= 2 else None

    def text(self, digits: int = 2, scale: float = 1.0) -> str:
        """`mean ± std` with `digits` decimals; one value alone; `-` for none."""
        if not self.values:
            return "-"
        mean = scale * (self.mean or 0.0)
        if self.std is None:
            return f"{mean:.{digits}f}"
        return f"{mean:.{digits}f} ± {scale * self.std:.{digits}f}"


def mean_std(values: Sequence[float | None], digits: int = 2) -> str:
    """`mean ± sample std` with 2 decimals (`digits`); one value alone; `-` for none."""
    return Stat.of(values).text(digits)


# --------------------------------------------------------------------------- records and groups


@dataclass(frozen=True)
class RunRecord:
    """One run as the summary sees it: what its manifest says, or the same built by hand."""

    name: str  # the run folder, as found
    config: Mapping[str, Any]  # option -> value (a manifest's `config`, or any keys)
    status: str = COMPLETED
    metrics: Mapping[str, float | None] = field(default_factory=dict)
    epochs_completed: int | None = None

    @property
    def completed(self) -> bool:
        return self.status == COMPLETED


@dataclass
class Group:
    """Runs with the same value of every compared option: all but the seed."""

    key: dict[str, Any]  # compared option -> value
    runs: list[RunRecord]  # by seed, then name

    @property
    def counted(self) -> list[RunRecord]:
        """The runs the means are over: the completed ones."""
        return [r for r in self.runs if r.completed]

    def stat(self, metric: str) -> Stat:
        return Stat.of(r.metrics.get(metric) for r in self.counted)


@dataclass
class Row:
    """One table row: a group's completed runs, one run that did not complete, or (--by-seed)
    one run."""

    config: dict[str, Any]  # the shown options
    status: str
    runs: list[RunRecord]

    @property
    def seeds(self) -> list[Any]:
        return [r.config.get(SEED) for r in self.runs]

    def stat(self, metric: str) -> Stat:
        return Stat.of(r.metrics.get(metric) for r in self.runs)

    def status_text(self) -> str:
        """`completed`, or e.g. `failed (2/5 epochs)`."""
        run = self.runs[0]
        planned = run.config.get("epochs")
        if self.status == COMPLETED or run.epochs_completed is None or planned is None:
            return self.status
        return f"{self.status} ({run.epochs_completed}/{planned} epochs)"


@dataclass
class Summary:
    fields: list[str]  # the options shown as columns, in config order
    rows: list[Row]
    by_seed: bool


def compared_fields(
    records: Sequence[RunRecord], ignore: Iterable[str] = NOT_COMPARED
) -> list[str]:
    """Every option of the records but the seed and `ignore`, in first-seen order."""
    skip = {SEED, *ignore}
    names: dict[str, None] = {}
    for record in records:
        names.update((k, None) for k in record.config if k not in skip)
    return list(names)


def differing_fields(records: Sequence[RunRecord], names: Iterable[str]) -> list[str]:
    """The options of `names` whose values are not the same in every record."""
    return [n for n in names if len({_hashable(r.config.get(n)) for r in records}) > 1]


def group_runs(records: Sequence[RunRecord], ignore: Iterable[str] = NOT_COMPARED) -> list[Group]:
    """Group runs that differ only in the seed (and in `ignore`), groups ordered by the values
    of the options that differ, runs by seed."""
    names = compared_fields(records, ignore)
    groups: dict[tuple[str, ...], Group] = {}
    for record in records:
        key = {n: record.config.get(n) for n in names}
        groups.setdefault(_hashable(tuple(key.values())), Group(key, [])).runs.append(record)
    order = differing_fields(records, names)
    for group in groups.values():
        group.runs.sort(key=lambda r: (_order(r.config.get(SEED)), r.name))
    return sorted(groups.values(), key=lambda g: [_order(g.key[n]) for n in order])


def summarize_records(
    records: Sequence[RunRecord], by_seed: bool = False, show: Sequence[str] = ()
) -> Summary:
    """The table of `records`: the options that differ (and those in `show`) and its rows."""
    ignore = [n for n in NOT_COMPARED if n not in show]
    names = compared_fields(records, ignore)
    shown = set(differing_fields(records, names)) | set(show)
    fields = [n for n in names if n in shown]
    rows: list[Row] = []
    for group in group_runs(records, ignore):
        config = {n: group.key[n] for n in fields}
        if by_seed:
            rows += [Row(config, r.status, [r]) for r in group.runs]
            continue
        if group.counted:
            rows.append(Row(config, COMPLETED, group.counted))
        rows += [Row(config, r.status, [r]) for r in group.runs if not r.completed]
    return Summary(fields, rows, by_seed)


def _hashable(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _order(value: Any) -> tuple[int, float, str]:
    """A sort key for option values of any type: none first, then numbers, then text."""
    if value is None:
        return (0, 0.0, "")
    if isinstance(value, (bool, int, float)):
        return (1, float(value), "")
    if isinstance(value, str):
        return (2, 0.0, value)
    return (3, 0.0, _hashable(value))


# --------------------------------------------------------------------------- run folders


def record_from_manifest(manifest: Mapping[str, Any], name: str) -> RunRecord:
    """The summary's view of a run's manifest.yaml (`jadecli.engine` writes its keys)."""
    final = manifest.get("final_metrics") or {}
    metrics = {
        key: _number(final.get(key))
        for key in ("primary_test_accuracy", "auxiliary_test_accuracy", "primary_val_accuracy")
    }
    # under --select last the selected epoch is just the last one: no news
    best_val = final.get("selection") == "best-val"
    metrics["selected_epoch"] = _number(final.get("selected_epoch")) if best_val else None
    metrics["train_seconds"] = _number(manifest.get("train_seconds"))
    done = manifest.get("epochs_completed")
    return RunRecord(
        name=name,
        config=dict(manifest["config"]),
        status=str(manifest.get("status")),
        metrics=metrics,
        epochs_completed=done if isinstance(done, int) else None,
    )


def read_record(folder: Path) -> RunRecord:
    """The record of the run in `folder`; a RunDirError (one line) when its manifest cannot be
    read or is not a jadecli manifest."""
    path = folder / MANIFEST
    try:
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=loader)
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as err:
        raise RunDirError(
            f"{path} is unreadable ({type(err).__name__}); the run folder is damaged"
        ) from None
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("config"), dict)
        or "status" not in data
    ):
        raise RunDirError(f"{path} is not a jadecli manifest (no config or status)")
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:  # its config and metrics may mean other things
        wrote = data.get("jadecli_version", "an unknown version")
        raise RunDirError(
            f"{path} has run schema {version}, written by jadecli {wrote}; this jadecli reads "
            f"schema {SCHEMA_VERSION}"
        )
    return record_from_manifest(data, str(folder))


def find_runs(arguments: Sequence[str]) -> tuple[list[Path], list[str]]:
    """The run folders RUNS names, in order and once each, and why each other folder was
    skipped. An argument that names nothing at all is a UsageError: a typo must not quietly
    leave a whole arm out of a comparison."""
    found: list[Path] = []
    skipped: list[str] = []
    for argument in arguments:
        text = os.path.expanduser(argument)
        if os.path.lexists(text):
            paths, explicit = [Path(text)], True
        elif any(c in text for c in "*?["):
            paths, explicit = [Path(p) for p in sorted(glob.glob(text, recursive=True))], False
            if not any(p.is_dir() or p.name == MANIFEST for p in paths):
                raise UsageError(f"RUNS {argument!r}: no folder matches this pattern")
        else:
            raise UsageError(f"RUNS {argument}: no such folder")
        for path in paths:
            if path.is_file() and path.name == MANIFEST:
                found.append(path.parent)  # runs/*/manifest.yaml names the runs
            elif not path.is_dir():
                if explicit:
                    skipped.append(f"{path} is a file, not a run folder")
            elif (path / MANIFEST).exists():
                found.append(path)
            else:
                inside = _runs_under(path)
                found += inside
                if not inside:
                    skipped.append(
                        f"{path} is not a jadecli run folder (no {MANIFEST}) and holds none"
                    )
    seen: set[str] = set()
    unique = []
    for path in found:  # a run named twice (a folder and a pattern) counts once
        if os.path.realpath(path) not in seen:
            seen.add(os.path.realpath(path))
            unique.append(path)
    return unique, skipped


def _runs_under(root: Path) -> list[Path]:
    """The run folders below `root`, at any depth (never inside a run, nor a hidden folder)."""
    runs = []
    for folder, subfolders, files in os.walk(root):
        if MANIFEST in files and Path(folder) != root:
            runs.append(Path(folder))
            subfolders.clear()
        else:
            subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
    return sorted(runs)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


# --------------------------------------------------------------------------- the command


@dataclass
class SummaryResult:
    text: str  # the table in the asked format, as printed or written
    summary: Summary
    records: list[RunRecord]
    skipped: list[str]  # why each folder that is not a readable run was left out
    out: Path | None


def summarize(cfg: SummarizeConfig, reporter: Reporter) -> SummaryResult:
    """Read the runs RUNS names, group them, render the table and (--out) write it."""
    if cfg.out is not None and cfg.out.is_dir():
        raise UsageError(f"--out {cfg.out} is a folder; give a file name")
    folders, skipped = find_runs(cfg.runs)
    records = []
    for folder in folders:
        try:
            records.append(read_record(folder))
        except RunDirError as err:
            skipped.append(str(err))
    if not records:
        if len(skipped) == 1:
            raise RunDirError(skipped[0])
        for reason in skipped:
            reporter.warn(f"{reason}; skipped")
        raise RunDirError(
            f"none of the {len(skipped)} folders RUNS names is a readable jadecli run "
            "(see the warnings above)"
        )
    for reason in skipped:
        reporter.warn(f"{reason}; skipped")
    summary = summarize_records(records, cfg.by_seed, cfg.show_fields)
    text = render(summary, cfg.format, skipped)
    if cfg.out is not None:
        from jadecli.run import atomic_write_text  # imports torch: only when writing a file

        atomic_write_text(cfg.out, text)
    return SummaryResult(text, summary, records, skipped, cfg.out)


# --------------------------------------------------------------------------- formats


def render(summary: Summary, fmt: str, skipped: Sequence[str] = ()) -> str:
    """The table as markdown, csv or json text (ending in a newline)."""
    if fmt == "csv":
        return to_csv(summary)
    if fmt == "json":
        return to_json(summary, skipped)
    return to_markdown(summary)


def to_markdown(summary: Summary) -> str:
    """A GitHub table: accuracies in %, metrics without any value left out, a status column
    only when some run did not complete."""
    rows = summary.rows
    metrics = [m for m in METRICS if any(r.stat(m.key).n for r in rows)]
    status = any(r.status != COMPLETED for r in rows)
    head = [n.replace("_", "-") for n in summary.fields]
    head += ["run", "seed"] if summary.by_seed else []
    head += ["status"] if status else []
    head += [] if summary.by_seed else ["n", "seeds"]
    head += [m.label for m in metrics]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for row in rows:
        cells = [_cell(row.config[n]) for n in summary.fields]
        if summary.by_seed:
            cells += [_cell(row.runs[0].name), _cell(row.seeds[0])]
        cells += [row.status_text()] if status else []
        if not summary.by_seed:
            cells += [str(len(row.runs)), ", ".join(_cell(s) for s in row.seeds)]
        cells += [row.stat(m.key).text(m.digits, m.scale) for m in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def to_csv(summary: Summary) -> str:
    """One line per row, every column always there: the shown options, status, n, seeds
    (space-separated) and runs (;-separated), then `<metric>_mean` and `<metric>_std`
    (accuracies as fractions, unrounded; empty when not measured)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    header = [*summary.fields, "status", "n", "seeds", "runs"]
    writer.writerow(header + [f"{m.key}_{s}" for m in METRICS for s in ("mean", "std")])
    for row in summary.rows:
        line = [_csv(row.config[n]) for n in summary.fields]
        line += [row.status, len(row.runs), " ".join(str(_csv(s)) for s in row.seeds)]
        line.append(";".join(r.name for r in row.runs))  # a folder name may hold a space
        for m in METRICS:
            stat = row.stat(m.key)
            line += [_csv(stat.mean), _csv(stat.std)]
        writer.writerow(line)
    return buf.getvalue()


def to_json(summary: Summary, skipped: Sequence[str] = ()) -> str:
    """Everything, unrounded: per row its options, status, runs and, per metric, mean, std, n
    and the values."""
    rows = []
    for row in summary.rows:
        metrics = {}
        for m in METRICS:
            stat = row.stat(m.key)
            metrics[m.key] = {"mean": stat.mean, "std": stat.std, "n": stat.n}
            metrics[m.key]["values"] = list(stat.values)
        rows.append(
            {
                "config": row.config,
                "status": row.status,
                "n": len(row.runs),
                "seeds": row.seeds,
                "runs": [r.name for r in row.runs],
                "epochs_completed": [r.epochs_completed for r in row.runs],
                "metrics": metrics,
            }
        )
    n_runs = sum(len(r.runs) for r in summary.rows)
    report = {"n_runs": n_runs, "by_seed": summary.by_seed, "fields": summary.fields}
    report |= {"rows": rows, "skipped": list(skipped)}
    return json.dumps(report, indent=2, default=str) + "\n"


def _cell(value: Any) -> str:
    """An option value in a markdown cell (`|` escaped so it cannot split the cell)."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value).replace("|", "\\|")


def _csv(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return value
