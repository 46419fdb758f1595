"""The build's report: accuracy after every stage, size, arena and time, as JSON, Markdown and a plot.

Every figure is measured (accuracy, .tflite bytes, TFLM arena, seconds) or counted from the model (parameters,
MACs); the board's flash, RAM and latency come from `tinykd report` (tinykd.report), which says how each is made.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tinykd import artifacts, config
from tinykd.artifacts import Run

_STAGE_TITLES = {"teacher": "teacher (float)", "distill": "student (float, distilled)",
                 "prune": "student (float, pruned)", "cluster": "student (float, clustered)",
                 "quantize": "student (QAT, fake-quant)", "int8": "student int8 (TFLite Micro)",
                 "compressed": "student int8, LUT-compressed (TFLite Micro)"}


def write(run: Run, cfg: config.Config, data, records: dict[str, dict]) -> dict:
    """Assemble the report from the stage records and write report.json, report.md and accuracy_vs_size.png."""
    verify = records["verify"]["metrics"]
    converted = records["convert"]["metrics"]
    board = verify["board_report"]
    measured = records["measure"]["metrics"] if "measure" in records else {}
    stages = []
    for name in ("teacher", "distill", "prune", "cluster", "quantize"):
        if name in records:
            metrics = records[name]["metrics"]
            stages.append({"stage": name, "title": _stage_title(name, metrics),
                           "test_accuracy": metrics["test_accuracy"], "val_accuracy": metrics["val_accuracy"],
                           "params": metrics["params"], "macs": metrics["macs"],
                           "size_bytes": metrics.get("tflite_float_bytes"),
                           "size_kind": "float32 .tflite" if "tflite_float_bytes" in metrics else None,
                           "sparsity": metrics.get("sparsity"), "seconds": records[name]["seconds"],
                           "int8": ({**measured[name], "kind": "post-training quantized"} if name in measured
                                    else None)})
    student_params = stages[-1]["params"]
    stages.append({"stage": "int8", "title": _STAGE_TITLES["int8"], "test_accuracy": verify["tflm_accuracy"],
                   "val_accuracy": None, "params": student_params, "macs": stages[-1]["macs"],
                   "size_bytes": converted["tflite_bytes"], "size_kind": "int8 .tflite", "sparsity": None,
                   "seconds": records["convert"]["seconds"] + records["verify"]["seconds"],
                   "int8": {"tflite_bytes": converted["tflite_bytes"], "gzip_bytes": converted.get("gzip_bytes"),
                            "flash_bytes": board["flash_bytes"], "arena_bytes": board["arena_bytes"],
                            "ram_bytes": board["ram_bytes"], "latency_ms": board["latency_ms"],
                            "tflm_accuracy": verify["tflm_accuracy"],
                            "kind": "quantization-aware trained" if "quantize" in records else "post-training quantized"}})
    compression = records["compress"]["metrics"] if "compress" in records else None
    if compression is not None:
        # The compress stage proved TFLM outputs identical on the test split, so the accuracy is the int8 one.
        stages.append({**stages[-1], "stage": "compressed", "title": _STAGE_TITLES["compressed"],
                       "size_bytes": compression["tflite_bytes"], "size_kind": "LUT-compressed int8 .tflite",
                       "seconds": records["compress"]["seconds"],
                       "int8": ({**compression["board"], "tflm_accuracy": verify["tflm_accuracy"],
                                 "kind": "LUT-compressed"} if "board" in compression else None)})
    report = {
        "name": cfg.name,
        "recipe": config.as_dict(cfg),
        "data": {"source": data.source, "train": len(data.train), "val": len(data.val), "test": len(data.test),
                 "input_shape": list(data.input_shape), "labels": list(data.labels),
                 "preprocessing": data.preprocessing.__dict__,
                 "skipped_unreadable": len(data.skipped), "skipped_files": list(data.skipped)},
        "stages": stages,
        "int8": {
            "tflite_bytes": converted["tflite_bytes"], "ops": converted["ops"], "input": converted["input"],
            "output": converted["output"], "arena_bytes_host": verify["arena_bytes"],
            "tflm_accuracy": verify["tflm_accuracy"], "tflite_reference_accuracy": verify["tflite_accuracy"],
            "tflm_tflite_top1_agreement": verify["top1_agreement"],
            "tflm_tflite_identical_fraction": verify["identical_fraction"],
            "tflm_tflite_max_lsb_diff": verify["max_lsb_diff"], "test_samples": verify["samples"],
        },
        "board": {key: value for key, value in board.items() if key != "layers"},
        "layers": board["layers"],
        "classes": class_metrics(verify["confusion"], data.labels),
        "data_repairs": dict(data.repairs),
        "frontend_parity": records["export"]["metrics"].get("frontend_parity"),
        "listening": _listening(cfg, board),
        "firmware": records["export"]["metrics"].get("firmware"),
        "ensemble": records["ensemble"]["metrics"] if "ensemble" in records else None,
        "compression": None if compression is None else {
            **{k: v for k, v in compression.items() if k != "tensors"},
            "arena_plus_decompression_bytes": board["arena_bytes"] + compression["decompression_memory_bytes"],
            "tensors": compression["tensors"]},
        "distill_rounds": records["distill"]["metrics"].get("rounds"),
        "pruning_note": _pruning_note(records),
        "seconds": {name: records[name]["seconds"] for name in records},
        "files": records["export"]["metrics"]["files"],
    }
    artifacts.write_json(run.root / "report.json", report)
    artifacts.write_text(run.root / "report.md", render_markdown(report))
    _plot(stages, run.root / "accuracy_vs_size.png", cfg.name)
    _plot_confusion(verify["confusion"], data.labels, run.root / "confusion.png", cfg.name)
    return report


def class_metrics(confusion, labels) -> dict:
    """Per-class accuracy of the int8 model in TFLM and, for keyword spotting, false reject and false accept rates.

    False reject: a keyword clip not recognised as its keyword. False accept: a `_silence_` or `_unknown_` clip
    recognised as any keyword.
    """
    counts = np.asarray(confusion, dtype=np.int64)
    per_class = {label: {"samples": int(counts[i].sum()),
                         "accuracy": float(counts[i, i] / counts[i].sum()) if counts[i].sum() else None}
                 for i, label in enumerate(labels)}
    result = {"per_class": per_class, "confusion": counts.tolist()}
    fillers = [i for i, label in enumerate(labels) if label in ("_silence_", "_unknown_")]
    if fillers:
        keywords = [i for i in range(len(labels)) if i not in fillers]
        keyword_clips = counts[keywords].sum()
        filler_clips = counts[fillers].sum()
        result["false_reject_rate"] = float(1.0 - counts[keywords, keywords].sum() / keyword_clips) \
            if keyword_clips else None
        result["false_accept_rate"] = float(counts[np.ix_(fillers, keywords)].sum() / filler_clips) \
            if filler_clips else None
    return result


def render_markdown(report: dict) -> str:
    """The report as Markdown, for a pull request or a README."""
    int8, board = report["int8"], report["board"]
    lines = [f"# tinykd build: {report['name']}", "",
             f"Data: {report['data']['source']} ({report['data']['train']} train / {report['data']['val']} val / "
             f"{report['data']['test']} test), input {tuple(report['data']['input_shape'])}"
             + (f"; {report['data']['skipped_unreadable']} unreadable files skipped" if report['data']['skipped_unreadable']
                else "") + ".", "",
             "| stage | test accuracy | params | MACs | size | int8 in TFLM | int8 .tflite (gzip) | flash | RAM | "
             "latency | time |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for stage in report["stages"]:
        size = f"{stage['size_bytes']:,} B ({stage['size_kind']})" if stage["size_bytes"] else "-"
        extra = f", sparsity {stage['sparsity']:.0%}" if stage.get("sparsity") else ""
        lines.append(f"| {stage['title']}{extra} | {stage['test_accuracy']:.2%} | {stage['params']:,} | "
                     f"{stage['macs']:,} | {size} | {_int8_cells(stage.get('int8'))} | {stage['seconds']:.0f} s |")
    lines += ["", f"int8 columns: each stage's model as an int8 model on {board['board']} (`tinykd report`): the "
                  "float stages' models post-training quantized, the last rows the model the build ships. Flash = "
                  "model + TFLM runtime code; RAM = arena (with any decompression memory) + runtime state; latency "
                  "estimated. gzip is information only: TFLM cannot run a gzipped model."]
    lines += ["", "## int8 model in TFLite Micro", "",
              f"- `.tflite`: {int8['tflite_bytes']:,} bytes; ops: {', '.join(int8['ops'])}",
              f"- tensor arena measured in the TFLM interpreter (64-bit host, an upper bound for 32-bit): "
              f"{int8['arena_bytes_host']:,} bytes",
              f"- TFLM vs TFLite reference kernels on {int8['test_samples']:,} test inputs: top-1 agreement "
              f"{int8['tflm_tflite_top1_agreement']:.2%}, bit-identical outputs "
              f"{int8['tflm_tflite_identical_fraction']:.2%}, largest difference {int8['tflm_tflite_max_lsb_diff']} LSB",
              f"- input: {int8['input']['dtype']} {tuple(int8['input']['shape'])}, scale {int8['input']['scale']:.6g}, "
              f"zero point {int8['input']['zero_point']}",
              f"- what the firmware must feed: {report['data']['preprocessing']['description']}; "
              f"int8 = clamp(round((raw * {report['data']['preprocessing']['raw_scale']:.9g} + "
              f"{report['data']['preprocessing']['raw_offset']:.9g}) / {int8['input']['scale']:.9g}) + "
              f"{int8['input']['zero_point']}, -128, 127)",
              "", f"## Target board: {board['board']} ({board['mcu']}, {board['core']} @ {board['clock_mhz']:g} MHz, "
                  f"{board['kernels']} kernels), from `tinykd report`", "",
              f"- fits: **{'yes' if board['fits'] else 'NO'}**",
              f"- flash: {board['flash_bytes']:,} of {board['board_flash_bytes']:,} bytes "
              f"({board['model_bytes']:,} model + {board['runtime_code_bytes']:,} TFLM runtime code; "
              f"range {board['flash_range_bytes'][0]:,}-{board['flash_range_bytes'][1]:,}); {board['flash_counts']}",
              f"- RAM: {board['ram_bytes']:,} bytes, arena {board['arena_bytes']:,} of {board['board_arena_ram_bytes']:,} "
              f"in the largest SRAM region; {board['ram_counts']}",
              f"- latency: {board['latency_ms']:.1f} ms (range {board['latency_range_ms'][0]:.1f}-"
              f"{board['latency_range_ms'][1]:.1f} ms, confidence {board['confidence']}); {board['latency_basis']}"]
    lines += [f"- warning: {warning}" for warning in board["warnings"]]
    compression = report.get("compression")
    if compression:
        lines += ["", "## TFLite Micro LUT compression", "",
                  f"- `.tflite`: {compression['tflite_bytes_before']:,} -> {compression['tflite_bytes']:,} bytes "
                  f"({compression['saved_fraction']:.0%} smaller); {compression['compressed_tensors']} of "
                  f"{len(compression['tensors'])} weight tensors compressed",
                  f"- TFLM outputs identical to the uncompressed model on {compression['checked_samples']:,} test "
                  "inputs, so the accuracy is the int8 accuracy above",
                  f"- RAM: arena {board['arena_bytes']:,} + decompression memory "
                  f"{compression['decompression_memory_bytes']:,} = {compression['arena_plus_decompression_bytes']:,} "
                  "bytes; the firmware needs TFLM built with USE_TFLM_COMPRESSION=1"]
        lines += [f"  - {t['name']} ({t['op']}): " + (f"{t['bits']}-bit, {t['bytes_before']:,} -> "
                  f"{t['bytes_after']:,} B" if t["bits"] else f"dense ({t['reason']})")
                  for t in compression["tensors"]]
    classes = report["classes"]
    lines += ["", "## Per class (int8 in TFLite Micro; confusion matrix in confusion.png)", "",
              "| class | test samples | accuracy |", "|---|---|---|"]
    lines += [f"| {label} | {c['samples']:,} | " + (f"{c['accuracy']:.2%} |" if c["accuracy"] is not None else "- |")
              for label, c in classes["per_class"].items()]
    if "false_reject_rate" in classes:
        lines += ["", f"- false reject rate (keyword clips not recognised as their keyword): "
                      f"{classes['false_reject_rate']:.2%}",
                  f"- false accept rate (silence and unknown clips recognised as a keyword): "
                  f"{classes['false_accept_rate']:.2%}"]
    if report["data_repairs"] and any(report["data_repairs"].values()):
        lines += ["", "Audio the loader repaired: " + ", ".join(f"{what} {count}" for what, count in
                                                               report["data_repairs"].items() if count)]
    if report["frontend_parity"]:
        parity = report["frontend_parity"]
        lines += ["", f"Front-end parity: features recomputed from the exported model_settings.h are identical to "
                      f"the training features on {parity['identical_clips']:,} of {parity['test_clips']:,} test clips."]
    if report.get("listening"):
        from tinykd.audio.stream import listening_line
        lines += ["", listening_line(report["listening"], board["board"])]
    if report.get("firmware"):
        lines += ["", _firmware_line(report["firmware"])]
    if report["pruning_note"]:
        lines += ["", report["pruning_note"]]
    lines += ["", "Firmware files: " + ", ".join(f"`export/{f}`" for f in report["files"]), ""]
    return "\n".join(lines)


def _int8_cells(figures: dict | None) -> str:
    """The int8 columns of one stage row: TFLM accuracy, .tflite (gzip), flash, RAM, latency."""
    if not figures:
        return "- | - | - | - | -"
    gzip = f" ({figures['gzip_bytes']:,})" if figures.get("gzip_bytes") else ""
    return (f"{figures['tflm_accuracy']:.2%} | {figures['tflite_bytes']:,} B{gzip} | {figures['flash_bytes']:,} B | "
            f"{figures['ram_bytes']:,} B | {figures['latency_ms']:.1f} ms")


def _stage_title(stage: str, metrics: dict) -> str:
    if stage == "prune" and _removed_nothing(metrics):
        return "student (float, not pruned)"  # the note below says why
    return _STAGE_TITLES[stage]


def _removed_nothing(metrics: dict) -> bool:
    """A structured prune whose last kept step is the unpruned student."""
    return metrics.get("method") == "structured" and [s for s in metrics["steps"] if s["kept"]][-1]["step"] == 0


def _pruning_note(records: dict) -> str:
    if "prune" not in records:
        return ""
    metrics = records["prune"]["metrics"]
    if metrics.get("method") == "structured":
        steps = metrics["steps"]
        first, kept = steps[0], [s for s in steps if s["kept"]][-1]
        if _removed_nothing(metrics):
            return (f"Structured pruning removed nothing: the student is already estimated at "
                    f"{first['latency_ms']:.2f} ms on {metrics['budget_board']} ({first['macs']:,} MACs, "
                    f"{first['tflite_bytes']:,} B of int8 .tflite)"
                    + ("" if metrics["budget_met"] is None else
                       ", within the budget" if metrics["budget_met"] else
                       ", over the budget, and the first step cost more than prune.max_accuracy_drop")
                    + ", so the stage handed it on unchanged and did not retrain it.")
        return (f"Structured pruning removed whole filters in {kept['step']} step(s): {first['macs']:,} -> "
                f"{kept['macs']:,} MACs, int8 .tflite {first['tflite_bytes']:,} -> {kept['tflite_bytes']:,} B, "
                f"estimated {first['latency_ms']:.2f} -> {kept['latency_ms']:.2f} ms on {metrics['budget_board']}"
                + ("" if metrics["budget_met"] is None else
                   "; budget met" if metrics["budget_met"] else "; budget NOT met (accuracy limit or max_steps)")
                + (f"; then retrained {kept['rewind_epochs']} epochs at the distillation's learning rate (validation "
                   f"{kept['val_accuracy']:.2%} -> {kept['rewound_val_accuracy']:.2%})" if "rewind_epochs" in kept
                   else "")
                + ". The model is dense and smaller: TFLite Micro runs every saved MAC and stores no removed byte.")
    return (f"Pruning zeroed {metrics['sparsity']:.0%} of the conv and dense weights. TFLite Micro stores tensors "
            "dense and has no sparse kernels, so the int8 `.tflite` is as large and as slow as an unpruned one "
            "(no flash or latency change on TFLM); the zeros only pay off with compression.")


def _plot_confusion(confusion, labels, path: Path, name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    counts = np.asarray(confusion, dtype=np.float64)
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    size = max(5.0, 0.5 * len(labels) + 2)
    figure, axes = pyplot.subplots(figsize=(size, size))
    axes.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    for (row, column), count in np.ndenumerate(counts):
        if count:
            axes.text(column, row, f"{int(count)}", ha="center", va="center", fontsize=7,
                      color="white" if rates[row, column] > 0.5 else "black")
    axes.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=8)
    axes.set_yticks(range(len(labels)), labels, fontsize=8)
    axes.set_xlabel("predicted (int8, TFLite Micro)")
    axes.set_ylabel("true class")
    axes.set_title(f"{name}: confusion on the test split")
    figure.tight_layout()
    artifacts.save_figure(figure, path)


def _plot(stages: list[dict], path: Path, name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(7, 4.5))
    sized = [s for s in stages if s["size_bytes"]]
    axes.plot([s["size_bytes"] / 1024 for s in sized], [s["test_accuracy"] * 100 for s in sized], "o-",
              color="tab:blue")
    for stage in sized:
        axes.annotate(stage["title"], (stage["size_bytes"] / 1024, stage["test_accuracy"] * 100),
                      textcoords="offset points", xytext=(6, 6), fontsize=8)
    axes.set_ylim(*accuracy_axis([s["test_accuracy"] * 100 for s in sized]))
    axes.set_xscale("log")
    axes.set_xlabel("model size, KiB (.tflite, log scale)")
    axes.set_ylabel("test accuracy, %")
    axes.set_title(f"{name}: accuracy against size across the build")
    axes.grid(True, which="both", alpha=0.3)
    figure.tight_layout()
    artifacts.save_figure(figure, path)


MIN_ACCURACY_SPAN = 10.0  # points: a 0.4-point drop must look like one, not fill the whole plot


def accuracy_axis(percents: list[float]) -> tuple[float, float]:
    """The y-axis limits for accuracies in percent: every point with a margin, at least MIN_ACCURACY_SPAN points
    tall, within 0..100."""
    low, high = min(percents, default=0.0), max(percents, default=100.0)
    margin = max(1.0, (MIN_ACCURACY_SPAN - (high - low)) / 2)
    low, high = max(0.0, low - margin), min(100.0, high + margin)
    if high - low < MIN_ACCURACY_SPAN:  # pressed against 0 or 100: grow the other way
        low, high = (0.0, max(high, MIN_ACCURACY_SPAN)) if low == 0.0 else (min(low, 100.0 - MIN_ACCURACY_SPAN), 100.0)
    return low, high


def _listening(cfg: config.Config, board: dict) -> dict | None:
    """For an audio model, whether the board runs it once per `stream.stride_ms` (tinykd.audio.stream.listening)."""
    if cfg.frontend is None:
        return None
    from tinykd.audio import stream
    return stream.listening(cfg.stream.stride_ms, tuple(board["latency_range_ms"]), cfg.frontend.window_stride_ms)


def _firmware_line(firmware: dict) -> str:
    """The report's line on the export run on the emulated core (tinykd.firmware.verify_build)."""
    if firmware["status"] != "passed":
        return f"Firmware on an emulated core: not run ({firmware['reason']})."
    features = ("" if firmware["features_differing"] is None
                else f", front-end features differing: {firmware['features_differing']}")
    return (f"Firmware on an emulated {firmware['core']} ({firmware['machine']}, TFLM + CMSIS-NN on QEMU): "
            f"{firmware['vectors_passed']} of {firmware['vectors_total']} golden vectors identical{features}; "
            f"arena {firmware['arena_smallest_bytes']:,} B smallest that allocates, "
            f"{firmware['arena_used_bytes']:,} B used, {firmware['arena_exported_bytes']:,} B exported; "
            f"{firmware['instructions']:,} instructions per inference.")
