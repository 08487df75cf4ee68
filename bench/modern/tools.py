"""External programs of the anchors: which are present, their versions, running them."""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import tempfile
from typing import Dict, List, Sequence


def missing(requires: Sequence[str]) -> List[str]:
    """The requirements absent here: executables by name, Python modules as "py:<module>"."""
    out = []
    for name in requires:
        if name.startswith("py:"):
            if importlib.util.find_spec(name[3:]) is None:
                out.append(f"Python module {name[3:]}")
        elif shutil.which(name) is None:
            out.append(f"program {name}")
    return out


def run(cmd: Sequence[str]) -> subprocess.CompletedProcess:
    """Runs ``cmd``; RuntimeError with its stderr when it fails."""
    proc = subprocess.run(list(cmd), capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return proc


def through_files(data: bytes, command: str, source: str, target: str, **fields) -> bytes:
    """Write ``data`` to a temporary file named ``source``, run ``command`` (a format string
    whose fields include the two file names, {source stem} and {target stem}) and return the
    bytes of ``target``."""
    with tempfile.TemporaryDirectory() as tmp:
        paths = {name: os.path.join(tmp, name) for name in (source, target)}
        with open(paths[source], "wb") as f:
            f.write(data)
        names = {os.path.splitext(n)[1].lstrip("."): p for n, p in paths.items()}
        run(command.format(**names, **fields).split())
        with open(paths[target], "rb") as f:
            return f.read()


def version_line(cmd: Sequence[str], contains: str = "") -> str:
    """The first line of a version command's output (stdout then stderr) that holds
    ``contains``; "" when the program is absent or prints nothing."""
    try:
        proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    for line in (proc.stdout + "\n" + proc.stderr).splitlines():
        line = line.strip()
        if line and contains.lower() in line.lower():
            return line.replace("x265 [info]: ", "").split(" Copyright")[0]
    return ""


def debian_version(package: str) -> str:
    """The installed version of a Debian package, or "" (not Debian, or not installed)."""
    return version_line(["dpkg-query", "-W", "-f=${Version}", package])


def versions(programs: Dict[str, tuple]) -> Dict[str, str]:
    """{label: version line} for {label: (version command, substring, Debian package)}."""
    out = {}
    for label, (cmd, contains, package) in programs.items():
        line = version_line(cmd, contains)
        deb = debian_version(package) if package else ""
        out[label] = line + (f" (Debian {package} {deb})" if deb else "")
    return out
