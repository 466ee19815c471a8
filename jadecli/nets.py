"""The layers the models are built from: conv trunks, their mirrored decoders, the classifier.

With `arch="shared"` (the default recipe) both datasets go through one and the same trunk
(conv 32, 64, 128 with BatchNorm, a pool after each at digit sizes); with
`batch_norm="per-dataset"` each dataset has its own BatchNorm statistics and affine parameters
in it (`RoleBatchNorm`). `arch="resnet18"` is the same with torchvision's ResNet-18 as the
trunk. With `arch="paper"`, encoders follow the authors' 2017 code: the primary gets the paper's
SVHN CNN (conv 64, 96, 64, 8; 2x2 max-pool after the first three), the auxiliary the paper's
MNIST CNN (conv 32, 32, 16, pool after each). All convs are 3x3, ReLU, 'same' padding; pools
round up ('same'), so 28 -> 14 -> 7 -> 4.

Any size from 8 px up: every trunk ends on a map of at most 4x4 (MAP_SIDE). The shared trunk
puts as many pools as that takes into its three convs, and for images over 32 px adds stages in
front (`--stem`): by default 2x2 average pools (the digit trunk then sees the image at 17-32 px),
or learned stride-2 16-filter convs; the paper's CNNs get pools alone at their end. Decoders
mirror their trunk's conv stack exactly (nearest-neighbour up-sampling back to each size pooled
from, a pixel shuffle for each stride-2 stage) and output logits (the sigmoid lives in the loss,
in its numerically stable form).

    python -c "from jadecli.nets import Encoder, shared_layers; print(Encoder((3, 64, 64), \
shared_layers((3, 64, 64), "pool"), norm=True))"
"""

from __future__ import annotations

import copy
import math
import re

import torch
import torch.nn as nn
import torch.nn.functional as F

from jadecli.spec import PRIMARY, STEMS, ModelSpec, one_trunk

# (filters, max-pool after) per conv layer, from the authors' final code
PRIMARY_CNN = ((64, True), (96, True), (64, True), (8, False))
AUXILIARY_CNN = ((32, True), (32, True), (16, True))
# --arch shared: one batch-normalised conv stack for both datasets, 32-64-128 at digit sizes. A
# deeper 32-32-64-64-128 stack was 3.7x slower on CPU for about +0.5 point on USPS (94.1 vs 93.7,
# one seed).
SHARED_CNN = ((32, True), (64, True), (128, True))
# Larger images get extra stages in front of SHARED_CNN, one per halving above 32 px (`--stem`):
# - pool (default): a 2x2 average pool (a decoder up-samples back). MNIST-M 10 labels per class
#   at 64 px, dev, seed 0: 73.7% against 65.8% with the learned stages below and 73.4% at 32 px:
#   with ten labels per class a learned first layer at the full resolution costs more than the
#   detail it can add.
# - conv: a stride-2 conv of STEM_FILTERS (a decoder: a conv at the lower resolution, then a pixel
#   shuffle), for images whose detail below 1/32 of their side matters.
# Neither runs a layer at the full resolution, so the trunk costs about what it costs at 32 px
# (a whole 128 px JADE run took ~4x a 32 px one: augmentation, decoder output and loss at size).
STEM_FILTERS = 16
# A layer's downsampling: True = a 2x2 max-pool after its conv, STRIDE = a stride-2 conv, AVG = a
# 2x2 average pool (with no conv: filters None).
STRIDE, AVG = "stride", "avg"
# Every trunk ends on a feature map of at most MAP_SIDE x MAP_SIDE, whatever the input size, so
# the heads (and the decoders' first dense layer) keep the size they have for digits.
MAP_SIDE = 4
# ImageNet statistics, the input normalisation torchvision's pretrained ResNets expect.
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def halvings(side: int) -> int:
    """How many 2x2 'same' pools take `side` down to at most MAP_SIDE (8 -> 1, 32 -> 3)."""
    n = 0
    while side > MAP_SIDE:
        side, n = (side + 1) // 2, n + 1
    return n


# (conv filters or None for a pool alone, downsampling: False, True (max-pool after) or STRIDE)
Layers = tuple[tuple[int | None, bool | str], ...]


def shared_layers(shape: tuple[int, int, int], stem: str) -> Layers:
    """The conv stack of `--arch shared` for images of `shape`: always conv 32-64-128, with as
    many 2x2 pools as take the image to <= 4x4 (8 px: one; 32 px: three); larger images get
    stages in front (64 px: one; 128 px: two; 224 px: three), 2x2 average pools (`stem` pool) or
    STEM_FILTERS-wide stride-2 convs (`stem` conv)."""
    if stem not in STEMS:
        raise ValueError(f"unknown stem {stem!r}")
    n = halvings(max(shape[1:]))
    front = max(n - len(SHARED_CNN), 0)
    pools = [True] * min(n, len(SHARED_CNN)) + [False] * max(len(SHARED_CNN) - n, 0)
    body = tuple((f, p) for (f, _), p in zip(SHARED_CNN, pools, strict=True))
    stage = (None, AVG) if stem == "pool" else (STEM_FILTERS, STRIDE)
    return (stage,) * front + body


def style_layers(shape: tuple[int, int, int], stem: str) -> Layers:
    """The conv stack of a JADE style encoder (`--style-encoder own`): the shared trunk's plan
    for this size at half its widths (16-32-64 at digit sizes; 8-filter stride-2 stems)."""
    return tuple((None if f is None else f // 2, p) for f, p in shared_layers(shape, stem))


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
    max-pools, average pools or stride-2 convs where the layers say."""

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
            elif pool == AVG:
                blocks.append(nn.AvgPool2d(2, ceil_mode=True))
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
    (JADE) is the `--arch shared` conv stack of the same size and `--stem`, mirrored."""

    def __init__(self, in_shape: tuple[int, int, int], roles: tuple[str, ...], stem: str):
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
        self.decoder_layers = shared_layers(in_shape, stem)
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


Cnns = tuple[Trunk, Trunk | None]  # (primary, auxiliary)


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
        trunk = ResNetTrunk(shape, spec.norm_roles, spec.stem)
    else:
        trunk = Encoder(shape, shared_layers(shape, spec.stem), norm=True, roles=spec.norm_roles)
    return trunk, (trunk if aux_shape else None)
