"""Helpers shared by the tests: benchmark data paths, contract CSVs, quick fit settings."""

from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("DETECTOR_SHARED_DATA", ROOT.parent / "shared" / "data"))
SKAB_VALVE1 = SHARED_DATA / "skab" / "valve1"

QUICK_FIT = {"max_epochs": 6, "patience": 3, "report": False}


def skab_to_contract(source: Path, target: Path, rows: slice = slice(None)) -> Path:
    """Convert a SKAB file (';', labels) to the input contract (',', timestamp + features)."""
    with source.open(newline="", encoding="utf-8") as handle:
        table = [r for r in csv.reader(handle, delimiter=";") if r]
    header, body = table[0], table[1:][rows]
    keep = [i for i, c in enumerate(header) if c not in ("datetime", "anomaly", "changepoint")]
    with target.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["timestamp"] + [header[i].replace(" ", "_") for i in keep])
        for row in body:
            writer.writerow([row[0].replace(" ", "T") + "Z"] + [row[i] for i in keep])
    return target


def synthetic_csv(
    path: Path,
    entities: int = 3,
    rows: int = 300,
    features: int = 2,
    seed: int = 0,
    shift_at: int | None = None,
    shift: float = 0.0,
) -> Path:
    """Interleaved multi-entity sine-plus-noise series; optional level shift from row ``shift_at``."""
    rng = np.random.default_rng(seed)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["timestamp", "entity"] + [f"f{i}" for i in range(features)])
        for t in range(rows):
            for e in range(entities):
                level = shift if shift_at is not None and t >= shift_at else 0.0
                values = [math.sin(t / 7 + e + i) + 0.1 * rng.standard_normal() + level for i in range(features)]
                writer.writerow([1_700_000_000 + t, f"pump-{e}"] + [f"{v:.6f}" for v in values])
    return path


def write_config(path: Path, **sections: dict) -> Path:
    """A TOML config with the given sections."""
    lines = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        for key, value in values.items():
            shown = (
                ("true" if value else "false")
                if isinstance(value, bool)
                else repr(value)
                if not isinstance(value, str)
                else f'"{value}"'
            )
            lines.append(f"{key} = {shown}")
    path.write_text("\n".join(lines) + "\n")
    return path


def checkpoint_without(blob: bytes, *fields: str) -> bytes:
    """A state checkpoint (``EntityStore.export``) as an older version wrote it: without ``fields``."""
    payload = torch.load(io.BytesIO(blob), weights_only=True)
    for name in fields:
        del payload[name]
    out = io.BytesIO()
    torch.save(payload, out)
    return out.getvalue()
