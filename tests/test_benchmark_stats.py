"""benchmarks/stats.py (paired t intervals), and the parts of benchmarks/accuracy.py and
benchmarks/search.py built on it, without training anything."""

from __future__ import annotations

import json
import math
import os
from types import SimpleNamespace

import pytest


@pytest.fixture(scope="module")
def bench() -> SimpleNamespace:
    """The benchmark modules, as `python -m benchmarks.search` imports them."""
    from benchmarks import accuracy, search, stats

    return SimpleNamespace(stats=stats, accuracy=accuracy, search=search)


# --------------------------------------------------------------------------- stats.paired_ci


def test_paired_ci_matches_a_hand_computation(bench):
    # jade - paired on MNIST-M 10/class, seeds 0-2 (benchmarks/results/accuracy.md)
    ci = bench.stats.paired_ci([1.37, 0.63, 7.16])
    # by hand: mean 9.16 / 3; sd sqrt(sum((d - mean)^2) / 2); t(0.975, 2) = 4.302653
    mean = 9.16 / 3
    sd = math.sqrt(((1.37 - mean) ** 2 + (0.63 - mean) ** 2 + (7.16 - mean) ** 2) / 2)
    assert ci.n == 3
    assert ci.mean == pytest.approx(3.0533, abs=1e-4)
    assert ci.sd == pytest.approx(sd) and sd == pytest.approx(3.5757, abs=1e-4)
    assert ci.half_width == pytest.approx(4.302653 * sd / math.sqrt(3), rel=1e-6)
    assert ci.half_width == pytest.approx(8.882, abs=1e-3)
    assert (ci.lo, ci.hi) == (pytest.approx(mean - 8.8825, abs=1e-3), pytest.approx(11.936, 1e-3))
    assert ci.t_stat == pytest.approx(mean / (sd / math.sqrt(3)))
    assert ci.p_value == pytest.approx(0.2772, abs=1e-3)
    assert not ci.significant
    assert bench.stats.verdict(ci) == "within noise"


def test_describe_reads_like_the_docs(bench):
    ci = bench.stats.paired_ci([1.37, 0.63, 7.16])
    text = "+3.05 points [95% CI -5.83, +11.94], n=3, p=0.28: not significant"
    assert bench.stats.describe(ci) == text
    assert bench.stats.describe(ci, unit="") == text.replace(" points", "")


def test_a_large_consistent_margin_is_significant(bench):
    ci = bench.stats.paired_ci([26.7, 25.8, 26.2, 26.5, 25.9])  # paired - single, 5 seeds
    assert ci.significant and ci.lo is not None and ci.lo > 25.0
    assert ci.p_value is not None and ci.p_value < 1e-6
    assert bench.stats.verdict(ci) == "significant"
    assert bench.stats.describe(ci).endswith("p<0.001: significant")
    down = bench.stats.paired_ci([-1.0, -1.2, -0.9, -1.1])  # significant the other way
    assert down.significant and down.hi is not None and down.hi < 0.0


def test_interval_and_p_value_agree(bench):
    # the interval excludes 0 exactly when the two-sided p is below 1 - level
    for diffs in ([0.5, 1.5, 0.2], [2.0, -0.5, 1.0, 0.7], [0.9, 1.1], [-3.0, 0.4, -1.2, -2.2]):
        for level in (0.8, 0.9, 0.95, 0.99):
            ci = bench.stats.paired_ci(diffs, level)
            assert ci.significant == (ci.p_value < 1 - level), (diffs, level)
    wide, narrow = (bench.stats.paired_ci([0.5, 1.5, 0.2], lv) for lv in (0.99, 0.8))
    assert wide.half_width > narrow.half_width


