"""Your own Keras models as teacher and student (tinykd.own_model): a Functional and a Sequential student that are
not in the zoo, each built through the whole pipeline in smoke mode; a factory teacher; a `path:` student saved as
.keras; resume and rerun on an edited model file; and the errors for what later stages cannot take, through the
real CLI (exit 2, one line naming the key and the layer).

The models are in tests/user_models.py, copied beside the recipes this file writes (the recipe's folder is where a
factory's module is looked for). Recipes are pipelines/smoke.yaml with the model sections replaced.
"""

import copy
import json
import re
import shutil
import sys

import numpy as np
import pytest
import yaml

from conftest import REPO, SMOKE_RECIPE, tinykd_process
from tinykd import config, own_model
from tinykd.errors import ConfigError, ModelError
from tinykd.pipeline import BuildOptions, build

USER_MODELS = REPO / "tests" / "user_models.py"
SMOKE = yaml.safe_load(SMOKE_RECIPE.read_text())


class Log(list):
    def __call__(self, message):
        self.append(message)

    def ran(self, stage):
        return any(line.startswith(f"[{stage}] done") for line in self)

    def reused(self, stage):
        return any(line.startswith(f"[{stage}] unchanged") for line in self)


def write_recipe(folder, name, teacher_model=None, student=None, **sections):
    """pipelines/smoke.yaml named `name` with its teacher model, student and any top-level sections replaced,
    written into `folder` beside a copy of tests/user_models.py."""
    raw = copy.deepcopy(SMOKE)
    raw["name"] = name
    if teacher_model is not None:
        raw["teacher"]["model"] = teacher_model
    if student is not None:
        raw["distill"]["student"] = student
    for key, value in sections.items():
        raw[key] = value
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "user_models.py").exists():
        shutil.copy(USER_MODELS, folder / "user_models.py")
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def run_build(recipe, runs, overrides=()):
    log = Log()
    cfg = config.load(recipe, config.parse_overrides(overrides))
    return build(cfg, runs, BuildOptions(log=log)).report, log


def cli_error(recipe, runs):
    """The one error line of a failing `tinykd build`, after checking the exit code is 2."""
    process = tinykd_process("build", str(recipe), "--runs", str(runs), "--quiet")
    _, stderr = process.communicate(timeout=900)
    assert process.returncode == 2, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and stderr.strip().splitlines()[-1] == errors[0], stderr
    assert "Traceback" not in stderr
    return errors[0]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="module")
def recipes(tmp_path_factory):
    return tmp_path_factory.mktemp("recipes")


@pytest.fixture(scope="module")
def functional(recipes, runs):
    """A Functional student and a factory teacher, hints between their own layers, structured pruning, QAT."""
    recipe = write_recipe(
        recipes, "own-functional", teacher_model={"factory": "user_models:teacher"},
        student={"factory": "user_models:functional_student"},
        prune={"method": "structured", "step_fraction": 0.5, "max_steps": 1, "max_accuracy_drop": 0.99,
               "epochs": 1, "batch_size": 64})
    raw = yaml.safe_load(recipe.read_text())
    raw["distill"]["hints"] = [{"teacher_layer": "t_conv2", "student_layer": "merged", "weight": 0.5}]
    recipe.write_text(yaml.safe_dump(raw, sort_keys=False))
    return recipe, *run_build(recipe, runs)


@pytest.fixture(scope="module")
def sequential_file(recipes):
    """The Sequential student saved, untrained, as a .keras file."""
    from tinykd.config import ModelConfig

    model = own_model.build(ModelConfig(factory="user_models:sequential_student", module_dir=str(REPO / "tests")),
                            (28, 28, 1), 10, "test", seed=1)
    path = recipes / "my_student.keras"
    model.save(path)
    return path


@pytest.fixture(scope="module")
def sequential(recipes, runs, sequential_file):
    """A Sequential student from a .keras file (relative to the recipe), the smoke recipe's zoo teacher."""
    recipe = write_recipe(recipes, "own-sequential", student={"path": "my_student.keras"})
    return recipe, *run_build(recipe, runs)


