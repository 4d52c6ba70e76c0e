"""The command line: demo (the README's main job), datasets, summarize, and clean errors."""
import json
import subprocess
import sys

from pmxgen.cli import main


def test_demo_writes_tables(tmp_path, capsys):
    assert main(["demo", "theophylline", "--output", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "subjects            12" in out and "typical prediction" in out
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["subjects"] == 12 and summary["observations"] == 132
    # typical-value predictions of theophylline are within 20 % of the observed median
    assert abs(summary["prediction_median"] / summary["observed_median"] - 1) < 0.2
    assert (tmp_path / "predictions.csv").read_text().count("\n") == 133
    assert (tmp_path / "simulated.csv").is_file()


def test_datasets_and_summarize(capsys):
    assert main(["datasets"]) == 0
    assert "theophylline" in capsys.readouterr().out
    assert main(["summarize", "moxo", "--occasion", "VISI"]) == 0
    assert "occasions           3, 8" in capsys.readouterr().out


def test_bad_file_gives_message_and_exit_code(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("ID,TIME,DV,AMT\n1,0,abc,0\n")   # a file needs AMT (required column) before its values are read
    assert main(["summarize", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad.csv, row 2, column DV" in err and "'abc'" in err


def test_console_module_runs():
    r = subprocess.run([sys.executable, "-m", "pmxgen", "datasets"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "sim_1cmt_oral_1000" in r.stdout
