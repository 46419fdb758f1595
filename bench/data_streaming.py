"""Benchmark data.stream: distillation steps per second with the training split streamed from disk against read
into memory, and the peak resident memory of a whole build on an image folder of 60,000 images, both ways.

    python bench/data_streaming.py            (about 20 minutes on a 2-core machine)

Runs:
- Fashion-MNIST written out as an image folder of PNGs (train/<class>/, 60,000, and test/<class>/, 10,000; made
  once under --work), and the keyword set of `tinykd data keywords` (made once, or --keywords PATH);
- steps/s: for each data set and each of `data.stream: false` and `true`, the recipe's student distils for one
  epoch on the first --samples training inputs from stored teacher logits (as a build does), --repeats times; the
  steps after the first 20 (tracing, pipeline warm-up) are timed and the median run is reported;
- peak RSS: `tinykd build pipelines/smoke.yaml` on the 60,000-image folder with every training image (smoke
  epochs: teacher and distill 1 epoch, prune and QAT as smoke), in a child process per mode; its ru_maxrss from
  os.wait4. No teacher is reused between the two builds.
Writes bench/results/data_streaming.json with the machine (shared with other jobs: see `machine_note`).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from fashion_mnist import _write_result  # noqa: E402

WARMUP_STEPS = 20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=REPO / "bench" / "runs" / "data_streaming")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "data_streaming.json")
    parser.add_argument("--keywords", type=Path, help="an existing `tinykd data keywords` folder to use")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--samples", type=int, default=12800, help="training inputs per timed epoch")
    parser.add_argument("--note", default="", help="what else ran on the machine meanwhile")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)

    images = args.work / "fashion_mnist_images"
    started = time.perf_counter()
    written = not (images / "complete").exists()
    counts = write_image_folder(images)
    folder_seconds = round(time.perf_counter() - started, 1) if written else None  # None: made by an earlier run
    result = {"image_folder": {"path": str(images), "images": counts, "write_seconds": folder_seconds},
              "samples_per_timed_epoch": args.samples, "repeats": args.repeats, "warmup_steps": WARMUP_STEPS}
    result["steps_per_second"] = {
        "fashion_mnist_image_folder": speeds(REPO / "pipelines" / "fashion_mnist.yaml",
                                             ["data.format=image_folder", f"data.path={images}",
                                              "data.image_size=[28, 28]"], args)}
    result["peak_rss"] = {mode: build_rss(images, mode, args.work) for mode in ("false", "true")}
    memory, streamed = (result["peak_rss"][m]["peak_rss_bytes"] for m in ("false", "true"))
    result["peak_rss_streamed_over_in_memory"] = round(streamed / memory, 3)
    keywords = args.keywords or args.work / "keywords"
    partial = keywords.with_name(f".{keywords.name}.partial")
    while not keywords.exists() and partial.exists():  # another `tinykd data keywords` is writing it
        time.sleep(10)
    if not keywords.exists():
        subprocess.run([sys.executable, "-m", "tinykd", "data", "keywords", str(keywords)], cwd=REPO, check=True)
    result["steps_per_second"]["keywords"] = speeds(REPO / "pipelines" / "kws_dscnn.yaml",
                                                    [f"data.path={keywords}", "data.synthesize=false"], args)
    result["machine_note"] = ("2 cores shared with other jobs (tests and benchmarks of 5 other helpers ran "
                              "meanwhile, this one under nice -n 10): absolute speeds are low and noisy, and so are "
                              "the streamed/in-memory ratios (compare the runs). " + args.note).strip()
    _write_result(result, args.out, "bench/data_streaming.py")


def write_image_folder(root: Path) -> dict:
    """Fashion-MNIST's IDX files as PNGs: train/<class>/<n>.png and test/<class>/<n>.png (skipped if present)."""
    from PIL import Image

    from tinykd import config
    from tinykd.data import fashion_mnist

    done = root / "complete"
    if not done.exists():
        data = fashion_mnist.read(config.DataConfig(val_fraction=0.0001), 0)
        parts = {"train": (np.concatenate([data.train.x, data.val.x]), np.concatenate([data.train.y, data.val.y])),
                 "test": (data.test.x, data.test.y)}
        for part, (x, y) in parts.items():
            for number, (pixels, label) in enumerate(zip(x, y)):
                folder = root / part / fashion_mnist.LABELS[label].replace("/", "-")
                folder.mkdir(parents=True, exist_ok=True)
                Image.fromarray(pixels[..., 0].astype(np.uint8), "L").save(folder / f"{number:05d}.png")
        done.write_text("")
    return {part: sum(1 for _ in (root / part).rglob("*.png")) for part in ("train", "test")}


