"""The three models of the JADE paper, built from each dataset's image shape.

- `SingleClassifier`: primary CNN -> linear bottleneck (content_dim) -> shared-style MLP.
- `PairedClassifier`: one CNN + bottleneck per dataset, one MLP classifier for both.
- `JADE`: one VAE per dataset. Each encoder has two Gaussian heads, style z_s and content z_c;
  only z_c feeds the shared classifier, [z_s, z_c] feeds the dataset's own decoder.

With `arch="shared"` (the default recipe) both datasets go through one and the same trunk
(conv 32, 64, 128 with BatchNorm, a pool after each at digit sizes), the JADE content head is
shared too and only the style heads and decoders stay per dataset; with
`batch_norm="per-dataset"` each dataset has its own BatchNorm statistics and affine parameters
in it (`RoleBatchNorm`).
`arch="resnet18"` is the same with torchvision's ResNet-18 as the trunk. With `arch="paper"`,
encoders follow the authors' 2017 code: the primary gets the paper's SVHN CNN (conv 64, 96, 64,
8; 2x2 max-pool after the first three), the auxiliary the paper's MNIST CNN (conv 32, 32, 16,
pool after each). All convs are 3x3, ReLU, 'same' padding; pools round up ('same'), so
28 -> 14 -> 7 -> 4.

Any size from 8 px up: every trunk ends on a map of at most 4x4 (MAP_SIDE). The shared trunk
puts as many pools as that takes into its three convs, and for images over 32 px adds stride-2
16-filter stages in front; the paper's CNNs get pools alone at their end. Decoders mirror their
trunk's conv stack exactly (nearest-neighbour up-sampling back to each size pooled from, a
pixel shuffle for each stride-2 stage) and output logits (the sigmoid lives in the loss, in its
numerically stable form).

Every model answers by dataset role ("primary" or "auxiliary"): `classify(role, x)`,
`codes(role, x)` (what the analysis commands inspect), and for training
`forward_train(x_aux, x_primary)` then `loss_terms(out, x_aux, x_primary, y)`, its own terms of
the objective. Callers never branch on the model's kind.

    python -c "from jadecli.model import ModelSpec, build_model; print(build_model(ModelSpec(\
'jade', 'shared', (3, 64, 64), (3, 64, 64), 10, 10, 10, 500, 0.0)))"
"""

from __future__ import annotations

import copy
import math
import re
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from jadecli.objective import (
    TERMS,
    classifier_terms,
    jade_terms,
    kl_standard_normal,
    reconstruction_bce,
)

PRIMARY, AUXILIARY = "primary", "auxiliary"  # the dataset roles every model answers by
ROLES = (PRIMARY, AUXILIARY)

# (filters, max-pool after) per conv layer, from the authors' final code
PRIMARY_CNN = ((64, True), (96, True), (64, True), (8, False))
AUXILIARY_CNN = ((32, True), (32, True), (16, True))
# --arch shared: one batch-normalised conv stack for both datasets, 32-64-128 at digit sizes. A
# deeper 32-32-64-64-128 stack was 3.7x slower on CPU for about +0.5 point on USPS (94.1 vs 93.7,
# one seed).
SHARED_CNN = ((32, True), (64, True), (128, True))
# Larger images get extra stages of this width in front of SHARED_CNN, each a stride-2 conv (and,
# in a decoder, a conv at the lower resolution then a pixel shuffle): no layer runs at the full
# resolution, so a 128 px image costs ~2x a 32 px one, not 16x.
STEM_FILTERS = 16
STRIDE = "stride"  # a layer's downsampling: True = 2x2 max-pool after, STRIDE = stride-2 conv
# Every trunk ends on a feature map of at most MAP_SIDE x MAP_SIDE, whatever the input size, so
# the heads (and the decoders' first dense layer) keep the size they have for digits.
MAP_SIDE = 4
MIN_SIDE = 8  # the smallest image side the models take (scikit-learn's digits)
# log-variances are squashed into (-LOGVAR_LIMIT, LOGVAR_LIMIT): exp() of the difference of two
# of them, as in the matching KL, then stays far from overflow whatever the optimiser does.
LOGVAR_LIMIT = 12.0
# ImageNet statistics, the input normalisation torchvision's pretrained ResNets expect.
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


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
        )