def test_functional_student_and_factory_teacher_go_through_every_stage(functional, runs):
    from tinykd.models import load_model

    _, report, log = functional
    assert all(log.ran(stage) for stage in ("teacher", "distill", "prune", "quantize", "convert", "verify", "export"))
    assert any("training user_models:teacher" in line for line in log)
    assert report["int8"]["tflm_tflite_top1_agreement"] == 1.0
    # Ten classes, two epochs on 768 images, half of conv_c pruned away: above twice chance, not more.
    assert report["int8"]["tflm_accuracy"] > 0.2, [(s["stage"], s.get("test_accuracy")) for s in report["stages"]]
    run = runs / "own-functional"
    teacher = load_model(run / "teacher" / "teacher.keras")
    assert teacher.get_layer("t_conv2").filters == 32  # the user's teacher, trained as it is
    student = load_model(run / "distill" / "distill.keras")
    assert [layer.name for layer in student.layers] == ["pixels", "conv_a", "conv_a_bn", "conv_a_relu", "conv_b",
                                                        "conv_b_bn", "add", "merged", "pool", "conv_c",
                                                        "classifier", "scores"]
    # Structured pruning thinned the convolution it can cut and left the two that meet in the residual add whole.
    pruned = load_model(run / "prune" / "prune.keras")
    assert pruned.get_layer("conv_c").filters == 4
    assert pruned.get_layer("conv_a").filters == pruned.get_layer("conv_b").filters == 6
    assert report["stages"][2]["macs"] < report["stages"][1]["macs"]
    assert (run / "export" / "own_functional_model_data.cc").is_file()


def test_hints_name_the_users_own_layers(functional):
    """The functional build distilled with a hint from the user's teacher layer t_conv2 to the user's student
    layer `merged`; a name from the zoo is refused with the user's own layer names."""
    from tinykd.config import HintConfig, ModelConfig
    from tinykd.distill import Distiller

    recipe, _, _ = functional
    assert config.load(recipe).distill.hints[0].student_layer == "merged"
    student = own_model.build(ModelConfig(factory="user_models:functional_student", module_dir=str(recipe.parent)),
                              (28, 28, 1), 10, "distill.student")
    teacher = own_model.build(ModelConfig(factory="user_models:teacher", module_dir=str(recipe.parent)),
                              (28, 28, 1), 10, "teacher.model")
    distiller = Distiller(student, teacher, temperature=4.0, alpha=0.9,
                          hints=(HintConfig(teacher_layer="t_conv2", student_layer="merged"),))
    assert distiller.student_features.outputs[1].shape[1:] == (14, 14, 6)
    with pytest.raises(ConfigError, match="distill.hints\\[0\\].student_layer: no layer 'block1_conv1' in "
                                          "functional_student; its layers are: pixels, conv_a,"):
        Distiller(student, teacher, temperature=4.0, alpha=0.9,
                  hints=(HintConfig(teacher_layer="t_conv2", student_layer="block1_conv1"),))


def test_sequential_student_from_a_keras_file_goes_through_every_stage(sequential, runs):
    from tinykd.models import load_model

    _, report, log = sequential
    assert all(log.ran(stage) for stage in ("distill", "prune", "quantize", "convert", "verify", "export"))
    assert report["int8"]["tflm_tflite_top1_agreement"] == 1.0
    assert report["int8"]["tflm_accuracy"] > 0.2, [(s["stage"], s.get("test_accuracy")) for s in report["stages"]]
    student = load_model(runs / "own-sequential" / "distill" / "distill.keras")
    assert [layer.name for layer in student.layers][1:] == ["seq_conv", "seq_pool", "seq_mix", "seq_classifier",
                                                            "seq_logits"]
    assert report["stages"][2]["sparsity"] >= 0.4  # magnitude pruning reached the user's kernels


def test_rebuild_resumes_and_an_edited_model_file_reruns_distill(sequential, sequential_file, runs):
    recipe = sequential[0]
    _, log = run_build(recipe, runs)
    assert all(log.reused(stage) for stage in ("teacher", "distill", "prune", "quantize", "convert", "export"))
    from tinykd.keras_shim import keras

    model = keras.models.load_model(sequential_file, compile=False)
    model.set_weights([w * 0.5 for w in model.get_weights()])
    model.save(sequential_file)  # same architecture, other starting weights: a different file
    _, log = run_build(recipe, runs)
    assert log.reused("teacher")
    assert all(log.ran(stage) for stage in ("distill", "prune", "quantize", "convert", "export"))


def test_factory_key_follows_the_module_source(tmp_path):
    from tinykd.config import ModelConfig

    shutil.copy(USER_MODELS, tmp_path / "user_models.py")
    model = ModelConfig(factory="user_models:functional_student", module_dir=str(tmp_path))
    before = own_model.source_stamp(model)
    assert own_model.source_stamp(model) == before
    with (tmp_path / "user_models.py").open("a") as module:
        module.write("\n# edited\n")
    assert own_model.source_stamp(model) != before
    assert own_model.source_stamp(ModelConfig()) is None


