"""`jade train`'s configuration: `TrainConfig`, every field an option declared once.

Its checks run when it is built: each field's rule (`options.check_fields`), the options a run
cannot do without, and options that would do nothing beside the others (an error naming both
flags, e.g. `--batch-norm per-dataset` with `--arch paper`). `from_dict` reads a saved config.

    python -c "from jadecli.config import TrainConfig as C; print(C(primary='mnist', \
n_labeled=100, auxiliary='synth-hand'))"
"""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, fields
from typing import Any

from jadecli.config.data_options import DataOptions, primary_overlap
from jadecli.config.options import (
    AUG,
    FRACTION,
    MODEL,
    NON_NEGATIVE,
    OBJ,
    OPT,
    POSITIVE,
    RUN,
    ConfigError,
    Range,
    check_fields,
    device_problem,
    field_names,
    given,
    opt,
    parse_log,
)
from jadecli.errors import UsageError
from jadecli.spec import STEMS

MODELS = ("single", "paired", "jade")
PRECISIONS = ("auto", "fp32", "bf16")
LR_SCHEDULES = ("constant", "step", "cosine")
ARCHES = ("shared", "paper", "resnet18")  # the trunks of model.encoders()
BATCH_NORMS = ("shared", "per-dataset")
STYLE_ENCODERS = ("own", "trunk")
DECODER_CONTENTS = ("mean", "sample")
SWAP_TARGETS = ("prediction", "label")
AUGMENTS = ("none", "primary", "all")
LOSS_SCALES = ("mean", "sum")
# Options only JADE uses (paired and single have no VAE), and the auxiliary's, which --model
# single does not train on (only a warning: one command line may compare the three models).
JADE_ONLY = (
    "style_dim", "style_encoder", "loss_scale", "recon_weight", "kl_weight", "style_kl_weight",
    "match_weight", "ce_on_mean", "separation_weight", "style_adversary_weight", "decoder_content",
    "swap_weight", "swap_target", "decoder_content_grad", "unlabeled_elbo",
)  # fmt: skip
UNLABELED_ONLY = ("unlabeled_ratio", "consistency_weight", "confidence", "unlabeled_elbo")
AUXILIARY_ONLY = (
    "auxiliary", "aux_per_class", "auxiliary_size", "auxiliary_pad", "style_mix", "aux_ce_weight"
)  # fmt: skip
AUGMENT_FIELDS = ("aug_shift", "aug_rotate", "aug_scale", "aug_color")

# Fields added after runs were saved without them, and the value that repeats what those ran
# (a saved config lacking one is read with it): runs saved before --swap-target judged their
# swaps against labels
SAVED_BEFORE: dict[str, Any] = {"swap_target": "label"}

# Fields a resumed run may change; every other field is fixed by the run's saved config.
RESUME_OVERRIDABLE = frozenset(  # (experiment logs are views of the run, not what it computes)
    {"epochs", "device", "precision", "compile", "data_dir", "download", "eval_every", "test"}
    | {"memory_budget", "log"}
)


