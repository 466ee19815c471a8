"""`jade predict RUN PATH...` on tiny runs trained on image folders: the same preprocessing and
predictions as `jade evaluate`, paths, output formats, and every bad input."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from jadecli.cli import app
from tests.helpers import TINY, fingerprint, make_folder, make_mnist

CPU = ("--device", "cpu")


@pytest.fixture(scope="module")
def folder_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A JADE run on two image folders that exercises every preprocessing step (a grey 20 px
    primary padded by 2 and given 3 channels beside a 24 px colour auxiliary; test images of
    another size and in colour), and a single-classifier run on the primary alone."""
    root = tmp_path_factory.mktemp("predict")
    prim = make_folder(root / "prim", n_train=12, n_test=5, size=20, mode="L")
    for i, cls in enumerate(("a", "b", "c")):  # resized by Pillow and read as grey, as trained
        arr = np.full((26, 26, 3), 30, dtype=np.uint8)
        arr[:, i * 26 // 3 : (i + 1) * 26 // 3] = (250, 200, 120)
        Image.fromarray(arr).save(prim / "test" / cls / "big.png")
    aux = make_folder(root / "aux", n_train=30, n_test=5, size=24, mode="RGB", seed=1)
    runs = {"jade": root / "jade", "single": root / "single"}
    common = ["--n-labeled", "9", *TINY]
    jade = ["--primary", f"folder:{prim}", "--auxiliary", f"folder:{aux}", "--primary-pad", "2"]
    single = ["--primary", f"folder:{prim}", "--model", "single"]
    for name, args in (("jade", jade), ("single", single)):
        r = CliRunner().invoke(app, ["train", *args, *common, "--out", str(runs[name])])
        assert r.exit_code == 0, r.output
    runs["prim"], runs["aux"] = prim, aux
    return runs


def predict(*args: object) -> object:
    return CliRunner().invoke(app, ["predict", *map(str, args)])


def confusion(predictions: list[dict], classes: list[str]) -> list[list[int]]:
    """(true class from the parent folder's name, predicted) counts."""
    k = len(classes)
    matrix = [[0] * k for _ in range(k)]
    for p in predictions:
        matrix[classes.index(Path(p["path"]).parent.name)][classes.index(p["predicted"])] += 1
    return matrix


@pytest.mark.parametrize("role", ["primary", "auxiliary"])
def test_predicting_a_test_folder_repeats_evaluate(folder_runs, role):
    run = folder_runs["jade"]
    test_dir = folder_runs["prim" if role == "primary" else "aux"] / "test"
    before = fingerprint(run)
    r = predict(run, test_dir, "--dataset", role, "--format", "json", *CPU)
    assert r.exit_code == 0, r.output
    assert fingerprint(run) == before  # predict never writes to the run
    got = json.loads(r.stdout)
    ev = CliRunner().invoke(app, ["evaluate", str(run), "--format", "json", *CPU])
    assert ev.exit_code == 0, ev.output
    expected = json.loads(ev.stdout)[role]
    preds = got["predictions"]
    assert got["images"] == len(preds) == expected["images"]
    # image by image the same classes, so the same confusion matrix and the same accuracy
    assert confusion(preds, got["classes"]) == expected["confusion"]
    correct = sum(Path(p["path"]).parent.name == p["predicted"] for p in preds)
    assert correct / len(preds) == expected["accuracy"]
    assert len({p["predicted"] for p in preds}) > 1  # a trained model, not a constant one


def test_files_become_exactly_the_tensors_training_used(folder_runs, tmp_path):
    """Pixel for pixel: a folder run (Pillow resize, grey read of colour files, padding, grey
    -> 3 channels) and a tensor dataset resized by torch (MNIST 28 -> 24, padded to 32)."""
    from jadecli.analysis.common import open_model, open_run
    from jadecli.analysis.predict import run_recipe
    from jadecli.config import RunSource, TrainConfig
    from jadecli.data.folder import list_class_files
    from jadecli.data.pair import load_pair
    from jadecli.data.preprocess import ImageRecipe
    from jadecli.progress import NullReporter

    src = RunSource(folder_runs["jade"], device="cpu")
    loaded = open_run(src, NullReporter())
    m = open_model(src, NullReporter())
    for role in ("primary", "auxiliary"):
        recipe = run_recipe(m, role)
        classes, files, _ = list_class_files(
            folder_runs["prim" if role == "primary" else "aux"] / "test"
        )
        paths = [p for c in classes for p in files[c]]
        want = loaded.datasets[role].test.images
        assert recipe.input_shape == (3, 24, 24)
        assert torch.equal(recipe.load(paths), want)

    data = make_mnist(tmp_path / "mnist-data", n_train=20, n_test=10)
    digits = tuple("0123456789")
    aux = make_folder(tmp_path / "aux", classes=digits, n_train=1, n_test=1, size=32, mode="RGB")
    cfg = TrainConfig(primary="mnist", auxiliary=f"folder:{aux}", n_labeled=10, primary_pad=4)
    _, pair = load_pair(cfg, data, NullReporter())
    ds = pair.primary
    assert ds.image_shape == (3, 32, 32) and ds.info.get("channels_from") == 1
    pngs = []
    for i, img in enumerate(make_mnist_images(data)):
        pngs.append(data / f"{i}.png")
        Image.fromarray(img).save(pngs[-1])
    recipe = ImageRecipe.for_model("mnist", ds.image_shape, 4, ds.describe())
    assert recipe.size == (24, 24)
    assert torch.equal(recipe.load(pngs), ds.test.images)


@pytest.mark.parametrize(
    "name, record, from_files",
    [
        ("folder:scans", {}, True),
        ("mnist-m", {}, True),  # image folders
        ("mnist-m", {"format": "mnist_m release"}, True),  # PNG files too
        ("usps", {}, True),
        ("usps", {"format": "torchvision"}, False),  # usps.bz2: a tensor, resized as one
        ("mnist", {}, False),
        ("synth-street", {}, False),
    ],
)
def test_each_dataset_is_resized_the_way_its_loader_resized_it(name, record, from_files):
    from jadecli.data.preprocess import ImageRecipe

    assert ImageRecipe.for_model(name, (3, 32, 32), 2, record).from_files is from_files


def make_mnist_images(data: Path) -> np.ndarray:
    raw = (data / "MNIST" / "raw" / "t10k-images-idx3-ubyte").read_bytes()
    return np.frombuffer(raw[16:], dtype=np.uint8).reshape(-1, 28, 28)


def test_paths_folders_globs_and_formats(folder_runs, tmp_path):
    run = folder_runs["jade"]
    test = tmp_path / "test"
    shutil.copytree(folder_runs["prim"] / "test", test)
    (test / "notes.txt").write_text("not an image")
    (test / ".hidden.png").write_bytes(b"never looked at")
    (test / "c" / "more").mkdir()
    shutil.copy(test / "c" / "0.png", test / "c" / "more" / "deep.png")
    images = {str(p) for p in test.rglob("*.png") if not p.name.startswith(".")}
    # a folder (recursive), a quoted glob overlapping it and a file inside it: each file once
    args = [test, str(test / "b" / "*.png"), test / "a" / "0.png", *CPU]
    r = predict(run, *args)
    assert r.exit_code == 0, r.output
    rows = list(csv.reader(io.StringIO(r.stdout)))
    head = ["path", "predicted", "confidence", "class_1", "prob_1", "class_2", "prob_2"]
    assert rows[0] == [*head, "class_3", "prob_3"]  # top 3 by default
    paths = [row[0] for row in rows[1:]]
    assert sorted(paths) == sorted(images) and paths[0] == str(test / "a" / "0.png")
    assert "notes.txt" in r.stderr and "hidden" not in r.output
    for row in rows[1:]:
        probs = [float(row[i]) for i in (4, 6, 8)]
        assert row[1] == row[3] and float(row[2]) == probs[0]
        assert probs == sorted(probs, reverse=True) and sum(probs) == pytest.approx(1, abs=1e-4)
        assert len({row[3], row[5], row[7]}) == 3

    r1 = predict(run, *args, "--format", "jsonl", "--top-k", "1")
    assert r1.exit_code == 0, r1.output
    lines = [json.loads(line) for line in r1.stdout.splitlines()]
    assert [x["path"] for x in lines] == paths
    assert [x["predicted"] for x in lines] == [row[1] for row in rows[1:]]
    assert all(len(x["top"]) == 1 for x in lines)

    out = tmp_path / "out" / "deeper" / "pred.json"  # missing folders are made, as by train
    r2 = predict(run, *args, "--format", "json", "--out", out)
    assert r2.exit_code == 0, r2.output
    assert r2.stdout == ""
    doc = json.loads(out.read_text())
    assert doc["classes"] == ["a", "b", "c"] and doc["top_k"] == 3 and doc["failed"] == []
    assert doc["images"] == len(paths)
    assert [p["predicted"] for p in doc["predictions"]] == [row[1] for row in rows[1:]]
    assert [p.name for p in out.parent.iterdir()] == ["pred.json"]  # no temporary file left


def test_bad_images_are_named_and_the_rest_predicted(folder_runs, tmp_path):
    run = folder_runs["jade"]
    imgs = tmp_path / "imgs"
    shutil.copytree(folder_runs["prim"] / "test" / "a", imgs)
    good = len(list(imgs.iterdir()))
    (imgs / "corrupt.png").write_bytes(b"this is not a png")
    (imgs / "truncated.png").write_bytes((imgs / "0.png").read_bytes()[:60])
    for extra, code in (((), 1), (("--skip-bad",), 0)):
        r = predict(run, imgs, tmp_path / "gone.png", *CPU, *extra)
        assert r.exit_code == code, r.output
        rows = list(csv.DictReader(io.StringIO(r.stdout)))
        assert len(rows) == good
        warned = [line for line in r.stderr.splitlines() if line.startswith("warning:")]
        for name in ("corrupt.png", "truncated.png", "gone.png"):
            assert sum(name in line for line in warned) == 1, r.stderr
        assert not any(n in r.stdout for n in ("corrupt", "truncated", "gone"))
        errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == (1 if code else 0)
        assert "Traceback" not in r.output


def test_nothing_to_predict_is_one_line(folder_runs, tmp_path):
    run = folder_runs["jade"]
    (tmp_path / "empty").mkdir()
    r = predict(run, tmp_path / "empty", str(tmp_path / "*.jpg"), *CPU)
    assert r.exit_code == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: PATH ")
    assert "empty" in r.stderr and "*.jpg" in r.stderr


def test_a_missing_run_is_one_line(tmp_path):
    img = tmp_path / "x.png"
    Image.new("L", (20, 20)).save(img)
    r = predict(tmp_path / "no-run", img, *CPU)
    assert r.exit_code == 1 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and "no-run" in r.stderr and "Traceback" not in r.output


def test_an_unwritable_out_stops_before_any_work(folder_runs, tmp_path):
    img = folder_runs["prim"] / "test" / "a" / "0.png"
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    # checked first: the missing run is not even looked at
    for out in (blocker / "pred.csv", tmp_path):
        r = predict(tmp_path / "no-run", img, "--out", out, *CPU)
        assert r.exit_code == 2, r.output
        assert r.stderr.startswith("error: --out") and r.stderr.count("\n") == 1
    # the folders a failed command made for --out are removed again
    r = predict(tmp_path / "no-run", img, "--out", tmp_path / "new" / "dir" / "p.csv", *CPU)
    assert r.exit_code == 1 and "no-run" in r.stderr and not (tmp_path / "new").exists()
    # a failed command leaves an existing --out as it was
    old = tmp_path / "old.csv"
    old.write_text("previous results\n")
    r = predict(folder_runs["jade"], tmp_path / "nothing-here.png", "--out", old, *CPU)
    assert r.exit_code == 2 and old.read_text() == "previous results\n"


@pytest.mark.parametrize(
    "args, flag",
    [
        (["--top-k", "0"], "--top-k"),
        (["--top-k", "4"], "--top-k"),  # the run has 3 classes
        (["--format", "xml"], "--format"),
        (["--dataset", "both"], "--dataset"),
        (["--workers", "-1"], "--workers"),
    ],
)
def test_bad_flags_name_the_flag(folder_runs, args, flag):
    r = predict(folder_runs["jade"], folder_runs["prim"] / "test", *args, *CPU)
    assert r.exit_code == 2, r.output
    assert r.stderr.startswith(f"error: {flag}") and r.stderr.count("\n") == 1


def test_auxiliary_of_a_single_run_is_a_clean_error(folder_runs):
    r = predict(folder_runs["single"], folder_runs["prim"] / "test", "--dataset", "auxiliary", *CPU)
    assert r.exit_code == 2 and r.stdout == ""
    assert r.stderr.startswith("error: --dataset auxiliary") and "single" in r.stderr
    assert r.stderr.count("\n") == 1
    ok = predict(folder_runs["single"], folder_runs["prim"] / "test", "--workers", "0", *CPU)
    assert ok.exit_code == 0, ok.output
