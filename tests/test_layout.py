"""The package layout's rules: imports run scripts -> pipeline -> codec -> models, and the
configuration (with the names of modes and entropy models) loads without TensorFlow."""
import ast
import os
import subprocess
import sys

import pytest

from helpers import ROOT

# A package may import itself and the ones after it in this list, never the ones before.
LAYERS = ["bench", "pipeline", "codec", "models"]


def _imported_packages(path):
    tree = ast.parse(open(path).read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            yield node.module.split(".")[0]


@pytest.mark.parametrize("package", LAYERS)
def test_no_module_imports_upward(package):
    above = set(LAYERS[:LAYERS.index(package)])
    offending = []
    for folder, _, files in os.walk(os.path.join(ROOT, package)):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                offending += [f"{os.path.relpath(path, ROOT)} imports {p}"
                              for p in _imported_packages(path) if p in above]
    assert not offending


def test_config_imports_no_tensorflow():
    code = ("import sys, models.config; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'tensorflow'))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == "[]"
