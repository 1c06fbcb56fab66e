"""Rich results: matplotlib figures (PNG and chart data) and pandas DataFrames."""

import base64


def test_plain_matplotlib_plot_gives_png_text_and_empty_extra(sbx):
    execution = sbx.run_code(
        "import matplotlib.pyplot as plt\n"
        "plt.plot([1, 2, 3], [4, 5, 6])\n"
        "plt.show()"
    )
    assert execution.error is None
    assert len(execution.results) == 1
    r = execution.results[0]
    assert base64.b64decode(r.png)[:8] == b"\x89PNG\r\n\x1a\n"
    assert r.text.startswith("<Figure")
    assert r.extra == {}
    assert not r.is_main_result
    assert "png" in r.formats()


def test_line_chart_data(sbx):
    from e2b_code_interpreter.charts import ChartType, LineChart

    execution = sbx.run_code(
        "import matplotlib.pyplot as plt\n"
        "fig, ax = plt.subplots()\n"
        "ax.plot([1, 2, 3], [2, 4, 8], label='growth')\n"
        "ax.set_title('Growth')\n"
        "ax.set_xlabel('time (s)')\n"
        "ax.set_ylabel('size [MB]')\n"
        "ax.legend()\n"
        "plt.show()"
    )
    chart = execution.results[0].chart
    assert isinstance(chart, LineChart)
    assert chart.type == ChartType.LINE
    assert chart.title == "Growth"
    assert chart.x_label == "time (s)" and chart.x_unit == "s"
    assert chart.y_unit == "MB"
    assert len(chart.elements) == 1
    assert chart.elements[0].label == "growth"
    assert [tuple(p) for p in chart.elements[0].points] == [(1, 2), (2, 4), (3, 8)]


def test_bar_chart_data(sbx):
    from e2b_code_interpreter.charts import ChartType

    execution = sbx.run_code(
        "import matplotlib.pyplot as plt\n"
        "plt.bar(['a', 'b', 'c'], [3, 1, 2])\n"
        "plt.title('Bars')\n"
        "plt.show()"
    )
    chart = execution.results[0].chart
    assert chart.type == ChartType.BAR
    assert {(e.label, e.value) for e in chart.elements} == {("a", 3), ("b", 1), ("c", 2)}


def test_dataframe_as_html_and_data(sbx):
    execution = sbx.run_code(
        "import pandas as pd\n"
        "pd.DataFrame({'name': ['a', 'b'], 'value': [1.5, float('nan')],"
        " 'when': pd.to_datetime(['2024-01-01', '2024-01-02'])})"
    )
    assert execution.error is None
    r = execution.results[0]
    assert r.is_main_result
    assert "<table" in r.html
    assert r.data["name"] == ["a", "b"]
    assert r.data["value"] == [1.5, None]
    assert r.data["when"][0].startswith("2024-01-01T00:00:00")
    assert r.extra == {}


def test_figure_and_dataframe_in_one_cell(sbx):
    execution = sbx.run_code(
        "import matplotlib.pyplot as plt, pandas as pd\n"
        "plt.plot([0, 1]); plt.show()\n"
        "display(pd.DataFrame({'x': [1]}))\n"
        "42"
    )
    kinds = [("png" if r.png else "data" if r.data else r.text) for r in execution.results]
    assert kinds == ["png", "data", "42"]
    assert execution.text == "42"
