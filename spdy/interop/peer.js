'use strict'
// node-spdy (npm spdy 4.x, spdy-transport) peer for spdy/interop_node_test.go.
//
//   node peer.js server [--window N]
//     Plain-TCP SPDY/3.1 server on 127.0.0.1:0. Prints "LISTENING <port>" on
//     stdout, then serves the endpoints below until stdin closes or SIGTERM.
//   node peer.js client --port P [--concurrency N] [--big BYTES]
//     SPDY/3.1 client (spdy.createAgent, plain) against a Go spdy.NewServer on
//     127.0.0.1:P. Runs the checks below, prints one "OK <name> ..." line per
//     check and "PASS" at the end; exits 1 with "FAIL <name>: <reason>" otherwise.
//
// Both sides share one deterministic body generator (xorshift32, see gen())
// that Go re-implements (interop_node_test.go), so every body is checked by
// length and sha256 against an independently computed expectation.
//
// Endpoints (served by both the node server and the Go server in the test):
//   GET  /bytes?n=N&seed=S   body gen(S, N); header x-sha256
//   POST /sink?seed=S        reads the body; replies JSON {n, sha256}
//   POST /echo               streams the request body back as it arrives
//   GET  /headers            replies JSON of the request's method/url/headers
//   GET  /status/NNN         replies NNN with no body
//   (HEAD works on /bytes)
//
// SPDY_INTEROP_DEBUG=1 logs every frame (both directions) to stderr.

const crypto = require('crypto')
const http = require('http')
const net = require('net')
const spdy = require('spdy')

const DEBUG = process.env.SPDY_INTEROP_DEBUG === '1'

// Work around two node-spdy bugs on Node >= 12 in handle-thing, the fake
// socket handle under every SPDY request/response of the http-compatible API
// (spdy-transport, the protocol engine, is not affected):
//  1. Handle.writev assumes the pre-v12 [chunk, encoding, ...] layout, ignores
//     allBuffers (so every other buffer is lost), crashes when the SPDY stream
//     is not assigned yet and never completes the write request. Node uses
//     writev whenever several writes are queued (always for a corked
//     ClientRequest with a body).
//  2. Node decides after each handle write whether it completed
//     synchronously, from native state a JS handle never sets. When it says
//     "sync" it runs the callback at once, and handle-thing's later
//     req.oncomplete runs it again: ERR_MULTIPLE_CALLBACK, socket destroyed,
//     stream reset ("socket hang up").
// Route writev through the single-buffer path and complete a write only if
// Node is waiting for it.
{
  const path = require('path')
  const Handle = require(require.resolve('handle-thing', { paths: [path.dirname(require.resolve('spdy'))] }))
  Handle.prototype.writev = function writev (req, chunks, allBuffers) {
    const bufs = []
    if (allBuffers) {
      for (const c of chunks) bufs.push(c)
    } else {
      for (let i = 0; i < chunks.length; i += 2) {
        bufs.push(Buffer.isBuffer(chunks[i]) ? chunks[i] : Buffer.from(chunks[i], chunks[i + 1]))
      }
    }
    return this.writeBuffer(req, Buffer.concat(bufs))
  }
  const origWriteEnc = Handle.prototype.writeEnc
  Handle.prototype.writeEnc = function writeEnc (req, data, enc) {
    // writes queue as 'stream' listeners until the SPDY stream exists
    if (!this._stream) this.setMaxListeners(0)
    return origWriteEnc.call(this, req, data, enc)
  }
  Handle.prototype._writeEnc = function _writeEnc (wrap, req, data, enc) {
    const self = this
    this._stream.write(data, enc, function () {
      const r = wrap.dequeue()
      if (!r || r.async === false) return
      r.oncomplete(0, self, r)
    })
    return 0
  }
}

// Work around a node-spdy race (spdy-transport 3.0.0): when a stream's
// writable side finishes, Stream._onFinish queues the final empty DATA+FIN
// frame in the priority scheduler and at once removes the stream from the
// connection's map. A WINDOW_UPDATE the peer sent for that stream meanwhile
// (legal: the peer has not seen FIN yet) finds no stream and is answered
// with RST_STREAM INVALID_STREAM, which is queued as a control frame and so
// overtakes the still-queued FIN. The peer then sees a complete body reset
// before its FIN and must report it as truncated. Seen in
// TestNodeInteropSmallWindow (about 1 run in 6 under -race load). SPDY/3.1
// lets a receiver ignore WINDOW_UPDATE for a stream it has closed, which is
// what this does for stream ids it has already used.
{
  const path = require('path')
  const transport = require(require.resolve('spdy-transport', { paths: [path.dirname(require.resolve('spdy'))] }))
  const Connection = transport.Connection
  const orig = Connection.prototype._handleFrame
  Connection.prototype._handleFrame = function _handleFrame (frame) {
    const state = this._spdyState
    if (frame.type === 'WINDOW_UPDATE' && frame.id !== 0 && !state.stream.map[frame.id] &&
        frame.id <= state.stream.lastId.both) {
      if (DEBUG) log('ignoring WINDOW_UPDATE for closed stream', frame.id)
      return
    }
    return orig.call(this, frame)
  }
}

