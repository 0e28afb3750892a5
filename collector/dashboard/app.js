// Tally's dashboard: reads the collector's API with the session cookie and draws it.
// No framework; Chart.js draws the spend chart. Every figure comes from /api/v1/*.
//
// Conventions, the same in every view:
// - times are UTC, and say so (the range pickers read and show UTC too);
// - a missing label is "(none)" (the feature dimension's "untagged" included), a figure that was
//   not measured is "–", and a cost with no known price is "unknown", never $0.00;
// - the page's state (range, filters, chart and breakdown dimensions) lives in the URL's query
//   string, so a view can be bookmarked, reloaded and walked with back and forward;
// - a query that fails or is refused clears what it drew and says why in its own card;
// - changes (budgets, webhooks) are offered to org admins only, and carry the session's CSRF
//   token; the server refuses them to anyone else whatever the page shows.
'use strict';

(function () {
  if (document.body.classList.contains('login')) {
    if (new URLSearchParams(location.search).has('error')) {
      document.getElementById('error').hidden = false;
    }
    return;
  }

  const $ = (id) => document.getElementById(id);
  const MINUTE = 60e3;
  const HOUR = 3600e3;
  const DAY = 24 * HOUR;
  const RANGES = { '1h': HOUR, '24h': DAY, '7d': 7 * DAY, '30d': 30 * DAY, '90d': 90 * DAY };
  const DEFAULT_RANGE = '24h';
  // The page's views: spend (the default), budgets, alerts, and the rules applied.
  const VIEWS = ['spend', 'budgets', 'alerts', 'rules'];
  const FILTERS = ['team', 'app', 'feature', 'task', 'model', 'provider', 'user', 'namespace', 'workload', 'status'];
  const NAMES = {
    feature: 'Feature', model: 'Model', provider: 'Provider', team: 'Team', app: 'App', task: 'Task',
    user: 'User', namespace: 'Namespace', workload: 'Workload', status: 'Status',
  };
  const SOURCE = { exact: 'Exact', measured: 'Measured', measured_calibrated: 'Measured (calibrated)' };
  const PALETTE = ['#2f6fed', '#e0823d', '#3aa35b', '#b94fc4', '#d64545', '#2fb5b5', '#8a6d3b', '#6b7385'];
  const TOP_KEYS = 8;
  const LOG_PAGE = 200;

  // ---- Formatting -------------------------------------------------------------------------

  // Dollars: whole above $100, cents above $1, three significant digits (at least cents) below.
  const usd = (v) => {
    if (v >= 100) return '$' + v.toFixed(0);
    if (v >= 1 || v === 0) return '$' + v.toFixed(2);
    let s = v.toPrecision(3).replace(/0+$/, '');
    if ((s.split('.')[1] || '').length < 2) s = v.toFixed(2);
    return '$' + s;
  };
  // A cost that may be unknown, in part or whole: never $0.00 for what has no price.
  const cost = (v, unpriced) => {
    if (v == null) return 'unknown';
    return unpriced > 0 ? '≥ ' + usd(v) + ' + unknown' : usd(v);
  };
  const int = (v) => (v == null ? '–' : Math.round(v).toLocaleString('en-US'));
  const ms = (v) => (v == null ? '–' : v >= 1000 ? (v / 1000).toFixed(2) + ' s' : v.toFixed(v >= 100 ? 0 : 1) + ' ms');
  const pct = (a, b) => (b > 0 ? ((100 * a) / b).toFixed(1) + '%' : '–');
  const missing = (k) => k == null || k === '';
  // One convention for a missing label; the feature dimension calls it "untagged".
  const label = (k, dim) => (missing(k) || (dim === 'feature' && k === 'untagged') ? '(none)' : String(k));
  const pad = (n) => String(n).padStart(2, '0');
  const utc = (t) => {
    const d = new Date(t);
    return d.getUTCFullYear() + '-' + pad(d.getUTCMonth() + 1) + '-' + pad(d.getUTCDate()) + ' ' +
      pad(d.getUTCHours()) + ':' + pad(d.getUTCMinutes());
  };
  // A timestamp to the second, in UTC whatever offset it was written with.
  const utcSeconds = (ts) => {
    const t = Date.parse(ts);
    return isNaN(t) ? String(ts) : new Date(t).toISOString().replace('T', ' ').slice(0, 19);
  };
  const MONTHS = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];
  const duration = (len) => {
    if (len % DAY === 0 && len > DAY) return len / DAY + ' d';
    if (len % HOUR === 0) return len / HOUR + ' h';
    return Math.round(len / MINUTE) + ' min';
  };
  const floorTo = (t, g) => Math.floor(t / g) * g;
  const ceilTo = (t, g) => Math.ceil(t / g) * g;

  // Figures of priced requests only: cost per request and per 1 000 tokens.
  const pricedRequests = (r) => r.requests - (r.unpriced_requests || 0);
  const pricedTokens = (r) => (r.input_tokens || 0) + (r.output_tokens || 0) -
    (r.unpriced_input_tokens || 0) - (r.unpriced_output_tokens || 0);
  const perRequest = (r) => (r.cost_usd == null || pricedRequests(r) <= 0 ? null : r.cost_usd / pricedRequests(r));
  const perKTokens = (r) => (r.cost_usd == null || pricedTokens(r) <= 0 ? null : (1000 * r.cost_usd) / pricedTokens(r));
  const unknownOr = (f) => (v) => (v == null ? 'unknown' : f(v));

  // The change from a previous period (`than`: "the previous 24 h"): relative for amounts, in
  // percentage points for rates.
  function change(cur, prev, than, fmt, rate) {
    if (prev == null) return 'unknown in ' + than;
    if (cur == null) return 'vs ' + fmt(prev) + ' in ' + than;
    if (rate) {
      const d = cur - prev;
      return (d >= 0 ? '+' : '-') + Math.abs(d).toFixed(1) + ' pp vs ' + than + ' (' + prev.toFixed(1) + '%)';
    }
    if (prev === 0) return cur === 0 ? 'no change vs ' + than : 'up from ' + fmt(0) + ' in ' + than;
    const d = (100 * (cur - prev)) / prev;
    return (d >= 0 ? '+' : '-') + Math.abs(d).toFixed(1) + '% vs ' + than + ' (' + fmt(prev) + ')';
  }

  // ---- State, in the URL ------------------------------------------------------------------

  function readUrl() {
    const q = new URLSearchParams(location.search);
    const s = { view: 'spend', preset: DEFAULT_RANGE, from: null, to: null, filters: {}, stack: 'model', by: 'feature' };
    if (VIEWS.includes(q.get('view'))) s.view = q.get('view');
    const from = Date.parse(q.get('from') || '');
    const to = Date.parse(q.get('to') || '');
    if (!isNaN(from) && !isNaN(to) && from < to) {
      s.preset = null;
      s.from = from;
      s.to = to;
    } else if (RANGES[q.get('range')]) {
      s.preset = q.get('range');
    }
    for (const f of FILTERS) if (q.get(f)) s.filters[f] = q.get(f);
    if ([...$('stack-by').options].some((o) => o.value === q.get('stack'))) s.stack = q.get('stack');
    if ([...$('breakdown-by').options].some((o) => o.value === q.get('by'))) s.by = q.get('by');
    return s;
  }

  function urlOf(s) {
    const q = new URLSearchParams();
    if (s.view !== 'spend') q.set('view', s.view);
    if (s.preset) {
      if (s.preset !== DEFAULT_RANGE) q.set('range', s.preset);
    } else {
      q.set('from', new Date(s.from).toISOString());
      q.set('to', new Date(s.to).toISOString());
    }
    for (const f of FILTERS) if (s.filters[f]) q.set(f, s.filters[f]);
    if (s.stack !== 'model') q.set('stack', s.stack);
    if (s.by !== 'feature') q.set('by', s.by);
    const text = q.toString();
    return location.pathname + (text ? '?' + text : '');
  }

  let state = readUrl();

  // Change the state, record it in the history (back and forward walk it), and redraw.
  function navigate(change) {
    state = { ...state, ...change, filters: { ...(change.filters || state.filters) } };
    const url = urlOf(state);
    if (url !== location.pathname + location.search) history.pushState(null, '', url);
    refresh();
  }

  window.addEventListener('popstate', () => {
    state = readUrl();
    refresh();
  });

  // ---- API --------------------------------------------------------------------------------

  async function call(path, init) {
    let r;
    try {
      r = await fetch(path, { credentials: 'same-origin', ...init });
    } catch (e) {
      throw new Error('the collector did not answer');
    }
    if (r.status === 401) { location.href = '/login'; throw new Error('signed out'); }
    if (!r.ok) {
      let msg = 'HTTP ' + r.status;
      try {
        const body = await r.json();
        // {"error": code, "message": why, "field": which parameter}
        const why = body && (body.message || body.error);
        if (why) msg = why + (body.field ? ' (' + body.field + ')' : '') + ' [HTTP ' + r.status + ']';
      } catch (e) { /* not JSON: the status says enough */ }
      throw new Error(msg);
    }
    return r.status === 204 ? null : r.json();
  }
  const api = (path) => call(path);

  // The signed-in user: org, email, role and the CSRF token that changes must carry.
  const session = api('/api/v1/session');
  const isAdmin = () => session.then((s) => s.role === 'admin', () => false);

  // A change (POST, DELETE) as the signed-in user: the server checks the token and the role.
  async function send(method, path, body) {
    const s = await session;
    const headers = { 'x-csrf-token': s.csrf };
    if (body !== undefined) headers['content-type'] = 'application/json';
    return call(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  }

  // The query string of a read: the window, the page's filters, and what the read adds.
  function query(ctx, from, to, extra) {
    const p = new URLSearchParams({ from: new Date(from).toISOString(), to: new Date(to).toISOString() });
    for (const [k, v] of Object.entries(ctx.filters)) p.set(k, v);
    for (const [k, v] of Object.entries(extra || {})) if (v !== '' && v != null) p.set(k, v);
    return p.toString();
  }

  const ZERO = {
    key: null, requests: 0, errors: 0, input_tokens: 0, output_tokens: 0, cached_input_tokens: 0, cost_usd: 0,
    unpriced_requests: 0, unpriced_input_tokens: 0, unpriced_output_tokens: 0, cache_savings_usd: 0,
    latency_avg_ms: null, latency_p50_ms: null, latency_p95_ms: null, ttfb_p50_ms: null,
  };

  // The total over [from, to): its row and how finely the edges were read.
  async function total(ctx, from, to, part) {
    const data = await api('/api/v1/summary?' + query(ctx, from, to));
    if (data.resolution === 'hour') ctx.hourly.add(part);
    return { row: { ...ZERO, ...(data.rows[0] || {}) }, resolution: data.resolution || 'minute' };
  }

  // The edges a window was read with (hour resolution rounds them out to whole hours).
  const edges = (from, to, resolution) =>
    resolution === 'hour' ? [floorTo(from, HOUR), ceilTo(to, HOUR)] : [from, to];

  // ---- Rendering helpers ------------------------------------------------------------------

  const text = (id, v) => { $(id).textContent = v; };

  function failure(sectionId, e) {
    const el = $(sectionId).querySelector('.err');
    el.textContent = 'Could not load: ' + e.message;
    el.hidden = false;
  }
  function success(sectionId) {
    const el = $(sectionId).querySelector('.err');
    el.hidden = true;
    el.textContent = '';
  }

  // CSV cells as the server writes them (collector/src/csv.rs): a cell that a spreadsheet would run
  // as a formula (it starts with =, +, -, @, tab or CR) and is not a number (as Rust's f64 parses
  // one) gets a leading ', then RFC 4180 quoting. Labels come from request headers.
  const FORMULA = /^[=+\-@\t\r]/;
  const RUST_F64 = /^[+-]?(inf|infinity|nan|(\d+\.?\d*|\.\d+)(e[+-]?\d+)?)$/i;

  // A table whose columns sort by a click on their header and which exports its data as CSV.
  // A column: { label, value(row) (sort and CSV), text(row) (shown), csv(row) (optional), num }.
  class Table {
    constructor(id, columns, opts) {
      this.el = $(id);
      this.columns = columns;
      this.opts = opts || {};
      this.rows = [];
      this.sort = null; // { index, dir: 1 | -1 }
      this.render();
    }
    setColumns(columns) {
      if (columns.map((c) => c.label).join('|') !== this.columns.map((c) => c.label).join('|')) this.sort = null;
      this.columns = columns;
    }
    set(rows) { this.rows = rows; this.render(); }
    clear() { this.rows = []; this.render(); }
    sorted() {
      if (!this.sort) return this.rows;
      const c = this.columns[this.sort.index];
      const key = (r) => {
        const v = c.value(r);
        return v == null || (typeof v === 'number' && isNaN(v)) ? null : v;
      };
      return [...this.rows].sort((a, b) => {
        const x = key(a);
        const y = key(b);
        if (x === y) return 0;
        if (x == null) return 1; // unknown and missing last, either way
        if (y == null) return -1;
        const o = typeof x === 'number' && typeof y === 'number' ? x - y : String(x).localeCompare(String(y));
        return o * this.sort.dir;
      });
    }
    render() {
      const head = document.createElement('thead');
      const htr = document.createElement('tr');
      this.columns.forEach((c, i) => {
        const th = document.createElement('th');
        if (c.num) th.className = 'num';
        if (c.nosort) {
          th.textContent = c.label;
          htr.appendChild(th);
          return;
        }
        const b = document.createElement('button');
        b.type = 'button';
        b.textContent = c.label;
        b.title = 'Sort by ' + c.label;
        if (this.sort && this.sort.index === i) {
          th.setAttribute('aria-sort', this.sort.dir > 0 ? 'ascending' : 'descending');
          b.textContent += this.sort.dir > 0 ? ' ▲' : ' ▼';
        }
        b.addEventListener('click', () => {
          // Numbers sort largest first on the first click, words A to Z.
          const first = c.num ? -1 : 1;
          this.sort = this.sort && this.sort.index === i ? { index: i, dir: -this.sort.dir } : { index: i, dir: first };
          this.render();
        });
        th.appendChild(b);
        htr.appendChild(th);
      });
      head.appendChild(htr);
      const body = document.createElement('tbody');
      if (this.rows.length === 0 && this.opts.empty) {
        const tr = document.createElement('tr');
        const td = document.createElement('td');
        td.colSpan = this.columns.length;
        td.className = 'muted empty';
        td.textContent = this.opts.empty;
        tr.appendChild(td);
        body.appendChild(tr);
      }
      for (const r of this.sorted()) {
        const tr = document.createElement('tr');
        for (const c of this.columns) {
          const td = document.createElement('td');
          td.className = [c.num ? 'num' : '', c.cls || ''].join(' ').trim();
          if (c.node) {
            for (const n of [].concat(c.node(r))) td.append(n);
          } else {
            td.textContent = c.text(r);
          }
          tr.appendChild(td);
        }
        const drill = this.opts.drill && this.opts.drill(r);
        if (drill) {
          tr.className = 'drill';
          tr.tabIndex = 0;
          tr.title = 'Filter the page by ' + Object.entries(drill).map(([k, v]) => k + ' = ' + v).join(', ');
          tr.addEventListener('click', () => navigate({ filters: { ...state.filters, ...drill } }));
          tr.addEventListener('keydown', (e) => {
            if (e.key === 'Enter') navigate({ filters: { ...state.filters, ...drill } });
          });
        }
        body.appendChild(tr);
      }
      this.el.replaceChildren(head, body);
    }
    csv() {
      const cell = (v) => {
        let s = v == null ? '' : String(v);
        if (FORMULA.test(s) && !RUST_F64.test(s)) s = "'" + s;
        return /[",\r\n]/.test(s) ? '"' + s.replace(/"/g, '""') + '"' : s;
      };
      const columns = this.columns.filter((c) => !c.nocsv);
      const lines = [columns.map((c) => cell(c.label)).join(',')];
      for (const r of this.sorted()) {
        lines.push(columns.map((c) => cell(c.csv ? c.csv(r) : c.value(r))).join(','));
      }
      return lines.join('\r\n') + '\r\n';
    }
  }

  // Cost columns: the number for sorting and CSV ("unknown" in CSV when there is no price).
  const costCol = (labelText, get, unpriced) => ({
    label: labelText, num: true,
    value: (r) => get(r),
    text: (r) => cost(get(r), unpriced ? unpriced(r) : 0),
    csv: (r) => (get(r) == null ? 'unknown' : get(r)),
  });
  const rateCol = (labelText, get) => ({
    label: labelText, num: true, value: get, text: (r) => unknownOr(usd)(get(r)),
    csv: (r) => (get(r) == null ? 'unknown' : get(r)),
  });
  const numCol = (labelText, get, fmt) => ({ label: labelText, num: true, value: get, text: (r) => (fmt || int)(get(r)) });
  const msCol = (labelText, get) => numCol(labelText, get, ms);

  // ---- Views ------------------------------------------------------------------------------

  let gen = 0; // the refresh being drawn: answers of an older one are dropped
  let ctx = null;
  let chart = null;
  const current = (c) => c.gen === gen;

  // The cards: the range's totals with the previous range of equal length, month to date with
  // its forecast, and the hour's run-rate.
  async function rangeCards(c) {
    const cur = await total(c, c.from, c.to, 'Spend');
    const [f, t] = edges(c.from, c.to, cur.resolution);
    // The previous period ends where this one's (rounded) start is: the two never overlap.
    const prev = await total(c, f - (t - f), f, 'Spend');
    return () => {
      const r = cur.row;
      const p = prev.row;
      // Read per whole hour, both periods are the rounded length: say which.
      const period = 'the previous ' + duration(cur.resolution === 'hour' ? t - f : c.to - c.from);
      text('spend', cost(r.cost_usd, r.unpriced_requests));
      text('spend-unpriced', r.unpriced_requests > 0
        ? int(r.unpriced_requests) + ' unpriced ' + (r.unpriced_requests === 1 ? 'request' : 'requests') + ' (cost unknown)'
        : '');
      text('spend-delta', change(r.cost_usd, p.cost_usd, period, (v) => cost(v, p.unpriced_requests)));
      text('savings', usd(r.cache_savings_usd || 0));
      text('savings-delta', change(r.cache_savings_usd || 0, p.cache_savings_usd || 0, period, usd));
      text('requests', int(r.requests));
      text('requests-delta', change(r.requests, p.requests, period, int));
      const rate = (x) => (x.requests > 0 ? (100 * x.errors) / x.requests : null);
      text('error-rate', pct(r.errors, r.requests));
      text('error-rate-delta', rate(r) == null || rate(p) == null ? '' : change(rate(r), rate(p), period, null, true));
      text('p95', ms(r.latency_p95_ms));
      text('p95-delta', r.latency_p95_ms == null || p.latency_p95_ms == null ? '' : change(r.latency_p95_ms, p.latency_p95_ms, period, ms));
    };
  }

  async function hourCard(c) {
    const cur = await total(c, c.to - HOUR, c.to, 'Cost per hour');
    const [f, t] = edges(c.to - HOUR, c.to, cur.resolution);
    const prev = await total(c, f - (t - f), f, 'Cost per hour');
    const hours = cur.resolution === 'hour' ? (t - f) / HOUR : 1;
    const rate = (r) => (r.cost_usd == null ? null : r.cost_usd / hours);
    return () => {
      text('per-hour', cost(rate(cur.row), cur.row.unpriced_requests));
      $('card-per-hour').querySelector('.def').textContent = cur.resolution === 'hour'
        ? 'Run-rate: spend per hour over ' + utc(f).slice(11) + '–' + utc(t).slice(11) + ' UTC (whole hours)'
        : 'Run-rate: spend in the last 60 minutes of the range';
      text('per-hour-delta', change(rate(cur.row), rate(prev.row), 'the previous ' + (cur.resolution === 'hour' ? duration(t - f) : '60 min'),
        (v) => cost(v, prev.row.unpriced_requests)));
    };
  }

  async function monthCard(c) {
    // The month of the range's end, in UTC (budgets count months in UTC too).
    const end = new Date(c.now);
    const start = Date.UTC(end.getUTCFullYear(), end.getUTCMonth(), 1);
    const next = Date.UTC(end.getUTCFullYear(), end.getUTCMonth() + 1, 1);
    const prevStart = Date.UTC(end.getUTCFullYear(), end.getUTCMonth() - 1, 1);
    const elapsed = c.now - start;
    const mtd = await total(c, start, c.now, 'Month to date');
    const prev = await total(c, prevStart, Math.min(prevStart + elapsed, start), 'Month to date');
    return () => {
      const r = mtd.row;
      text('mtd', cost(r.cost_usd, r.unpriced_requests));
      const forecast = r.cost_usd == null || elapsed <= 0 ? null : (r.cost_usd * (next - start)) / elapsed;
      const last = new Date(next - DAY);
      text('forecast', 'Forecast to ' + last.getUTCDate() + ' ' + MONTHS[last.getUTCMonth()] + ': ' +
        cost(forecast, r.unpriced_requests) + ' (linear run-rate of month to date)');
      $('card-mtd').querySelector('h2').textContent = 'Month to date (since 1 ' + MONTHS[end.getUTCMonth()] + ', UTC)';
      text('mtd-delta', change(r.cost_usd, prev.row.cost_usd, 'the same days of last month', (v) => cost(v, prev.row.unpriced_requests)));
    };
  }

  // A card whose read failed: no figure ('–') and no comparison.
  function clearCards(ids) {
    for (const id of ids) text(id, /-delta$|^forecast$|-unpriced$/.test(id) ? '' : '–');
  }

  async function spendChart(c) {
    const width = c.to - c.from;
    const asked = width <= 3 * HOUR ? 'minute' : width <= 7 * DAY ? 'hour' : 'day';
    const by = c.stack;
    const data = await api('/api/v1/timeseries?' + query(c, c.from, c.to, { bucket: asked, group_by: by }));
    return () => drawChart(c, data, asked, by);
  }

  function drawChart(c, data, asked, by) {
    const bucket = data.bucket || asked;
    const step = bucket === 'minute' ? MINUTE : bucket === 'hour' ? HOUR : DAY;
    // A true time axis: every bucket of the range, in order, whether it had traffic or not
    // (the API fills them with zeros; the grid here keeps the axis whole regardless).
    const times = new Set();
    for (let t = floorTo(c.from, step); t < c.to; t += step) times.add(t);
    for (const p of data.points) times.add(Date.parse(p.bucket));
    const buckets = [...times].sort((a, b) => a - b);
    const index = new Map(buckets.map((t, i) => [t, i]));
    // One series per key, the most expensive first; past the eighth, one "Others" series.
    const totals = new Map();
    for (const p of data.points) {
      const k = label(p.key, by);
      const e = totals.get(k) || { cost: 0, requests: 0 };
      e.cost += p.cost_usd || 0;
      e.requests += p.requests || 0;
      totals.set(k, e);
    }
    const ranked = [...totals.entries()].filter(([, e]) => e.requests > 0 || e.cost > 0)
      .sort((a, b) => b[1].cost - a[1].cost || b[1].requests - a[1].requests || a[0].localeCompare(b[0]))
      .map(([k]) => k);
    const shown = ranked.slice(0, TOP_KEYS);
    const series = (k) => (shown.includes(k) ? k : 'Others');
    const names = ranked.length > TOP_KEYS ? [...shown, 'Others'] : shown;
    const zeros = () => new Map(names.map((k) => [k, buckets.map(() => 0)]));
    const values = zeros();
    const unknown = zeros();
    const requests = zeros();
    for (const p of data.points) {
      const k = label(p.key, by);
      if (!totals.has(k) || !values.has(series(k))) continue;
      const i = index.get(Date.parse(p.bucket));
      values.get(series(k))[i] += p.cost_usd || 0;
      unknown.get(series(k))[i] += p.unpriced_requests || 0;
      requests.get(series(k))[i] += p.requests || 0;
    }
    const datasets = names.map((k, i) => ({
      label: k,
      backgroundColor: PALETTE[i % PALETTE.length],
      data: values.get(k),
      unpriced: unknown.get(k),
      requests: requests.get(k),
    }));
    // A series' cost in a bucket: unknown when every request in it was unpriced (its bar is 0 tall,
    // so the tooltip shows every series of the hovered bucket that had requests).
    const bucketCost = (d, i) => {
      const u = d.unpriced[i];
      return cost(u > 0 && u >= d.requests[i] ? null : d.data[i], u);
    };
    const labels = buckets.map((t) => (bucket === 'day' ? utc(t).slice(0, 10) : utc(t).slice(5)));
    const note = $('chart-note');
    if (data.note || bucket !== asked) {
      note.textContent = data.note || ('Shown per ' + bucket + ': ' + by + ' is not kept per ' + asked + '.');
      note.hidden = false;
    } else {
      note.hidden = true;
    }
    if (chart) chart.destroy();
    chart = new Chart($('spend-chart'), {
      type: 'bar',
      data: { labels, datasets },
      options: {
        animation: false,
        maintainAspectRatio: false,
        scales: {
          x: { stacked: true, title: { display: true, text: 'UTC, per ' + bucket } },
          y: { stacked: true, beginAtZero: true, ticks: { callback: (v) => usd(v) } },
        },
        interaction: { mode: 'index', intersect: false },
        plugins: {
          tooltip: {
            filter: (t) => t.dataset.requests[t.dataIndex] > 0 || t.parsed.y > 0,
            callbacks: {
              label: (t) => t.dataset.label + ': ' + bucketCost(t.dataset, t.dataIndex),
            },
          },
        },
      },
    });
    $('spend-chart').dataset.bucket = bucket;
  }

  function clearChart() {
    if (chart) chart.destroy();
    chart = null;
    $('chart-note').hidden = true;
    delete $('spend-chart').dataset.bucket;
  }

  const breakdownTable = new Table('breakdown', [], {
    drill: (r) => {
      const dim = ctx && ctx.by;
      if (!dim || missing(r.key)) return null;
      // Requests with no feature are found as "untagged"; other missing labels cannot be filtered.
      return { [dim]: r.key };
    },
  });

  function breakdownColumns(dim, spend) {
    return [
      { label: NAMES[dim], value: (r) => label(r.key, dim), text: (r) => label(r.key, dim) },
      costCol('Spend', (r) => r.cost_usd, (r) => r.unpriced_requests),
      {
        label: 'Share', num: true,
        value: (r) => (r.cost_usd == null || spend <= 0 ? null : r.cost_usd / spend),
        text: (r) => (r.cost_usd == null ? 'unknown' : pct(r.cost_usd, spend)),
      },
      numCol('Requests', (r) => r.requests),
      numCol('Unpriced requests', (r) => r.unpriced_requests || 0),
      numCol('Input tokens', (r) => r.input_tokens),
      numCol('Output tokens', (r) => r.output_tokens),
      rateCol('Cost / request', perRequest),
      rateCol('Cost / 1k tokens', perKTokens),
      costCol('Cache savings', (r) => r.cache_savings_usd || 0),
      msCol('p50 latency', (r) => r.latency_p50_ms),
      msCol('p95 latency', (r) => r.latency_p95_ms),
      { label: 'Error rate', num: true, value: (r) => (r.requests > 0 ? r.errors / r.requests : null), text: (r) => pct(r.errors, r.requests) },
    ];
  }

  async function breakdown(c) {
    const dim = c.by;
    const data = await api('/api/v1/summary?' + query(c, c.from, c.to, { group_by: dim }));
    if (data.resolution === 'hour') c.hourly.add('Breakdown');
    return () => {
      const spend = data.rows.reduce((a, r) => a + (r.cost_usd || 0), 0);
      breakdownTable.setColumns(breakdownColumns(dim, spend));
      breakdownTable.set(data.rows);
    };
  }

  // "provider/model" keys of the provider_model dimension.
  const splitModel = (k) => {
    const s = k || '/';
    const cut = s.indexOf('/');
    return { provider: s.slice(0, cut), model: s.slice(cut + 1) };
  };

  const modelsTable = new Table('models', [
    { label: 'Model', value: (r) => label(splitModel(r.key).model), text: (r) => label(splitModel(r.key).model) },
    { label: 'Provider', value: (r) => label(splitModel(r.key).provider), text: (r) => label(splitModel(r.key).provider) },
    numCol('Requests', (r) => r.requests),
    numCol('Unpriced requests', (r) => r.unpriced_requests || 0),
    costCol('Spend', (r) => r.cost_usd, (r) => r.unpriced_requests),
    rateCol('Cost / request', perRequest),
    rateCol('Cost / 1k tokens', perKTokens),
    costCol('Cache savings', (r) => r.cache_savings_usd || 0),
    msCol('Avg latency', (r) => r.latency_avg_ms),
    msCol('p95 latency', (r) => r.latency_p95_ms),
    msCol('TTFB p50', (r) => r.ttfb_p50_ms),
  ], {
    drill: (r) => {
      const m = splitModel(r.key);
      // The model alone: the API's model filter matches the model asked for or the one that
      // answered, and one filter keeps the read on its fast path.
      return m.model ? { model: m.model } : null;
    },
  });

  const unpricedTable = new Table('unpriced-models', [
    { label: 'Model', value: (r) => label(splitModel(r.key).model), text: (r) => label(splitModel(r.key).model) },
    { label: 'Provider', value: (r) => label(splitModel(r.key).provider), text: (r) => label(splitModel(r.key).provider) },
    numCol('Unpriced requests', (r) => r.unpriced_requests),
    numCol('Input tokens', (r) => r.unpriced_input_tokens),
    numCol('Output tokens', (r) => r.unpriced_output_tokens),
  ]);

  async function models(c) {
    const data = await api('/api/v1/summary?' + query(c, c.from, c.to, { group_by: 'provider_model' }));
    if (data.resolution === 'hour') c.hourly.add('Models');
    return () => {
      modelsTable.set(data.rows);
      const unpriced = data.rows.filter((r) => r.unpriced_requests > 0);
      unpricedTable.set(unpriced);
      $('unpriced').hidden = unpriced.length === 0;
    };
  }

  const errorsTable = new Table('errors', [
    { label: 'Category', value: (r) => label(r.key.split('/')[0]), text: (r) => label(r.key.split('/')[0]) },
    { label: 'Source', value: (r) => label(r.key.split('/')[1]), text: (r) => label(r.key.split('/')[1]) },
    numCol('Requests', (r) => r.requests),
  ]);

  async function errors(c) {
    const data = await api('/api/v1/summary?' + query(c, c.from, c.to, { group_by: 'error' }));
    if (data.resolution === 'hour') c.hourly.add('Errors');
    return () => errorsTable.set(data.rows.map((r) => ({ ...r, key: r.key || '/' })).sort((a, b) => b.requests - a.requests));
  }

  const logTable = new Table('log', [
    { label: 'Time (UTC)', value: (e) => e.timestamp, text: (e) => utcSeconds(e.timestamp) },
    { label: 'Provider', value: (e) => label(e.provider), text: (e) => label(e.provider) },
    { label: 'Model', value: (e) => label(e.model_actual || e.model_requested), text: (e) => label(e.model_actual || e.model_requested) },
    { label: 'Feature', value: (e) => label(e.feature, 'feature'), text: (e) => label(e.feature, 'feature') },
    { label: 'Team', value: (e) => label(e.team), text: (e) => label(e.team) },
    { label: 'App', value: (e) => label(e.app), text: (e) => label(e.app) },
    { label: 'Namespace', value: (e) => label(e.namespace), text: (e) => label(e.namespace) },
    { label: 'Workload', value: (e) => label(e.workload), text: (e) => label(e.workload) },
    numCol('Status', (e) => e.status, (v) => (v == null ? '–' : String(v))),
    numCol('Input tokens', (e) => e.input_tokens),
    numCol('Output tokens', (e) => e.output_tokens),
    { label: 'Token source', value: (e) => SOURCE[e.token_source] || null, text: (e) => SOURCE[e.token_source] || '–' },
    {
      label: 'Cost', num: true, value: (e) => e.cost_usd,
      text: (e) => (e.cost_usd == null ? 'unknown' : usd(e.cost_usd)),
      csv: (e) => (e.cost_usd == null ? 'unknown' : e.cost_usd),
    },
    msCol('Latency', (e) => e.latency_ms),
  ]);
  let logCursor = null;

  async function log(c) {
    const q = query(c, c.from, c.to);
    const data = await api('/api/v1/events?' + q + '&limit=' + LOG_PAGE);
    return () => {
      $('csv').href = '/api/v1/events.csv?' + q + '&limit=100000';
      logTable.set(data.events);
      logCursor = data.next_cursor || null;
      showLogCount();
    };
  }

  function showLogCount() {
    const n = logTable.rows.length;
    text('log-count', n === 0 ? 'No requests match.' : 'Showing the newest ' + int(n) + (logCursor ? '; more match.' : (n === 1 ? ' request: all that match.' : ' requests: all that match.')));
    $('more').hidden = !logCursor;
  }

  async function more() {
    const c = ctx;
    if (!logCursor) return;
    $('more').disabled = true;
    try {
      const q = query(c, c.from, c.to);
      const data = await api('/api/v1/events?' + q + '&limit=' + LOG_PAGE + '&cursor=' + encodeURIComponent(logCursor));
      if (!current(c)) return;
      logTable.set([...logTable.rows, ...data.events]);
      logCursor = data.next_cursor || null;
      success('log-card');
      showLogCount();
    } catch (e) {
      if (current(c)) failure('log-card', e);
    } finally {
      $('more').disabled = false;
      document.body.dataset.more = String(logTable.rows.length);
    }
  }

  // ---- Budgets, alerts and rules ----------------------------------------------------------

  // An element with its text and class.
  const el = (tag, textContent, className) => {
    const e = document.createElement(tag);
    if (textContent != null) e.textContent = textContent;
    if (className) e.className = className;
    return e;
  };
  // A signed amount: a negative saving (a rule that sent a dearer model) keeps its sign.
  const signedUsd = (v) => (v < 0 ? '−' + usd(-v) : usd(v));
  // A "Delete" button that asks first, then runs `del` and redraws the view.
  const deleteButton = (what, name, card, del) => {
    const b = el('button', 'Delete', 'danger');
    b.type = 'button';
    b.dataset.delete = name;
    b.title = 'Delete ' + what + ' ' + name;
    b.addEventListener('click', async () => {
      if (!confirm('Delete ' + what + ' "' + name + '"?')) return;
      b.disabled = true;
      try {
        await del();
        refresh();
      } catch (e) {
        failure(card, e);
        b.disabled = false;
      }
    });
    return b;
  };
  const scopeText = (scope) => {
    const pairs = Object.entries(scope || {});
    return pairs.length === 0 ? 'whole org' : pairs.map(([k, v]) => k + '=' + v).join(', ');
  };

  function budgetColumns(admin) {
    const cols = [
      { label: 'Budget', value: (b) => b.name, text: (b) => b.name },
      { label: 'Scope', value: (b) => scopeText(b.scope), text: (b) => scopeText(b.scope) },
      { label: 'Period', value: (b) => b.period, text: (b) => b.period },
      { label: 'Action', value: (b) => b.action, text: (b) => b.action },
      {
        label: 'Spend', num: true,
        value: (b) => b.spend_usd,
        node: (b) => {
          const m = el('meter');
          m.min = 0;
          m.max = b.limit_usd;
          m.low = b.warn_at * b.limit_usd;
          m.high = b.limit_usd;
          m.optimum = 0;
          m.value = Math.min(b.spend_usd, b.limit_usd);
          m.title = pct(b.spend_usd, b.limit_usd) + ' of the limit';
          return [m, el('span', usd(b.spend_usd) + ' · ' + pct(b.spend_usd, b.limit_usd))];
        },
        csv: (b) => b.spend_usd,
      },
      { label: 'Limit', num: true, value: (b) => b.limit_usd, text: (b) => usd(b.limit_usd) },
      numCol('Requests', (b) => b.requests),
      {
        label: 'Forecast to period end', num: true, value: (b) => b.forecast_usd,
        text: (b) => usd(b.forecast_usd) + (b.forecast_usd >= b.limit_usd && b.spend_usd < b.limit_usd ? ' · over the limit' : ''),
        csv: (b) => b.forecast_usd,
      },
      {
        label: 'State', value: (b) => b.state,
        node: (b) => el('span', b.state, 'state state-' + b.state),
      },
      {
        label: 'Period ends (UTC)', value: (b) => b.period_end_ms,
        text: (b) => utc(b.period_end_ms) + ' UTC', csv: (b) => new Date(b.period_end_ms).toISOString(),
      },
    ];
    if (admin) {
      cols.push({
        label: '', nosort: true, nocsv: true, value: () => null,
        node: (b) => deleteButton('budget', b.name, 'budgets-card',
          () => send('DELETE', '/api/v1/budgets/' + encodeURIComponent(b.name))),
      });
    }
    return cols;
  }
  const budgetsTable = new Table('budgets', [], { empty: 'No budgets yet.' });

  async function budgets() {
    const [data, admin] = await Promise.all([api('/api/v1/budgets'), isAdmin()]);
    return () => {
      budgetsTable.setColumns(budgetColumns(admin));
      budgetsTable.set(data.budgets);
      $('budget-admin').hidden = !admin;
    };
  }

  $('budget-form').elements.action.addEventListener('change', () => {
    $('downgrade-model').hidden = $('budget-form').elements.action.value !== 'downgrade';
  });
  $('budget-form').addEventListener('submit', async (e) => {
    e.preventDefault();
    const f = $('budget-form').elements;
    const done = $('budget-admin').querySelector('.done');
    done.hidden = true;
    const scope = {};
    for (const part of f.scope.value.split(',').map((p) => p.trim()).filter(Boolean)) {
      const cut = part.indexOf('=');
      if (cut <= 0) {
        failure('budget-admin', new Error('scope: write FIELD=VALUE pairs separated by commas, e.g. team=payments'));
        return;
      }
      scope[part.slice(0, cut).trim()] = part.slice(cut + 1).trim();
    }
    const action = f.action.value === 'downgrade' ? 'downgrade:' + f.model.value.trim() : f.action.value;
    const body = {
      name: f.name.value.trim(), scope, period: f.period.value,
      limit_usd: Number(f.limit_usd.value), warn_at: Number(f.warn_at.value) / 100, action,
    };
    try {
      await send('POST', '/api/v1/budgets', body);
      success('budget-admin');
      done.textContent = 'Budget ' + body.name + ' saved.';
      done.hidden = false;
      refresh();
    } catch (err) {
      failure('budget-admin', err);
    }
  });

  const host = (url) => {
    try { return new URL(url).host; } catch (e) { return String(url); }
  };

  function hookColumns(admin) {
    const cols = [
      { label: 'Webhook', value: (h) => h.name, text: (h) => h.name },
      { label: 'Destination host', value: (h) => host(h.url), text: (h) => host(h.url) },
      { label: 'Kinds', value: (h) => h.kinds.join(', '), text: (h) => h.kinds.join(', '), cls: 'wrap' },
      { label: 'Created (UTC)', value: (h) => h.created, text: (h) => utcSeconds(h.created) },
    ];
    if (admin) {
      cols.push({
        label: '', nosort: true, nocsv: true, value: () => null,
        node: (h) => deleteButton('webhook', h.name, 'hooks-card',
          () => send('DELETE', '/api/v1/alerts/' + encodeURIComponent(h.name))),
      });
    }
    return cols;
  }
  const hooksTable = new Table('hooks', [], { empty: 'No webhooks: alerts are recorded, and sent nowhere.' });

  const dash = (v) => (v == null || v === '' ? '–' : String(v));
  const historyTable = new Table('history', [
    { label: 'Time (UTC)', value: (r) => r.at, text: (r) => utcSeconds(r.at) },
    { label: 'Kind', value: (r) => r.kind, text: (r) => r.kind },
    { label: 'Alert', value: (r) => r.text, text: (r) => r.text, cls: 'wrap' },
    { label: 'Hook', value: (r) => (r.d ? r.d.hook : null), text: (r) => (r.d ? r.d.hook : 'no hook') },
    numCol('Attempt', (r) => (r.d ? r.d.attempt : null)),
    numCol('HTTP status', (r) => (r.d ? r.d.status : null), dash),
    {
      label: 'Outcome', value: (r) => (r.d ? r.d.outcome : null),
      node: (r) => (r.d ? el('span', r.d.outcome, 'state outcome-' + r.d.outcome) : el('span', '–')),
    },
    {
      label: 'Detail', value: (r) => detail(r), text: (r) => detail(r), cls: 'wrap',
    },
  ], { empty: 'No alerts yet.' });
  // Why an attempt failed, or when the next one is due.
  function detail(r) {
    if (!r.d) return '–';
    const parts = [];
    if (r.d.error) parts.push(r.d.error);
    if (r.d.next_attempt) parts.push('next attempt ' + utcSeconds(r.d.next_attempt) + ' UTC');
    return parts.length ? parts.join('; ') : '–';
  }

  async function alerts() {
    const [data, admin] = await Promise.all([api('/api/v1/alerts'), isAdmin()]);
    return () => {
      hooksTable.setColumns(hookColumns(admin));
      hooksTable.set(data.hooks);
      // One row per delivery attempt, the alert's own fields on each.
      const rows = [];
      for (const a of data.history) {
        if (a.deliveries.length === 0) rows.push({ ...a, d: null });
        for (const d of a.deliveries) rows.push({ ...a, d });
      }
      historyTable.set(rows);
      $('hook-admin').hidden = !admin;
    };
  }

  $('hook-form').addEventListener('submit', async (e) => {
    e.preventDefault();
    const form = $('hook-form');
    const f = form.elements;
    const kinds = [...form.querySelectorAll('input[name=kinds]:checked')].map((k) => k.value);
    const body = { name: f.name.value.trim(), url: f.url.value.trim() };
    if (kinds.length) body.kinds = kinds;
    $('hook-secret').hidden = true;
    try {
      const made = await send('POST', '/api/v1/alerts', body);
      success('hook-admin');
      // Shown this once: the server never lists it again.
      text('hook-secret-name', made.name);
      text('hook-secret-value', made.secret);
      $('hook-secret').hidden = false;
      form.reset();
      refresh();
    } catch (err) {
      failure('hook-admin', err);
    }
  });

  const PREFIX = { rule: 'rule', budget: 'budget' };
  const ruleKind = (r) => PREFIX[r.rule.split(':')[0]] || '–';
  const ruleName = (r) => (r.rule.includes(':') ? r.rule.slice(r.rule.indexOf(':') + 1) : r.rule);
  // A downgrade figure: "–" for a rule that downgraded nothing, "unknown" (never $0.00) when no
  // downgrade was priced both ways, "+ unknown" when some were not.
  const downgradeCost = (r, v, fmt) => {
    if (!r.downgrades) return '–';
    if (v == null) return 'unknown';
    return r.unpriced > 0 ? '≥ ' + fmt(v) + ' + unknown' : fmt(v);
  };
  const rulesTable = new Table('rules', [
    { label: 'Rule', value: ruleName, text: ruleName },
    { label: 'Kind', value: ruleKind, text: ruleKind },
    numCol('Requests', (r) => r.requests),
    numCol('Changed', (r) => r.changed),
    numCol('Refused', (r) => r.refused),
    numCol('Shadow', (r) => r.shadow),
    costCol('Cost', (r) => r.cost_usd, (r) => r.unpriced_requests),
    numCol('Downgrades', (r) => r.downgrades),
    {
      label: 'Cost at requested model', num: true, value: (r) => r.cost_at_requested_usd,
      text: (r) => downgradeCost(r, r.cost_at_requested_usd, usd),
      csv: (r) => (!r.downgrades ? '' : r.cost_at_requested_usd == null ? 'unknown' : r.cost_at_requested_usd),
    },
    {
      label: 'Estimated saving', num: true, value: (r) => r.saving_usd,
      text: (r) => {
        const t = downgradeCost(r, r.saving_usd, signedUsd);
        return r.downgrades && r.unpriced > 0 ? t + ' (' + int(r.unpriced) + ' unpriced)' : t;
      },
      csv: (r) => (!r.downgrades ? '' : r.saving_usd == null ? 'unknown' : r.saving_usd),
    },
  ], { empty: 'No rule or budget acted on a request in this range.' });

  async function rules(c) {
    const data = await api('/api/v1/rules?' + new URLSearchParams({
      from: new Date(c.from).toISOString(), to: new Date(c.to).toISOString(),
    }));
    return () => rulesTable.set(data.rules);
  }

  // ---- The page's controls ----------------------------------------------------------------

  function syncControls(c) {
    // Each view shows what applies to it: budgets and alerts are "now", rules read the range,
    // and the filters apply to the spend view only.
    const v = state.view;
    for (const b of document.querySelectorAll('#views [data-view]')) {
      b.classList.toggle('on', b.dataset.view === v);
      if (b.dataset.view === v) b.setAttribute('aria-current', 'page'); else b.removeAttribute('aria-current');
    }
    for (const name of VIEWS) $(name + '-view').hidden = name !== v;
    const ranged = v === 'spend' || v === 'rules';
    $('range').hidden = !ranged;
    $('showing').hidden = !ranged;
    $('filters').hidden = v !== 'spend';
    if (v !== 'spend') $('resolution').hidden = true;
    for (const b of document.querySelectorAll('#range [data-range]')) b.classList.toggle('on', b.dataset.range === state.preset);
    const local = (t) => new Date(t).toISOString().slice(0, 16);
    $('from').value = local(c.from);
    $('to').value = local(c.to);
    for (const el of $('filters').elements) if (el.name) el.value = state.filters[el.name] || '';
    $('stack-by').value = state.stack;
    $('breakdown-by').value = state.by;
    text('showing', 'Showing ' + utc(c.from) + ' → ' + utc(c.to) + ' UTC' +
      (state.preset ? ' (last ' + duration(RANGES[state.preset]) + ')' : ''));
    const chips = $('active-filters');
    chips.replaceChildren();
    for (const [k, v] of Object.entries(state.filters)) {
      const b = document.createElement('button');
      b.type = 'button';
      b.className = 'chip';
      b.dataset.filter = k;
      b.textContent = k + ': ' + (k === 'feature' ? label(v, 'feature') : v) + ' ×';
      b.title = 'Remove this filter';
      b.addEventListener('click', () => {
        const f = { ...state.filters };
        delete f[k];
        navigate({ filters: f });
      });
      chips.appendChild(b);
    }
    chips.hidden = v !== 'spend' || chips.children.length === 0;
  }

  // Run one view's read: draw it if it is still the page's current state, else drop it; a
  // failure clears what the view drew and says why in its card.
  async function view(c, sectionId, load, clear) {
    const section = $(sectionId);
    section.classList.add('loading');
    try {
      const draw = await load(c);
      if (!current(c)) return;
      draw();
      if (!c.failed.has(sectionId)) success(sectionId);
    } catch (e) {
      if (!current(c)) return;
      c.failed.add(sectionId);
      clear();
      failure(sectionId, e);
    } finally {
      if (current(c)) section.classList.remove('loading');
    }
  }

  async function refresh() {
    const my = ++gen;
    const now = Date.now();
    const [from, to] = state.preset ? [now - RANGES[state.preset], now] : [state.from, state.to];
    const c = {
      gen: my, now, from, to, filters: { ...state.filters }, stack: state.stack, by: state.by,
      hourly: new Set(), failed: new Set(),
    };
    ctx = c;
    document.body.dataset.state = 'loading';
    syncControls(c);
    if (state.view !== 'spend') {
      const load = {
        budgets: () => view(c, 'budgets-card', budgets, () => { budgetsTable.clear(); $('budget-admin').hidden = true; }),
        alerts: () => view(c, 'history-card', alerts, () => { hooksTable.clear(); historyTable.clear(); $('hook-admin').hidden = true; }),
        rules: () => view(c, 'rules-card', rules, () => rulesTable.clear()),
      }[state.view];
      await load();
      if (!current(c)) return;
      document.body.dataset.state = 'ready';
      document.body.dataset.loaded = String(my);
      return;
    }
    logCursor = null;
    $('more').hidden = true;
    await Promise.all([
      view(c, 'overview', rangeCards, () => clearCards(['spend', 'spend-unpriced', 'spend-delta', 'savings', 'savings-delta', 'requests', 'requests-delta', 'error-rate', 'error-rate-delta', 'p95', 'p95-delta'])),
      view(c, 'overview', hourCard, () => clearCards(['per-hour', 'per-hour-delta'])),
      view(c, 'overview', monthCard, () => clearCards(['mtd', 'forecast', 'mtd-delta'])),
      view(c, 'chart-card', spendChart, clearChart),
      view(c, 'breakdown-card', breakdown, () => breakdownTable.clear()),
      view(c, 'models-card', models, () => { modelsTable.clear(); unpricedTable.clear(); $('unpriced').hidden = true; }),
      view(c, 'errors-card', errors, () => errorsTable.clear()),
      view(c, 'log-card', log, () => { logTable.clear(); logCursor = null; text('log-count', ''); $('more').hidden = true; }),
    ]);
    if (!current(c)) return;
    const res = $('resolution');
    if (c.hourly.size > 0) {
      res.textContent = 'Read per whole hour: ' + [...c.hourly].join(', ') + ' (what was asked for is kept per hour, so ' +
        'the edges of the range were rounded out to whole hours: ' + utc(floorTo(c.from, HOUR)) + ' → ' + utc(ceilTo(c.to, HOUR)) + ' UTC).';
      res.hidden = false;
    } else {
      res.hidden = true;
    }
    document.body.dataset.state = 'ready';
    document.body.dataset.loaded = String(my);
  }

  for (const b of document.querySelectorAll('#views [data-view]')) {
    b.addEventListener('click', () => navigate({ view: b.dataset.view }));
  }
  for (const b of document.querySelectorAll('#range [data-range]')) {
    b.addEventListener('click', () => navigate({ preset: b.dataset.range, from: null, to: null }));
  }
  $('custom-range').addEventListener('submit', (e) => {
    e.preventDefault();
    // The pickers read UTC, like every time on the page.
    const from = Date.parse($('from').value + 'Z');
    const to = Date.parse($('to').value + 'Z');
    if (isNaN(from) || isNaN(to) || from >= to) {
      failure('overview', new Error('the range needs a start before its end'));
      return;
    }
    navigate({ preset: null, from, to });
  });
  $('filters').addEventListener('submit', (e) => {
    e.preventDefault();
    const filters = {};
    for (const el of $('filters').elements) if (el.name && el.value.trim()) filters[el.name] = el.value.trim();
    navigate({ filters });
  });
  $('clear-filters').addEventListener('click', () => navigate({ filters: {} }));
  $('stack-by').addEventListener('change', () => navigate({ stack: $('stack-by').value }));
  $('breakdown-by').addEventListener('change', () => navigate({ by: $('breakdown-by').value }));
  $('more').addEventListener('click', more);

  // Client-side CSV of the data a table holds, in its current order.
  const TABLES = {
    breakdown: breakdownTable, models: modelsTable, unpriced: unpricedTable, errors: errorsTable,
    budgets: budgetsTable, hooks: hooksTable, history: historyTable, rules: rulesTable,
  };
  for (const b of document.querySelectorAll('button.csv')) {
    b.addEventListener('click', () => {
      const name = b.dataset.table;
      const blob = new Blob([TABLES[name].csv()], { type: 'text/csv;charset=utf-8' });
      const a = document.createElement('a');
      a.href = URL.createObjectURL(blob);
      a.download = 'tally-' + name + (name === 'breakdown' && ctx ? '-by-' + ctx.by : '') + '.csv';
      document.body.appendChild(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(a.href), 10000);
    });
  }

  session.then((s) => {
    text('org', s.org + ' · ' + s.email);
    if (s.role) {
      text('role', s.role);
      $('role').hidden = false;
    }
    document.querySelector('#logout [name=csrf]').value = s.csrf;
  }).catch(() => { /* a 401 has gone to the login page already */ });
  refresh();
})();
