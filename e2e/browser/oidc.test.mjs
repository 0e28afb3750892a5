// Sign-in by SSO in a real headless Chromium against a real OpenID Provider (the certified
// `oidc-provider` package) started here on loopback: the authorization code flow with PKCE through
// the provider's own login and consent pages, org and role mapping, and tokens the collector must
// refuse (wrong signature, wrong audience, expired), made by a small proxy in front of the
// provider's token endpoint. Screenshots in target/screenshots/oidc-*.png.
//
// The provider is reached as `localhost` and the collector as `127.0.0.1`: two sites, as a real
// provider and dashboard are, so the browser's SameSite rules apply as they would in use.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, mkdirSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, request as httpRequest } from 'node:http';
import { generateKeyPairSync, sign as cryptoSign, randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import * as h from './harness.mjs';
import Provider from 'oidc-provider';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const bin = join(root, 'target/release/tally-collector');
const shots = join(root, 'target/screenshots');
const CLIENT_ID = 'tally-dashboard';
const CLIENT_SECRET = 'cs-' + randomBytes(24).toString('hex');

// Who the provider knows. The login typed on its page is the account id.
const accounts = {
  ann: { email: 'ann@acme.test', email_verified: true, name: 'Ann', groups: ['staff', 'tally-admins'] },
  vic: { email: 'vic@acme.test', email_verified: true, name: 'Vic', groups: ['staff'] },
  eve: { email: 'eve@acme.test', email_verified: false, name: 'Eve', groups: ['tally-admins'] },
  gus: { email: 'gus@globex.test', email_verified: true, name: 'Gus', groups: [] },
  zed: { email: 'zed@unmapped.test', email_verified: true, name: 'Zed', groups: [] },
  // The org claim (`tenant`): T-100 is mapped to globex, and wins over the email's domain.
  tia: { email: 'tia@acme.test', email_verified: true, name: 'Tia', groups: [], tenant: 'T-100' },
  // A value the user could have typed at the provider, naming an org outright: not mapped.
  mal: { email: 'mal@acme.test', email_verified: true, name: 'Mal', groups: [], tenant: 'globex' },
};

let tmp, data, collector, collectorLog = '', base, browser;
let opServer, proxyServers = [], issuer;
const started = [];
// What crossed the wire between the collector and the provider's token endpoint, to be looked
// for afterwards in the collector's log and database.
const canaries = new Set([CLIENT_SECRET]);
// How the proxy changes the next ID tokens: null, 'badsig', 'aud' or 'expired'.
let tamper = null;

const opKey = generateKeyPairSync('rsa', { modulusLength: 2048 });
const otherKey = generateKeyPairSync('rsa', { modulusLength: 2048 });
const opJwk = { ...opKey.privateKey.export({ format: 'jwk' }), kid: 'op-key-1', alg: 'RS256', use: 'sig' };

function freePort(host = '127.0.0.1') {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, host, () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

function listen(server, port, host) {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => resolve(server.address().port));
  });
}

const b64url = (buf) => Buffer.from(buf).toString('base64url');
const decode = (seg) => JSON.parse(Buffer.from(seg, 'base64url').toString());

function resign(token, change, key) {
  const [h, p] = token.split('.');
  const header = decode(h);
  const payload = decode(p);
  change(payload);
  const input = b64url(JSON.stringify(header)) + '.' + b64url(JSON.stringify(payload));
  return input + '.' + b64url(cryptoSign('sha256', Buffer.from(input), key));
}

function tampered(idToken) {
  const now = Math.floor(Date.now() / 1000);
  switch (tamper) {
    case 'badsig': return resign(idToken, () => {}, otherKey.privateKey);
    case 'aud': return resign(idToken, (c) => { c.aud = 'someone-else'; }, opKey.privateKey);
    case 'expired': return resign(idToken, (c) => { c.exp = now - 3600; c.iat = now - 7200; }, opKey.privateKey);
    default: return idToken;
  }
}

