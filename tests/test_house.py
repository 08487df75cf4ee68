"""Housekeeping (issue 25): documentation links resolve, no build machine's paths in tracked
files, every CLI answers --help, no sys.path edits, no import cycles."""
import ast
import glob
import os
import re
import subprocess
import sys

import pytest

from helpers import ROOT, with_repo_path

DOCS = ["README.md"] + sorted(os.path.relpath(p, ROOT)
                              for p in glob.glob(os.path.join(ROOT, "docs", "*.md")))
# Written in pieces so that this file does not match itself.
MACHINE_PATH = re.compile("/" + "(?:work|root|home)" + "/")
SYS_PATH_EDIT = re.compile(r"sys\.path\s*(?:\.(?:insert|append|extend)\s*\(|\[[^]]*\]\s*=|\+?=)")


def _tracked_files():
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True)
    return [name for name in out.stdout.decode().split("\0") if name]


# --- links -----------------------------------------------------------------------------------

def _anchors(text):
    """GitHub's anchors of a markdown text: one per heading (lower case, punctuation dropped,
    spaces to hyphens, -1, -2... for repeats) and every explicit <a id="...">."""
    anchors, seen = set(), {}
    in_code = False
    for line in text.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        heading = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if heading and not in_code:
            slug = heading.group(1).strip().lower()
            slug = re.sub(r"[^\w\- ]", "", slug).replace(" ", "-")
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            anchors.add(slug if count == 0 else f"{slug}-{count}")
    anchors.update(re.findall(r"<a\s+(?:id|name)=\"([^\"]+)\"", text))
    return anchors


def _links(text):
    """(target) of every inline markdown link outside code blocks and code spans."""
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    text = re.sub(r"`[^`\n]*`", "", text)
    return re.findall(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", text)


@pytest.mark.parametrize("doc", DOCS)
def test_every_relative_link_and_anchor_resolves(doc):
    with open(os.path.join(ROOT, doc), encoding="utf-8") as f:
        text = f.read()
    broken = []
    for target in _links(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        resolved = os.path.normpath(os.path.join(ROOT, os.path.dirname(doc), path)) \
            if path else os.path.join(ROOT, doc)
        if not os.path.exists(resolved):
            broken.append(f"{target}: no file {os.path.relpath(resolved, ROOT)}")
        elif anchor and resolved.endswith(".md"):
            with open(resolved, encoding="utf-8") as f:
                if anchor not in _anchors(f.read()):
                    broken.append(f"{target}: no anchor #{anchor}")
    assert not broken, f"{doc}: " + "; ".join(broken)


def test_the_anchor_rules():
    text = "# Quick start (Python 3.11)\n## Tests\n## Tests\n```\n# not a heading\n```\n" \
           '<a id="bpp-fields"></a>\n'
    assert _anchors(text) == {"quick-start-python-311", "tests", "tests-1", "bpp-fields"}
    assert _links("[a](docs/x.md#y) `[b](c.md)` [d](https://e)") == ["docs/x.md#y", "https://e"]


def test_readme_is_short_and_its_test_command_is_ci_s():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    with open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8") as f:
        ci = f.read()
    command = "python -m pytest -q -n 2 --dist loadfile tests"
    assert len(readme.splitlines()) <= 350
    assert command in readme and command in ci


# --- paths -----------------------------------------------------------------------------------

def test_no_tracked_file_holds_a_build_machine_path():
    found = []
    for name in _tracked_files():
        path = os.path.join(ROOT, name)
        if not os.path.isfile(path) or os.path.getsize(path) > 20 * 2 ** 20:
            continue
        with open(path, "rb") as f:
            data = f.read()
        if b"\0" in data[:8192]:  # binary (PNG, npz)
            continue
        for number, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
            if MACHINE_PATH.search(line):
                found.append(f"{name}:{number}: {line.strip()[:120]}")
    assert not found, "\n".join(found[:50])


def test_no_sys_path_edits_in_bench_or_tests():
    found = []
    for name in _tracked_files():
        if name.endswith(".py") and name.split("/")[0] in ("bench", "tests"):
            with open(os.path.join(ROOT, name), encoding="utf-8") as f:
                for number, line in enumerate(f, 1):
                    if SYS_PATH_EDIT.search(line.split("#")[0]):
                        found.append(f"{name}:{number}: {line.strip()}")
    assert not found, "\n".join(found)
    assert SYS_PATH_EDIT.search("sys.path" + ".insert(0, ROOT)")  # in pieces: not a match here
    assert not SYS_PATH_EDIT.search("print(sys.path)")


# --- every CLI answers --help --------------------------------------------------------------------

def _command_line_modules():
    """Top-level scripts and the bench modules with a __main__ block (or a __main__.py)."""
    scripts, modules = [], []
    for name in _tracked_files():
        if not name.endswith(".py"):
            continue
        with open(os.path.join(ROOT, name), encoding="utf-8") as f:
            source = f.read()
        if "/" not in name and "__main__" in source:
            scripts.append(name)
        elif name.startswith("bench/") and ("__name__ == \"__main__\"" in source
                                            or name.endswith("/__main__.py")):
            module = name[:-3].replace("/", ".")
            modules.append(module[:-len(".__main__")] if module.endswith(".__main__")
                           else module)
    return sorted(scripts), sorted(modules)


def test_every_bench_module_and_script_answers_help():
    scripts, modules = _command_line_modules()
    assert {"train_quality.py", "eval_spatial.py"} <= set(scripts)
    assert {"bench.rd", "bench.train_speed", "bench.speed"} <= set(modules)
    commands = [[sys.executable, script, "--help"] for script in scripts] + \
               [[sys.executable, "-m", module, "--help"] for module in modules]
    # Fresh processes from the repository root, at most two at a time (two cores).
    env = with_repo_path(os.environ)
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    failed = []
    for start in range(0, len(commands), 2):
        running = [(cmd, subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True))
                   for cmd in commands[start:start + 2]]
        for cmd, process in running:
            out, err = process.communicate(timeout=120)
            if process.returncode != 0 or "usage:" not in out.lower():
                failed.append(f"{' '.join(cmd[1:])}: exit {process.returncode}\n{err[-800:]}")
    assert not failed, "\n".join(failed)


# --- imports ---------------------------------------------------------------------------------

def _module_names():
    """{dotted module name: path} of every tracked Python file (tests/ as top-level modules,
    as pytest imports them)."""
    names = {}
    for name in _tracked_files():
        if name.endswith(".py"):
            parts = name[:-3].split("/")
            if parts[0] == "tests":
                parts = parts[1:]
            if parts[-1] == "__init__":
                parts = parts[:-1]
            names[".".join(parts)] = name
    return names


def _imports(path, module, names):
    """The repo's modules that `path` imports anywhere (also inside functions)."""
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    found = set()
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(p for p in parent + [base] if p)
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in names else base
                       for alias in node.names]
        else:
            continue
        found.update(t for t in targets if t in names and t != module)
    return found