function log (...a) { process.stderr.write('[node-peer ' + process.pid + '] ' + a.join(' ') + '\n') }

// gen returns the deterministic body: little-endian uint32 words of an
// xorshift32 sequence started at seed (0 replaced by 0x9e3779b9), truncated to n.
// It is streamed in chunks so 16 MiB bodies do not need to be held twice.
function * gen (seed, n, chunk = 64 * 1024) {
  let x = (seed >>> 0) || 0x9e3779b9
  let left = n
  while (left > 0) {
    const size = Math.min(chunk, left)
    const words = Math.ceil(size / 4)
    const buf = Buffer.allocUnsafe(words * 4)
    for (let i = 0; i < words; i++) {
      x ^= x << 13; x >>>= 0
      x ^= x >>> 17
      x ^= x << 5; x >>>= 0
      buf.writeUInt32LE(x, i * 4)
    }
    left -= size
    yield size === buf.length ? buf : buf.subarray(0, size)
  }
}

function genSha (seed, n) {
  const h = crypto.createHash('sha256')
  for (const b of gen(seed, n)) h.update(b)
  return h.digest('hex')
}

// writeGen streams gen(seed, n) into a writable honouring backpressure.
function writeGen (w, seed, n, cb) {
  const it = gen(seed, n)
  function pump () {
    for (;;) {
      const r = it.next()
      if (r.done) { w.end(); if (cb) cb(); return }
      if (!w.write(r.value)) { w.once('drain', pump); return }
    }
  }
  pump()
}

function query (url) {
  const u = new URL(url, 'http://x')
  return u.searchParams
}

function traceConnection (conn, who) {
  if (!DEBUG) return
  // received frames; DATA only when it carries FIN (16 MiB bodies are
  // thousands of frames)
  conn.on('frame', (f) => {
    if (f.type === 'DATA' && !f.fin) return
    const c = Object.assign({}, f)
    if (c.data) c.data = '<' + c.data.length + ' bytes>'
    log(who, 'recv', JSON.stringify(c))
  })
  // sent control frames and the last DATA of each stream
  const framer = conn._spdyState && conn._spdyState.framer
  if (!framer) return
  for (const name of ['rstFrame', 'windowUpdateFrame', 'goawayFrame', 'pingFrame', 'settingsFrame', 'requestFrame', 'responseFrame', 'headersFrame', 'dataFrame']) {
    const orig = framer[name]
    if (typeof orig !== 'function') continue
    framer[name] = function (frame, ...rest) {
      if (name !== 'dataFrame' || frame.fin) {
        const c = Object.assign({}, frame)
        if (c.data) c.data = '<' + c.data.length + ' bytes>'
        log(who, 'send', name, JSON.stringify(c))
      }
      return orig.call(this, frame, ...rest)
    }
  }
}

// ---- server ---------------------------------------------------------------

function handler (req, res) {
  const q = query(req.url)
  const path = req.url.split('?')[0]
  if (DEBUG) log('server request', req.method, req.url, JSON.stringify(req.headers))
  if (path === '/bytes') {
    const n = Number(q.get('n') || 0)
    const seed = Number(q.get('seed') || 1)
    res.writeHead(200, {
      'content-type': 'application/octet-stream',
      'content-length': String(n),
      'x-sha256': genSha(seed, n)
    })
    if (req.method === 'HEAD') { res.end(); return }
    writeGen(res, seed, n)
    return
  }
  if (path === '/sink') {
    const h = crypto.createHash('sha256')
    let n = 0
    req.on('data', (b) => { n += b.length; h.update(b) })
    req.on('end', () => {
      const body = JSON.stringify({ n, sha256: h.digest('hex') })
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(body)) })
      res.end(body)
    })
    req.on('error', (e) => log('sink request error', e.message))
    return
  }
  if (path === '/echo') {
    res.writeHead(200, { 'content-type': 'application/octet-stream' })
    req.pipe(res)
    return
  }
  if (path === '/headers') {
    const body = JSON.stringify({ method: req.method, url: req.url, headers: req.headers })
    res.writeHead(200, { 'content-type': 'application/json', 'x-multi': ['a', 'b'], 'x-node': 'yes' })
    res.end(body)
    return
  }
  const m = /^\/status\/(\d{3})$/.exec(path)
  if (m) {
    res.writeHead(Number(m[1]), {})
    res.end()
    return
  }
  res.writeHead(404, { 'content-type': 'text/plain' })
  res.end('not found\n')
}

