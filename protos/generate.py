"""Generate the Python stubs of the Atalaya protos, or check that they are fresh.

    python protos/generate.py            # (re)write protos/python/
    python protos/generate.py --check    # exit 1 when protos/python/ is stale

Output is deterministic for the pinned grpcio-tools and mypy-protobuf versions
(requirements/lock.txt), so the committed stubs can be compared byte for byte.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent
OUT_DIR = PROTO_ROOT / "python"
BIN_DIR = Path(sys.executable).parent


def proto_files() -> list[Path]:
    return sorted(PROTO_ROOT.glob("atalaya/*/v*/*.proto"))


def generate(out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    files = [str(p.relative_to(PROTO_ROOT)) for p in proto_files()]
    cmd = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"--proto_path={PROTO_ROOT}",
        f"--plugin=protoc-gen-mypy={BIN_DIR / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={BIN_DIR / 'protoc-gen-mypy_grpc'}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--mypy_out={out_dir}",
        f"--mypy_grpc_out={out_dir}",
        *files,
    ]
    done = subprocess.run(  # noqa: S603 - fixed argv, no shell
        cmd, cwd=PROTO_ROOT, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        sys.stderr.write(done.stderr)
        raise SystemExit(f"protoc failed with exit code {done.returncode}")
    # Regular packages, so setuptools and mypy find them.
    for module in out_dir.rglob("*.py"):
        for pkg in module.parents:
            if pkg == out_dir:
                break
            (pkg / "__init__.py").touch()
    (out_dir / "atalaya" / "py.typed").touch()


def stale_files(expected: Path, actual: Path) -> list[str]:
    """Relative paths that differ, are missing, or are extra in `actual`."""
    want = {p.relative_to(expected) for p in expected.rglob("*") if p.is_file()}
    have = {
        p.relative_to(actual)
        for p in actual.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    diffs = sorted(str(p) for p in want ^ have)
    diffs += sorted(
        str(p) for p in want & have if not filecmp.cmp(expected / p, actual / p, shallow=False)
    )
    return diffs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the stubs are stale")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp) / "python"
        generate(fresh)
        diffs = stale_files(fresh, OUT_DIR)
        if args.check:
            if diffs:
                print("stale generated stubs (run `make proto`):", *diffs, sep="\n  ")
                return 1
            return 0
        if diffs:
            shutil.rmtree(OUT_DIR, ignore_errors=True)
            shutil.copytree(fresh, OUT_DIR)
            print(f"regenerated {len(diffs)} file(s) in {OUT_DIR.relative_to(Path.cwd())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