def test_one_seed_has_no_interval(bench):
    ci = bench.stats.paired_ci([2.5])
    assert (ci.n, ci.mean) == (1, 2.5)
    assert ci.sd is None and ci.half_width is None and ci.lo is None and ci.hi is None
    assert ci.p_value is None and not ci.significant
    assert bench.stats.verdict(ci) == "one seed"
    assert "n=1" in bench.stats.describe(ci) and "significant" not in bench.stats.describe(ci)


def test_bad_input_is_refused(bench):
    with pytest.raises(ValueError, match="at least one"):
        bench.stats.paired_ci([])
    with pytest.raises(ValueError, match="finite"):
        bench.stats.paired_ci([1.0, float("nan")])
    with pytest.raises(ValueError, match="level"):
        bench.stats.paired_ci([1.0, 2.0], level=95)


def test_identical_differences(bench):
    same = bench.stats.paired_ci([0.5, 0.5, 0.5])
    assert same.half_width == 0.0 and same.p_value == 0.0 and same.significant
    zero = bench.stats.paired_ci([0.0, 0.0])
    assert zero.p_value == 1.0 and not zero.significant


def test_every_benchmark_formats_mean_std_with_the_packages_one():
    import ast
    from pathlib import Path

    from jadecli.summarize import mean_std

    assert mean_std([]) == "-"
    assert mean_std([2.0]) == "2.00"
    assert mean_std([1.0, 2.0, 3.0]) == "2.00 ± 1.00"
    folder = Path(__file__).resolve().parent.parent / "benchmarks"
    for path in folder.glob("*.py"):
        defined = [
            n.name
            for n in ast.walk(ast.parse(path.read_text()))
            if isinstance(n, ast.FunctionDef) and n.name == "mean_std"
        ]
        assert not defined, f"{path.name} defines its own mean_std"


# --------------------------------------------------------------------------- accuracy.py


def test_accuracy_margins_table_and_dev_column(bench):
    acc = bench.accuracy
    row = acc.difference_row("jade - paired", [1.37, 0.63, 7.16])
    assert row == "| jade - paired | +3.05 | [-5.83, +11.94] | 3 | 3/3 | 0.28 | within noise |"
    args = acc.parse_args(["--pairs", "", "--pair", "x=--primary synth-street", "--dev"])
    assert args.seeds == "0,1,2,3,4"
    pair = acc.pairs_from(args)[0]
    accs = {"paired": [70.83, 73.38, 63.53], "jade": [72.20, 74.01, 70.69]}
    results = [
        acc.Result("x", model, s, a, 97.0, 10.0, "completed", "jade train", "r", {"dev": a + 1})
        for model, values in accs.items()
        for s, a in enumerate(values)
    ]
    text = acc.render(results, [pair], args, 60.0)
    assert "| model | primary acc (mean ± std) | per seed | dev acc (mean ± std) |" in text
    assert "| jade | **72.30 ± 1.66** | s0: 72.20, s1: 74.01, s2: 70.69 | 73.30 ± 1.66 |" in text
    assert "| jade - paired | +3.05 | [-5.83, +11.94] | 3 | 3/3 | 0.28 | within noise |" in text
    assert "train-unlabeled" in text