// In front of the provider: passes everything through, records what the token endpoint is sent
// and answers, and changes the ID token when `tamper` says so.
function proxy(opPort) {
  return (req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks);
      const isToken = req.method === 'POST' && req.url.startsWith('/token');
      if (isToken) {
        const code = new URLSearchParams(body.toString()).get('code');
        if (code) canaries.add(code);
      }
      const up = httpRequest({ host: '127.0.0.1', port: opPort, method: req.method, path: req.url, headers: req.headers }, (upRes) => {
        const out = [];
        upRes.on('data', (c) => out.push(c));
        upRes.on('end', () => {
          let answer = Buffer.concat(out);
          const headers = { ...upRes.headers };
          if (isToken && upRes.statusCode === 200) {
            const json = JSON.parse(answer.toString());
            for (const k of ['id_token', 'access_token', 'refresh_token']) if (json[k]) canaries.add(json[k]);
            json.id_token = tampered(json.id_token);
            canaries.add(json.id_token);
            answer = Buffer.from(JSON.stringify(json));
            headers['content-length'] = String(answer.length);
          }
          res.writeHead(upRes.statusCode, headers);
          res.end(answer);
        });
      });
      up.on('error', (e) => { res.writeHead(502); res.end(String(e)); });
      up.end(body);
    });
  };
}

function cli(args, input) {
  return execFileSync(bin, [...args, '--data-dir', data], { input, encoding: 'utf8' }).trim();
}

function startCollector(args, dir) {
  const env = { ...process.env };
  delete env.TALLY_OIDC_CLIENT_SECRET;
  const proc = spawn(bin, ['serve', '--data-dir', dir, ...args], {
    env,
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  started.push(proc);
  let log = '';
  proc.stderr.on('data', (d) => { log += d; });
  const ready = new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('collector did not start: ' + log)), 15000);
    proc.stderr.on('data', () => {
      if (/listening on http:\/\//.test(log)) { clearTimeout(timer); resolve(); }
    });
    proc.on('exit', (c) => { clearTimeout(timer); reject(new Error('collector exited ' + c + ': ' + log)); });
  });
  return { proc, ready, log: () => log };
}

const minutesAgo = (m) => new Date(Date.now() - m * 60e3).toISOString();
function event(id, extra) {
  return {
    request_id: id, timestamp: minutesAgo(30), org_id: null, provider: 'openai', api: 'chat_completions',
    endpoint: '/v1/chat/completions', model_requested: 'gpt-4o-mini', model_actual: 'gpt-4o-mini-2024-07-18',
    status: 200, streaming: false, latency_ms: 100, ttfb_ms: 40, input_tokens: 1000, output_tokens: 200,
    cached_input_tokens: 0, cache_write_tokens: 0, reasoning_tokens: 0, token_source: 'exact',
    measured_output_tokens: null, cost_usd: 0.25, error_category: null, error_source: null, team: 'payments',
    app: 'checkout', feature: 'search', task: null, session_id: null, user: 'ann', rule: null, routed: false,
    ...extra,
  };
}

const ingest = (key, events) => h.ingest(base, key, events);

