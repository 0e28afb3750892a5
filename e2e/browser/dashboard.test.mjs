// The dashboard in a real headless Chromium: sign in, load every view against seeded data,
// assert the figures shown, keep screenshots (target/screenshots/). Run by `make test`.
//
// The page's clock is fixed at T0, the moment the events were seeded relative to, so that every
// window the page reads (the range, the last hour, the month to date) is known exactly here. The
// browser runs in New York time, so that a page that mixed local time with UTC would show it.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, mkdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

import * as h from './harness.mjs';
import { root, bin, shots, PASSWORD, MINUTE, HOUR, DAY, waitForPort, settle, cells, usd } from './harness.mjs';

const T0 = Date.now();
let collector, base, browser, keyA, keyB, keyC, keyD, dataDir;

const cli = h.cli;
const ago = (m) => new Date(T0 - m * MINUTE).toISOString();

function event(id, extra) {
  return {
    request_id: id, timestamp: ago(30), org_id: null, provider: 'openai', api: 'chat_completions',
    endpoint: '/v1/chat/completions', model_requested: 'gpt-4o-mini', model_actual: 'gpt-4o-mini-2024-07-18',
    status: 200, streaming: false, latency_ms: 100, ttfb_ms: 40, input_tokens: 1000, output_tokens: 200,
    cached_input_tokens: 0, cache_write_tokens: 0, reasoning_tokens: 0, token_source: 'exact',
    measured_output_tokens: null, cost_usd: 0.25, error_category: null, error_source: null, team: 'payments',
    app: 'checkout', feature: 'search', task: null, session_id: null, user: 'ann', rule: null, routed: false,
    ...extra,
  };
}

// acme's events. In the last hour (30 min ago): 4 searches ($0.25 each, namespace shop), 2
// untagged (namespace lab; one a 429 that cost nothing), 2 claude chats of team support ($0.50
// each; one read 100 000 input tokens from the cache, which saved 100 000 x ($3.00 - $0.30) / 1M
// = $0.27 at list price) and 2 calls to a model with no known price (acme-llm-1, team research).
// 90 min ago one more search ($0.75); 36 h ago one ($1.00, the previous 24 hours); 10 days ago
// one ($2.00).
const shop = { namespace: 'shop', workload: 'cart', principal: 'spiffe://cluster.local/ns/shop/sa/cart' };
const lab = { namespace: 'lab', workload: 'notebook' };
const claude = {
  provider: 'anthropic', api: 'messages', endpoint: '/v1/messages', model_requested: 'claude-sonnet-4-5',
  model_actual: 'claude-sonnet-4-5-20250929', team: 'support', app: 'helpdesk', feature: 'chat', cost_usd: 0.5,
};
const unpriced = {
  model_requested: 'acme-llm-1', model_actual: null, team: 'research', app: 'notes', feature: 'summarize',
  cost_usd: null, input_tokens: 5000, output_tokens: 1000,
};
const ACME = [
  ...[0, 1, 2, 3].map((i) => event('s' + i, { latency_ms: 100 + i, ...shop })),
  event('u0', { feature: null, ...lab }),
  event('u1', { feature: null, ...lab, status: 429, error_category: 'rate_limited', error_source: 'provider', input_tokens: null, output_tokens: null, token_source: null, cost_usd: 0 }),
  event('c0', { ...claude, input_tokens: 101000, cached_input_tokens: 100000, token_source: 'measured', measured_output_tokens: 200 }),
  event('c1', { ...claude, token_source: 'measured_calibrated', measured_output_tokens: 180 }),
  event('x0', unpriced),
  event('x1', unpriced),
  event('h0', { timestamp: ago(90), cost_usd: 0.75, ...shop }),
  event('p0', { timestamp: ago(36 * 60), cost_usd: 1, ...shop }),
  event('d0', { timestamp: ago(10 * 24 * 60), cost_usd: 2, ...shop }),
];

// Labels come from request headers: a team that is a formula, a command, and a plain number.
const HOOLI_TEAMS = ['=HYPERLINK("http://x","y")', '@SUM(1)', '-1.5'];

const ingest = (key, events) => h.ingest(base, key, events);
const read = (key, path) => h.read(base, key, path);

before(async () => {
  dataDir = mkdtempSync(join(tmpdir(), 'tally-browser-'));
  mkdirSync(shots, { recursive: true });
  keyA = cli(dataDir, ['org', 'create', 'acme']);
  keyB = cli(dataDir, ['org', 'create', 'globex']);
  keyC = cli(dataDir, ['org', 'create', 'initech']);
  keyD = cli(dataDir, ['org', 'create', 'hooli']);
  cli(dataDir, ['user', 'add', '--org', 'acme', '--email', 'ann@acme.test'], PASSWORD + '\n');
  cli(dataDir, ['user', 'add', '--org', 'globex', '--email', 'bob@globex.test'], PASSWORD + '\n');
  cli(dataDir, ['user', 'add', '--org', 'initech', '--email', 'carol@initech.test'], PASSWORD + '\n');
  cli(dataDir, ['user', 'add', '--org', 'hooli', '--email', 'dan@hooli.test'], PASSWORD + '\n');
  collector = spawn(bin, ['serve', '--listen', '127.0.0.1:0', '--data-dir', dataDir], { stdio: ['ignore', 'ignore', 'pipe'] });
  base = 'http://127.0.0.1:' + (await waitForPort(collector));
  await ingest(keyA, ACME);
  await ingest(keyB, [event('g0', { cost_usd: 99, team: 'secret-team', feature: 'globex-only' })]);
  // initech: 450 requests, one a minute from 5 minutes ago, for the log's pages.
  await ingest(keyC, Array.from({ length: 450 }, (_, i) => event('n' + String(i).padStart(3, '0'), { timestamp: ago(5 + i), team: 'bulk' })));
  // hooli: team names that a spreadsheet would run as formulas, or read as a number.
  await ingest(keyD, HOOLI_TEAMS.map((team, i) => event('f' + i, { team, cost_usd: 1 + i })));
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
});

after(async () => {
  await browser?.close();
  collector?.kill('SIGKILL');
  if (dataDir) rmSync(dataDir, { recursive: true, force: true });
});

