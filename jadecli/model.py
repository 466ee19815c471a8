"""The three models of the JADE paper, built from a `ModelSpec`.

- `SingleClassifier`: primary CNN -> linear bottleneck (content_dim) -> shared-style MLP.
- `PairedClassifier`: one CNN + bottleneck per dataset, one MLP classifier for both.
- `JADE`: one VAE per dataset. Each encoder has two Gaussian heads, style z_s and content z_c;
  only z_c feeds the shared classifier, [z_s, z_c] feeds the dataset's own decoder.

With a one-trunk arch (`shared`, `resnet18`) both datasets go through the very same trunk and
the JADE content head is shared too; only the style heads and decoders stay per dataset. The
layers themselves are in `jadecli.nets`.

Every model answers by dataset role ("primary" or "auxiliary"): `classify(role, x)`,
`codes(role, x)` (what the analysis commands inspect), `forward_train(x_aux, x_primary)` (the
outputs a training step hands to `jadecli.objective.Objective`) and `evaluate_batch(role, x,
generator)` (those of a test pass). Models compute outputs, never losses: callers never branch
on the model's kind.

    python -c "from jadecli.spec import ModelSpec; from jadecli.model import build_model; \
print(build_model(ModelSpec('jade', 'shared', (3, 64, 64), (3, 64, 64), 10, 10, 10, 500, 0.0)))"
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

from jadecli.augment import Augment, augment
from jadecli.nets import (
    Classifier,
    Cnns,
    Decoder,
    Encoder,
    ResNetTrunk,
    Trunk,
    encoders,
    style_layers,
)
from jadecli.outputs import (
    PLAIN_STEP,
    JADEOutput,
    Posterior,
    StepOutput,
    StepRequest,
    TestOutput,
)
from jadecli.spec import AUXILIARY, PRIMARY, ModelSpec, one_trunk

# log-variances are squashed into (-LOGVAR_LIMIT, LOGVAR_LIMIT): exp() of the difference of two
# of them, as in the matching KL, then stays far from overflow whatever the optimiser does.
LOGVAR_LIMIT = 12.0


class VAEEncoder(nn.Module):
    """Trunk features -> two Gaussian heads (style, content), each a mean and a log-variance."""

    def __init__(
        self,
        cnn: Trunk,
        role: str,
        style_dim: int,
        content_dim: int,
        content_head: nn.Linear | None = None,
        style_cnn: Trunk | None = None,
    ):
        super().__init__()
        self.cnn, self.role = cnn, role
        self.style_dim, self.content_dim = style_dim, content_dim
        # the style latent reads its own CNN where there is one, else the trunk's features
        self.style_cnn = style_cnn
        self.style_head = nn.Linear((style_cnn or cnn).out_features, 2 * style_dim)
        # one-trunk arches pass one content head to both encoders
        self.content_head = content_head or nn.Linear(cnn.out_features, 2 * content_dim)

    def forward(self, x: torch.Tensor) -> Posterior:
        h = self.cnn(x, self.role)  # (B, out_features)
        hs = h if self.style_cnn is None else self.style_cnn(x)  # (B, style features)
        mu_s, lv_s = self.style_head(hs).chunk(2, dim=1)
        mu_c, lv_c = self.content_head(h).chunk(2, dim=1)
        return Posterior(mu_s, _squash(lv_s), mu_c, _squash(lv_c))


def _squash(logvar: torch.Tensor) -> torch.Tensor:
    return LOGVAR_LIMIT * torch.tanh(logvar / LOGVAR_LIMIT)


def _frozen(module: nn.Module, *args: object) -> torch.Tensor:
    """`module(*args)` with its weights detached: gradients reach the inputs only."""
    weights = {k: v.detach() for k, v in module.named_parameters()}
    return torch.func.functional_call(module, weights, args)


def _in_eval_mode(parts: tuple[nn.Module, ...], fn: Callable[[], torch.Tensor]) -> torch.Tensor:
    """`fn()` with `parts` in eval mode, each put back in the mode it was in."""
    modes = [m.training for m in parts]
    for m in parts:
        m.eval()
    try:
        return fn()
    finally:
        for m, mode in zip(parts, modes, strict=True):
            m.train(mode)


def reparameterize(
    mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """z = mu + eps * sigma with eps ~ N(0, I) (from `generator`, else torch's global RNG)."""
    eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype, device=mu.device)
    return mu + eps * torch.exp(0.5 * logvar)