def halvings(side: int) -> int:
    """How many 2x2 'same' pools take `side` down to at most MAP_SIDE (8 -> 1, 32 -> 3)."""
    n = 0
    while side > MAP_SIDE:
        side, n = (side + 1) // 2, n + 1
    return n


# (conv filters or None for a pool alone, downsampling: False, True (max-pool after) or STRIDE)
Layers = tuple[tuple[int | None, bool | str], ...]


def shared_layers(shape: tuple[int, int, int]) -> Layers:
    """The conv stack of `--arch shared` for images of `shape`: always conv 32-64-128, with as
    many 2x2 pools as take the image to <= 4x4 (8 px: one; 32 px: three); larger images get
    STEM_FILTERS-wide stride-2 stages in front (64 px: one; 128 px: two; 224 px: three)."""
    n = halvings(max(shape[1:]))
    stem = max(n - len(SHARED_CNN), 0)
    pools = [True] * min(n, len(SHARED_CNN)) + [False] * max(len(SHARED_CNN) - n, 0)
    body = tuple((f, p) for (f, _), p in zip(SHARED_CNN, pools, strict=True))
    return ((STEM_FILTERS, STRIDE),) * stem + body


def paper_layers(shape: tuple[int, int, int], layers: Layers) -> Layers:
    """The paper's CNN, plus pools alone at its end until the map is <= 4x4 (none at the
    digit sizes the paper used, so those models are exactly the paper's)."""
    side = max(shape[1:])
    for _, pool in layers:
        side = (side + 1) // 2 if pool else side
    return layers + ((None, True),) * halvings(side)


class RoleBatchNorm(nn.Module):
    """One BatchNorm per dataset (its own statistics and affine) in a trunk both datasets share;
    the trunk sets `role` before each forward pass."""

    def __init__(self, bn: nn.BatchNorm2d, roles: tuple[str, ...]):
        super().__init__()
        self.norms = nn.ModuleDict({r: copy.deepcopy(bn) for r in roles})
        self.role = roles[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norms[self.role](x)


def split_batchnorm(module: nn.Module, roles: tuple[str, ...]) -> list[RoleBatchNorm]:
    """Replace every BatchNorm2d inside `module` with a `RoleBatchNorm` (each role starting from
    a copy of it); returns them, for the trunk to switch."""
    out: list[RoleBatchNorm] = []
    for name, child in list(module.named_children()):
        if isinstance(child, nn.BatchNorm2d):
            split = RoleBatchNorm(child, roles)
            setattr(module, name, split)
            out.append(split)
        elif not isinstance(child, RoleBatchNorm):
            out += split_batchnorm(child, roles)
    return out


class Trunk(nn.Module):
    """A feature extractor: images (B, C, H, W) of dataset `role` -> features (B, out_features).

    `decoder_layers` and `map_shape` describe the conv stack a JADE decoder mirrors."""

    in_shape: tuple[int, int, int]
    out_features: int
    decoder_layers: Layers
    map_shape: tuple[int, int, int]

    def init_norms(self, roles: tuple[str, ...]) -> None:
        """With two roles, give each dataset its own BatchNorm layers."""
        self._norms = split_batchnorm(self, roles) if len(roles) > 1 else []

    def forward(self, x: torch.Tensor, role: str = PRIMARY) -> torch.Tensor:
        for norm in self._norms:
            norm.role = role
        return self.features(x)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def plan(in_shape: tuple[int, int, int], layers: Layers) -> tuple[tuple[int, int, int], list]:
    """The output shape of a conv stack and the spatial size before each of its pools."""
    c, h, w = in_shape
    sizes: list[tuple[int, int]] = []
    for filters, pool in layers:
        c = filters if filters is not None else c
        if pool:
            sizes.append((h, w))
            h, w = (h + 1) // 2, (w + 1) // 2
    return (c, h, w), sizes


class Encoder(Trunk):
    """A conv stack: 3x3 convs with ReLU (and BatchNorm before it with `norm`), 2x2 'same'
    max-pools or stride-2 convs where the layers say."""

    def __init__(
        self,
        in_shape: tuple[int, int, int],
        layers: Layers,
        norm: bool = False,
        roles: tuple[str, ...] = (),
    ):
        super().__init__()
        c = in_shape[0]
        self.in_shape, self.layers = in_shape, layers
        blocks: list[nn.Module] = []
        for filters, pool in layers:
            if filters is not None:
                stride = 2 if pool == STRIDE else 1  # 'same': side -> ceil(side / 2), as a pool
                blocks.append(nn.Conv2d(c, filters, 3, stride=stride, padding=1))
                blocks += [nn.BatchNorm2d(filters)] if norm else []
                blocks.append(nn.ReLU(inplace=True))
                c = filters
            if pool is True:
                blocks.append(nn.MaxPool2d(2, ceil_mode=True))
        self.net = nn.Sequential(*blocks)
        self.out_shape = plan(in_shape, layers)[0]  # e.g. (128, 4, 4) for 32 px
        self.out_features = math.prod(self.out_shape)
        self.decoder_layers, self.map_shape = layers, self.out_shape
        self.init_norms(roles)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).flatten(1)  # (B, out_features)