function runServer (args) {
  const window = Number(args.window || 0)
  const opts = {
    spdy: {
      plain: true,
      ssl: false,
      // The plain server picks its protocol by sniffing, which yields SPDY/3
      // (no session flow control). Our product speaks 3.1, so the connection
      // is started explicitly as 'spdy/3.1', as a TLS server would after
      // NPN/ALPN selected it.
      protocol: 'spdy/3.1',
      protocols: ['spdy/3.1'],
      connection: window ? { windowSize: window } : {}
    }
  }
  // spdy.server.create(base, ...) with http.Server and no `plain` flag
  // hands every accepted socket to the SPDY connection with
  // opts.spdy.protocol; plain:true would route it through protocol sniffing.
  const plainOpts = { spdy: Object.assign({}, opts.spdy, { plain: false }) }
  const server = spdy.server.create(http.Server, plainOpts, handler)
  server.on('connection', (sock) => {
    if (DEBUG) log('server connection from', sock.remoteAddress + ':' + sock.remotePort)
    sock.on('error', (e) => log('server socket error', e.message))
  })
  server.on('clientError', (e) => log('server clientError', e.message))
  if (DEBUG) {
    // spdy-transport connections are created inside _handleConnection;
    // trace them by wrapping the transport factory.
    const transport = require('spdy-transport')
    const orig = transport.connection.create
    transport.connection.create = function (sock, o) {
      const c = orig.call(this, sock, o)
      traceConnection(c, 'server')
      return c
    }
  }
  server.listen(0, '127.0.0.1', () => {
    process.stdout.write('LISTENING ' + server.address().port + '\n')
  })
  const stop = () => { server.close(); process.exit(0) }
  process.stdin.on('end', stop)
  process.stdin.resume()
  process.on('SIGTERM', stop)
}

// ---- client ---------------------------------------------------------------

function request (agent, port, method, path, body, headers) {
  return new Promise((resolve, reject) => {
    const req = http.request({ agent, host: '127.0.0.1', port, method, path, headers: headers || {} }, (res) => {
      const h = crypto.createHash('sha256')
      let n = 0
      const chunks = []
      res.on('data', (b) => { n += b.length; h.update(b); if (n <= 1 << 20) chunks.push(b) })
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, n, sha256: h.digest('hex'), text: n <= 1 << 20 ? Buffer.concat(chunks).toString() : '' }))
      res.on('error', reject)
      res.on('aborted', () => reject(new Error(method + ' ' + path + ': response aborted')))
    })
    req.on('error', reject)
    if (body && body.gen) {
      writeGen(req, body.seed, body.n)
    } else if (typeof body === 'string') {
      req.end(body)
    } else {
      req.end()
    }
  })
}

function expect (cond, msg) { if (!cond) throw new Error(msg) }

