"""Parity with E2B's own code-interpreter template: its Python packages, PIL images that are
saved or shown, multi-axes figures (SuperChart), and `text/plain` quotes."""

import base64

import pytest

# The template's requirements list (scripts/interpreter-requirements.txt), as import names.
PACKAGES = [
    "numpy", "pandas", "matplotlib", "scipy", "sklearn", "seaborn", "plotly", "requests", "bs4",
    "openpyxl", "sympy", "PIL", "aiohttp", "bokeh", "gensim", "imageio", "joblib", "librosa",
    "nltk", "cv2", "docx", "pytz", "skimage", "soundfile", "spacy", "textblob", "urllib3",
    "xarray", "xlrd", "orjson", "e2b_charts",
]


def test_template_packages_import(sbx):
    code = "import importlib\n" + "\n".join(f"importlib.import_module({p!r})" for p in PACKAGES)
    code += "\nimport numpy, pandas, matplotlib, PIL\n(numpy.__version__, pandas.__version__, matplotlib.__version__, PIL.__version__)"
    execution = sbx.run_code(code, timeout=240)
    assert execution.error is None, execution.error
    # the template's pins, one consistent set (no Debian numpy under a layer pandas)
    assert execution.text == "('1.26.4', '1.5.3', '3.9.2', '9.5.0')"


def _png_size(b64: str):
    raw = base64.b64decode(b64)
    assert raw[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(raw[16:20], "big"), int.from_bytes(raw[20:24], "big")


def test_pil_image_save_gives_an_image_result(sbx):
    execution = sbx.run_code(
        "from PIL import Image\n"
        "img = Image.new('RGB', (32, 16), 'red')\n"
        "img.save('/tmp/red.png')\n"
        "img.save('/tmp/red.jpg', 'JPEG')\n"
        "import io; img.save(io.BytesIO(), 'PNG')  # not a path: no result\n"
    )
    assert execution.error is None, execution.error
    assert len(execution.results) == 2
    for r in execution.results:
        assert not r.is_main_result
        assert _png_size(r.png) == (32, 16)
        assert "PIL" in r.text and not r.extra
    # the files are written too
    assert sbx.files.read("/tmp/red.png", format="bytes")[:4] == b"\x89PNG"


def test_pil_image_show_gives_an_image_result(sbx):
    execution = sbx.run_code("from PIL import Image\nImage.new('L', (8, 8)).show()")
    assert execution.error is None, execution.error
    assert [_png_size(r.png) for r in execution.results] == [(8, 8)]


def test_multi_axes_figure_is_a_superchart(sbx):
    from e2b_code_interpreter.charts import ChartType

    execution = sbx.run_code(
        "import matplotlib.pyplot as plt\n"
        "fig, (a, b) = plt.subplots(1, 2)\n"
        "fig.suptitle('Two')\n"
        "a.plot([1, 2, 3], [1, 4, 9]); a.set_title('line')\n"
        "b.bar(['x', 'y'], [3, 5]); b.set_title('bars')\n"
        "plt.show()\n"
    )
    assert execution.error is None, execution.error
    [r] = execution.results
    assert r.png and not r.extra
    chart = r.chart
    assert chart.type == ChartType.SUPERCHART
    assert chart.title == "Two"
    assert [(c.type, c.title) for c in chart.elements] == [
        (ChartType.LINE, "line"),
        (ChartType.BAR, "bars"),
    ]


@pytest.mark.parametrize(
    "code,text",
    [("'hi'", "hi"), ('"say \\"x\\""', "say \"x\""), ("\"it's\"", "it's"), ("42", "42")],
)
def test_text_plain_quotes_like_upstream(sbx, code, text):
    # upstream strips one pair of surrounding ' or " from text/plain (both kinds)
    assert sbx.run_code(code).text == text
