"""Built-in synthetic digit datasets: no files, no network, deterministic from a seed.

Two datasets of the digits 0-9 drawn in two different styles, so that a JADE model can be
trained and tested end to end on any machine:

- ``street`` (the primary): colour ``uint8`` images of shape (N, 3, 32, 32) that look like
  SVHN street-number crops. The centre digit is rendered from one of the fonts that ship with
  matplotlib, in a random colour on a shaded, textured background of contrasting colour,
  with partially visible neighbouring digits at the left/right edges, random rotation, scale,
  aspect, shear and shift, then blurred and noised like a small photo.
- ``hand`` (the auxiliary): grayscale ``uint8`` images of shape (N, 1, 28, 28) that look like
  MNIST handwriting: bright strokes on a black background, the digit scaled into a 20x20 box
  and centred by its centre of mass in the 28x28 frame. Each digit is drawn from one of three
  hand-designed pen skeletons per class, distorted, slanted, stretched and rotated per image,
  and rendered with a per-image pen width.

Every nuisance ("style") parameter that was sampled is returned in ``SynthSplit.factors``
with one value per image, so that disentanglement can be measured later (e.g. probing font,
colour or rotation from a latent code). All style factors are sampled independently of the
label. Same ``(n, seed)`` gives bit-identical output; the global RNGs are never touched.

This module is the entry point; the drawing lives in ``synth_street`` and ``synth_hand``, with
what they share (``SynthSplit``, sampling and geometry helpers) in ``synth_common``.

Example::

    python -c "from jadecli.data.synthetic import generate_street; \\
print(generate_street(100, 0).images.shape)"
"""

from __future__ import annotations

# _glyph_atlas and _hand_tables, the generators' render caches, are imported as well so that
# their state can be inspected and cleared through this module (the tests do)
from jadecli.data.synth_common import SynthSplit
from jadecli.data.synth_hand import HAND_VARIANTS, generate_hand
from jadecli.data.synth_hand import _hand_tables as _hand_tables
from jadecli.data.synth_street import STREET_FONTS, generate_street
from jadecli.data.synth_street import _glyph_atlas as _glyph_atlas

# bump whenever the generated pixels (or factors) change: downstream caches key on it
SYNTH_VERSION = 1

__all__ = [
    "HAND_VARIANTS",
    "STREET_FONTS",
    "SYNTH_VERSION",
    "SynthSplit",
    "generate_hand",
    "generate_street",
]
