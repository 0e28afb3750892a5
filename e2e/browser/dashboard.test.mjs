// The dashboard in a real headless Chromium: sign in, load every view against seeded data,
// assert the figures shown, keep screenshots (target/screenshots/). Run by `make test`.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, mkdirSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const bin = join(root, 'target/release/tally-collector');
const shots = join(root, 'target/screenshots');
const PASSWORD = 'correct horse battery staple';
let collector, base, browser, keyA, keyB;

function cli(data, args, input) {
  return execFileSync(bin, [...args, '--data-dir', data], { input, encoding: 'utf8' }).trim();
}

async function waitForPort(proc) {
  let log = '';
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('collector did not start: ' + log)), 15000);
    proc.stderr.on('data', (d) => {
      log += d;
      const m = log.match(/listening on http:\/\/127\.0\.0\.1:(\d+)/);
      if (m) { clearTimeout(timer); resolve(Number(m[1])); }
    });
    proc.on('exit', (c) => reject(new Error('collector exited ' + c + ': ' + log)));
  });
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

async function ingest(key, events) {
  const r = await fetch(base + '/v1/events', {
    method: 'POST', headers: { authorization: 'Bearer ' + key }, body: JSON.stringify(events),
  });
  assert.equal(r.status, 202, await r.text());
}

before(async () => {
  const data = mkdtempSync(join(tmpdir(), 'tally-browser-'));
  mkdirSync(shots, { recursive: true });
  keyA = cli(data, ['org', 'create', 'acme']);
  keyB = cli(data, ['org', 'create', 'globex']);
  cli(data, ['user', 'add', '--org', 'acme', '--email', 'ann@acme.test'], PASSWORD + '\n');
  cli(data, ['user', 'add', '--org', 'globex', '--email', 'bob@globex.test'], PASSWORD + '\n');
  collector = spawn(bin, ['serve', '--listen', '127.0.0.1:0', '--data-dir', data], { stdio: ['ignore', 'ignore', 'pipe'] });
  base = 'http://127.0.0.1:' + (await waitForPort(collector));
  // acme: 8 requests, $2.00 in all. search: 4 x $0.25; untagged: 2 x $0.25 (one a 429);
  // claude: 2 x $0.25, measured and calibrated. By namespace: shop (the searches), lab (the
  // untagged), none (claude).
  const shop = { namespace: 'shop', workload: 'cart', principal: 'spiffe://cluster.local/ns/shop/sa/cart' };
  const lab = { namespace: 'lab', workload: 'notebook' };
  const events = [];
  for (let i = 0; i < 4; i++) events.push(event('s' + i, { latency_ms: 100 + i, ...shop }));
  events.push(event('u0', { feature: null, ...lab }));
  events.push(event('u1', { feature: null, ...lab, status: 429, error_category: 'rate_limited', error_source: 'provider', input_tokens: null, output_tokens: null, token_source: null }));
  events.push(event('c0', { provider: 'anthropic', api: 'messages', endpoint: '/v1/messages', model_requested: 'claude-sonnet-4-5', model_actual: 'claude-sonnet-4-5-20250929', team: 'support', token_source: 'measured', measured_output_tokens: 200 }));
  events.push(event('c1', { provider: 'anthropic', api: 'messages', endpoint: '/v1/messages', model_requested: 'claude-sonnet-4-5', model_actual: 'claude-sonnet-4-5-20250929', team: 'support', token_source: 'measured_calibrated', measured_output_tokens: 180 }));
  await ingest(keyA, events);
  await ingest(keyB, [event('g0', { cost_usd: 99, team: 'secret-team', feature: 'globex-only' })]);
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
});

after(async () => {
  await browser?.close();
  collector?.kill('SIGKILL');
});

async function signIn(email) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 1800 } });
  const page = await context.newPage();
  await page.goto(base + '/');
  assert.match(page.url(), /\/login$/, 'signed-out visitors go to the login page');
  await page.fill('input[name=email]', email);
  await page.fill('input[name=password]', PASSWORD);
  await page.click('button[type=submit]');
  await page.waitForSelector('body[data-loaded]');
  return { context, page };
}

const cells = (page, table) =>
  page.$$eval(`#${table} tbody tr`, (trs) => trs.map((tr) => [...tr.children].map((td) => td.textContent)));

test('wrong password stays on the login page', async () => {
  const context = await browser.newContext();
  const page = await context.newPage();
  await page.goto(base + '/login');
  await page.fill('input[name=email]', 'ann@acme.test');
  await page.fill('input[name=password]', 'not the password');
  await page.click('button[type=submit]');
  await page.waitForSelector('#error:not([hidden])');
  assert.equal((await context.cookies()).length, 0);
  await context.close();
});