// A signed-in page with its clock at T0, and every console error and page error it reports.
async function signIn(email, opts = {}) {
  const context = await browser.newContext({
    viewport: opts.viewport || { width: 1280, height: 1800 }, timezoneId: 'America/New_York', locale: 'en-US',
  });
  await context.clock.setFixedTime(T0);
  const page = await context.newPage();
  const problems = [];
  page.on('console', (m) => { if (m.type() === 'error') problems.push(m.text() + ' @ ' + m.location().url); });
  page.on('pageerror', (e) => problems.push('page error: ' + e.message));
  await page.goto(base + '/');
  assert.match(page.url(), /\/login$/, 'signed-out visitors go to the login page');
  await page.fill('input[name=email]', email);
  await page.fill('input[name=password]', PASSWORD);
  await page.click('button[type=submit]');
  await page.waitForSelector('body[data-state=ready]');
  if (opts.path) await open(page, opts.path);
  return { context, page, problems };
}

// Load a URL of the dashboard and wait until every view has drawn.
const open = (page, path) => h.open(base, page, path);

const heads = (page, table) => page.$$eval(`#${table} thead th`, (ths) => ths.map((th) => th.textContent));
const texts = (page, ids) => Promise.all(ids.map((id) => page.textContent('#' + id)));
const chartOf = (page) => page.evaluate(() => {
  const c = Chart.getChart('spend-chart');
  return c ? { labels: c.data.labels, sets: c.data.datasets.map((d) => ({ label: d.label, data: d.data })) } : null;
});
const search = (page) => new URL(page.url()).search;

const pad = (n) => String(n).padStart(2, '0');
const utc = (t) => new Date(t).toISOString().slice(0, 16).replace('T', ' ');
const ms = (v) => (v == null ? '–' : v >= 1000 ? (v / 1000).toFixed(2) + ' s' : v.toFixed(v >= 100 ? 0 : 1) + ' ms');

// Figures of the seeded events in [from, to), as the API sums them (priced cost; unpriced count).
function sum(events, from, to, where = () => true) {
  const inside = events.filter((e) => Date.parse(e.timestamp) >= from && Date.parse(e.timestamp) < to && where(e));
  return {
    cost: inside.reduce((a, e) => a + (e.cost_usd || 0), 0),
    unpriced: inside.filter((e) => e.cost_usd == null).length,
    requests: inside.length,
  };
}

// A chart's expected series: per bucket of `step` over [from, to), the cost of each key.
function series(events, from, to, step, keyOf, hourBuckets) {
  const first = Math.floor(from / step) * step;
  const buckets = [];
  for (let t = first; t < to; t += step) buckets.push(t);
  const out = new Map();
  for (const e of events) {
    const ts = Date.parse(e.timestamp);
    // Buckets cover whole units: an event counts where its bucket starts, if that is shown.
    const b = Math.floor(ts / step) * step;
    if (!hourBuckets && (ts < from || ts >= to)) continue;
    const i = buckets.indexOf(b);
    if (i < 0) continue;
    const k = keyOf(e);
    if (!out.has(k)) out.set(k, buckets.map(() => 0));
    out.get(k)[i] += e.cost_usd || 0;
  }
  return { buckets, out };
}

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

test('overview: cards with the previous 24 h, cache savings, the hour run-rate, and no console errors (favicon)', async () => {
  // The login page, given the time to ask for its icon, logs nothing either.
  const login = await browser.newContext();
  const lp = await login.newPage();
  const loginProblems = [];
  lp.on('console', (m) => { if (m.type() === 'error') loginProblems.push(m.text() + ' @ ' + m.location().url); });
  lp.on('pageerror', (e) => loginProblems.push('page error: ' + e.message));
  await lp.goto(base + '/login');
  // Chromium asks for the icon (the linked one, else /favicon.ico) after the page has loaded.
  await lp.waitForTimeout(2000);
  assert.deepEqual(loginProblems, []);
  await login.close();

  const { context, page, problems } = await signIn('ann@acme.test');
  assert.equal(await page.textContent('#org'), 'acme · ann@acme.test');
  // Last 24 h: $3.00 priced, 2 requests of an unpriced model; the previous 24 h: $1.00, 1 request.
  assert.deepEqual(await texts(page, ['spend', 'spend-unpriced', 'spend-delta']), [
    '≥ $3.00 + unknown', '2 unpriced requests (cost unknown)', '+200.0% vs the previous 24 h ($1.00)',
  ]);
  assert.deepEqual(await texts(page, ['requests', 'requests-delta']), ['11', '+1000.0% vs the previous 24 h (1)']);
  assert.deepEqual(await texts(page, ['error-rate', 'error-rate-delta']), ['9.1%', '+9.1 pp vs the previous 24 h (0.0%)']);
  assert.deepEqual(await texts(page, ['savings', 'savings-delta']), ['$0.27', 'up from $0.00 in the previous 24 h']);
  assert.match(await page.textContent('#card-savings'), /What cached input tokens saved at list price/);
  const total = (await read(keyA, `/api/v1/summary?from=${ago(24 * 60)}&to=${ago(0)}`)).rows[0];
  assert.equal(await page.textContent('#p95'), ms(total.latency_p95_ms));
  // Cost per hour: the last 60 minutes ($2.25 and the unpriced calls) against the 60 before ($0.75).
  assert.deepEqual(await texts(page, ['per-hour', 'per-hour-delta']), ['≥ $2.25 + unknown', '+200.0% vs the previous 60 min ($0.75)']);
  assert.match(await page.textContent('#card-per-hour'), /Run-rate: spend in the last 60 minutes of the range/);
  await page.screenshot({ path: join(shots, 'overview.png'), fullPage: true });

  // The favicon is served, linked, and nothing on the page logged an error.
  const icon = await fetch(base + '/assets/favicon.svg');
  assert.equal(icon.status, 200);
  assert.equal(icon.headers.get('content-type'), 'image/svg+xml');
  assert.match(await icon.text(), /^<svg /);
  assert.equal(await page.getAttribute('link[rel=icon]', 'href'), '/assets/favicon.svg');
  // Nothing of the other org anywhere.
  assert.ok(!(await page.content()).includes('secret-team'));
  const cookie = (await context.cookies()).find((c) => c.name === 'tally_session');
  assert.ok(cookie.httpOnly);
  assert.equal(cookie.sameSite, 'Strict');
  assert.deepEqual(problems, []);
  await context.close();
});

