"""Built-in NLME models (build_model, initial_estimates) and loading a model from a Python file."""
import math

import numpy as np
import pandas as pd
import pytest

import pmxgen
from pmxgen.errors import ModelError
from pmxgen.models import DEFAULT_IIV, LIBRARY, NLMEModel, ResidualError, build_model, initial_estimates
from pmxgen.models.loader import load_model_file
from pmxgen.structural import get_model


@pytest.fixture(scope="module")
def theoph():
    return pmxgen.datasets.load("theophylline")


# ------------------------------------------------------------------------------------------ build_model
@pytest.mark.parametrize("name", LIBRARY)
@pytest.mark.parametrize("with_data", [False, True])
def test_build_model_thetas_are_the_structural_parameters(name, with_data, theoph):
    model = build_model(name, theoph if with_data else None)
    assert isinstance(model, NLMEModel)
    structural = get_model(name).parameter_names
    assert tuple(t.name for t in model.parameter_set.theta) == structural
    for t in model.parameter_set.theta:
        assert t.lower == 0.0 and t.upper == math.inf and not t.fixed
        assert math.isfinite(t.init) and t.init > 0
    assert model.iiv_names == DEFAULT_IIV[name]
    assert model.parameter_set.names[len(structural):] == (
        tuple(f"OMEGA({p})" for p in DEFAULT_IIV[name]) + ("SIGMA(ADD)", "SIGMA(PROP)"))
    assert model.error.kind == "combined"


def test_build_model_options(theoph):
    model = build_model("2cmt_oral", theoph, error="proportional", iiv=("CL", "V1", "Q"), full_omega=True,
                        omega_init=0.2, init={"KA": 0.9}, sigma_init={"prop": 0.02})
    ps = model.parameter_set
    assert ps.names == ("KA", "CL", "V1", "Q", "V2", "OMEGA(CL)", "OMEGA(V1,CL)", "OMEGA(V1)", "OMEGA(Q,CL)",
                        "OMEGA(Q,V1)", "OMEGA(Q)", "SIGMA(PROP)")
    full = ps.full_natural(ps.initial_natural())
    assert full["KA"] == 0.9 and full["SIGMA(PROP)"] == 0.02
    assert full["OMEGA(CL)"] == full["OMEGA(Q)"] == 0.2 and full["OMEGA(Q,CL)"] == 0.0
    err = ResidualError("additive", {"ADD": 0.7})
    assert build_model("1cmt_iv", error=err).error is err


def test_default_sigma_scales_with_the_data(theoph):
    frame = theoph.to_frame()
    dv = frame.loc[(frame.EVID == 0) & (frame.DV > 0), "DV"].to_numpy()
    level = float(np.median(dv))
    add = build_model("1cmt_oral", theoph, error="additive").parameter_set.initial_natural()[-1]
    assert float(add) == pytest.approx((0.2 * level) ** 2, rel=1e-12)


@pytest.mark.parametrize("kwargs, text", [
    (dict(name="4cmt_oral"), "unknown model '4cmt_oral'"),
    (dict(name="idr_inhibit_kin"), "unknown model"),
    (dict(iiv=("KA", "KE")), "iiv names \\['KE'\\]"),
    (dict(iov=("Vc",)), "iov names \\['Vc'\\]"),
    (dict(init={"K": 1.0}), "init names 'K'"),
    (dict(error="lognormal"), "unknown error model 'lognormal'"),
    (dict(sigma_init={"EXP": 0.1}, error="additive"), "has σ ADD"),
])
def test_build_model_invalid_names(kwargs, text):
    name = kwargs.pop("name", "1cmt_oral")
    with pytest.raises(ModelError, match=text):
        build_model(name, **kwargs)


def test_initial_estimates_unknown_name():
    with pytest.raises(ModelError, match="built-in NLME models are"):
        initial_estimates("nope")


# ------------------------------------------------------------------------------------ initial estimates
def test_initial_estimates_theophylline(theoph):
    init = initial_estimates("1cmt_oral", theoph)
    # published estimates for theophylline (e.g. nlme / NONMEM fits): KA ~ 1.5 /h, CL ~ 2.8 L/h, V ~ 31 L
    for name, known in {"KA": 1.5, "CL": 2.8, "V": 31.0}.items():
        assert known / 2 < init[name] < known * 2, (name, init[name])


@pytest.mark.parametrize("dataset", ["sim_1cmt_oral_wt", "sim_2cmt_iv_infusion"])
def test_initial_estimates_simulated_truth(dataset):
    truth = pmxgen.datasets.truth(dataset)
    init = initial_estimates(truth["model"], pmxgen.datasets.load(dataset))
    assert sorted(init) == sorted(truth["parameters"])
    for name in truth["parameters"]:
        assert truth["theta"][name] / 3 < init[name] < truth["theta"][name] * 3, (name, init[name])


