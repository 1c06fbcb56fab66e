// README.md's JS example, extracted from the README and run as a user would run it (a separate
// node process with the E2B_* variables set), and its `npm install` pins, which must be a tested
// SDK row of package.json.
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import fs from 'node:fs'
import { createRequire } from 'node:module'
import path from 'node:path'
import { describe, test } from 'node:test'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'

import { ALL_ROWS, ROWS, useDaemon } from './harness.mjs'

useDaemon()

const HERE = path.dirname(fileURLToPath(import.meta.url))
const README = fs.readFileSync(path.join(HERE, '..', '..', 'README.md'), 'utf8')
const require = createRequire(import.meta.url)

const blocks = (lang) => [...README.matchAll(new RegExp('^```' + lang + '\\n([\\s\\S]*?)^```', 'gm'))].map((m) => m[1])

test('the README pins both JS packages to a tested row', () => {
  const lines = blocks('sh').flatMap((b) => b.split('\n').filter((l) => l.startsWith('npm install ')))
  assert.ok(lines.length > 0, 'README has no `npm install` line')
  const rows = ALL_ROWS.map((r) => ({
    e2b: require(`${r.e2bPkg}/package.json`).version,
    '@e2b/code-interpreter': require(`${r.ciPkg}/package.json`).version,
  }))
  for (const line of lines) {
    const pins = Object.fromEntries(line.split(/\s+/).slice(2).map((a) => [a.slice(0, a.lastIndexOf('@')), a.slice(a.lastIndexOf('@') + 1)]))
    assert.deepEqual(Object.keys(pins).sort(), ['@e2b/code-interpreter', 'e2b'], `${line}: pin both packages`)
    assert.ok(
      rows.some((row) => Object.entries(pins).every(([k, v]) => row[k] === v)),
      `${line} is not a tested row: ${JSON.stringify(rows)}`
    )
  }
})

for (const row of ROWS) {
  describe(row.label, { timeout: 120_000 }, () => {
    test('the README example runs', async () => {
      const examples = blocks('js')
      assert.equal(examples.length, 1, 'one js block in the README')
      // this row's packages under the names the README imports
      const code = examples[0]
        .replaceAll("'@e2b/code-interpreter'", `'${row.ciPkg}'`)
        .replaceAll("'e2b'", `'${row.e2bPkg}'`)
      // an ES module evaluated in this directory resolves packages from tests/js/node_modules
      const { stdout } = await promisify(execFile)(process.execPath, ['--input-type=module', '-e', code], {
        cwd: HERE,
        timeout: 100_000,
      })
      assert.equal(stdout, '45\nhello from the sandbox\n\n')
    })
  })
}
