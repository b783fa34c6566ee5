"""The library backends (learn2learn, TorchOpt, torch.func) held to the same references as ours, in float64:
the higher reference's meta-gradient (relative error below 1e-9) and central finite differences, for 1 and
several inner steps, on a conv net with batch norm; their bad input; what they report about themselves.

    .venv/bin/python -m pytest -q tests/test_libraries.py

A backend whose library is not installed is skipped here with the make target that installs it
(`make setup` installs both; the learn2learn build can fail on a machine without a C compiler).
"""
from __future__ import annotations

import copy

import pytest
import torch

from _tiny import flat, one_thread, tiny_bn_net, tiny_classification_batch  # noqa: F401 (one_thread: autouse)
from algorithms import MetaConfig, build_learner, build_model
from algorithms.libraries import LibraryMissing, check_available, learn2learn_maml
from benchmarks.perf.backend_check import directional_fd

LIBRARIES = ["learn2learn", "torchopt", "torch.func"]
ALPHA = 0.3


def needs(backend: str) -> None:
    try:
        check_available(backend)
    except LibraryMissing as e:
        pytest.skip(str(e))


def meta_gradient(algorithm: str, backend: str, model, batch, steps: int):
    config = MetaConfig(algorithm=algorithm, backend=backend, inner_steps=steps, inner_lr=ALPHA, meta_lr=1e-3)
    return build_learner(config, copy.deepcopy(model), 10).meta_gradient(batch)


@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("algorithm", ["maml", "fomaml"])
@pytest.mark.parametrize("backend", LIBRARIES)
def test_meta_gradient_equals_the_reference(backend, algorithm, steps):
    needs(backend)
    model = tiny_bn_net(ways=3)
    batch = tiny_classification_batch(tasks=3, ways=3, shots=2, query=2)
    ref, ref_m = meta_gradient(algorithm, "reference", model, batch, steps)
    got, got_m = meta_gradient(algorithm, backend, model, batch, steps)
    rel = ((flat(got) - flat(ref)).norm() / flat(ref).norm()).item()
    assert rel < 1e-9, rel
    assert got_m["loss"] == pytest.approx(ref_m["loss"], rel=1e-12)


@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("backend", LIBRARIES + ["reference"])
def test_second_order_meta_gradient_matches_finite_differences(backend, steps):
    """eps = 1e-7: through several inner steps the loss crosses ReLU kinks, and larger steps swing (PITFALLS §7)."""
    needs(backend)
    model = tiny_bn_net(ways=3)
    batch = tiny_classification_batch(tasks=2, ways=3, shots=2, query=2, seed=4)
    grads, _ = meta_gradient("maml", backend, model, batch, steps)  # as benchmarks.perf.backend_check measures it
    g = torch.Generator().manual_seed(11)
    u = [torch.randn(p.shape, generator=g, dtype=p.dtype) for p in model.parameters()]
    analytic = sum((gi * ui).sum() for gi, ui in zip(grads, u)).item()
    estimates = [directional_fd(model, batch, steps, u, eps) for eps in (1e-7, 3e-7)]
    assert estimates[0] == pytest.approx(estimates[1], rel=1e-5)  # eps in the stable range
    assert analytic == pytest.approx(estimates[0], rel=1e-6)


def test_torch_func_vmap_is_refused_on_batch_norm_nets_with_the_measured_error():
    with pytest.raises(ValueError, match=r"refuses networks with batch norm.*1\.8e-2.*backend='torch.func'"):
        build_learner(MetaConfig(algorithm="maml", backend="torch.func-vmap"), tiny_bn_net(), 10)


def test_torch_func_vmap_agrees_with_the_loop_without_batch_norm():
    from datasets.sine import SinePool

    torch.manual_seed(0)
    model = build_model("sine", 1).double()
    batch = SinePool().sample_batch(1, 5, 5, seed=0, indices=range(3)).to("cpu", torch.float64)
    loop, _ = meta_gradient("maml", "torch.func", model, batch, 2)
    vmapped, _ = meta_gradient("maml", "torch.func-vmap", model, batch, 2)
    assert ((flat(loop) - flat(vmapped)).norm() / flat(loop).norm()).item() < 1e-12


@pytest.mark.parametrize("algorithm, backend, words", [
    ("maml", "learn2learn", "learn2learn 0.2.0"), ("maml", "torchopt", "torchopt 0.7.3"), ("maml", "torch.func", "task loop"),
    ("maml", "reference", "higher 0.2."), ("anil", "reference", "higher 0.2.")])  # higher has no __version__ attribute
def test_rows_say_which_library_and_mode_ran(algorithm, backend, words):
    if backend != "reference":
        needs(backend)
    learner = build_learner(MetaConfig(algorithm=algorithm, backend=backend), build_model("omniglot", 5), 10)
    info = learner.backend_info()
    assert words in info
    if backend == "torchopt":
        assert "ops" in info  # compiled or Python: which one ran


def test_unknown_backend_lists_the_valid_ones_and_a_missing_library_names_its_make_target(monkeypatch, tmp_path):
    with pytest.raises(ValueError, match="unknown backend 'tensorflow' for maml; valid backends: .*learn2learn.*torch.func.*torchopt"):
        MetaConfig(algorithm="maml", backend="tensorflow").validate()
    with pytest.raises(ValueError, match="unknown backend 'learn2learn' for reptile"):
        MetaConfig(algorithm="reptile", backend="learn2learn").validate()
    monkeypatch.setattr(learn2learn_maml, "SITE", tmp_path / "nothing")
    monkeypatch.delitem(__import__("sys").modules, "learn2learn.algorithms.maml", raising=False)
    with pytest.raises(LibraryMissing, match="make setup-learn2learn"):
        build_learner(MetaConfig(algorithm="maml", backend="learn2learn"), tiny_bn_net(), 10)


def test_learn2learn_clones_share_batch_norm_buffers():
    """A finding, pinned: learn2learn's clone_module shares a module's buffers with the original (it clones
    parameters only), so a clone's forward in training mode updates the original's running statistics.
    Harmless here (every network uses batch statistics, no buffers), but not for nets that track them."""
    needs("learn2learn")
    module, _ = learn2learn_maml.load()
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2)).double()
    maml = module.MAML(net, lr=0.1)
    clone = maml.clone()
    before = net[1].running_mean.clone()
    clone(torch.randn(4, 1, 5, 5, dtype=torch.float64))
    assert clone.module[1].running_mean.data_ptr() == net[1].running_mean.data_ptr()
    assert not torch.equal(net[1].running_mean, before)  # the original's statistics moved
