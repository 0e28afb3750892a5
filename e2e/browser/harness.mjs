// What the browser suites share: where the collector is, how it is started and fed, and how a
// page is opened and read. Each suite keeps its own data and its own collector.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';

export const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
export const bin = join(root, 'target/release/tally-collector');
export const shots = join(root, 'target/screenshots');
export const PASSWORD = 'correct horse battery staple';
export const MINUTE = 60e3;
export const HOUR = 3600e3;
export const DAY = 24 * HOUR;

// A collector CLI command on the data directory `data`: its standard output.
export function cli(data, args, input) {
  return execFileSync(bin, [...args, '--data-dir', data], { input, encoding: 'utf8' }).trim();
}

// The port a collector started with `--listen 127.0.0.1:0` says it listens on.
export async function waitForPort(proc) {
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

// POST a batch of events with an org key: accepted whole.
export async function ingest(base, key, events) {
  const r = await fetch(base + '/v1/events', {
    method: 'POST', headers: { authorization: 'Bearer ' + key }, body: JSON.stringify(events),
  });
  assert.equal(r.status, 202, await r.text());
}

// GET a path of the API with an org key: its JSON (status 200).
export async function read(base, key, path) {
  const r = await fetch(base + path, { headers: { authorization: 'Bearer ' + key } });
  assert.equal(r.status, 200, path + ': ' + (await r.clone().text()));
  return r.json();
}

// Open a page of the dashboard and wait until it has drawn.
export async function open(base, page, path) {
  await page.goto(base + path);
  await page.waitForSelector('body[data-state=ready]');
}

// Do something that redraws the page, and wait until the redraw is complete.
export async function settle(page, action) {
  const was = await page.getAttribute('body', 'data-loaded');
  await action();
  await page.waitForFunction((w) => document.body.dataset.state === 'ready' && document.body.dataset.loaded !== w, was);
}

// A table's body, cell by cell.
export const cells = (page, table) =>
  page.$$eval(`#${table} tbody tr`, (trs) => trs.map((tr) => [...tr.children].map((td) => td.textContent)));

// The page's money format, for figures computed here.
export const usd = (v) => {
  if (v >= 100) return '$' + v.toFixed(0);
  if (v >= 1 || v === 0) return '$' + v.toFixed(2);
  let s = v.toPrecision(3).replace(/0+$/, '');
  if ((s.split('.')[1] || '').length < 2) s = v.toFixed(2);
  return '$' + s;
};
