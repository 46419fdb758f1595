"""The one adapter that runs models in the TFLite Micro interpreter (the pip `tflite_micro` runtime).

The interpreter always runs in a child process with a time limit, because it can crash or hang on a bad model;
callers get numpy arrays and plain data, never interpreter objects. Two children:

- a batch run (`start`, `outputs`; child tinykd.tflm._batch): every input through one interpreter, so checking
  10,000 test images costs one process start;
- a `Worker` (child tinykd.tflm._worker) that stays up across models and finds the smallest arena in which each
  allocates and runs (what `tinykd report`, export and LUT compression measure), or checks one arena size.

Nothing here imports TensorFlow, so `tinykd report` stays light.
"""

from __future__ import annotations

import json
import os
import select
import signal
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from tinykd.errors import ModelError

_LENGTH = struct.Struct("<I")
TIME_LIMIT_S = 20.0  # per Worker request

# Loading a model and starting Python take a few seconds; each input then takes well under 10 ms on the models
# tinykd builds, so 50 ms each only stops a child that hangs.
_START_LIMIT_S = 60.0
_PER_INPUT_LIMIT_S = 0.05


class Invocation:
    """TFLM running a batch of inputs through a model in a child process; `outputs()` waits for the result."""

    def __init__(self, tflite: bytes, inputs: np.ndarray, arena_bytes: int, time_limit_s: float | None = None):
        self._folder = tempfile.TemporaryDirectory(prefix="tinykd-tflm-")
        folder = Path(self._folder.name)
        (folder / "model.tflite").write_bytes(bytes(tflite))
        np.save(folder / "inputs.npy", np.asarray(inputs))
        self.time_limit_s = time_limit_s or _START_LIMIT_S + _PER_INPUT_LIMIT_S * len(inputs)
        self._process = subprocess.Popen([sys.executable, "-m", "tinykd.tflm._batch", str(folder), str(arena_bytes)],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def outputs(self) -> list[np.ndarray]:
        """Each model output, flattened per input: a list of (inputs, output size) arrays.

        Raises:
            ModelError: TFLM could not load, allocate or run the model, crashed, or did not finish in time.
        """
        try:
            try:
                _, log = self._process.communicate(timeout=self.time_limit_s)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.communicate()
                raise ModelError(f"TFLite Micro did not finish within {self.time_limit_s:g} s; the model is corrupt "
                                 "or too large to check this way") from None
            if self._process.returncode != 0:
                raise ModelError(f"TFLite Micro cannot run the model: {_batch_reason(self._process.returncode, log)}")
            with np.load(Path(self._folder.name) / "outputs.npz") as saved:
                return [saved[f"output{index}"] for index in range(len(saved.files))]
        finally:
            self._folder.cleanup()

    def cancel(self) -> None:
        """Stop the child and remove its files (the caller failed and will not collect the outputs)."""
        if self._process.poll() is None:
            self._process.kill()
        self._process.communicate()
        self._folder.cleanup()


def start(tflite: bytes, inputs: np.ndarray, arena_bytes: int, time_limit_s: float | None = None) -> Invocation:
    """Start running every input (in the model's input type, one per leading index) through TFLM in a child
    process with an arena of `arena_bytes`; the caller may work meanwhile and collect with `outputs()`."""
    return Invocation(tflite, inputs, arena_bytes, time_limit_s)


def outputs(tflite: bytes, inputs: np.ndarray, arena_bytes: int,
            time_limit_s: float | None = None) -> list[np.ndarray]:
    """Each model output of TFLM, flattened per input (see `Invocation.outputs`)."""
    return start(tflite, inputs, arena_bytes, time_limit_s).outputs()


def _batch_reason(code: int, log: bytes) -> str:
    text = log.decode(errors="replace").strip()
    if code < 0:
        return f"it crashed (killed by {signal.Signals(-code).name})"
    return text.splitlines()[-1] if text else f"exit code {code}"


class Worker:
    """A long-lived child process (tinykd.tflm._worker) that loads models in TFLM and searches for their arena,
    forking per attempt; restarted after a crash or a hang. Each request has `time_limit_s`."""

    def __init__(self, time_limit_s: float = TIME_LIMIT_S):
        self.time_limit_s = time_limit_s
        self._process: subprocess.Popen | None = None

    def __enter__(self) -> "Worker":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._process is not None:
            self._process.stdin.close()
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process.stdout.close()
            self._process = None

    def smallest_arena(self, tflite: bytes, source: str = "model") -> tuple[int, dict]:
        """The smallest arena (bytes, 16-byte steps) in which TFLM allocates and invokes the model, and the
        recording allocator's breakdown at that size: {"total", "head", "tail", "records": name -> {"bytes",
        "count"}}.

        Raises:
            ModelError: TFLM refused, crashed on or timed out on the model; the message names what TFLM said.
        """
        reply = self._ask({"mode": "measure"}, tflite, source)
        if reply.get("crashed"):
            raise ModelError(f"{source}: TFLite Micro crashed on the model ({reply['crashed']}); the file is "
                             "corrupt or uses something TFLM cannot run")
        if not reply["ok"]:
            raise ModelError(f"{source}: TFLite Micro cannot run the model: {_reason(reply['log'])}")
        return reply["arena_bytes"], reply["allocations"]

    def check(self, tflite: bytes, arena_bytes: int = 1 << 20, source: str = "model") -> bool:
        """Whether TFLM allocates and invokes the model in `arena_bytes` (one attempt, no search).

        Raises:
            ModelError: TFLM crashed or did not finish within the time limit.
        """
        reply = self._ask({"mode": "check", "arena_bytes": arena_bytes}, tflite, source)
        if reply.get("crashed"):
            raise ModelError(f"{source}: TFLite Micro crashed on the model ({reply['crashed']}); the file is "
                             "corrupt or uses something TFLM cannot run")
        return bool(reply["ok"])

    def _ask(self, header: dict, tflite: bytes, source: str) -> dict:
        process = self._start()
        encoded = json.dumps(header).encode()
        try:
            process.stdin.write(_LENGTH.pack(len(encoded)) + encoded + _LENGTH.pack(len(tflite)) + bytes(tflite))
            process.stdin.flush()
            payload = self._read_reply(process)
        except (BrokenPipeError, EOFError):
            self._reap()
            raise ModelError(f"{source}: TFLite Micro crashed on the model ({_exit_reason(process)}); the file is "
                             "corrupt or uses something TFLM cannot run") from None
        except TimeoutError:
            self._reap()
            raise ModelError(f"{source}: TFLite Micro did not finish loading the model within "
                             f"{self.time_limit_s:g} s; the file is corrupt or the model is too large") from None
        return json.loads(payload)

    def _start(self) -> subprocess.Popen:
        if self._process is None or self._process.poll() is not None:
            self._process = subprocess.Popen([sys.executable, "-m", "tinykd.tflm._worker"], stdin=subprocess.PIPE,
                                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        return self._process

    def _read_reply(self, process: subprocess.Popen) -> bytes:
        deadline = time.monotonic() + self.time_limit_s
        prefix = _read_exactly(process.stdout, _LENGTH.size, deadline)
        return _read_exactly(process.stdout, _LENGTH.unpack(prefix)[0], deadline)

    def _reap(self) -> None:
        process, self._process = self._process, None
        if process.poll() is None:
            process.kill()
        process.wait()
        process.stdin.close()
        process.stdout.close()


def _read_exactly(stream, size: int, deadline: float) -> bytes:
    chunks, missing = [], size
    descriptor = stream.fileno()
    while missing:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([descriptor], [], [], remaining)[0]:
            raise TimeoutError
        chunk = os.read(descriptor, missing)
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        missing -= len(chunk)
    return b"".join(chunks)


def _reason(log: str) -> str:
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith("[RecordingMicroAllocator]")]
    return "; ".join(useful[-3:]) or "allocation failed"


def _exit_reason(process: subprocess.Popen) -> str:
    try:
        code = process.wait(timeout=2)
    except subprocess.TimeoutExpired:
        return "no reply"
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"