async function runClient (args) {
  const port = Number(args.port)
  const concurrency = Number(args.concurrency || 128)
  const big = Number(args.big || 16 << 20)
  const agent = spdy.createAgent({
    host: '127.0.0.1',
    port,
    spdy: { plain: true, ssl: false, protocol: 'spdy/3.1', protocols: ['spdy/3.1'] }
  })
  agent.on('error', (e) => { console.log('FAIL agent: ' + e.message); process.exit(1) })
  agent.once('_connect', () => {
    const c = agent._spdyState.connection
    traceConnection(c, 'client')
    c.on('error', (e) => log('client connection error', e.message))
  })
  const ok = (name, ...rest) => console.log('OK ' + name + ' ' + rest.join(' '))
  let name = 'start'
  try {
    name = 'headers'
    let r = await request(agent, port, 'GET', '/headers?a=1&b=two', null, { 'x-test': 'hello', accept: 'application/json' })
    expect(r.status === 200, 'status ' + r.status)
    const echoed = JSON.parse(r.text)
    expect(echoed.method === 'GET', 'method ' + echoed.method)
    expect(echoed.url === '/headers?a=1&b=two', 'url ' + echoed.url)
    expect(echoed.headers['x-test'] === 'hello', 'x-test header not seen by server: ' + JSON.stringify(echoed.headers))
    expect(r.headers['x-multi'] !== undefined, 'x-multi response header missing: ' + JSON.stringify(r.headers))
    ok(name, JSON.stringify(echoed.headers))

    name = 'status204'
    r = await request(agent, port, 'GET', '/status/204')
    expect(r.status === 204 && r.n === 0, 'got ' + r.status + ' with ' + r.n + ' bytes')
    ok(name)

    name = 'big-download'
    let t0 = Date.now()
    r = await request(agent, port, 'GET', '/bytes?n=' + big + '&seed=7')
    expect(r.status === 200, 'status ' + r.status)
    expect(r.n === big, 'length ' + r.n + ' want ' + big)
    expect(r.sha256 === genSha(7, big), 'sha256 mismatch')
    expect(r.headers['x-sha256'] === r.sha256, 'x-sha256 header ' + r.headers['x-sha256'])
    ok(name, 'bytes=' + r.n, 'ms=' + (Date.now() - t0))

    name = 'big-upload'
    t0 = Date.now()
    r = await request(agent, port, 'POST', '/sink?seed=11', { gen: true, seed: 11, n: big }, { 'content-type': 'application/octet-stream' })
    expect(r.status === 200, 'status ' + r.status + ' ' + r.text)
    const sunk = JSON.parse(r.text)
    expect(sunk.n === big, 'server got ' + sunk.n + ' bytes, sent ' + big)
    expect(sunk.sha256 === genSha(11, big), 'server sha256 mismatch')
    ok(name, 'bytes=' + sunk.n, 'ms=' + (Date.now() - t0))

    name = 'big-echo'
    t0 = Date.now()
    r = await request(agent, port, 'POST', '/echo', { gen: true, seed: 13, n: big })
    expect(r.status === 200, 'status ' + r.status)
    expect(r.n === big && r.sha256 === genSha(13, big), 'echo got ' + r.n + ' bytes, sha ok=' + (r.sha256 === genSha(13, big)))
    ok(name, 'bytes=' + r.n, 'ms=' + (Date.now() - t0))

    name = 'concurrent'
    t0 = Date.now()
    const jobs = []
    for (let i = 0; i < concurrency; i++) {
      const n = 1000 + i * 4099 // 1 KB .. ~0.5 MiB
      const seed = 100 + i
      if (i % 2 === 0) {
        jobs.push(request(agent, port, 'GET', '/bytes?n=' + n + '&seed=' + seed).then((r) => {
          expect(r.status === 200 && r.n === n && r.sha256 === genSha(seed, n), 'GET #' + i + ' n=' + r.n)
          return n
        }))
      } else {
        jobs.push(request(agent, port, 'POST', '/sink?seed=' + seed, { gen: true, seed, n }).then((r) => {
          const s = JSON.parse(r.text)
          expect(r.status === 200 && s.n === n && s.sha256 === genSha(seed, n), 'POST #' + i + ' ' + r.text)
          return n
        }))
      }
    }
    const sizes = await Promise.all(jobs)
    ok(name, 'streams=' + jobs.length, 'bytes=' + sizes.reduce((a, b) => a + b, 0), 'ms=' + (Date.now() - t0))

    name = 'close'
    await new Promise((resolve) => agent.close(resolve))
    ok(name)
    console.log('PASS')
    process.exit(0)
  } catch (e) {
    console.log('FAIL ' + name + ': ' + (e && e.stack ? e.stack : e))
    process.exit(1)
  }
}

// ---- main -----------------------------------------------------------------

function parseArgs (argv) {
  const out = { _: [] }
  for (let i = 0; i < argv.length; i++) {
    if (argv[i].startsWith('--')) { out[argv[i].slice(2)] = argv[i + 1]; i++ } else out._.push(argv[i])
  }
  return out
}

module.exports = { gen, genSha }

if (require.main === module) {
  const args = parseArgs(process.argv.slice(2))
  if (args._[0] === 'server') runServer(args)
  else if (args._[0] === 'client') runClient(args)
  else if (args._[0] === 'sha') console.log(genSha(Number(args.seed), Number(args.n)))
  else { console.error('usage: node peer.js server|client|sha ...'); process.exit(2) }
}
