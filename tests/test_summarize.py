"""`jade summarize RUNS...`: one table of many runs, grouped over seeds, in markdown, CSV or JSON;
and benchmarks/accuracy.py, whose per-model rows are grouped the same way."""

from __future__ import annotations

import csv
import io
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml

from jadecli.cli import app
from jadecli.config import SummarizeConfig, TrainConfig, field_names
from jadecli.summarize import NOT_COMPARED, SCHEMA_VERSION

BASE = TrainConfig(primary="synth-street", auxiliary="synth-hand", n_labeled=100).to_dict()


def write_run(
    folder: Path,
    seed: int,
    acc: float | None,
    *,
    status: str = "completed",
    aux: float | None = 0.9,
    seconds: float | None = 10.0,
    done: int | None = None,
    **config: Any,
) -> Path:
    """A run folder as `jade train` leaves it, as far as a summary reads it: manifest.yaml."""
    cfg = {**BASE, "seed": seed, **config}
    final = {
        "primary_test_accuracy": acc,
        "auxiliary_test_accuracy": aux,
        "primary_train_accuracy": 0.99,
        "primary_val_accuracy": None,
        "loss": 1.5,
        "selection": cfg["select"],
        "selected_epoch": cfg["epochs"] if done is None else done,
    }
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "jadecli_version": "0.1.0",
        "command": f"jade train --seed {seed} --out {folder}",
        "status": status,
        "seed": seed,
        "config": cfg,
        "epochs_completed": cfg["epochs"] if done is None else done,
        "final_metrics": final,
        "error": None if status == "completed" else "training diverged",
    }
    if seconds is not None:
        manifest["train_seconds"] = seconds
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    return folder


def sweep(root: Path) -> dict[float, list[float]]:
    """Two learning rates x seeds, the data_dir differing between machines (never a column)."""
    accs = {0.001: [0.70, 0.74, 0.75], 0.003: [0.60, 0.64]}
    for lr, values in accs.items():
        for seed, acc in enumerate(values):
            data_dir = f"/machine{seed % 2}/data"
            write_run(root / f"lr{lr}-seed{seed}", seed, acc, lr=lr, data_dir=data_dir)
    return accs


def table(markdown: str) -> list[dict[str, str]]:
    """A markdown table as rows of {header: cell}."""
    lines = [x for x in markdown.splitlines() if x.startswith("|")]
    split = [[c.strip() for c in x.strip().strip("|").split(" | ")] for x in lines]
    assert set(split[1]) == {"---"}
    return [dict(zip(split[0], row, strict=True)) for row in split[2:]]


def cell(values: list[float], scale: float = 100.0) -> str:
    """What a mean ± std cell must say, computed here from the values."""
    v = [scale * x for x in values]
    if len(v) == 1:
        return f"{v[0]:.2f}"
    return f"{statistics.mean(v):.2f} ± {statistics.stdev(v):.2f}"


def invoke(runner, *args: Any):
    return runner.invoke(app, ["summarize", *map(str, args)])


def one_error_line(result) -> str:
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output
    return lines[0]


# --------------------------------------------------------------------------- grouping


def test_runs_that_differ_only_in_seed_are_one_row_with_mean_std_and_n(runner, tmp_path):
    accs = sweep(tmp_path / "runs")
    result = invoke(runner, tmp_path / "runs")
    assert result.exit_code == 0, result.output
    rows = table(result.stdout)
    # only lr differs: seed is grouped over, data_dir says where, not what; no status column
    # when every run completed
    assert list(rows[0]) == ["lr", "n", "seeds", "primary test %", "aux test %", "train s"]
    assert [r["lr"] for r in rows] == ["0.001", "0.003"]
    assert [r["n"] for r in rows] == ["3", "2"]
    assert [r["seeds"] for r in rows] == ["0, 1, 2", "0, 1"]
    assert [r["primary test %"] for r in rows] == [cell(accs[0.001]), cell(accs[0.003])]
    assert rows[0]["aux test %"] == "90.00 ± 0.00" and rows[0]["train s"] == "10.0 ± 0.0"
    assert rows[0]["primary test %"] == "73.00 ± 2.65"  # sqrt(7) by hand

    report = json.loads(invoke(runner, tmp_path / "runs", "--format", "json").stdout)
    assert report["fields"] == ["lr"] and report["n_runs"] == 5 and not report["by_seed"]
    first = report["rows"][0]["metrics"]["primary_test_accuracy"]
    assert first["n"] == 3 and first["values"] == accs[0.001]
    assert first["mean"] == pytest.approx(statistics.mean(accs[0.001]))
    assert first["std"] == pytest.approx(statistics.stdev(accs[0.001]))


