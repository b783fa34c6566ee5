"""MAML as the popular libraries write it, behind this project's interface: backends of ``maml``/``fomaml``.

- ``learn2learn``: ``learn2learn.algorithms.MAML`` (clone / adapt / first_order), see ``learn2learn_maml.py``;
- ``torchopt``: TorchOpt's functional SGD (``torchopt.sgd`` + ``apply_updates``), see ``torchopt_maml.py``;
- ``torch.func``: ``torch.func.grad`` over ``functional_call``, tasks looped (exact), see ``func_maml.py``;
  ``torch.func-vmap``: tasks under ``vmap``, refused on networks with batch norm (wrong second derivatives).

Each reuses the reference MAML's outer Adam, checkpoints and metrics (``maml.MAML``) and replaces only the
meta-gradient, so the float64 agreement tests (``tests/test_libraries.py``) compare like with like.
A library that is not installed is still registered: building its learner raises ``LibraryMissing`` with
the make target that installs it.
"""
from . import func_maml, learn2learn_maml, torchopt_maml  # noqa: F401 (registers the backends)
from .common import LibraryMissing  # noqa: F401


def check_available(backend: str) -> None:
    """Raise ``LibraryMissing`` (naming the make target) when ``backend``'s library cannot be imported here."""
    if backend == "learn2learn":
        learn2learn_maml.load()
    elif backend == "torchopt":
        torchopt_maml.load()
