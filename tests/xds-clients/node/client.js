#!/usr/bin/env node
// A gRPC client (@grpc/grpc-js with @grpc/grpc-js-xds) for Meridian's
// end-to-end tests: the same command line and JSON output as ../client.py.
//
// Calls /meridian.test.Echo/Call (served by ../server.py) with raw Buffers on a
// plain host:port or an xds:///SERVICE target. For xDS targets the bootstrap
// comes from GRPC_XDS_BOOTSTRAP_CONFIG (JSON text) or GRPC_XDS_BOOTSTRAP (file).
//
// Count mode prints ONE JSON line:
//   {"ok": {"zone-1/backend-v1": 812}, "errors": {"DEADLINE_EXCEEDED": 3},
//    "total": 1000, "attempts": {"1": 990, "2": 10}, "error_samples": {...},
//    "elapsed_ms": 1234}
// Watch mode (--watch SECONDS) prints one such line per second ("t": n) and a
// last line with "summary": true.
//
// Exit status: 0 when the calls were made, 2 on bad arguments or a missing or
// invalid bootstrap, 3 when the channel was not ready within --ready-timeout-ms.
'use strict';

const crypto = require('crypto');
const fs = require('fs');

let grpc;
try {
  grpc = require('@grpc/grpc-js');
  require('@grpc/grpc-js-xds').register();
} catch (e) {
  process.stderr.write(
    `client.js: ${e.message}; run scripts/test-all.sh (npm ci in tests/xds-clients/node)\n`);
  process.exit(2);
}

const METHOD = '/meridian.test.Echo/Call';
const REQUEST_ID = 'meridian-request-id';

function fail(code, message) {
  process.stderr.write(`client.js: ${message}\n`);
  process.stdout.write(JSON.stringify({setup_error: message}) + '\n', () => process.exit(code));
  // process.exit runs in the write callback so the line is not lost.
  throw new SetupExit();
}

class SetupExit extends Error {}

const USAGE = `usage: client.js --target TARGET [-n COUNT] [--deadline-ms MS]
       [--request-id-prefix P] [--interval-ms MS] [--concurrency K]
       [--watch SECONDS] [--service-config JSON] [--ready-timeout-ms MS]`;

function parseArgs(argv) {
  const args = {
    target: null,
    count: 100,
    deadlineMs: 5000,
    requestIdPrefix: null,
    intervalMs: 0,
    concurrency: 1,
    watch: null,
    serviceConfig: null,
    readyTimeoutMs: 15000,
  };
  const numeric = {
    '-n': 'count', '--count': 'count', '--deadline-ms': 'deadlineMs',
    '--interval-ms': 'intervalMs', '--concurrency': 'concurrency',
    '--watch': 'watch', '--ready-timeout-ms': 'readyTimeoutMs',
  };
  for (let i = 0; i < argv.length; i++) {
    let flag = argv[i];
    let value;
    const eq = flag.indexOf('=');
    if (flag.startsWith('--') && eq > 0) {
      value = flag.slice(eq + 1);
      flag = flag.slice(0, eq);
    }
    if (flag === '-h' || flag === '--help') {
      process.stdout.write(USAGE + '\n');
      process.exit(0);
    }
    const known = flag in numeric || ['--target', '--request-id-prefix', '--service-config'].includes(flag);
    if (!known) fail(2, `unknown argument ${flag}\n${USAGE}`);
    if (value === undefined) {
      if (i + 1 >= argv.length) fail(2, `${flag} needs a value`);
      value = argv[++i];
    }
    if (flag in numeric) {
      const n = Number(value);
      if (!Number.isFinite(n)) fail(2, `${flag} needs a number, got ${value}`);
      args[numeric[flag]] = n;
    } else if (flag === '--target') {
      args.target = value;
    } else if (flag === '--request-id-prefix') {
      args.requestIdPrefix = value;
    } else {
      args.serviceConfig = value;
    }
  }
  if (!args.target) fail(2, `--target is required\n${USAGE}`);
  if (args.count < 0 || args.deadlineMs <= 0 || args.concurrency < 1 || args.intervalMs < 0) {
    fail(2, '--count, --interval-ms must be >= 0; --deadline-ms, --concurrency must be > 0');
  }
  if (args.serviceConfig !== null) {
    try {
      JSON.parse(args.serviceConfig);
    } catch (e) {
      fail(2, `--service-config is not JSON: ${e.message}`);
    }
  }
  return args;
}

