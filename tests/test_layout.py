"""Tests a newcomer can find: the tests of services/<package>/<module>.py are in
tests/<package>/test_<module>.py (test_main.py for __main__), so a test file named
after nothing, or left behind by a move, fails here."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def module_under_test(test_file: Path, root: Path) -> Path:
    """services/<package>/<module> that tests/<package>/test_<module>.py is about."""
    name = test_file.stem.removeprefix("test_")
    return root / "services" / test_file.parent.name / ("__main__" if name == "main" else name)


def strays(root: Path) -> list[str]:
    packages = {p.name for p in (root / "services").iterdir() if (p / "__init__.py").exists()}
    out = []
    for folder in sorted((root / "tests").iterdir()):
        if folder.name not in packages:
            continue
        for test_file in sorted(folder.glob("test_*.py")):
            module = module_under_test(test_file, root)
            if not (module.with_suffix(".py").exists() or module.is_dir()):
                out.append(str(test_file.relative_to(root)))
    return out


def test_every_test_file_is_named_after_its_module() -> None:
    assert strays(ROOT) == []


def test_a_stray_test_file_is_found(tmp_path: Path) -> None:
    for path in ("services/memory/__init__.py", "services/memory/core.py",
                 "services/memory/__main__.py", "tests/memory/test_core.py",
                 "tests/memory/test_main.py", "tests/memory/test_store.py"):  # fmt: skip
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).touch()
    assert strays(tmp_path) == ["tests/memory/test_store.py"]
