"""Running code in the default Python context: state, output, errors, counts."""

import time

import pytest


def test_state_persists_across_calls(sbx):
    sbx.run_code("persisted_value = 41")
    execution = sbx.run_code("persisted_value += 1; persisted_value")
    assert execution.error is None
    assert execution.text == "42"


def test_stdout_and_stderr_are_separate_whole_messages(sbx):
    execution = sbx.run_code("import sys\nprint('Hello, World!')\nprint('oops', file=sys.stderr)")
    assert execution.logs.stdout == ["Hello, World!\n"]
    assert execution.logs.stderr == ["oops\n"]
    assert execution.results == []


def test_callbacks_arrive_while_the_cell_is_still_running(sbx):
    seen = []

    def on_stdout(msg):
        seen.append((time.monotonic(), msg.line, msg.error, msg.timestamp))

    errs = []
    start = time.monotonic()
    execution = sbx.run_code(
        "import sys, time\nprint('first', flush=True)\ntime.sleep(1.5)\nprint('second')\nprint('e', file=sys.stderr)",
        on_stdout=on_stdout,
        on_stderr=lambda m: errs.append(m),
    )
    end = time.monotonic()
    assert [s[1] for s in seen] == ["first\n", "second\n"]
    assert seen[0][2] is False
    assert seen[0][3], "stdout messages carry the kernel's timestamp"
    # The first line was delivered well before the execution finished: streaming, not buffering.
    assert seen[0][0] - start < end - start - 1.0
    assert [m.line for m in errs] == ["e\n"] and errs[0].error is True
    assert execution.logs.stdout == ["first\n", "second\n"]


def test_exception_name_value_and_traceback(sbx):
    errors = []
    execution = sbx.run_code("def f():\n    raise ValueError('bad value')\nf()", on_error=errors.append)
    assert execution.error is not None
    assert execution.error.name == "ValueError"
    assert execution.error.value == "bad value"
    assert "ValueError" in execution.error.traceback
    assert "f()" in execution.error.traceback
    assert "\x1b[" not in execution.error.traceback, "tracebacks are not colour-coded"
    assert errors and errors[0].name == "ValueError"
    # The kernel is fine afterwards.
    assert sbx.run_code("1 + 1").text == "2"


def test_name_error_after_error(sbx):
    execution = sbx.run_code("undefined_name_xyz")
    assert execution.error.name == "NameError"
    assert execution.error.value == "name 'undefined_name_xyz' is not defined"


def test_execution_count_grows_per_context(sbx):
    ctx = sbx.create_code_context()
    first = sbx.run_code("x = 1", context=ctx)
    second = sbx.run_code("x", context=ctx)
    assert first.execution_count == 1
    assert second.execution_count == 2
    assert second.text == "1"


def test_result_text_quotes_are_stripped(sbx):
    assert sbx.run_code("'hello'").text == "hello"
    assert sbx.run_code('"it\'s"').text == "it's"


def test_display_of_several_objects(sbx):
    results = []
    execution = sbx.run_code(
        "from IPython.display import display, HTML, Markdown, Latex, JSON, Javascript, SVG\n"
        "display(HTML('<b>bold</b>'))\n"
        "display(Markdown('# title'))\n"
        "display(Latex(r'$x^2$'))\n"
        "display(SVG('<svg xmlns=\"http://www.w3.org/2000/svg\"></svg>'))\n"
        "display(Javascript('console.log(1)'))\n"
        "display({'mime/custom': 'custom payload', 'text/plain': 'plain'}, raw=True)\n"
        "[1, 2, {'a': 3}]",
        on_result=results.append,
    )
    assert execution.error is None
    r = execution.results
    assert len(r) == 7 and len(results) == 7
    assert r[0].html == "<b>bold</b>" and not r[0].is_main_result
    assert r[1].markdown == "# title"
    assert r[2].latex == "$x^2$"
    assert r[3].svg.startswith("<svg")
    assert r[4].javascript == "console.log(1)"
    assert r[5].text == "plain" and r[5].extra == {"mime/custom": "custom payload"}
    main = r[6]
    assert main.is_main_result
    assert main.json == [1, 2, {"a": 3}]
    assert main.text == "[1, 2, {'a': 3}]"
    assert execution.text == "[1, 2, {'a': 3}]"


def test_empty_and_whitespace_code(sbx):
    for code in ["", "   \n\n"]:
        execution = sbx.run_code(code)
        assert execution.error is None
        assert execution.results == []
        assert execution.logs.stdout == []


def test_ten_megabyte_code_string(sbx):
    payload = "a" * (10 * 1024 * 1024)
    execution = sbx.run_code(f"big = '{payload}'\nlen(big)", timeout=120)
    assert execution.error is None
    assert execution.text == str(len(payload))


def test_reconnect_from_a_second_client(sbx):
    from e2b_code_interpreter import Sandbox

    sbx.run_code("shared_between_clients = 'kept'")
    other = Sandbox.connect(sbx.sandbox_id)
    assert other.run_code("shared_between_clients").text == "kept"


@pytest.mark.asyncio
async def test_async_client_streams_too(sbx):
    from e2b_code_interpreter import AsyncSandbox

    asbx = await AsyncSandbox.connect(sbx.sandbox_id)
    lines = []
    execution = await asbx.run_code("for i in range(3): print(i)", on_stdout=lambda m: lines.append(m.line))
    assert "".join(lines) == "0\n1\n2\n"
    assert execution.error is None