def test_factory_import_leaves_sys_path_and_modules_alone(tmp_path):
    from tinykd.config import ModelConfig

    shutil.copy(USER_MODELS, tmp_path / "user_models.py")
    path, modules = list(sys.path), set(sys.modules)
    model = own_model.build(ModelConfig(factory="user_models:sequential_student", module_dir=str(tmp_path)),
                            (28, 28, 1), 10, "distill.student", seed=0)
    assert sys.path == path and "user_models" not in sys.modules and "user_models" not in set(sys.modules) - modules
    # Sequential becomes Functional on the same layers, built on the data's shape.
    assert type(model).__name__ == "Functional" and model.input_shape == (None, 28, 28, 1)


def test_a_nested_model_is_flattened_with_its_names_and_outputs():
    from tinykd.config import ModelConfig
    from tinykd.keras_shim import keras

    sys.path.insert(0, str(REPO / "tests"))
    try:
        import user_models
    finally:
        sys.path.remove(str(REPO / "tests"))
    keras.utils.set_random_seed(0)
    nested = user_models.nested_student((28, 28, 1), 10)
    flat = own_model.build(ModelConfig(factory="user_models:nested_student", module_dir=str(REPO / "tests")),
                           (28, 28, 1), 10, "distill.student", seed=0)
    assert [layer.name for layer in flat.layers][1:] == ["bb_conv", "bb_relu", "bb_pool", "head_flat", "head_logits"]
    assert not any(isinstance(layer, keras.Model) for layer in flat.layers)
    x = np.random.default_rng(0).random((4, 28, 28, 1), dtype=np.float32)
    np.testing.assert_allclose(flat(x).numpy(), nested(x).numpy(), rtol=1e-6, atol=1e-6)
    own_model.check_quantizable(flat, "distill.student")  # TFMOT takes it once flat


@pytest.mark.parametrize("factory, message", [
    ("nested_clashing_student", r"distill.student.factory: user_models:nested_clashing_student: layer 'backbone' "
                                r"is a model inside the model, and flattening it failed .*build backbone's layers"),
    ("wrong_classes_student", r"gives outputs of shape \(11,\), but the data has 10 classes; end it with a layer "
                              r"of 10 units"),
    ("softmax_student", r"layer 'probabilities' ends the model in a softmax; tinykd's losses take logits"),
    ("no_such_function", r"user_models.py has no function 'no_such_function'; it defines .*functional_student"),
])
def test_models_that_do_not_fit_are_named(factory, message):
    from tinykd.config import ModelConfig

    with pytest.raises(ModelError, match=message):
        own_model.build(ModelConfig(factory=f"user_models:{factory}", module_dir=str(REPO / "tests")),
                        (28, 28, 1), 10, "distill.student", seed=0)


def test_a_keras_3_or_wrong_input_model_is_named(tmp_path):
    from tinykd.config import ModelConfig

    (tmp_path / "other.py").write_text("def plain(input_shape, num_classes):\n    return 'a model'\n\n"
                                       "def wrong_input(input_shape, num_classes):\n"
                                       "    import tf_keras as keras\n"
                                       "    return keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Flatten(),"
                                       " keras.layers.Dense(num_classes)])\n")
    with pytest.raises(ModelError, match="teacher.model.factory: other:plain: gave a builtins.str, not a tf-keras"):
        own_model.build(ModelConfig(factory="other:plain", module_dir=str(tmp_path)), (28, 28, 1), 10,
                        "teacher.model")
    with pytest.raises(ModelError, match=r"takes inputs of shape \(32, 32, 3\), but the data's are \(28, 28, 1\)"):
        own_model.build(ModelConfig(factory="other:wrong_input", module_dir=str(tmp_path)), (28, 28, 1), 10,
                        "teacher.model")


def test_recipe_errors_name_the_key(tmp_path):
    shutil.copy(USER_MODELS, tmp_path / "user_models.py")
    mixed = write_recipe(tmp_path, "mixed", student={"path": "my_student.keras", "arch": "cnn"})
    with pytest.raises(ConfigError, match=r"mixed.yaml: distill.student.arch: a zoo key cannot stand beside "
                                          r"path \(your own model replaces the zoo's settings\); remove arch or "
                                          r"remove path"):
        config.load(mixed)
    both = write_recipe(tmp_path, "both", teacher_model={"path": "t.keras", "factory": "user_models:teacher"})
    with pytest.raises(ConfigError, match="both.yaml: teacher.model.factory: give one of path"):
        config.load(both)
    missing = write_recipe(tmp_path, "missing", student={"path": "nowhere.keras"})
    with pytest.raises(ConfigError, match=r"missing.yaml: distill.student.path: .*nowhere.keras does not exist"):
        config.load(missing)
    unknown = write_recipe(tmp_path, "unknown", student={"factory": "not_here:student"})
    with pytest.raises(ConfigError, match=r"unknown.yaml: distill.student.factory: no module 'not_here' in "
                                          f"{tmp_path}"):
        config.load(unknown)
    badly_written = write_recipe(tmp_path, "badly", student={"factory": "user_models.student"})
    with pytest.raises(ConfigError, match="distill.student.factory: must be module:function"):
        config.load(badly_written)
    cfg = config.load(write_recipe(tmp_path, "fine", student={"factory": "user_models:functional_student"}))
    assert cfg.distill.student.module_dir == str(tmp_path.resolve())


