"""The compress stage: TFLite Micro's LUT compression of the verified model (the method is tinykd.lut).

Its TFLM outputs must equal the verified model's on the test split: TFLite's interpreter cannot run TFLM's DECODE
op, so TFLM against itself is the check.
"""

from __future__ import annotations

from dataclasses import replace

from tinykd import artifacts, config, model_file
from tinykd.artifacts import Run
from tinykd.convert import Converted
from tinykd.data import Dataset
from tinykd.measure import board_figures


def stage(run: Run, cfg: config.Config, data: Dataset, model: Converted) -> Converted:
    """The LUT-compressed model, with the decompression memory TFLM needs for it."""
    from tinykd.lut import compress
    from tinykd.verify import quantize_input

    def compute():
        given = model_file.read(model.tflite, "convert/model.tflite").inputs[0]
        test = data.test.head(cfg.verify.max_samples)
        run.log(f"[compress] LUT compression, checked on {len(test)} test samples in TFLite Micro")
        result = compress(model.tflite, bits=cfg.compress.bits, check_inputs=quantize_input(
            test.x, {"scales": [given.scale], "zero_points": [given.zero_point]}))
        return result.tflite, {
            "tflite_bytes_before": len(model.tflite), "tflite_bytes": len(result.tflite),
            "saved_fraction": round(1.0 - len(result.tflite) / len(model.tflite), 4),
            "decompression_memory_bytes": result.decompression_memory_bytes,
            "identical_outputs": result.identical_outputs, "checked_samples": result.checked_samples,
            "compressed_tensors": sum(1 for t in result.tensors if t.bits is not None),
            "tensors": [config.plain(t.__dict__) for t in result.tensors],
            "board": board_figures(result.tflite, cfg.target.board)}

    key = artifacts.key("compress", config.as_dict(cfg.compress), cfg.verify.max_samples, cfg.target.board,
                        model.run_id, data.fingerprint)
    done = run.step("compress", key, compute,
                    save=lambda folder, tflite: artifacts.write_bytes(folder / "model.tflite", tflite),
                    load=lambda folder: (folder / "model.tflite").read_bytes(), artifact="model.tflite")
    return replace(model, tflite=done.value, run_id=done.run_id,
                   decompression_memory_bytes=done.record["metrics"]["decompression_memory_bytes"])
