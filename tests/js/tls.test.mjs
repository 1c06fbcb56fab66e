// The JS SDKs over HTTPS ingress (docs/network.md, "HTTPS ingress"), as E2B's next SDK major
// will reach every server: only E2B_DOMAIN and E2B_API_KEY set, so the control plane is
// https://api.<domain>, envd https://49983-<id>.<domain> and a user port
// https://<port>-<id>.<domain>. The daemon runs with --tls and its default domain
// (sandbox.localhost:<port>); the SDK trusts the daemon's ingress CA through NODE_EXTRA_CA_CERTS
// and resolves *.localhost with nss-myhostname, in a mount namespace of its own whose
// /etc/nsswitch.conf says `hosts: files myhostname dns` (the host's is not touched). Needs root.
import assert from 'node:assert/strict'
import { spawnSync } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { describe, test } from 'node:test'
import { fileURLToPath } from 'node:url'

import { ROWS, useDaemon } from './harness.mjs'

const HERE = path.dirname(fileURLToPath(import.meta.url))
const daemon = useDaemon(async () => ['--tls', '--no-network'])

const script = (pkg) => `
import { Sandbox } from '${pkg}'
const domain = process.env.E2B_DOMAIN
const sbx = await Sandbox.create({ timeoutMs: 120_000 })
try {
  if (sbx.getHost(8000) !== \`8000-\${sbx.sandboxId}.\${domain}\`) throw new Error('getHost: ' + sbx.getHost(8000))
  const r = await sbx.commands.run('echo hello over tls')
  if (r.stdout !== 'hello over tls\\n') throw new Error('stdout: ' + r.stdout)
  await sbx.files.write('/home/user/tls.txt', 'written over https')
  if ((await sbx.files.read('/home/user/tls.txt')) !== 'written over https') throw new Error('files')
  await sbx.commands.run('cd /etc && python3 -m http.server 8000 --bind 127.0.0.1', { background: true })
  const url = 'https://' + sbx.getHost(8000) + '/hostname'
  let body = null, last = null
  for (let i = 0; i < 100 && body === null; i++) {
    try {
      const res = await fetch(url)
      if (res.status === 200) body = await res.text()
      else last = res.status
    } catch (e) {
      last = String(e.cause || e)
    }
    if (body === null) await new Promise((r) => setTimeout(r, 100))
  }
  if (body === null) throw new Error(url + ': ' + last)
  const host = (await sbx.commands.run('cat /etc/hostname')).stdout
  if (body.trim() !== host.trim()) throw new Error('hostname: ' + body)
  console.log('SDK-OVER-TLS-OK')
} finally {
  await sbx.kill()
}
`

for (const { label, e2bPkg } of ROWS) {
  describe(label, { timeout: 180_000 }, () => {
    test('everything over HTTPS by name, with only E2B_DOMAIN set', (t) => {
      if (process.getuid() !== 0) {
        if (process.env.CI === 'true') throw new Error('needs root (CI=true: not skipping)')
        t.skip('needs root (a private mount namespace)')
        return
      }
      if (process.env.SANDBOXD_TEST_URL) {
        t.skip('needs its own daemon (--tls)')
        return
      }
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sandboxd-js-tls-'))
      const nss = path.join(dir, 'nsswitch.conf')
      fs.writeFileSync(nss, 'passwd: files\ngroup: files\nhosts: files myhostname dns\n')
      const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('E2B_')))
      Object.assign(env, {
        E2B_DOMAIN: `sandbox.localhost:${daemon.port}`,
        E2B_API_KEY: daemon.key,
        NODE_EXTRA_CA_CERTS: path.join(daemon.dataDir, 'ingress-ca', 'ca.pem'),
      })
      const code = script(e2bPkg)
      const r = spawnSync(
        'unshare',
        ['--mount', '--propagation', 'private', 'sh', '-c',
          `mount --bind ${nss} /etc/nsswitch.conf && exec node --input-type=module -e "$SDK_SCRIPT"`],
        { cwd: HERE, env: { ...env, SDK_SCRIPT: code }, encoding: 'utf8', timeout: 150_000 }
      )
      fs.rmSync(dir, { recursive: true, force: true })
      assert.ok(r.status === 0 && r.stdout.includes('SDK-OVER-TLS-OK'), `stdout:\n${r.stdout}\nstderr:\n${r.stderr}`)
    })
  })
}
