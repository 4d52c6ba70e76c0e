"""``pmxgen fit`` on the bad inputs a user makes: exit code 2 and a message, before any fitting."""
import json

import pytest

from pmxgen.cli import main

FIT = ["fit", "theophylline", "--model", "1cmt_oral", "--iiv", "KA,CL", "--covariance", "none", "--quiet"]


def _error(capsys) -> str:
    captured = capsys.readouterr()
    assert "Fitting" not in captured.err, "the fit started before the input was checked"
    return captured.err


@pytest.mark.parametrize("argv,message", [
    (["fit", "no_such_file.csv", "--model", "1cmt_oral"], "neither a file nor a bundled dataset"),
    (["fit", "theophylline", "--model", "7cmt_magic"], "neither a .py model file nor a built-in model"),
    (["fit", "theophylline", "--model", "missing_model.py"], "does not exist"),
    (["fit", "theophylline", "--model", "1cmt_oral", "--init", "CL=three"], "--init CL: 'three' is not a number"),
    (["fit", "theophylline", "--model", "1cmt_oral", "--init", "CL"], "--init expects NAME=VALUE"),
    (["fit", "theophylline", "--model", "1cmt_oral", "--method", "saem", "--max-iter", "5"],
     "--max-iter does not apply to --method saem"),
    (["fit", "theophylline", "--model", "1cmt_oral", "--importance-samples", "many"],
     "--importance-samples: 'many' is not a valid int"),
    (["fit", "theophylline", "--model", "1cmt_oral", "--method", "vem", "--covariance", "sandwich"],
     "choose one of linearization, none"),
])
def test_bad_command_lines_exit_2_before_fitting(argv, message, capsys):
    assert main(argv) == 2
    err = _error(capsys)
    assert "pmxgen: error:" in err and message in err, err


def test_a_folder_given_as_data_is_refused(tmp_path, capsys):
    assert main(["fit", str(tmp_path), "--model", "1cmt_oral"]) == 2
    assert "is a folder" in _error(capsys)


def test_an_unwritable_output_is_refused_before_fitting(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    assert main(FIT + ["--output", str(blocker)]) == 2
    assert "is a file" in _error(capsys)
    assert main(FIT + ["--output", str(blocker / "below")]) == 2      # a folder below a file cannot be made
    assert "cannot be written" in _error(capsys)


def test_an_output_with_a_previous_run_needs_force(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(FIT + ["--output", str(out)]) == 0
    first = json.loads((out / "results.json").read_text())
    capsys.readouterr()
    assert main(FIT + ["--output", str(out), "--method", "foce"]) == 2
    err = _error(capsys)
    assert "holds a previous run" in err and "--force" in err
    assert json.loads((out / "results.json").read_text()) == first      # nothing was overwritten
    assert main(FIT + ["--output", str(out), "--method", "foce", "--force"]) == 0
    assert "replaced the previous run's files" in capsys.readouterr().out
    assert json.loads((out / "results.json").read_text())["method"] == "foce"


def test_a_model_file_that_raises_names_its_line(tmp_path, capsys):
    model = tmp_path / "broken.py"
    model.write_text("import pmxgen\n\n\nmodel = pmxgen.build_model('1cmt_oral', error='additive', iiv=('KA', 'Q'))\n")
    assert main(["fit", "theophylline", "--model", str(model)]) == 2
    err = _error(capsys)
    assert "at line 4" in err and "iiv=('KA', 'Q')" in err


def test_a_fit_that_does_not_converge_exits_1(capsys):
    assert main(FIT + ["--max-iter", "2"]) == 1
