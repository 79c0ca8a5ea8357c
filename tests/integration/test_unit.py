"""Runs each unit-test program (tests/unit/test-*.c) as one case, so one runner counts all."""
import subprocess

import pytest

from conftest import BUILD

UNITS = sorted((BUILD / "tests" / "unit").glob("test-*"))
UNITS = [u for u in UNITS if u.is_file() and u.stat().st_mode & 0o111]


def test_unit_programs_were_built():
    assert UNITS, f"no unit-test programs under {BUILD}/tests/unit: build first"


@pytest.mark.parametrize("prog", UNITS, ids=[u.name for u in UNITS])
def test_unit(prog):
    r = subprocess.run([str(prog)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
