"""What a model is, as plain data: `ModelSpec`, the dataset roles, and the shape rules both the
data and the models follow. Imports nothing but the standard library, so the data package, the
objective and the run folder can read a model's description without building one.

    python -c "from jadecli.spec import ModelSpec; print(ModelSpec('jade', 'shared', (3, 32, 32), \
(3, 32, 32), 10, 10, 10, 500, 0.0).to_dict())"
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

PRIMARY, AUXILIARY = "primary", "auxiliary"  # the dataset roles every model answers by
ROLES = (PRIMARY, AUXILIARY)
MIN_SIDE = 8  # the smallest image side the models take (scikit-learn's digits)
ONE_TRUNK_ARCHES = ("shared", "resnet18")  # arches that feed both datasets through one trunk
STEMS = ("pool", "conv")  # what precedes the shared trunk over 32 px (jadecli.nets.shared_layers)


def one_trunk(arch: str) -> bool:
    """Whether `arch` feeds both datasets through one and the same trunk."""
    return arch in ONE_TRUNK_ARCHES


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a model from a checkpoint (plain data; `jade train` fills
    it from the run's config and data, `to_dict`/`from_dict` save and read it)."""

    kind: str  # single | paired | jade
    arch: str  # shared | paper | resnet18
    primary_shape: tuple[int, int, int]  # (C, H, W)
    auxiliary_shape: tuple[int, int, int] | None
    num_classes: int
    content_dim: int
    style_dim: int
    hidden_dim: int
    dropout: float
    batch_norm: str = "shared"  # shared | per-dataset (statistics of one trunk)
    style_encoder: str = "trunk"  # jade: own (a style CNN per dataset) | trunk (the trunk's)
    style_critic: bool = False  # jade: a classifier of z_s the encoders learn to leave guessing
    decoder_content: str = "sample"  # jade: what decoders get as content: sample | mean
    stem: str = "pool"  # shared trunk over 32 px: pool (2x2 average pools) | conv (stride-2)

    @property
    def generative(self) -> bool:
        """Whether the model has decoders and style latents (JADE)."""
        return self.kind == "jade"

    @property
    def norm_roles(self) -> tuple[str, ...]:
        """The roles that get BatchNorm layers of their own in a trunk both datasets share."""
        two = self.kind != "single" and self.batch_norm == "per-dataset"
        return ROLES if two else ()

    def to_dict(self) -> dict[str, Any]:
        """Plain data for a checkpoint (shapes as lists)."""
        out = asdict(self)
        out["primary_shape"] = list(self.primary_shape)
        if self.auxiliary_shape is not None:
            out["auxiliary_shape"] = list(self.auxiliary_shape)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        """The inverse of `to_dict`; KeyError/TypeError/ValueError if a value is missing."""

        def shape(value: Any) -> tuple[int, int, int]:
            c, h, w = (int(v) for v in value)
            return c, h, w

        aux = data["auxiliary_shape"]
        return cls(
            kind=str(data["kind"]),
            arch=str(data["arch"]),
            primary_shape=shape(data["primary_shape"]),
            auxiliary_shape=shape(aux) if aux is not None else None,
            num_classes=int(data["num_classes"]),
            content_dim=int(data["content_dim"]),
            style_dim=int(data["style_dim"]),
            hidden_dim=int(data["hidden_dim"]),
            dropout=float(data["dropout"]),
            batch_norm=str(data["batch_norm"]),
            style_encoder=str(data["style_encoder"]),
            style_critic=bool(data["style_critic"]),
            decoder_content=str(data["decoder_content"]),
            stem=str(data["stem"]),
        )
