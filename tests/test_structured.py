"""Structured pruning: the thinned model is the same function as the original minus the removed channels."""

import json

import numpy as np
import pytest

from tinykd import models
from tinykd.config import ModelConfig
from tinykd.errors import ModelError
from tinykd.keras_shim import keras
from tinykd.structured import channel_scores, plan, prunable_layers, thin

ZOO = {
    "cnn_pool_flatten": (ModelConfig(filters=(8, 16, 24), head="pool_flatten"), (28, 28, 1)),
    "cnn_gap_hidden": (ModelConfig(filters=(8, 16), convs_per_block=2, head="gap", dense_units=12), (16, 16, 3)),
    "cnn_flatten": (ModelConfig(filters=(6, 10), head="flatten"), (12, 12, 1)),
    "ds_cnn_avgpool": (ModelConfig(arch="ds_cnn", filters=(16, 16, 16), first_kernel=(10, 4), first_strides=(2, 2),
                                   pool_between_blocks=False, head="avgpool"), (49, 40, 1)),
    "cnn_1d": (ModelConfig(filters=(8, 12), head="gap"), (32, 3)),
    "mlp": (ModelConfig(arch="mlp", filters=(32, 16)), (20,)),
}


def trained_like(cfg, shape, seed=0):
    """A zoo model with random (not initial) weights and batch-norm statistics, so every channel differs."""
    keras.utils.set_random_seed(seed)
    model = models.build(cfg, shape, 5, "student")
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if type(layer).__name__ == "BatchNormalization":
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights([rng.uniform(0.5, 1.5, gamma.shape), rng.normal(0, 0.1, beta.shape),
                               rng.normal(0, 0.1, mean.shape), rng.uniform(0.5, 1.5, var.shape)])
    return model


def silence_removed(model, kept_by_layer):
    """Make every channel `thin` removes contribute exactly nothing in the original model: batch norms output 0
    for them, and dense layers without one get a zero column and bias (so ReLU gives 0)."""
    for layer in model.layers:
        kind = type(layer).__name__
        kept = kept_by_layer.get(layer.name)
        if kept is None:
            continue
        removed = np.setdiff1d(np.arange(layer.output.shape[-1]), kept)
        if kind == "BatchNormalization":
            gamma, beta, mean, var = layer.get_weights()
            gamma[removed], beta[removed] = 0.0, 0.0
            layer.set_weights([gamma, beta, mean, var])
        elif kind == "Dense":
            kernel, bias = layer.get_weights()
            kernel[:, removed], bias[removed] = 0.0, 0.0
            layer.set_weights([kernel, bias])


@pytest.mark.parametrize("name", sorted(ZOO))
def test_thinned_model_computes_the_same_function(name):
    cfg, shape = ZOO[name]
    model = trained_like(cfg, shape)
    keep = plan(model, 0.5)
    assert keep, "every zoo model has prunable layers"
    _, kept_by_layer = thin(model, keep)
    silence_removed(model, kept_by_layer)
    thinned, _ = thin(model, keep)
    x = np.random.default_rng(1).normal(size=(8, *shape)).astype(np.float32)
    np.testing.assert_allclose(thinned(x, training=False).numpy(), model(x, training=False).numpy(),
                               rtol=1e-4, atol=1e-5)
    assert thinned.count_params() < 0.7 * model.count_params()
    assert models.count_macs(thinned) < 0.7 * models.count_macs(model)
    assert thinned.output_shape == model.output_shape
    for layer_name, kept in keep.items():
        assert thinned.get_layer(layer_name).output.shape[-1] == len(kept)


def test_plan_keeps_the_strongest_filters():
    model = trained_like(*ZOO["cnn_pool_flatten"])
    conv = model.get_layer("block2_conv1")
    kernel = conv.get_weights()[0]
    kernel[..., [3, 7, 11]] *= 100.0  # three filters far stronger than the rest
    conv.set_weights([kernel])
    keep = plan(model, 0.8)["block2_conv1"]
    assert len(keep) == 4 and {3, 7, 11} <= set(keep.tolist())
    np.testing.assert_allclose(channel_scores(model, "block2_conv1"), np.abs(kernel).sum(axis=(0, 1, 2)))


