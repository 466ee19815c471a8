"""`jade export`: a run's classifier as a TorchScript or ONNX file that predicts what the run
predicts, from raw images prepared as FILE.json says; checked on export, or nothing written."""

from __future__ import annotations

import json
import shutil
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import typer

from jadecli import __version__
from jadecli.analysis.common import LoadedRun, open_run
from jadecli.cli import app
from jadecli.config import ExportConfig, RunSource, field_names
from jadecli.data.registry import load_synth
from jadecli.progress import NullReporter

VERIFY = "120"  # test images each export is checked on (the default, 500, is for users)


def export_args(run: Path, fmt: str, out: Path, *extra: str) -> list[str]:
    return [
        "export",
        str(run),
        "--format",
        fmt,
        "--out",
        str(out),
        "--verify-images",
        VERIFY,
        *extra,
    ]


def error_line(result) -> str:
    """The one `error:` line of a failed command (no traceback)."""
    assert "Traceback" not in result.output, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.output
    return errors[0]


def raw_test_images(synth_dir: Path, name: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `n` test images of a built-in dataset as generated (before any run's resizing,
    padding or channel change), and their labels."""
    ds = load_synth(name, synth_dir, lambda msg: None)
    return ds.test.images[:n], ds.test.labels[:n]


def prepare(images: torch.Tensor, meta: dict) -> torch.Tensor:
    """Raw uint8 images (N, c, h, w) -> the exported file's input, following FILE.json only."""
    pre = meta["preprocessing"]
    x = images
    if pre["resize_to"] is not None:  # bilinear, antialiased, back to uint8 (built-in datasets)
        x = F.interpolate(x.float(), size=tuple(pre["resize_to"]), mode="bilinear", antialias=True)
        x = x.round().clamp(0, 255).to(torch.uint8)
    p = pre["pad"]
    x = F.pad(x, (p, p, p, p))
    if pre["grey_to_rgb"]:
        x = x.repeat(1, 3, 1, 1)
    return x.float() / 255  # (N, C, H, W)


@pytest.fixture(scope="module")
def opened(trained_runs) -> Callable[[str], LoadedRun]:
    """The session's tiny runs opened as the analysis commands open them (once per module)."""
    cache: dict[str, LoadedRun] = {}

    def get(model: str) -> LoadedRun:
        if model not in cache:
            source = RunSource(trained_runs[model], device="cpu", precision="fp32")
            cache[model] = open_run(source, NullReporter())
        return cache[model]

    return get


def run_logits(loaded: LoadedRun, role: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """PyTorch's fp32 logits of the run's model on the first `n` test images as jadecli loads
    them, and their labels."""
    part = loaded.images(role, "test", n)
    assert part is not None
    with torch.inference_mode():
        logits = loaded.model.classify(role, part.images.float().div(255))
    return logits, part.labels


def load_torchscript(path: Path) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch marks torch.jit deprecated
        return torch.jit.load(str(path))


@pytest.mark.slow
def test_torchscript_export_predicts_as_the_run_and_evaluate(
    runner, trained_runs, opened, synth_dir, tmp_path
):
    run = trained_runs["jade"]
    out = tmp_path / "models" / "jade.pt"  # the folder is created
    result = runner.invoke(app, export_args(run, "torchscript", out))
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.parent.iterdir()) == ["jade.pt", "jade.pt.json"]
    meta = json.loads((out.parent / "jade.pt.json").read_text())

    assert meta["format"] == "torchscript" and meta["file"] == "jade.pt"
    assert meta["jadecli_version"] == __version__
    assert meta["source"]["run"] == str(run.resolve())
    assert meta["source"]["checkpoint"] == str((run / "checkpoints" / "last.pt").resolve())
    assert meta["source"]["epoch"] == 2 and meta["source"]["model"] == "jade"
    assert meta["dataset"] == {"role": "primary", "name": "synth-street"}
    assert meta["input"]["shape"] == ["batch", 3, 28, 28]
    pre = meta["preprocessing"]
    # the jade run resized the 32 px street images to the 28 px of the handwriting
    assert (pre["resize_to"], pre["pad"], pre["grey_to_rgb"]) == ([28, 28], 0, False)
    assert meta["output"]["classes"] == [str(d) for d in range(10)]
    check = meta["verification"]
    assert check["images"] == int(VERIFY) and check["passed"] is True
    assert check["tolerance"] == pytest.approx(1e-4 * check["logit_scale"])
    assert 0 <= check["max_abs_diff"] <= check["tolerance"]
    assert "max |logit difference|" in result.output and str(out) in result.output

    # a user's way: plain torch.jit.load, raw images prepared as the JSON says
    model = load_torchscript(out)
    n = 150  # not the verification count, nor the traced batch: the batch axis is dynamic
    images, labels = raw_test_images(synth_dir, "synth-street", n)
    with torch.inference_mode():
        got = model(prepare(images, meta))
    want, want_labels = run_logits(opened("jade"), "primary", n)
    assert torch.equal(labels, want_labels)
    assert got.shape == (n, 10)
    assert torch.allclose(got, want, atol=1e-4, rtol=0)
    assert torch.equal(got.argmax(1), want.argmax(1))

    # ... and its accuracy is what `jade evaluate` reports (fp32, as the file computes)
    copy = tmp_path / "run-copy"  # evaluate appends to the run's manifest
    shutil.copytree(run, copy)
    args = ["evaluate", str(copy), "--device", "cpu", "--precision", "fp32", "--format", "json"]
    evaluated = runner.invoke(app, [*args, "--test-limit", str(n)])
    assert evaluated.exit_code == 0, evaluated.output
    report = json.loads(evaluated.stdout)
    correct = int((got.argmax(1) == labels).sum())
    assert report["primary"]["accuracy"] == correct / n


@pytest.mark.slow
def test_onnx_export_of_the_auxiliary_classifier(runner, trained_runs, opened, synth_dir, tmp_path):
    import onnxruntime as ort

    run = trained_runs["jade"]
    out = tmp_path / "aux.onnx"
    result = runner.invoke(app, [*export_args(run, "onnx", out), "--dataset", "auxiliary"])
    assert result.exit_code == 0, result.output
    meta = json.loads((tmp_path / "aux.onnx.json").read_text())
    assert meta["format"] == "onnx" and meta["dataset"]["name"] == "synth-hand"
    pre = meta["preprocessing"]
    # grey 28 px handwriting, given 3 channels beside the colour street images
    assert (pre["resize_to"], pre["source_channels"], pre["grey_to_rgb"]) == (None, 1, True)
    assert meta["input"]["shape"] == ["batch", 3, 28, 28]
    check = meta["verification"]
    assert check["runtime"].startswith("onnxruntime") and check["passed"] is True
    assert check["tolerance"] == pytest.approx(1e-3 * check["logit_scale"])
    assert check["max_abs_diff"] <= check["tolerance"]

    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == [meta["input"]["name"]]
    n = 77
    images, labels = raw_test_images(synth_dir, "synth-hand", n)
    assert images.shape[1] == 1  # the raw images are grey
    x = prepare(images, meta).numpy()
    (got,) = session.run([meta["output"]["name"]], {meta["input"]["name"]: x})
    want, want_labels = run_logits(opened("jade"), "auxiliary", n)
    assert torch.equal(labels, want_labels)
    assert np.abs(got - want.numpy()).max() <= 1e-3 * max(1.0, float(want.abs().max()))
    assert np.array_equal(got.argmax(1), want.argmax(1).numpy())


@pytest.mark.slow
@pytest.mark.parametrize(("model", "fmt"), [("single", "onnx"), ("paired", "torchscript")])
def test_single_and_paired_runs_export(runner, trained_runs, opened, tmp_path, model, fmt):
    run = trained_runs[model]
    out = tmp_path / f"{model}.model"
    out.write_text("an older export")
    result = runner.invoke(app, export_args(run, fmt, out))
    assert "--overwrite" in error_line(result) and result.exit_code == 1
    assert out.read_text() == "an older export"  # refused: nothing changed

    result = runner.invoke(app, [*export_args(run, fmt, out), "--overwrite"])
    assert result.exit_code == 0, result.output
    meta = json.loads(out.with_name(out.name + ".json").read_text())
    assert meta["source"]["model"] == model and meta["verification"]["passed"] is True
    want, _ = run_logits(opened(model), "primary", 40)
    # the single run kept synth-street's own 32 px; the paired one took the auxiliary's 28
    side = 32 if model == "single" else 28
    assert meta["input"]["shape"] == ["batch", 3, side, side]
    x = opened(model).images("primary", "test", 40).images.float().div(255)  # (40, 3, side, side)
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        got = torch.from_numpy(session.run(None, {"images": x.numpy()})[0])
    else:
        with torch.inference_mode():
            got = load_torchscript(out)(x)
    assert torch.equal(got.argmax(1), want.argmax(1))
    assert (got - want).abs().max() <= meta["verification"]["tolerance"]


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_a_failed_check_writes_nothing(runner, trained_runs, tmp_path, monkeypatch, fmt):
    import jadecli.analysis.export as export

    monkeypatch.setattr(export, "TOLERANCE", {"torchscript": -1.0, "onnx": -1.0})
    target = tmp_path / "target"
    target.mkdir()
    out = target / "new" / "deeper" / "model.bin"
    result = runner.invoke(app, export_args(trained_runs["single"], fmt, out))
    assert result.exit_code == 1
    line = error_line(result)
    assert "does not match PyTorch" in line and "nothing was written" in line
    assert list(target.iterdir()) == []  # no file, no temporary, not even the new folders

    old = target / "model.bin"  # --overwrite replaces a file only with a checked one
    old.write_text("the previous export")
    result = runner.invoke(app, [*export_args(trained_runs["single"], fmt, old), "--overwrite"])
    assert result.exit_code == 1 and "does not match PyTorch" in error_line(result)
    assert [p.name for p in target.iterdir()] == ["model.bin"]
    assert old.read_text() == "the previous export"


def test_onnx_without_the_extra_says_what_to_install(runner, trained_runs, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    target = tmp_path / "target"
    target.mkdir()
    result = runner.invoke(app, export_args(trained_runs["jade"], "onnx", target / "m.onnx"))
    assert result.exit_code == 1
    assert "pip install 'jadecli[export]'" in error_line(result)
    assert list(target.iterdir()) == []


@pytest.mark.parametrize(
    ("extra", "code", "needles"),
    [
        (["--format", "tflite"], 2, ["--format", "torchscript, onnx", "tflite"]),
        (["--dataset", "both"], 2, ["--dataset", "primary, auxiliary"]),
        (["--verify-images", "0"], 2, ["--verify-images"]),
    ],
)
def test_bad_flag_values(runner, trained_runs, tmp_path, extra, code, needles):
    target = tmp_path / "target"
    target.mkdir()
    result = runner.invoke(
        app, export_args(trained_runs["jade"], "onnx", target / "m.onnx", *extra)
    )
    assert result.exit_code == code
    line = error_line(result)
    assert all(needle in line for needle in needles), line
    assert list(target.iterdir()) == []


def test_bad_runs_and_targets(runner, trained_runs, tmp_path, monkeypatch):
    target = tmp_path / "target"  # the test's working directory is tmp_path itself
    target.mkdir()
    out = target / "m.pt"

    def fails(args: list[str], code: int, *needles: str) -> None:
        result = runner.invoke(app, args)
        assert result.exit_code == code, result.output
        line = error_line(result)
        assert all(needle in line for needle in needles), line

    fails(export_args(target / "nope", "torchscript", out), 1, "RUN", "no such folder")
    single = trained_runs["single"]
    fails(
        [*export_args(single, "torchscript", out), "--dataset", "auxiliary"],
        2,
        "--dataset",
        "single run",
        "no auxiliary encoder",
    )
    fails(["export", str(single), "--out", str(out)], 2, "--format", "required")
    fails(["export", str(single), "--format", "onnx"], 2, "--out", "required")
    blocker = target / "a-file"
    blocker.write_text("x")
    fails(export_args(single, "torchscript", blocker / "m.pt"), 1, "--out", "is a file")
    folder = target / "a-folder"
    folder.mkdir()
    fails(export_args(single, "torchscript", folder), 1, "--out", "is a folder")
    sidecar = target / "m.pt.json"  # FILE.json alone is protected too
    sidecar.write_text("{}")
    fails(export_args(single, "torchscript", out), 1, "m.pt.json exists", "--overwrite")
    assert sorted(p.name for p in target.iterdir()) == ["a-file", "a-folder", "m.pt.json"]
    assert sidecar.read_text() == "{}" and list(folder.iterdir()) == []

    # a folder this user may not write in (tests may run as root, who may write anywhere)
    real_mkdir = Path.mkdir

    def mkdir(self: Path, *args, **kwargs) -> None:
        if self.parent == folder:
            raise PermissionError(13, "Permission denied", str(self))
        real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    locked = export_args(single, "torchscript", folder / "m.pt")
    fails(locked, 1, "--out", "cannot write in", "Permission denied")
    assert list(folder.iterdir()) == []


def test_every_export_option_is_a_config_field(runner):
    command = typer.main.get_command(app).commands["export"]  # type: ignore[attr-defined]
    assert {p.name for p in command.params} == set(field_names(ExportConfig))
    listed = runner.invoke(app, ["--help"])
    assert listed.exit_code == 0 and "export" in listed.output