def test_cli_stops_on_a_layer_tfmot_cannot_quantize(sequential, recipes, runs):
    recipe = write_recipe(recipes, "own-layernorm", student={"factory": "user_models:layer_norm_student"})
    line = cli_error(recipe, runs)
    assert line == ("error: distill.student: TFMOT cannot quantize layer 'norm' (LayerNormalization) for "
                    "quantization-aware training; replace it with layers TFMOT quantizes (Conv2D, DepthwiseConv2D, "
                    "Dense, BatchNormalization after a convolution, ReLU, pooling, Add, Concatenate, Reshape, "
                    "Flatten), or set quantize: none to quantize after training instead")
    assert not (runs / "own-layernorm" / "distill" / "stage.json").exists()  # stopped before training


def test_cli_stops_on_a_graph_structured_pruning_cannot_cut(sequential, recipes, runs):
    recipe = write_recipe(recipes, "own-upsampling", student={"factory": "user_models:upsampling_student"},
                          prune={"method": "structured", "max_steps": 1, "epochs": 1, "batch_size": 64})
    line = cli_error(recipe, runs)
    assert re.match(r"error: prune.method structured: no layer of \w+ can lose filters \(conv's channels reach "
                    r"layer 'upsample' \(UpSampling2D\)", line), line
    assert "use prune.method: magnitude" in line


def test_cli_stops_on_a_nested_model_it_cannot_flatten(sequential, recipes, runs):
    recipe = write_recipe(recipes, "own-nested", student={"factory": "user_models:nested_clashing_student"})
    line = cli_error(recipe, runs)
    assert line.startswith("error: distill.student.factory: user_models:nested_clashing_student: layer 'backbone' "
                           "is a model inside the model")


def test_cli_stops_on_a_recipe_mixing_zoo_keys_and_a_file(recipes, runs):
    recipe = write_recipe(recipes, "own-mixed", student={"path": "my_student.keras", "filters": [8]})
    line = cli_error(recipe, runs)
    assert line == (f"error: {recipe}: distill.student.filters: a zoo key cannot stand beside path (your own model "
                    "replaces the zoo's settings); remove filters or remove path")


def test_example_recipe_loads_its_factory_from_its_folder():
    cfg = config.load(REPO / "pipelines" / "own_student_example.yaml", smoke=True)
    assert cfg.distill.student.factory == "own_models:student"
    assert cfg.distill.student.module_dir == str((REPO / "pipelines").resolve())
    assert json.dumps(config.as_dict(cfg))  # the report's copy of the recipe


def test_a_custom_layer_tfmot_cannot_prune_is_named(smoke_data, tiny_teacher):
    from tinykd.config import DistillConfig, PruneConfig
    from tinykd.distill import Schedule, Teaching
    from tinykd.keras_shim import keras
    from tinykd.prune import prune

    class Doubling(keras.layers.Layer):
        def call(self, x):
            return x * 2.0

    inputs = keras.Input(shape=smoke_data.input_shape)
    x = Doubling(name="doubling")(keras.layers.Conv2D(4, 3, strides=2, name="conv")(inputs))
    x = keras.layers.Conv2D(10, tuple(x.shape[1:3]), name="classifier")(x)
    student = keras.Model(inputs, keras.layers.Flatten()(x))
    with pytest.raises(ModelError, match=r"prune: TFMOT cannot prune layer 'doubling' \(Doubling\); give the layer "
                                         r"a get_prunable_weights\(\) method"):
        prune(student, Teaching(teacher=tiny_teacher, config=DistillConfig()), smoke_data, PruneConfig(),
              Schedule(epochs=1, batch_size=64, learning_rate=1e-3, seed=0))


def test_zoo_keys_stay_as_they_were(smoke_cfg):
    """The own-model fields, unset, are not in the repr the stage keys hash, so no zoo build reruns for them."""
    assert "factory" not in repr(smoke_cfg.distill.student) and "module_dir" not in repr(smoke_cfg.teacher)
    assert own_model.identity(smoke_cfg.distill.student) == []
