"""The child process of a batch run (python -m tinykd.tflm._batch FOLDER ARENA_BYTES): TFLM's outputs for every
input in FOLDER/inputs.npy, into FOLDER/outputs.npz. Only tflite_micro, numpy and tinykd.model_file are imported."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np


def main(folder: Path, arena_bytes: int) -> None:
    """The child's side: TFLM's outputs for every input in folder/inputs.npy, into folder/outputs.npz."""
    from tflite_micro.python.tflite_micro import runtime

    from tinykd import model_file

    tflite = (folder / "model.tflite").read_bytes()
    try:
        micro = runtime.Interpreter.from_bytes(tflite, arena_size=arena_bytes)
    except RuntimeError as error:
        sys.exit(str(error).strip().replace("\n", " "))
    shape = tuple(int(dim) for dim in micro.get_input_details(0)["shape"])
    count = len(model_file.read(tflite).outputs)
    rows: list[list[np.ndarray]] = [[] for _ in range(count)]
    for sample in np.load(folder / "inputs.npy"):
        micro.set_input(sample.reshape(shape), 0)
        micro.invoke()
        for index in range(count):
            rows[index].append(micro.get_output(index).reshape(-1).copy())
    np.savez(folder / "outputs.npz", **{f"output{index}": np.array(row) for index, row in enumerate(rows)})


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]))
