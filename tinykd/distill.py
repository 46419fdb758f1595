"""Knowledge distillation: a `Distiller` wraps a frozen teacher and a student, and overrides `compute_loss`.

loss = alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * CE(labels, student)
       + sum of hint weight * MSE(projection(student layer), teacher layer)                  (FitNets)
       + sum of attention weight / 2 * mean((student attention map - teacher attention map)^2)  (attention transfer)

The same Distiller fine-tunes the pruned and the quantization-aware student, so every stage keeps learning from
the teacher; layers are found by name through TFMOT's wrappers. Without augmentation, teacher logits are
computed once per split (or handed in with the `Teaching`) and fed in with the labels, and so are the teacher
layers hints and attention read when the `Teaching` holds them; otherwise the teacher runs per batch.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field, replace

import numpy as np

from tinykd import artifacts, config, distribute, models, own_model
from tinykd.artifacts import Run
from tinykd.config import AugmentConfig, DistillConfig
from tinykd.data import Dataset, Split, streaming
from tinykd.errors import ConfigError
from tinykd.keras_shim import keras, native_logs, tf, tfmot


@dataclass(frozen=True, kw_only=True)
class Schedule:
    """How one fine-tuning run trains: shared by distill, prune and quantize."""

    epochs: int
    batch_size: int
    learning_rate: float
    seed: int
    verbose: int = 0
    augment: AugmentConfig | None = None
    strategy: str = "default"  # distribute.strategy: batch_size is then the global batch over every replica

    @classmethod
    def of(cls, section, *, seed: int, verbose: int = 0, augment: AugmentConfig | None = None,
           strategy: str = "default") -> "Schedule":
        """The schedule a recipe section (teacher, distill, prune, quantize) describes."""
        return cls(epochs=section.epochs, batch_size=section.batch_size, learning_rate=section.learning_rate,
                   seed=seed, verbose=verbose, augment=augment, strategy=strategy)

    @classmethod
    def of_recipe(cls, section, cfg: config.Config, run: Run) -> "Schedule":
        """The schedule of a recipe section in a build: the recipe's seed, augmentation and distribution strategy,
        the run's verbosity."""
        return cls.of(section, seed=cfg.seed, verbose=run.verbose, augment=cfg.data.augment,
                      strategy=cfg.distribute.strategy)

    @property
    def augmenting(self) -> bool:
        return self.augment is not None and self.augment.active


@dataclass(frozen=True, kw_only=True)
class Teaching:
    """Who teaches and how, handed to every training stage (distill, prune, cluster, quantize).

    `soft_targets` holds the teacher's logits per split name ("train", "val", "train+unlabeled": the training split
    with the unlabelled inputs appended), computed once by the build; a split without them is run through the
    teacher when a training run needs it. `features` holds, per split name, the outputs of the feature teacher's
    layers that hints and attention name, by layer name; without them Distiller runs the feature teacher per batch.
    """

    teacher: object  # gives the soft targets: the main teacher, or the ensemble of it and `extra_teachers`
    config: DistillConfig
    feature_teacher: object | None = None  # whose layers hints and attention read; default `teacher`
    extra_teachers: tuple = ()  # an ensemble's members besides the main teacher (for the record; `teacher` has them)
    soft_targets: dict[str, np.ndarray] = field(default_factory=dict)
    features: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)

    def stored_features(self, name: str, x) -> tuple | None:
        """The stored teacher layers on split `name` (inputs `x`), one per hint then attention pair, in the order
        Distiller reads them; None when any is missing or of another length (the teacher then runs per batch)."""
        layers = [pair.teacher_layer for pair in (*self.config.hints, *self.config.attention)]
        given = self.features.get(name, {})
        if not layers or any(layer not in given or len(given[layer]) != len(x) for layer in layers):
            return None
        return tuple(given[layer] for layer in layers)

    def logits(self, name: str, x: np.ndarray) -> np.ndarray:
        """The teacher's logits on split `name` with inputs `x`."""
        given = self.soft_targets.get(name)
        if given is not None and given.shape == (len(x), self.teacher.output_shape[-1]):
            return given
        return teacher_logits(self.teacher, x)


@dataclass(frozen=True)
class Student:
    """A training stage's model and the id of the run that made it (later stages key on it)."""

    model: object
    run_id: str


