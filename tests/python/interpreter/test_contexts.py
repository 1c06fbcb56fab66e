"""Contexts: create, list, remove, restart, languages and working directories."""

import pytest
from e2b import NotFoundException, SandboxException


def test_default_contexts_python_and_javascript(sbx):
    contexts = sbx.list_code_contexts()
    languages = [c.language for c in contexts]
    assert languages[:2] == ["python", "javascript"]
    assert all(c.cwd == "/home/user" for c in contexts[:2])


def test_create_context_is_listed_last(sbx):
    ctx = sbx.create_code_context()
    assert ctx.language == "python" and ctx.cwd == "/home/user"
    last = sbx.list_code_contexts()[-1]
    assert (last.id, last.language, last.cwd) == (ctx.id, ctx.language, ctx.cwd)


def test_context_with_cwd(sbx):
    ctx = sbx.create_code_context(language="python", cwd="/tmp")
    assert ctx.cwd == "/tmp"
    assert sbx.run_code("import os; os.getcwd()", context=ctx).text == "/tmp"
    assert sbx.list_code_contexts()[-1].cwd == "/tmp"


def test_contexts_are_isolated(sbx):
    a = sbx.create_code_context()
    b = sbx.create_code_context()
    sbx.run_code("only_in_a = 1", context=a)
    assert sbx.run_code("only_in_a", context=a).text == "1"
    assert sbx.run_code("only_in_a", context=b).error.name == "NameError"


def test_kernels_run_as_root_in_home_user_like_upstream(sbx):
    # E2B's template runs its Jupyter server, and so every kernel, as root
    assert sbx.run_code("import os; (os.getuid(), os.getcwd())").text == "(0, '/home/user')"
    ctx = sbx.create_code_context(cwd="/root")
    assert ctx.cwd == "/root"
    execution = sbx.run_code("open('/root/k.txt', 'w').write('x'); import os; os.getcwd()", context=ctx)
    assert execution.error is None, execution.error
    assert execution.text == "/root"
    assert "".join(sbx.run_code("whoami && pwd", language="bash").logs.stdout) == "root\n/home/user\n"


def test_remove_context(sbx):
    ctx = sbx.create_code_context()
    sbx.remove_code_context(ctx.id)
    assert ctx.id not in [c.id for c in sbx.list_code_contexts()]
    with pytest.raises(NotFoundException, match=f"Context {ctx.id} not found"):
        sbx.run_code("1", context=ctx)
    with pytest.raises(NotFoundException):
        sbx.remove_code_context(ctx.id)


def test_restart_clears_state_and_keeps_the_id(sbx):
    ctx = sbx.create_code_context()
    sbx.run_code("x = 1", context=ctx)
    sbx.restart_code_context(ctx)
    execution = sbx.run_code("x", context=ctx)
    assert execution.error is not None
    assert execution.error.name == "NameError"
    assert execution.error.value == "name 'x' is not defined"
    assert ctx.id in [c.id for c in sbx.list_code_contexts()]
    assert sbx.run_code("2 + 2", context=ctx).text == "4"


def test_unknown_context_is_404(sbx):
    from e2b_code_interpreter.models import Context

    with pytest.raises(NotFoundException, match="Context no-such-context not found"):
        sbx.run_code("1", context=Context(context_id="no-such-context", language="python", cwd="/"))
    with pytest.raises(NotFoundException):
        sbx.restart_code_context("no-such-context")


def test_unknown_language_is_a_clear_error(sbx):
    # e2b-code-interpreter >= 2.11 words the status "400 Bad Request:", older ones "400:"
    with pytest.raises(SandboxException, match=r'400( Bad Request)?: Unsupported language "cobol"'):
        sbx.run_code("1", language="cobol")
    with pytest.raises(SandboxException, match="Unsupported language"):
        sbx.create_code_context(language="cobol")


def test_missing_cwd_is_a_clear_error(sbx):
    with pytest.raises(SandboxException, match=r"500( Internal Server Error)?: .*working directory /no/such/dir"):
        sbx.create_code_context(cwd="/no/such/dir")


def test_javascript(sbx):
    execution = sbx.run_code("console.log('Hello, World!')", language="js")
    assert execution.logs.stdout == ["Hello, World!\n"]
    assert sbx.run_code("const add = (x, y) => x + y;\nadd(1, 2);", language="js").text == "3"
    assert sbx.run_code("process.cwd()", language="javascript").text == "/home/user"
    code = "async function main() {\n  return 'Hello, World!'\n}\n\nawait main()"
    assert sbx.run_code(code, language="js").text == "Hello, World!"
    assert sbx.run_code("import { join } from 'node:path';\njoin('a', 'b')", language="js").text == "a/b"
    err = sbx.run_code("throw new TypeError('nope')", language="js").error
    assert err.name == "TypeError" and err.value == "nope"


def test_javascript_state_and_cwd_context(sbx):
    sbx.run_code("globalThis.jsState = 7", language="js")
    assert sbx.run_code("jsState", language="js").text == "7"
    ctx = sbx.create_code_context(cwd="/tmp", language="js")
    assert ctx.language == "javascript"
    assert sbx.run_code("process.cwd()", context=ctx).text == "/tmp"


def test_typescript(sbx):
    code = "function subtract(x: number, y: number): number {\n  return x - y;\n}\n\nsubtract(1, 2);"
    assert sbx.run_code(code, language="ts").text == "-1"
    ctx = sbx.create_code_context(language="ts")
    assert ctx.language == "typescript"


def test_bash(sbx):
    execution = sbx.run_code("echo hello; pwd", language="bash")
    assert "".join(execution.logs.stdout) == "hello\n/home/user\n"
    sbx.run_code("export BASH_STATE=kept", language="bash")
    assert sbx.run_code("echo $BASH_STATE", language="bash").logs.stdout == ["kept\n"]
    ctx = sbx.create_code_context(language="bash", cwd="/tmp")
    assert sbx.run_code("pwd", context=ctx).logs.stdout == ["/tmp\n"]


def test_r_kernel_is_installed_by_default(sbx):
    execution = sbx.run_code('print("Hello, World!")', language="r", timeout=60)
    assert "Hello, World!" in "".join(execution.logs.stdout)
    assert sbx.run_code("getwd()", language="r").results[0].text == '[1] "/home/user"'
    ctx = sbx.create_code_context(language="r", cwd="/tmp")
    assert ctx.language == "r"
    assert sbx.run_code("getwd()", context=ctx).results[0].text == '[1] "/tmp"'
    err = sbx.run_code('stop("bad")', context=ctx).error
    assert err is not None and "bad" in err.value


def test_java_works_or_says_it_is_missing(sbx):
    # IJava is not in Debian, PyPI or npm: without it the error says how it is missing
    try:
        execution = sbx.run_code('System.out.println("Hello, World!")', language="java", timeout=60)
    except SandboxException as e:
        assert "The java kernel is not installed" in str(e)
        return
    assert "Hello, World!" in "".join(execution.logs.stdout)
