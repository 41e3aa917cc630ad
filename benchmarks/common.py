"""What every benchmark records beside its figures: the machine, the date, the command; and where results go."""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def command_line(argv: list[str] | None, script: str) -> str:
    """The command as typed (or as a caller passed `argv`), for the result file."""
    return shlex.join(sys.orig_argv) if argv is None else shlex.join(["python", script, *argv])


def print_header(now: datetime, command: str, device: str) -> None:
    print(f"machine: {device}")
    print(f"date:    {now:%Y-%m-%d %H:%M:%S} UTC")
    print(f"command: {command}")


def print_figures(figures: dict[str, float]) -> None:
    width = max(len(name) for name in figures)
    for name, value in figures.items():
        print(f"  {name:<{width}}  {value}")


def write_result(benchmark: str, device_kind: str, now: datetime, *, device: str, command: str,
                 figures: dict[str, float], output: Path | None = None, **extra: Any) -> Path:  # fmt: skip
    """benchmarks/results/<benchmark>-<device_kind>-<date>.json (or `output`), with device, date, command and
    the flat figures; `extra` (machine details, notes, ...) goes beside them."""
    output = output or RESULTS / f"{benchmark}-{device_kind}-{now:%Y-%m-%d}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    result = {"benchmark": benchmark, "device": device, "date": now.strftime("%Y-%m-%d"),
              "datetime_utc": now.strftime("%Y-%m-%dT%H:%M:%SZ"), "command": command, "figures": figures,
              **extra}  # fmt: skip
    output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {output}")
    return output


def utc_now() -> datetime:
    return datetime.now(UTC)