def stage(run: Run, cfg: config.Config, data: Dataset, teachers) -> Student:
    """The distill stage: a fresh student learns from the frozen teacher(s) (`teachers`: tinykd.teacher.Teachers).

    Round 1 learns from the teacher(s); each further round ("born-again") from the previous round's student,
    frozen, on the logits term only (hint and attention layers name the teacher's layers).
    """

    def train():
        schedule = Schedule.of_recipe(cfg.distill, cfg, run)
        student = models.build(cfg.distill.student, data.input_shape, data.num_classes, "student",
                               seed=schedule.seed, key="distill.student")
        if own_model.is_own(cfg.distill.student) and cfg.quantize is not None:
            own_model.check_quantizable(student, "distill.student")  # before any training, not after pruning
        distill(teachers.teaching, student, data, schedule)
        rounds = [{"round": 1, "val_accuracy": accuracy(student, data.val),
                   "test_accuracy": accuracy(student, data.test)}]
        for number in range(2, cfg.distill.rounds + 1):
            previous = models.clone(student)
            run.log(f"[distill] born-again round {number} of {cfg.distill.rounds}: the round {number - 1} student "
                    "teaches a fresh one")
            student = models.build(cfg.distill.student, data.input_shape, data.num_classes, "student",
                                   seed=schedule.seed + number - 1, key="distill.student")
            distill(Teaching(teacher=previous, config=replace(cfg.distill, hints=(), attention=())), student, data,
                    replace(schedule, seed=schedule.seed + number - 1))
            rounds.append({"round": number, "val_accuracy": accuracy(student, data.val),
                           "test_accuracy": accuracy(student, data.test)})
        return student, ({"rounds": rounds} if cfg.distill.rounds > 1 else {})

    # Your own student's file or factory source is part of the key: edit it and distill reruns.
    return float_stage(run, "distill", artifacts.key("distill", config.plain((cfg.distill, cfg.seed)),
                                                     teachers.run_id, *own_model.identity(cfg.distill.student)),
                       data, train)


def float_stage(run: Run, name: str, key: str, data: Dataset, train) -> Student:
    """A training stage whose result is a float Keras model: `train() -> (model, extra metrics)`, then its
    accuracy, size and float .tflite bytes are recorded and it is saved as `<name>.keras`."""
    from tinykd.convert import convert_float

    def compute():
        run.log(f"[{name}] running")
        model, extra = train()
        return model, model_metrics(model, data) | extra | {"tflite_float_bytes": len(convert_float(model))}

    file = f"{name}.keras"
    done = run.step(name, key, compute, save=lambda folder, model: artifacts.save_model(model, folder / file),
                    load=lambda folder: models.load_model(folder / file), artifact=file)
    return Student(done.value, done.run_id)


