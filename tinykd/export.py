"""Write the TFLite Micro C++ sources for a converted model: model data, settings, op resolver and an example.

Every file is rendered from a `string.Template` in tinykd/templates/, and the settings come from the same
.tflite bytes that become the C array, so the C side cannot disagree with the model. Only two templates call
TFLM (example.cc.in and op_resolver.h.in); both name the TFLM version they follow (TFLM_VERSION).

This module is also the public `tinykd.export(model, out_dir, ...)` (`tinykd export`): calling it calls
`export_model`.
"""

import math
import os
import re
import shutil
import sys
import tempfile
import types
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from string import Template

import numpy as np

from tinykd import artifacts, audio, boards, config, firmware, model_file, tflm
from tinykd.artifacts import Run
from tinykd.audio import FrontendConfig
from tinykd.data import Dataset
from tinykd.audio import stream as audio_stream
from tinykd.boards import Board
from tinykd.errors import ExportError, ModelError
from tinykd.report import arena, model_and_source, reports, resolve_board

# Arena margin: the arena from `tinykd report` plus 25%, rounded up to 16 bytes (why: model_settings.h.in).
ARENA_MARGIN_PERCENT = 25
ARENA_ALIGNMENT_BYTES = 16

# The TFLM C++ API the templates follow: checked against the tflite-micro headers of this date, and the same
# revision as the pip interpreter that checks every exported model. Re-read the templates when it changes.
TFLM_VERSION = "tflite-micro main of 2026-10-23 (pip tflite_micro 0.dev20261023182759)"
LAYOUTS = ("plain", "cmake", "arduino")
# Golden vectors per export: enough to catch a wrong model array or kernel, few enough to keep the header small.
GOLDEN_VECTOR_COUNT = 4
# Big enough for any model a Cortex-M can hold; the check only asks whether TFLM can run the model at all.
_CHECK_ARENA_BYTES = 64 * 1024 * 1024

_BYTES_PER_LINE = 12
_IDENTIFIER = re.compile(r"[A-Za-z][A-Za-z0-9_]*", re.ASCII)
_C_TYPES = {"int8": "int8_t"}