before(async () => {
  tmp = mkdtempSync(join(tmpdir(), 'tally-oidc-'));
  data = join(tmp, 'data');
  mkdirSync(shots, { recursive: true });
  const keyA = cli(['org', 'create', 'acme']);
  const keyG = cli(['org', 'create', 'globex']);
  // A local user too: passwords keep working beside SSO unless turned off.
  cli(['user', 'add', '--org', 'acme', '--email', 'local@acme.test', '--role', 'viewer'], 'correct horse battery staple\n');

  const collectorPort = await freePort();
  base = `http://127.0.0.1:${collectorPort}`;
  const proxyPort = await freePort();
  issuer = `http://localhost:${proxyPort}`;

  const provider = new Provider(issuer, {
    clients: [{
      client_id: CLIENT_ID, client_secret: CLIENT_SECRET, redirect_uris: [base + '/auth/callback'],
      grant_types: ['authorization_code'], response_types: ['code'], token_endpoint_auth_method: 'client_secret_basic',
    }],
    jwks: { keys: [opJwk] },
    pkce: { required: () => true },
    async findAccount(ctx, id) {
      const a = accounts[id];
      return a && { accountId: id, claims: async () => ({ sub: id, ...a }) };
    },
    claims: { openid: ['sub'], email: ['email', 'email_verified'], profile: ['name', 'groups', 'tenant'] },
    // Scope claims in the ID token, as Google, Keycloak or Auth0 put them.
    conformIdTokenClaims: false,
    features: { devInteractions: { enabled: true } },
    cookies: { keys: [randomBytes(16).toString('hex')] },
  });
  opServer = createServer(provider.callback());
  const opPort = await listen(opServer, 0, '127.0.0.1');
  // `localhost` may resolve to either loopback address: the proxy answers on both.
  for (const host of ['127.0.0.1', '::1']) {
    const s = createServer(proxy(opPort));
    try { await listen(s, proxyPort, host); proxyServers.push(s); } catch { /* no IPv6 loopback */ }
  }

  const secretFile = join(tmp, 'client-secret');
  writeFileSync(secretFile, CLIENT_SECRET + '\n', { mode: 0o600 });
  const c = startCollector([
    '--listen', `127.0.0.1:${collectorPort}`,
    '--oidc-issuer', issuer, '--oidc-client-id', CLIENT_ID, '--oidc-client-secret-file', secretFile,
    '--oidc-org-domain', 'acme.test=acme', '--oidc-org-domain', 'globex.test=globex',
    '--oidc-admin-claim', 'groups=tally-admins',
    '--oidc-org-claim', 'tenant', '--oidc-org-claim-value', 'T-100=globex',
  ], data);
  collector = c.proc;
  await c.ready;
  collectorLog = c.log;

  // acme: 4 requests, $1.00; globex: one of $99, never shown to acme.
  await ingest(keyA, [0, 1, 2, 3].map((i) => event('a' + i)));
  await ingest(keyG, [event('g0', { cost_usd: 99, team: 'secret-team' })]);

  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
});

after(async () => {
  await browser?.close();
  for (const p of started) p.kill('SIGKILL');
  for (const s of proxyServers) s.close();
  opServer?.close();
  if (tmp) rmSync(tmp, { recursive: true, force: true });
});

// Through the collector's login page and the provider's own pages (login, then consent), back
// to the collector. Returns the context and page where the browser ended.
async function ssoSignIn(login, shot) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 1200 } });
  const page = await context.newPage();
  await page.goto(base + '/');
  assert.match(page.url(), /\/login$/);
  await page.click('#sso a');
  await page.waitForSelector('input[name=prompt][value=login]', { state: 'attached' });
  assert.ok(page.url().startsWith(issuer + '/interaction/'), page.url());
  await page.fill('input[name=login]', login);
  await page.fill('input[name=password]', 'any password');
  await page.click('button[type=submit]');
  await page.waitForSelector('input[name=prompt][value=consent]', { state: 'attached' });
  await page.click('button[type=submit]');
  await page.waitForURL((u) => u.href.startsWith(base));
  await page.waitForLoadState('load');
  if (shot) await page.screenshot({ path: join(shots, `oidc-${shot}.png`), fullPage: true });
  return { context, page };
}

const session = (page) => page.evaluate(async () => {
  const r = await fetch('/api/v1/session');
  return { status: r.status, body: r.status === 200 ? await r.json() : null };
});

async function assertRefused(login, pattern, shot) {
  const { context, page } = await ssoSignIn(login, shot);
  assert.equal(new URL(page.url()).pathname, '/auth/callback', 'ends on the error page');
  const message = await page.textContent('#sso-error');
  assert.match(message, pattern);
  assert.equal(await page.isVisible('#sso a'), true, 'the page offers to sign in again');
  const cookies = await context.cookies(base);
  assert.deepEqual(cookies.filter((c) => c.name === 'tally_session'), [], 'no session cookie');
  assert.equal((await session(page)).status, 401);
  await page.goto(base + '/');
  assert.match(page.url(), /\/login$/, 'the dashboard is still closed');
  await context.close();
}

