"""Meta-learners behind one interface (see base.py) and the shared evaluator."""
from .base import LEARNERS, DivergedError, MetaConfig, MetaLearner, build_learner, register, task_loss  # noqa: F401
from .models import build_model  # noqa: F401

# Importing the implementations registers them.
from . import reptile, maml, imaml, anil  # noqa: F401,E402
from . import batched, batched_variants  # noqa: F401,E402
from . import libraries  # noqa: F401,E402 (learn2learn, TorchOpt, torch.func backends)
