"""The suite runs in float32 on every CPU: ``--precision auto`` (the recipes' default) would train in bfloat16 on a
CPU with AMX and in float32 elsewhere, and the tests must not depend on the CPU kind. Tests of the automatic choice
remove the variable themselves (monkeypatch)."""
import os

os.environ["KCNN_PRECISION"] = "float32"  # the test process and the recipes it starts as subprocesses