test('cost per hour is a run-rate of the last hour: the same at every range', async () => {
  const { context, page, problems } = await signIn('ann@acme.test');
  for (const range of ['1h', '7d', '30d']) {
    await settle(page, () => page.click(`#range [data-range="${range}"]`));
    assert.equal(await page.textContent('#per-hour'), '≥ $2.25 + unknown', range);
    assert.equal(await page.textContent('#per-hour-delta'), '+200.0% vs the previous 60 min ($0.75)', range);
  }
  assert.deepEqual(problems, []);
  await context.close();
});

test('month to date, its linear forecast and the same days of last month', async () => {
  const { context, page, problems } = await signIn('ann@acme.test');
  const now = new Date(T0);
  const start = Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), 1);
  const next = Date.UTC(now.getUTCFullYear(), now.getUTCMonth() + 1, 1);
  const prevStart = Date.UTC(now.getUTCFullYear(), now.getUTCMonth() - 1, 1);
  const mtd = sum(ACME, start, T0);
  const prev = sum(ACME, prevStart, Math.min(prevStart + (T0 - start), start));
  const cost = (v, u) => (u > 0 ? '≥ ' + usd(v) + ' + unknown' : usd(v));
  const forecast = (mtd.cost * (next - start)) / (T0 - start);
  const months = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];
  const last = new Date(next - DAY);
  const change = prev.cost === 0
    ? (mtd.cost === 0 ? 'no change vs the same days of last month' : 'up from $0.00 in the same days of last month')
    : (mtd.cost >= prev.cost ? '+' : '-') + Math.abs((100 * (mtd.cost - prev.cost)) / prev.cost).toFixed(1) +
      '% vs the same days of last month (' + cost(prev.cost, prev.unpriced) + ')';
  assert.deepEqual(await texts(page, ['mtd', 'forecast', 'mtd-delta']), [
    cost(mtd.cost, mtd.unpriced),
    'Forecast to ' + last.getUTCDate() + ' ' + months[last.getUTCMonth()] + ': ' + cost(forecast, mtd.unpriced) + ' (linear run-rate of month to date)',
    change,
  ]);
  assert.equal(await page.textContent('#card-mtd h2'), 'Month to date (since 1 ' + months[now.getUTCMonth()] + ', UTC)');
  // Month to date does not follow the range.
  await settle(page, () => page.click('#range [data-range="1h"]'));
  assert.equal(await page.textContent('#mtd'), cost(mtd.cost, mtd.unpriced));
  assert.deepEqual(problems, []);
  await context.close();
});

test('unpriced models: unknown, never $0.00, counted and listed', async () => {
  const { context, page, problems } = await signIn('ann@acme.test');
  assert.equal(await page.textContent('#spend'), '≥ $3.00 + unknown');
  assert.ok(await page.isVisible('#unpriced'));
  assert.deepEqual(await heads(page, 'unpriced-models'), ['Model', 'Provider', 'Unpriced requests', 'Input tokens', 'Output tokens']);
  assert.deepEqual(await cells(page, 'unpriced-models'), [['acme-llm-1', 'openai', '2', '10,000', '2,000']]);
  const models = await cells(page, 'models');
  assert.deepEqual(models.map((r) => r.slice(0, 5)), [
    ['gpt-4o-mini-2024-07-18', 'openai', '7', '0', '$2.00'],
    ['claude-sonnet-4-5-20250929', 'anthropic', '2', '0', '$1.00'],
    ['acme-llm-1', 'openai', '2', '2', 'unknown'],
  ]);
  await settle(page, () => page.selectOption('#breakdown-by', 'team'));
  assert.deepEqual((await cells(page, 'breakdown')).map((r) => r.slice(0, 5)), [
    ['payments', '$2.00', '66.7%', '7', '0'],
    ['support', '$1.00', '33.3%', '2', '0'],
    ['research', 'unknown', 'unknown', '2', '2'],
  ]);
  const log = await cells(page, 'log');
  assert.deepEqual(log.filter((r) => r[2] === 'acme-llm-1').map((r) => r[12]), ['unknown', 'unknown']);
  // Nowhere is the unknown model's cost shown as $0.00.
  const zero = await page.$$eval('#breakdown tbody tr, #models tbody tr', (trs) =>
    trs.filter((tr) => /acme-llm-1|research/.test(tr.textContent) && /\$0\.00(?!.*unknown)/.test(tr.children[1].textContent + tr.children[4].textContent)).length);
  assert.equal(zero, 0);
  // A range with only priced requests has no list of unpriced models.
  await settle(page, () => page.click('#range [data-range="7d"]'));
  await settle(page, () => page.fill('#filters input[name=team]', 'support').then(() => page.click('#filters button[type=submit]')));
  assert.ok(await page.isHidden('#unpriced'));
  assert.equal(await page.textContent('#spend'), '$1.00');
  assert.equal(await page.textContent('#spend-unpriced'), '');
  await page.screenshot({ path: join(shots, 'unpriced.png'), fullPage: true });
  assert.deepEqual(problems, []);
  await context.close();
});