def test_by_seed_lists_every_run_in_a_fixed_order(runner, tmp_path):
    sweep(tmp_path / "runs")
    args = ["--by-seed", "--show", "model,data-dir"]
    # the order of the arguments does not change the table
    one = invoke(runner, *sorted((tmp_path / "runs").iterdir()), *args)
    two = invoke(runner, *sorted((tmp_path / "runs").iterdir(), reverse=True), *args)
    assert one.exit_code == 0, one.output
    rows = table(one.stdout)
    assert one.stdout == two.stdout
    assert list(rows[0])[:5] == ["data-dir", "model", "lr", "run", "seed"]
    keys = [(r["data-dir"], r["lr"], r["seed"]) for r in rows]  # the options in config order
    assert keys == sorted(keys) and len(rows) == 5
    assert {r["model"] for r in rows} == {"jade"}  # shown although every run agrees
    assert rows[0]["primary test %"] == "70.00"  # one run: no ±
    assert all(Path(r["run"]).name == f"lr{r['lr']}-seed{r['seed']}" for r in rows)


def test_a_run_that_did_not_complete_has_its_own_row_and_no_part_in_the_means(runner, tmp_path):
    root = tmp_path / "runs"
    write_run(root / "s0", 0, 0.80, epochs=5)
    write_run(root / "s1", 1, 0.84, epochs=5)
    write_run(root / "s2", 2, 0.10, epochs=5, status="failed", done=2, seconds=None)
    write_run(root / "s3", 3, None, epochs=5, status="interrupted", done=0, seconds=None)
    result = invoke(runner, root)
    assert result.exit_code == 0, result.output
    rows = table(result.stdout)
    assert [(r["status"], r["n"], r["seeds"]) for r in rows] == [
        ("completed", "2", "0, 1"),
        ("failed (2/5 epochs)", "1", "2"),
        ("interrupted (0/5 epochs)", "1", "3"),
    ]
    assert rows[0]["primary test %"] == cell([0.80, 0.84])
    assert rows[1]["primary test %"] == "10.00" and rows[2]["primary test %"] == "-"
    lines = list(csv.DictReader(io.StringIO(invoke(runner, root, "--format", "csv").stdout)))
    assert [x["status"] for x in lines] == ["completed", "failed", "interrupted"]
    assert float(lines[0]["primary_test_accuracy_mean"]) == pytest.approx(0.82)
    assert lines[2]["primary_test_accuracy_mean"] == "" and lines[2]["train_seconds_mean"] == ""


def test_best_val_runs_show_validation_accuracy_and_the_chosen_epoch(runner, tmp_path):
    for seed, (val, epoch) in enumerate([(0.5, 3), (0.7, 5)]):
        run = write_run(tmp_path / f"s{seed}", seed, 0.6, val=0.2, select="best-val")
        manifest = yaml.safe_load((run / "manifest.yaml").read_text())
        manifest["final_metrics"].update(primary_val_accuracy=val, selected_epoch=epoch)
        (run / "manifest.yaml").write_text(yaml.safe_dump(manifest))
    rows = table(invoke(runner, tmp_path / "s0", tmp_path / "s1").stdout)
    assert rows[0]["val %"] == cell([0.5, 0.7]) and rows[0]["best epoch"] == "4.0 ± 1.4"


# --------------------------------------------------------------------------- RUNS and formats


def test_quoted_globs_parent_folders_and_manifests_name_runs_once_each(runner, tmp_path):
    sweep(tmp_path / "runs" / "deeper")
    (tmp_path / "runs" / "notes").mkdir()  # a folder that holds no run
    (tmp_path / "runs" / "README.md").write_text("not a run")
    json_ = ("--format", "json")

    def n_runs(result) -> int:
        return int(json.loads(result.stdout)["n_runs"])

    pattern = invoke(runner, str(tmp_path / "runs" / "deeper" / "lr0.001-*"), *json_)
    assert pattern.exit_code == 0, pattern.output
    assert n_runs(pattern) == 3 and pattern.stderr == ""
    # ** searches deeper; a matched folder that holds no run is skipped with a warning, files
    # are not folders and are passed over
    deep = invoke(runner, str(tmp_path / "runs" / "**" / "*"), *json_)
    assert deep.exit_code == 0, deep.output
    assert n_runs(deep) == 5
    assert deep.stderr.strip().splitlines() == [
        f"warning: {tmp_path / 'runs' / 'notes'} is not a jadecli run folder (no manifest.yaml) "
        "and holds none; skipped"
    ]
    # a parent folder, a run inside it again and a manifest of one: each run counted once
    again = tmp_path / "runs" / "deeper" / "lr0.003-seed1"
    mixed = invoke(runner, tmp_path / "runs", again, again / "manifest.yaml", *json_)
    assert mixed.exit_code == 0, mixed.output
    assert n_runs(mixed) == 5


