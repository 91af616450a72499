"""`pip install .` gives a working package: build the wheel, check its contents, import it from the wheel alone."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), str(ROOT)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    (path,) = out.glob("attnlib-*.whl")
    return path


def test_wheel_holds_every_module_and_data_file(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    tracked = subprocess.run(["git", "ls-files", "attnlib"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    wanted = [name for name in tracked if Path(name).suffix in (".py", ".js", ".css", ".json", ".pt", ".md")]
    missing = [name for name in wanted if name not in names]
    assert wanted and missing == []


def test_imports_from_the_wheel_alone(wheel, tmp_path):
    zipfile.ZipFile(wheel).extractall(tmp_path / "site")
    site = str(tmp_path / "site")
    # The development checkout is installed editable; hide its import hook so only the wheel's files can load.
    code = (f"import sys; sys.meta_path = [f for f in sys.meta_path if 'editable' not in repr(f).lower()]; "
            f"sys.path.insert(0, {site!r}); import attnlib, attnlib.numpy, attnlib.torch; "
            f"assert attnlib.numpy.__file__.startswith({site!r}), attnlib.numpy.__file__")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