class Distiller(keras.Model):
    """Trains `student` on the teacher's softened outputs, the labels and, when configured, the teacher's features.

    `teacher` gives the soft targets (one model, or an `ensemble`); hints and attention read the layers of
    `feature_teacher` (the main teacher; by default `teacher`). Labels below 0 mark unlabelled samples: they add
    to the teacher terms only. The teacher never changes; projections are the Distiller's own, never the student's.

    Also the public `tinykd.Distiller`: both models (Keras 2: `tinykd.keras`, which is tf_keras) output
    logits; `compile(optimizer=...)` needs no loss, `fit(x, labels)` runs the teacher on each batch, and after
    fit `student` holds the trained weights. Targets may also be a dict {"labels", "logits" (optional),
    "features": one teacher layer output per hint then attention pair}: then the teacher's layers are not run.
    `hints` and `attention` take HintConfig / AttentionConfig or plain
    `(student_layer, teacher_layer)` name pairs (optionally with a third item, the weight).
    """

    def __init__(self, student, teacher, *, temperature: float = 4.0, alpha: float = 0.9, hints=(), attention=(),
                 feature_teacher=None):
        if not temperature >= 1.0:
            raise ConfigError(f"temperature: {temperature} must be at least 1 (1 means no softening)")
        if not 0.0 <= alpha <= 1.0:
            raise ConfigError(f"alpha: {alpha} must be in [0, 1] (0 trains on labels only)")
        hints = _layer_pairs("hints", hints, config.HintConfig)
        attention = _layer_pairs("attention", attention, config.AttentionConfig)
        super().__init__(name="distiller")
        self.student = student
        self.teacher = teacher
        self.teacher.trainable = False
        self.temperature = float(temperature)
        self.alpha = float(alpha)
        self.feature_teacher = feature_teacher if feature_teacher is not None else teacher
        self.feature_teacher.trainable = False
        self.pairs = [("hints", i, pair) for i, pair in enumerate(hints)] + \
                     [("attention", i, pair) for i, pair in enumerate(attention)]
        self.projections = []  # one per hint, in order; attention has no parameters
        if self.pairs:
            self.student_features = _with_features(
                student, [(f"distill.{kind}[{i}].student_layer", p.student_layer) for kind, i, p in self.pairs])
            self.teacher_features = _with_features(
                self.feature_teacher, [(f"distill.{kind}[{i}].teacher_layer", p.teacher_layer)
                                       for kind, i, p in self.pairs])
            for number, (kind, i, _) in enumerate(self.pairs):
                student_shape = self.student_features.outputs[1 + number].shape
                teacher_shape = self.teacher_features.outputs[1 + number].shape
                if kind == "hints":
                    self.projections.append(_projection(student_shape, teacher_shape, f"distill.hints[{i}]",
                                                        f"hint_projection_{i}"))
                else:
                    _check_attention_shapes(student_shape, teacher_shape, f"distill.attention[{i}]")
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.accuracy = keras.metrics.SparseCategoricalAccuracy(name="accuracy")

    @property
    def metrics(self):
        return [self.loss_tracker, self.accuracy]

    def call(self, x, training=False):
        if self.pairs:
            return self.student_features(x, training=training)
        return self.student(x, training=training)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None):
        labels, teacher_logits, teacher_maps = _unpack(y)
        student_logits, student_maps = (y_pred[0], y_pred[1:]) if self.pairs else (y_pred, [])
        labelled = tf.cast(labels >= 0, tf.float32)
        cross_entropy = keras.losses.sparse_categorical_crossentropy(tf.maximum(labels, 0), student_logits,
                                                                     from_logits=True)
        loss = (1.0 - self.alpha) * tf.reduce_sum(cross_entropy * labelled) / tf.maximum(tf.reduce_sum(labelled), 1.0)
        if self.pairs and teacher_maps is None:  # no stored features: run the teacher's layers on this batch
            outputs = self.teacher_features(x, training=False)
            teacher_maps = outputs[1:]
            if teacher_logits is None and self.feature_teacher is self.teacher:
                teacher_logits = outputs[0]
        teacher_maps = [tf.stop_gradient(t) for t in (teacher_maps or [])]
        if self.alpha > 0.0:
            if teacher_logits is None:
                teacher_logits = self.teacher(x, training=False)
            teacher_logits = tf.stop_gradient(teacher_logits)
            soft_teacher = tf.nn.softmax(teacher_logits / self.temperature)
            soft_student = tf.nn.log_softmax(student_logits / self.temperature)
            kl = tf.reduce_sum(soft_teacher * (tf.math.log(soft_teacher + 1e-12) - soft_student), axis=-1)
            # Soft-target gradients shrink as 1/T^2; scaling by T^2 keeps their weight independent of T (Hinton 2015).
            loss += self.alpha * self.temperature ** 2 * tf.reduce_mean(kl)
        projections = iter(self.projections)
        for (kind, _, pair), student_map, teacher_map in zip(self.pairs, student_maps, teacher_maps):
            if kind == "hints":
                loss += pair.weight * tf.reduce_mean(tf.square(next(projections)(student_map) - teacher_map))
            else:
                size = tuple(teacher_map.shape[1:3])
                difference = attention_map(student_map, size) - attention_map(teacher_map)
                loss += pair.weight / 2.0 * tf.reduce_mean(tf.square(difference))
        self.loss_tracker.update_state(loss)
        context = tf.distribute.get_replica_context()
        replicas = context.num_replicas_in_sync if context is not None else 1
        # Keras sums the replicas' gradients; dividing each replica's mean loss by their number makes that sum the
        # gradient of the mean over the global batch (Keras' compiled losses do the same).
        return loss / replicas if replicas > 1 else loss

    def compute_metrics(self, x, y, y_pred, sample_weight):
        labels, _, _ = _unpack(y)
        self.accuracy.update_state(tf.maximum(labels, 0), y_pred[0] if self.pairs else y_pred,
                                   sample_weight=tf.cast(labels >= 0, tf.float32))
        return {metric.name: metric.result() for metric in self.metrics}


