// Tally's dashboard: reads the collector's API with the session cookie and draws it.
// No framework; Chart.js draws the spend chart. Every figure comes from /api/v1/*.
'use strict';

(function () {
  if (document.body.classList.contains('login')) {
    if (new URLSearchParams(location.search).has('error')) {
      document.getElementById('error').hidden = false;
    }
    return;
  }

  const $ = (id) => document.getElementById(id);
  const HOUR = 3600e3;
  const RANGES = { '1h': HOUR, '24h': 24 * HOUR, '7d': 168 * HOUR, '30d': 720 * HOUR, '90d': 2160 * HOUR };
  let range = { preset: '24h' };
  let chart = null;

  // Dollars: whole above $100, cents above $1, three significant digits (at least cents) below.
  const usd = (v) => {
    if (v >= 100) return '$' + v.toFixed(0);
    if (v >= 1 || v === 0) return '$' + v.toFixed(2);
    let s = v.toPrecision(3).replace(/0+$/, '');
    if (s.split('.')[1].length < 2) s = v.toFixed(2);
    return '$' + s;
  };
  const int = (v) => Math.round(v).toLocaleString('en-US');
  const ms = (v) => (v == null ? '–' : v >= 1000 ? (v / 1000).toFixed(2) + ' s' : v.toFixed(v >= 100 ? 0 : 1) + ' ms');
  const pct = (a, b) => (b > 0 ? ((100 * a) / b).toFixed(1) + '%' : '–');
  const label = (k) => (k == null ? '(none)' : k);
  const SOURCE = { exact: 'Exact', measured: 'Measured', measured_calibrated: 'Measured (calibrated)' };

  function span() {
    if (range.preset) {
      const to = Date.now();
      return { from: new Date(to - RANGES[range.preset]), to: new Date(to) };
    }
    return { from: range.from, to: range.to };
  }

  function query(extra) {
    const s = span();
    const p = new URLSearchParams({ from: s.from.toISOString(), to: s.to.toISOString() });
    for (const [k, v] of Object.entries(extra || {})) if (v !== '' && v != null) p.set(k, v);
    return p.toString();
  }

  async function api(path) {
    const r = await fetch(path, { credentials: 'same-origin' });
    if (r.status === 401) { location.href = '/login'; throw new Error('signed out'); }
    if (!r.ok) throw new Error(path + ': ' + r.status);
    return r.json();
  }

  function rows(tbody, list) {
    const body = $(tbody).querySelector('tbody');
    body.replaceChildren();
    for (const cells of list) {
      const tr = document.createElement('tr');
      for (const c of cells) {
        const td = document.createElement('td');
        td.textContent = c;
        tr.appendChild(td);
      }
      body.appendChild(tr);
    }
  }

  async function overview() {
    const s = span();
    const total = (await api('/api/v1/summary?' + query())).rows[0];
    const hours = Math.max((s.to - s.from) / HOUR, 1 / 60);
    $('spend').textContent = total ? usd(total.cost_usd) : usd(0);
    $('requests').textContent = total ? int(total.requests) : '0';
    $('error-rate').textContent = total ? pct(total.errors, total.requests) : '–';
    $('p95').textContent = total ? ms(total.latency_p95_ms) : '–';
    $('per-hour').textContent = usd(total ? total.cost_usd / hours : 0);
  }

  async function spendChart() {
    const s = span();
    const width = s.to - s.from;
    const bucket = width <= 3 * HOUR ? 'minute' : width <= 7 * 24 * HOUR ? 'hour' : 'day';
    const by = $('stack-by').value;
    const data = await api('/api/v1/timeseries?' + query({ bucket, group_by: by }));
    const buckets = [...new Set(data.points.map((p) => p.bucket))].sort();
    const keys = [...new Set(data.points.map((p) => label(p.key)))];
    const palette = ['#2f6fed', '#e0823d', '#3aa35b', '#b94fc4', '#d64545', '#2fb5b5', '#8a6d3b', '#6b7385'];
    const datasets = keys.map((k, i) => ({
      label: k,
      backgroundColor: palette[i % palette.length],
      data: buckets.map((b) => {
        const p = data.points.find((q) => q.bucket === b && label(q.key) === k);
        return p ? p.cost_usd : 0;
      }),
    }));
    const labels = buckets.map((b) => {
      const d = new Date(b);
      return bucket === 'day' ? d.toISOString().slice(0, 10) : d.toISOString().slice(5, 16).replace('T', ' ');
    });
    if (chart) chart.destroy();
    chart = new Chart($('spend-chart'), {
      type: 'bar',
      data: { labels, datasets },
      options: {
        animation: false,
        maintainAspectRatio: false,
        scales: { x: { stacked: true }, y: { stacked: true, ticks: { callback: (v) => usd(v) } } },
        plugins: { tooltip: { callbacks: { label: (c) => c.dataset.label + ': ' + usd(c.parsed.y) } } },
      },
    });
  }

  async function breakdown() {
    const by = $('breakdown-by').value;
    const data = await api('/api/v1/summary?' + query({ group_by: by }));
    const spend = data.rows.reduce((a, r) => a + r.cost_usd, 0);
    rows('breakdown', data.rows.map((r) => [
      label(r.key), usd(r.cost_usd), pct(r.cost_usd, spend), int(r.requests), int(r.input_tokens),
      int(r.output_tokens), ms(r.latency_p50_ms), ms(r.latency_p95_ms), pct(r.errors, r.requests),
    ]));
  }

  async function models() {
    const data = await api('/api/v1/summary?' + query({ group_by: 'provider_model' }));
    rows('models', data.rows.map((r) => {
      const k = r.key || '/';
      const cut = k.indexOf('/');
      return [k.slice(cut + 1) || '(unknown)', k.slice(0, cut), int(r.requests), usd(r.cost_usd),
        ms(r.latency_avg_ms), ms(r.latency_p95_ms), ms(r.ttfb_p50_ms)];
    }));
  }

  async function errors() {
    const data = await api('/api/v1/summary?' + query({ group_by: 'error' }));
    rows('errors', data.rows
      .sort((a, b) => b.requests - a.requests)
      .map((r) => {
        const [category, source] = (r.key || '/').split('/');
        return [category, source || '–', int(r.requests)];
      }));
  }

  function logFilters() {
    const f = {};
    for (const el of $('log-filters').elements) if (el.name && el.value.trim()) f[el.name] = el.value.trim();
    return f;
  }

  async function log() {
    const q = query(logFilters());
    $('csv').href = '/api/v1/events.csv?' + q;
    const data = await api('/api/v1/events?' + q + '&limit=200');
    rows('log', data.events.map((e) => [
      e.timestamp.replace('T', ' ').slice(0, 19), e.provider, e.model_actual || e.model_requested || '–',
      e.feature || 'untagged', e.team || '–', e.namespace || '–', e.workload || '–', e.status == null ? '–' : String(e.status),
      e.input_tokens == null ? '–' : int(e.input_tokens), e.output_tokens == null ? '–' : int(e.output_tokens),
      SOURCE[e.token_source] || '–', e.cost_usd == null ? '–' : usd(e.cost_usd), ms(e.latency_ms),
    ]));
  }

  async function refresh() {
    await Promise.all([overview(), spendChart(), breakdown(), models(), errors(), log()]);
    document.body.dataset.loaded = String(Date.now());
  }

  for (const b of document.querySelectorAll('#range [data-range]')) {
    b.addEventListener('click', () => {
      range = { preset: b.dataset.range };
      for (const o of document.querySelectorAll('#range [data-range]')) o.classList.toggle('on', o === b);
      refresh();
    });
  }
  $('apply').addEventListener('click', () => {
    const from = new Date($('from').value);
    const to = new Date($('to').value);
    if (isNaN(from) || isNaN(to) || from >= to) return;
    range = { from, to };
    for (const o of document.querySelectorAll('#range [data-range]')) o.classList.remove('on');
    refresh();
  });
  $('stack-by').addEventListener('change', spendChart);
  $('breakdown-by').addEventListener('change', breakdown);
  $('log-filters').addEventListener('submit', (e) => { e.preventDefault(); log(); });

  api('/api/v1/session').then((s) => {
    $('org').textContent = s.org + ' · ' + s.email;
    document.querySelector('#logout [name=csrf]').value = s.csrf;
  });
  refresh();
})();