# Schema builtin name -> MicroMutableOpResolver method, checked against
# tensorflow/lite/micro/micro_mutable_op_resolver.h (tflite-micro, 2025).
OP_RESOLVER_METHODS = {
    "ABS": "AddAbs", "ADD": "AddAdd", "ADD_N": "AddAddN", "ARG_MAX": "AddArgMax", "ARG_MIN": "AddArgMin",
    "ASSIGN_VARIABLE": "AddAssignVariable", "AVERAGE_POOL_2D": "AddAveragePool2D",
    "BATCH_MATMUL": "AddBatchMatMul", "BATCH_TO_SPACE_ND": "AddBatchToSpaceNd",
    "BROADCAST_ARGS": "AddBroadcastArgs", "BROADCAST_TO": "AddBroadcastTo", "CALL_ONCE": "AddCallOnce",
    "CAST": "AddCast", "CEIL": "AddCeil", "CONCATENATION": "AddConcatenation", "CONV_2D": "AddConv2D",
    "COS": "AddCos", "CUMSUM": "AddCumSum", "DEPTH_TO_SPACE": "AddDepthToSpace",
    "DEPTHWISE_CONV_2D": "AddDepthwiseConv2D", "DEQUANTIZE": "AddDequantize", "DIV": "AddDiv",
    "ELU": "AddElu", "EMBEDDING_LOOKUP": "AddEmbeddingLookup", "EQUAL": "AddEqual", "EXP": "AddExp",
    "EXPAND_DIMS": "AddExpandDims", "FILL": "AddFill", "FLOOR": "AddFloor", "FLOOR_DIV": "AddFloorDiv",
    "FLOOR_MOD": "AddFloorMod", "FULLY_CONNECTED": "AddFullyConnected", "GATHER": "AddGather",
    "GATHER_ND": "AddGatherNd", "GREATER": "AddGreater", "GREATER_EQUAL": "AddGreaterEqual",
    "HARD_SWISH": "AddHardSwish", "IF": "AddIf", "L2_NORMALIZATION": "AddL2Normalization",
    "L2_POOL_2D": "AddL2Pool2D", "LEAKY_RELU": "AddLeakyRelu", "LESS": "AddLess",
    "LESS_EQUAL": "AddLessEqual", "LOG": "AddLog", "LOGICAL_AND": "AddLogicalAnd",
    "LOGICAL_NOT": "AddLogicalNot", "LOGICAL_OR": "AddLogicalOr", "LOGISTIC": "AddLogistic",
    "LOG_SOFTMAX": "AddLogSoftmax", "MAXIMUM": "AddMaximum", "MAX_POOL_2D": "AddMaxPool2D",
    "MEAN": "AddMean", "MINIMUM": "AddMinimum", "MIRROR_PAD": "AddMirrorPad", "MUL": "AddMul",
    "NEG": "AddNeg", "NOT_EQUAL": "AddNotEqual", "PACK": "AddPack", "PAD": "AddPad", "PADV2": "AddPadV2",
    "PRELU": "AddPrelu", "QUANTIZE": "AddQuantize", "READ_VARIABLE": "AddReadVariable",
    "REDUCE_MAX": "AddReduceMax", "REDUCE_MIN": "AddReduceMin", "RELU": "AddRelu", "RELU6": "AddRelu6",
    "RESHAPE": "AddReshape", "RESIZE_BILINEAR": "AddResizeBilinear",
    "RESIZE_NEAREST_NEIGHBOR": "AddResizeNearestNeighbor", "REVERSE_V2": "AddReverseV2",
    "ROUND": "AddRound", "RSQRT": "AddRsqrt", "SELECT_V2": "AddSelectV2", "SHAPE": "AddShape",
    "SIN": "AddSin", "SLICE": "AddSlice", "SOFTMAX": "AddSoftmax", "SPACE_TO_BATCH_ND": "AddSpaceToBatchNd",
    "SPACE_TO_DEPTH": "AddSpaceToDepth", "SPLIT": "AddSplit", "SPLIT_V": "AddSplitV", "SQRT": "AddSqrt",
    "SQUARE": "AddSquare", "SQUARED_DIFFERENCE": "AddSquaredDifference", "SQUEEZE": "AddSqueeze",
    "STRIDED_SLICE": "AddStridedSlice", "SUB": "AddSub", "SUM": "AddSum", "SVDF": "AddSvdf",
    "TANH": "AddTanh", "TRANSPOSE": "AddTranspose", "TRANSPOSE_CONV": "AddTransposeConv",
    "UNIDIRECTIONAL_SEQUENCE_LSTM": "AddUnidirectionalSequenceLSTM", "UNPACK": "AddUnpack",
    "VAR_HANDLE": "AddVarHandle", "WHILE": "AddWhile", "ZEROS_LIKE": "AddZerosLike",
    # TFLM's own custom op: decodes LUT-compressed weights (tinykd.lut); needs TFLM built with compression.
    "TFLM_DECODE": "AddDecode",
}


@dataclass(frozen=True, kw_only=True)
class FirmwareSpec:
    """What the C side needs beyond the model itself.

    `name` prefixes every file and C identifier; `arena_bytes` is the 32-bit arena from `tinykd report`
    (measured in the TFLM interpreter, corrected to 32 bits, plus kernel scratch); the model input as a float is
    `raw * raw_scale + raw_offset`.
    """

    name: str
    labels: tuple[str, ...]
    arena_bytes: int
    decompression_memory_bytes: int = 0  # arena the DECODE ops of a LUT-compressed model use; in arena_bytes
    raw_scale: float = 1.0
    raw_offset: float = 0.0
    raw_description: str = ""


def stage(run: Run, cfg: config.Config, data: Dataset, model, verified,
          tflm_dir: Path | None = None) -> tuple[str, ...]:
    """The export stage: C/C++ files for TFLite Micro firmware of `model` (tinykd.convert.Converted), with the
    arena the verify stage found (`verified`: tinykd.verify.Verified) plus any decompression memory; returns the
    file names. For an audio recipe the exported front-end settings must reproduce every test clip's features;
    with `verify.firmware`, the export's golden vectors run on the emulated core of the recipe's board
    (`tflm_dir`: the TFLM tree; None: tinykd.firmware.SHARED_TFLM)."""
    decompression = model.decompression_memory_bytes
    spec = FirmwareSpec(name=cfg.export_name, labels=data.labels, arena_bytes=verified.arena_bytes + decompression,
                        decompression_memory_bytes=decompression,
                        raw_scale=data.preprocessing.raw_scale, raw_offset=data.preprocessing.raw_offset,
                        raw_description=data.preprocessing.description)

    def compute():
        out_dir = run.dir("export")
        files = export(model.tflite, spec, out_dir, frontend=cfg.frontend, golden_clip=_golden_clip(data),
                       golden_inputs=quantized_inputs(model.tflite, data.test.x), stream=cfg.stream)
        metrics = {"file_count": len(files), "files": [f.name for f in files]}
        if cfg.frontend is not None:
            metrics["frontend_parity"] = _frontend_parity(out_dir / f"{spec.name}_model_settings.h", data)
        core = boards.load_boards()[cfg.target.board].core
        metrics["firmware"] = firmware.verify_build(out_dir, core, cfg.verify.firmware,
                                                    tflm_dir or firmware.SHARED_TFLM)
        return None, metrics

    key = artifacts.key("export", config.plain(spec.__dict__) | {"stream": config.plain(cfg.stream.__dict__)},
                        model.run_id)
    done = run.step("export", key, compute)
    return tuple(done.record["metrics"]["files"])


