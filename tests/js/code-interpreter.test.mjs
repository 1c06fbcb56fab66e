// The code interpreter with the official JS SDK (@e2b/code-interpreter, template
// code-interpreter-v1): results, logs, errors, contexts, charts.
import assert from 'node:assert/strict'
import { after, before, describe, test } from 'node:test'

import { ROWS, useDaemon } from './harness.mjs'

useDaemon()

const PNG_MAGIC = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a])

for (const { label, ci } of ROWS) {
  describe(label, { timeout: 180_000 }, () => {
    let sbx
    before(async () => {
      sbx = await ci.Sandbox.create({ timeoutMs: 180_000 })
    })
    after(async () => sbx?.kill())

    test('an expression, stdout streamed and logged, state kept between cells', async () => {
      const streamed = []
      const ex = await sbx.runCode('x = 40\nprint("hi from python")\nx + 2', {
        onStdout: (m) => streamed.push(m.line),
      })
      assert.equal(ex.error, undefined)
      assert.equal(ex.text, '42')
      assert.deepEqual(ex.logs.stdout, ['hi from python\n'])
      assert.deepEqual(streamed, ['hi from python\n'])
      assert.equal((await sbx.runCode('x * 2')).text, '80')
    })

    test('an exception is returned as the execution error', async () => {
      const ex = await sbx.runCode('1 / 0')
      assert.equal(ex.error.name, 'ZeroDivisionError')
      assert.match(ex.error.value, /division by zero/)
      assert.match(ex.error.traceback, /ZeroDivisionError/)
    })

    test('a context of its own has its own state and cwd', async () => {
      const ctx = await sbx.createCodeContext({ cwd: '/tmp' })
      assert.equal(ctx.cwd, '/tmp')
      assert.equal(ctx.language, 'python')
      const ex = await sbx.runCode('import os; os.getcwd() == "/tmp"', { context: ctx })
      assert.equal(ex.text, 'True')
      const missing = await sbx.runCode('x', { context: ctx })
      assert.equal(missing.error?.name, 'NameError')
    })

    test('a matplotlib figure comes back as PNG and chart data', async () => {
      const ex = await sbx.runCode('import matplotlib.pyplot as plt\nplt.plot([1, 2, 3], [1, 4, 9])\nplt.show()')
      assert.equal(ex.error, undefined)
      const png = Buffer.from(ex.results[0].png, 'base64')
      assert.equal(Buffer.compare(png.subarray(0, 8), PNG_MAGIC), 0)
      assert.ok(png.length > 1000)
      assert.equal(ex.results[0].chart?.type, 'line')
    })

    test('envd works next to the interpreter', async () => {
      await sbx.files.write('/home/user/data.csv', 'a,b\n1,2\n3,4\n')
      const ex = await sbx.runCode('import pandas as pd\npd.read_csv("/home/user/data.csv")["b"].sum()')
      assert.equal(ex.text, '6')
    })
  })
}
