"""`runs/<name>/manifest.json`: what a build read and wrote, so a rebuild can prove it gives the same bytes.

The manifest holds the recipe as loaded, the sha256 of every data file the build read, the sha256 of every file in
the run folder and the versions of Python and the packages that shape the bytes. Two kinds of files are kept apart:
`artifacts`, the deliverables (every .tflite and the exported C/C++ files), which the same recipe, seed, machine
and versions must reproduce byte for byte; and `other_files` (Keras models, stage records, reports), which carry
times, run ids or save dates and are hashed only to say what was there.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import platform
from pathlib import Path

from tinykd import artifacts, config, own_model
from tinykd.errors import ReproducibilityError

NAME = "manifest.json"
PACKAGES = ("tensorflow", "tf-keras", "tensorflow-model-optimization", "tflite-micro", "numpy", "tinykd")


def write(run_root: Path, cfg: config.Config, data_dirs: tuple[Path, ...] = ()) -> Path:
    """Write `run_root/manifest.json` for the build of `cfg` that just finished there; returns its path."""
    files = sorted(path for path in run_root.rglob("*") if path.is_file() and path.name != NAME
                   and not path.name.startswith("."))
    hashes = {path.relative_to(run_root).as_posix(): _sha256(path) for path in files}
    manifest = {
        "recipe": config.as_dict(cfg),
        "data_files": {str(path): _sha256(path) for path in _data_files(cfg, data_dirs)},
        "artifacts": {name: digest for name, digest in hashes.items() if _reproducible(name)},
        "other_files": {name: digest for name, digest in hashes.items() if not _reproducible(name)},
        "versions": versions(),
        "machine": {"system": platform.system(), "processor": platform.machine()},
    }
    return artifacts.write_json(run_root / NAME, manifest)


def read(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError:
        raise ReproducibilityError(f"{path}: no manifest to check against; build once without --check "
                                   "first") from None
    except ValueError as error:
        raise ReproducibilityError(f"{path}: not a readable manifest ({error}); build again without "
                                   "--check to rewrite it") from None


def differences(expected: dict, rebuilt: dict) -> list[str]:
    """What differs between two manifests of one recipe: its artifacts, the data files, the recipe itself; with
    version changes (which may explain the rest) last."""
    found = []
    if expected.get("recipe") != rebuilt.get("recipe"):
        changed = sorted(key for key in set(expected.get("recipe", {})) | set(rebuilt.get("recipe", {}))
                         if expected.get("recipe", {}).get(key) != rebuilt.get("recipe", {}).get(key))
        found.append(f"the recipe differs in {', '.join(changed)} (check with the recipe and --set of the build)")
    for section, label in (("data_files", "data file"), ("artifacts", "artifact")):
        old, new = expected.get(section, {}), rebuilt.get(section, {})
        for name in sorted(set(old) | set(new)):
            if name not in new:
                found.append(f"{label} {name}: in the manifest, not written by the rebuild")
            elif name not in old:
                found.append(f"{label} {name}: written by the rebuild, not in the manifest")
            elif old[name] != new[name]:
                found.append(f"{label} {name}: sha256 {old[name][:12]} in the manifest, {new[name][:12]} rebuilt")
    if found:
        old, new = expected.get("versions", {}), rebuilt.get("versions", {})
        moved = [f"{name} {old.get(name)} -> {new.get(name)}" for name in sorted(set(old) | set(new))
                 if old.get(name) != new.get(name)]
        if moved:
            found.append(f"versions changed since the manifest ({', '.join(moved)}), which can explain it")
    return found


def versions() -> dict[str, str | None]:
    """Python's version and those of the packages whose code decides the bytes of a build."""
    found: dict[str, str | None] = {"python": platform.python_version()}
    for package in PACKAGES:
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = None
    return found


def _reproducible(name: str) -> bool:
    return name.endswith(".tflite") or (name.startswith("export/") and not name.endswith(artifacts.RECORD))


def _data_files(cfg: config.Config, data_dirs: tuple[Path, ...]) -> list[Path]:
    """Every file the build read data, a teacher or your own model from."""
    found = []
    if cfg.data.format == "fashion_mnist":
        from tinykd.data import fashion_mnist

        found += fashion_mnist.files(cfg.data, data_dirs)
    elif cfg.data.path:
        found += _files_at(Path(cfg.data.path))
    if cfg.data.unlabeled and cfg.data.unlabeled != config.UNLABELED_REST:
        found += _files_at(Path(cfg.data.unlabeled))
    for source in [cfg.teacher.path] + [member.path for member in cfg.distill.ensemble]:
        if source:
            found += _files_at(Path(source).expanduser())
    for model in [cfg.teacher.model, cfg.distill.student] + [member.model for member in cfg.distill.ensemble]:
        found += own_model.source_files(model)  # your model file or factory module
    return found


def _files_at(path: Path) -> list[Path]:
    return [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