@pytest.mark.parametrize("name", LIBRARY)
def test_initial_estimates_cover_the_structural_parameters(name, theoph):
    for data in (None, theoph):
        init = initial_estimates(name, data)
        assert sorted(init) == sorted(get_model(name).parameter_names)
        assert all(math.isfinite(v) and v > 0 for v in init.values())


def test_initial_estimates_one_compartment_iv_by_hand():
    """Noise-free mono-exponential data: NCA must recover CL and V almost exactly."""
    cl, v, dose = 2.0, 20.0, 100.0
    times = np.array([0.5, 1, 2, 4, 8, 12, 24, 36, 48])
    rows = [{"ID": i, "TIME": 0.0, "AMT": dose, "DV": float("nan")} for i in (1, 2, 3)]
    rows += [{"ID": i, "TIME": float(t), "AMT": 0.0, "DV": dose / v * math.exp(-cl / v * t)}
             for i in (1, 2, 3) for t in times]
    ds = pmxgen.read_nonmem(pd.DataFrame(rows).sort_values(["ID", "TIME"], kind="stable"))
    init = initial_estimates("1cmt_iv", ds)
    # the trapezoid AUC overestimates a convex curve slightly; 5 % is generous for this design
    assert init["CL"] == pytest.approx(cl, rel=0.05)
    assert init["V"] == pytest.approx(v, rel=0.05)


# ------------------------------------------------------------------------------------------ model files
def write(tmp_path, name, text):
    f = tmp_path / name
    f.write_text(text)
    return f


def test_load_model_file_with_model_variable(tmp_path):
    f = write(tmp_path, "m.py", "import pmxgen\nmodel = pmxgen.build_model('1cmt_oral', error='additive')\n")
    model = load_model_file(f)
    assert isinstance(model, NLMEModel)
    assert model.parameter_set.names == ("KA", "CL", "V", "OMEGA(KA)", "OMEGA(CL)", "OMEGA(V)", "SIGMA(ADD)")


def test_load_model_file_with_build_function(tmp_path, theoph):
    f = write(tmp_path, "b.py", "import pmxgen\n"
                                "def build(data):\n"
                                "    return pmxgen.build_model('1cmt_oral', data, error='additive', iiv=('CL',))\n")
    model = load_model_file(f, theoph)
    expected = build_model("1cmt_oral", theoph, error="additive", iiv=("CL",))
    assert model.parameter_set.names == expected.parameter_set.names
    assert model.parameter_set.full_natural(model.parameter_set.initial_natural()) == \
        expected.parameter_set.full_natural(expected.parameter_set.initial_natural())


def test_load_model_file_defining_neither(tmp_path):
    f = write(tmp_path, "empty.py", "x = 1\n")
    with pytest.raises(ModelError, match="must define `model") as info:
        load_model_file(f)
    assert str(f) in str(info.value)


def test_load_model_file_that_raises(tmp_path):
    f = write(tmp_path, "bad.py", "import math\nx = 1\nraise RuntimeError('boom')\n")
    with pytest.raises(ModelError, match="failed to run at line 3 .*: RuntimeError: boom") as info:
        load_model_file(f)
    assert str(f) in str(info.value) and "raise RuntimeError('boom')" in str(info.value)


def test_load_model_file_whose_model_is_invalid_names_the_line(tmp_path):
    f = write(tmp_path, "bad_iiv.py", "import pmxgen\n\nmodel = pmxgen.build_model('1cmt_oral', iiv=('KA', 'BAD'))\n")
    with pytest.raises(ModelError, match="at line 3 .*iiv names \\['BAD'\\]"):
        load_model_file(f)


def test_load_model_file_whose_build_raises(tmp_path, theoph):
    f = write(tmp_path, "badbuild.py", "def build(data):\n    raise RuntimeError('boom in build')\n")
    with pytest.raises(ModelError, match="boom in build") as info:
        load_model_file(f, theoph)
    assert str(f) in str(info.value)


def test_load_model_file_errors(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        load_model_file(tmp_path / "missing.py")
    f = write(tmp_path, "notmodel.py", "model = 42\n")
    with pytest.raises(ModelError, match="not a pmxgen PopulationModel"):
        load_model_file(f)
    f = write(tmp_path, "modelerror.py", "import pmxgen\nmodel = pmxgen.build_model('1cmt_oral', iiv=('X',))\n")
    with pytest.raises(ModelError, match="iiv names"):
        load_model_file(f)