test('breakdowns: cost per request and per 1 000 tokens by feature and model, namespace and workload, one missing-value convention', async () => {
  const { context, page, problems } = await signIn('ann@acme.test');
  assert.deepEqual(await heads(page, 'breakdown'), [
    'Feature', 'Spend', 'Share', 'Requests', 'Unpriced requests', 'Input tokens', 'Output tokens',
    'Cost / request', 'Cost / 1k tokens', 'Cache savings', 'p50 latency', 'p95 latency', 'Error rate',
  ]);
  // search: $1.75 over 5 requests and 6 000 tokens; chat: $1.00 over 2 and 102 400; the untagged
  // pair: $0.25 over 2 and 1 200 (the 429 had none); summarize: no price.
  assert.deepEqual((await cells(page, 'breakdown')).map((r) => [...r.slice(0, 10), r[12]]), [
    ['search', '$1.75', '58.3%', '5', '0', '5,000', '1,000', '$0.35', '$0.292', '$0.00', '0.0%'],
    ['chat', '$1.00', '33.3%', '2', '0', '102,000', '400', '$0.50', '$0.00977', '$0.27', '0.0%'],
    ['(none)', '$0.25', '8.3%', '2', '0', '1,000', '200', '$0.125', '$0.208', '$0.00', '50.0%'],
    ['summarize', 'unknown', 'unknown', '2', '2', '10,000', '2,000', 'unknown', 'unknown', '$0.00', '0.0%'],
  ]);
  assert.deepEqual(await heads(page, 'models'), [
    'Model', 'Provider', 'Requests', 'Unpriced requests', 'Spend', 'Cost / request', 'Cost / 1k tokens',
    'Cache savings', 'Avg latency', 'p95 latency', 'TTFB p50',
  ]);
  assert.deepEqual((await cells(page, 'models')).map((r) => r.slice(0, 8)), [
    ['gpt-4o-mini-2024-07-18', 'openai', '7', '0', '$2.00', '$0.286', '$0.278', '$0.00'],
    ['claude-sonnet-4-5-20250929', 'anthropic', '2', '0', '$1.00', '$0.50', '$0.00977', '$0.27'],
    ['acme-llm-1', 'openai', '2', '2', 'unknown', 'unknown', 'unknown', '$0.00'],
  ]);
  assert.deepEqual(await cells(page, 'errors'), [['rate_limited', 'provider', '1']]);
  await settle(page, () => page.selectOption('#breakdown-by', 'namespace'));
  assert.deepEqual((await cells(page, 'breakdown')).map((r) => r.slice(0, 5)), [
    ['shop', '$1.75', '58.3%', '5', '0'],
    ['(none)', '≥ $1.00 + unknown', '33.3%', '4', '2'],
    ['lab', '$0.25', '8.3%', '2', '0'],
  ]);
  await settle(page, () => page.selectOption('#breakdown-by', 'workload'));
  assert.deepEqual((await cells(page, 'breakdown')).map((r) => r[0]), ['cart', '(none)', 'notebook']);
  assert.equal(await page.textContent('#breakdown thead th'), 'Workload');
  // One convention: "untagged" is nowhere on the page; missing labels are "(none)".
  assert.ok(!(await page.textContent('main')).includes('untagged'));
  await page.screenshot({ path: join(shots, 'breakdowns.png'), fullPage: true });
  assert.deepEqual(problems, []);
  await context.close();
});

test('request log: "Token source" column, UTC times marked, "(none)" for missing labels', async () => {
  const { context, page, problems } = await signIn('ann@acme.test');
  assert.deepEqual(await heads(page, 'log'), [
    'Time (UTC)', 'Provider', 'Model', 'Feature', 'Team', 'App', 'Namespace', 'Workload', 'Status',
    'Input tokens', 'Output tokens', 'Token source', 'Cost', 'Latency',
  ]);
  const log = await cells(page, 'log');
  assert.equal(log.length, 11);
  assert.equal(log[0][0], ago(30).replace('T', ' ').slice(0, 19), 'UTC, as stored');
  assert.equal(log[10][0], ago(90).replace('T', ' ').slice(0, 19));
  assert.deepEqual(log.map((r) => r[6]).sort(), ['(none)', '(none)', '(none)', '(none)', 'lab', 'lab', 'shop', 'shop', 'shop', 'shop', 'shop']);
  assert.deepEqual(log.map((r) => r[3]).sort(), ['(none)', '(none)', 'chat', 'chat', 'search', 'search', 'search', 'search', 'search', 'summarize', 'summarize']);
  assert.deepEqual(log.map((r) => r[11]).sort(), ['Exact', 'Exact', 'Exact', 'Exact', 'Exact', 'Exact', 'Exact', 'Exact', 'Measured', 'Measured (calibrated)', '–']);
  const refused = log.find((r) => r[8] === '429');
  assert.deepEqual([refused[9], refused[10], refused[11], refused[12]], ['–', '–', '–', '$0.00']);
  assert.match(await page.textContent('.notice'), /never stores prompts or responses/);
  assert.match(await page.textContent('.legend'), /All times are UTC/);
  // The range pickers read and show UTC, in a browser whose zone is New York.
  assert.equal(await page.textContent('label:has(#from)'), 'From (UTC) ');
  assert.equal(await page.textContent('label:has(#to)'), 'To (UTC) ');
  assert.equal(await page.inputValue('#from'), new Date(T0 - DAY).toISOString().slice(0, 16));
  assert.equal(await page.inputValue('#to'), new Date(T0).toISOString().slice(0, 16));
  assert.equal(await page.textContent('#showing'), 'Showing ' + utc(T0 - DAY) + ' → ' + utc(T0) + ' UTC (last 24 h)');
  // A custom range typed in UTC: 37 h to 35 h ago holds only the $1.00 request.
  const from = Math.floor((T0 - 37 * HOUR) / MINUTE) * MINUTE;
  const to = Math.floor((T0 - 35 * HOUR) / MINUTE) * MINUTE;
  await page.fill('#from', new Date(from).toISOString().slice(0, 16));
  await page.fill('#to', new Date(to).toISOString().slice(0, 16));
  await settle(page, () => page.click('#apply'));
  assert.equal(await page.textContent('#spend'), '$1.00');
  assert.equal(await page.textContent('#requests'), '1');
  assert.equal(search(page), '?from=' + encodeURIComponent(new Date(from).toISOString()) + '&to=' + encodeURIComponent(new Date(to).toISOString()));
  assert.equal(await page.textContent('#showing'), 'Showing ' + utc(from) + ' → ' + utc(to) + ' UTC');
  assert.equal((await cells(page, 'log'))[0][0], ago(36 * 60).replace('T', ' ').slice(0, 19));
  assert.equal(await page.$$eval('#range button.on', (b) => b.length), 0);
  assert.deepEqual(problems, []);
  await context.close();
});