def _golden_clip(data: Dataset) -> np.ndarray | None:
    """The first test clip of a keyword (not silence or unknown), for the firmware's golden vectors."""
    if data.test_audio is None:
        return None
    keyword = [i for i, label in enumerate(data.labels) if not label.startswith("_")]
    index = next((i for i, y in enumerate(data.test.y) if y in keyword), 0)
    return data.test_audio[index].astype(np.int16)


def _frontend_parity(settings_header: Path, data: Dataset) -> dict:
    """Recompute every test clip's features from the exported settings alone and compare with the training
    features; a setting lost or changed on the way to model_settings.h fails the build."""
    from tinykd.verify import quantize_input

    exported = audio.parse_settings(settings_header.read_text())
    recomputed = audio.to_int8(audio.features(data.test_audio, exported))
    trained = quantize_input(data.test.x, {"scales": [audio.INPUT_SCALE],
                                           "zero_points": [audio.INPUT_ZERO_POINT]})[..., 0]
    identical = int(np.sum(np.all(recomputed == trained, axis=(1, 2))))
    if identical != len(trained):
        raise ExportError(f"{settings_header}: the exported front-end settings give different features from the "
                          f"training features on {len(trained) - identical} of {len(trained)} test clips")
    return {"test_clips": len(trained), "identical_clips": identical}


def export(tflite: bytes, spec: FirmwareSpec, out_dir: Path, layout: str = "plain", *,
           frontend: FrontendConfig | None = None, golden_clip: np.ndarray | None = None,
           golden_inputs: np.ndarray | None = None,
           stream: audio_stream.StreamConfig | None = None) -> tuple[Path, ...]:
    """Write the firmware files for `tflite` into out_dir, laid out as `layout` (one of LAYOUTS).

    `plain` writes `<name>_model_data.h/.cc`, `<name>_model_settings.h`, `<name>_op_resolver.h` and
    `<name>_example.h/.cc` flat, then `<name>_golden_vectors.h` if `golden_clip` is given; `cmake` adds a
    CMakeLists.txt building them as the library `<name>_model` (linking a `tflite-micro` target); `arduino`
    writes an Arduino library: library.properties, the files in src/ and a sketch in examples/<name>_inference/.

    The model is parsed, run in the pip TFLM interpreter and rendered before anything is written, so every
    check that fails leaves out_dir as it was (or absent). A new out_dir appears in one rename; in an existing
    one tinykd's files are replaced one by one and other files are kept.

    With `frontend` (an audio model), `<name>_model_settings.h` also carries the front-end settings and the
    uint16 -> int8 formula (tinykd.audio.settings_defines); with `golden_clip` too (int16 samples of one clip),
    `<name>_golden_vectors.h` holds the clip, its int8 features and the model output TFLM gives for them.
    With `golden_inputs` (int8, one model input per row: `seeded_inputs` or `quantized_inputs`) or a golden
    clip, `<name>_golden_vectors.h` also holds `<name>_golden_inputs` (the clip's features first) and the exact
    int8 outputs the pip TFLM interpreter gives for them (`<name>_golden_outputs`), for any model.
    An audio model also gets its listening loop: the `stream` settings (the defaults when None) in
    `<name>_model_settings.h`, `<name>_recognizer.h` and `<name>_listen.h` (tinykd.audio.stream).

    Returns:
        The written paths: the source files in the order above, then the layout's own files.

    Raises:
        ExportError: bad name, labels, arena or layout; a model that is not full-int8, that TFLM cannot run
            (names the op and what TFLM said) or whose ops TFLM cannot register; a model input that does not
            hold the front-end's features, or a golden clip without a front-end; or out_dir cannot be written.
    """
    _check_spec(spec)
    if layout not in LAYOUTS:
        raise ExportError(f"unknown layout {layout!r}; use one of {', '.join(LAYOUTS)}")
    source = f"{spec.name} model"
    try:
        model = model_file.read(tflite, source=source)
    except ModelError as error:
        raise ExportError(f"cannot export {spec.name}: {error}") from error
    _check_runs_in_tflm(tflite, source)
    names = _names(spec)
    sources = {
        f"{spec.name}_model_data.h": _render("model_data.h.in", names),
        f"{spec.name}_model_data.cc": _render("model_data.cc.in", _model_data_fields(tflite, spec)),
        f"{spec.name}_model_settings.h": _render("model_settings.h.in", _settings_fields(model, spec)),
        f"{spec.name}_op_resolver.h": _render("op_resolver.h.in", _resolver_fields(model, spec)),
        f"{spec.name}_example.h": _render("example.h.in", names),
        f"{spec.name}_example.cc": _render("example.cc.in", names),
    }
    if frontend is not None or golden_clip is not None:
        sources |= _frontend_sources(tflite, model, spec, sources, frontend, golden_clip)
        sources |= _stream_sources(model, spec, sources, stream or audio_stream.StreamConfig())
    vectors = _golden_input_rows(model, spec, sources, golden_inputs)
    if len(vectors):
        sources |= _golden_model_sources(tflite, model, spec, sources, vectors)
    return _write_atomically(_lay_out(sources, spec, layout), Path(out_dir))