test('the login page offers SSO beside the password form, within the CSP', async () => {
  const context = await browser.newContext();
  const page = await context.newPage();
  const errors = [];
  page.on('console', (m) => { if (m.type() === 'error') errors.push(m.text()); });
  const resp = await page.goto(base + '/login');
  assert.match(resp.headers()['content-security-policy'], /default-src 'self'/);
  assert.equal(await page.textContent('#sso a'), 'Sign in with SSO');
  assert.equal(await page.isVisible('form[action="/login"]'), true);
  assert.equal(await page.isVisible('#sso-error'), false);
  await page.screenshot({ path: join(shots, 'oidc-login.png'), fullPage: true });
  assert.deepEqual(errors, []);
  await context.close();
});

test('an admin signs in through the provider and sees the mapped org\'s data', async () => {
  const { context, page } = await ssoSignIn('ann');
  await page.waitForURL(base + '/');
  await page.waitForSelector('body[data-loaded]');
  const s = await session(page);
  assert.equal(s.status, 200);
  assert.equal(s.body.org, 'acme');
  assert.equal(s.body.email, 'ann@acme.test');
  assert.equal(s.body.role, 'admin');
  assert.match(await page.textContent('#org'), /acme/);
  const summary = await page.evaluate(async () => (await (await fetch('/api/v1/summary')).json()));
  const cost = summary.rows.reduce((a, r) => a + (r.cost_usd ?? 0), 0);
  assert.equal(Math.round(cost * 100) / 100, 1.0, JSON.stringify(summary));
  const text = await page.textContent('body');
  assert.ok(text.includes('$1.00'), 'the page shows acme\'s spend');
  assert.ok(!text.includes('$99'), 'and nothing of globex');
  const cookies = await context.cookies(base);
  const sessionCookie = cookies.find((c) => c.name === 'tally_session');
  assert.ok(sessionCookie?.httpOnly && sessionCookie.sameSite === 'Strict');
  assert.equal(cookies.find((c) => c.name === 'tally_sso'), undefined, 'the sign-in binding is cleared');
  await page.screenshot({ path: join(shots, 'oidc-dashboard.png'), fullPage: true });
  await context.close();
});

test('roles: a user outside the admin group is a viewer; another domain maps to its org', async () => {
  let { context, page } = await ssoSignIn('vic');
  await page.waitForURL(base + '/');
  let s = await session(page);
  assert.deepEqual([s.body.org, s.body.email, s.body.role], ['acme', 'vic@acme.test', 'viewer']);
  await context.close();
  ({ context, page } = await ssoSignIn('gus'));
  await page.waitForURL(base + '/');
  s = await session(page);
  assert.deepEqual([s.body.org, s.body.role], ['globex', 'viewer']);
  await context.close();
  // The local viewer still signs in with a password.
  const local = await browser.newContext();
  const p = await local.newPage();
  await p.goto(base + '/login');
  await p.fill('input[name=email]', 'local@acme.test');
  await p.fill('input[name=password]', 'correct horse battery staple');
  await p.click('form[action="/login"] button[type=submit]');
  await p.waitForURL(base + '/');
  s = await session(p);
  assert.deepEqual([s.body.org, s.body.role], ['acme', 'viewer']);
  await local.close();
});

test('the org claim maps through --oidc-org-claim-value only; a value naming an org is refused', async () => {
  const { context, page } = await ssoSignIn('tia');
  await page.waitForURL(base + '/');
  const s = await session(page);
  assert.deepEqual([s.body.org, s.body.email, s.body.role], ['globex', 'tia@acme.test', 'viewer']);
  await context.close();
  // "globex" is an org's name, but no mapping names it: refused, not passed over for the domain.
  await assertRefused('mal', /unmapped identity: no org here is mapped to the value of your "tenant" claim/, 'unmapped-claim');
  assert.match(collectorLog(), /sso: sign-in refused \(issuer [^)]*\): unmapped identity: claim tenant is "globex", which no --oidc-org-claim-value maps/);
});

test('an SSO user has no password: the password form refuses every one', async () => {
  // ann was made at her first SSO sign-in (above), with no password.
  for (const password of ['', 'any password', 'correct horse battery staple']) {
    const r = await fetch(base + '/login', {
      method: 'POST', redirect: 'manual',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams({ email: 'ann@acme.test', password }).toString(),
    });
    assert.equal(r.status, 303, password);
    assert.equal(r.headers.get('location'), '/login?error=1');
    assert.equal(r.headers.get('set-cookie'), null);
  }
});

