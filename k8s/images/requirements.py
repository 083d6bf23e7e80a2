"""Print what `pip install ".[EXTRAS]"` would ask for, from pyproject.toml alone.

Usage: python k8s/images/requirements.py "<extras>" [pyproject.toml] > requirements.txt

One requirement a line: the project's dependencies, then those of each extra named (comma
separated), following the extras that name the project itself (`atalaya[memory-store]`). The
image builds install these with the lock (or requirements/gpu.txt) as constraints before the
source is copied, so editing the source does not reinstall (or recompile) the dependencies.
Standard library only: it runs on the bare base image. pip has no option that installs a
project's dependencies without the project, hence this file.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path
from typing import Any


def requirements(pyproject: dict[str, Any], extras: list[str]) -> list[str]:
    project = pyproject["project"]
    optional: dict[str, list[str]] = project.get("optional-dependencies", {})
    self_reference = re.compile(rf"{re.escape(project['name'])}\[([^\]]+)\]")
    wanted: list[str] = list(project["dependencies"])
    seen: set[str] = set()
    todo = [e.strip() for e in extras if e.strip()]
    while todo:
        extra = todo.pop(0)
        if extra in seen:
            continue
        if extra not in optional:
            raise SystemExit(f"pyproject.toml has no extra {extra!r}")
        seen.add(extra)
        for requirement in optional[extra]:
            match = self_reference.fullmatch(requirement.replace(" ", ""))
            if match:
                todo.extend(match.group(1).split(","))
            else:
                wanted.append(requirement)
    return list(dict.fromkeys(wanted))


def main(argv: list[str]) -> None:
    extras = argv[1].split(",") if len(argv) > 1 else []
    path = Path(argv[2]) if len(argv) > 2 else Path("pyproject.toml")
    for line in requirements(tomllib.loads(path.read_text()), extras):
        print(line)


if __name__ == "__main__":
    main(sys.argv)
