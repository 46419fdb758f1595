"""How long `tinykd report` takes on the VWW model (target: at most 2 seconds), end to end as a user runs it.

    python bench/report_speed.py            (a few seconds)

Times the real command (`python -m tinykd report MODEL` for all boards, and `--format json`) in fresh processes,
so interpreter start-up, imports, the flatbuffer checks and the TFLM arena search in its child process all count.
Writes bench/results/report_speed.json with the machine it ran on and the median of the runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO.parent / "shared" / "models" / "mlperf_tiny" / "vww_96_int8.tflite"
TARGET_SECONDS = 2.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=MODEL)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "report_speed.json")
    args = parser.parse_args()
    commands = {"table_all_boards": ["report", str(args.model)],
                "json_all_boards": ["report", str(args.model), "--format", "json"]}
    results = {}
    for name, command in commands.items():
        seconds = [_time([sys.executable, "-m", "tinykd", *command]) for _ in range(args.runs)]
        results[name] = {"command": "tinykd " + " ".join(command), "median_seconds": statistics.median(seconds),
                         "min_seconds": min(seconds), "max_seconds": max(seconds), "runs": seconds}
    summary = {
        "model": str(args.model), "target_seconds": TARGET_SECONDS,
        "meets_target": all(r["median_seconds"] <= TARGET_SECONDS for r in results.values()),
        "results": results,
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "processor": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                    "load_average_1min": os.getloadavg()[0]},
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    sys.stdout.write(json.dumps({name: round(r["median_seconds"], 3) for name, r in results.items()}) + "\n")


def _time(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, cwd=REPO)
    return time.perf_counter() - started


if __name__ == "__main__":
    main()
