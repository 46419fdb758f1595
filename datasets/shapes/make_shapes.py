"""Generate the `shapes` example image folder: circles, squares and triangles, deterministic for a seed.

    python datasets/shapes/make_shapes.py [OUT_DIR] [--per-class N] [--seed S]

Images come in mixed sizes (24 to 64 pixels a side) and colours on gradient backgrounds, so the image_folder reader's
resizing and colour conversion are exercised. The committed `datasets/shapes/images/` was made with the defaults.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ("circle", "square", "triangle")


def make(out_dir: Path, per_class: int = 60, seed: int = 0) -> Path:
    """Write `per_class` PNGs for each class into out_dir/<class>/ and return out_dir."""
    rng = np.random.default_rng(seed)
    for label in CLASSES:
        (out_dir / label).mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            size = int(rng.integers(24, 65))
            # A smooth gradient background: varied like a photo, but small as a PNG.
            start, end = rng.integers(0, 128, size=3), rng.integers(0, 128, size=3)
            ramp = np.linspace(0.0, 1.0, size)[:, None, None]
            background = np.broadcast_to(start + (end - start) * ramp, (size, size, 3))
            image = Image.fromarray(background.astype(np.uint8), "RGB")
            draw = ImageDraw.Draw(image)
            colour = tuple(int(c) for c in rng.integers(128, 256, size=3))
            extent = rng.uniform(0.45, 0.8) * size
            left, top = rng.uniform(0, size - extent, size=2)
            box = (left, top, left + extent, top + extent)
            if label == "circle":
                draw.ellipse(box, fill=colour)
            elif label == "square":
                draw.rectangle(box, fill=colour)
            else:
                draw.polygon([(left + extent / 2, top), (left, top + extent), (left + extent, top + extent)],
                             fill=colour)
            image.save(out_dir / label / f"{label}_{index:03d}.png", optimize=True)
    return out_dir


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", type=Path, nargs="?", default=Path(__file__).parent / "images")
    parser.add_argument("--per-class", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    arguments = parser.parse_args()
    print(make(arguments.out_dir, arguments.per_class, arguments.seed))
