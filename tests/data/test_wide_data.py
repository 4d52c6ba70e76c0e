"""A file with thousands of extra columns reads and fits about as fast as without them (issue 21).

Every extra column is kept in :meth:`Dataset.to_frame` and is a covariate, but only the
covariates a model reads become tensors during a fit (``NLMEModel.covariates`` is a lazy
mapping, the per-record covariates a :class:`~pmxgen.data.batching.RecordCovariates`).
Before this was so, 20,000 extra columns made reading theophylline take ~60 s and each fit
~25 s of CPU (100,000 columns: several minutes).
"""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch

import pmxgen
import pmxgen.structural  # noqa: F401  (import at collection: torchdiffeq/scipy take ~1 s)
from pmxgen.data.batching import RecordCovariates

N_EXTRA = 20_000


def write_theophylline(path, n_extra: int, seed: int = 0) -> np.ndarray:
    """Theophylline with ``n_extra`` numeric columns X0, X1, ... (3 decimals); returns those values."""
    theo = pmxgen.datasets.load("theophylline").to_frame()
    extra = np.round(np.random.default_rng(seed).normal(size=(len(theo), n_extra)), 3)
    base = theo.to_csv(index=False, header=False, na_rep=".").splitlines()
    fmt = ",".join(["%.3f"] * n_extra)
    lines = [",".join(list(theo.columns) + [f"X{j}" for j in range(n_extra)])]
    lines += [b + ("," + fmt % tuple(row) if n_extra else "") for b, row in zip(base, extra)]
    path.write_text("\n".join(lines) + "\n")
    return extra


def read_and_fit(path):
    start = time.process_time()
    data = pmxgen.read_nonmem(path)
    read_cpu = time.process_time() - start
    model = pmxgen.build_model("1cmt_oral", data, iiv=("KA", "CL"))
    fit = pmxgen.fit(model, data, method="foce", covariance=None)
    return data, fit, read_cpu, time.process_time() - start


@pytest.fixture(scope="module")
def wide_and_narrow(tmp_path_factory):
    folder = tmp_path_factory.mktemp("wide")
    extra = write_theophylline(folder / "wide.csv", N_EXTRA)
    write_theophylline(folder / "narrow.csv", 0)
    narrow = read_and_fit(folder / "narrow.csv")
    wide = read_and_fit(folder / "wide.csv")
    return extra, narrow, wide


def test_wide_file_reads_and_fits_about_as_fast(wide_and_narrow):
    _, (_, fit_n, read_n, total_n), (data, fit_w, read_w, total_w) = wide_and_narrow
    # CPU seconds (a loaded machine does not inflate them); measured: narrow ~2.5 s, wide ~4 s in all
    assert read_w < 10.0, read_w
    assert total_w < 2.0 * total_n + 8.0, (total_w, total_n)
    assert fit_w.ofv == pytest.approx(fit_n.ofv, rel=1e-9, abs=1e-9)          # the columns change nothing
    assert data.covariate_names[:2] == ("WT", "DOSE") and len(data.covariate_names) == 2 + N_EXTRA


def test_wide_file_keeps_every_column(wide_and_narrow):
    extra, _, (data, *_rest) = wide_and_narrow
    frame = data.to_frame()
    theo = pmxgen.datasets.load("theophylline").to_frame()
    assert frame.shape == (len(theo), theo.shape[1] + N_EXTRA)
    assert list(frame.columns[:theo.shape[1]]) == list(theo.columns)
    np.testing.assert_array_equal(frame.iloc[:, theo.shape[1]:].to_numpy(), extra)
    np.testing.assert_array_equal(frame[list(theo.columns)].to_numpy(dtype=float), theo.to_numpy(dtype=float))
    summary = data.summary()                                     # lists 30 covariates, counts the rest
    assert "X27 " in summary and "X28 " not in summary and f"... and {N_EXTRA + 2 - 30:,} more" in summary


def test_wide_file_covariates_are_gathered_per_column(wide_and_narrow):
    extra, _, (data, *_rest) = wide_and_narrow
    batch = data.batch
    assert isinstance(batch.obs.covariates, RecordCovariates)
    assert batch.obs.covariates.shape == (12, 11, 2 + N_EXTRA)
    k = batch.covariate_index("X123")
    obs = batch.obs
    rows = obs.row[obs.mask]
    assert torch.equal(obs.covariates[..., k][obs.mask], torch.as_tensor(extra[rows.numpy(), 123]))
    assert torch.equal(batch.baseline[:, k], torch.as_tensor(extra[[0 + 12 * i for i in range(12)], 123]))
    cov = pmxgen.build_model("1cmt_oral", data).covariates(batch)
    assert len(cov) == 2 + N_EXTRA and torch.equal(cov["x123"], batch.baseline[:, k])     # case-insensitive
    # subsets keep the shared record table and gather the right records
    sub = data.subset([data.ids[3]])
    assert torch.equal(sub.batch.obs.covariates[..., k][0], obs.covariates[..., k][3])


def test_record_covariates_follow_subject_operations():
    """select / repeat / to / concatenation of subject blocks gather the same values as the full tensor."""
    from pmxgen.simulation.engine import _cat_batches          # how the simulator joins blocks of subjects

    batch = pmxgen.datasets.load("theophylline").batch
    cov = batch.obs.covariates
    full = cov.tensor()
    assert full.shape == (12, 11, 2) and torch.equal(torch.as_tensor(np.asarray(cov)), full)
    assert torch.equal(full[..., 0], cov[..., 0]) and torch.equal(full[2:4], cov[2:4])
    assert torch.equal(torch.sum(cov, dim=-1), full.sum(dim=-1))                  # torch functions see the tensor
    index = torch.tensor([5, 0, 5])
    assert torch.equal(batch.select(index).obs.covariates.tensor(), full[index])
    assert torch.equal(batch.repeat(2).obs.covariates.tensor(), full.repeat(2, 1, 1))
    b32 = batch.to(dtype=torch.float32)
    assert b32.obs.covariates.dtype == torch.float32 and torch.equal(b32.obs.covariates.tensor(), full.float())
    assert b32.obs.covariates.shared is b32.doses.covariates.shared                 # still one record table
    joined = _cat_batches([batch.select(torch.arange(0, 4)), batch.select(torch.arange(4, 12))])
    assert torch.equal(joined.obs.covariates.tensor(), full)
    assert joined.obs.covariates.table.shape == (144, 2)                            # not copied per block
    assert torch.equal(joined.doses.covariates[..., 1], batch.doses.covariates[..., 1])