class ResNetTrunk(Trunk):
    """torchvision's ResNet-18 without its classifier, for photos and scans.

    Inputs are normalised with ImageNet's statistics (what pretrained weights expect) and grey
    images repeated to 3 channels. Below 128 px the stem drops its max-pool, and below 64 px its
    first conv's stride too (as is usual for CIFAR-sized images): the standard /32 would leave a
    32 px image 1x1. The final map (4x4 to 8x8) is average-pooled to at most 4x4. Its decoder
    (JADE) is the `--arch shared` conv stack of the same size, mirrored."""

    def __init__(self, in_shape: tuple[int, int, int], roles: tuple[str, ...] = ()):
        super().__init__()
        from torchvision.models import resnet18

        self.in_shape = in_shape
        net = resnet18(weights=None)
        _, h, w = in_shape
        side = min(h, w)
        if side < 128:  # the stem divides by 4; keep more of small images
            net.maxpool = nn.Identity()
            net.conv1.stride = (1, 1) if side < 64 else (2, 2)
        net.fc = nn.Identity()  # type: ignore[assignment]
        self.net = net
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), False)
        # each stride-2 layer: side -> ceil(side / 2); layers 2-4 and the stem's
        strided = 3 + (side >= 64) + (side >= 128)
        fh, fw = -(-h // 2**strided), -(-w // 2**strided)
        self.pool = nn.AdaptiveAvgPool2d((min(fh, MAP_SIDE), min(fw, MAP_SIDE)))
        self.out_features = 512 * min(fh, MAP_SIDE) * min(fw, MAP_SIDE)
        self.decoder_layers = shared_layers(in_shape)
        self.map_shape = plan(in_shape, self.decoder_layers)[0]
        self.init_norms(roles)

    def _map(self, x: torch.Tensor) -> torch.Tensor:
        n = self.net
        x = n.maxpool(n.relu(n.bn1(n.conv1(x))))
        return n.layer4(n.layer3(n.layer2(n.layer1(x))))  # (B, 512, H', W')

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = (x - self.mean) / self.std
        return self.pool(self._map(x)).flatten(1)  # (B, out_features)

    def load_torchvision(self, state: dict[str, torch.Tensor], where: str) -> None:
        """Load a torchvision ResNet-18 state dict (its `fc` is ignored) into this trunk, each
        per-dataset BatchNorm starting from the checkpoint's one."""
        state = {k.removeprefix("module."): v for k, v in state.items()}
        own = self.net.state_dict()
        missing = []
        new = {}
        for key in own:
            source = re.sub(r"\.norms\.[a-z]+\.", ".", key)
            if source not in state:
                # torchvision's published files predate BatchNorm's step counter
                if not source.endswith("num_batches_tracked"):
                    missing.append(source)
                continue
            if tuple(state[source].shape) != tuple(own[key].shape):
                raise ValueError(
                    f"{where}: {source} has shape {tuple(state[source].shape)}, ResNet-18 "
                    f"needs {tuple(own[key].shape)}"
                )
            new[key] = state[source]
        sources = {re.sub(r"\.norms\.[a-z]+\.", ".", key) for key in own}
        extra = [k for k in state if k not in sources and not k.startswith("fc.")]
        if missing or extra:  # e.g. a ResNet-34: more blocks, same first ones
            what = (
                f"{len(missing)} weights missing, e.g. {missing[0]}"
                if missing
                else (f"{extra[0]} is not part of one")
            )
            raise ValueError(f"{where}: not a torchvision ResNet-18 checkpoint ({what})")
        self.net.load_state_dict(new, strict=False)  # only the counters may be left out


class ShuffleUp(nn.Module):
    """c_in -> c_out channels at twice the resolution, cropped to `size`: a 3x3 conv to
    4 * c_out channels at the low resolution, then a 2x pixel shuffle."""

    def __init__(self, c_in: int, c_out: int, size: tuple[int, int]):
        super().__init__()
        self.conv = nn.Conv2d(c_in, 4 * c_out, 3, padding=1)
        self.shuffle = nn.PixelShuffle(2)
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = self.size
        return self.shuffle(self.conv(x))[:, :, :h, :w]  # (B, c_out, h, w)


class Decoder(nn.Module):
    """The mirror of a trunk's conv stack: dense -> feature map -> up-samples and convs back to
    exactly the input size -> logits."""

    def __init__(self, trunk: Trunk, latent_dim: int):
        super().__init__()
        self.map_shape = trunk.map_shape
        self.fc = nn.Linear(latent_dim, math.prod(self.map_shape))
        layers = trunk.decoder_layers
        _, pool_sizes = plan(trunk.in_shape, layers)
        # conv channels of each layer's input, walking the stack forwards
        channels, c = [], trunk.in_shape[0]
        for filters, _ in layers:
            channels.append(c)
            c = filters if filters is not None else c
        blocks: list[nn.Module] = []
        first_conv = next(i for i, (f, _) in enumerate(layers) if f is not None)
        # Walk the stack backwards: undo each pool with an up-sample to the size it pooled
        # from, and each conv c_{i-1} -> c_i with a conv c_i -> c_{i-1}.
        for i in reversed(range(len(layers))):
            filters, pool = layers[i]
            if pool == STRIDE:  # the mirror of a stride-2 conv: conv at low res, then shuffle
                assert filters is not None
                blocks.append(ShuffleUp(filters, channels[i], pool_sizes.pop()))
            elif pool:
                blocks.append(nn.Upsample(size=pool_sizes.pop(), mode="nearest"))
            if filters is not None and pool != STRIDE:
                blocks.append(nn.Conv2d(filters, channels[i], 3, padding=1))
            if filters is not None and i > first_conv:
                blocks.append(nn.ReLU(inplace=True))
        self.net = nn.Sequential(*blocks)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.fc(z)).view(-1, *self.map_shape)  # (B, C', H', W')
        return self.net(h)  # (B, C, H, W) logits