def export_model(model: bytes | str | Path, out_dir: str | Path, *, name: str | None = None,
                 labels: str | Path | list[str] | tuple[str, ...] | None = None, layout: str = "plain",
                 board: str | Board | None = None) -> list[Path]:
    """`tinykd.export` (`tinykd export`): TFLite Micro C++ files for any int8 .tflite, with golden vectors.

    Args:
        model: a .tflite file's path, or its bytes.
        out_dir: folder for the files; created if missing; files of other names in it are kept.
        name: prefix of every file and C identifier; default: the model file name as a C identifier ("model"
            for bytes).
        labels: the class names in output order, or a UTF-8 file of them, one per line; default class0 ...
        layout: "plain", "cmake" or "arduino" (see `export`).
        board: size the arena for this board (id or Board); default: the largest over every board.

    Returns:
        The written paths, as `export` returns them.

    Raises:
        ModelError, ExportError, ConfigError: as `tinykd export` reports them.
    """
    tflite, source = model_and_source(model)
    if name is None:
        name = c_identifier(Path(model).stem) if isinstance(model, (str, Path)) else "model"
    if isinstance(labels, (str, Path)):
        labels = read_labels(Path(labels))
    spec, _ = firmware_spec(tflite, source, name=name, labels=labels, board=board)
    # A model tinykd did not build comes without data: its golden vectors use seeded inputs.
    return list(export(tflite, spec, Path(out_dir), layout, golden_inputs=seeded_inputs(tflite)))


def firmware_spec(tflite: bytes, source: str, *, name: str, labels: tuple[str, ...] | list[str] | None,
                  board: str | Board | None) -> tuple[FirmwareSpec, str]:
    """The FirmwareSpec `tinykd export` writes for any .tflite, and the board whose arena sized it.

    The arena is `tinykd report`'s 32-bit figure for `board`, or the largest over every board (they differ
    only by CMSIS-NN scratch).
    """
    labels = tuple(labels) if labels is not None else default_labels(tflite, source)
    chosen = [resolve_board(board, "board")] if board is not None else list(boards.load_boards().values())
    sized = max(reports(tflite, chosen, source=source), key=lambda result: result.arena_bytes)
    return FirmwareSpec(name=name, labels=labels, arena_bytes=sized.arena_bytes), sized.board


