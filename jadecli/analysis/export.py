"""`jade export RUN --format torchscript|onnx --out FILE`: one dataset's classifier as a file.

The exported module takes a float32 batch (B, C, H, W) in [0, 1] (uint8 pixels / 255, as
`compute.to_input` feeds the model) and returns the class logits (B, K), exactly the path
`jade evaluate` predicts from: for JADE the encoder's content posterior mean into the shared
classifier, for single and paired runs the CNN's bottleneck features into it. Probabilities are
`softmax(logits, dim=1)`; they are left out of the file so it has one output, as plain
classifiers do. The model is exported in fp32 and eval mode (BatchNorm running statistics,
dropout off) whatever precision the run trained in, with the batch dimension dynamic.

Before anything is written in place, the file is loaded back the way a user would load it
(`torch.jit.load`, or an `onnxruntime.InferenceSession`) and run on the first `--verify-images`
test images of the dataset; its logits are compared with PyTorch's. Beside FILE goes FILE.json:
the preprocessing of raw images (size, padding, channels, scaling), the class names in output
order, the source run and checkpoint, the jadecli version and the check's result. Both files are
written under temporary names and `os.replace`d into place only after the check passed.

    jade export runs/quickstart --format onnx --out quickstart.onnx
"""

from __future__ import annotations

import copy
import json
import os
import secrets
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from jadecli import __version__
from jadecli.analysis.common import LoadedRun, open_run
from jadecli.config import ConfigError, ExportConfig, RunSource
from jadecli.data.core import ImageSet
from jadecli.errors import DataError, JadeError, RunDirError, StorageError
from jadecli.model import RoleModel
from jadecli.progress import Reporter
from jadecli.run import make_folders, now, remove_folders
from jadecli.spec import PRIMARY, ModelSpec

# Largest max |logit difference| accepted, per unit of logit scale (max(1, max |logit|): float32
# rounding grows with the size of the numbers). TorchScript runs the very ATen kernels PyTorch
# runs, so its logits come out bit-identical (measured: 0.0); 1e-4 only leaves room for another
# CPU's kernel choices. ONNX Runtime computes with its own kernels (MLAS convolutions and matrix
# products, another summation order): measured 2e-6 to 9e-6 on tiny runs' logits of scale 1-5,
# 2e-5 to 4e-5 on a ResNet-18 run's of scale ~45, so 1e-3 leaves over 100x headroom while a
# wrong weight, layer or preprocessing step moves logits by far more (1e-2 and up).
TOLERANCE = {"torchscript": 1e-4, "onnx": 1e-3}
INPUT_NAME, OUTPUT_NAME = "images", "logits"  # names of the ONNX graph's input and output
ONNX_OPSET = 17  # run by onnxruntime >= 1.14 and most other ONNX runtimes
TRACE_BATCH = 2  # the example batch traced; the check runs other batch sizes (dynamic batch)
EXTRA_HINT = "pip install 'jadecli[export]'"


@dataclass
class ExportResult:
    report: dict[str, Any]  # what FILE.json holds
    out: Path  # the exported file
    metadata: Path  # FILE.json


class ExportedClassifier(nn.Module):
    """images (B, C, H, W) in [0, 1] -> logits (B, K) of dataset `role`, as the model predicts."""

    def __init__(self, model: RoleModel, role: str):
        super().__init__()
        self.model, self.role = model, role

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.classify(self.role, images)  # (B, K)


def metadata_path(out: Path) -> Path:
    """FILE.json beside FILE (model.onnx -> model.onnx.json)."""
    return out.with_name(out.name + ".json")