class Classifier(nn.Module):
    """The shared MLP: 3 x [Dense hidden, ReLU, Dropout] then Dense num_classes (logits)."""

    def __init__(self, in_dim: int, hidden: int, num_classes: int, dropout: float):
        super().__init__()
        layers: list[nn.Module] = []
        for d in (in_dim, hidden, hidden):
            layers += [nn.Linear(d, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout)]
        layers.append(nn.Linear(hidden, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)  # (B, num_classes)


@dataclass
class Posterior:
    """A diagonal Gaussian q(z | x) split into style and content parts."""

    mu_s: torch.Tensor  # (B, style_dim)
    logvar_s: torch.Tensor
    mu_c: torch.Tensor  # (B, content_dim)
    logvar_c: torch.Tensor

    def float(self) -> Posterior:
        """The same posterior in fp32 (a no-op for fp32 tensors; bf16 forward passes)."""
        return Posterior(
            self.mu_s.float(), self.logvar_s.float(), self.mu_c.float(), self.logvar_c.float()
        )


class VAEEncoder(nn.Module):
    """Trunk features -> two Gaussian heads (style, content), each a mean and a log-variance."""

    def __init__(
        self,
        cnn: Trunk,
        role: str,
        style_dim: int,
        content_dim: int,
        content_head: nn.Linear | None = None,
    ):
        super().__init__()
        self.cnn, self.role = cnn, role
        self.style_dim, self.content_dim = style_dim, content_dim
        self.style_head = nn.Linear(cnn.out_features, 2 * style_dim)
        # one-trunk arches pass one content head to both encoders
        self.content_head = content_head or nn.Linear(cnn.out_features, 2 * content_dim)

    def forward(self, x: torch.Tensor) -> Posterior:
        h = self.cnn(x, self.role)  # (B, out_features)
        mu_s, lv_s = self.style_head(h).chunk(2, dim=1)
        mu_c, lv_c = self.content_head(h).chunk(2, dim=1)
        return Posterior(mu_s, _squash(lv_s), mu_c, _squash(lv_c))


def _squash(logvar: torch.Tensor) -> torch.Tensor:
    return LOGVAR_LIMIT * torch.tanh(logvar / LOGVAR_LIMIT)


def reparameterize(
    mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """z = mu + eps * sigma with eps ~ N(0, I) (from `generator`, else torch's global RNG)."""
    eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype, device=mu.device)
    return mu + eps * torch.exp(0.5 * logvar)


Cnns = tuple[Trunk, Trunk | None]  # (primary, auxiliary)


def one_trunk(arch: str) -> bool:
    """Whether `arch` feeds both datasets through one and the same trunk."""
    return arch in ("shared", "resnet18")


def encoders(spec: ModelSpec) -> Cnns:
    """The primary and (if any) auxiliary trunks of `spec.arch`: two separate CNNs (paper), or
    one trunk, the very same module, for both datasets (shared, resnet18), with one BatchNorm
    per dataset with `spec.batch_norm` per-dataset."""
    aux_shape, shape = spec.auxiliary_shape, spec.primary_shape
    if spec.arch == "paper":
        aux = Encoder(aux_shape, paper_layers(aux_shape, AUXILIARY_CNN)) if aux_shape else None
        return Encoder(shape, paper_layers(shape, PRIMARY_CNN)), aux
    if not one_trunk(spec.arch):
        raise ValueError(f"unknown arch {spec.arch!r}")
    if aux_shape is not None and aux_shape != shape:
        raise ValueError(f"--arch {spec.arch} needs one shape: {shape} vs {aux_shape}")
    trunk: Trunk
    if spec.arch == "resnet18":
        trunk = ResNetTrunk(shape, spec.norm_roles)
    else:
        trunk = Encoder(shape, shared_layers(shape), norm=True, roles=spec.norm_roles)
    return trunk, (trunk if aux_shape else None)


@dataclass
class StepOutput:
    """One training forward pass over a batch of pairs: the shared classifier's logits."""

    logits_primary: torch.Tensor  # (B, K)
    logits_aux: torch.Tensor | None  # (B, K); None for a single classifier


class RoleModel(nn.Module):
    """What every model answers, by dataset role ("primary" or "auxiliary")."""

    spec: ModelSpec
    generative = False  # decoders and style latents (JADE)

    @property
    def terms(self) -> tuple[str, ...]:
        """The names of this model's loss terms, in the order metrics.csv lists them."""
        return TERMS[self.spec.kind]

    def classify(self, role: str, x: torch.Tensor) -> torch.Tensor:
        """Class logits (B, K) of images of dataset `role`, as the model predicts."""
        raise NotImplementedError

    def codes(self, role: str, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """What the analysis commands inspect: latent posteriors or bottleneck features."""
        raise NotImplementedError

    def forward_train(self, x_aux: torch.Tensor | None, x_primary: torch.Tensor) -> StepOutput:
        raise NotImplementedError

    def loss_terms(
        self,
        out: StepOutput,
        x_aux: torch.Tensor | None,
        x_primary: torch.Tensor,
        y: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """Unweighted batch means of this model's terms of the objective, in fp32."""
        return classifier_terms(out.logits_aux, out.logits_primary, y)

    def evaluate_batch(
        self, role: str, x: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Logits of a test batch, and per-image test quantities (JADE: ELBO terms)."""
        return self.classify(role, x), {}


class SingleClassifier(RoleModel):
    def __init__(self, spec: ModelSpec, cnns: Cnns | None = None):
        super().__init__()
        self.spec = spec
        self.primary_cnn = (cnns or encoders(spec))[0]
        self.primary_bottleneck = nn.Linear(self.primary_cnn.out_features, spec.content_dim)
        self.classifier = Classifier(
            spec.content_dim, spec.hidden_dim, spec.num_classes, spec.dropout
        )

    def features(self, role: str, x: torch.Tensor) -> torch.Tensor:
        if role != PRIMARY:
            raise ValueError(f"a {self.spec.kind} model has no {role} encoder")
        return self.primary_bottleneck(self.primary_cnn(x, PRIMARY))  # (B, content_dim)

    def classify(self, role: str, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(role, x))

    def codes(self, role: str, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"features": self.features(role, x)}

    def forward_train(self, x_aux: torch.Tensor | None, x_primary: torch.Tensor) -> StepOutput:
        return StepOutput(self.classify(PRIMARY, x_primary), None)


class PairedClassifier(SingleClassifier):
    def __init__(self, spec: ModelSpec):
        cnns = encoders(spec)
        super().__init__(spec, cnns)
        assert cnns[1] is not None
        self.aux_cnn = cnns[1]
        # one trunk: one bottleneck too, so the whole feature path is shared
        self.aux_bottleneck = (
            self.primary_bottleneck
            if one_trunk(spec.arch)
            else nn.Linear(self.aux_cnn.out_features, spec.content_dim)
        )

    def features(self, role: str, x: torch.Tensor) -> torch.Tensor:
        if role == AUXILIARY:
            return self.aux_bottleneck(self.aux_cnn(x, AUXILIARY))
        return super().features(role, x)

    def forward_train(self, x_aux: torch.Tensor | None, x_primary: torch.Tensor) -> StepOutput:
        assert x_aux is not None
        logits_aux = self.classify(AUXILIARY, x_aux)  # auxiliary first: BatchNorm's order
        return StepOutput(self.classify(PRIMARY, x_primary), logits_aux)


@dataclass
class JADEOutput(StepOutput):
    """Everything the JADE objective needs from one batch of pairs (logits from sampled z_c)."""

    q_aux: Posterior
    q_primary: Posterior
    recon_aux: torch.Tensor  # (B, C_a, H_a, W_a) logits
    recon_primary: torch.Tensor  # (B, C_p, H_p, W_p) logits
    mean_logits_aux: torch.Tensor | None = None  # (B, K) from mu_c (--ce-on-mean only)
    mean_logits_primary: torch.Tensor | None = None


class JADE(RoleModel):
    generative = True

    def __init__(self, spec: ModelSpec):
        super().__init__()
        assert spec.auxiliary_shape is not None
        self.spec = spec
        s, c = spec.style_dim, spec.content_dim
        p_cnn, a_cnn = encoders(spec)
        assert a_cnn is not None
        # one trunk: one content head too (style heads stay per dataset)
        head = nn.Linear(p_cnn.out_features, 2 * c) if one_trunk(spec.arch) else None
        self.primary_encoder = VAEEncoder(p_cnn, PRIMARY, s, c, head)
        self.aux_encoder = VAEEncoder(a_cnn, AUXILIARY, s, c, head)
        self.primary_decoder = Decoder(self.primary_encoder.cnn, s + c)
        self.aux_decoder = Decoder(self.aux_encoder.cnn, s + c)
        self.classifier = Classifier(c, spec.hidden_dim, spec.num_classes, spec.dropout)
        # training-only options of the objective (not part of the weights): set_objective
        self.ce_on_mean = False

    def set_objective(self, ce_on_mean: bool) -> None:
        """`--ce-on-mean` of the run being trained."""
        self.ce_on_mean = ce_on_mean

    def encoder(self, role: str) -> VAEEncoder:
        return self.primary_encoder if role == PRIMARY else self.aux_encoder

    def decoder(self, role: str) -> Decoder:
        return self.primary_decoder if role == PRIMARY else self.aux_decoder

    def forward(self, x_aux: torch.Tensor, x_primary: torch.Tensor) -> JADEOutput:
        qa, qp = self.aux_encoder(x_aux), self.primary_encoder(x_primary)
        za_s, za_c = reparameterize(qa.mu_s, qa.logvar_s), reparameterize(qa.mu_c, qa.logvar_c)
        zp_s, zp_c = reparameterize(qp.mu_s, qp.logvar_s), reparameterize(qp.mu_c, qp.logvar_c)
        mean_logits: tuple[torch.Tensor | None, ...] = (None, None)
        if self.ce_on_mean:  # the classifier also sees the codes it predicts from
            mean_logits = self.classifier(torch.cat([qa.mu_c, qp.mu_c])).chunk(2)
        return JADEOutput(
            q_aux=qa,
            q_primary=qp,
            recon_aux=self.aux_decoder(torch.cat([za_s, za_c], 1)),  # decoder sees [z_s, z_c]
            recon_primary=self.primary_decoder(torch.cat([zp_s, zp_c], 1)),
            logits_aux=self.classifier(za_c),  # only content reaches the classifier
            logits_primary=self.classifier(zp_c),
            mean_logits_aux=mean_logits[0],
            mean_logits_primary=mean_logits[1],
        )

    def forward_train(self, x_aux: torch.Tensor | None, x_primary: torch.Tensor) -> StepOutput:
        assert x_aux is not None
        return self(x_aux, x_primary)

    def loss_terms(
        self,
        out: StepOutput,
        x_aux: torch.Tensor | None,
        x_primary: torch.Tensor,
        y: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        assert isinstance(out, JADEOutput) and x_aux is not None
        return jade_terms(out, x_aux, x_primary, y)

    # Prediction uses the posterior mean of the content latents.
    def classify(self, role: str, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.encoder(role)(x).mu_c)

    def codes(self, role: str, x: torch.Tensor) -> dict[str, torch.Tensor]:
        q = self.encoder(role)(x)
        return {"mu_c": q.mu_c, "logvar_c": q.logvar_c, "mu_s": q.mu_s, "logvar_s": q.logvar_s}

    def decode(self, role: str, z_s: torch.Tensor, z_c: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] (B, C, H, W) from latents, by dataset `role`'s decoder."""
        return torch.sigmoid(self.decoder(role)(torch.cat([z_s, z_c], 1)).float())

    def evaluate_batch(
        self, role: str, x: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Logits from the posterior mean, and per image the test ELBO's terms in nats (one
        z ~ q(z|x) drawn from `generator`; the content prior is N(0, I) for both datasets) and
        the content posterior."""
        q = self.encoder(role)(x).float()
        logits = self.classifier(q.mu_c)
        z_s = reparameterize(q.mu_s, q.logvar_s, generator)
        z_c = reparameterize(q.mu_c, q.logvar_c, generator)
        recon_logits = self.decoder(role)(torch.cat([z_s, z_c], 1)).float()  # (B, C, H, W)
        return logits, {
            "recon": reconstruction_bce(recon_logits, x),
            "kl_style": kl_standard_normal(q.mu_s, q.logvar_s),
            "kl_content": kl_standard_normal(q.mu_c, q.logvar_c),
            "mu_c": q.mu_c,
            "logvar_c": q.logvar_c,
        }


def init_weights(model: nn.Module) -> nn.Module:
    """He initialisation for every conv and linear layer (they all feed ReLUs or heads), except
    inside a ResNet trunk, which keeps torchvision's own initialisation (or pretrained weights)."""
    resnet = {id(m) for t in model.modules() if isinstance(t, ResNetTrunk) for m in t.modules()}
    for m in model.modules():
        if id(m) not in resnet and isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            nn.init.zeros_(m.bias)
    return model


def build_model(spec: ModelSpec) -> RoleModel:
    if spec.kind == "single":
        model: RoleModel = SingleClassifier(spec)
    elif spec.kind == "paired":
        model = PairedClassifier(spec)
    elif spec.kind == "jade":
        model = JADE(spec)
    else:
        raise ValueError(f"unknown model kind {spec.kind!r}")
    init_weights(model)
    return model
