"""Convert the raw (unscaled) diabetes panel of Efron et al. (2004) from scikit-learn to datasets/diabetes/.

Run once from the repository root (needs scikit-learn; pmxgen itself does not)::

    python datasets/convert_diabetes.py

It writes ``datasets/diabetes/diabetes.csv`` (442 rows; columns AGE, SEX, BMI, BP, S1..S6, Y) from
``sklearn.datasets.load_diabetes(scaled=False)``, the values unchanged (written with Python ``repr``
of each float, integral values as integers), and checks the result reads back identically.
Deterministic: a re-run rewrites the same bytes.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent / "diabetes" / "diabetes.csv"
COLUMNS = ["AGE", "SEX", "BMI", "BP", "S1", "S2", "S3", "S4", "S5", "S6", "Y"]


def _fmt(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


def main() -> None:
    from sklearn.datasets import load_diabetes
    bunch = load_diabetes(scaled=False)
    data = np.column_stack([bunch.data, bunch.target])
    assert data.shape == (442, 11), data.shape
    assert list(bunch.feature_names) == [c.lower() for c in COLUMNS[:-1]], bunch.feature_names
    lines = [",".join(COLUMNS)] + [",".join(_fmt(v) for v in row) for row in data]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("\n".join(lines) + "\n")
    back = np.loadtxt(OUT, delimiter=",", skiprows=1)
    assert np.array_equal(back, data), "the CSV does not read back to the same values"
    print(f"wrote {OUT} ({len(data)} rows)")


if __name__ == "__main__":
    main()