def _frontend_sources(tflite: bytes, model: model_file.ModelInfo, spec: FirmwareSpec, sources: dict[str, str],
                      frontend: FrontendConfig | None, golden_clip: np.ndarray | None) -> dict[str, str]:
    """The settings header with the front-end block added, and the golden vectors header if there is a clip."""
    if frontend is None:
        raise ExportError(f"{spec.name}: a golden clip needs the front-end settings that turn it into features; "
                          "pass frontend= too")
    feature_elements = frontend.frames * frontend.num_channels
    if math.prod(model.inputs[0].shape) != feature_elements:
        raise ExportError(f"{spec.name}: the model input {tuple(model.inputs[0].shape)} does not hold the "
                          f"front-end's {frontend.frames} frames x {frontend.num_channels} channels; build the "
                          f"model for input {(*frontend.feature_shape, 1)}")
    settings_name = f"{spec.name}_model_settings.h"
    # The block goes inside the include guard, after everything the template wrote.
    guard_end = f"#endif  // {spec.name.upper()}_MODEL_SETTINGS_H_\n"
    settings = sources[settings_name].replace(guard_end, audio.settings_defines(frontend, spec.name) + "\n"
                                              + guard_end)
    added = {settings_name: settings}
    if golden_clip is not None:
        golden = audio.golden_vectors(golden_clip, frontend, tflite)
        added[f"{spec.name}_golden_vectors.h"] = audio.golden_header(golden, spec.name)
    return added


def seeded_inputs(tflite: bytes, count: int = GOLDEN_VECTOR_COUNT, seed: int = 0) -> np.ndarray:
    """`count` int8 model inputs drawn uniformly from [-128, 127] with `seed`: golden vectors for a model
    without data at hand (same seed, same inputs).

    Raises:
        ExportError: the bytes are not a TFLite model, or its input is not int8.
    """
    shape = _input_tensor(tflite).shape
    return np.random.default_rng(seed).integers(-128, 128, size=(count, *shape), dtype=np.int8)


def quantized_inputs(tflite: bytes, x: np.ndarray, count: int = GOLDEN_VECTOR_COUNT) -> np.ndarray:
    """The first `count` float model inputs of `x` (e.g. the test split) as the model's int8 input:
    q = clamp(round(x / scale) + zero_point, -128, 127).

    Raises:
        ExportError: the bytes are not a TFLite model, or its input is not int8.
    """
    tensor = _input_tensor(tflite)
    return np.clip(np.round(np.asarray(x[:count], dtype=np.float64) / tensor.scale) + tensor.zero_point,
                   -128, 127).astype(np.int8)


def _input_tensor(tflite: bytes) -> model_file.TensorInfo:
    try:
        inputs = model_file.read(tflite).inputs
    except ModelError as error:
        raise ExportError(f"golden vectors: {error}") from error
    if not inputs or inputs[0].dtype != "int8" or inputs[0].scale is None:
        raise ExportError("golden vectors: the model input is not quantized int8; convert with full-integer "
                          "quantization (int8 input and output)")
    return inputs[0]


def _golden_input_rows(model: model_file.ModelInfo, spec: FirmwareSpec, sources: dict[str, str],
                       golden_inputs: np.ndarray | None) -> np.ndarray:
    """Every golden input as one flat int8 row: the golden clip's features first (if any), then golden_inputs."""
    elements = math.prod(model.inputs[0].shape)
    rows = []
    golden_name = f"{spec.name}_golden_vectors.h"
    if golden_name in sources:
        rows.append(_c_array_values(sources[golden_name], f"{spec.name}_golden_features"))
    if golden_inputs is not None:
        given = np.asarray(golden_inputs)
        if given.dtype != np.int8 or given.size % elements or given.size == 0:
            raise ExportError(f"{spec.name}: golden inputs must be int8 model inputs of {elements} values each, "
                              f"got {given.dtype} of shape {given.shape}; make them with seeded_inputs() or "
                              "quantized_inputs()")
        rows.extend(given.reshape(-1, elements))
    return np.array(rows, dtype=np.int8).reshape(len(rows), elements)


def _golden_model_sources(tflite: bytes, model: model_file.ModelInfo, spec: FirmwareSpec,
                          sources: dict[str, str], vectors: np.ndarray) -> dict[str, str]:
    """The golden vectors header with the model block: `vectors` and the outputs the pip TFLM gives for them."""
    shape = tuple(model.inputs[0].shape)
    try:
        outputs = tflm.outputs(tflite, vectors.reshape(len(vectors), *shape[1:]), _CHECK_ARENA_BYTES)[0]
    except ModelError as error:
        raise ExportError(f"{spec.name}: golden vectors: {error}") from None
    golden_name = f"{spec.name}_golden_vectors.h"
    audio_clip = golden_name in sources
    fields = {**_names(spec), "vector_count": str(len(vectors)), "output_elements": str(outputs[0].size),
              "source": "the first is the golden clip's features" if audio_clip else "inputs given to the export",
              "inputs": _c_rows(vectors), "outputs": _c_rows(np.array(outputs))}
    block = _render("golden_block.h.in", fields)
    if audio_clip:
        guard_end = f"#endif  // {spec.name.upper()}_GOLDEN_VECTORS_H_\n"
        return {golden_name: sources[golden_name].replace(guard_end, block + "\n" + guard_end)}
    return {golden_name: _render("model_golden_vectors.h.in", {**_names(spec), "block": block})}


