"""README.md's Python examples, extracted from the README and run as a user would run them (a
separate Python process with the E2B_* variables set), and its `pip install` pins, which must be
one of the tested SDK rows (requirements-*.txt)."""

import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", README, flags=re.S | re.M)


def _pins(text: str) -> dict[str, str]:
    return dict(re.findall(r"^([a-z0-9-]+)==(\S+)$", text, flags=re.M))


def _example(marker: str) -> str:
    found = [b for b in _blocks("python") if marker in b]
    assert len(found) == 1, f"expected one README python block with {marker!r}, found {len(found)}"
    return found[0]


def _run(code: str, cwd: pathlib.Path) -> str:
    r = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"README example failed:\n{code}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    return r.stdout


def test_readme_pip_pins_are_a_tested_row():
    lines = [ln for b in _blocks("sh") for ln in b.splitlines() if ln.startswith("pip install ")]
    assert lines, "README has no `pip install` line"
    rows = {
        p.name: _pins(p.read_text()) for p in (ROOT / "tests" / "python").glob("requirements-*.txt")
    }
    for line in lines:
        pins = dict(arg.split("==", 1) for arg in line.split()[2:])
        assert set(pins) == {"e2b", "e2b-code-interpreter"}, f"{line!r}: pin both packages"
        assert any(
            all(row.get(k) == v for k, v in pins.items()) for row in rows.values()
        ), f"{line!r} is not a tested row: {rows}"


def test_readme_python_example(tmp_path):
    out = _run(_example("from e2b import Sandbox"), tmp_path)
    assert out == "hello from the sandbox\n\nwritten from the host\n"


@pytest.mark.timeout(180)
def test_readme_code_interpreter_example(tmp_path):
    _run(_example("from e2b_code_interpreter import Sandbox"), tmp_path)
    data = (tmp_path / "plot.png").read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 1000
