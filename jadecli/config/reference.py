"""docs/options.md, generated from the option declarations, so it cannot drift from them.

    python -m jadecli.config.reference > docs/options.md

A test fails when the file in the repository differs from what this prints.
"""

from __future__ import annotations

from dataclasses import MISSING, Field
from typing import Any

from jadecli.config.commands import (
    EvaluateConfig,
    ExportConfig,
    LatentsConfig,
    PredictConfig,
    ReconstructConfig,
    SummarizeConfig,
)
from jadecli.config.options import flag, metavar, option_fields
from jadecli.config.resolve import TrainSession
from jadecli.config.train import TrainConfig

# command -> its config classes, in the order `jade --help` lists the commands
COMMANDS: dict[str, tuple[Any, ...]] = {
    "train": (TrainConfig, TrainSession),
    "evaluate": (EvaluateConfig,),
    "inspect-latents": (LatentsConfig,),
    "reconstruct": (ReconstructConfig,),
    "summarize": (SummarizeConfig,),
    "predict": (PredictConfig,),
    "export": (ExportConfig,),
}


def _name(f: Field[Any]) -> str:
    meta = f.metadata
    if meta["argument"]:
        return str(meta["metavar"])
    if str(f.type).startswith("bool") and not meta.get("switch"):
        return f"{flag(f.name)} / --no-{f.name.replace('_', '-')}"
    return f"{flag(f.name)} {metavar(f) or ''}".strip()


def _default(f: Field[Any]) -> str:
    if f.metadata["argument"]:
        return "required"
    value = f.default
    if value is MISSING or value is None:
        return ""
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def options_markdown() -> str:
    """Every option of every command, grouped by help panel, with its default and help text."""
    lines = [
        "# Every option of every command",
        "",
        "Generated from the option declarations (`python -m jadecli.config.reference`); the",
        "same text as `jade COMMAND --help`. `jade train` merges code defaults < `--preset` <",
        "`--config FILE.yaml` (keys as the flags, without `--`) < flags.",
    ]
    for command, classes in COMMANDS.items():
        lines += ["", f"## jade {command}", ""]
        fields = [f for cls in classes for f in option_fields(cls)]
        groups: dict[str, list[Field[Any]]] = {}
        for f in sorted(fields, key=lambda f: not f.metadata["argument"]):
            group = "Arguments" if f.metadata["argument"] else str(f.metadata["group"])
            groups.setdefault(group, []).append(f)
        for group, members in groups.items():
            if len(groups) > 1:
                lines += [f"**{group}**", ""]
            lines += ["| option | default | what it does |", "| --- | --- | --- |"]
            for f in members:
                name, default = _cell(_name(f)), _cell(_default(f))
                lines.append(f"| `{name}` | {default} | {_cell(str(f.metadata['help']))} |")
            lines.append("")
        if lines[-1] == "":
            lines.pop()
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(options_markdown(), end="")
