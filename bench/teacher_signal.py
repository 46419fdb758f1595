"""How much a built recipe's teacher has to teach: its accuracy and its soft targets on every split.

    python bench/teacher_signal.py RUN_DIR [RUN_DIR ...] [--set KEY=VALUE ...] [--out JSON]

For each build folder (one `tinykd build` wrote, with `teacher/teacher.keras` and the recipe in `report.json`), it
reloads the build's data and teacher and measures, on the train, validation and test splits: the teacher's
accuracy, the mean probability it gives the true class at temperature 1 and at the recipe's temperature, and the
mean probability it spreads over the other classes at that temperature (what distillation passes on beyond the
label). A teacher that fits the training split perfectly and confidently, but is right on held-out data no more
often than a student trained on labels, has little to pass on. `--set` overrides the build's recipe like
`tinykd build --set` (for example the data path of a benchmark's data set). Writes bench/results/teacher_signal.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from fashion_mnist import _write_result  # noqa: E402

from tinykd import config, data as data_layer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", type=Path, nargs="+", help="build folders (each with report.json and teacher/)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "teacher_signal.json")
    args = parser.parse_args()
    result = {"builds": {run.name: signal(run, config.parse_overrides(args.overrides)) for run in args.runs}}
    _write_result(result, args.out, "bench/teacher_signal.py")


def signal(run: Path, overrides: dict[str, str]) -> dict:
    """The teacher's accuracy and soft-target figures of one build, per split, at T=1 and the recipe's T."""
    from tinykd.keras_shim import keras

    recipe = json.loads((run / "report.json").read_text())["recipe"]
    recipe_file = run / ".teacher_signal_recipe.yaml"
    recipe_file.write_text(json.dumps(recipe))  # JSON is YAML: config.load validates it like the recipe it was
    try:
        cfg = config.load(recipe_file, {key: value for key, value in overrides.items()
                                        if key.split(".")[0] in recipe})
    finally:
        recipe_file.unlink()
    data = data_layer.load(cfg.data, cfg.data.seed, frontend=cfg.frontend)
    teacher = keras.models.load_model(run / "teacher" / "teacher.keras", compile=False)
    temperature = cfg.distill.temperature
    figures = {"temperature": temperature}
    for name, split in (("train", data.train), ("val", data.val), ("test", data.test)):
        logits = teacher.predict(split.x, batch_size=256, verbose=0).astype(np.float64)
        labels = np.asarray(split.y).reshape(-1).astype(int)
        rows = np.arange(len(labels))
        at_1, at_t = _softmax(logits), _softmax(logits / temperature)
        figures[name] = {
            "samples": int(len(labels)),
            "accuracy": float(np.mean(at_1.argmax(axis=1) == labels)),
            "true_class_probability_t1": float(np.mean(at_1[rows, labels])),
            "true_class_probability_at_t": float(np.mean(at_t[rows, labels])),
            "other_classes_probability_at_t": float(np.mean(1.0 - at_t[rows, at_t.argmax(axis=1)])),
        }
    return figures


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


if __name__ == "__main__":
    main()
