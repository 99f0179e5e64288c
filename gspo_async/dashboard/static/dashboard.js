// gspo-async live dashboard: polls /api/metrics?since=<byte offset> and redraws every panel from the records.
// Each panel element carries data-panel="<name>" and data-has-data="true" once it has drawn data.
'use strict';

(function () {
  const C = window.Charts;
  const POLL_MS = 2000;
  const MAX_RECORDS = 6000;   // older records are thinned 2:1 beyond this; cumulative counters stay exact
  const KEEP_RECENT = 1000;   // never thinned
  const LIVE_S = 30;          // a record younger than this means the run is live
  const MAX_BARS = 60;        // staleness bars are merged down to this many intervals
  const PALETTE = ['#4e9eff', '#f5a524', '#3ecf8e', '#ef5b5b', '#b07cff', '#22c3c3', '#ff7ab6', '#c0ca33',
    '#8d99ae', '#ffb86b'];
  const LAG_COLORS = ['#2bb673', '#8fcb3f', '#e6d23f', '#f5a524', '#ef7a3a', '#e2504a', '#c03a6b', '#8e3bb0'];
  const DROP_REASONS = [['staleness/dropped', 'too stale'], ['drops/invalid', 'invalid'], ['drops/duplicate', 'duplicate'],
    ['drops/late', 'late (lease expired)'], ['drops/zero_variance', 'zero variance'], ['drops/filtered', 'filtered']];

  const state = { records: [], offset: 0, now: null, t0: null, xMode: 'step', weight: 'groups', error: null, actors: new Set() };

  // ---------- data access ----------
  const num = v => typeof v === 'number' && isFinite(v);
  const last = () => state.records[state.records.length - 1];
  const xOf = r => (state.xMode === 'time' ? (r.time - state.t0) / 60 : r.step);
  const xTitle = () => (state.xMode === 'time' ? 'elapsed time (min)' : 'optimiser step');
  const xLabel = x => (state.xMode === 'time' ? `${x.toFixed(2)} min` : `step ${x}`);
  const pct = (t, step) => `${C.fmtTick(t * 100, step * 100)}%`;
  const pctValue = v => `${(v * 100).toFixed(1)}%`;

  function points(key) {
    const out = [];
    for (const r of state.records) { const v = r[key]; if (num(v)) out.push([xOf(r), v]); }
    return out;
  }

  function latest(key) {
    for (let i = state.records.length - 1; i >= 0; i--) { const v = state.records[i][key]; if (v !== undefined && v !== null) return v; }
    return null;
  }

  function s(key, label, color, extra) {
    return Object.assign({ key, label, color, points: points(key) }, extra || {});
  }

  // Per-interval counts from a cumulative histogram-list: [{x0, x1, values}]; a counter reset restarts from 0.
  function intervals(key) {
    const out = [];
    let prev = null, prevX = null;
    for (const r of state.records) {
      const v = r[key];
      if (!Array.isArray(v)) continue;
      const cur = v.map(c => (num(c) ? c : 0));
      const x = xOf(r);
      let d = prev === null ? cur : cur.map((c, i) => c - (prev[i] || 0));
      if (d.some(z => z < 0)) d = cur;
      if (d.some(z => z > 0)) out.push({ x0: prev === null ? (state.xMode === 'time' ? x : 0) : prevX, x1: x, values: d });
      prev = cur; prevX = x;
    }
    return out;
  }

  function mergeIntervals(list, maxBars) {
    if (list.length === 0) return list;
    const chunk = Math.ceil(list.length / maxBars);
    const out = [];
    for (let i = 0; i < list.length; i += chunk) {
      const part = list.slice(i, i + chunk);
      const width = Math.max(...part[0].values.length ? part.map(p => p.values.length) : [0]);
      const values = new Array(width).fill(0);
      for (const p of part) p.values.forEach((v, j) => { values[j] += v; });
      out.push({ x0: part[0].x0, x1: part[part.length - 1].x1, values });
    }
    const widths = out.map(b => b.x1 - b.x0).filter(w => w > 0).sort((a, b) => a - b);
    const typical = widths.length ? widths[widths.length >> 1] : 1;
    for (const b of out) if (b.x1 - b.x0 <= 0) b.x0 = b.x1 - typical;  // the first interval has no start
    return out;
  }

  function lagLayers(n) {
    const layers = [];
    for (let i = 0; i < Math.min(n, LAG_COLORS.length); i++) {
      const lastLayer = i === LAG_COLORS.length - 1 && n > LAG_COLORS.length;
      layers.push({ label: lastLayer ? `lag ${i}+` : `lag ${i}`, color: LAG_COLORS[i] });
    }
    return layers;
  }

  function foldLags(values) {  // lags beyond the palette go into the last layer
    if (values.length <= LAG_COLORS.length) return values;
    const head = values.slice(0, LAG_COLORS.length - 1);
    head.push(values.slice(LAG_COLORS.length - 1).reduce((a, v) => a + v, 0));
    return head;
  }

  function lengthBinLabel(i) {
    const k = v => (v >= 1024 ? `${v / 1024}k` : String(v));
    return i === 0 ? '0–1' : `${k(2 ** i)}–${k(2 ** (i + 1))}`;  // bin i holds [2^i, 2^(i+1)) tokens
  }

  function actorIds() { return Array.from(state.actors).sort(); }

  function syncEvents() {
    const out = [];
    let prevSyncs = null, prevVersion = null;
    for (const r of state.records) {
      const n = r['weights/syncs'], v = r['train/version'];
      const changed = num(n) ? (prevSyncs === null ? n > 0 : n !== prevSyncs)
        : (num(v) && prevVersion !== null && v !== prevVersion);
      if (changed && num(r['weights/sync_s'])) {
        out.push({ x: xOf(r), sync: r['weights/sync_s'], transfer: r['weights/transfer_s'], bytes: r['weights/bytes'], version: v });
      }
      if (num(n)) prevSyncs = n;
      if (num(v)) prevVersion = v;
    }
    return out;
  }

  // ---------- panels ----------
  // Each panel: id (data-panel), title, sub (text or function), draw(chartEl, legendEl, subEl) -> points drawn.
  function lineSpec(series, extra) {
    return Object.assign({ series, xTitle: xTitle(), xLabel }, extra || {});
  }

  function drawLines(chartEl, legendEl, series, extra) {
    C.legend(legendEl, series.map(x => ({ label: x.label, color: x.color, kind: x.kind, dash: x.dash })));
    return C.line(chartEl, lineSpec(series, extra));
  }

  const PANELS = [
    {
      id: 'reward', title: 'Reward', sub: 'mean raw reward of the trained batch, band = ± 1 std',
      draw(c, l) {
        const mean = s('reward/mean', 'reward mean', PALETTE[0]);
        const std = new Map(points('reward/std').map(p => [p[0], p[1]]));
        mean.band = mean.points.filter(p => std.has(p[0])).map(p => [p[0], p[1] - std.get(p[0]), p[1] + std.get(p[0])]);
        return drawLines(c, l, [mean], { yTitle: 'reward', y: { zero: false } });
      },
    },
    {
      id: 'accuracy', title: 'Held-out accuracy', sub: 'latest evaluation on the held-out split',
      draw(c, l) {
        return drawLines(c, l, [s('eval/accuracy', 'eval accuracy', PALETTE[2], { markers: true })],
          { yTitle: 'accuracy', y: { min: 0, max: 1, maxIsFloor: true }, yFormat: pct, valueFormat: pctValue });
      },
    },
    {
      id: 'throughput', title: 'Throughput', sub: 'generated (whole fleet) and trained response tokens',
      draw(c, l) {
        return drawLines(c, l, [
          s('throughput/gen_tokens_per_s', 'generated tok/s', PALETTE[0]),
          s('throughput/train_tokens_per_s', 'trained tok/s', PALETTE[2]),
          s('throughput/samples_per_s', 'samples/s (right)', PALETTE[1], { axis: 'right', dash: true }),
        ], { yTitle: 'tokens / s', yTitleRight: 'samples / s' });
      },
    },
    {
      id: 'staleness-hist', title: 'Staleness of trained data',
      draw(c, l, sub) {
        const key = state.weight === 'tokens' ? 'staleness/hist_tokens' : 'staleness/hist';
        const bars = mergeIntervals(intervals(key), MAX_BARS).map(b => Object.assign(b, { values: foldLags(b.values) }));
        const n = Math.max(0, ...bars.map(b => b.values.length));
        const layers = lagLayers(n);
        C.legend(l, layers.map(x => ({ label: x.label, color: x.color, kind: 'box' })));
        const total = latest(key);
        if (Array.isArray(total)) {
          const sum = total.reduce((a, v) => a + (v || 0), 0);
          sub.textContent = `share of ${state.weight} per lag and interval · whole run: ` +
            total.map((v, i) => `${i}: ${sum ? (100 * (v || 0) / sum).toFixed(0) : 0}%`).slice(0, 6).join(' · ');
        }
        return C.stackedBars(c, { bars, layers, percent: true, yTitle: `share of ${state.weight}`, xTitle: xTitle(),
          xLabel: b => (state.xMode === 'time' ? `${b.x0.toFixed(2)}–${b.x1.toFixed(2)} min` : `steps ${b.x0}–${b.x1}`) });
      },
    },
    {
      id: 'staleness', title: 'Staleness: trained, in flight, queued', sub: 'versions behind the learner',
      draw(c, l) {
        return drawLines(c, l, [
          s('staleness/mean', 'trained mean', PALETTE[0]),
          s('staleness/max', 'trained max', PALETTE[0], { dash: true }),
          s('staleness/in_flight_mean', 'in flight mean', PALETTE[1]),
          s('staleness/queued_mean', 'queued mean', PALETTE[4]),
        ], { yTitle: 'versions' });
      },
    },
    {
      id: 'queue-age', title: 'Age of queued groups and leases', sub: 'time waited in the buffer / since the lease was granted',
      draw(c, l) {
        return drawLines(c, l, [
          s('buffer/age_mean_s', 'queued mean', PALETTE[4]),
          s('buffer/age_max_s', 'queued max', PALETTE[4], { dash: true }),
          s('leases/age_mean_s', 'in flight mean', PALETTE[1]),
          s('leases/age_max_s', 'in flight max', PALETTE[1], { dash: true }),
        ], { yTitle: 'seconds', valueFormat: C.fmtSeconds });
      },
    },
    { id: 'actors', title: 'Actors', wide: true, sub: 'weight version, lag and generation rate per actor', draw: drawActorTable },
    {
      id: 'actor-throughput', title: 'Tokens/s per actor', sub: 'response tokens generated per second',
      draw(c, l) {
        return drawLines(c, l, actorIds().map((id, i) => s(`actor/${id}/tokens_per_s`, id, PALETTE[i % PALETTE.length])),
          { yTitle: 'tokens / s' });
      },
    },
    {
      id: 'weight-sync', title: 'Weight sync timeline', wide: true,
      draw(c, l, sub) {
        const ev = syncEvents();
        const lastEv = ev[ev.length - 1];
        const fails = latest('weights/failures');
        sub.textContent = lastEv
          ? `one bar per broadcast · last: ${C.fmtSeconds(lastEv.sync)}, ${C.fmtBytes(lastEv.bytes)} at version ${lastEv.version} · ` +
            `${latest('weights/syncs') ?? ev.length} syncs · ${fails || 0} failures`
          : 'one bar per broadcast';
        return drawLines(c, l, [
          { label: 'sync total', color: '#3b6fb6', kind: 'bars', points: ev.map(e => [e.x, e.sync]) },
          { label: 'transfer', color: PALETTE[5], kind: 'bars', points: ev.filter(e => num(e.transfer)).map(e => [e.x, e.transfer]) },
          s('weights/version_skew_max', 'worst actor skew (right)', PALETTE[1], { axis: 'right' }),
        ], { yTitle: 'seconds', yTitleRight: 'versions', valueFormat: C.fmtSeconds });
      },
    },
    {
      id: 'learner', title: 'Learner utilisation', sub: 'share of wall time training; wait for data before each step',
      draw(c, l) {
        return drawLines(c, l, [
          s('learner/busy_frac', 'busy', PALETTE[2], { kind: 'area' }),
          s('learner/wait_s', 'wait for data (right)', PALETTE[3], { axis: 'right', dash: true }),
        ], { yTitle: 'busy', y: { min: 0, max: 1 }, yFormat: pct, valueFormat: pctValue, yTitleRight: 'seconds',
          valueFormatRight: C.fmtSeconds });
      },
    },
    {
      id: 'queues', title: 'Buffer, leases and fleet', sub: 'groups waiting, prompt leases outstanding, live actors',
      draw(c, l) {
        return drawLines(c, l, [
          s('buffer/groups', 'buffered groups', PALETTE[4]),
          s('leases/in_flight', 'leases in flight', PALETTE[1]),
          s('actors/alive', 'actors alive', PALETTE[2], { dash: true }),
        ], { yTitle: 'count' });
      },
    },
    {
      id: 'drops', title: 'Drops by reason', sub: 'cumulative groups dropped or rejected',
      draw(c, l, sub) {
        const series = DROP_REASONS.map(([k, label], i) => s(k, label, [PALETTE[3], PALETTE[8], PALETTE[5], PALETTE[1], PALETTE[4], PALETTE[6]][i]))
          .filter(x => x.points.length);
        const parts = series.map(x => `${x.label} ${C.fmt(x.points[x.points.length - 1][1])}`);
        sub.textContent = parts.length ? `cumulative groups · ${parts.join(' · ')}` : 'cumulative groups dropped or rejected';
        return drawLines(c, l, series, { yTitle: 'groups' });
      },
    },
    {
      id: 'drop-lengths', title: 'Length of dropped vs kept groups', sub: 'share of groups per mean response length',
      draw(c, l, sub) {
        const dropped = latest('drops/length_hist_dropped') || [], kept = latest('drops/length_hist_kept') || [];
        const n = Math.max(dropped.length, kept.length);
        const sd = dropped.reduce((a, v) => a + (v || 0), 0), sk = kept.reduce((a, v) => a + (v || 0), 0);
        let lo = n, hi = -1;
        for (let i = 0; i < n; i++) if ((dropped[i] || 0) > 0 || (kept[i] || 0) > 0) { lo = Math.min(lo, i); hi = i; }
        const cats = [], dv = [], kv = [];
        for (let i = lo; i <= hi; i++) {
          cats.push(lengthBinLabel(i));
          dv.push(sd ? 100 * (dropped[i] || 0) / sd : 0);
          kv.push(sk ? 100 * (kept[i] || 0) / sk : 0);
        }
        sub.textContent = `share of groups per mean response length · ${C.fmt(sd)} dropped, ${C.fmt(sk)} kept`;
        const groups = [{ label: 'dropped', color: PALETTE[3], values: dv }, { label: 'kept', color: PALETTE[0], values: kv }];
        C.legend(l, groups.map(g => ({ label: g.label, color: g.color, kind: 'box' })));
        return C.groupedBars(c, { categories: cats, groups, percent: true, yTitle: 'share of groups', xTitle: 'mean response length (tokens, bin = [low, high))' });
      },
    },
    {
      id: 'loss', title: 'Loss', sub: 'total, policy-gradient and KL parts',
      draw(c, l) {
        return drawLines(c, l, [s('train/loss', 'loss', PALETTE[0]), s('train/pg_loss', 'pg loss', PALETTE[1]),
          s('train/kl_loss', 'kl loss', PALETTE[4])], { yTitle: 'loss', y: { zero: false } });
      },
    },
    {
      id: 'clip', title: 'Clip fraction', sub: 'share of tokens / sequences whose ratio was clipped',
      draw(c, l) {
        return drawLines(c, l, [s('train/clipfrac', 'tokens', PALETTE[0]), s('train/clipfrac_seq', 'sequences', PALETTE[1]),
          s('train/rejected_frac', 'rejected sequences', PALETTE[3], { dash: true })],
        { yTitle: 'fraction', yFormat: pct, valueFormat: pctValue });
      },
    },
    {
      id: 'ratio', title: 'GSPO sequence ratio', sub: 's_i = exp(mean token log-ratio) over the trained batch',
      draw(c, l) {
        return drawLines(c, l, [s('train/ratio_mean', 'mean', PALETTE[0]), s('train/ratio_max', 'max', PALETTE[1], { dash: true }),
          s('train/ratio_min', 'min', PALETTE[5], { dash: true })], { yTitle: 'ratio', y: { zero: false }, precision: 6 });
      },
    },
    {
      id: 'is-weight', title: 'Staleness-correction weights', sub: 'w_i per sequence and its effective sample size',
      draw(c, l) {
        return drawLines(c, l, [s('train/is_weight_mean', 'mean', PALETTE[2]), s('train/is_weight_max', 'max', PALETTE[1], { dash: true }),
          s('train/is_weight_min', 'min', PALETTE[5], { dash: true }),
          s('train/is_weight_ess', 'ESS (right)', PALETTE[4], { axis: 'right' })],
        { yTitle: 'weight', y: { zero: false }, precision: 5, yTitleRight: 'ESS', yRight: { min: 0, max: 1, maxIsFloor: true },
          yFormatRight: pct, valueFormatRight: pctValue });
      },
    },
    {
      id: 'policy', title: 'Entropy and KL', sub: 'token entropy, KL to reference, behaviour/learner mismatch',
      draw(c, l) {
        return drawLines(c, l, [s('train/entropy', 'entropy', PALETTE[0]), s('train/kl', 'KL to reference', PALETTE[4]),
          s('train/mismatch_kl', 'mismatch KL', PALETTE[3]),
          s('train/grad_norm', 'grad norm (right)', PALETTE[8], { axis: 'right', dash: true })],
        { yTitle: 'nats', yTitleRight: 'grad norm' });
      },
    },
    {
      id: 'response-length', title: 'Response length', sub: 'tokens per response of the trained batch',
      draw(c, l) {
        return drawLines(c, l, [s('response/length_mean', 'mean', PALETTE[0]), s('response/length_max', 'max', PALETTE[0], { dash: true }),
          s('response/truncated_frac', 'truncated (right)', PALETTE[3], { axis: 'right' })],
        { yTitle: 'tokens', yTitleRight: 'truncated', yFormatRight: pct, valueFormatRight: pctValue,
          yRight: { min: 0, max: 1, maxIsFloor: true } });
      },
    },
  ];

  function drawActorTable(c, l) {
    l.textContent = '';
    const ids = actorIds();
    if (ids.length === 0) return C.empty(c, 'no actor has reported yet');
    while (c.firstChild) c.removeChild(c.firstChild);
    c.style.height = 'auto';
    const table = document.createElement('table');
    table.className = 'actors';
    const cols = [['actor'], ['state', 'state'], ['version'], ['lag'], ['tokens/s'], ['trend'], ['tokens'], ['groups'], ['busy'],
      ['leases'], ['unacked'], ['KV cache'], ['heartbeat']];
    const head = table.createTHead().insertRow();
    for (const [name, cls] of cols) { const th = document.createElement('th'); th.textContent = name; if (cls) th.className = cls; head.appendChild(th); }
    const body = table.createTBody();
    const now = last();
    ids.forEach((id, i) => {
      const k = suffix => `actor/${id}/${suffix}`;
      const present = now && Object.keys(now).some(key => key.startsWith(`actor/${id}/`));
      // A departed actor keeps its last reported values, dimmed; its rate is no longer current.
      const v = suffix => { const x = present ? now[k(suffix)] : latest(k(suffix)); return num(x) ? x : null; };
      const alive = present && v('alive') !== 0;
      const row = body.insertRow();
      if (!alive) row.className = 'gone';
      const cell = (text, cls) => { const td = row.insertCell(); td.textContent = text; if (cls) td.className = cls; return td; };
      cell(id);
      const st = row.insertCell(); st.className = 'state';
      const pill = document.createElement('span'); pill.className = 'pill ' + (alive ? 'alive' : 'gone');
      pill.textContent = alive ? 'alive' : 'gone'; st.appendChild(pill);
      cell(v('version') === null ? '–' : String(v('version')));
      const lag = v('version_lag');
      cell(lag === null ? '–' : String(lag), lag === null ? '' : `lag-${Math.min(3, Math.max(0, Math.round(lag)))}`);
      cell(alive ? C.fmt(v('tokens_per_s')) : '–');
      const trend = row.insertCell();
      trend.appendChild(C.sparkline(points(k('tokens_per_s')).slice(-80).map(p => p[1]), PALETTE[i % PALETTE.length]));
      cell(C.fmt(v('tokens'))); cell(C.fmt(v('groups')));
      cell(v('busy_frac') === null ? '–' : pctValue(v('busy_frac')));
      cell(C.fmt(v('leases'))); cell(C.fmt(v('pending_groups')));
      cell(v('kv_usage') === null ? '–' : pctValue(v('kv_usage')));
      cell(alive ? C.fmtSeconds(v('heartbeat_age_s')) : 'left');
    });
    c.appendChild(table);
    return ids.length;
  }

  // ---------- KPIs and status ----------
  const KPIS = [
    ['step', 'Step', () => latest('train/step') ?? (last() ? last().step : null), v => C.fmt(v)],
    ['version', 'Version', () => latest('train/version'), v => C.fmt(v)],
    ['reward', 'Reward', () => latest('reward/mean'), v => C.fmt(v, 3)],
    ['accuracy', 'Eval accuracy', () => latest('eval/accuracy'), v => pctValue(v)],
    ['staleness', 'Staleness', () => latest('staleness/mean'), v => C.fmt(v, 3), 'versions'],
    ['gen', 'Generated', () => latest('throughput/gen_tokens_per_s'), v => C.fmt(v, 3), 'tok/s'],
    ['train', 'Trained', () => latest('throughput/train_tokens_per_s'), v => C.fmt(v, 3), 'tok/s'],
    ['busy', 'Learner busy', () => latest('learner/busy_frac'), v => pctValue(v)],
    ['actors', 'Actors alive', () => latest('actors/alive'), v => C.fmt(v)],
    ['elapsed', 'Elapsed', () => (last() ? last().time - state.t0 : null), v => C.fmtSeconds(v)],
  ];

  function buildKpis() {
    const box = document.getElementById('kpis');
    for (const [id, label] of KPIS) {
      const d = document.createElement('div');
      d.className = 'kpi';
      d.dataset.kpi = id;
      d.innerHTML = '<div class="label"></div><div class="value">–</div>';
      d.querySelector('.label').textContent = label;
      box.appendChild(d);
    }
  }

  function renderKpis() {
    for (const [id, , get, format, unit] of KPIS) {
      const v = get();
      const el = document.querySelector(`.kpi[data-kpi="${id}"] .value`);
      el.textContent = v === null || v === undefined ? '–' : format(v);
      if (unit && v !== null && v !== undefined) {
        const u = document.createElement('span'); u.className = 'unit'; u.textContent = unit; el.appendChild(u);
      }
    }
  }

  function renderStatus() {
    const box = document.getElementById('status'), text = document.getElementById('status-text');
    box.className = 'status';
    if (state.error) { box.classList.add('error'); text.textContent = state.error; return; }
    const r = last();
    if (!r) { text.textContent = 'waiting for the first record'; return; }
    const age = Math.max(0, (state.now || Date.now() / 1000) - r.time);
    if (age < LIVE_S) { box.classList.add('live'); text.textContent = `live · updated ${Math.round(age)} s ago`; }
    else { box.classList.add('idle'); text.textContent = `not running · last record ${C.fmtSeconds(age)} ago`; }
  }

  // ---------- layout and rendering ----------
  function buildPanels() {
    const grid = document.getElementById('panels');
    for (const p of PANELS) {
      const sec = document.createElement('section');
      sec.className = 'panel' + (p.wide ? ' wide' : '');
      sec.dataset.panel = p.id;
      sec.dataset.hasData = 'false';
      sec.innerHTML = '<h2></h2><div class="sub"></div><div class="legend"></div><div class="chart"></div>';
      sec.querySelector('h2').textContent = p.title;
      sec.querySelector('.sub').textContent = p.sub || '';
      grid.appendChild(sec);
      p.el = sec;
    }
  }

  function render() {
    for (const p of PANELS) {
      const chart = p.el.querySelector('.chart'), legendEl = p.el.querySelector('.legend'), sub = p.el.querySelector('.sub');
      let n = 0;
      try {
        n = p.draw(chart, legendEl, sub) || 0;
      } catch (err) {
        console.error(`panel ${p.id}: ${err && err.stack ? err.stack : err}`);
        C.empty(chart, `cannot draw: ${err}`);
      }
      p.el.dataset.hasData = n > 0 ? 'true' : 'false';
    }
    renderKpis();
    renderStatus();
    document.body.dataset.records = String(state.records.length);
    document.body.dataset.offset = String(state.offset);
  }

  let pending = false;
  function scheduleRender() {
    if (pending) return;
    pending = true;
    setTimeout(() => { pending = false; render(); }, 0);  // not requestAnimationFrame: headless browsers may never paint
  }

  // ---------- polling ----------
  function ingest(records) {
    for (const r of records) {
      if (!num(r.time)) continue;
      if (state.t0 === null) state.t0 = r.time;
      for (const key in r) {
        if (key.startsWith('actor/')) { const parts = key.split('/'); if (parts.length === 3) state.actors.add(parts[1]); }
      }
      state.records.push(r);
    }
    if (state.records.length > MAX_RECORDS) {
      const cut = state.records.length - KEEP_RECENT;
      state.records = state.records.filter((r, i) => i >= cut || i % 2 === 0);
    }
  }

  async function poll() {
    let more = false;
    try {
      const res = await fetch(`/api/metrics?since=${state.offset}`, { cache: 'no-store' });
      if (!res.ok) throw new Error(`HTTP ${res.status}`);
      const data = await res.json();
      if (data.reset) { state.records = []; state.actors = new Set(); state.t0 = null; }
      ingest(data.records);
      state.offset = data.offset;
      state.now = data.now;
      state.error = null;
      more = data.more;
    } catch (err) {
      state.error = `cannot reach the dashboard server (${err.message || err})`;
    }
    scheduleRender();
    setTimeout(poll, more ? 0 : POLL_MS);
  }

  async function start() {
    buildKpis();
    buildPanels();
    // ?x=time&weight=tokens picks the view, so a link or bookmark reopens the same one.
    const params = new URLSearchParams(window.location.search);
    const xSel = document.getElementById('x-mode'), wSel = document.getElementById('staleness-weight');
    if (['step', 'time'].includes(params.get('x'))) xSel.value = state.xMode = params.get('x');
    if (['groups', 'tokens'].includes(params.get('weight'))) wSel.value = state.weight = params.get('weight');
    xSel.addEventListener('change', e => { state.xMode = e.target.value; scheduleRender(); });
    wSel.addEventListener('change', e => { state.weight = e.target.value; scheduleRender(); });
    window.addEventListener('resize', scheduleRender);
    try {
      const info = await (await fetch('/api/info', { cache: 'no-store' })).json();
      document.getElementById('run-name').textContent = info.run;
      document.getElementById('metrics-file').textContent = info.file;
      document.title = `${info.run} · gspo-async`;
    } catch (err) {
      state.error = 'cannot reach the dashboard server';
    }
    poll();
  }

  start();
})();