def speeds(recipe: Path, overrides: list[str], args) -> dict:
    """Median distillation steps/s over `args.repeats` one-epoch runs, in memory and streamed."""
    from tinykd import config

    found = {}
    for stream in ("false", "true"):
        cfg = config.load(recipe, config.parse_overrides(overrides + [f"data.stream={stream}",
                                                                     f"data.max_train_samples={args.samples}"]))
        started = time.perf_counter()
        data = _load(cfg)
        load_seconds = time.perf_counter() - started
        runs = [_steps_per_second(cfg, data, repeat) for repeat in range(args.repeats)]
        found["in_memory" if stream == "false" else "streamed"] = {
            "steps_per_second": statistics.median(runs), "runs": runs, "load_seconds": round(load_seconds, 1),
            "train_samples": len(data.train), "batch_size": cfg.distill.batch_size}
        print(f"{recipe.name} stream={stream}: {runs} steps/s, load {load_seconds:.0f} s", flush=True)
    found["streamed_over_in_memory"] = round(found["streamed"]["steps_per_second"]
                                             / found["in_memory"]["steps_per_second"], 3)
    return found


def _load(cfg):
    from tinykd import data as data_layer

    return data_layer.load(cfg.data, cfg.data.seed, frontend=cfg.frontend)


def _steps_per_second(cfg, data, repeat: int) -> float:
    """One epoch of the recipe's student distilling from stored logits; timed steps per second after warm-up."""
    from tinykd import models
    from tinykd.distill import Schedule, Teaching, distill
    from tinykd.keras_shim import keras

    class Timer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.times = []

        def on_train_batch_end(self, batch, logs=None):
            self.times.append(time.perf_counter())

    teacher = keras.Sequential([keras.Input(data.input_shape), keras.layers.Flatten(),
                                keras.layers.Dense(data.num_classes)], name="teacher")
    logits = np.random.default_rng(repeat).normal(size=(len(data.train), data.num_classes)).astype(np.float32)
    teaching = Teaching(teacher=teacher, config=replace(cfg.distill, hints=(), attention=()),
                        soft_targets={"train": logits})
    student = models.build(cfg.distill.student, data.input_shape, data.num_classes, "student", seed=repeat)
    schedule = Schedule(epochs=1, batch_size=cfg.distill.batch_size, learning_rate=cfg.distill.learning_rate,
                        seed=repeat)
    timer = Timer()
    small = replace(data, val=data.val.head(cfg.distill.batch_size))  # validation is not what is measured
    distill(teaching, student, small, schedule, callbacks=[timer])
    timed = timer.times[WARMUP_STEPS:]
    return round((len(timed) - 1) / (timed[-1] - timed[0]), 2)


def build_rss(images: Path, stream: str, work: Path) -> dict:
    """Peak resident memory and wall time of one smoke build on every image of the folder, in a child process."""
    runs = work / f"runs-stream-{stream}"
    if runs.exists():
        import shutil

        shutil.rmtree(runs)
    command = [sys.executable, "-m", "tinykd", "build", str(REPO / "pipelines" / "smoke.yaml"), "--runs", str(runs),
               "--quiet"]
    for override in (f"name=rss-{stream}", "data.format=image_folder", f"data.path={images}",
                     "data.image_size=[28, 28]", f"data.stream={stream}", "data.max_train_samples=null",
                     "data.max_test_samples=1000", "teacher.epochs=1", "distill.epochs=1"):
        command += ["--set", override]
    print("$", " ".join(command[2:]), flush=True)
    log = work / f"rss-{stream}.log"
    started = time.perf_counter()
    with open(log, "w") as output:
        child = subprocess.Popen(command, cwd=REPO, stdout=output, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"build with data.stream={stream} failed; see {log}")
    import json

    report = json.loads((runs / f"rss-{stream}" / "report.json").read_text())
    print(f"  {seconds:.0f} s, peak RSS {usage.ru_maxrss / 1024:.0f} MiB", flush=True)
    return {"peak_rss_bytes": usage.ru_maxrss * 1024, "seconds": round(seconds, 1),
            "train_images": report["data"]["train"], "source": report["data"]["source"]}


if __name__ == "__main__":
    main()
