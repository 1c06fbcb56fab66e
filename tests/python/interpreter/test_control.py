"""Execution control: timeouts, interrupts, crashes, environment variables."""

import time

import pytest
from e2b import TimeoutException


def test_timeout_interrupts_and_the_next_run_is_not_blocked(sbx):
    ctx = sbx.create_code_context()
    sbx.run_code("survivor = 'still here'", context=ctx)
    start = time.monotonic()
    with pytest.raises(TimeoutException):
        sbx.run_code("import time\ntime.sleep(300)", context=ctx, timeout=3)
    assert time.monotonic() - start < 10
    start = time.monotonic()
    execution = sbx.run_code("1 + 1", context=ctx, timeout=10)
    assert execution.text == "2"
    assert time.monotonic() - start < 5
    # An interrupt, not a restart: state survives.
    assert sbx.run_code("survivor", context=ctx).text == "still here"


def test_timeout_in_javascript_recovers(sbx):
    ctx = sbx.create_code_context(language="js")
    with pytest.raises(TimeoutException):
        sbx.run_code("await new Promise(r => setTimeout(r, 300000))", context=ctx, timeout=3)
    assert sbx.run_code("1 + 1", context=ctx, timeout=15).text == "2"


def test_executions_in_one_context_run_one_at_a_time(sbx):
    import threading

    ctx = sbx.create_code_context()
    sbx.run_code("import time\norder = []", context=ctx)
    out = {}

    def run(name, delay):
        code = f"order.append('{name}-start'); time.sleep({delay}); order.append('{name}-end')"
        out[name] = sbx.run_code(code, context=ctx)

    t = threading.Thread(target=run, args=("a", 1.0))
    t.start()
    time.sleep(0.3)
    run("b", 0)
    t.join()
    assert out["a"].error is None and out["b"].error is None
    assert sbx.run_code("order", context=ctx).results[0].json == ["a-start", "a-end", "b-start", "b-end"]


def test_crashed_kernel_reports_and_comes_back(sbx):
    ctx = sbx.create_code_context()
    sbx.run_code("lost = 1", context=ctx)
    execution = sbx.run_code("import os\nos._exit(3)", context=ctx)
    assert execution.error is not None, execution
    assert execution.error.name == "ContextRestarting", execution.error
    assert "exited with status 3" in execution.error.traceback, execution.error
    after = sbx.run_code("lost", context=ctx)
    assert after.error is not None and after.error.name == "NameError", after
    assert sbx.run_code("1 + 1", context=ctx).text == "2"


def test_env_vars_per_execution_python(sbx):
    ctx = sbx.create_code_context()
    value = "it's \"quoted\"\nand $HOME"
    execution = sbx.run_code("import os; print(os.getenv('PER_EXEC'))", context=ctx, envs={"PER_EXEC": value})
    assert execution.logs.stdout == [value + "\n"]
    # Only for that execution.
    assert sbx.run_code("import os; os.getenv('PER_EXEC') is None", context=ctx).text == "True"


def test_env_vars_per_execution_javascript_and_bash(sbx):
    assert sbx.run_code("process.env.JS_VAR", language="js", envs={"JS_VAR": "js-value"}).text == "js-value"
    assert sbx.run_code("process.env.JS_VAR === undefined", language="js").text == "true"
    execution = sbx.run_code("echo $BASH_VAR", language="bash", envs={"BASH_VAR": "bash value"})
    assert execution.logs.stdout == ["bash value\n"]
    assert sbx.run_code("echo \"[$BASH_VAR]\"", language="bash").logs.stdout == ["[]\n"]


def test_sandbox_env_vars_and_overrides(fresh_sbx):
    sbx = fresh_sbx
    assert sbx.run_code("import os; os.getenv('SBX_GLOBAL')").text == "from-sandbox"
    assert sbx.run_code("import os; os.getenv('FOO')", envs={"FOO": "override"}).text == "override"
    assert sbx.run_code("import os; os.getenv('FOO')").text == "global-foo"
    assert sbx.run_code("process.env.SBX_GLOBAL", language="js").text == "from-sandbox"
