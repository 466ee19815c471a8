"""The three models of the JADE paper, built from each dataset's image shape.

- `SingleClassifier`: primary CNN -> linear bottleneck (content_dim) -> shared-style MLP.
- `PairedClassifier`: one CNN + bottleneck per dataset, one MLP classifier for both.
- `JADE`: one VAE per dataset. Each encoder has two Gaussian heads, style z_s and content z_c;
  only z_c feeds the shared classifier, [z_s, z_c] feeds the dataset's own decoder.

With `arch="shared"` (the default recipe) both datasets go through one and the same CNN
(conv 32, 64, 128 with BatchNorm, a pool after each), the JADE content head is shared too and
only the style heads and decoders stay per dataset. With `arch="paper"`, encoders follow the
authors' 2017 code: the primary gets the paper's SVHN CNN (conv 64, 96, 64, 8; 2x2
max-pool after the first three), the auxiliary the paper's MNIST CNN (conv 32, 32, 16, pool after
each). All convs are 3x3, ReLU, 'same' padding; pools round up ('same'), so 28 -> 14 -> 7 -> 4 and
any image size works. Decoders mirror their encoder exactly, with nearest-neighbour up-sampling
back to the sizes the encoder pooled from, and output logits (the sigmoid lives in the loss, in
its numerically stable form).

Every model answers by dataset role ("primary" or "auxiliary"): `classify(role, x)`,
`codes(role, x)` (what the analysis commands inspect), and for training
`forward_train(x_aux, x_primary)` then `loss_terms(out, x_aux, x_primary, y)`, its own terms of
the objective. Callers never branch on the model's kind.

    python -c "from jadecli.model import JADE; m = JADE((3, 32, 32), (1, 28, 28), 10); print(m)"
"""

from __future__ import annotations

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

# (filters, max-pool after) per conv layer, from the authors' final code
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
    """Everything needed to rebuild a model from a checkpoint (plain data; `jade train` fills
    it from the run's config and data, `to_dict`/`from_dict` save and read it)."""

    kind: str  # single | paired | jade
    arch: str  # shared | paper
    primary_shape: tuple[int, int, int]  # (C, H, W)
    auxiliary_shape: tuple[int, int, int] | None
    num_classes: int
    content_dim: int
    style_dim: int
    hidden_dim: int
    dropout: float

    @property
    def generative(self) -> bool:
        """Whether the model has decoders and style latents (JADE)."""
        return self.kind == "jade"

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
        )


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


def reparameterize(
    mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """z = mu + eps * sigma with eps ~ N(0, I) (from `generator`, else torch's global RNG)."""
    eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype, device=mu.device)
    return mu + eps * torch.exp(0.5 * logvar)


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
        return self.primary_bottleneck(self.primary_cnn(x))  # (B, content_dim)

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
        # --arch shared: one bottleneck too, so the whole feature path is shared
        self.aux_bottleneck = (
            self.primary_bottleneck
            if spec.arch == "shared"
            else nn.Linear(self.aux_cnn.out_features, spec.content_dim)
        )

    def features(self, role: str, x: torch.Tensor) -> torch.Tensor:
        if role == AUXILIARY:
            return self.aux_bottleneck(self.aux_cnn(x))
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


class JADE(RoleModel):
    generative = True

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

    def encoder(self, role: str) -> VAEEncoder:
        return self.primary_encoder if role == PRIMARY else self.aux_encoder

    def decoder(self, role: str) -> Decoder:
        return self.primary_decoder if role == PRIMARY else self.aux_decoder

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
    """He initialisation for every conv and linear layer (they all feed ReLUs or heads)."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
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