def test_bn_scale_ranks_by_gamma_and_global_scope_keeps_one_per_layer():
    model = trained_like(*ZOO["ds_cnn_avgpool"])
    bn = model.get_layer("block2_conv1_bn")
    gamma, beta, mean, var = bn.get_weights()
    gamma[:] = 0.01
    gamma[5] = 2.0
    bn.set_weights([gamma, beta, mean, var])
    assert plan(model, 0.95, score="bn_scale")["block2_conv1"].tolist() == [5]
    keep = plan(model, 0.6, score="bn_scale", scope="global")
    assert all(len(k) >= 1 for k in keep.values())
    total = sum(model.get_layer(n).output.shape[-1] for n in keep)
    assert sum(len(k) for k in keep.values()) == pytest.approx(0.4 * total, abs=len(keep))


def test_plan_keeps_a_multiple_of_channel_multiple_nearest_to_the_fraction():
    """Widths 8-16-24 lose 30%: 5.6, 11.2 and 16.8 channels are asked for; with multiple 8 the nearest multiples
    are 8 (the floor of one multiple), 8 and 16, and the kept channels are still the strongest."""
    model = trained_like(*ZOO["cnn_pool_flatten"])
    keep = plan(model, 0.3, multiple=8)
    assert {name: len(kept) for name, kept in keep.items()} == {"block1_conv1": 8, "block2_conv1": 8,
                                                                  "block3_conv1": 16}
    scores = channel_scores(model, "block3_conv1")
    assert set(keep["block3_conv1"].tolist()) == set(np.argsort(-scores, kind="stable")[:16].tolist())
    assert {name: len(kept) for name, kept in plan(model, 0.3).items()} == {"block1_conv1": 6, "block2_conv1": 12,
                                                                          "block3_conv1": 17}
    for fraction in (0.1, 0.45, 0.7):
        for scope in ("layer", "global"):
            widths = [len(kept) for kept in plan(model, fraction, scope=scope, multiple=4).values()]
            assert all(width % 4 == 0 and width >= 4 for width in widths), (fraction, scope, widths)


