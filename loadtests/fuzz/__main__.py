"""python -m loadtests.fuzz: see loadtests.fuzz.run."""

from __future__ import annotations

from loadtests.fuzz.run import main

if __name__ == "__main__":
    raise SystemExit(main())