def _c_rows(values: np.ndarray) -> str:
    rows = []
    for row in values:
        flat = [str(int(value)) for value in row.reshape(-1)]
        lines = [", ".join(flat[start:start + 16]) for start in range(0, len(flat), 16)]
        rows.append("  {\n    " + ",\n    ".join(lines) + "\n  },")
    return "\n".join(rows)


def _c_array_values(text: str, array_name: str) -> np.ndarray:
    """The values of the C array `array_name` in generated text (tinykd's own output, so one known layout)."""
    body = text.split(f"const int8_t {array_name}[", 1)[1].split("= {", 1)[1].split("};", 1)[0]
    return np.array([int(value) for value in body.replace("\n", " ").split(",") if value.strip()], dtype=np.int8)


def _stream_sources(model: model_file.ModelInfo, spec: FirmwareSpec, sources: dict[str, str],
                    stream: audio_stream.StreamConfig) -> dict[str, str]:
    """The settings header with the stream block added, the recognizer and the listening loop."""
    settings_name = f"{spec.name}_model_settings.h"
    guard_end = f"#endif  // {spec.name.upper()}_MODEL_SETTINGS_H_\n"
    output = model.outputs[0]
    block = audio_stream.stream_defines(stream, spec.name, spec.labels, output.scale, output.zero_point)
    return {settings_name: sources[settings_name].replace(guard_end, block + "\n" + guard_end),
            f"{spec.name}_recognizer.h": audio_stream.recognizer_header(spec.name),
            f"{spec.name}_listen.h": _render("listen.h.in", _names(spec))}


def _check_runs_in_tflm(tflite: bytes, source: str) -> None:
    """Raise ExportError, with TFLM's own words (naming the op), unless the pip TFLM interpreter allocates and
    invokes the model (in a child process: a bad model can crash TFLM)."""
    try:
        with arena.Worker() as worker:
            if worker.check(tflite, _CHECK_ARENA_BYTES, source):
                return
            worker.measure(tflite, source)  # fails again, and raises with TFLM's own words
    except ModelError as error:
        raise ExportError(f"cannot export: {error}") from error
    raise ExportError(f"cannot export: {source}: TFLite Micro did not allocate and run it in a "
                      f"{_CHECK_ARENA_BYTES:,}-byte arena")


def c_identifier(text: str) -> str:
    """`text` (e.g. a model file stem) as a firmware name: every run of characters other than ASCII letters
    and digits becomes one underscore, and a name that does not start with a letter gets `model_` in front."""
    name = re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")
    return name if _IDENTIFIER.fullmatch(name) else f"model_{name}".rstrip("_")


def read_labels(path: Path) -> tuple[str, ...]:
    """The labels in a UTF-8 text file, one per line in output order.

    A final line break ends the last label rather than starting an empty one; a line's trailing carriage
    return (Windows line ends) and a leading byte-order mark are not part of any label.

    Raises:
        ExportError: the file cannot be read or is not UTF-8.
    """
    try:
        text = Path(path).read_bytes().decode("utf-8-sig")
    except OSError as error:
        raise ExportError(f"{path}: cannot read the labels file ({error.strerror})") from None
    except UnicodeDecodeError as error:
        raise ExportError(f"{path}: the labels file is not UTF-8 (byte {error.start} is "
                          f"{error.object[error.start]:#04x}); save it as UTF-8 text, one label per line") from None
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return tuple(line.removesuffix("\r") for line in lines)


def default_labels(tflite: bytes, source: str = "model") -> tuple[str, ...]:
    """`class0` ... `classN-1` for the N scores in the last dimension of the model's first output.

    Raises:
        ModelError: the bytes are not a TFLite model.
    """
    outputs = model_file.read(tflite, source).outputs
    shape = outputs[0].shape if outputs else ()
    return tuple(f"class{index}" for index in range(shape[-1] if shape else 1))