test('an unverified email is refused, whatever its domain', async () => {
  await assertRefused('eve', /email address is not verified/, 'unverified');
});

test('an identity no org is mapped to is refused', async () => {
  await assertRefused('zed', /no org here is mapped/, 'unmapped');
});

test('an ID token with a wrong signature is refused', async () => {
  tamper = 'badsig';
  try {
    await assertRefused('ann', /signature is wrong/, 'bad-signature');
  } finally { tamper = null; }
});

test('an ID token for another audience is refused', async () => {
  tamper = 'aud';
  try {
    await assertRefused('ann', /meant for another client/, 'wrong-audience');
  } finally { tamper = null; }
});

test('an expired ID token is refused', async () => {
  tamper = 'expired';
  try {
    await assertRefused('ann', /has expired/, 'expired');
  } finally { tamper = null; }
});

test('a denied consent, a replayed callback and a forged state open no session', async () => {
  const context = await browser.newContext();
  const page = await context.newPage();
  let authorize = null;
  page.on('request', (r) => { if (r.url().startsWith(issuer + '/auth?')) authorize = new URL(r.url()); });
  await page.goto(base + '/login');
  await page.click('#sso a');
  await page.waitForSelector('input[name=prompt][value=login]', { state: 'attached' });
  const state = authorize.searchParams.get('state');
  assert.equal(authorize.searchParams.get('code_challenge_method'), 'S256');
  assert.ok(authorize.searchParams.get('nonce'));
  // What a provider sends back when the user refuses consent.
  await page.goto(`${base}/auth/callback?error=access_denied&state=${state}`);
  assert.match(await page.textContent('#sso-error'), /did not sign you in \(access_denied\)/);
  // The same state again: it was used up.
  await page.goto(`${base}/auth/callback?code=whatever&state=${state}`);
  assert.match(await page.textContent('#sso-error'), /expired or was started in another browser/);
  await page.goto(`${base}/auth/callback?code=whatever&state=forged`);
  assert.match(await page.textContent('#sso-error'), /expired or was started in another browser/);
  assert.equal((await session(page)).status, 401);
  await context.close();
});

test('a sign-in started in one browser cannot be finished in another', async () => {
  // The victim's browser is sent a callback URL from the attacker's own sign-in (login CSRF).
  const attacker = await browser.newContext();
  const a = await attacker.newPage();
  let callback = null;
  a.on('request', (r) => { if (r.url().startsWith(base + '/auth/callback')) callback = r.url(); });
  await a.route(base + '/auth/callback**', (route) => route.abort());
  await a.goto(base + '/login');
  await a.click('#sso a');
  await a.waitForSelector('input[name=prompt][value=login]', { state: 'attached' });
  await a.fill('input[name=login]', 'ann');
  await a.fill('input[name=password]', 'x');
  await a.click('button[type=submit]');
  await a.waitForSelector('input[name=prompt][value=consent]', { state: 'attached' });
  await a.click('button[type=submit]').catch(() => {});
  for (let i = 0; i < 50 && !callback; i++) await new Promise((r) => setTimeout(r, 100));
  assert.ok(callback?.includes('code='), 'the attacker got a callback URL with a code');
  const victim = await browser.newContext();
  const v = await victim.newPage();
  await v.goto(callback);
  assert.match(await v.textContent('#sso-error'), /started in another browser/);
  assert.equal((await session(v)).status, 401);
  await attacker.close();
  await victim.close();
});

