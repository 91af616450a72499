"""`pip install .` gives a working package: build the wheel, check its contents, import it from the wheel alone."""

import ast
import re
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
    stale = [name for name in names if name.startswith("attnlib/") and name.endswith(".py") and name not in tracked]
    assert stale == [], "the wheel holds modules the checkout does not (a stale build/ folder?)"


def _reaches_outside(node) -> str | None:
    """What in this syntax node would lead a module to a file outside its own folder, if anything."""
    if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Attribute) and node.value.attr == "parents":
        return ".parents[...]"
    if isinstance(node, ast.Attribute) and node.attr == "parent" and isinstance(node.value, ast.Attribute) \
            and node.value.attr == "parent":
        return ".parent.parent"
    if isinstance(node, ast.Constant) and isinstance(node.value, str) \
            and re.search(r"(^|[/\\])\.\.([/\\]|$)|\bbenchmarks\b|\bchapters\b", node.value):
        return repr(node.value)
    return None


def test_no_module_reads_files_outside_the_package():
    # Installed from a wheel, attnlib has no checkout around it: a module that looked for benchmarks/results or a
    # chapter through its own path would silently find nothing. Such code belongs to the book (chapters/booktools).
    found = []
    for path in sorted((ROOT / "attnlib").rglob("*.py")):
        tree = ast.parse(path.read_text())
        docstrings = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Expr)}
        for node in ast.walk(tree):
            what = None if id(node) in docstrings else _reaches_outside(node)
            if what:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {what}")
    assert found == []


def test_imports_from_the_wheel_alone(wheel, tmp_path):
    zipfile.ZipFile(wheel).extractall(tmp_path / "site")
    site = str(tmp_path / "site")
    # The development checkout is installed editable; hide its import hook so only the wheel's files can load.
    code = (f"import sys; sys.meta_path = [f for f in sys.meta_path if 'editable' not in repr(f).lower()]; "
            f"sys.path.insert(0, {site!r}); import attnlib, attnlib.numpy, attnlib.torch; "
            f"assert attnlib.numpy.__file__.startswith({site!r}), attnlib.numpy.__file__")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]


def test_the_numpy_half_works_where_torch_is_not_installed(tmp_path):
    # `pip install .` depends on NumPy only: attnlib.numpy, attnlib.traffic and a whole NumPy model must run without
    # torch, and asking for attnlib.torch must then fail on torch itself, not on something of ours.
    code = (
        "import sys; sys.modules['torch'] = None\n"  # makes `import torch` raise ImportError, as if not installed
        "import numpy as np, attnlib, attnlib.numpy as an, attnlib.traffic\n"
        "model = an.TransformerLM(11, 8, 2, 16, 2, 16, seed=0)\n"
        "ids = model.generate(np.array([[1, 2]]), 3)\n"
        "assert ids.shape == (1, 5) and (ids == model.generate(np.array([[1, 2]]), 3, use_kv_cache=False)).all()\n"
        "try:\n    import attnlib.torch\nexcept ImportError as error:\n    assert 'torch' in str(error), error\n"
        "else:\n    raise AssertionError('attnlib.torch imported without torch')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