def test_accuracy_parallel_runs_slowest_first_and_renders_in_matrix_order(
    bench, tmp_path, monkeypatch
):
    acc = bench.accuracy
    started: list[tuple[str, int, str | None]] = []

    def fake_run_one(pair, model, seed, args, env=None):
        started.append((model, seed, None if env is None else env["OMP_NUM_THREADS"]))
        score = {"single": 50.0, "paired": 60.0, "jade": 70.0}[model] + seed
        return acc.Result(pair.name, model, seed, score, 97.0, 1.0, "completed", "c", "r")

    monkeypatch.setattr(acc, "run_one", fake_run_one)
    monkeypatch.setattr(acc, "usable_cpus", lambda: 4)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    out = tmp_path / "acc.md"
    argv = ["--pairs", "", "--pair", "x=--primary synth-street", "--seeds", "0,1"]
    assert acc.main([*argv, "--parallel", "2", "--out", str(out)]) == 0
    # with 2 workers the first two submitted run first: both jade seeds, 2 threads each
    assert started[:2] == [("jade", 0, "2"), ("jade", 1, "2")]
    assert {m for m, _, _ in started[4:]} == {"single"}
    text = out.read_text()
    assert "2 at a time with 2 thread(s) each" in text
    rows = [x for x in text.splitlines() if x.startswith(("| single |", "| paired |", "| jade |"))]
    assert [r.split(" |")[0] for r in rows] == ["| single", "| paired", "| jade"]
    assert "| paired - single | +10.00 |" in text
    json_rows = json.loads(out.with_suffix(".json").read_text())
    assert [(r["model"], r["seed"]) for r in json_rows][:2] == [("single", 0), ("single", 1)]
    # one run at a time: the caller's environment, untouched
    started.clear()
    assert acc.main(argv) == 0 and {e for _, _, e in started} == {None}
    with pytest.raises(SystemExit):
        acc.parse_args([*argv, "--parallel", "0"])