def attention_map(features, size: tuple[int, int] | None = None):
    """Zagoruyko & Komodakis' spatial attention of NHWC `features`: the mean over channels of the squared
    activations, resized to `size` (bilinear) when given and different, flattened and L2-normalised per sample."""
    attention = tf.reduce_mean(tf.square(features), axis=-1)
    if size is not None and tuple(attention.shape[1:3]) != tuple(size):
        attention = tf.image.resize(attention[..., tf.newaxis], size, method="bilinear")[..., 0]
    flat = tf.reshape(attention, [tf.shape(attention)[0], -1])
    return tf.math.l2_normalize(flat, axis=1)


def ensemble(teachers, weights, temperature: float):
    """One teacher whose logits are T * log(sum_i w_i softmax(z_i / T) / sum_i w_i), so that at temperature T its
    soft targets are exactly the weighted mean of the teachers' soft targets (and its top-1, their vote)."""
    if len(teachers) != len(weights) or not teachers:
        raise ValueError("ensemble: one weight per teacher, and at least one teacher")
    total = float(sum(weights))
    inputs = keras.Input(shape=teachers[0].input_shape[1:], name="ensemble_input")
    # Each teacher under its own name (they may all be called "teacher"); the layers are shared, not copied.
    members = [keras.Model(t.inputs, t.outputs, name=f"member_{i}") for i, t in enumerate(teachers)]
    softened = [keras.layers.Lambda(lambda z, w=w: (w / total) * tf.nn.softmax(z / temperature),
                                    name=f"soft_targets_{i}")(member(inputs, training=False))
                for i, (member, w) in enumerate(zip(members, weights))]
    mean = softened[0] if len(softened) == 1 else keras.layers.Add(name="weighted_mean")(softened)
    logits = keras.layers.Lambda(lambda p: temperature * tf.math.log(p + 1e-12), name="ensemble_logits")(mean)
    for teacher in teachers:
        teacher.trainable = False
    return keras.Model(inputs, logits, name="ensemble")


def distill(teaching: Teaching, student, data: Dataset, schedule: Schedule, callbacks=(), copy=None):
    """Train `student` (a fresh or a TFMOT-wrapped model) against `teaching`'s teacher; returns the trained student.

    The teacher is not modified. `student` is trained in place, as Keras does; callers pass a clone
    (TFMOT's prune and quantize wrappers already are clones). Unlabelled inputs (`data.unlabeled`) join the
    training split whenever the teacher teaches. Under a distribution strategy (`schedule.strategy`) a copy of
    `student` trains inside the strategy's scope: `copy() -> model` makes it, untrained, where Keras' clone_model
    cannot (cluster-preserving QAT wrappers do not survive their own config); the default is clone_model.
    """
    cfg = teaching.config
    keras.utils.set_random_seed(schedule.seed)
    with _replicas(schedule, (student, copy), teaching.teacher, teaching.feature_teacher) as \
            (trained, teacher, features):
        distiller = Distiller(trained, teacher, temperature=cfg.temperature, alpha=cfg.alpha, hints=cfg.hints,
                              attention=cfg.attention, feature_teacher=features)
        train_name, train_split = training_split(data) if cfg.teaches else ("train", data.train)
        distiller.compile(optimizer=keras.optimizers.Adam(_cosine(schedule, len(train_split))))
        # Precomputed logits would describe the un-augmented images; with augmentation the teacher runs per batch.
        use_teacher_logits = cfg.alpha > 0.0 and not schedule.augmenting
        train = _dataset(train_split, teaching.logits(train_name, train_split.x) if use_teacher_logits else None,
                         schedule, training=True,
                         features=None if schedule.augmenting else teaching.stored_features(train_name, train_split.x))
        val = _dataset(data.val, teaching.logits("val", data.val.x) if use_teacher_logits else None, schedule,
                       training=False,
                       features=None if schedule.augmenting else teaching.stored_features("val", data.val.x))
        with native_logs():
            batches, steps = _epochs(train)
            distiller.fit(batches, steps_per_epoch=steps, validation_data=val, epochs=schedule.epochs,
                          verbose=schedule.verbose, callbacks=list(callbacks))
    return student