def test_csv_and_json_parse_and_out_replaces_the_file_whole(runner, tmp_path):
    accs = sweep(tmp_path / "runs")
    out = tmp_path / "summary.csv"
    out.write_text("an older summary\n")
    result = invoke(runner, tmp_path / "runs", "--format", "csv", "--out", out)
    assert result.exit_code == 0, result.output
    assert result.stdout == f"2 row(s) of 5 run(s): {out}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs", "summary.csv"]  # no temp file
    lines = list(csv.DictReader(io.StringIO(out.read_text())))
    assert list(lines[0])[:5] == ["lr", "status", "n", "seeds", "runs"]
    assert [x["seeds"] for x in lines] == ["0 1 2", "0 1"]
    assert float(lines[1]["primary_test_accuracy_mean"]) == pytest.approx(0.62)
    std = float(lines[1]["primary_test_accuracy_std"])
    assert std == pytest.approx(statistics.stdev(accs[0.003]))
    assert lines[0]["primary_val_accuracy_mean"] == ""  # every metric column is always there
    assert all(Path(r).name.startswith("lr0.001") for r in lines[0]["runs"].split(";"))

    out = tmp_path / "summary.json"
    assert invoke(runner, tmp_path / "runs", "--format", "json", "--out", out).exit_code == 0
    report = json.loads(out.read_text())
    assert [r["config"] for r in report["rows"]] == [{"lr": 0.001}, {"lr": 0.003}]
    assert [r["status"] for r in report["rows"]] == ["completed", "completed"]


@pytest.mark.parametrize(
    ("setup", "argv", "code", "message"),
    [
        (None, ["missing"], 2, "error: RUNS missing: no such folder"),
        (None, ["{tmp}/runs/*-seed9"], 2, "error: RUNS '{tmp}/runs/*-seed9': no folder matches"),
        ("empty", ["{tmp}/empty"], 1, "is not a jadecli run folder (no manifest.yaml)"),
        ("garbled", ["{tmp}/garbled"], 1, "manifest.yaml is unreadable ("),
        ("older", ["{tmp}/older"], 1, "has run schema 2, written by jadecli 0.0.9; this jadecli"),
        ("yaml list", ["{tmp}/garbled"], 1, "garbled/manifest.yaml is not a jadecli manifest"),
        (None, ["{tmp}/runs", "--format", "html"], 2, "--format must be one of markdown, csv"),
        (None, ["{tmp}/runs", "--show", "n-labelled"], 2, "did you mean n-labeled?"),
        (None, ["{tmp}/runs", "--out", "{tmp}"], 2, "is a folder; give a file name"),
        (None, ["{tmp}/runs", "--out", "{tmp}/no/such.md"], 1, "cannot write {tmp}/no/such.md"),
    ],
)
def test_bad_input_is_one_line_and_an_exit_code(runner, tmp_path, setup, argv, code, message):
    sweep(tmp_path / "runs")
    garbled = tmp_path / "garbled"
    garbled.mkdir()
    if setup == "empty":
        (tmp_path / "empty").mkdir()
    if setup == "garbled":
        (garbled / "manifest.yaml").write_text("status: [completed\nconfig: {")
    if setup == "yaml list":
        (garbled / "manifest.yaml").write_text("- a list\n- not a manifest\n")
    if setup == "older":
        run = write_run(tmp_path / "older", 0, 0.5)
        text = (run / "manifest.yaml").read_text()
        text = text.replace(f"schema_version: {SCHEMA_VERSION}", "schema_version: 2")
        (run / "manifest.yaml").write_text(text.replace("0.1.0", "0.0.9"))
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    result = invoke(runner, *[a.replace("{tmp}", str(tmp_path)) for a in argv])
    assert result.exit_code == code, result.output
    assert message.replace("{tmp}", str(tmp_path)) in one_error_line(result)
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before  # nothing written