def export(cfg: ExportConfig, reporter: Reporter) -> ExportResult:
    """Export RUN's classifier of `cfg.dataset` to `cfg.out`, check it, write FILE.json."""
    assert cfg.out is not None and cfg.format is not None  # ExportConfig requires both
    fmt, out = cfg.format, cfg.out
    if fmt == "onnx":
        _require_onnx()  # before any work: a missing extra is the first thing to fix
    meta = metadata_path(out)
    _check_targets(out, meta, cfg.overwrite)
    created = make_folders(out, "--out")
    # a hidden folder beside FILE holds both files until the check passed: FILE keeps its own
    # name inside it (a TorchScript archive is named after its file) and os.replace moves them
    tmp = out.with_name(f".{out.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    tmp_out = tmp / out.name
    try:
        _claim(tmp, out)  # proves the folder writable before the run is loaded
        loaded, part = _open_for_export(cfg, reporter)
        reference = _fp32_copy(loaded.model)
        _write_classifier(cfg, fmt, reference, part, tmp_out, reporter)
        reporter.info(f"checking the exported file against PyTorch on {len(part)} test images")
        check = _verify(fmt, tmp_out, reference, cfg.dataset, part, cfg.batch_size)
        _require_match(fmt, check)
        report = _metadata(cfg, loaded, out, check)
        _move_into_place(report, tmp, out, meta)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        remove_folders(created)
        raise
    return ExportResult(report, out, meta)


def _open_for_export(cfg: ExportConfig, reporter: Reporter) -> tuple[LoadedRun, ImageSet]:
    """The run, loaded in fp32 on the CPU, and the test images the export is checked on."""
    source = RunSource(
        run=cfg.run,
        checkpoint=cfg.checkpoint,
        data_dir=cfg.data_dir,
        device="cpu",  # exported and checked on the CPU, where every runtime runs
        precision="fp32",
        batch_size=cfg.batch_size,
        command=cfg.command,
    )
    loaded = open_run(source, reporter, check_spec=_dataset_check(cfg))
    part = loaded.images(cfg.dataset, "test", cfg.verify_images)
    if part is None:
        raise DataError(
            f"the {cfg.dataset} dataset of {cfg.run} has no test images to check the export on"
        )
    return loaded, part


def _write_classifier(
    cfg: ExportConfig,
    fmt: str,
    reference: RoleModel,
    part: ImageSet,
    path: Path,
    reporter: Reporter,
) -> None:
    """A copy of `reference`'s classifier of `cfg.dataset`, pruned to the modules it calls,
    traced on the first test images and saved to `path` as `fmt`."""
    module = ExportedClassifier(copy.deepcopy(reference), cfg.dataset).eval()
    example = _as_input(part.images[:TRACE_BATCH])  # (2, C, H, W)
    _prune_unused(module, example)
    reporter.info(f"exporting the {cfg.dataset} classifier of {cfg.run} as {fmt}")
    if fmt == "onnx":
        _save_onnx(module, example, path)
    else:
        _save_torchscript(module, example, path)


def _require_match(fmt: str, check: dict[str, Any]) -> None:
    """Stop, before anything is written in place, when the file does not match PyTorch."""
    if not check["passed"]:
        raise JadeError(
            f"--format {fmt}: the exported model does not match PyTorch on the "
            f"{check['images']} test images checked (max |logit difference| "
            f"{check['max_abs_diff']:.3g}, tolerance {check['tolerance']:.3g}; argmax "
            f"differs on {check['argmax_disagreements']}); nothing was written"
        )


def _move_into_place(report: dict[str, Any], tmp: Path, out: Path, meta: Path) -> None:
    """Write FILE.json beside the checked file in the hidden folder `tmp`, then move both to
    their places and remove the folder."""
    tmp_out, tmp_meta = tmp / out.name, tmp / meta.name
    text = json.dumps(report, indent=2, allow_nan=False) + "\n"
    try:
        tmp_meta.write_text(text, encoding="utf-8")
        os.replace(tmp_out, out)
        os.replace(tmp_meta, meta)
        tmp.rmdir()
    except OSError as err:
        raise StorageError(out, err.strerror or str(err)) from None


# --------------------------------------------------------------------------- checks


def _require_onnx() -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as err:
        raise JadeError(
            f"--format onnx needs the packages onnx and onnxruntime ({err.name or 'one'} is "
            f"missing): {EXTRA_HINT}"
        ) from None


def _dataset_check(cfg: ExportConfig) -> Callable[[ModelSpec], None]:
    def check(spec: ModelSpec) -> None:
        if cfg.dataset != PRIMARY and spec.auxiliary_shape is None:
            raise ConfigError(
                "dataset",
                f"{cfg.dataset}: {cfg.run} is a {spec.kind} run, which has no auxiliary encoder; "
                "use --dataset primary",
            )

    return check


def _check_targets(out: Path, meta: Path, overwrite: bool) -> None:
    for path in (out, meta):
        if path.is_dir():
            raise RunDirError(f"--out {out}: {path} is a folder; give a file name to write")
        if path.exists() and not overwrite:
            what = f"--out {out}" if path == out else f"--out {out}: {path}"
            raise RunDirError(
                f"{what} exists; pass --overwrite to replace it, or choose another --out"
            )
    if out.parent.exists() and not out.parent.is_dir():
        raise RunDirError(f"--out {out}: {out.parent} is a file, not a folder")


def _claim(tmp: Path, out: Path) -> None:
    try:
        tmp.mkdir()
    except OSError as err:
        raise RunDirError(
            f"--out {out}: cannot write in {out.parent} ({err.strerror}); choose another --out"
        ) from None


# --------------------------------------------------------------------------- the module


def _fp32_copy(model: RoleModel) -> RoleModel:
    """The run's model in fp32, eval mode, on the CPU, in the default memory layout."""
    copied = copy.deepcopy(model).float().to("cpu", memory_format=torch.contiguous_format)
    return copied.eval()


def _as_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, C, H, W) -> float32 in [0, 1], contiguous (what FILE.json tells users to do)."""
    return images.float().div(255).contiguous()  # (B, C, H, W)


def _prune_unused(module: nn.Module, example: torch.Tensor) -> None:
    """Replace every submodule the classification path never calls (a JADE run's decoders, the
    other dataset's encoder and BatchNorm) with `nn.Identity`: the file then holds only the
    weights it uses. A module counts as used if it or any module inside it is called; a wrong
    guess cannot go unnoticed, the check compares the file with the untouched model."""
    called: set[int] = set()

    def mark(mod: nn.Module, args: Any) -> None:
        called.add(id(mod))

    handles = [m.register_forward_pre_hook(mark) for m in module.modules()]
    try:
        with torch.no_grad():
            module(example)
    finally:
        for handle in handles:
            handle.remove()

    def used(mod: nn.Module) -> bool:
        return id(mod) in called or any(used(child) for child in mod.children())

    def prune(mod: nn.Module) -> None:
        for name, child in list(mod.named_children()):
            if used(child):
                prune(child)
            else:
                setattr(mod, name, nn.Identity())

    prune(module)


def _save_torchscript(module: nn.Module, example: torch.Tensor, path: Path) -> None:
    try:
        with warnings.catch_warnings(), torch.no_grad():
            # torch >= 2.9 marks the TorchScript API deprecated; it still is what
            # torch.jit.load reads, and the check below is what vouches for the result
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(module, example, check_trace=False)
            torch.jit.save(traced, str(path))
    except OSError as err:
        raise StorageError(path, err.strerror or str(err)) from None
    except RuntimeError as err:
        raise JadeError(
            f"--format torchscript: torch could not trace the model ({_first(err)})"
        ) from None


def _save_onnx(module: nn.Module, example: torch.Tensor, path: Path) -> None:
    import inspect

    import onnx

    options: dict[str, Any] = {}
    # torch >= 2.9 defaults to the dynamo exporter, which needs onnxscript; the TorchScript-based
    # one needs nothing beyond onnx and handles every layer these models have
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        options["dynamo"] = False
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                (example,),
                str(path),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                opset_version=ONNX_OPSET,
                **options,
            )
        onnx.checker.check_model(str(path))
    except OSError as err:
        raise StorageError(path, err.strerror or str(err)) from None
    except (RuntimeError, ValueError, onnx.checker.ValidationError) as err:
        raise JadeError(
            f"--format onnx: torch could not export the model ({_first(err)})"
        ) from None


def _first(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:200] if text else type(err).__name__


# --------------------------------------------------------------------------- the check


def _runtime(fmt: str, path: Path) -> tuple[Callable[[torch.Tensor], torch.Tensor], str]:
    """The exported file loaded back as a user would: (batch -> logits, what ran it)."""
    if fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit.load's deprecation notice
            loaded = torch.jit.load(str(path), map_location="cpu").eval()

        def run_ts(x: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode():
                return loaded(x).float()

        return run_ts, f"torch.jit.load (torch {torch.__version__})"
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()  # as many threads as torch may use
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3  # errors only: its notes about folded constants are noise here
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    def run_ort(x: torch.Tensor) -> torch.Tensor:
        (logits,) = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})
        return torch.from_numpy(logits).float()

    return run_ort, f"onnxruntime {ort.__version__} (CPUExecutionProvider)"


def _verify(
    fmt: str,
    path: Path,
    reference: RoleModel,
    role: str,
    part: ImageSet,
    batch_size: int,
) -> dict[str, Any]:
    """The exported file against PyTorch on `part`: max |logit difference|, argmax agreement."""
    try:
        run, runtime = _runtime(fmt, path)
        ref_parts, out_parts = [], []
        for start in range(0, len(part), batch_size):
            x = _as_input(part.images[start : start + batch_size])  # (B, C, H, W)
            with torch.inference_mode():
                ref_parts.append(reference.classify(role, x).float())
            out_parts.append(run(x))
    except (RuntimeError, ValueError) as err:  # onnxruntime's errors are RuntimeErrors too
        raise JadeError(f"--format {fmt}: the exported file does not run ({_first(err)})") from None
    ref, got = torch.cat(ref_parts), torch.cat(out_parts)  # (N, K)
    diff = float((got - ref).abs().max())
    scale = max(1.0, float(ref.abs().max()))
    tolerance = TOLERANCE[fmt] * scale
    top2 = ref.topk(2, dim=1).values  # (N, 2); every run has at least 2 classes
    margin = top2[:, 0] - top2[:, 1]  # (N,)
    differ = got.argmax(1) != ref.argmax(1)
    # within the tolerance only a near-tie (margin <= 2 x tolerance) can flip; any other flip
    # is a real disagreement (NaN logits fail both tests: comparisons with NaN are False)
    real = differ & (margin > 2 * tolerance)
    passed = diff <= tolerance and not bool(real.any())
    n, labels = len(part), part.labels
    return {
        "runtime": runtime,
        "split": "test",
        "images": n,
        "max_abs_diff": diff,
        "logit_scale": scale,
        "tolerance": tolerance,
        "tolerance_per_unit_scale": TOLERANCE[fmt],
        "argmax_agreement": 1 - int(differ.sum()) / n,
        "argmax_disagreements": int(differ.sum()),
        "accuracy": int((got.argmax(1) == labels).sum()) / n,
        "pytorch_accuracy": int((ref.argmax(1) == labels).sum()) / n,
        "passed": passed,
    }


# --------------------------------------------------------------------------- FILE.json


def _metadata(
    cfg: ExportConfig, loaded: LoadedRun, out: Path, check: dict[str, Any]
) -> dict[str, Any]:
    role = cfg.dataset
    ds = loaded.datasets[role]
    c, h, w = ds.image_shape
    classes = list(ds.classes)
    what = (
        "the encoder's content posterior mean (mu_c) -> the shared classifier"
        if loaded.spec.generative
        else "the CNN's bottleneck features -> the classifier"
    )
    report: dict[str, Any] = {
        "format": cfg.format,
        "file": out.name,
        "created": now(),
        "jadecli_version": __version__,
        "torch_version": torch.__version__,
        "source": {
            "run": str(loaded.run.path.resolve()),
            "checkpoint": str(loaded.checkpoint_path.resolve()),
            "selected_checkpoint": loaded.checkpoint_tag() == "",
            "epoch": loaded.epoch,
            "model": loaded.kind,
            "arch": loaded.spec.arch,
            "trained_precision": str(loaded.manifest.get("precision", "fp32")),
            "exported_precision": "fp32",
        },
        "dataset": {"role": role, "name": ds.name},
        "input": {
            "name": INPUT_NAME,
            "shape": ["batch", c, h, w],
            "dtype": "float32",
            "layout": "NCHW",
            "range": [0.0, 1.0],
        },
        "preprocessing": preprocessing(loaded, role),
        "output": {
            "name": OUTPUT_NAME,
            "shape": ["batch", len(classes)],
            "meaning": "class logits; softmax over dim 1 gives the probabilities",
            "classes": classes,
            "predicts_from": what + " (as jade evaluate predicts)",
        },
        "verification": check,
    }
    if cfg.format == "onnx":
        report["onnx"] = {"opset": ONNX_OPSET, "dynamic_axes": {"batch": 0}}
    return report


def preprocessing(loaded: LoadedRun, role: str) -> dict[str, Any]:
    """How a raw image of dataset `role` becomes the file's input, as the run prepared it."""
    from jadecli.data.registry import reads_image_files

    cfg, ds = loaded.cfg, loaded.datasets[role]
    c, h, w = ds.image_shape
    pad = cfg.primary_pad if role == PRIMARY else cfg.auxiliary_pad
    size = cfg.primary_size if role == PRIMARY else cfg.auxiliary_size
    decoded = ds.info.get("channels_from")
    source_channels = int(decoded) if isinstance(decoded, int) else c
    grey_to_rgb = source_channels == 1 and c == 3
    side = (h - 2 * pad, w - 2 * pad)  # (H, W) before padding
    folder = reads_image_files(ds.name, ds.info)  # the rule `jade predict` reads files by
    method = (
        "Pillow Image.resize(BILINEAR) of the decoded image"
        if folder
        else "torch.nn.functional.interpolate(mode='bilinear', antialias=True) of the uint8 "
        "image as float, rounded back to uint8"
    )
    order = "grey" if source_channels == 1 else "RGB"
    steps = [
        f"decode the image as {'grey (Pillow mode L)' if order == 'grey' else 'RGB'}, uint8",
        (
            f"resize to {side[0]}x{side[1]} ({method})"
            if size is not None
            else f"the run took the images at {side[0]}x{side[1]} as they are; resize others "
            f"to that size"
        ),
    ]
    if pad:
        steps.append(f"pad {pad} black pixels on every side -> {h}x{w}")
    if grey_to_rgb:
        steps.append("repeat the grey channel into 3 identical channels")
    steps.append("convert to float32, divide by 255 (values in [0, 1]); no mean/std shift")
    steps.append(f"stack as (batch, {c}, {h}, {w}), channels first")
    return {
        "resize_to": list(side) if size is not None else None,
        "resize_method": method if size is not None else None,
        "image_size_before_pad": list(side),
        "pad": pad,
        "source_channels": source_channels,
        "channel_order": order,
        "grey_to_rgb": grey_to_rgb,
        "channels": c,
        "height": h,
        "width": w,
        "scale": "uint8 / 255 -> float32 in [0, 1]",
        "normalisation": (
            "none outside the model (its ResNet-18 trunk applies ImageNet's mean and std inside)"
            if loaded.spec.arch == "resnet18"
            else "none: the model takes the [0, 1] values as they are"
        ),
        "steps": steps,
    }