// An xDS target needs a bootstrap; say clearly what is missing or broken.
function checkBootstrap(target) {
  if (!target.startsWith('xds:')) return null;
  let text = process.env.GRPC_XDS_BOOTSTRAP_CONFIG;
  let source = 'GRPC_XDS_BOOTSTRAP_CONFIG';
  if (text === undefined) {
    const path = process.env.GRPC_XDS_BOOTSTRAP;
    if (path === undefined) {
      fail(2, `target ${target} needs an xDS bootstrap: set GRPC_XDS_BOOTSTRAP_CONFIG (JSON) or GRPC_XDS_BOOTSTRAP (file)`);
    }
    source = `GRPC_XDS_BOOTSTRAP=${path}`;
    try {
      text = fs.readFileSync(path, 'utf8');
    } catch (e) {
      fail(2, `cannot read the xDS bootstrap ${path}: ${e.message}`);
    }
  }
  let bootstrap;
  try {
    bootstrap = JSON.parse(text);
  } catch (e) {
    fail(2, `the xDS bootstrap in ${source} is not JSON: ${e.message}`);
  }
  const servers = bootstrap && bootstrap.xds_servers;
  if (!Array.isArray(servers) || !servers.length || !servers[0].server_uri) {
    fail(2, `the xDS bootstrap in ${source} has no xds_servers[0].server_uri`);
  }
  if (!bootstrap.node || !bootstrap.node.id) {
    fail(2, `the xDS bootstrap in ${source} has no node.id (Meridian expects <mesh>.<dataplane name>)`);
  }
  // The library's own parser is stricter than the format (it wants
  // node.locality, for one) and its error is lost behind a later one when the
  // resolver starts; run it here so the message reaches the test.
  let loadBootstrapInfo = null;
  try {
    ({loadBootstrapInfo} = require('@grpc/grpc-js-xds/build/src/xds-bootstrap'));
  } catch (e) {
    // Internal module moved in another version: the resolver still reports errors.
  }
  if (loadBootstrapInfo) {
    try {
      loadBootstrapInfo();
    } catch (e) {
      fail(2, `@grpc/grpc-js-xds rejects the bootstrap: ${e.message}`);
    }
  }
  return bootstrap;
}

function describe(target, bootstrap) {
  if (!bootstrap) return target;
  return `${target} (xDS server ${bootstrap.xds_servers[0].server_uri}, node ${bootstrap.node.id})`;
}

class Tally {
  constructor() {
    this.ok = new Map();
    this.errors = new Map();
    this.attempts = new Map();
    this.samples = new Map();
  }

  record(outcome) {
    const bump = (m, k, n = 1) => m.set(k, (m.get(k) || 0) + n);
    if (outcome.ok) {
      bump(this.ok, outcome.server);
      bump(this.attempts, String(outcome.attempt));
    } else {
      bump(this.errors, outcome.code);
      if (!this.samples.has(outcome.code)) this.samples.set(outcome.code, outcome.details);
    }
  }

  merge(other) {
    const add = (into, from) => { for (const [k, v] of from) into.set(k, (into.get(k) || 0) + v); };
    add(this.ok, other.ok);
    add(this.errors, other.errors);
    add(this.attempts, other.attempts);
    for (const [k, v] of other.samples) if (!this.samples.has(k)) this.samples.set(k, v);
  }

  total() {
    let n = 0;
    for (const v of this.ok.values()) n += v;
    for (const v of this.errors.values()) n += v;
    return n;
  }

  toJson(extra) {
    const sorted = (m, cmp) => Object.fromEntries([...m.entries()].sort(cmp || ((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0))));
    return JSON.stringify({
      ok: sorted(this.ok),
      errors: sorted(this.errors),
      total: this.total(),
      attempts: sorted(this.attempts, (a, b) => Number(a[0]) - Number(b[0])),
      error_samples: sorted(this.samples),
      ...extra,
    });
  }
}

const identity = (b) => b;