test('time charts: a true time axis, every bucket in order, empty ones at zero', async () => {
  const { context, page, problems } = await signIn('ann@acme.test');
  const model = (e) => e.model_actual || e.model_requested;
  // 24 hours, per hour.
  let want = series(ACME, T0 - DAY, T0, HOUR, model);
  let chart = await chartOf(page);
  assert.deepEqual(chart.labels, want.buckets.map((t) => utc(t).slice(5)));
  assert.deepEqual(chart.sets.map((s) => s.label), ['gpt-4o-mini-2024-07-18', 'claude-sonnet-4-5-20250929', 'acme-llm-1']);
  for (const s of chart.sets) assert.deepEqual(s.data, want.out.get(s.label), s.label);
  assert.equal(await page.getAttribute('#spend-chart', 'data-bucket'), 'hour');
  // 30 days, per day: 31 buckets, 3 with spend (10 days ago, 36 hours ago, the last 90 minutes).
  await settle(page, () => page.click('#range [data-range="30d"]'));
  want = series(ACME, T0 - 30 * DAY, T0, DAY, model);
  chart = await chartOf(page);
  assert.equal(chart.labels.length, 31);
  assert.deepEqual(chart.labels, want.buckets.map((t) => new Date(t).toISOString().slice(0, 10)));
  const gpt = chart.sets.find((s) => s.label === 'gpt-4o-mini-2024-07-18');
  assert.deepEqual(gpt.data, want.out.get('gpt-4o-mini-2024-07-18'));
  assert.equal(gpt.data.filter((v) => v === 0).length, 31 - new Set([ago(10 * 24 * 60), ago(36 * 60), ago(30), ago(90)].map((t) => t.slice(0, 10))).size);
  assert.equal(await page.getAttribute('#spend-chart', 'data-bucket'), 'day');
  // The API's buckets, zero-filled, are the chart's.
  const api = await read(keyA, `/api/v1/timeseries?bucket=day&from=${ago(30 * 24 * 60)}&to=${ago(0)}`);
  assert.deepEqual(api.points.map((p) => p.bucket.slice(0, 10)), chart.labels);
  await page.screenshot({ path: join(shots, 'chart-30d.png'), fullPage: true });
  assert.deepEqual(problems, []);
  await context.close();
});

test('chart tooltip: a bucket of unpriced requests only is "unknown", never $0.00', async () => {
  const { context, page, problems } = await signIn('ann@acme.test');
  // Hover the bucket of 30 minutes ago: the tooltip lists every series with requests in it.
  const hover = async (t) => {
    const label = utc(Math.floor(t / HOUR) * HOUR).slice(5);
    const at = await page.evaluate((l) => {
      const c = Chart.getChart('spend-chart');
      const i = c.data.labels.indexOf(l);
      const r = c.canvas.getBoundingClientRect();
      c.tooltip.setActiveElements([], { x: 0, y: 0 });
      c.update();
      return { x: r.left + c.getDatasetMeta(0).data[i].x, y: r.top + (c.chartArea.top + c.chartArea.bottom) / 2 };
    }, label);
    await page.mouse.move(at.x, at.y);
    const lines = await page.waitForFunction(() => {
      const tip = Chart.getChart('spend-chart').tooltip;
      const l = (tip.body || []).flatMap((b) => b.lines);
      return tip.opacity > 0 && l.length > 0 && l;
    });
    return lines.jsonValue();
  };
  const model = (e) => e.model_actual || e.model_requested;
  const want = series(ACME, T0 - DAY, T0, HOUR, model);
  const i = want.buckets.indexOf(Math.floor((T0 - 30 * MINUTE) / HOUR) * HOUR);
  // The unpriced model's own (zero-height) bar, made active as a hover would.
  const own = await page.evaluate((i) => {
    const c = Chart.getChart('spend-chart');
    const d = c.data.datasets.findIndex((s) => s.label === 'acme-llm-1');
    const el = c.getDatasetMeta(d).data[i];
    c.tooltip.setActiveElements([{ datasetIndex: d, index: i }], { x: el.x, y: el.y });
    c.update();
    return c.tooltip.body.flatMap((b) => b.lines);
  }, i);
  assert.deepEqual(own, ['acme-llm-1: unknown']);
  assert.deepEqual(await hover(T0 - 30 * MINUTE), [
    'gpt-4o-mini-2024-07-18: ' + usd(want.out.get('gpt-4o-mini-2024-07-18')[i]),
    'claude-sonnet-4-5-20250929: ' + usd(want.out.get('claude-sonnet-4-5-20250929')[i]),
    'acme-llm-1: unknown',
  ]);
  // Priced and unpriced requests in one series: what is known, and that more is unknown.
  await settle(page, () => page.selectOption('#stack-by', 'namespace'));
  const tip = await hover(T0 - 30 * MINUTE);
  assert.ok(tip.includes('(none): ≥ $1.00 + unknown'), tip.join('; '));
  assert.ok(!tip.some((l) => /\$0\.00 \+ unknown/.test(l)), tip.join('; '));
  assert.deepEqual(problems, []);
  await context.close();
});

test('the log shows UTC times even for a timestamp with an offset', async () => {
  const { context, page, problems } = await signIn('ann@acme.test');
  // The server stores UTC; an answer with +02:00 is still shown in UTC.
  await page.route('**/api/v1/events?**', async (route) => {
    const r = await route.fetch();
    const body = await r.json();
    for (const e of body.events) {
      const t = Date.parse(e.timestamp);
      e.timestamp = new Date(t + 2 * HOUR).toISOString().slice(0, 19) + '+02:00';
    }
    await route.fulfill({ response: r, json: body });
  });
  await page.reload();
  await page.waitForSelector('body[data-state=ready]');
  const log = await cells(page, 'log');
  assert.equal(log[0][0], ago(30).replace('T', ' ').slice(0, 19));
  assert.equal(log[10][0], ago(90).replace('T', ' ').slice(0, 19));
  assert.deepEqual(problems, []);
  await context.close();
});

