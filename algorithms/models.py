"""The reference architectures (official supervised-reptile and MAML code).

- Omniglot: 28x28x1 -> 4 x [conv 3x3, 64 filters, stride 2, 'same' padding, batch norm, ReLU] -> linear.
- Mini-ImageNet: 84x84x3 -> 4 x [conv 3x3, 32 filters, 'same' padding, batch norm, 2x2 max-pool, ReLU] -> linear.
  Pooling rounds up (TensorFlow 'same'), so 84 -> 42 -> 21 -> 11 -> 6 and the head sees 32*6*6 features.
- Sine: 1 -> 40 -> 40 -> 1 with ReLU (MAML section 5.1).

Batch norm always uses the statistics of the batch it sees, in training and at
test time (``track_running_stats=False``), as the reference code does; this is
what makes the transductive / non-transductive distinction matter.

The CNNs start as the reference codes' do (``reference_init``): Glorot-uniform weights and zero biases
(supervised-reptile's ``tf.layers`` defaults; MAML's code initialises its convolutions the same way), and batch
norm divides by sqrt(variance + 1e-3) (TensorFlow's epsilon in both codes; PyTorch's default is 1e-5). With
PyTorch's defaults instead, Reptile at the default suite's 500 meta-iterations scored 6-10 points above the
authors' code on the same evaluation tasks (``make peer-official-reptile-accuracy``). One difference is left:
TensorFlow's 'same' padding of a stride-2 convolution on an even size pads one pixel after (bottom/right)
only, ours one on each side (same output sizes; the sampled positions shift by a pixel). The sine MLP keeps
PyTorch's defaults (the Reptile code has no sine model).
"""
from __future__ import annotations

import torch
from torch import nn


BN_EPS = 1e-3
"""Batch norm's epsilon in both reference codes (TensorFlow's default)."""


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, track_running_stats=False)


def reference_init(model: nn.Module) -> nn.Module:
    """Glorot-uniform weights and zero biases for every convolution and linear layer (torch's global RNG)."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)
    return model


class OmniglotCNN(nn.Sequential):
    def __init__(self, ways: int, channels: int = 64, in_channels: int = 1):
        layers: list[nn.Module] = []
        for i in range(4):
            layers += [nn.Conv2d(in_channels if i == 0 else channels, channels, 3, stride=2, padding=1), _bn(channels), nn.ReLU()]
        super().__init__(*layers, nn.Flatten(), nn.Linear(channels * 2 * 2, ways))
        reference_init(self)


class MiniImageNetCNN(nn.Sequential):
    def __init__(self, ways: int, channels: int = 32, in_channels: int = 3):
        layers: list[nn.Module] = []
        for i in range(4):
            layers += [
                nn.Conv2d(in_channels if i == 0 else channels, channels, 3, padding=1),
                _bn(channels),
                nn.MaxPool2d(2, ceil_mode=True),
                nn.ReLU(),
            ]
        super().__init__(*layers, nn.Flatten(), nn.Linear(channels * 6 * 6, ways))
        reference_init(self)


class SineMLP(nn.Sequential):
    def __init__(self, ways: int = 1, hidden: int = 40):
        super().__init__(nn.Linear(1, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, ways))


MODELS = {"omniglot": OmniglotCNN, "miniimagenet": MiniImageNetCNN, "sine": SineMLP}


def channels_last_applies(model: nn.Module) -> bool:
    """Whether ``model`` is a CNN on CPU in float32: where its weights are kept channels-last while it trains
    task by task (Reptile's reference learner, the serial evaluator, the batched evaluator's CPU loop).

    The maths is the same; oneDNN then runs its NHWC kernels, which round float32 sums in another order.
    """
    params = list(model.parameters())
    return (bool(params) and any(isinstance(m, nn.Conv2d) for m in model.modules())
            and all(p.device.type == "cpu" and p.dtype == torch.float32 for p in params))


def channels_last_on_cpu(model: nn.Module) -> bool:
    """Put ``model``'s 4-D weights channels-last if ``channels_last_applies``; say whether it did. The
    parameters stay the same objects (create an optimiser after this call, for its state's layout)."""
    if not channels_last_applies(model):
        return False
    model.to(memory_format=torch.channels_last)
    return True


def build_model(dataset: str, ways: int) -> nn.Module:
    """The reference model for ``dataset`` with ``ways`` outputs (1 for sine)."""
    if dataset not in MODELS:
        raise ValueError(f"no model for dataset {dataset!r}; valid names: {', '.join(sorted(MODELS))}")
    return MODELS[dataset](ways)
