"""The fuzzer (`make fuzz`, `python -m loadtests.fuzz`): Hypothesis strategies built
from the proto descriptors (strategies), the wire format they write (wire), the
run against a local stack (run) and the check of what the memory store kept
(stored)."""