def test_a_step_that_rounds_back_to_every_whole_layer_stops_with_a_clear_error():
    """15% of 8, 16 and 24 filters rounds back to 8, 16 and 24 at multiple 8: the step would train an unchanged
    model, so pruning stops before any training, naming the widths and the two settings that fix it."""
    from types import SimpleNamespace

    from tinykd.config import BudgetConfig, PruneConfig
    from tinykd.data import Split
    from tinykd.prune import prune_structured

    model = trained_like(*ZOO["cnn_pool_flatten"])
    dense_macs = models.count_macs(model)
    cfg = PruneConfig(method="structured", step_fraction=0.15, channel_multiple=8,
                      budget=BudgetConfig(macs=dense_macs // 2))
    rng = np.random.default_rng(0)
    data = SimpleNamespace(val=Split(x=rng.random((16, 28, 28, 1), dtype=np.float32), y=rng.integers(0, 5, 16)))
    with pytest.raises(ModelError, match=r"step 1 would remove no filter: with channel_multiple 8, 15% .*"
                                         r"block1_conv1 8, block2_conv1 16, block3_conv1 24.*"
                                         r"raise prune.step_fraction or lower prune.channel_multiple"):
        prune_structured(model, None, data, cfg, None, measure=lambda m: {"macs": models.count_macs(m)})


def test_the_classifier_is_never_prunable():
    for name, (cfg, shape) in ZOO.items():
        model = trained_like(cfg, shape)
        assert "classifier" not in prunable_layers(model) and "logits" not in prunable_layers(model), name


def test_pruning_an_output_is_refused():
    model = trained_like(*ZOO["mlp"])
    with pytest.raises(ModelError, match="would remove channels of the output"):
        thin(model, {"logits": np.array([0, 1])})


def test_the_step_that_would_overshoot_the_budget_removes_only_what_meets_it():
    """Bisection on the share of filters: the share returned meets the budget, one bisection interval less does
    not, and it is below the whole step the recipe set."""
    from tinykd.config import BudgetConfig, PruneConfig
    from tinykd.prune import _least_fraction

    model = trained_like(*ZOO["cnn_pool_flatten"])
    dense_macs = models.count_macs(model)
    cfg = PruneConfig(method="structured", step_fraction=0.5, budget=BudgetConfig(macs=int(dense_macs * 0.8)))
    figures = lambda thinned: {"macs": models.count_macs(thinned)}  # noqa: E731

    def meets(fraction):
        return cfg.budget.met_by(figures(thin(model, plan(model, fraction))[0]))

    fraction = _least_fraction(model, cfg, figures)
    assert 0.0 < fraction < cfg.step_fraction and meets(cfg.step_fraction)
    assert meets(fraction) and not meets(fraction - cfg.step_fraction / 64)


def test_structured_pruning_in_a_build_meets_a_mac_budget(tmp_path):
    """The smoke build with `prune: {method: structured}` toward a MAC budget: filters go, the int8 model the
    build converts is the thinner one, and the report accounts for it."""
    from conftest import SMOKE_RECIPE
    from tinykd import config
    from tinykd.pipeline import BuildOptions, build

    unpruned = config.load(SMOKE_RECIPE, {"prune": "none", "name": "dense"})
    dense = build(unpruned, tmp_path, BuildOptions()).report
    dense_macs = dense["stages"][-1]["macs"]
    cfg = config.load(SMOKE_RECIPE, {"prune": "{method: structured, step_fraction: 0.3, max_steps: 4, "
                                               f"epochs: 1, batch_size: 64, budget: {{macs: {dense_macs // 2}}}, "
                                               "max_accuracy_drop: 0.9, rewind_epochs: 1}"})
    report = build(cfg, tmp_path, BuildOptions()).report
    steps = json.loads((tmp_path / cfg.name / "prune" / "stage.json").read_text())["metrics"]["steps"]
    assert steps[0]["macs"] == dense_macs and steps[-1]["macs"] <= dense_macs // 2
    assert [s["step"] for s in steps] == list(range(len(steps))) and all(s["kept"] for s in steps)
    assert all(0.0 < s["fraction"] <= 0.3 for s in steps[1:])
    assert steps[-1]["rewind_epochs"] == 1 and 0.0 <= steps[-1]["rewound_val_accuracy"] <= 1.0
    assert all("rewind_epochs" not in s for s in steps[:-1])
    assert report["stages"][-1]["macs"] == steps[-1]["macs"] < dense_macs
    assert report["int8"]["tflite_bytes"] < dense["int8"]["tflite_bytes"]
    assert "Structured pruning removed whole filters" in report["pruning_note"] and "budget met" in report["pruning_note"]
    assert "then retrained 1 epochs at the distillation's learning rate" in report["pruning_note"]


def test_without_a_budget_pruning_stops_kept_when_the_next_step_would_remove_no_filter(tmp_path):
    """The smoke student (8-16) at channel_multiple 8 and half of every layer a step: step 1 leaves 8-8, where the
    multiple allows no fewer. With no budget to meet, the build keeps step 1's model and says why it stopped,
    instead of failing after the work (with a budget, the same stall is the error above)."""
    from conftest import SMOKE_RECIPE
    from tinykd import config
    from tinykd.pipeline import BuildOptions, build

    cfg = config.load(SMOKE_RECIPE, {"prune": "{method: structured, step_fraction: 0.5, channel_multiple: 8, "
                                               "max_steps: 4, epochs: 1, batch_size: 64, max_accuracy_drop: 0.9}"})
    seen = []
    report = build(cfg, tmp_path, BuildOptions(log=seen.append)).report
    steps = json.loads((tmp_path / cfg.name / "prune" / "stage.json").read_text())["metrics"]["steps"]
    assert [s["step"] for s in steps] == [0, 1] and all(s["kept"] for s in steps)
    assert report["stages"][-1]["macs"] == steps[-1]["macs"] < steps[0]["macs"]
    assert any("[prune] stopped after step 1 of 4: another 50% of every layer rounds back to the whole layer at "
               "channel_multiple 8" in line for line in seen), seen


def test_the_budget_figures_are_asked_once_per_architecture():
    """Figures depend on shapes alone: new weights on the same shapes reuse the answer, fewer filters do not."""
    from tinykd.prune import _by_shape

    model = trained_like(*ZOO["cnn_pool_flatten"])
    asked = []
    measure = _by_shape(lambda m: asked.append(m) or {"macs": models.count_macs(m)})
    first = measure(model)
    retrained = models.clone(model)
    retrained.set_weights([w + 1.0 for w in model.get_weights()])
    assert measure(retrained) == first and len(asked) == 1
    thinner, _ = thin(model, plan(model, 0.5))
    assert measure(thinner)["macs"] < first["macs"] and len(asked) == 2