function oneCall(client, index, prefix, deadlineMs) {
  const requestId = `${prefix}${index}`;
  const metadata = new grpc.Metadata();
  metadata.set(REQUEST_ID, requestId);
  return new Promise((resolve) => {
    client.makeUnaryRequest(
      METHOD, identity, identity, Buffer.from(requestId, 'utf8'), metadata,
      {deadline: Date.now() + deadlineMs},
      (err, reply) => {
        if (err) {
          resolve({ok: false, code: grpc.status[err.code] || 'UNKNOWN', details: err.details || err.message || ''});
          return;
        }
        try {
          const body = JSON.parse(reply.toString('utf8'));
          if (body.server === undefined) throw new Error('no server');
          resolve({ok: true, server: String(body.server), attempt: body.attempt || 1});
        } catch (e) {
          resolve({ok: false, code: 'BAD_REPLY', details: reply.slice(0, 200).toString('utf8')});
        }
      });
  });
}

function waitReady(client, target, bootstrap, timeoutMs, deadlineMs) {
  return new Promise((resolve) => {
    client.waitForReady(Date.now() + timeoutMs, async (err) => {
      if (!err) return resolve();
      // Not ready: one call tells what the channel knows (resolver or connection error).
      const probe = await oneCall(client, 'probe', 'ready-', Math.min(deadlineMs, 2000));
      if (probe.ok) return resolve();
      try {
        fail(3, `channel to ${describe(target, bootstrap)} not ready after ${(timeoutMs / 1000).toFixed(1)}s; last call: ${probe.code}: ${probe.details}`);
      } catch (e) {
        if (!(e instanceof SetupExit)) throw e;
      }
    });
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const bootstrap = checkBootstrap(args.target);
  const prefix = args.requestIdPrefix !== null ? args.requestIdPrefix : crypto.randomBytes(6).toString('hex') + '-';
  const options = {};
  if (args.serviceConfig !== null) options['grpc.service_config'] = args.serviceConfig;
  let client;
  try {
    // xDS credentials: the mesh's mTLS where the zone's clusters ask for it
    // (gRFC A29), plaintext where they do not.
    const creds = args.target.startsWith('xds:')
      ? new (require('@grpc/grpc-js-xds').XdsChannelCredentials)(grpc.credentials.createInsecure())
      : grpc.credentials.createInsecure();
    client = new grpc.Client(args.target, creds, options);
  } catch (e) {
    fail(2, `cannot create a channel to ${args.target}: ${e.message}`);
  }
  if (args.readyTimeoutMs > 0) {
    await waitReady(client, args.target, bootstrap, args.readyTimeoutMs, args.deadlineMs);
  }
  const start = Date.now();
  if (args.watch === null) {
    const tally = new Tally();
    let next = 0;
    const worker = async () => {
      while (next < args.count) {
        const index = next++;
        tally.record(await oneCall(client, index, prefix, args.deadlineMs));
        if (args.intervalMs) await sleep(args.intervalMs);
      }
    };
    await Promise.all(Array.from({length: args.concurrency}, worker));
    process.stdout.write(tally.toJson({elapsed_ms: Date.now() - start}) + '\n');
  } else {
    await watch(args, client, prefix, start);
  }
  client.close();
}

// Calls until --watch seconds have passed; one line per elapsed second, each
// call counted in the second it ended.
async function watch(args, client, prefix, start) {
  const end = start + args.watch * 1000;
  let window = new Tally();
  const overall = new Tally();
  let next = 0;
  const worker = async () => {
    while (Date.now() < end) {
      const outcome = await oneCall(client, next++, prefix, args.deadlineMs);
      window.record(outcome);
      if (args.intervalMs) await sleep(args.intervalMs);
    }
  };
  const workers = Promise.all(Array.from({length: args.concurrency}, worker));
  for (let second = 1; ; second++) {
    await sleep(Math.max(0, Math.min(start + second * 1000, end) - Date.now()));
    const finished = window;
    window = new Tally();
    overall.merge(finished);
    process.stdout.write(finished.toJson({t: second}) + '\n');
    if (Date.now() >= end) break;
  }
  await workers;
  overall.merge(window);
  process.stdout.write(overall.toJson({summary: true, elapsed_ms: Date.now() - start}) + '\n');
}

main().then(
  () => process.exit(0),
  (e) => {
    if (e instanceof SetupExit) return; // fail() exits once its line is written
    process.stderr.write(`client.js: ${e.stack || e}\n`);
    process.exit(1);
  });
