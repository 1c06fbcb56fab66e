// Shared by the JS SDK tests: a real `sandboxd serve` per test file and the SDK rows under test.
//
// The daemon is started like tests/python/conftest.py does: the built binary
// (SANDBOXD_BIN, default target/x86_64-unknown-linux-gnu/debug/sandboxd), a free loopback port, a throwaway data dir and a
// fresh API key; the E2B_* variables are set so the SDKs talk to it as a user would set them.
// With SANDBOXD_TEST_URL and SANDBOXD_TEST_KEY set, a running daemon is used instead.
import { spawn } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import fs from 'node:fs'
import { createRequire } from 'node:module'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'
import { after, before } from 'node:test'
import { fileURLToPath } from 'node:url'

import * as e2bNewest from 'e2b'
import * as ciNewest from '@e2b/code-interpreter'
import * as e2bOld from 'e2b-old'
import * as ciOld from 'code-interpreter-old'

const HERE = path.dirname(fileURLToPath(import.meta.url))
const ROOT = path.resolve(HERE, '..', '..')
const BIN = process.env.SANDBOXD_BIN || path.join(ROOT, 'target', 'x86_64-unknown-linux-gnu', 'debug', 'sandboxd')
const require = createRequire(import.meta.url)

/** One SDK row: the `e2b` module and the code-interpreter module built on the same e2b. */
function row(name, e2bPkg, e2b, ciPkg, ci) {
  const e2bVersion = require(`${e2bPkg}/package.json`).version
  const ciVersion = require(`${ciPkg}/package.json`).version
  return { name, label: `e2b ${e2bVersion}, @e2b/code-interpreter ${ciVersion}`, e2b, ci, e2bPkg, ciPkg }
}

export const ALL_ROWS = [
  row('newest', 'e2b', e2bNewest, '@e2b/code-interpreter', ciNewest),
  row('oldest', 'e2b-old', e2bOld, 'code-interpreter-old', ciOld),
]

/** The rows to test: all, or those named in SANDBOXD_JS_SDK_ROWS (comma-separated). */
export const ROWS = (() => {
  const want = process.env.SANDBOXD_JS_SDK_ROWS
  if (!want) return ALL_ROWS
  const names = want.split(',').map((s) => s.trim())
  for (const n of names) {
    if (!ALL_ROWS.some((r) => r.name === n)) throw new Error(`SANDBOXD_JS_SDK_ROWS: unknown row ${n}`)
  }
  return ALL_ROWS.filter((r) => names.includes(r.name))
})()

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer()
    srv.on('error', reject)
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address()
      srv.close(() => resolve(port))
    })
  })
}

async function api(url, key, method, p) {
  const res = await fetch(url + p, { method, headers: { 'X-API-Key': key }, signal: AbortSignal.timeout(10_000) })
  return { status: res.status, body: await res.text() }
}

function setEnv(url, key) {
  process.env.E2B_API_URL = url
  process.env.E2B_SANDBOX_URL = url
  process.env.E2B_VOLUME_API_URL = url
  process.env.E2B_API_KEY = key
  process.env.E2B_DOMAIN = url.split('//')[1].replace('127.0.0.1', 'localhost')
  delete process.env.E2B_DEBUG
}

async function killAll(url, key) {
  try {
    const { body } = await api(url, key, 'GET', '/v2/sandboxes?state=running,paused&limit=100')
    for (const s of JSON.parse(body)) {
      await api(url, key, 'DELETE', `/sandboxes/${s.sandboxID}`).catch(() => {})
    }
  } catch {
    // best effort: the daemon is stopped next anyway
  }
}

