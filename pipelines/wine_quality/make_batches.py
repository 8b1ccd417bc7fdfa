"""Cut scikit-learn's bundled wine data set into the reference data batches (CSV, deterministic).

`python make_batches.py OUT_DIR` writes:
- clean.csv    every sample, shuffled: passes the expectation suite;
- corrupt.csv  a column missing, nulls, out-of-range values and an unknown class: fails the suite;
- drifted.csv  the same schema with shifted feature distributions: passes the suite, then drifts.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.datasets import load_wine

SEED = 20261123


def wine() -> pd.DataFrame:
    """The wine data set: 13 numeric features and the class in `target` (0, 1 or 2)."""
    frame: pd.DataFrame = load_wine(as_frame=True).frame
    return frame


def clean(data: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    return data.sample(frac=1.0, random_state=rng.integers(1 << 31)).reset_index(drop=True)


def corrupt(data: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    batch = clean(data, rng).drop(columns=["proline"])
    rows = len(batch)
    batch.loc[rng.choice(rows, 12, replace=False), "alcohol"] = np.nan
    batch.loc[rng.choice(rows, 5, replace=False), "hue"] = -1.0
    batch.loc[rng.choice(rows, 3, replace=False), "target"] = 7
    return batch


def drifted(data: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    batch = data.sample(n=len(data), replace=True, random_state=rng.integers(1 << 31)).reset_index(drop=True)
    shifts = {"alcohol": (1.0, 0.9), "malic_acid": (1.0, 1.2), "color_intensity": (1.5, 0.0)}
    for column, (scale, offset) in shifts.items():
        batch[column] = batch[column] * scale + offset
    batch["flavanoids"] = batch["flavanoids"] * 0.5
    batch["proline"] = batch["proline"] * 1.25
    features = [c for c in batch.columns if c != "target"]
    noise = rng.normal(0.0, 0.01, size=(len(batch), len(features)))
    batch[features] = (batch[features] * (1.0 + noise)).round(3)
    return batch


def write_batches(out_dir: Path) -> dict[str, Path]:
    """Write the three batches into `out_dir`; the same files on every run."""
    out_dir.mkdir(parents=True, exist_ok=True)
    data = wine()
    rng = np.random.default_rng(SEED)
    written: dict[str, Path] = {}
    for name, cut in (("clean", clean), ("corrupt", corrupt), ("drifted", drifted)):
        path = out_dir / f"{name}.csv"
        cut(data, rng).to_csv(path, index=False)
        written[name] = path
    return written


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python make_batches.py OUT_DIR", file=sys.stderr)
        return 2
    for name, path in write_batches(Path(argv[1])).items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
