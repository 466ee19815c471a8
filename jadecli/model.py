"""The three models of the JADE paper, built from each dataset's image shape.

- `SingleClassifier`: primary CNN -> linear bottleneck (content_dim) -> shared-style MLP.
- `PairedClassifier`: one CNN + bottleneck per dataset, one MLP classifier for both.
- `JADE`: one VAE per dataset. Each encoder has two Gaussian heads, style z_s and content z_c;
  only z_c feeds the shared classifier, [z_s, z_c] feeds the dataset's own decoder.

With `arch="shared"` (the default recipe) both datasets go through one and the same CNN
(conv 32, 64, 128 with BatchNorm, a pool after each), the JADE content head is shared too and
only the style heads and decoders stay per dataset. With `arch="paper"`, encoders follow
reference.md: the primary gets the paper's SVHN CNN (conv 64, 96, 64, 8; 2x2
max-pool after the first three), the auxiliary the paper's MNIST CNN (conv 32, 32, 16, pool after
each). All convs are 3x3, ReLU, 'same' padding; pools round up ('same'), so 28 -> 14 -> 7 -> 4 and
any image size works. Decoders mirror their encoder exactly, with nearest-neighbour up-sampling
back to the sizes the encoder pooled from, and output logits (the sigmoid lives in the loss, in
its numerically stable form).

    python -c "from jadecli.model import JADE; m = JADE((3, 32, 32), (1, 28, 28), 10); print(m)"
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

# (filters, max-pool after) per conv layer, from the authors' final code (reference.md)
PRIMARY_CNN = ((64, True), (96, True), (64, True), (8, False))
AUXILIARY_CNN = ((32, True), (32, True), (16, True))
# --arch shared: one batch-normalised conv encoder for both datasets. A deeper 32-32-64-64-128
# stack was 3.7x slower on CPU for about +0.5 point on USPS (94.1 vs 93.7, one seed).
SHARED_CNN = ((32, True), (64, True), (128, True))

# log-variances are squashed into (-LOGVAR_LIMIT, LOGVAR_LIMIT): exp() of the difference of two
# of them, as in the matching KL, then stays far from overflow whatever the optimiser does.
LOGVAR_LIMIT = 12.0


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a model from a checkpoint (plain data)."""

    kind: str  # single | paired | jade
    primary_shape: tuple[int, int, int]  # (C, H, W)
    auxiliary_shape: tuple[int, int, int] | None
    num_classes: int
    content_dim: int = 10
    style_dim: int = 10
    hidden_dim: int = 500
    dropout: float = 0.5
    arch: str = "paper"


class Encoder(nn.Module):
    """A conv stack: 3x3 convs with ReLU (and BatchNorm before it with `norm`), 2x2 'same'
    max-pools where the spec says."""

    def __init__(
        self,
        in_shape: tuple[int, int, int],
        layers: tuple[tuple[int, bool], ...],
        norm: bool = False,
    ):
        super().__init__()
        c, h, w = in_shape
        self.in_shape = in_shape
        self.layers = layers
        blocks: list[nn.Module] = []
        self.pool_sizes: list[tuple[int, int]] = []  # spatial size before each pool
        for filters, pool in layers:
            blocks.append(nn.Conv2d(c, filters, 3, padding=1))
            blocks += [nn.BatchNorm2d(filters)] if norm else []
            blocks.append(nn.ReLU(inplace=True))
            c = filters
            if pool:
                self.pool_sizes.append((h, w))
                blocks.append(nn.MaxPool2d(2, ceil_mode=True))
                h, w = (h + 1) // 2, (w + 1) // 2
        self.net = nn.Sequential(*blocks)
        self.out_shape = (c, h, w)  # e.g. (8, 4, 4) for 32x32 inputs
        self.out_features = c * h * w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).flatten(1)  # (B, out_features)


class Decoder(nn.Module):
    """The mirror of an `Encoder`: dense -> feature map -> transposed conv stack -> logits."""

    def __init__(self, encoder: Encoder, latent_dim: int):
        super().__init__()
        self.fc = nn.Linear(latent_dim, encoder.out_features)
        self.map_shape = encoder.out_shape
        in_ch = encoder.in_shape[0]
        blocks: list[nn.Module] = []
        pool_sizes = list(encoder.pool_sizes)
        channels = [in_ch] + [f for f, _ in encoder.layers]
        # Walk the encoder backwards: undo each pool with an up-sample to the size it pooled
        # from, and each conv c_{i-1} -> c_i with a conv c_i -> c_{i-1}.
        for i in reversed(range(len(encoder.layers))):
            if encoder.layers[i][1]:
                blocks.append(nn.Upsample(size=pool_sizes.pop(), mode="nearest"))
            blocks.append(nn.Conv2d(channels[i + 1], channels[i], 3, padding=1))
            if i > 0:
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
    """CNN features -> two Gaussian heads (style, content), each a mean and a log-variance."""

    def __init__(
        self,
        cnn: Encoder,
        style_dim: int,
        content_dim: int,
        content_head: nn.Linear | None = None,
    ):
        super().__init__()
        self.cnn = cnn
        self.style_dim, self.content_dim = style_dim, content_dim
        self.style_head = nn.Linear(cnn.out_features, 2 * style_dim)
        # --arch shared passes one content head to both encoders
        self.content_head = content_head or nn.Linear(cnn.out_features, 2 * content_dim)

    def forward(self, x: torch.Tensor) -> Posterior:
        h = self.cnn(x)
        mu_s, lv_s = self.style_head(h).chunk(2, dim=1)
        mu_c, lv_c = self.content_head(h).chunk(2, dim=1)
        return Posterior(mu_s, _squash(lv_s), mu_c, _squash(lv_c))