test('no token, code or client secret reaches the collector\'s log or database', async () => {
  // Sign-ins above exchanged codes and received tokens through the proxy.
  assert.ok(canaries.size >= 10, 'canaries were seen on the wire: ' + canaries.size);
  const log = collectorLog();
  assert.match(log, /sso: signed in \(issuer http:\/\/localhost:\d+ subject [0-9a-f]{12}\) to org acme as admin/);
  assert.match(log, /sso: sign-in refused .*ID token refused: the ID token's signature is wrong/);
  for (const who of Object.values(accounts)) assert.ok(!log.includes(who.email), 'no email in the log');
  const files = readdirSync(data).map((f) => [f, readFileSync(join(data, f))]);
  assert.ok(files.some(([f]) => f === 'tally.db'));
  for (const canary of canaries) {
    // The whole value, and for JWTs their signature part alone.
    const needles = [canary, ...(canary.split('.').length === 3 ? [canary.split('.')[2]] : [])];
    for (const needle of needles) {
      assert.ok(!log.includes(needle), 'a secret value is in the collector log');
      for (const [f, bytes] of files) assert.equal(bytes.indexOf(needle), -1, `a secret value is in ${f}`);
    }
  }
});

test('with --no-local-login only SSO is offered, and passwords are refused', async () => {
  const dir = join(tmp, 'sso-only');
  execFileSync(bin, ['org', 'create', 'acme', '--data-dir', dir], { encoding: 'utf8' });
  execFileSync(bin, ['user', 'add', '--org', 'acme', '--email', 'local@acme.test', '--data-dir', dir], { input: 'correct horse battery staple\n' });
  const port = await freePort();
  const c = startCollector([
    '--listen', `127.0.0.1:${port}`, '--no-local-login',
    '--oidc-issuer', issuer, '--oidc-client-id', CLIENT_ID, '--oidc-org-domain', 'acme.test=acme',
  ], dir);
  await c.ready;
  const context = await browser.newContext();
  const page = await context.newPage();
  await page.goto(`http://127.0.0.1:${port}/login`);
  assert.equal(await page.isVisible('#sso a'), true);
  assert.equal(await page.isVisible('form[action="/login"]'), false);
  await page.screenshot({ path: join(shots, 'oidc-sso-only.png'), fullPage: true });
  const r = await fetch(`http://127.0.0.1:${port}/login`, {
    method: 'POST', redirect: 'manual',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: 'email=local%40acme.test&password=correct+horse+battery+staple',
  });
  assert.equal(r.status, 403);
  assert.equal(r.headers.get('set-cookie'), null);
  assert.match(await r.text(), /password is turned off/);
  assert.match(c.log(), /passwords are turned off/);
  await context.close();
});

test('a wrong SSO configuration stops the collector at start, saying why', () => {
  const dir = join(tmp, 'bad-config');
  execFileSync(bin, ['org', 'create', 'acme', '--data-dir', dir], { encoding: 'utf8' });
  const cases = [
    [['--oidc-issuer', 'http://id.example.com', '--oidc-client-id', 'x', '--oidc-org-domain', 'acme.test=acme'], /plain http is allowed only for a loopback/],
    [['--oidc-issuer', issuer, '--oidc-org-domain', 'acme.test=acme'], /needs --oidc-client-id/],
    [['--oidc-issuer', issuer, '--oidc-client-id', 'x'], /map users to orgs/],
    [['--oidc-issuer', issuer, '--oidc-client-id', 'x', '--oidc-org-domain', 'acme.test=nosuch'], /there is no org nosuch/],
    [['--oidc-issuer', issuer, '--oidc-client-id', 'x', '--oidc-org-claim', 'tenant'], /needs --oidc-org-claim-value VALUE=ORG/],
    [['--oidc-issuer', issuer, '--oidc-client-id', 'x', '--oidc-org-claim', 'tenant', '--oidc-org-claim-value', 'T-1=nosuch'], /there is no org nosuch/],
    [['--no-local-login'], /no way to sign in/],
    [['--oidc-issuer', issuer, '--oidc-client-id', 'x', '--oidc-org-domain', 'acme.test=acme', '--oidc-client-secret'], /unexpected argument/],
  ];
  for (const [args, want] of cases) {
    const r = spawnSync(bin, ['serve', '--listen', '127.0.0.1:0', '--data-dir', dir, ...args], { encoding: 'utf8', timeout: 10000 });
    assert.notEqual(r.status, 0, args.join(' '));
    assert.match(r.stderr, want);
  }
});
