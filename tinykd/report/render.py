"""Reports as text people read: a terminal table, Markdown for pull requests, JSON, and PNG plots."""

from __future__ import annotations

import io
import json
import textwrap
from pathlib import Path
from typing import Sequence

from tinykd import artifacts
from tinykd.report import Report

TERMINAL_COLUMNS = 100


def as_json(reports: tuple[Report, ...]) -> str:
    """A list with one object per board."""
    return json.dumps([report.as_dict() for report in reports], indent=2)


def table(reports: tuple[Report, ...], source: str, notes: Sequence[str] = ()) -> str:
    """A summary table within TERMINAL_COLUMNS, then per-layer detail when there is a single board; `notes` (lines
    that may hold Markdown bold, which is dropped here) end it."""
    first = reports[0]
    lines = [f"{source}: {first.precision}, {first.macs:,} MACs, {first.model_bytes:,} B model, "
             f"{len(first.layers)} ops ({', '.join(sorted({layer.op for layer in first.layers}))})",
             f"{'board':20} {'core':13} {'MHz':>4} {'flash KiB':>13} {'RAM KiB':>13} {'latency ms':>18} "
             f"{'conf':6} fits"]
    for report in reports:
        flash = f"{report.flash_bytes / 1024:,.0f}/{report.board_flash_bytes / 1024:,.0f}"
        ram = f"{report.ram_bytes / 1024:,.0f}/{report.board_arena_ram_bytes / 1024:,.0f}"
        low, high = report.latency_range_ms
        latency = f"{_ms(report.latency_ms)} ({_ms(low)}-{_ms(high)})"
        lines.append(f"{report.board:20} {report.core:13} {report.clock_mhz:>4g} {flash:>13} {ram:>13} "
                     f"{latency:>18} {report.confidence:6} {'yes' if report.fits else 'NO'}")
    if len(reports) == 1:
        lines += ["", f"{'#':>3} {'op':22} {'v':>2} {'output':18} {'MACs':>11} {'cycles':>11} {'ms':>9}"]
        for layer in first.layers:
            shape = "x".join(str(d) for d in layer.output_shape)
            lines.append(f"{layer.index:>3} {layer.op[:22]:22} {layer.version:>2} {shape[:18]:18} "
                         f"{layer.macs:>11,} {layer.cycles:>11,} {layer.latency_ms:>9.3f}")
        lines += ["", f"flash = {first.flash_counts}", f"  runtime code {first.runtime_code_bytes:,} B "
                  f"(range {first.runtime_code_range_bytes[0]:,}-{first.runtime_code_range_bytes[1]:,}): "
                  f"{first.flash_estimated}",
                  f"RAM = {first.ram_counts}",
                  f"  arena {first.arena_bytes:,} B = non-persistent {first.arena_nonpersistent_bytes:,} "
                  f"+ persistent {first.arena_persistent_bytes:,} (host {first.arena_host_bytes:,} - 32-bit "
                  f"correction {first.arena_32bit_correction_bytes:,} + CMSIS-NN scratch "
                  f"{first.kernel_scratch_bytes:,}); runtime state {first.runtime_state_bytes:,}",
                  f"latency: {first.latency_basis}"]
    lines += [f"warning: {warning}" for warning in first.warnings]
    lines.append("RAM is against the largest contiguous SRAM region; fits uses the high end of the flash estimate.")
    lines += [note.replace("**", "") for note in notes]
    return "\n".join(textwrap.fill(line, TERMINAL_COLUMNS, subsequent_indent="    ") for line in lines)


def markdown(reports: tuple[Report, ...], source: str, notes: Sequence[str] = ()) -> str:
    """A Markdown summary for a pull request; `notes` end its list."""
    first = reports[0]
    lines = [f"### `{source}` on {len(reports)} board{'s' if len(reports) > 1 else ''}", "",
             f"{first.precision}, {first.macs:,} MACs, {first.model_bytes:,} B model, {len(first.layers)} ops.", "",
             "| board | core | MHz | flash (B) | RAM (B) | latency (ms) | confidence | fits |",
             "|---|---|---:|---:|---:|---:|---|---|"]
    for report in reports:
        low, high = report.latency_range_ms
        lines.append(f"| {report.board} | {report.core} | {report.clock_mhz:g} | {report.flash_bytes:,} of "
                     f"{report.board_flash_bytes:,} | {report.ram_bytes:,} of {report.board_arena_ram_bytes:,} | "
                     f"{_ms(report.latency_ms)} ({_ms(low)}-{_ms(high)}) | {report.confidence} | "
                     f"{'yes' if report.fits else '**no**'} |")
    lines += ["", f"- flash = {first.flash_counts}; {first.flash_estimated}.", f"- RAM = {first.ram_counts}."]
    lines += [f"- **warning:** {warning}" for warning in first.warnings]
    lines += [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"


def plots(reports: tuple[Report, ...], folder: Path, source: str) -> list[Path]:
    """latency_per_layer.png (first board) and memory_per_board.png; returns the paths written."""
    return save_plots(figures(reports, source), folder)


def save_plots(made: list, folder: Path) -> list[Path]:
    """The two Figures of `figures` as PNG files in `folder` (created if missing); returns their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / "latency_per_layer.png", folder / "memory_per_board.png"]
    for figure, path in zip(made, paths):
        png = io.BytesIO()
        figure.savefig(png, format="png", dpi=110)
        artifacts.write_bytes(path, png.getvalue())  # a reader never sees half a file
    return paths


def figures(reports: tuple[Report, ...], source: str) -> list:
    """The two plots of `plots` as matplotlib Figures (a notebook shows them inline): latency per layer on the
    first board, and memory per board against its limits."""
    # Figures made without pyplot belong to no GUI backend and no global state, so a library can return them.
    from matplotlib.figure import Figure

    first = reports[0]
    latency_figure = Figure(figsize=(9, 4.5))
    axes = latency_figure.subplots()
    axes.bar([f"{layer.index} {layer.op}" for layer in first.layers],
             [layer.latency_ms for layer in first.layers], color="tab:blue")
    axes.set_ylabel("estimated ms")
    axes.set_title(f"{source} on {first.board} ({first.core} @ {first.clock_mhz:g} MHz): latency per layer")
    axes.tick_params(axis="x", labelrotation=90, labelsize=7)
    latency_figure.tight_layout()
    memory_figure = Figure(figsize=(11, 4.5))
    flash_axes, ram_axes = memory_figure.subplots(1, 2)
    names = [report.board for report in reports]
    for axes, used, limit, title in ((flash_axes, "flash_bytes", "board_flash_bytes", "flash"),
                                     (ram_axes, "ram_bytes", "board_arena_ram_bytes", "RAM (largest SRAM region)")):
        axes.barh(names, [getattr(r, limit) / 1024 for r in reports], color="lightgray", label="board")
        axes.barh(names, [getattr(r, used) / 1024 for r in reports],
                  color=["tab:green" if r.fits else "tab:red" for r in reports], label="model needs")
        axes.set_xlabel("KiB")
        axes.set_title(title)
        axes.legend(loc="lower right", fontsize=8)
    memory_figure.suptitle(f"{source}: memory per board against its limits")
    memory_figure.tight_layout()
    return [latency_figure, memory_figure]


def _ms(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"