async function startDaemon(extraArgs = []) {
  const extUrl = process.env.SANDBOXD_TEST_URL
  const extKey = process.env.SANDBOXD_TEST_KEY
  if (extUrl && extKey) {
    setEnv(extUrl, extKey)
    return { url: extUrl, key: extKey, stop: async () => {} }
  }
  if (!fs.existsSync(BIN)) throw new Error(`${BIN} not found: run \`cargo build -p sandboxd\` first`)
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'sandboxd-nodetest-'))
  const logPath = `${dataDir}.log`
  const port = await freePort()
  const url = `http://127.0.0.1:${port}`
  const key = 'e2b_' + randomBytes(20).toString('hex')
  const log = fs.openSync(logPath, 'w')
  const proc = spawn(BIN, ['serve', '--listen', `127.0.0.1:${port}`, '--data-dir', dataDir, ...extraArgs], {
    env: { ...process.env, SANDBOXD_API_KEY: key, RUST_LOG: process.env.RUST_LOG || 'info' },
    stdio: ['ignore', 'ignore', log],
  })
  fs.closeSync(log)
  let exited = null
  const exit = new Promise((resolve) => proc.on('exit', (code, signal) => resolve((exited = code ?? signal))))
  const deadline = Date.now() + 30_000
  for (;;) {
    if (exited !== null) throw new Error(`sandboxd exited with ${exited}:\n${fs.readFileSync(logPath, 'utf8')}`)
    const ok = await fetch(url + '/health', { signal: AbortSignal.timeout(1000) }).then(
      (r) => r.status === 200 || r.status === 204,
      () => false
    )
    if (ok) break
    if (Date.now() > deadline) {
      proc.kill('SIGKILL')
      throw new Error(`sandboxd did not become healthy:\n${fs.readFileSync(logPath, 'utf8')}`)
    }
    await new Promise((r) => setTimeout(r, 50))
  }
  setEnv(url, key)
  return {
    url,
    key,
    port,
    dataDir,
    async stop() {
      await killAll(url, key)
      proc.kill('SIGTERM')
      const killer = setTimeout(() => proc.kill('SIGKILL'), 10_000)
      await exit
      clearTimeout(killer)
      fs.rmSync(dataDir, { recursive: true, force: true })
      if (process.env.SANDBOXD_KEEP_LOGS !== '1') fs.rmSync(logPath, { force: true })
    },
  }
}

/** Starts the daemon before the file's tests and stops it after them; returns {url, key}.
 * `extraArgs` (an async function) gives more `serve` flags, made in the same `before` hook. */
export function useDaemon(extraArgs = async () => []) {
  const daemon = {}
  before(async () => Object.assign(daemon, await startDaemon(await extraArgs())), { timeout: 60_000 })
  after(async () => daemon.stop?.(), { timeout: 60_000 })
  return daemon
}

/** A loopback registry with the template tests' images (tests/python/oci_images.py), started
 * before the file's daemon and stopped after it; `url` is set once it serves. */
export function useImageRegistry() {
  const registry = { url: null, proc: null }
  registry.start = async () => {
    const py = fs.existsSync(path.join(ROOT, '.venv', 'bin', 'python')) ? path.join(ROOT, '.venv', 'bin', 'python') : 'python3'
    const proc = spawn(py, [path.join(ROOT, 'tests', 'python', 'oci_images.py'), 'serve'], {
      stdio: ['pipe', 'pipe', 'inherit'],
    })
    registry.proc = proc
    registry.url = await new Promise((resolve, reject) => {
      let out = ''
      proc.stdout.on('data', (d) => {
        out += d
        if (out.includes('\n')) resolve(out.trim())
      })
      proc.on('exit', (code) => reject(new Error(`oci_images.py serve exited with ${code}`)))
    })
    return registry.url
  }
  after(async () => {
    if (!registry.proc) return
    const exited = new Promise((resolve) => registry.proc.on('exit', resolve))
    registry.proc.stdin.end()
    await exited
  }, { timeout: 30_000 })
  return registry
}

/** Runs `fn(sandbox)` with a fresh sandbox of `Sandbox` (any row's class), killed afterwards. */
export async function withSandbox(Sandbox, opts, fn) {
  const sbx = await Sandbox.create(opts)
  try {
    return await fn(sbx)
  } finally {
    await sbx.kill().catch(() => {})
  }
}

/** Polls `check` (async, returns truthy when done) every 50 ms until `timeoutMs`. */
export async function waitFor(check, timeoutMs, what) {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const v = await check()
    if (v) return v
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 50))
  }
}
