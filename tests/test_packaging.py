"""Packaging: every subpackage is listed in pyproject.toml, and the bundled datasets are installed."""
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pmxgen

ROOT = Path(__file__).resolve().parents[1]


def test_every_subpackage_is_listed_in_pyproject():
    text = (ROOT / "pyproject.toml").read_text()
    listed = set(re.findall(r'"(pmxgen[\w.]*)"', text.split("packages = [", 1)[1].split("]", 1)[0]))
    found = {".".join(p.relative_to(ROOT).parent.parts) for p in (ROOT / "pmxgen").rglob("__init__.py")}
    assert found <= listed, f"add {sorted(found - listed)} to [tool.setuptools] packages"
    assert "pmxgen._bundled" in listed


def test_wheel_carries_the_bundled_datasets(tmp_path):
    """A non-editable install (the README's main command) must carry datasets/ as pmxgen/_bundled."""
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation",
                        "-q", "-w", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    (wheel,) = tmp_path.glob("pmxgen-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for dataset in pmxgen.datasets.list():
        assert f"pmxgen/_bundled/{dataset}/{dataset}.csv" in names
        assert f"pmxgen/_bundled/{dataset}/README.md" in names


def test_public_api_is_exported():
    for name in pmxgen.__all__:
        assert getattr(pmxgen, name) is not None
    assert callable(pmxgen.read_nonmem) and callable(pmxgen.simulate_dataset)