def arena_with_margin(arena_bytes: int) -> int:
    """The arena to reserve on the board: measured bytes plus ARENA_MARGIN_PERCENT, rounded up to 16 bytes."""
    padded = -(-arena_bytes * (100 + ARENA_MARGIN_PERCENT) // 100)
    return -(-padded // ARENA_ALIGNMENT_BYTES) * ARENA_ALIGNMENT_BYTES


def c_string(text: str) -> str:
    """A C/C++ string literal that reads back as the UTF-8 bytes of `text`.

    Bytes outside printable ASCII become three-digit octal escapes, which can never absorb the next
    character (hex escapes can); `?` is escaped so `??=` and friends are never trigraphs.
    """
    return '"' + "".join(_escape_byte(byte) for byte in text.encode("utf-8")) + '"'


def _escape_byte(byte: int) -> str:
    character = chr(byte)
    if character in '"\\?':
        return "\\" + character
    if 0x20 <= byte <= 0x7E:
        return character
    return f"\\{byte:03o}"


def _check_spec(spec: FirmwareSpec) -> None:
    if not _IDENTIFIER.fullmatch(spec.name):
        raise ExportError(f"firmware name {spec.name!r} is not a valid C identifier prefix; use ASCII letters, "
                          "digits and underscores, starting with a letter (e.g. 'fashion_mnist')")
    if isinstance(spec.arena_bytes, bool) or not isinstance(spec.arena_bytes, int) or spec.arena_bytes <= 0:
        raise ExportError(f"{spec.name}: arena_bytes must be a positive int measured in the TFLM interpreter, "
                          f"got {spec.arena_bytes!r}")
    for key in ("raw_scale", "raw_offset"):
        if not math.isfinite(getattr(spec, key)):
            raise ExportError(f"{spec.name}: {key} must be a finite number, got {getattr(spec, key)!r}")


def _names(spec: FirmwareSpec) -> dict[str, str]:
    return {"name": spec.name, "NAME": spec.name.upper(), "tflm_version": TFLM_VERSION}


def _model_data_fields(tflite: bytes, spec: FirmwareSpec) -> dict[str, str]:
    hex_bytes = [f"0x{byte:02x}" for byte in tflite]
    lines = ("  " + ", ".join(hex_bytes[start:start + _BYTES_PER_LINE]) + ","
             for start in range(0, len(hex_bytes), _BYTES_PER_LINE))
    return {**_names(spec), "data_lines": "\n".join(lines), "data_len": str(len(tflite))}


def _settings_fields(model: model_file.ModelInfo, spec: FirmwareSpec) -> dict[str, str]:
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ExportError(f"{spec.name}: the model has {len(model.inputs)} inputs and {len(model.outputs)} "
                          "outputs; export supports classifiers with exactly one of each")
    tensors = {"input": model.inputs[0], "output": model.outputs[0]}
    for role, tensor in tensors.items():
        if tensor.dtype not in _C_TYPES or tensor.scale is None:
            raise ExportError(f"{spec.name}: model {role} {tensor.name!r} is {tensor.dtype}, expected quantized "
                              "int8; convert with full-integer quantization (int8 input and output)")
    class_count = model.outputs[0].shape[-1] if model.outputs[0].shape else 1
    if len(spec.labels) != class_count:
        raise ExportError(f"{spec.name}: {len(spec.labels)} labels given but the model output "
                          f"{model.outputs[0].name!r} has {class_count} classes; give one label per class")
    fields = {
        **_names(spec),
        "input_elements": str(math.prod(model.inputs[0].shape)),
        "class_count": str(class_count),
        "labels": ",\n".join("    " + c_string(label) for label in spec.labels),
        "arena_bytes": str(spec.arena_bytes),
        "arena_with_margin": str(arena_with_margin(spec.arena_bytes)),
        "margin_percent": str(ARENA_MARGIN_PERCENT),
        "arena_alignment": str(ARENA_ALIGNMENT_BYTES),
        "raw_scale": _c_float(spec.raw_scale),
        "raw_offset": _c_float(spec.raw_offset),
        "raw_description": c_string(spec.raw_description),
        "decompression_memory_bytes": str(spec.decompression_memory_bytes),
        "compression_note": _compression_note(model, spec),
    }
    for role, tensor in tensors.items():
        fields |= {
            f"{role}_dtype": tensor.dtype,
            f"{role}_ctype": _C_TYPES[tensor.dtype],
            f"{role}_shape_text": "x".join(str(dim) for dim in tensor.shape),
            f"{role}_rank": str(len(tensor.shape)),
            f"{role}_dims": ", ".join(str(dim) for dim in tensor.shape),
            f"{role}_scale": _c_float(tensor.scale),
            f"{role}_zero_point": str(tensor.zero_point),
        }
    return fields


def _compression_note(model: model_file.ModelInfo, spec: FirmwareSpec) -> str:
    """The model_settings.h comment on weight compression, as C++ comment lines."""
    if "TFLM_DECODE" not in model.op_names:
        return "// None: every weight is stored dense, one byte per int8 value."
    return "\n".join("// " + line for line in (
        "TFLite Micro LUT compression: some weight tensors are stored as bit-packed indices into small value",
        "tables, and the TFLM_DECODE operator (AddDecode() in " + spec.name + "_op_resolver.h) rebuilds them.",
        "TFLite Micro must be built with compression enabled (make ... USE_TFLM_COMPRESSION=1, which defines",
        "USE_TFLM_COMPRESSION); without it the model does not run. While an operator runs, its decoded weights",
        "take DECOMPRESSION_MEMORY_BYTES of the arena, measured in the TFLM interpreter; ARENA_BYTES includes them."))


def _c_float(value: float) -> str:
    # repr is the shortest text that reads back as the same double, so a float32 value survives the `f` suffix.
    return repr(float(value)) + "f"


def _resolver_fields(model: model_file.ModelInfo, spec: FirmwareSpec) -> dict[str, str]:
    unsupported = [name for name in model.op_names if name not in OP_RESOLVER_METHODS]
    if unsupported:
        raise ExportError(f"{spec.name}: TFLM's MicroMutableOpResolver has no registration for op(s) "
                          f"{', '.join(unsupported)}; replace them in the model or register a custom kernel by hand")
    return {
        **_names(spec),
        "op_names": ", ".join(model.op_names),
        "op_count": str(len(model.op_names)),
        "add_calls": ",\n".join(f"      resolver.{OP_RESOLVER_METHODS[name]}()" for name in model.op_names),
    }


def _render(template_name: str, fields: dict[str, str]) -> str:
    template = (resources.files("tinykd") / "templates" / template_name).read_text(encoding="utf-8")
    return Template(template).substitute(fields)


def _lay_out(sources: dict[str, str], spec: FirmwareSpec, layout: str) -> dict[str, str]:
    """Relative path -> text for `layout`."""
    if layout == "plain":
        return sources
    if layout == "cmake":
        return sources | {"CMakeLists.txt": _render("CMakeLists.txt.in", _names(spec))}
    sketch = f"{spec.name}_inference"
    return {
        **{f"src/{file_name}": text for file_name, text in sources.items()},
        "library.properties": _render("library.properties.in", _names(spec) | {"library_name": f"{spec.name}_model"}),
        f"examples/{sketch}/{sketch}.ino": _render("example.ino.in", _names(spec)),
    }


def _write_atomically(rendered: dict[str, str], out_dir: Path) -> tuple[Path, ...]:
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        # A sibling temp dir is on the same filesystem, so os.replace and os.rename are atomic.
        staging_root = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    except OSError as error:
        raise ExportError(f"cannot write firmware files next to {out_dir}: {error}") from error
    # mkdtemp's folder is private (0700); the one inside it gets the user's usual permissions.
    staging = staging_root / out_dir.name
    try:
        for relative, text in rendered.items():
            (staging / relative).parent.mkdir(parents=True, exist_ok=True)
            (staging / relative).write_text(text, encoding="utf-8", newline="\n")
        if not out_dir.exists():
            os.rename(staging, out_dir)
        else:
            for relative in rendered:
                (out_dir / relative).parent.mkdir(parents=True, exist_ok=True)
                os.replace(staging / relative, out_dir / relative)
        return tuple(out_dir / relative for relative in rendered)
    except OSError as error:
        raise ExportError(f"cannot write firmware files to {out_dir}: {error}") from error
    finally:
        shutil.rmtree(staging_root, ignore_errors=True)


class _CallableModule(types.ModuleType):
    # `tinykd.export` is this module (the stage's home) and the public verb at once: a plain function of that
    # name in tinykd/__init__.py would be replaced by the module the first time anything imports it.
    def __call__(self, model: bytes | str | Path, out_dir: str | Path, *, name: str | None = None,
                 labels: str | Path | list[str] | tuple[str, ...] | None = None, layout: str = "plain",
                 board: str | Board | None = None) -> list[Path]:
        return export_model(model, out_dir, name=name, labels=labels, layout=layout, board=board)

    __call__.__doc__ = export_model.__doc__


sys.modules[__name__].__class__ = _CallableModule