test('team chart at a short range: hour buckets, with the API\'s note on the chart', async () => {
  const { context, page, problems } = await signIn('ann@acme.test');
  await settle(page, () => page.click('#range [data-range="1h"]'));
  assert.equal(await page.getAttribute('#spend-chart', 'data-bucket'), 'minute');
  assert.ok(await page.isHidden('#chart-note'));
  await settle(page, () => page.selectOption('#stack-by', 'team'));
  assert.equal(search(page), '?range=1h&stack=team');
  const api = await read(keyA, `/api/v1/timeseries?bucket=minute&group_by=team&from=${ago(60)}&to=${ago(0)}`);
  assert.equal(api.bucket, 'hour');
  assert.ok(api.note);
  assert.equal(await page.textContent('#chart-note'), api.note);
  assert.ok(await page.isVisible('#chart-note'));
  assert.equal(await page.getAttribute('#spend-chart', 'data-bucket'), 'hour');
  const want = series(ACME, T0 - HOUR, T0, HOUR, (e) => e.team, true);
  const chart = await chartOf(page);
  assert.deepEqual(chart.labels, want.buckets.map((t) => utc(t).slice(5)));
  assert.deepEqual(chart.sets.map((s) => s.label), ['payments', 'support', 'research']);
  for (const s of chart.sets) assert.deepEqual(s.data, want.out.get(s.label), s.label);
  assert.ok(await page.isHidden('#chart-card .err'));
  await page.screenshot({ path: join(shots, 'team-chart-1h.png'), fullPage: true });
  assert.deepEqual(problems, []);
  await context.close();
});

test('a refused or failed query shows as an error in its card, and clears what it drew', async () => {
  const { context, page } = await signIn('ann@acme.test');
  assert.ok(await chartOf(page));
  // Refused: a status filter the API does not take; every view says why and shows nothing stale.
  await page.fill('#filters input[name=status]', 'abc');
  await settle(page, () => page.click('#filters button[type=submit]'));
  const refusal = 'Could not load: status must be a code like 429 or a class like 5xx (status) [HTTP 400]';
  for (const card of ['overview', 'chart-card', 'breakdown-card', 'models-card', 'errors-card', 'log-card']) {
    assert.equal(await page.textContent(`#${card} .err`), refusal, card);
    assert.ok(await page.isVisible(`#${card} .err`), card);
  }
  assert.equal(await chartOf(page), null, 'the chart is cleared');
  for (const t of ['breakdown', 'models', 'errors', 'log']) assert.deepEqual(await cells(page, t), [], t);
  assert.deepEqual(await texts(page, ['spend', 'requests', 'per-hour', 'mtd', 'savings']), ['–', '–', '–', '–', '–']);
  assert.deepEqual(await texts(page, ['spend-delta', 'spend-unpriced', 'forecast', 'mtd-delta', 'per-hour-delta']), ['', '', '', '', '']);
  await page.screenshot({ path: join(shots, 'refused.png'), fullPage: true });
  // Failed: the time series alone answers 500; its card says so, the others draw.
  await settle(page, () => page.click('#clear-filters'));
  assert.ok(await chartOf(page));
  await page.route('**/api/v1/timeseries?**', (r) => r.fulfill({ status: 500, contentType: 'application/json', body: '{"error":"internal","message":"database is locked"}' }));
  await settle(page, () => page.selectOption('#stack-by', 'team'));
  assert.equal(await page.textContent('#chart-card .err'), 'Could not load: database is locked [HTTP 500]');
  assert.equal(await chartOf(page), null);
  assert.ok(await page.isHidden('#chart-note'));
  assert.ok(await page.isHidden('#breakdown-card .err'));
  assert.equal(await page.textContent('#requests'), '11');
  await page.unroute('**/api/v1/timeseries?**');
  await settle(page, () => page.selectOption('#stack-by', 'model'));
  assert.ok(await page.isHidden('#chart-card .err'));
  assert.equal((await chartOf(page)).sets.length, 3);
  await context.close();
});

test('filters apply to the whole page and live in the URL (reload, back, forward)', async () => {
  const { context, page, problems } = await signIn('ann@acme.test');
  await page.fill('#filters input[name=team]', 'payments');
  await settle(page, () => page.click('#filters button[type=submit]'));
  assert.equal(search(page), '?team=payments');
  const payments = async () => {
    // payments: the 4 searches, the 90-minute one, the untagged pair: $2.00, 7 requests, one 429.
    assert.deepEqual(await texts(page, ['spend', 'requests', 'error-rate']), ['$2.00', '7', '14.3%']);
    assert.deepEqual((await cells(page, 'breakdown')).map((r) => r.slice(0, 4)), [['search', '$1.75', '87.5%', '5'], ['(none)', '$0.25', '12.5%', '2']]);
    assert.deepEqual((await cells(page, 'models')).map((r) => r[0]), ['gpt-4o-mini-2024-07-18']);
    assert.deepEqual((await chartOf(page)).sets.map((s) => s.label), ['gpt-4o-mini-2024-07-18']);
    const log = await cells(page, 'log');
    assert.equal(log.length, 7);
    assert.ok(log.every((r) => r[4] === 'payments'));
    assert.equal(await page.inputValue('#filters input[name=team]'), 'payments');
    assert.equal(await page.textContent('#active-filters'), 'team: payments ×');
    assert.ok(await page.isHidden('#unpriced'));
    assert.equal(new URL(await page.getAttribute('#csv', 'href'), base).searchParams.get('team'), 'payments');
  };
  await payments();
  await page.reload();
  await page.waitForSelector('body[data-state=ready]');
  await payments();
  // A second filter: the 429 alone.
  await page.fill('#filters input[name=status]', '429');
  await settle(page, () => page.click('#filters button[type=submit]'));
  assert.equal(search(page), '?team=payments&status=429');
  assert.deepEqual(await texts(page, ['spend', 'requests', 'error-rate']), ['$0.00', '1', '100.0%']);
  assert.equal((await cells(page, 'log')).length, 1);
  await settle(page, () => page.goBack());
  assert.equal(search(page), '?team=payments');
  await payments();
  await settle(page, () => page.goBack());
  assert.equal(search(page), '');
  assert.equal(await page.textContent('#requests'), '11');
  assert.equal(await page.inputValue('#filters input[name=team]'), '');
  await settle(page, () => page.goForward());
  await payments();
  // Namespace, provider and model, feature.
  await open(page, '/?namespace=lab');
  assert.deepEqual(await texts(page, ['spend', 'requests']), ['$0.25', '2']);
  await open(page, '/?provider=anthropic&model=claude-sonnet-4-5-20250929');
  assert.deepEqual(await texts(page, ['spend', 'requests', 'savings']), ['$1.00', '2', '$0.27']);
  await open(page, '/?feature=untagged');
  assert.deepEqual(await texts(page, ['spend', 'requests', 'active-filters']), ['$0.25', '2', 'feature: (none) ×']);
  // Removing a filter by its chip.
  await settle(page, () => page.click('#active-filters .chip'));
  assert.equal(search(page), '');
  assert.equal(await page.textContent('#requests'), '11');
  await page.screenshot({ path: join(shots, 'filtered.png'), fullPage: true });
  assert.deepEqual(problems, []);
  await context.close();
});