# The swap term shows each drawing to the frozen model randomly warped and colour-jittered, as
# training batches are by default: a drawing must read as its class in every version, which
# pixel patterns that only fool the classifier as drawn do not.
SWAP_AUGMENT = Augment()

CRITIC_WIDTH = 128  # hidden width of the style critic (--style-adversary-weight)


class RoleModel(nn.Module):
    """What every model answers, by dataset role ("primary" or "auxiliary")."""

    spec: ModelSpec
    generative = False  # decoders and style latents (JADE)

    def classify(self, role: str, x: torch.Tensor) -> torch.Tensor:
        """Class logits (B, K) of images of dataset `role`, as the model predicts."""
        raise NotImplementedError

    def codes(self, role: str, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """What the analysis commands inspect: latent posteriors or bottleneck features."""
        raise NotImplementedError

    def forward_train(
        self,
        x_aux: torch.Tensor | None,
        x_primary: torch.Tensor,
        request: StepRequest = PLAIN_STEP,
        x_unl: torch.Tensor | None = None,
    ) -> StepOutput:
        """The outputs of one training step over a batch of pairs, with what `request` asks
        beyond the logits (JADE's options; the classifiers ignore it); `x_unl` (2U, C, H, W):
        unlabeled primary images, weak views then strong ones (--unlabeled)."""
        raise NotImplementedError

    def evaluate_batch(self, role: str, x: torch.Tensor, generator: torch.Generator) -> TestOutput:
        """A test pass over images of dataset `role` (JADE: one z ~ q(z|x) from `generator`)."""
        return TestOutput(self.classify(role, x))


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

    def forward_train(
        self,
        x_aux: torch.Tensor | None,
        x_primary: torch.Tensor,
        request: StepRequest = PLAIN_STEP,
        x_unl: torch.Tensor | None = None,
    ) -> StepOutput:
        logits, logits_unl = self.classify_with_unlabeled(x_primary, x_unl)
        return StepOutput(logits, None, logits_unlabeled=logits_unl)

    def classify_with_unlabeled(
        self, x_primary: torch.Tensor, x_unl: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Primary logits (B, K) and those of the unlabeled views (2U, K; None without), from
        one pass: BatchNorm normalises labeled and unlabeled images together."""
        if x_unl is None:
            return self.classify(PRIMARY, x_primary), None
        logits = self.classify(PRIMARY, torch.cat([x_primary, x_unl]))  # (B + 2U, K)
        return logits[: len(x_primary)], logits[len(x_primary) :]


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

    def forward_train(
        self,
        x_aux: torch.Tensor | None,
        x_primary: torch.Tensor,
        request: StepRequest = PLAIN_STEP,
        x_unl: torch.Tensor | None = None,
    ) -> StepOutput:
        assert x_aux is not None
        logits_aux = self.classify(AUXILIARY, x_aux)  # auxiliary first: BatchNorm's order
        logits, logits_unl = self.classify_with_unlabeled(x_primary, x_unl)
        return StepOutput(logits, logits_aux, logits_unlabeled=logits_unl)


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
        # --style-encoder own: each dataset's style latent reads a light CNN of its own, which
        # only the reconstruction and the style KL train (the trunk learns what the classifier
        # needs, and unlearns colour and texture on the way)
        own = spec.style_encoder == "own"
        p_shape, a_shape = spec.primary_shape, spec.auxiliary_shape
        p_style = Encoder(p_shape, style_layers(p_shape, spec.stem)) if own else None
        a_style = Encoder(a_shape, style_layers(a_shape, spec.stem)) if own else None
        self.primary_encoder = VAEEncoder(p_cnn, PRIMARY, s, c, head, p_style)
        self.aux_encoder = VAEEncoder(a_cnn, AUXILIARY, s, c, head, a_style)
        self.primary_decoder = Decoder(self.primary_encoder.cnn, s + c)
        self.aux_decoder = Decoder(self.aux_encoder.cnn, s + c)
        self.classifier = Classifier(c, spec.hidden_dim, spec.num_classes, spec.dropout)
        # --style-adversary-weight: a classifier of the style latents (it learns to find the
        # class in z_s; the encoders learn to leave it guessing: objective.py)
        self.style_critic = (
            Classifier(s, CRITIC_WIDTH, spec.num_classes, 0.0) if spec.style_critic else None
        )

    def encoder(self, role: str) -> VAEEncoder:
        return self.primary_encoder if role == PRIMARY else self.aux_encoder

    def decoder(self, role: str) -> Decoder:
        return self.primary_decoder if role == PRIMARY else self.aux_decoder

    def forward(
        self,
        x_aux: torch.Tensor,
        x_primary: torch.Tensor,
        request: StepRequest = PLAIN_STEP,
        x_unl: torch.Tensor | None = None,
    ) -> JADEOutput:
        qa = self.aux_encoder(x_aux)
        if x_unl is None:
            qp, qu = self.primary_encoder(x_primary), None
        else:  # one primary pass: BatchNorm normalises labeled and unlabeled images together
            q_all = self.primary_encoder(torch.cat([x_primary, x_unl]))  # B + 2U rows
            qp, qu = q_all.rows(0, len(x_primary)), q_all.rows(len(x_primary))
        za_s, za_c = reparameterize(qa.mu_s, qa.logvar_s), reparameterize(qa.mu_c, qa.logvar_c)
        zp_s, zp_c = reparameterize(qp.mu_s, qp.logvar_s), reparameterize(qp.mu_c, qp.logvar_c)
        # the decoders' content: the samples, or (--decoder-content mean) the posterior means
        da_c, dp_c = (qa.mu_c, qp.mu_c) if self.spec.decoder_content == "mean" else (za_c, zp_c)
        if not request.content_grad:  # the decoders read content; only the other terms train it
            da_c, dp_c = da_c.detach(), dp_c.detach()
        means: tuple[torch.Tensor | None, ...] = (None, None)
        if request.mean_logits:  # the classifier also sees the codes it predicts from
            means = self.classifier(torch.cat([qa.mu_c, qp.mu_c])).chunk(2)
        learn = judge = None
        if self.style_critic is not None:  # what the decoders get as style, class hidden
            z_s = torch.cat([za_s, zp_s])  # (2B, style_dim)
            # the critic learns from detached codes; the encoders are judged by a frozen copy
            learn = self.style_critic(z_s.detach())  # (2B, K)
            judge = _frozen(self.style_critic, z_s)  # (2B, K)
        swap_logits = swap_index = content_class = None
        if request.swaps:  # only the decoders learn from the swaps: the codes are detached
            contents = torch.cat([da_c, dp_c]).detach()  # (2B, content_dim)
            swap_logits, swap_index = self.judge_swaps(za_s.detach(), zp_s.detach(), contents)
            content_class = self.predict_codes(contents)
        out = JADEOutput(
            q_aux=qa,
            q_primary=qp,
            recon_aux=self.aux_decoder(torch.cat([za_s, da_c], 1)),  # decoder sees [z_s, z_c]
            recon_primary=self.primary_decoder(torch.cat([zp_s, dp_c], 1)),
            logits_aux=self.classifier(za_c),  # only content reaches the classifier
            logits_primary=self.classifier(zp_c),
            mean_logits_aux=means[0],
            mean_logits_primary=means[1],
            critic_logits=learn,
            judged_logits=judge,
            swap_logits=swap_logits,
            swap_index=swap_index,
            swap_content_class=content_class,
        )
        if qu is not None:
            self.unlabeled_outputs(out, qu, request)
        return out

    def unlabeled_outputs(self, out: JADEOutput, qu: Posterior, request: StepRequest) -> None:
        """--unlabeled: the classifier's logits of both views (from the content means, as it
        predicts) and, with the unlabeled ELBO, the weak views' posterior and reconstruction."""
        out.logits_unlabeled = self.classifier(qu.mu_c)  # (2U, K)
        if not request.unlabeled_elbo:
            return
        q = qu.rows(0, len(qu.mu_c) // 2)  # the weak views (U rows)
        z_s, z_c = reparameterize(q.mu_s, q.logvar_s), reparameterize(q.mu_c, q.logvar_c)
        d_c = q.mu_c if self.spec.decoder_content == "mean" else z_c
        d_c = d_c if request.content_grad else d_c.detach()
        out.q_unlabeled = q
        out.recon_unlabeled = self.primary_decoder(torch.cat([z_s, d_c], 1))  # (U, C, H, W)

    def judge_swaps(
        self, z_s_aux: torch.Tensor, z_s_primary: torch.Tensor, contents: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Each decoder draws its styles (B, s) with contents picked by a random permutation of
        `contents` (2B, c: [auxiliary; primary]); the model as it predicts, frozen, classifies
        the drawings. -> (logits (2B, K), the permutation (2B,))."""
        b = z_s_aux.shape[0]
        index = torch.randperm(2 * b, device=contents.device)  # content of drawing i
        logits = []
        for role, z_s, idx in ((AUXILIARY, z_s_aux, index[:b]), (PRIMARY, z_s_primary, index[b:])):
            x = torch.sigmoid(self.decoder(role)(torch.cat([z_s, contents[idx]], 1)))
            logits.append(self.frozen_classify(role, augment(x, SWAP_AUGMENT)))
        return torch.cat(logits), index

    @torch.no_grad()
    def predict_codes(self, z_c: torch.Tensor) -> torch.Tensor:
        """The classifier's class (B,) of content codes (B, content_dim), as it predicts (eval
        mode: no dropout), with no gradient."""
        return _in_eval_mode((self.classifier,), lambda: self.classifier(z_c).argmax(1))

    def frozen_classify(self, role: str, x: torch.Tensor) -> torch.Tensor:
        """`classify` with detached weights in eval mode (BatchNorm's running statistics, no
        dropout, nothing updated): gradients reach only `x`."""
        encoder = self.encoder(role)

        def judge() -> torch.Tensor:
            h = _frozen(encoder.cnn, x, role)  # (B, out_features)
            mu_c = _frozen(encoder.content_head, h).chunk(2, 1)[0]  # (B, content_dim)
            return _frozen(self.classifier, mu_c)  # (B, K)

        return _in_eval_mode((encoder.cnn, encoder.content_head, self.classifier), judge)

    def forward_train(
        self,
        x_aux: torch.Tensor | None,
        x_primary: torch.Tensor,
        request: StepRequest = PLAIN_STEP,
        x_unl: torch.Tensor | None = None,
    ) -> StepOutput:
        assert x_aux is not None
        return self(x_aux, x_primary, request, x_unl)

    # Prediction uses the posterior mean of the content latents.
    def classify(self, role: str, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.encoder(role)(x).mu_c)

    def codes(self, role: str, x: torch.Tensor) -> dict[str, torch.Tensor]:
        q = self.encoder(role)(x)
        return {"mu_c": q.mu_c, "logvar_c": q.logvar_c, "mu_s": q.mu_s, "logvar_s": q.logvar_s}

    def decode(self, role: str, z_s: torch.Tensor, z_c: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] (B, C, H, W) from latents, by dataset `role`'s decoder."""
        return torch.sigmoid(self.decoder(role)(torch.cat([z_s, z_c], 1)).float())

    def evaluate_batch(self, role: str, x: torch.Tensor, generator: torch.Generator) -> TestOutput:
        """Logits from the posterior mean, the posterior (fp32) and the reconstruction logits of
        one z ~ q(z|x) drawn from `generator` (`objective.elbo_terms` turns them into nats)."""
        q = self.encoder(role)(x).float()
        logits = self.classifier(q.mu_c)
        z_s = reparameterize(q.mu_s, q.logvar_s, generator)
        z_c = reparameterize(q.mu_c, q.logvar_c, generator)
        # --decoder-content mean decodes the mean; z_c is drawn all the same, so the generator's
        # later draws (and the ELBO of every other batch) do not depend on the option
        z_c = q.mu_c if self.spec.decoder_content == "mean" else z_c
        recon = self.decoder(role)(torch.cat([z_s, z_c], 1)).float()  # (B, C, H, W)
        return TestOutput(logits, q, recon)


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