def training_split(data: Dataset) -> tuple[str, Split]:
    """The split a teacher teaches on, and its name in `Teaching.soft_targets`: the training split plus the
    unlabelled inputs (label -1) when there are any."""
    if data.unlabeled is None or len(data.unlabeled) == 0:
        return "train", data.train
    return "train+unlabeled", Split(
        x=np.concatenate([data.train.x, data.unlabeled]),
        y=np.concatenate([data.train.y, np.full(len(data.unlabeled), -1, dtype=data.train.y.dtype)]))


def train_on_labels(model, data: Dataset, schedule: Schedule):
    """Plain supervised training with cross-entropy (teachers, and students when alpha is 0)."""
    keras.utils.set_random_seed(schedule.seed)
    with _replicas(schedule, (model, None)) as (trained,):
        trained.compile(optimizer=keras.optimizers.Adam(_cosine(schedule, len(data.train))),
                        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")])
        with native_logs():
            batches, steps = _epochs(_dataset(data.train, None, schedule, training=True))
            trained.fit(batches, steps_per_epoch=steps,
                        validation_data=_dataset(data.val, None, schedule, training=False),
                        epochs=schedule.epochs, verbose=schedule.verbose)
    return model


@contextlib.contextmanager
def _replicas(schedule: Schedule, student_and_copy: tuple, *teachers):
    """The models to train with, built under `schedule.strategy` (tinykd.distribute): the models themselves for
    the default strategy; otherwise copies made inside `strategy.scope()` (Keras and TFMOT create mirrored
    variables only there), whose trained weights go back into the student when the block ends. So the caller keeps
    a plain model, and nothing after training runs a collective op. `student_and_copy`: the student and its
    `copy` function (see `distill`), or None for Keras' clone_model."""
    student, copy = student_and_copy
    strategy = distribute.strategy_of(schedule.strategy)
    if strategy is None:
        yield (student, *teachers)
        return
    with strategy.scope():
        copies = {id(student): _replica(student, copy)}
        for model in teachers:
            if model is not None and id(model) not in copies:
                copies[id(model)] = _replica(model)
        yield tuple(copies[id(model)] if model is not None else None for model in (student, *teachers))
    student.set_weights(copies[id(student)].get_weights())


def _replica(model, copy=None):
    """A copy of `model`, weights included, also when TFMOT wrapped it (pruning, clustering, QAT wrappers);
    `copy() -> model` makes the untrained copy where Keras' clone_model cannot.

    Raises:
        ConfigError: when the copy fails (its layers do not survive their own config).
    """
    scopes = (tfmot.sparsity.keras.prune_scope(), tfmot.quantization.keras.quantize_scope(),
              tfmot.clustering.keras.cluster_scope())
    try:
        with contextlib.ExitStack() as stack:
            for scope in scopes:
                stack.enter_context(scope)
            replica = copy() if copy is not None else keras.models.clone_model(model)
        replica.set_weights(model.get_weights())
    except (TypeError, ValueError) as error:
        raise ConfigError(f"distribute.strategy: cannot copy {model.name} into the strategy's scope ({error}); "
                          "train this recipe with distribute.strategy: default") from None
    return replica


def model_metrics(model, data: Dataset) -> dict:
    """Validation and test accuracy, parameters and MACs of a Keras model: what every model stage records."""
    return {"val_accuracy": accuracy(model, data.val), "test_accuracy": accuracy(model, data.test),
            "params": int(model.count_params()), "macs": models.count_macs(model)}


def accuracy(model, split: Split, batch_size: int = 256) -> float:
    """Top-1 accuracy of a Keras model that outputs logits."""
    with native_logs():
        logits = model.predict(streaming.model_input(split.x, batch_size), batch_size=batch_size, verbose=0)
    return float(np.mean(np.argmax(logits, axis=-1) == split.y))


def _dataset(split: Split, logits: np.ndarray | None, schedule: Schedule, training: bool, features=None):
    """Batches of (x, labels) or, given the teacher's logits, (x, (labels, teacher logits)); given stored teacher
    layer outputs (`features`: arrays or tinykd.data.shards.Rows), (x, {"labels", "logits" if given, "features"}),
    each batch's feature rows read when the batch is made, so stored layers need not fit in memory.

    Training batches are shuffled and, when the recipe asks, augmented; evaluation batches never are. A streamed
    split (tinykd.data.streaming) is read from disk in the pipeline, its order shuffled with the same seed.
    """
    targets = split.y if logits is None else (split.y, logits)
    if features is not None:  # the row numbers go through the shuffle; their features are read per batch
        targets = {"labels": split.y, "rows": np.arange(len(split), dtype=np.int64)} | \
            ({} if logits is None else {"logits": logits})
    if streaming.is_streamed(split.x):
        dataset = split.x.examples(targets, schedule.seed if training else None)
    else:
        dataset = tf.data.Dataset.from_tensor_slices((split.x, targets))
        if training:
            dataset = dataset.shuffle(len(split), seed=schedule.seed, reshuffle_each_iteration=True)
    if schedule.strategy != "default":
        # Workers split the elements (in-memory arrays have no files to split), and Keras splits each global batch
        # of `batch_size` among the replicas.
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        dataset = dataset.with_options(options)
    if training:
        if schedule.augmenting and schedule.augment.image:  # audio is augmented before its front-end, in `split.x`
            augment = _augmenter(schedule.augment, tuple(split.x.shape[1:]), schedule.seed)
            dataset = dataset.map(lambda x, y: (augment(x), y), num_parallel_calls=tf.data.AUTOTUNE)
    dataset = dataset.batch(schedule.batch_size)
    if features is not None:
        dataset = dataset.map(lambda x, y: (x, _with_rows_read(y, features)), num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.prefetch(tf.data.AUTOTUNE)


def _epochs(dataset) -> tuple:
    """`fit`'s training data and steps per epoch: the batches repeated, one pass per epoch.

    Handed a finite dataset, tf-keras makes a new iterator every epoch and waits for the old one to go, about 9 s
    of a keyword epoch's 20 (the front-end's parallel map); one iterator over the repeated batches never waits.
    The shuffle still changes every epoch. A dataset of unknown length is handed on as it is.
    """
    steps = int(dataset.cardinality())
    if steps < 0:
        return dataset, None
    return dataset.repeat(), steps


def _with_rows_read(targets: dict, features: tuple) -> dict:
    """A batch's targets with its "rows" replaced by those rows of every stored feature array."""
    targets = dict(targets)
    rows = targets.pop("rows")
    read = []
    for stored in features:
        values = tf.numpy_function(lambda picks, stored=stored: np.asarray(stored[picks], np.float32), [rows],
                                   tf.float32, stateful=False)
        values.set_shape((None, *stored.shape[1:]))
        read.append(values)
    return targets | {"features": tuple(read)}


def teacher_logits(teacher, x: np.ndarray) -> np.ndarray:
    """The teacher's logits on `x` (an array, or a streamed split read in order)."""
    with native_logs():
        return teacher.predict(streaming.model_input(x, 512), batch_size=512, verbose=0)


def _augmenter(augment: AugmentConfig, shape: tuple[int, int, int], seed: int):
    """Random flip, crop-and-resize and shift (reflect-pad, then crop back) of one HxWxC image."""
    height, width, channels = shape

    def apply(x):
        if augment.flip_horizontal:
            x = tf.image.random_flip_left_right(x, seed=seed)
        if augment.crop_fraction:
            crop = (max(1, round(height * (1 - augment.crop_fraction))),
                    max(1, round(width * (1 - augment.crop_fraction))), channels)
            x = tf.image.resize(tf.image.random_crop(x, crop, seed=seed + 1), (height, width))
        if augment.shift_fraction:
            pad_h, pad_w = round(height * augment.shift_fraction), round(width * augment.shift_fraction)
            padded = tf.pad(x, [[pad_h, pad_h], [pad_w, pad_w], [0, 0]], mode="REFLECT")
            x = tf.image.random_crop(padded, (height, width, channels), seed=seed + 2)
        return x

    return apply


def _cosine(schedule: Schedule, train_samples: int):
    steps = schedule.epochs * -(-train_samples // schedule.batch_size)
    return keras.optimizers.schedules.CosineDecay(schedule.learning_rate, decay_steps=max(1, steps), alpha=0.02)


def _unpack(y):
    """(labels, teacher logits or None, teacher layer outputs or None) from a batch's targets."""
    if isinstance(y, dict):
        return y["labels"], y.get("logits"), y.get("features")
    if isinstance(y, (tuple, list)):
        return y[0], y[1], None
    return y, None, None


def teacher_features(teacher, layer: str, key: str, x) -> np.ndarray:
    """The output of `teacher`'s layer `layer` on `x` (an array, or a streamed split read in order); `key` names
    the recipe key in the error when there is no such layer."""
    with_features = _with_features(teacher, [(key, layer)])
    model = keras.Model(with_features.inputs, with_features.outputs[1], name=f"{teacher.name}_features")
    with native_logs():
        return model.predict(streaming.model_input(x, 512), batch_size=512, verbose=0)


def find_layer(model, name: str):
    """The layer called `name`, also when TFMOT wrapped it for pruning (prune_low_magnitude_<name>) or for
    quantization-aware training (quant_<name>); None if there is none."""
    for layer in model.layers:
        if layer.name == name or getattr(getattr(layer, "layer", None), "name", None) == name:
            return layer
    return None


def _with_features(model, named: list[tuple[str, str]]):
    """The model with more outputs: its logits, then each named layer's activations, in order."""
    outputs = [model.outputs[0]]
    for key, layer_name in named:
        layer = find_layer(model, layer_name)
        if layer is None:
            names = ", ".join(getattr(getattr(item, "layer", None), "name", item.name) for item in model.layers)
            raise ConfigError(f"{key}: no layer {layer_name!r} in {model.name}; its layers are: {names}")
        outputs.append(layer.output)
    return keras.Model(model.inputs, outputs, name=f"{model.name}_with_features")


def _projection(student_shape, teacher_shape, key: str, name: str):
    """A learned map from student features to teacher features: 1x1 conv (+ resize) for maps, dense for vectors."""
    if len(student_shape) != len(teacher_shape):
        raise ConfigError(f"{key}: student features {tuple(student_shape)[1:]} and teacher features "
                          f"{tuple(teacher_shape)[1:]} differ in rank; pick layers of the same kind (both conv)")
    if len(teacher_shape) == 2:
        projection = keras.layers.Dense(teacher_shape[-1], name=name)
    else:
        projection = keras.Sequential([keras.layers.Conv2D(teacher_shape[-1], 1, name=name)], name=f"{name}_block")
        if tuple(student_shape[1:3]) != tuple(teacher_shape[1:3]):
            projection.add(keras.layers.Resizing(teacher_shape[1], teacher_shape[2], interpolation="bilinear"))
    projection.build(tuple(student_shape))  # its weights exist before training, so the optimizer sees them
    return projection


def _layer_pairs(key: str, pairs, kind: type) -> tuple:
    """`pairs` as `kind` configs: each one already is, or is (student_layer, teacher_layer[, weight])."""
    converted = []
    for i, pair in enumerate(pairs):
        if isinstance(pair, config.LayerPairConfig):
            converted.append(pair)
            continue
        if (not isinstance(pair, (tuple, list)) or len(pair) not in (2, 3)
                or not all(isinstance(name, str) for name in pair[:2])):
            raise ConfigError(f"{key}[{i}]: expected a (student_layer, teacher_layer) pair of layer names, "
                              f"optionally with a weight, or a {kind.__name__}; got {pair!r}")
        weight = {} if len(pair) == 2 else {"weight": pair[2]}
        if weight and (not isinstance(pair[2], (int, float)) or pair[2] <= 0):
            raise ConfigError(f"{key}[{i}]: weight {pair[2]!r} must be a positive number")
        converted.append(kind(student_layer=pair[0], teacher_layer=pair[1], **weight))
    return tuple(converted)


def _check_attention_shapes(student_shape, teacher_shape, key: str) -> None:
    if len(student_shape) != 4 or len(teacher_shape) != 4:
        raise ConfigError(f"{key}: attention maps need convolutional layers (height, width, channels), but the "
                          f"student layer gives {tuple(student_shape)[1:]} and the teacher layer "
                          f"{tuple(teacher_shape)[1:]}; name conv, batch-norm or activation layers")