test('drill-down: a breakdown or model row filters the page by it', async () => {
  const { context, page, problems } = await signIn('ann@acme.test');
  await settle(page, () => page.selectOption('#breakdown-by', 'team'));
  await settle(page, () => page.click('#breakdown tbody tr:has-text("support")'));
  assert.equal(search(page), '?team=support&by=team');
  assert.deepEqual(await texts(page, ['spend', 'requests']), ['$1.00', '2']);
  assert.deepEqual((await cells(page, 'breakdown')).map((r) => r[0]), ['support']);
  await settle(page, () => page.click('#models tbody tr:has-text("claude-sonnet-4-5-20250929")'));
  // By model alone (the API's model filter matches the model asked for or answered): one filter.
  assert.equal(search(page), '?team=support&model=claude-sonnet-4-5-20250929&by=team');
  assert.equal(await page.textContent('#requests'), '2');
  await open(page, '/');
  // The untagged row drills to feature=untagged; rows with no label have nothing to filter by.
  await settle(page, () => page.click('#breakdown tbody tr:has-text("(none)")'));
  assert.equal(search(page), '?feature=untagged');
  assert.equal(await page.textContent('#requests'), '2');
  await settle(page, () => page.selectOption('#breakdown-by', 'namespace'));
  assert.equal(await page.$$eval('#breakdown tbody tr.drill', (t) => t.length), 1, 'lab only; (none) is not a filter');
  assert.deepEqual(problems, []);
  await context.close();
});

test('tables sort by any column', async () => {
  const { context, page, problems } = await signIn('ann@acme.test');
  const col = (i) => cells(page, 'breakdown').then((rows) => rows.map((r) => r[i]));
  await page.click('#breakdown thead th:nth-child(4) button'); // Requests: most first
  assert.deepEqual(await col(0), ['search', 'chat', '(none)', 'summarize']);
  assert.equal(await page.getAttribute('#breakdown thead th:nth-child(4)', 'aria-sort'), 'descending');
  await page.click('#breakdown thead th:nth-child(4) button');
  assert.deepEqual(await col(0), ['chat', '(none)', 'summarize', 'search']);
  await page.click('#breakdown thead th:nth-child(1) button'); // Feature: A to Z
  assert.deepEqual(await col(0), ['(none)', 'chat', 'search', 'summarize']);
  await page.click('#breakdown thead th:nth-child(9) button'); // Cost / 1k tokens: highest first, unknown last
  assert.deepEqual(await col(8), ['$0.292', '$0.208', '$0.00977', 'unknown']);
  await page.click('#breakdown thead th:nth-child(9) button');
  assert.deepEqual(await col(8), ['$0.00977', '$0.208', '$0.292', 'unknown']);
  await page.click('#models thead th:nth-child(3) button');
  await page.click('#models thead th:nth-child(3) button'); // Requests, fewest first
  assert.deepEqual((await cells(page, 'models')).map((r) => r[2]), ['2', '2', '7']);
  await page.click('#log thead th:nth-child(12) button'); // Token source, A to Z, missing last
  assert.deepEqual((await cells(page, 'log')).map((r) => r[11]).slice(7), ['Exact', 'Measured', 'Measured (calibrated)', '–']);
  assert.deepEqual(problems, []);
  await context.close();
});

test('CSV export of every table', async () => {
  const { context, page, problems } = await signIn('ann@acme.test');
  const download = async (table) => {
    const [d] = await Promise.all([page.waitForEvent('download'), page.click(`button.csv[data-table="${table}"]`)]);
    return { name: d.suggestedFilename(), text: readFileSync(await d.path(), 'utf8') };
  };
  const api = (await read(keyA, `/api/v1/summary?group_by=feature&from=${ago(24 * 60)}&to=${ago(0)}`)).rows;
  const lat = (k) => { const r = api.find((x) => x.key === k); return r.latency_p50_ms + ',' + r.latency_p95_ms; };
  let csv = await download('breakdown');
  assert.equal(csv.name, 'tally-breakdown-by-feature.csv');
  assert.equal(csv.text, [
    'Feature,Spend,Share,Requests,Unpriced requests,Input tokens,Output tokens,Cost / request,Cost / 1k tokens,Cache savings,p50 latency,p95 latency,Error rate',
    `search,1.75,${1.75 / 3},5,0,5000,1000,${1.75 / 5},${(1000 * 1.75) / 6000},0,${lat('search')},0`,
    `chat,1,${1 / 3},2,0,102000,400,0.5,${1000 / 102400},0.27,${lat('chat')},0`,
    `(none),0.25,${0.25 / 3},2,0,1000,200,0.125,${250 / 1200},0,${lat('untagged')},0.5`,
    `summarize,unknown,,2,2,10000,2000,unknown,unknown,0,${lat('summarize')},0`,
    '',
  ].join('\r\n'));
  csv = await download('models');
  assert.equal(csv.name, 'tally-models.csv');
  assert.deepEqual(csv.text.split('\r\n').map((l) => l.split(',').slice(0, 7)), [
    ['Model', 'Provider', 'Requests', 'Unpriced requests', 'Spend', 'Cost / request', 'Cost / 1k tokens'],
    ['gpt-4o-mini-2024-07-18', 'openai', '7', '0', '2', String(2 / 7), String(2000 / 7200)],
    ['claude-sonnet-4-5-20250929', 'anthropic', '2', '0', '1', '0.5', String(1000 / 102400)],
    ['acme-llm-1', 'openai', '2', '2', 'unknown', 'unknown', 'unknown'],
    [''],
  ]);
  csv = await download('errors');
  assert.equal(csv.text, 'Category,Source,Requests\r\nrate_limited,provider,1\r\n');
  assert.ok(await page.isVisible('#unpriced button.csv[data-table="unpriced"]'), 'the unpriced models export too');
  csv = await download('unpriced');
  assert.equal(csv.name, 'tally-unpriced.csv');
  assert.equal(csv.text, 'Model,Provider,Unpriced requests,Input tokens,Output tokens\r\nacme-llm-1,openai,2,10000,2000\r\n');
  // The log's export is the server's CSV, with the page's range and filters.
  await open(page, '/?team=support');
  const href = await page.getAttribute('#csv', 'href');
  assert.match(href, /^\/api\/v1\/events\.csv\?/);
  const events = await page.evaluate(async (h) => (await fetch(h)).text(), href);
  const lines = events.trim().split('\r\n');
  assert.equal(lines.length, 3, 'header and the two support events');
  assert.ok(['token_source', 'namespace', 'workload', 'principal'].every((c) => lines[0].split(',').includes(c)));
  assert.deepEqual(problems, []);
  await context.close();
});

