// The dashboard's budgets, alerts and rules views in a real headless Chromium (PRODUCT.md, "Rules
// and budgets"): the figures shown against seeded data, what a viewer may not do, an admin's
// changes from the page, and an alert's delivery to a webhook served here. Run by `make test`.
//
// Events are seeded a minute before T0 (the page's fixed clock), in the current UTC month, so
// that the budget's month and every range the page reads hold them. Budgets and forecasts are
// computed by the collector at its own (real) time: the test brackets that time to check them.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createServer } from 'node:http';
import { createHmac } from 'node:crypto';
import { mkdtempSync, mkdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

import * as h from './harness.mjs';
import { bin, shots, PASSWORD, MINUTE, DAY, waitForPort, settle, cells, usd } from './harness.mjs';

const T0 = Date.now();
const now0 = new Date(T0);
const MONTH_START = Date.UTC(now0.getUTCFullYear(), now0.getUTCMonth(), 1);
const MONTH_END = Date.UTC(now0.getUTCFullYear(), now0.getUTCMonth() + 1, 1);
// A minute ago, unless the month began since.
const TS = new Date(Math.max(T0 - MINUTE, MONTH_START)).toISOString();
let collector, base, browser, keyA, keyB, dataDir, hookServer, hookPort, hookSecret;
const received = []; // what the webhook receiver was sent: { headers, body, status }

const cli = (args, input) => h.cli(dataDir, args, input);

function event(id, extra) {
  return {
    request_id: id, timestamp: TS, org_id: null, provider: 'openai', api: 'chat_completions',
    endpoint: '/v1/chat/completions', model_requested: 'gpt-4o-mini', model_actual: 'gpt-4o-mini-2024-07-18',
    status: 200, streaming: false, latency_ms: 100, ttfb_ms: 40, input_tokens: 1000, output_tokens: 200,
    cached_input_tokens: 0, cache_write_tokens: 0, reasoning_tokens: 0, token_source: 'exact',
    measured_output_tokens: null, cost_usd: null, error_category: null, error_source: null, team: 'payments',
    app: 'checkout', feature: 'search', task: null, session_id: null, user: 'ann', rule: null, routed: false,
    ...extra,
  };
}

// Two downgrades of gpt-4o to gpt-4o-mini, 1M input and 100k output tokens each: $0.15 + $0.06 =
// $0.21 each as answered, $2.50 + $1.00 = $3.50 each at gpt-4o (src/prices.json), a saving of
// $3.29 each. A third asked for a model with no known price (team research): its saving is unknown.
// One request refused by a rule (it reached no provider, and costs nothing), one marked by a
// budget in shadow mode ($0.00027: 1000 × $0.15 + 200 × $0.60 per 1M), and one plain request of
// team payments priced at $0.18 by its sender. The budget (team=payments, $1.00 a month, warning
// at 50%) counts the two downgrades and the plain request: $0.60, which crosses the warning.
const down = {
  rule: 'rule:cheaper', routed: true, model_requested: 'gpt-4o', model_routed: 'gpt-4o-mini',
  model_actual: 'gpt-4o-mini-2024-07-18', input_tokens: 1000000, output_tokens: 100000,
};
const EVENTS = [
  event('d1', down),
  event('d2', down),
  event('d3', { ...down, model_requested: 'acme-llm-1', team: 'research' }),
  event('b1', {
    rule: 'rule:no-gpt-4', status: 403, error_category: 'blocked', error_source: 'proxy', team: 'research',
    model_requested: 'gpt-4', model_actual: null, input_tokens: null, output_tokens: null, token_source: null,
  }),
  event('s1', { rule: 'budget:trial', shadow: true, team: 'research' }),
  event('p1', { cost_usd: 0.18 }),
];

const ingest = (key, events) => h.ingest(base, key, events);
const read = (key, path) => h.read(base, key, path);

// Wait until `probe` returns something truthy (polled), or fail saying what was last seen.
async function until(what, probe, ms = 20000) {
  const end = Date.now() + ms;
  let last;
  for (;;) {
    last = await probe();
    if (last && last.ok) return last.value;
    if (Date.now() > end) throw new Error('timed out waiting for ' + what + ': ' + JSON.stringify(last));
    await new Promise((r) => setTimeout(r, 200));
  }
}

before(async () => {
  dataDir = mkdtempSync(join(tmpdir(), 'tally-controls-'));
  mkdirSync(shots, { recursive: true });
  // The webhook receiver: refuses the first delivery with a 500 (the collector retries), then
  // takes them.
  hookServer = createServer((req, res) => {
    let body = '';
    req.on('data', (d) => { body += d; });
    req.on('end', () => {
      const status = received.length === 0 ? 500 : 200;
      received.push({ headers: req.headers, body, status, path: req.url });
      res.writeHead(status, { 'content-type': 'text/plain' });
      res.end(status === 200 ? 'ok' : 'not now');
    });
  });
  await new Promise((r) => hookServer.listen(0, '127.0.0.1', r));
  hookPort = hookServer.address().port;

  keyA = cli(['org', 'create', 'acme']);
  keyB = cli(['org', 'create', 'globex']);
  cli(['user', 'add', '--org', 'acme', '--email', 'ann@acme.test', '--role', 'admin'], PASSWORD + '\n');
  cli(['user', 'add', '--org', 'acme', '--email', 'vic@acme.test', '--role', 'viewer'], PASSWORD + '\n');
  cli(['budget', 'set', 'team-cap', '--org', 'acme', '--scope', 'team=payments', '--period', 'month',
    '--limit-usd', '1', '--warn-at', '0.5', '--action', 'alert']);
  collector = spawn(bin, [
    'serve', '--listen', '127.0.0.1:0', '--data-dir', dataDir, '--alert-allow-private',
    // Budget alerts are raised at ingest; the detectors (anomalies, unpriced models) are not
    // what this file tests, and run once at start here.
    '--alert-detect-every-ms', '3600000', '--alert-retry-base-ms', '300',
  ], { stdio: ['ignore', 'ignore', 'pipe'] });
  base = 'http://127.0.0.1:' + (await waitForPort(collector));
  // The hook, made with the org key before the events cross the budget's warning.
  const r = await fetch(base + '/api/v1/alerts', {
    method: 'POST',
    headers: { authorization: 'Bearer ' + keyA, 'content-type': 'application/json' },
    body: JSON.stringify({ name: 'ops', url: `http://127.0.0.1:${hookPort}/hook`, kinds: ['budget_warning', 'budget_limit'] }),
  });
  assert.equal(r.status, 201, await r.clone().text());
  hookSecret = (await r.json()).secret;
  await ingest(keyA, EVENTS);
  await ingest(keyB, [event('g1', { rule: 'rule:globex-only', routed: true, model_routed: 'gpt-4o-mini', model_requested: 'gpt-4o' })]);
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
});

after(async () => {
  await browser?.close();
  collector?.kill('SIGKILL');
  hookServer?.close();
  if (dataDir) rmSync(dataDir, { recursive: true, force: true });
});

// A signed-in page with its clock at T0, and every console error and page error it reports.
async function signIn(email, opts = {}) {
  const context = await browser.newContext({
    viewport: opts.viewport || { width: 1280, height: 1400 }, timezoneId: 'America/New_York', locale: 'en-US',
  });
  await context.clock.setFixedTime(T0);
  const page = await context.newPage();
  const problems = [];
  page.on('console', (m) => {
    // A refused change is the answer under test, not a fault of the page.
    if (m.type() === 'error' && !/status of 403/.test(m.text())) problems.push(m.text() + ' @ ' + m.location().url);
  });
  page.on('pageerror', (e) => problems.push('page error: ' + e.message));
  await page.goto(base + '/');
  await page.fill('input[name=email]', email);
  await page.fill('input[name=password]', PASSWORD);
  await page.click('button[type=submit]');
  await page.waitForSelector('body[data-state=ready]');
  return { context, page, problems };
}

const open = (page, path) => h.open(base, page, path);

const heads = (page, table) => page.$$eval(`#${table} thead th`, (ths) => ths.map((th) => th.textContent.replace(/ [▲▼]$/, '')));
const visible = (page, sel) => page.isVisible(sel);

const utcMinute = (t) => new Date(t).toISOString().slice(0, 16).replace('T', ' ');
const utcSecond = (t) => new Date(t).toISOString().slice(0, 19).replace('T', ' ');
const close = (a, b) => Math.abs(a - b) < 1e-9;

test('the views are in the navigation and live in the URL', async () => {
  const { context, page, problems } = await signIn('ann@acme.test');
  assert.deepEqual(await page.$$eval('#views button', (bs) => bs.map((b) => b.textContent)), ['Spend', 'Budgets', 'Alerts', 'Rules']);
  assert.equal(await page.getAttribute('#views [data-view=spend]', 'aria-current'), 'page');
  await settle(page, () => page.click('#views [data-view=budgets]'));
  assert.equal(new URL(page.url()).searchParams.get('view'), 'budgets');
  assert.ok(await visible(page, '#budgets'));
  assert.ok(!(await visible(page, '#overview')), 'the spend view is hidden');
  assert.ok(!(await visible(page, '#range')), 'budgets are "now": no range picker');
  assert.ok(!(await visible(page, '#filters')));
  await settle(page, () => page.click('#views [data-view=rules]'));
  assert.ok(await visible(page, '#range'), 'rules read the range');
  assert.ok(!(await visible(page, '#filters')), 'the filters do not apply to rules');
  await settle(page, () => page.goBack());
  assert.ok(await visible(page, '#budgets'), 'back walks the views');
  await settle(page, () => page.click('#views [data-view=spend]'));
  assert.ok(await visible(page, '#overview'));
  assert.equal(new URL(page.url()).search, '');
  assert.deepEqual(problems, []);
  await context.close();
});

test('budgets: spend against the limit with a bar, the forecast to the period end, the state', async () => {
  const { context, page, problems } = await signIn('ann@acme.test');
  const answer = page.waitForResponse((r) => new URL(r.url()).pathname === '/api/v1/budgets');
  const t1 = Date.now();
  await open(page, '/?view=budgets');
  const t2 = Date.now();
  const [b] = (await (await answer).json()).budgets;
  // The collector's figures: $0.60 of $1.00 this month, 3 requests, past the 50% warning.
  assert.ok(close(b.spend_usd, 0.6), String(b.spend_usd));
  assert.deepEqual([b.name, b.period, b.limit_usd, b.warn_at, b.requests, b.state, b.period_start_ms, b.period_end_ms],
    ['team-cap', 'month', 1, 0.5, 3, 'warning', MONTH_START, MONTH_END]);
  // The forecast extends the month so far linearly: spend × month / elapsed, at the collector's
  // time of answering, which lies between t1 and t2.
  const len = MONTH_END - MONTH_START;
  const lo = (0.6 * len) / Math.max(t2 - MONTH_START, MINUTE);
  const hi = (0.6 * len) / Math.max(t1 - MONTH_START, MINUTE);
  assert.ok(b.forecast_usd >= lo - 1e-9 && b.forecast_usd <= hi + 1e-9, `${lo} <= ${b.forecast_usd} <= ${hi}`);

  assert.deepEqual(await heads(page, 'budgets'), [
    'Budget', 'Scope', 'Period', 'Action', 'Spend', 'Limit', 'Requests', 'Forecast to period end', 'State', 'Period ends (UTC)', '',
  ]);
  const forecast = usd(b.forecast_usd) + (b.forecast_usd >= 1 ? ' · over the limit' : '');
  assert.deepEqual(await cells(page, 'budgets'), [[
    'team-cap', 'team=payments', 'month', 'alert', '$0.60 · 60.0%', '$1.00', '3', forecast, 'warning',
    utcMinute(MONTH_END) + ' UTC', 'Delete',
  ]]);
  // The bar: the spend against the limit, the warning threshold as its "low" mark.
  assert.deepEqual(await page.$eval('#budgets meter', (m) => [m.min, m.max, m.value, m.low, m.high]), [0, 1, b.spend_usd, 0.5, 1]);
  assert.equal(await page.getAttribute('#budgets .state', 'class'), 'state state-warning');
  assert.ok(await visible(page, '#budget-form'), 'an admin may set budgets');
  await page.screenshot({ path: join(shots, 'budgets.png'), fullPage: true });
  assert.deepEqual(problems, []);
  await context.close();
});

test('rules: requests changed, refused and shadowed, cost, and the downgrade saving to the cent', async () => {
  // The API's figures.
  const api = await read(keyA, '/api/v1/rules');
  const byRule = Object.fromEntries(api.rules.map((r) => [r.rule, r]));
  assert.deepEqual(api.rules.map((r) => r.rule), ['rule:cheaper', 'budget:trial', 'rule:no-gpt-4']);
  const c = byRule['rule:cheaper'];
  assert.deepEqual([c.requests, c.changed, c.refused, c.shadow, c.downgrades, c.unpriced, c.unpriced_requests], [3, 3, 0, 0, 3, 1, 0]);
  assert.deepEqual([c.cost_usd, c.cost_at_requested_usd, c.downgraded_cost_usd, c.saving_usd], [0.63, 7, 0.42, 6.58]);
  const b = byRule['rule:no-gpt-4'];
  assert.deepEqual([b.requests, b.changed, b.refused, b.shadow, b.cost_usd, b.downgrades, b.saving_usd], [1, 0, 1, 0, 0, 0, null]);
  const s = byRule['budget:trial'];
  assert.deepEqual([s.requests, s.changed, s.refused, s.shadow, s.cost_usd, s.downgrades], [1, 0, 0, 1, 0.00027, 0]);
  // Another org's rules are out of reach.
  assert.deepEqual((await read(keyB, '/api/v1/rules')).rules.map((r) => r.rule), ['rule:globex-only']);

  const { context, page, problems } = await signIn('vic@acme.test');
  await open(page, '/?view=rules');
  assert.deepEqual(await heads(page, 'rules'), [
    'Rule', 'Kind', 'Requests', 'Changed', 'Refused', 'Shadow', 'Cost', 'Downgrades', 'Cost at requested model', 'Estimated saving',
  ]);
  const expected = [
    ['cheaper', 'rule', '3', '3', '0', '0', '$0.63', '3', '≥ $7.00 + unknown', '≥ $6.58 + unknown (1 unpriced)'],
    ['trial', 'budget', '1', '0', '0', '1', '$0.00027', '0', '–', '–'],
    ['no-gpt-4', 'rule', '1', '0', '1', '0', '$0.00', '0', '–', '–'],
  ];
  assert.deepEqual(await cells(page, 'rules'), expected);
  assert.ok(!(await page.textContent('#rules')).includes('globex'));
  // The range is the page's: the last hour holds them, two days ago none.
  await settle(page, () => page.click('#range [data-range="1h"]'));
  assert.deepEqual(await cells(page, 'rules'), expected);
  assert.match(await page.textContent('#showing'), /\(last 1 h\)/);
  const from = new Date(T0 - 3 * DAY).toISOString();
  const to = new Date(T0 - 2 * DAY).toISOString();
  const asked = page.waitForRequest((r) => new URL(r.url()).pathname === '/api/v1/rules');
  await open(page, `/?view=rules&from=${from}&to=${to}`);
  const q = new URL((await asked).url()).searchParams;
  assert.deepEqual([q.get('from'), q.get('to')], [from, to]);
  assert.deepEqual(await cells(page, 'rules'), [['No rule or budget acted on a request in this range.']]);

  // CSV: the numbers, "unknown" where a price is, and blank where nothing was downgraded.
  await open(page, '/?view=rules');
  const [download] = await Promise.all([page.waitForEvent('download'), page.click('#rules-card button.csv')]);
  assert.equal(download.suggestedFilename(), 'tally-rules.csv');
  assert.equal(readFileSync(await download.path(), 'utf8'), [
    'Rule,Kind,Requests,Changed,Refused,Shadow,Cost,Downgrades,Cost at requested model,Estimated saving',
    'cheaper,rule,3,3,0,0,0.63,3,7,6.58',
    'trial,budget,1,0,0,1,0.00027,0,,',
    'no-gpt-4,rule,1,0,1,0,0,0,,',
    '',
  ].join('\r\n'));
  await page.screenshot({ path: join(shots, 'rules.png'), fullPage: true });
  assert.deepEqual(problems, []);
  await context.close();
});

test('alerts: the webhook, and the history of the budget warning with each delivery\'s outcome', async () => {
  // The first attempt got a 500 and was retried; the second was delivered.
  const alerts = await until('the retried delivery', async () => {
    const a = await read(keyA, '/api/v1/alerts');
    const d = a.history[0]?.deliveries || [];
    return { ok: d.length === 2 && d[1].outcome === 'delivered', value: a, seen: d };
  });
  assert.equal(alerts.history.length, 1);
  const [alert] = alerts.history;
  const text = "Tally: org acme's budget team-cap reached 50% of its $1.00 month limit ($0.60 spent this period)";
  assert.deepEqual([alert.kind, alert.text], ['budget_warning', text]);
  const [d1, d2] = alert.deliveries;
  assert.deepEqual([d1.hook, d1.attempt, d1.status, d1.outcome], ['ops', 1, 500, 'retrying']);
  assert.deepEqual([d2.hook, d2.attempt, d2.status, d2.outcome, d2.error], ['ops', 2, 200, 'delivered', null]);
  // What the receiver got, signed with the hook's secret.
  assert.equal(received.length, 2);
  for (const r of received) {
    const mac = createHmac('sha256', hookSecret).update(r.headers['x-tally-timestamp'] + '.' + r.body).digest('hex');
    assert.equal(r.headers['x-tally-signature'], 'sha256=' + mac);
    assert.equal(JSON.parse(r.body).text, text);
  }

  const { context, page, problems } = await signIn('ann@acme.test');
  await open(page, '/?view=alerts');
  assert.deepEqual(await heads(page, 'hooks'), ['Webhook', 'Destination host', 'Kinds', 'Created (UTC)', '']);
  const hooks = await cells(page, 'hooks');
  assert.deepEqual(hooks.map((r) => r.slice(0, 3)), [['ops', `127.0.0.1:${hookPort}`, 'budget_limit, budget_warning']]);
  assert.equal(hooks[0][3], utcSecond(Date.parse(alerts.hooks[0].created)));
  assert.ok(!(await page.textContent('#alerts-view')).includes('/hook'), 'no URL path shown');
  assert.deepEqual(await heads(page, 'history'), ['Time (UTC)', 'Kind', 'Alert', 'Hook', 'Attempt', 'HTTP status', 'Outcome', 'Detail']);
  const at = utcSecond(Date.parse(alert.at));
  assert.deepEqual(await cells(page, 'history'), [
    [at, 'budget_warning', text, 'ops', '1', '500', 'retrying', d1.error + (d1.next_attempt ? '; next attempt ' + utcSecond(Date.parse(d1.next_attempt)) + ' UTC' : '')],
    [at, 'budget_warning', text, 'ops', '2', '200', 'delivered', '–'],
  ]);
  assert.equal(d1.error, 'HTTP 500');
  assert.deepEqual(await page.$$eval('#history .state', (s) => s.map((e) => e.className)),
    ['state outcome-retrying', 'state outcome-delivered']);
  await page.screenshot({ path: join(shots, 'alerts.png'), fullPage: true });

  // An admin adds a hook from the page: its secret is shown once, and never listed.
  await page.fill('#hook-form [name=name]', 'second');
  await page.fill('#hook-form [name=url]', `http://127.0.0.1:${hookPort}/second`);
  await page.check('#hook-form input[value=budget_limit]');
  await settle(page, () => page.click('#hook-form button[type=submit]'));
  const secret = await page.textContent('#hook-secret-value');
  assert.match(secret, /^whsec_[0-9A-Za-z]{40}$/);
  assert.equal(await page.textContent('#hook-secret-name'), 'second');
  assert.deepEqual((await cells(page, 'hooks')).map((r) => r.slice(0, 3)), [
    ['ops', `127.0.0.1:${hookPort}`, 'budget_limit, budget_warning'],
    ['second', `127.0.0.1:${hookPort}`, 'budget_limit'],
  ]);
  assert.ok(!JSON.stringify(await read(keyA, '/api/v1/alerts')).includes(secret), 'the secret is never listed');
  // A refused destination is said in the form, naming the field.
  await page.fill('#hook-form [name=name]', 'meta');
  await page.fill('#hook-form [name=url]', 'http://169.254.169.254/latest');
  await page.click('#hook-form button[type=submit]');
  await page.waitForSelector('#hook-admin .err:not([hidden])');
  assert.match(await page.textContent('#hook-admin .err'), /\(url\) \[HTTP 400\]$/);
  // And deleted.
  page.once('dialog', (d) => d.accept());
  await settle(page, () => page.click('#hooks button[data-delete=second]'));
  assert.deepEqual((await cells(page, 'hooks')).map((r) => r[0]), ['ops']);
  assert.deepEqual((await read(keyA, '/api/v1/alerts')).hooks.map((h) => h.name), ['ops']);
  assert.deepEqual(problems.filter((p) => !/status of 400/.test(p)), []);
  await context.close();
});

test('an admin sets and deletes a budget from the page; a bad one is refused with its field named', async () => {
  const { context, page, problems } = await signIn('ann@acme.test');
  await open(page, '/?view=budgets');
  // The server names what is wrong.
  await page.fill('#budget-form [name=name]', 'web-day');
  await page.fill('#budget-form [name=scope]', 'colour=red');
  await page.fill('#budget-form [name=limit_usd]', '5');
  await page.click('#budget-form button[type=submit]');
  await page.waitForSelector('#budget-admin .err:not([hidden])');
  assert.match(await page.textContent('#budget-admin .err'), /\(scope\) \[HTTP 400\]$/);

  await page.fill('#budget-form [name=scope]', 'app=web, team=payments');
  await page.selectOption('#budget-form [name=period]', 'day');
  await page.fill('#budget-form [name=warn_at]', '50');
  await page.selectOption('#budget-form [name=action]', 'downgrade');
  assert.ok(await visible(page, '#downgrade-model'), 'the model to downgrade to is asked for');
  await page.fill('#budget-form [name=model]', 'gpt-4o-mini');
  await settle(page, () => page.click('#budget-form button[type=submit]'));
  assert.equal(await page.textContent('#budget-admin .done'), 'Budget web-day saved.');
  assert.ok(!(await visible(page, '#budget-admin .err')));
  const dayEnd = Math.ceil((Date.now() + 1) / DAY) * DAY;
  const rows = await cells(page, 'budgets');
  assert.deepEqual(rows.find((r) => r[0] === 'web-day'), [
    'web-day', 'app=web, team=payments', 'day', 'downgrade:gpt-4o-mini', '$0.00 · 0.0%', '$5.00', '0', '$0.00', 'ok',
    utcMinute(dayEnd) + ' UTC', 'Delete',
  ]);
  const made = (await read(keyA, '/api/v1/budgets')).budgets.find((x) => x.name === 'web-day');
  assert.deepEqual([made.scope, made.period, made.limit_usd, made.warn_at, made.action],
    [{ app: 'web', team: 'payments' }, 'day', 5, 0.5, 'downgrade:gpt-4o-mini']);

  // Deleting asks first: dismissed, nothing happens.
  page.once('dialog', (d) => d.dismiss());
  await page.click('#budgets button[data-delete=web-day]');
  assert.equal((await read(keyA, '/api/v1/budgets')).budgets.length, 2);
  page.once('dialog', (d) => { assert.match(d.message(), /web-day/); d.accept(); });
  await settle(page, () => page.click('#budgets button[data-delete=web-day]'));
  assert.deepEqual((await cells(page, 'budgets')).map((r) => r[0]), ['team-cap']);
  assert.deepEqual((await read(keyA, '/api/v1/budgets')).budgets.map((x) => x.name), ['team-cap']);
  assert.deepEqual(problems.filter((p) => !/status of 400/.test(p)), []);
  await context.close();
});

test('a viewer reads budgets, alerts and rules, sees no admin forms, and a forged change gets 403', async () => {
  const { context, page, problems } = await signIn('vic@acme.test');
  assert.equal(await page.textContent('#role'), 'viewer');
  await open(page, '/?view=budgets');
  assert.deepEqual((await cells(page, 'budgets')).map((r) => r.slice(0, 2)), [['team-cap', 'team=payments']]);
  assert.ok(!(await visible(page, '#budget-admin')), 'no budget form');
  assert.equal(await page.$$eval('#budgets button[data-delete]', (b) => b.length), 0, 'no delete buttons');
  assert.ok(!(await heads(page, 'budgets')).includes(''), 'no actions column');
  await open(page, '/?view=alerts');
  assert.deepEqual((await cells(page, 'hooks')).map((r) => r[0]), ['ops']);
  assert.equal((await cells(page, 'history')).length, 2);
  assert.ok(!(await visible(page, '#hook-admin')), 'no webhook form');
  assert.equal(await page.$$eval('#hooks button[data-delete]', (b) => b.length), 0);

  // Forged from the page itself, with the session's own CSRF token: the role decides.
  const statuses = await page.evaluate(async () => {
    const s = await (await fetch('/api/v1/session')).json();
    const h = { 'content-type': 'application/json', 'x-csrf-token': s.csrf };
    const budget = JSON.stringify({ name: 'forged', period: 'day', limit_usd: 1, action: 'block' });
    const hook = JSON.stringify({ name: 'forged', url: 'https://example.com/x' });
    return [
      (await fetch('/api/v1/budgets', { method: 'POST', headers: h, body: budget })).status,
      (await fetch('/api/v1/budgets/team-cap', { method: 'DELETE', headers: h })).status,
      (await fetch('/api/v1/alerts', { method: 'POST', headers: h, body: hook })).status,
      (await fetch('/api/v1/alerts/ops', { method: 'DELETE', headers: h })).status,
    ];
  });
  assert.deepEqual(statuses, [403, 403, 403, 403]);
  assert.deepEqual((await read(keyA, '/api/v1/budgets')).budgets.map((x) => x.name), ['team-cap']);
  assert.deepEqual((await read(keyA, '/api/v1/alerts')).hooks.map((h) => h.name), ['ops']);
  assert.deepEqual(problems, []);
  await context.close();

  // An admin's session without the CSRF token is refused too.
  const admin = await signIn('ann@acme.test');
  const noToken = await admin.page.evaluate(async () =>
    (await fetch('/api/v1/budgets', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ name: 'x', period: 'day', limit_usd: 1, action: 'block' }) })).status);
  assert.equal(noToken, 403);
  await admin.context.close();
});

test('the new views fit 375 px wide: no horizontal overflow', async () => {
  const { context, page, problems } = await signIn('ann@acme.test', { viewport: { width: 375, height: 812 } });
  for (const v of ['budgets', 'alerts', 'rules']) {
    await open(page, '/?view=' + v);
    const widths = await page.evaluate(() => [document.documentElement.scrollWidth, window.innerWidth]);
    assert.ok(widths[0] <= widths[1], v + ': page ' + widths[0] + ' px in a ' + widths[1] + ' px viewport');
    const over = await page.$$eval('header, nav, section', (els) =>
      els.filter((e) => e.getBoundingClientRect().right > window.innerWidth + 0.5).map((e) => e.id || e.tagName));
    assert.deepEqual(over, [], v);
    await page.screenshot({ path: join(shots, `${v}-phone.png`), fullPage: true });
  }
  assert.deepEqual(problems, []);
  await context.close();
});