def _cycles(graph):
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, components = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in graph.get(node, ()):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                other = stack.pop()
                on_stack.discard(other)
                component.append(other)
                if other == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def test_no_import_cycles():
    names = _module_names()
    graph = {module: _imports(path, module, names) for module, path in names.items()}
    assert "pipeline.checkpoints" in graph["pipeline.pretrained"]
    assert not _cycles(graph)
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_results_record_paths_relative_to_the_repository_or_the_folder_given():
    from bench.results_io import REPO, shown_command, shown_path
    from pipeline.evaluation import recorded_names
    assert shown_path(os.path.join(REPO, "runs", "q")) == os.path.join("runs", "q")
    assert shown_path("kodak/") == "kodak/"
    assert shown_path("/data/kodak", "--kodak") == "$KODAK"
    assert shown_path("/data/kodak/") == "kodak"
    assert shown_command("bench.portable", ["--checkpoint_dir", "/x/ship", "--runs", "3"]) == \
        "python -m bench.portable --checkpoint_dir $CHECKPOINT_DIR --runs 3"
    assert recorded_names(["/d/k/a.png", "/d/k/b.png"]) == {"/d/k/a.png": "a.png",
                                                            "/d/k/b.png": "b.png"}
    assert recorded_names(["/d/t/x/a.png", "/d/t/y/b.png"]) == {
        "/d/t/x/a.png": os.path.join("x", "a.png"), "/d/t/y/b.png": os.path.join("y", "b.png")}
    assert recorded_names(["photo.png"]) == {"photo.png": "photo.png"}


def test_the_main_scripts_answer_help_without_loading_tensorflow():
    """--help is instant: TensorFlow loads in main, after the flags are parsed."""
    probe = ("import atexit, runpy, sys\n"
             "atexit.register(lambda: print('tensorflow loaded:', 'tensorflow' in sys.modules))\n"
             "sys.argv = [sys.argv[1], '--help']\n"
             "runpy.run_path(sys.argv[0], run_name='__main__')\n")
    env = with_repo_path(os.environ)
    for script in ("train_quality.py", "train_spatial.py", "eval_quality.py", "eval_spatial.py",
                   "lsic.py"):
        result = subprocess.run([sys.executable, "-c", probe, script], cwd=ROOT, env=env,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0 and "usage:" in result.stdout.lower(), result.stderr
        assert "tensorflow loaded: False" in result.stdout, script
