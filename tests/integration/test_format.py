"""The code follows .clang-format (tools/check-format.sh --fix rewrites it)."""
import subprocess

from conftest import ROOT


def test_clang_format_clean():
    r = subprocess.run([str(ROOT / "tools" / "check-format.sh")], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