test('overview, chart, breakdowns, models, errors and log show the seeded figures', async () => {
  const { context, page } = await signIn('ann@acme.test');
  assert.equal(await page.textContent('#org'), 'acme · ann@acme.test');
  assert.equal(await page.textContent('#spend'), '$2.00');
  assert.equal(await page.textContent('#requests'), '8');
  assert.equal(await page.textContent('#error-rate'), '12.5%');
  assert.equal(await page.textContent('#per-hour'), '$0.0833');
  // The stacked chart drew one dataset per model.
  const datasets = await page.evaluate(() => Chart.getChart('spend-chart').data.datasets.map((d) => d.label).sort());
  assert.deepEqual(datasets, ['claude-sonnet-4-5-20250929', 'gpt-4o-mini-2024-07-18']);
  await page.screenshot({ path: join(shots, 'overview.png'), fullPage: true });

  const byFeature = await cells(page, 'breakdown');
  assert.deepEqual(byFeature.map((r) => [r[0], r[1], r[2], r[3], r[8]]), [
    ['search', '$1.50', '75.0%', '6', '0.0%'],
    ['untagged', '$0.50', '25.0%', '2', '50.0%'],
  ]);
  await page.selectOption('#breakdown-by', 'team');
  await page.waitForFunction(() => document.querySelector('#breakdown tbody tr td')?.textContent === 'payments');
  assert.deepEqual((await cells(page, 'breakdown')).map((r) => [r[0], r[1]]), [['payments', '$1.50'], ['support', '$0.50']]);
  await page.selectOption('#breakdown-by', 'namespace');
  await page.waitForFunction(() => document.querySelector('#breakdown tbody tr td')?.textContent === 'shop');
  assert.deepEqual((await cells(page, 'breakdown')).map((r) => [r[0], r[1], r[2], r[3]]), [
    ['shop', '$1.00', '50.0%', '4'],
    ['(none)', '$0.50', '25.0%', '2'],
    ['lab', '$0.50', '25.0%', '2'],
  ]);
  await page.selectOption('#breakdown-by', 'workload');
  await page.waitForFunction(() => document.querySelector('#breakdown tbody tr td')?.textContent === 'cart');
  assert.deepEqual((await cells(page, 'breakdown')).map((r) => r[0]), ['cart', '(none)', 'notebook']);

  const models = await cells(page, 'models');
  assert.deepEqual(models.map((r) => r.slice(0, 4)), [
    ['gpt-4o-mini-2024-07-18', 'openai', '6', '$1.50'],
    ['claude-sonnet-4-5-20250929', 'anthropic', '2', '$0.50'],
  ]);
  assert.deepEqual(await cells(page, 'errors'), [['rate_limited', 'provider', '1']]);

  const log = await cells(page, 'log');
  assert.equal(log.length, 8);
  const sources = log.map((r) => r[10]).sort();
  assert.deepEqual(log.map((r) => r[5]).sort(), ['lab', 'lab', 'shop', 'shop', 'shop', 'shop', '–', '–']);
  assert.deepEqual([...new Set(log.map((r) => r[6]))].sort(), ['cart', 'notebook', '–']);
  assert.deepEqual(sources, ['Exact', 'Exact', 'Exact', 'Exact', 'Exact', 'Measured', 'Measured (calibrated)', '–']);
  assert.match(await page.textContent('.notice'), /never stores prompts or responses/);
  await page.fill('#log-filters input[name=namespace]', 'shop');
  await page.click('#log-filters button[type=submit]');
  await page.waitForFunction(() => document.querySelectorAll('#log tbody tr').length === 4);
  await page.fill('#log-filters input[name=namespace]', '');
  await page.fill('#log-filters input[name=team]', 'support');
  await page.click('#log-filters button[type=submit]');
  await page.waitForFunction(() => document.querySelectorAll('#log tbody tr').length === 2);
  const csv = await page.evaluate(async () => (await fetch(document.getElementById('csv').href)).text());
  const lines = csv.trim().split('\r\n');
  assert.equal(lines.length, 3, 'header and the two filtered events');
  assert.ok(lines[0].split(',').includes('token_source'));
  assert.ok(['namespace', 'workload', 'principal'].every((c) => lines[0].split(',').includes(c)));
  await page.screenshot({ path: join(shots, 'requests.png'), fullPage: true });

  // Nothing of the other org anywhere.
  assert.ok(!(await page.content()).includes('secret-team'));
  const cookie = (await context.cookies()).find((c) => c.name === 'tally_session');
  assert.ok(cookie.httpOnly);
  assert.equal(cookie.sameSite, 'Strict');
  await context.close();
});

test('each org sees only its own data, and logout needs the CSRF token', async () => {
  const { context, page } = await signIn('bob@globex.test');
  assert.equal(await page.textContent('#spend'), '$99.00');
  assert.equal(await page.textContent('#requests'), '1');
  const api = await page.evaluate(async () => (await fetch('/api/v1/events?team=payments')).json());
  assert.deepEqual(api.events, [], 'acme events are out of reach');
  const forged = await page.evaluate(async () => (await fetch('/logout', { method: 'POST', body: new URLSearchParams({ csrf: 'forged' }) })).status);
  assert.equal(forged, 403);
  await page.click('#logout button');
  await page.waitForURL(/\/login$/);
  const after = await page.evaluate(async () => (await fetch('/api/v1/summary')).status);
  assert.equal(after, 401, 'the session ended');
  await page.screenshot({ path: join(shots, 'signed-out.png') });
  await context.close();
});

test('pages carry the security headers', async () => {
  for (const path of ['/login', '/']) {
    const r = await fetch(base + path, { redirect: 'manual' });
    assert.equal(r.headers.get('x-frame-options'), 'DENY', path);
    assert.match(r.headers.get('content-security-policy'), /frame-ancestors 'none'/);
  }
  assert.ok(readFileSync(join(shots, 'overview.png')).length > 10000, 'a real screenshot');
});
