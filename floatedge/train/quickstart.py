"""What `floatedge quickstart` trains: a small FLOATS model on the embedded digits, set up so that a newcomer sees
the trade-off floatedge is for within about two minutes on two CPU cores.

The choices, measured (docs/RESULTS.md, "Quickstart"):

* ε = 0.3. The digits are 8×8 with 17 grey levels (one level = 1/16 of the range), mostly strokes on a blank
  background, like MNIST — whose customary L∞ budget is 0.3 (Madry et al. 2018). The papers' CIFAR budget,
  8/255 ≈ 0.03, is half a grey level: it barely moves these images, and at ε = 0.1 every operating point kept
  99.3% clean accuracy, i.e. there was no trade-off to show. At 0.25 the robust end lost only one point of clean
  accuracy; at 0.3 it loses several (99.7 → 96.0% at width 1) while robust accuracy rises from 1% to 21.5%.
* widths 1.0 and 0.25: the narrow network has a quarter of the channels of ResNet-20 (4/8/16), so the two
  widths separate visibly (0.5 trails 1.0 by a point or two, within a few test images of the 297).
* 20 epochs at lr 0.05, batch 128: the curve is clear, and training takes about a minute.
* one torch thread: 8×8 convolutions gain little from a second one, and with another job on a two-core machine a
  two-thread run slowed down a hundredfold (OpenMP threads waiting on each other), a one-thread run only by the
  share of the core it got.
"""
from __future__ import annotations

from .config import TrainConfig

EPS = 0.3
WIDTHS = (1.0, 0.25)
EPOCHS = 20
ATTACK = "pgd20"


def quickstart_config(epochs: int = EPOCHS) -> TrainConfig:
    return TrainConfig(method="floats", arch="resnet20", dataset="digits", epochs=epochs, batch_size=128, lr=0.05,
                       widths=WIDTHS, eps=EPS, step_size=EPS / 4, threads=1)