def _squash(logvar: torch.Tensor) -> torch.Tensor:
    return LOGVAR_LIMIT * torch.tanh(logvar / LOGVAR_LIMIT)


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    return mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)


Cnns = tuple[Encoder, Encoder | None]  # (primary, auxiliary)


def encoders(spec: ModelSpec) -> Cnns:
    """The primary and (if any) auxiliary conv encoders of `spec.arch`: two separate CNNs
    (paper), or one CNN, the very same module, for both datasets (shared)."""
    aux_shape = spec.auxiliary_shape
    if spec.arch == "paper":
        aux = Encoder(aux_shape, AUXILIARY_CNN) if aux_shape else None
        return Encoder(spec.primary_shape, PRIMARY_CNN), aux
    if spec.arch != "shared":
        raise ValueError(f"unknown arch {spec.arch!r}")
    if aux_shape is not None and aux_shape != spec.primary_shape:
        raise ValueError(f"--arch shared needs one shape: {spec.primary_shape} vs {aux_shape}")
    cnn = Encoder(spec.primary_shape, SHARED_CNN, norm=True)
    return cnn, (cnn if aux_shape else None)


class SingleClassifier(nn.Module):
    def __init__(self, spec: ModelSpec, cnns: Cnns | None = None):
        super().__init__()
        self.spec = spec
        self.primary_cnn = (cnns or encoders(spec))[0]
        self.primary_bottleneck = nn.Linear(self.primary_cnn.out_features, spec.content_dim)
        self.classifier = Classifier(
            spec.content_dim, spec.hidden_dim, spec.num_classes, spec.dropout
        )

    def primary_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.primary_bottleneck(self.primary_cnn(x))  # (B, content_dim)

    def classify_primary(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.primary_features(x))


class PairedClassifier(SingleClassifier):
    def __init__(self, spec: ModelSpec):
        cnns = encoders(spec)
        super().__init__(spec, cnns)
        assert cnns[1] is not None
        self.aux_cnn = cnns[1]
        # --arch shared: one bottleneck too, so the whole feature path is shared
        self.aux_bottleneck = (
            self.primary_bottleneck
            if spec.arch == "shared"
            else nn.Linear(self.aux_cnn.out_features, spec.content_dim)
        )

    def aux_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.aux_bottleneck(self.aux_cnn(x))

    def classify_aux(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.aux_features(x))


@dataclass
class JADEOutput:
    """Everything the JADE objective needs from one batch of pairs."""

    q_aux: Posterior
    q_primary: Posterior
    recon_aux: torch.Tensor  # (B, C_a, H_a, W_a) logits
    recon_primary: torch.Tensor  # (B, C_p, H_p, W_p) logits
    logits_aux: torch.Tensor  # (B, K), classifier on sampled z_c
    logits_primary: torch.Tensor


class JADE(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        assert spec.auxiliary_shape is not None
        self.spec = spec
        s, c = spec.style_dim, spec.content_dim
        p_cnn, a_cnn = encoders(spec)
        assert a_cnn is not None
        # --arch shared: one content head (style heads stay per dataset)
        head = nn.Linear(p_cnn.out_features, 2 * c) if spec.arch == "shared" else None
        self.primary_encoder = VAEEncoder(p_cnn, s, c, head)
        self.aux_encoder = VAEEncoder(a_cnn, s, c, head)
        self.primary_decoder = Decoder(self.primary_encoder.cnn, s + c)
        self.aux_decoder = Decoder(self.aux_encoder.cnn, s + c)
        self.classifier = Classifier(c, spec.hidden_dim, spec.num_classes, spec.dropout)

    def forward(self, x_aux: torch.Tensor, x_primary: torch.Tensor) -> JADEOutput:
        qa, qp = self.aux_encoder(x_aux), self.primary_encoder(x_primary)
        za_s, za_c = reparameterize(qa.mu_s, qa.logvar_s), reparameterize(qa.mu_c, qa.logvar_c)
        zp_s, zp_c = reparameterize(qp.mu_s, qp.logvar_s), reparameterize(qp.mu_c, qp.logvar_c)
        return JADEOutput(
            q_aux=qa,
            q_primary=qp,
            recon_aux=self.aux_decoder(torch.cat([za_s, za_c], 1)),  # decoder sees [z_s, z_c]
            recon_primary=self.primary_decoder(torch.cat([zp_s, zp_c], 1)),
            logits_aux=self.classifier(za_c),  # only content reaches the classifier
            logits_primary=self.classifier(zp_c),
        )

    # Prediction uses the posterior mean of the content latents.
    def classify_primary(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.primary_encoder(x).mu_c)

    def classify_aux(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.aux_encoder(x).mu_c)


def init_weights(model: nn.Module) -> nn.Module:
    """He initialisation for every conv and linear layer (they all feed ReLUs or heads)."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            nn.init.zeros_(m.bias)
    return model


def build_model(spec: ModelSpec) -> nn.Module:
    if spec.kind == "single":
        model: nn.Module = SingleClassifier(spec)
    elif spec.kind == "paired":
        model = PairedClassifier(spec)
    elif spec.kind == "jade":
        model = JADE(spec)
    else:
        raise ValueError(f"unknown model kind {spec.kind!r}")
    return init_weights(model)