@dataclass
class TrainConfig(DataOptions):
    """Everything that decides what `jade train` computes (saved in the run's manifest); the
    data options come first, from `DataOptions`."""

    # --- model ---
    model: str = opt(
        "jade",
        "single: primary CNN + classifier. paired: both datasets' CNN features (one CNN with "
        "--arch shared) into one shared classifier. jade: a VAE per dataset whose content "
        "latents share the classifier.",
        group=MODEL,
        metavar="single|paired|jade",
        choices=MODELS,
    )
    arch: str = opt(
        "shared",
        "Encoders. shared: one CNN (conv 32-64-128 with BatchNorm, after 2x2 average pools for "
        "images over 32 px: see --stem) for both datasets, so the auxiliary's labels train the "
        "convolutions the primary uses; the primary is resized to the auxiliary's size and a "
        "grey dataset beside a colour one gets 3 channels. resnet18: the same with "
        "torchvision's ResNet-18 as the one trunk (see --init-weights). paper: the paper's two "
        "separate CNNs, as in the authors' 2017 code.",
        group=MODEL,
        metavar="shared|paper|resnet18",
        choices=ARCHES,
    )
    batch_norm: str = opt(
        "shared",
        "BatchNorm in the one trunk of --arch shared/resnet18: shared (one set of running "
        "statistics for both datasets) or per-dataset (each dataset its own statistics and "
        "scale, in training and evaluation; the convolutions stay shared). Measured on digits: "
        "per-dataset +0.6 points on the auxiliary, -0.4 to -0.6 on the primary (within noise).",
        group=MODEL,
        metavar="shared|per-dataset",
        choices=BATCH_NORMS,
    )
    stem: str = opt(
        "pool",
        "--arch shared, images over 32 px: one stage per halving above 32 px before the conv "
        "32-64-128 trunk (--arch resnet18: what its JADE decoders mirror). pool: 2x2 average "
        "pools (the trunk sees 17-32 px). conv: learned stride-2 16-filter convs, for fine "
        "detail.",
        group=MODEL,
        metavar="pool|conv",
        choices=STEMS,
    )
    init_weights: str | None = opt(
        None,
        "A torchvision ResNet-18 checkpoint file (a state dict, e.g. resnet18-f37072fd.pth) to "
        "start the --arch resnet18 trunk from; nothing is downloaded. Default: random init.",
        group=MODEL,
        metavar="PATH",
    )
    content_dim: int = opt(
        10,
        "Size of the content latent (jade), which alone feeds the classifier; also the size of "
        "the single/paired bottleneck.",
        group=MODEL,
        range=POSITIVE,
    )
    style_dim: int = opt(
        10,
        "Size of the style latent of each jade VAE (decoder input only).",
        group=MODEL,
        range=POSITIVE,
    )
    style_encoder: str = opt(
        "trunk",
        "jade, one-trunk arches: where each VAE's style latent reads the image. trunk: the "
        "trunk's features, like the content latent; own: a light conv stack per dataset (half "
        "the trunk's widths, no BatchNorm) that only the reconstruction and the style KL train, "
        "so style can keep what the classifier's trunk learns to ignore. --arch paper has one "
        "CNN per dataset and always reads it.",
        group=MODEL,
        metavar="own|trunk",
        choices=STYLE_ENCODERS,
    )
    decoder_content: str = opt(
        "sample",
        "jade: what a decoder gets as content while training: sample (z_c ~ q(z_c | x), as in "
        "the paper) or mean (the posterior mean, the code the classifier predicts from).",
        group=MODEL,
        metavar="mean|sample",
        choices=DECODER_CONTENTS,
    )
    decoder_content_grad: bool = opt(
        False,
        "jade: let the reconstruction's gradient reach the content codes through the decoders, "
        "as in the paper. Off by default: the decoders read the content codes, but only the "
        "classifier, the matching and the KL train them, so that decoders which draw the class "
        "(--swap-weight) do not pull the content codes towards texture and colour (chosen on a "
        "dev split: MNIST-M and USPS 10/class, 5 seeds).",
        group=MODEL,
    )
    hidden_dim: int = opt(
        500, "Width of the shared classifier's three hidden layers.", group=MODEL, range=POSITIVE
    )
    dropout: float = opt(
        0.0,
        "Dropout after each hidden layer of the classifier (the paper: 0.5, which slows "
        "learning a lot in short schedules).",
        group=MODEL,
        range=Range(0, 1, open_hi=True),
    )
    # --- augmentation (training batches only) ---
    augment: str = opt(
        "all",
        "Which training images get random shifts, rotations, zooms (and colour jitter for "
        "colour images): none, primary (the labeled set) or all.",
        group=AUG,
        metavar="none|primary|all",
        choices=AUGMENTS,
    )
    aug_shift: float = opt(
        0.1,
        "Largest random shift, as a fraction of the image side.",
        group=AUG,
        range=Range(0, 0.5),
    )
    aug_rotate: float = opt(
        10.0, "Largest random rotation, in degrees.", group=AUG, range=Range(0, 180)
    )
    aug_scale: float = opt(
        0.1, "Largest random zoom in or out (0.1: 90% to 110%).", group=AUG, range=Range(0, 0.5)
    )
    aug_color: float = opt(
        0.3,
        "Colour jitter strength for 3-channel images (saturation, per-channel gain, contrast; "
        "half the images also get their channels permuted); 0 disables it.",
        group=AUG,
        range=Range(0, 0.5),
    )
    style_mix: float | None = opt(
        None,
        "Fraction of auxiliary training images redrawn in the primary's style: |T - x| with T "
        "a labeled primary image whose tiles are shuffled (its colours and texture, not its "
        "digit), as MNIST-M was made from MNIST. Default: 0.5 when the primary is colour and "
        "the auxiliary grey (grey auxiliary images then get 3 channels), else 0.",
        group=AUG,
        metavar="P",
        range=FRACTION,
    )
    # --- objective (the paper's equation 2) ---
    loss_scale: str = opt(
        "mean",
        "mean: every term of the objective is a mean over its own elements (reconstruction per "
        "pixel value, each KL per latent dimension), so each weight below means the same for "
        "16x16 grey and 128x128 colour images and any latent sizes; sum: nats summed over pixels "
        "and latent dimensions, as in the paper (whose CE weights were 1e4/1e5).",
        group=OBJ,
        metavar="mean|sum",
        choices=LOSS_SCALES,
    )
    recon_weight: float = opt(
        1.0,
        "Weight of each image's reconstruction cross-entropy (per pixel value).",
        group=OBJ,
        range=NON_NEGATIVE,
    )
    kl_weight: float = opt(
        0.003,
        "Weight of the KL terms to the N(0, I) prior (style of both datasets, content of the "
        "auxiliary), each per latent dimension.",
        group=OBJ,
        range=NON_NEGATIVE,
    )
    style_kl_weight: float | None = opt(
        None,
        "Weight of the style KL terms of both VAEs, per style dimension. Default: --kl-weight.",
        group=OBJ,
        range=NON_NEGATIVE,
    )
    match_weight: float = opt(
        0.3,
        "Weight of KL(q(z_c | primary) || q(z_c | paired auxiliary)), the content matching, per "
        "content dimension.",
        group=OBJ,
        range=NON_NEGATIVE,
    )
    ce_on_mean: bool = opt(
        True,
        "jade: train the classifier on the content posterior means (what it predicts from) as "
        "well as on samples; each cross-entropy is then the average of the two. Chosen on a dev "
        "split (MNIST-M 10/class, 5 seeds); --no-ce-on-mean: samples only, as in the paper.",
        group=OBJ,
    )
    separation_weight: float = opt(
        0.0,
        "jade: weight of a class-separation term (as in CCSA and d-SNE): content means of "
        "different-class auxiliary/primary pairs in a batch are pushed at least sqrt(2 x "
        "--content-dim) apart (squared hinge, per content dimension). 0: off, as in the paper.",
        group=OBJ,
        range=NON_NEGATIVE,
    )
    style_adversary_weight: float = opt(
        0.0,
        "jade: weight of a style critic: a small classifier learns to read the class from the "
        "style latents of both datasets, and the encoders learn to make it guess uniformly (its "
        "cross-entropy to the uniform distribution), so the class is left out of style and the "
        "decoders must take it from content. 0: off.",
        group=OBJ,
        range=NON_NEGATIVE,
    )
    swap_weight: float = opt(
        1.0,
        "jade: weight of the swap term: each decoder draws its batch's styles with contents "
        "taken from other images of both datasets, and the model itself, frozen (its encoder "
        "and classifier as they predict), must classify each drawing, randomly warped and "
        "colour-jittered, as its content's class (--swap-target; cross-entropy). Only the "
        "decoders learn from it: they must take the class from content, not style. A step "
        "takes about 1.65x as long. 0: off, as in the paper (decoders that draw grey class "
        "averages).",
        group=OBJ,
        range=NON_NEGATIVE,
    )
    swap_target: str = opt(
        "prediction",
        "jade: the class a swap drawing must be recognised as: prediction (the classifier's "
        "own class of the content code it was drawn from: the decoders learn to draw what the "
        "encoder read) or label (the content image's label, which a code the classifier gets "
        "wrong contradicts). Chosen on dev splits (synth-street and MNIST-M): prediction draws "
        "reconstructions the model recognises far more often after short schedules.",
        group=OBJ,
        metavar="prediction|label",
        choices=SWAP_TARGETS,
    )
    aux_ce_weight: float = opt(
        1.0,
        "Weight of the auxiliary classification cross-entropy.",
        group=OBJ,
        range=NON_NEGATIVE,
    )
    primary_ce_weight: float = opt(
        1.0,
        "Weight of the primary classification cross-entropy.",
        group=OBJ,
        range=NON_NEGATIVE,
    )
    consistency_weight: float = opt(
        1.0,
        "--unlabeled: weight of the consistency term (FixMatch's): the class the model "
        "predicts for a lightly augmented view of an unlabeled image, where it is at least "
        "--confidence sure, is the cross-entropy target of a strongly augmented view. 0: off.",
        group=OBJ,
        range=NON_NEGATIVE,
    )
    confidence: float = opt(
        0.95,
        "--unlabeled: how sure the model must be of an unlabeled image's class (its softmax "
        "maximum) before the class is used as a pseudo-label.",
        group=OBJ,
        range=Range(0, 1, open_lo=True),
    )
    unlabeled_elbo: bool = opt(
        True,
        "jade, --unlabeled: unlabeled images also train the primary VAE (reconstruction and "
        "style KL at the labeled images' weights) and, once confidently classified, have their "
        "content matched to the auxiliary content of that class (the matching KL). "
        "--no-unlabeled-elbo: the consistency term alone, as for paired and single.",
        group=OBJ,
    )
    # --- optimisation ---
    epochs: int = opt(
        10,
        "Training epochs. A resumed run may raise it: the added epochs train at the learning "
        "rate the schedule ended with.",
        group=OPT,
        range=POSITIVE,
    )
    epoch_size: int | str = opt(
        10000,
        "Training examples per epoch: pairs for paired/jade, labeled images for single (drawn by "
        "cycling through shuffled data), or 'all' for one pass over the auxiliary set (single: "
        "over the labeled set), as in the paper.",
        group=OPT,
        metavar="N|all",
        range=POSITIVE,
    )
    batch_size: int = opt(
        100,
        "Pairs (or labeled images for single) per optimisation step.",
        group=OPT,
        range=POSITIVE,
    )
    lr: float = opt(1e-3, "Peak learning rate of Adam.", group=OPT, range=Range(0, open_lo=True))
    lr_schedule: str = opt(
        "cosine",
        "constant; step (x0.3 after 1/3 and x0.1 after 2/3 of training, as in the paper); or "
        "cosine (decay to 1/100 of --lr). Planned over the --epochs the run starts with.",
        group=OPT,
        metavar="constant|step|cosine",
        choices=LR_SCHEDULES,
    )
    adam_beta1: float = opt(
        0.9, "Adam's beta_1 (the paper used 0.1).", group=OPT, range=Range(0, 1, open_hi=True)
    )
    ema: float = opt(
        0.0,
        "Evaluate, select and save an exponential moving average of the weights with this "
        "decay per step (e.g. 0.99: about the last 100 steps; warmed up as min(decay, (1 + t) / "
        "(10 + t)) at step t); 0: off, the weights as trained.",
        group=OPT,
        metavar="DECAY",
        range=Range(0, 1, open_hi=True),
    )
    grad_clip: float = opt(
        100.0,
        "Clip the gradient's global norm to this value (0 disables clipping).",
        group=OPT,
        range=NON_NEGATIVE,
    )
    seed: int = opt(
        0, "Seed for the labeled subset, pairing, initialisation and dropout.", group=OPT
    )
    device: str = opt(
        "auto",
        "auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps.",
        group=RUN,
        metavar="DEVICE",
        check=device_problem,
    )
    precision: str = opt(
        "auto",
        "Arithmetic of the forward pass: fp32; bf16 (autocast; weights, optimiser and losses "
        "stay fp32; about 2x faster on CPUs with AVX512_BF16 or AMX and on recent GPUs, much "
        "slower elsewhere); or auto (bf16 where the device computes it natively, else fp32; the "
        "run's first line says which and why).",
        group=RUN,
        metavar="auto|fp32|bf16",
        choices=PRECISIONS,
    )
    compile: bool = opt(
        False,
        "Run the training step under torch.compile (on a CPU it needs a C++ compiler; without "
        "one the step runs uncompiled, with a warning). Off by default: on the CPUs measured the "
        "compiled step was slower at 28-64 px and no faster at 128 px (docs/speed.md).",
        group=RUN,
    )
    memory_budget: float | None = opt(
        None,
        "GB of memory the datasets may take, held as 8-bit images (a 128x128 colour image is "
        "48 KiB). Data that would need more stops the run before loading, naming the size. "
        "Default: 80% of the memory available when the run starts.",
        group=RUN,
        metavar="GB",
        range=Range(0, open_lo=True),
    )
    eval_every: int = opt(
        1,
        "Evaluate test accuracy every N epochs (0: only after the last epoch). Never used to "
        "choose a model.",
        group=RUN,
        range=Range(0),
    )
    test: bool = opt(
        True,
        "Evaluate the test split (every --eval-every epochs and after the last). --no-test "
        "never touches it: for recipe searches, which must choose without test data.",
        group=RUN,
    )
    log: str = opt(
        "none",
        "Experiment logs, besides the run folder: tensorboard (RUN/logs/tensorboard), mlflow "
        "(RUN/logs/mlruns, or $MLFLOW_TRACKING_URI when set), both (tensorboard,mlflow or the "
        "flag twice), or none. Per epoch: every metrics.csv number; jade runs also get an image "
        "of test reconstructions at each test evaluation. Needs pip install "
        "'jadecli[tensorboard]' / 'jadecli[mlflow]'. A resumed run continues the same logs.",
        group=RUN,
        metavar="tensorboard|mlflow|none",
        parse=parse_log,
        repeat=True,
    )

    def __post_init__(self) -> None:
        if not self.primary:
            raise ConfigError("primary", "is required: the few-label dataset, e.g. --primary svhn")
        check_fields(self)
        if self.n_labeled is None:
            raise ConfigError("n_labeled", "is required: e.g. --n-labeled 1000, or --n-labeled all")
        if self.uses_auxiliary and not self.auxiliary:
            raise ConfigError(
                "auxiliary", f"is required for --model {self.model}, e.g. --auxiliary mnist"
            )
        if self.init_weights is not None and self.arch != "resnet18":
            raise ConfigError(
                "init_weights",
                f"loads a ResNet-18 trunk, so it needs --arch resnet18 (got {self.arch})",
            )
        if self.select == "best-val" and self.val is None:
            raise ConfigError(
                "select", "best-val needs a validation split: add --val N (e.g. --val 20%)"
            )
        if self.val is not None and self.n_labeled != "all" and isinstance(self.val, int):
            assert isinstance(self.n_labeled, int)
            if self.val >= self.n_labeled:
                raise ConfigError(
                    "val",
                    f"{self.val} leaves nothing to train on: it must be smaller than "
                    f"--n-labeled {self.n_labeled}",
                )
        if self.primary_ce_weight == 0 and self.aux_ce_weight == 0:
            raise ConfigError(
                "primary_ce_weight",
                "and --aux-ce-weight are both 0: the classifier would not train",
            )
        overlap = primary_overlap(self.primary, self.unlabeled)
        if overlap:
            raise ConfigError(
                "unlabeled",
                f"{overlap}; use --unlabeled rest (the primary's training images outside the "
                "labeled subset and --val)",
            )
        learns = self.consistency_weight > 0 or (self.model == "jade" and self.unlabeled_elbo)
        if self.unlabeled and not learns:
            raise ConfigError(
                "unlabeled",
                "is given but nothing learns from it: --consistency-weight is 0"
                + (" and --no-unlabeled-elbo" if self.model == "jade" else ""),
            )
        for name, why in self.idle_options():
            raise ConfigError(name, f"has no effect with {why}; leave it out", given(self, name))

    def idle_options(self) -> list[tuple[str, str]]:
        """Options set away from their default that do nothing beside the others: (field, the
        option that makes it so). The auxiliary's options under --model single aside (warned
        about, see `unused_auxiliary_options`)."""
        idle: list[tuple[str, str]] = []
        if self.model != "jade":
            idle += [(n, f"--model {self.model}, which has no VAE") for n in JADE_ONLY]
        if self.model == "single":
            idle.append(("batch_norm", "--model single, which trains one dataset"))
        elif self.arch == "paper":
            idle.append(("batch_norm", "--arch paper, whose two CNNs have no BatchNorm"))
            idle.append(("style_encoder", "--arch paper, whose two CNNs each feed both heads"))
        if self.arch == "paper":
            idle.append(("stem", "--arch paper, whose CNNs end in pools of their own"))
        if self.augment == "none":
            idle += [(n, "--augment none") for n in AUGMENT_FIELDS]
        if self.n_labeled == "all":
            idle.append(("labeled_selection", "--n-labeled all, which takes every image"))
        if not self.unlabeled:
            idle += [(n, "no --unlabeled images") for n in UNLABELED_ONLY]
        if self.swap_weight == 0:
            idle.append(("swap_target", "--swap-weight 0, which draws no swaps"))
        return [(n, why) for n, why in idle if getattr(self, n) != _defaults()[n]]

    def unused_auxiliary_options(self) -> list[str]:
        """The auxiliary's options a --model single run was given, which it does not use."""
        if self.uses_auxiliary:
            return []
        unset = (None, 0, 0.0, _defaults()["aux_ce_weight"])
        return [given(self, n) for n in AUXILIARY_ONLY if getattr(self, n) not in unset]

    @property
    def uses_auxiliary(self) -> bool:
        """Whether the model trains on the auxiliary dataset (paired and JADE do)."""
        return self.model != "single"

    def to_dict(self) -> dict[str, Any]:
        """Plain data (str/int/float/bool/None) for the manifest and checkpoints."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """A saved config (manifest, checkpoint): every key must be a field of this version."""
        unknown = set(data) - set(field_names(cls))
        if unknown:
            raise UsageError(f"unknown config keys: {', '.join(sorted(unknown))}")
        # a field added since the run was saved takes the value that repeats what it ran
        data = {**SAVED_BEFORE, **data}
        cfg = cls.__new__(cls)  # unchecked: only to find what the saved values leave idle
        cfg.__dict__.update({**_defaults(), **data})
        # Options that did nothing (accepted before they were refused) go back to their
        # defaults: the run computed the same with either value.
        idle = {name for name, _ in cfg.idle_options()}
        return cls(**{k: _defaults()[k] if k in idle else v for k, v in data.items()})


def _defaults() -> dict[str, Any]:
    """Every TrainConfig field's default."""
    return {f.name: f.default for f in fields(TrainConfig) if f.default is not MISSING}