test('CSV export neutralises spreadsheet formulas in labels, as the server\'s CSV does', async () => {
  const { context, page, problems } = await signIn('dan@hooli.test', { path: '/?by=team' });
  const [d] = await Promise.all([page.waitForEvent('download'), page.click('button.csv[data-table="breakdown"]')]);
  assert.equal(d.suggestedFilename(), 'tally-breakdown-by-team.csv');
  const rows = readFileSync(await d.path(), 'utf8').split('\r\n');
  // A leading =, +, -, @, tab or CR gets a ' unless the cell is a number; then RFC 4180 quoting.
  const cell = { '=HYPERLINK("http://x","y")': `"'=HYPERLINK(""http://x"",""y"")"`, '@SUM(1)': "'@SUM(1)", '-1.5': '-1.5' };
  for (const [team, want] of Object.entries(cell)) {
    const cost = 1 + HOOLI_TEAMS.indexOf(team);
    assert.ok(rows.some((r) => r.startsWith(want + ',' + cost + ',')), team + ' as ' + want + ' in\n' + rows.join('\n'));
  }
  // The same cells as the server's export of the events.
  const events = await page.evaluate(async (h) => (await fetch(h)).text(), await page.getAttribute('#csv', 'href'));
  for (const want of Object.values(cell)) assert.ok(events.includes(',' + want + ','), want + ' in\n' + events);
  assert.deepEqual(problems, []);
  await context.close();
});

test('the request log pages beyond 200 rows', async () => {
  const { context, page, problems } = await signIn('carol@initech.test');
  const times = Array.from({ length: 450 }, (_, i) => ago(5 + i).replace('T', ' ').slice(0, 19));
  assert.equal((await cells(page, 'log')).length, 200);
  assert.equal(await page.textContent('#log-count'), 'Showing the newest 200; more match.');
  await page.click('#more');
  await page.waitForFunction(() => document.querySelectorAll('#log tbody tr').length === 400);
  assert.equal(await page.textContent('#log-count'), 'Showing the newest 400; more match.');
  await page.click('#more');
  await page.waitForFunction(() => document.querySelectorAll('#log tbody tr').length === 450);
  assert.deepEqual((await cells(page, 'log')).map((r) => r[0]), times, 'newest first, none twice, none missing');
  assert.equal(await page.textContent('#log-count'), 'Showing the newest 450 requests: all that match.');
  assert.ok(await page.isHidden('#more'));
  assert.equal(await page.textContent('#requests'), '450');
  assert.deepEqual(problems, []);
  await context.close();
});

test('works at 768 px and 375 px wide: no horizontal overflow', async () => {
  for (const [name, viewport] of [['tablet', { width: 768, height: 1024 }], ['phone', { width: 375, height: 812 }]]) {
    const { context, page, problems } = await signIn('ann@acme.test', { viewport, path: '/?team=payments' });
    assert.equal(await page.textContent('#requests'), '7');
    const widths = await page.evaluate(() => [document.documentElement.scrollWidth, document.body.scrollWidth, window.innerWidth]);
    assert.ok(widths[0] <= widths[2] && widths[1] <= widths[2], name + ': page ' + widths[0] + ' px in a ' + widths[2] + ' px viewport');
    // Every card and section fits the viewport (wide tables scroll inside their card).
    const over = await page.$$eval('header, nav, #filters, .card, section', (els) =>
      els.filter((e) => e.getBoundingClientRect().right > window.innerWidth + 0.5).map((e) => e.id || e.className || e.tagName));
    assert.deepEqual(over, [], name);
    assert.ok((await page.$eval('.chart canvas', (c) => c.getBoundingClientRect().width)) <= viewport.width);
    await page.screenshot({ path: join(shots, `dashboard-${name}.png`), fullPage: true });
    assert.deepEqual(problems, [], name);
    await context.close();
  }
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

test('pages carry the security headers, and the dashboard loads nothing inline or external', async () => {
  for (const path of ['/login', '/']) {
    const r = await fetch(base + path, { redirect: 'manual' });
    assert.equal(r.headers.get('x-frame-options'), 'DENY', path);
    assert.match(r.headers.get('content-security-policy'), /default-src 'self'/);
    assert.match(r.headers.get('content-security-policy'), /frame-ancestors 'none'/);
  }
  const html = readFileSync(join(root, 'collector/dashboard/index.html'), 'utf8');
  assert.ok(!/<script(?![^>]*\bsrc=)/.test(html), 'no inline script');
  assert.ok(!/<style|\sstyle=|\son[a-z]+=/.test(html), 'no inline style or handler');
  assert.ok(!/(src|href)="(https?:)?\/\//.test(html), 'nothing external');
  assert.ok(readFileSync(join(shots, 'overview.png')).length > 10000, 'a real screenshot');
});