def test_folders_that_are_not_runs_are_warnings_beside_good_runs(runner, tmp_path):
    sweep(tmp_path / "runs")
    (tmp_path / "empty").mkdir()
    (tmp_path / "garbled").mkdir()
    (tmp_path / "garbled" / "manifest.yaml").write_text("status: [completed\n")
    result = invoke(runner, tmp_path / "runs", tmp_path / "empty", tmp_path / "garbled")
    assert result.exit_code == 0, result.output
    warnings = result.stderr.strip().splitlines()
    assert len(warnings) == 2 and all(w.startswith("warning: ") for w in warnings)
    assert "empty is not a jadecli run folder" in warnings[0]
    assert "garbled/manifest.yaml is unreadable" in warnings[1]
    assert len(table(result.stdout)) == 2
    # no readable run at all: each reason is a warning, then one error line
    bad = invoke(runner, tmp_path / "empty", tmp_path / "garbled")
    assert bad.exit_code == 1
    assert bad.stderr.count("warning: ") == 2 and "error: none of the 2 folders" in bad.stderr


# --------------------------------------------------------------------------- real runs


def test_real_trained_runs_show_what_differs_and_their_final_metrics(runner, trained_runs):
    runs = [trained_runs[m] for m in ("single", "paired", "jade")]
    manifests = [yaml.safe_load((r / "manifest.yaml").read_text()) for r in runs]
    result = invoke(runner, *runs, "--format", "json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    configs = [m["config"] for m in manifests]
    differ = {k for k in configs[0] if len({json.dumps(c.get(k)) for c in configs}) > 1}
    assert set(report["fields"]) == differ - {"seed", *NOT_COMPARED}
    assert "model" in report["fields"] and "lr" not in report["fields"]
    by_model = {row["config"]["model"]: row for row in report["rows"]}
    # rows are sorted by the options that differ, in config order: --auxiliary is the first,
    # and no value sorts first
    assert next(iter(by_model)) == "single" and len(by_model) == 3
    for manifest in manifests:
        row = by_model[manifest["config"]["model"]]
        final = manifest["final_metrics"]
        assert row["n"] == 1 and row["status"] == manifest["status"] == "completed"
        got = row["metrics"]["primary_test_accuracy"]["mean"]
        assert got == pytest.approx(final["primary_test_accuracy"])
        assert row["metrics"]["train_seconds"]["mean"] == pytest.approx(manifest["train_seconds"])
    rows = table(invoke(runner, *runs).stdout)
    single = next(r for r in rows if r["model"] == "single")
    assert single["aux test %"] == "-" and single["auxiliary"] == "-"
    acc = manifests[0]["final_metrics"]["primary_test_accuracy"]
    assert single["primary test %"] == f"{100 * acc:.2f}"


# --------------------------------------------------------------------------- the code's shape


def test_every_config_field_is_an_option_and_every_option_a_field():
    command = typer.main.get_command(app).commands["summarize"]  # type: ignore[attr-defined]
    assert {p.name for p in command.params} == set(field_names(SummarizeConfig))


def test_the_module_agrees_with_the_run_folder_and_loads_without_torch():
    import jadecli.run
    import jadecli.summarize

    assert jadecli.summarize.MANIFEST == jadecli.run.MANIFEST
    assert jadecli.summarize.SCHEMA_VERSION == jadecli.run.SCHEMA_VERSION
    code = "import sys, jadecli.summarize, jadecli.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_accuracy_benchmark_groups_its_rows_with_the_same_functions(tmp_path):
    from benchmarks import accuracy as acc

    args = acc.parse_args(["--pairs", "", "--pair", "x=--primary synth-street"])
    pair = acc.pairs_from(args)[0]
    values = [(0, 72.2, "completed"), (1, 74.01, "completed"), (2, 30.0, "failed")]
    results = [
        acc.Result("x", "jade", s, a, 97.0, 10.0 * (s + 1), status, "jade train", f"r{s}")
        for s, a, status in values
    ]
    text = acc.render(results, [pair], args, 60.0)
    row = next(x for x in text.splitlines() if x.startswith("| jade |"))
    # the failed seed is named with its status and counted in neither mean nor wall time
    mean = cell([72.2, 74.01], scale=1.0)
    assert row == f"| jade | **{mean}** | s0: 72.20, s1: 74.01, s2: failed | 97.00 ± 0.00 | 15 |"
