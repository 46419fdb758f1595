"""The child of tinykd.tflm.Worker (python -m tinykd.tflm._worker): loads models in the pip TFLM interpreter.

A corrupted model can crash or hang TFLM's C++ code, so it never runs in the caller's process. Protocol on
stdin/stdout: each request is a 4-byte little-endian length and a JSON header, then a length and the model bytes;
each reply is a length and a JSON object. Everything TFLM logs (fd 1 and 2) goes to a scratch file that is read
back to name the failing operator and to parse the recording allocator's breakdown.
"""

from __future__ import annotations

import json
import os
import re
import signal
import struct
import sys
import tempfile

_LENGTH = struct.Struct("<I")
_SEARCH_LIMIT_BYTES = 64 * 1024 * 1024
_ALIGNMENT = 16
_ATTEMPT_LIMIT_S = 10
_RECORD = re.compile(r"'(?P<name>[^']+)' used (?P<used>\d+) bytes with alignment overhead "
                     r"\(requested (?P<requested>\d+) bytes for (?P<count>\d+)")
_TOTALS = re.compile(r"Arena allocation (?P<part>total|head|tail) (?P<bytes>\d+) bytes")


def main() -> None:
    channel_in = os.fdopen(os.dup(0), "rb")
    channel_out = os.fdopen(os.dup(1), "wb")
    log = tempfile.TemporaryFile()
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    from tflite_micro.python.tflite_micro import runtime

    while True:
        header = _read_frame(channel_in)
        if header is None:
            return
        request = json.loads(header)
        tflite = _read_frame(channel_in)
        reply = _handle(runtime, request, tflite, log)
        payload = json.dumps(reply).encode()
        channel_out.write(_LENGTH.pack(len(payload)) + payload)
        channel_out.flush()


def _handle(runtime, request: dict, tflite: bytes, log) -> dict:
    def attempt(size: int, invoke: bool = False, allocations: bool = False):
        """Allocate (and invoke) in a forked process: TFLM keeps state across a failed Prepare that can crash a
        later interpreter in the same process, so every attempt starts from this clean process instead."""
        log.seek(0)
        log.truncate()
        pid = os.fork()
        if pid == 0:
            signal.alarm(_ATTEMPT_LIMIT_S)  # a hang in TFLM ends this attempt, not the worker
            try:
                interpreter = runtime.Interpreter.from_bytes(tflite, arena_size=size)
                if invoke:
                    interpreter.invoke()
                if allocations:
                    interpreter.print_allocations()
                code = 0
            except (RuntimeError, ValueError):
                code = 1
            sys.stdout.flush()
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        if os.WIFSIGNALED(status):
            return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
        return os.WEXITSTATUS(status) == 0

    if request["mode"] == "check":
        ok = attempt(request["arena_bytes"], invoke=True)
        return {"ok": ok is True, "crashed": ok if isinstance(ok, str) else None, "log": _log_text(log)}
    ok = attempt(_SEARCH_LIMIT_BYTES, invoke=True, allocations=True)
    if ok is not True:
        return {"ok": False, "crashed": ok or None, "log": _log_text(log)}
    used = _breakdown(_log_text(log))["total"]
    if used <= 0:
        return {"ok": False, "log": "the recording allocator reported no arena use"}
    # A probe that crashes counts as "does not fit": TFLM can crash when its own bookkeeping does not fit the
    # arena; the final attempt below, at the size found, must allocate and invoke cleanly.
    low, high = max(used - _ALIGNMENT, 0), max(used, _ALIGNMENT)
    while attempt(high) is not True:  # planning needs temporary room above what stays in use
        low, high = high, high + max(high - low, _ALIGNMENT) * 2
        if high > _SEARCH_LIMIT_BYTES:
            return {"ok": False, "log": "arena search did not converge"}
    while high - low > _ALIGNMENT:
        middle = (low + high) // 2 // _ALIGNMENT * _ALIGNMENT
        if middle <= low:
            break
        low, high = (middle, high) if attempt(middle) is not True else (low, middle)
    ok = attempt(high, invoke=True, allocations=True)
    if ok is not True:
        return {"ok": False, "crashed": ok or None, "log": _log_text(log)}
    return {"ok": True, "arena_bytes": high, "allocations": _breakdown(_log_text(log))}


def _breakdown(text: str) -> dict:
    totals = {match["part"]: int(match["bytes"]) for match in _TOTALS.finditer(text)}
    records = {match["name"]: {"bytes": int(match["used"]), "count": int(match["count"])}
               for match in _RECORD.finditer(text)}
    return {"total": totals.get("total", 0), "head": totals.get("head", 0), "tail": totals.get("tail", 0),
            "records": records}


def _log_text(log) -> str:
    log.flush()
    log.seek(0)
    return log.read()[-8192:].decode("utf-8", "replace")


def _read_frame(channel) -> bytes | None:
    prefix = channel.read(_LENGTH.size)
    if len(prefix) < _LENGTH.size:
        return None
    (length,) = _LENGTH.unpack(prefix)
    return channel.read(length)


if __name__ == "__main__":
    sys.exit(main())