def test_saved_dev_is_read_only_when_it_scored_the_final_weights(bench, tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.pt").write_bytes(b"weights")
    out = run / "analysis" / "evaluate-train-unlabeled"
    out.mkdir(parents=True)
    report = {
        "status": "completed",
        "checkpoint": "checkpoints/last.pt",
        "split": "train-unlabeled",
        "limit": None,
        "primary": {"accuracy": 0.8125},
    }
    (out / "summary.json").write_text(json.dumps(report))
    assert bench.accuracy.saved_dev(run) == pytest.approx(81.25)
    # weights written after the evaluation (a --resume): stale
    later = (out / "summary.json").stat().st_mtime + 10
    os.utime(run / "checkpoints" / "last.pt", (later, later))
    assert bench.accuracy.saved_dev(run) is None
    os.utime(run / "checkpoints" / "last.pt", (later - 20, later - 20))
    assert bench.accuracy.saved_dev(run) == pytest.approx(81.25)
    (out / "summary.json").write_text(json.dumps({**report, "status": "running"}))
    assert bench.accuracy.saved_dev(run) is None
    assert bench.accuracy.saved_dev(tmp_path / "missing") is None


# --------------------------------------------------------------------------- search.py


def test_search_command_never_reads_test_data_and_lets_trials_override(bench, tmp_path):
    search = bench.search
    argv = ["--pair", "mnistm10", "--trial", "base=", "--trial", "ep20=--epochs 20"]
    args = search.parse_args([*argv, "--data-dir", "D", "--", "--epochs", "5"])
    pair = search.parse_pairs(args.pair)[0]
    base, ep20 = search.parse_trials(args.trial)
    assert (base.flags, ep20.flags) == ([], ["--epochs", "20"])
    cmd = search.train_command(pair, ep20, 3, tmp_path / "run", args)
    assert cmd[:2] == ["jade", "train"] and cmd[2 : 2 + len(pair.args)] == pair.args
    assert cmd.index("5") < cmd.index("20")  # the trial's --epochs comes last, so it wins
    tail = ["--no-test", "--eval-every", "0", "--no-progress", "--seed", "3"]
    assert cmd[-9:] == [*tail, "--out", str(tmp_path / "run"), "--overwrite"]
    assert cmd[cmd.index("--model") + 1] == "jade"
    assert cmd[cmd.index("--data-dir") + 1] == "D"
    with pytest.raises(SystemExit):
        search.parse_trials(["a b=--epochs 2"])  # not a folder-safe name
    with pytest.raises(SystemExit):
        search.parse_trials(["x=", "x=--epochs 2"])


def test_search_runs_trials_in_parallel_logs_and_renders(bench, tmp_path, monkeypatch):
    search = bench.search
    dev = {("base", 0): 70.0, ("base", 1): 72.0, ("base", 2): 71.0}
    dev |= {("up", 0): 73.0, ("up", 1): 75.5, ("up", 2): 74.2}
    seen_env: list[str] = []

    def fake_execute(job, args, env):
        seen_env.append(env["OMP_NUM_THREADS"])
        failed = job.trial.name == "broken"
        return search.Outcome(
            finished="",
            pair=job.pair.name,
            trial=job.trial.name,
            flags=search.shown(job.trial.flags),
            seed=job.seed,
            model=args.model,
            dev=None if failed else dev[(job.trial.name, job.seed)],
            train_seconds=12.0,
            wall_s=30.0,
            status="failed" if failed else "completed",
            error="error: boom" if failed else None,
            reused=False,
            evaluated=not failed,
            command=search.shown(job.command),
            run=str(job.run),
        )

    monkeypatch.setattr(search, "execute", fake_execute)
    monkeypatch.setattr(bench.accuracy, "usable_cpus", lambda: 8)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    log, md = tmp_path / "search.jsonl", tmp_path / "search.md"
    argv = ["--pair", "tiny=--primary synth-street --n-labeled 100 --auxiliary synth-hand"]
    argv += ["--trial", "base=", "--trial", "up=--match-weight 10", "--trial", "broken=--x"]
    argv += ["--seeds", "0,1,2", "--parallel", "2", "--runs", str(tmp_path / "runs")]
    argv += ["--log", str(log), "--out", str(md), "--", "--epochs", "1"]
    assert search.main(argv) == 1  # a failed run is reported, not fatal
    assert seen_env == ["4"] * 9  # 8 CPUs, 2 runs at a time
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    assert len(lines) == 9 and {x["trial"] for x in lines} == {"base", "up", "broken"}
    assert all(x["finished"] and x["command"].endswith("--overwrite") for x in lines)
    text = md.read_text()
    assert "the test split was never evaluated in these runs" in text
    assert "| base | (none) | **71.00 ± 1.00** | s0: 70.00, s1: 72.00, s2: 71.00 |" in text
    # up - base per seed: 3.0, 3.5, 3.2
    up = next(x for x in text.splitlines() if x.startswith("| up |"))
    assert "| +3.23 | [+2.61, +3.86] |" in up and "| significant |" in up
    assert "| broken |" in text and "broken seed 0: error: boom" in text
    # a caller's thread cap is kept
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    seen_env.clear()
    search.main([*argv[: argv.index("--log")], "--", "--epochs", "1"])
    assert set(seen_env) == {"1"}


def test_search_reuses_a_completed_run_of_the_same_command(bench, tmp_path, monkeypatch):
    search = bench.search
    args = search.parse_args(["--pair", "usps10", "--trial", "base=", "--reuse"])
    pair, trial = search.parse_pairs(args.pair)[0], search.parse_trials(args.trial)[0]
    run = tmp_path / "usps10-base-seed0"
    run.mkdir()
    cmd = search.train_command(pair, trial, 0, run, args)
    manifest = {"status": "completed", "command": search.shown(cmd), "train_seconds": 42.0}
    (run / "manifest.yaml").write_text(json.dumps(manifest))  # JSON is YAML

    def no_training(*a, **k):
        raise AssertionError("a reusable run was trained again")

    monkeypatch.setattr(search.subprocess, "run", no_training)
    monkeypatch.setattr(search, "dev_score", lambda *a: {"dev": 96.5, "dev_source": "saved"})
    out = search.execute(search.Job(pair, trial, 0, run, cmd), args, {})
    assert (out.status, out.dev, out.train_seconds, out.reused) == ("completed", 96.5, 42.0, True)
    assert not out.evaluated and out.wall_s is None
    # another command in that folder (the trial's flags changed): trained again
    other = search.train_command(pair, search.Trial("base", ["--epochs", "3"]), 0, run, args)
    with pytest.raises(AssertionError, match="trained again"):
        search.execute(search.Job(pair, trial, 0, run, other), args, {})
