// gspo-async live dashboard: polls /api/metrics?since=<byte offset> and /api/summary, and redraws every panel
// when new records arrive (or a control changes). Each panel element carries data-panel="<name>" and
// data-has-data="true" once it has drawn data; the drops panel carries data-drops (its counts, as JSON).
// Metric names, units and windows: gspo_async/telemetry/names.py.
'use strict';

(function () {
  const C = window.Charts;
  const POLL_MS = 2000;
  const MAX_RECORDS = 20000;  // older records are thinned 2:1 beyond this; cumulative counters stay exact
  const KEEP_RECENT = 1000;   // never thinned
  const LIVE_S = 30;          // a record younger than this means the run is live
  const MAX_BARS = 60;        // staleness bars are merged down to this many intervals
  const PALETTE = ['#4e9eff', '#f5a524', '#3ecf8e', '#ef5b5b', '#b07cff', '#22c3c3', '#ff7ab6', '#c0ca33',
    '#8d99ae', '#ffb86b'];
  const LAG_COLORS = ['#2bb673', '#8fcb3f', '#e6d23f', '#f5a524', '#ef7a3a', '#e2504a', '#c03a6b', '#8e3bb0'];
  // Drops by reason (dashboard/summary.py DROP_REASONS): metric, label, unit.
  const DROP_REASONS = [['staleness/dropped', 'too stale', 'groups'], ['drops/invalid', 'invalid', 'groups'],
    ['drops/duplicate', 'duplicate', 'groups'], ['drops/late', 'late for a dropped prompt', 'groups'],
    ['drops/lease_attempts', 'too many lease attempts', 'prompts'], ['drops/prompt_too_long', 'prompt too long', 'prompts'],
    ['drops/other', 'other', 'prompts']];
  const EVENT_COLORS = { 'eval/runs': '#3ecf8e', 'checkpoint/saves': '#4e9eff', 'actors/joined': '#b07cff',
    'actors/left': '#f5a524', 'weights/failures': '#ef5b5b', 'learner/started_at': '#c0ca33' };
  const RATE_WINDOW_S = 30;  // names.RATE_WINDOW_S

  const state = { records: [], offset: 0, now: null, t0: null, xMode: 'step', weight: 'groups', error: null, actors: new Set(),
    summary: null, smooth: 0, logY: false, zoom: null, hidden: new Map(), dirty: true, renders: 0 };
  let currentPanel = null;  // the panel being drawn (its hidden legend entries)

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

  // Exponential moving average of a line's points (weight `a` on the past); bars and markers stay raw.
  function smooth(pts, a) {
    if (!(a > 0) || pts.length < 3) return pts;
    const out = [];
    let m = pts[0][1];
    for (const [x, y] of pts) { m = a * m + (1 - a) * y; out.push([x, m]); }
    return out;
  }

  // Accuracy only where an evaluation ran (eval/runs grew): every record repeats the latest accuracy.
  function evalPoints() {
    const out = [];
    let prevRuns = null, prevAcc = null;
    for (const r of state.records) {
      const acc = r['eval/accuracy'], runs = r['eval/runs'];
      if (num(acc) && ((num(runs) && runs !== prevRuns) || (!num(runs) && acc !== prevAcc))) out.push([xOf(r), acc]);
      if (num(runs)) prevRuns = runs;
      prevAcc = acc;
    }
    return out;
  }

  function eventMarkers() {
    const evs = (state.summary && state.summary.events) || [];
    return evs.filter(e => (state.xMode === 'time' ? num(e.time) && state.t0 !== null : num(e.step))).map(e => ({
      x: state.xMode === 'time' ? (e.time - state.t0) / 60 : e.step, kind: e.kind, color: EVENT_COLORS[e.kind],
      label: `${e.label}${e.count > 1 ? ` ×${e.count}` : ''} at ${state.xMode === 'time' ? xLabel((e.time - state.t0) / 60) : `step ${e.step}`}`,
    }));
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

  // Length bins (names.length_bin): the bit length of the token count; bin 0 = 0 tokens, bin b >= 1 holds
  // 2^(b-1)..2^b - 1 tokens (inclusive), the last bin (17) every length >= 65536.
  const N_LENGTH_BINS = 18;
  function lengthBinLabel(i) {
    const k = v => (v >= 1024 && v % 1024 === 0 ? `${v / 1024}k` : String(v));
    if (i <= 1) return String(i);
    if (i >= N_LENGTH_BINS - 1) return `${k(2 ** (i - 1))}+`;
    const lo = 2 ** (i - 1), hi = 2 ** i - 1;
    return lo === hi ? String(lo) : `${k(lo)}–${hi >= 1024 ? k(hi + 1) + '−1' : hi}`;
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
  function hiddenOf(id) {
    if (!state.hidden.has(id)) state.hidden.set(id, new Set());
    return state.hidden.get(id);
  }

  function lineSpec(series, extra) {
    const sm = series.map(x => (x.kind === 'bars' || x.markers ? x : Object.assign({}, x, { points: smooth(x.points, state.smooth) })));
    return Object.assign({ series: sm, xTitle: xTitle(), xLabel, logY: state.logY, xRange: state.zoom,
      hidden: currentPanel ? hiddenOf(currentPanel) : new Set(), events: eventMarkers(),
      onZoom: range => { state.zoom = range; document.getElementById('reset-zoom').hidden = !range; markDirty(); } }, extra || {});
  }

  function drawLines(chartEl, legendEl, series, extra) {
    const id = currentPanel;
    const hidden = id ? hiddenOf(id) : new Set();
    C.legend(legendEl, series.map(x => ({ label: x.label, color: x.color, kind: x.kind, dash: x.dash })), label => {
      if (hidden.has(label)) hidden.delete(label); else hidden.add(label);
      markDirty();
    }, hidden);
    return C.line(chartEl, lineSpec(series, extra));
  }

  const PANELS = [
    {
      id: 'reward', title: 'Reward',
      sub: 'mean raw reward of the trained batch, band = ± 1 std; each reward function\'s mean; failed reward calls (right)',
      draw(c, l) {
        const mean = s('reward/mean', 'reward mean', PALETTE[0]);
        const std = new Map(points('reward/std').map(p => [p[0], p[1]]));
        mean.band = mean.points.filter(p => std.has(p[0])).map(p => [p[0], p[1] - std.get(p[0]), p[1] + std.get(p[0])]);
        const now = last() || {};
        // several weighted functions (task.rewards): each one's mean, reward/<fn>/mean
        const fns = Object.keys(now).filter(k => /^reward\/[a-z0-9_]+\/mean$/.test(k)).sort();
        const lines = [mean, ...fns.map((k, i) => s(k, k.split('/')[1], PALETTE[(i + 1) % PALETTE.length]))];
        for (const [kind, i] of [['exception', 3], ['timeout', 4], ['bad_value', 5]]) {
          const key = `reward/errors/${kind}`;
          if (points(key).some(p => p[1] > 0)) {
            lines.push(s(key, `failed: ${kind} (right)`, PALETTE[i % PALETTE.length], { axis: 'right', dash: true }));
          }
        }
        const extra = { yTitle: 'reward', y: { zero: false } };
        if (lines.some(x => x.axis === 'right')) extra.yTitleRight = 'failed calls (total)';
        return drawLines(c, l, lines, extra);
      },
    },
    {
      id: 'accuracy', title: 'Held-out accuracy', sub: 'one point per evaluation on the held-out split',
      draw(c, l) {
        return drawLines(c, l, [{ key: 'eval/accuracy', label: 'eval accuracy', color: PALETTE[2], markers: true, points: evalPoints() }],
          { yTitle: 'accuracy', y: { min: 0, max: 1, maxIsFloor: true }, yFormat: pct, valueFormat: pctValue });
      },
    },
    {
      id: 'throughput', title: 'Throughput',
      sub: `response tokens accepted from the fleet and trained (achieved, waits included), both per wall second over the last ${RATE_WINDOW_S} s`,
      draw(c, l) {
        return drawLines(c, l, [
          s('throughput/gen_tokens_per_s', 'accepted tok/s', PALETTE[0]),
          s('throughput/train_tokens_per_s', 'trained tok/s', PALETTE[2]),
          s('throughput/samples_per_s', 'responses/s (right)', PALETTE[1], { axis: 'right', dash: true }),
        ], { yTitle: 'tokens / s', yTitleRight: 'responses / s' });
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
      id: 'staleness', title: 'Staleness of the trained batch', sub: 'versions behind the learner when trained, per step',
      draw(c, l) {
        return drawLines(c, l, [
          s('staleness/mean', 'mean', PALETTE[0]),
          s('staleness/max', 'max', PALETTE[0], { dash: true }),
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
    { id: 'actors', title: 'Actors', wide: true,
      sub: 'lag = learner version minus the oldest version of the newest group the actor delivered, on arrival; applied = the version its heartbeat reports',
      draw: (c, l) => window.ActorTable.draw(c, l, { ids: actorIds(), now: last(), latest, points, summary: state.summary,
        palette: PALETTE, pctValue }) },
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
          s('weights/version_skew_max', 'worst actor lag (right)', PALETTE[1], { axis: 'right' }),
        ], { yTitle: 'seconds', yTitleRight: 'versions', valueFormat: C.fmtSeconds });
      },
    },
    {
      id: 'learner', title: 'Learner utilisation',
      sub: `share of wall time training over the last ${RATE_WINDOW_S} s and since start; wait for data before each step`,
      draw(c, l) {
        return drawLines(c, l, [
          s('learner/busy_frac', `busy (last ${RATE_WINDOW_S} s)`, PALETTE[2], { kind: 'area' }),
          s('learner/busy_frac_since_start', 'busy (since start)', PALETTE[0], { dash: true }),
          s('learner/wait_s', 'wait for data (right)', PALETTE[3], { axis: 'right', dash: true }),
        ], { yTitle: 'busy', y: { min: 0, max: 1 }, yFormat: pct, valueFormat: pctValue, yTitleRight: 'seconds',
          valueFormatRight: C.fmtSeconds });
      },
    },
    {
      id: 'queues', title: 'Buffer, leases and fleet',
      sub: 'groups waiting, prompt leases outstanding, leases admission would grant now (0: held back by max_staleness), live actors',
      draw(c, l) {
        return drawLines(c, l, [
          s('buffer/groups', 'buffered groups', PALETTE[4]),
          s('leases/in_flight', 'leases in flight', PALETTE[1]),
          s('leases/capacity', 'admission capacity', PALETTE[5], { dash: true }),
          s('actors/alive', 'actors alive', PALETTE[2], { dash: true }),
        ], { yTitle: 'count' });
      },
    },
    {
      id: 'drops', title: 'Drops by reason', sub: 'cumulative groups (or prompts) dropped or rejected',
      draw(c, l, sub) {
        const colors = [PALETTE[3], PALETTE[8], PALETTE[5], PALETTE[1], PALETTE[4], PALETTE[6], PALETTE[7]];
        const series = DROP_REASONS.map(([k, label, unit], i) => s(k, `${label} (${unit})`, colors[i])).filter(x => x.points.length);
        const counts = {};
        for (const [k] of DROP_REASONS) { const v = latest(k); if (num(v)) counts[k] = v; }
        this.el.dataset.drops = JSON.stringify(counts);
        const parts = DROP_REASONS.filter(([k]) => k in counts).map(([k, label, unit]) => `${label} ${counts[k]} ${unit}`);
        sub.textContent = parts.length ? `cumulative · ${parts.join(' · ')}` : 'cumulative groups (or prompts) dropped or rejected';
        return drawLines(c, l, series, { yTitle: 'count' });
      },
    },
    {
      id: 'drop-lengths', title: 'Length of dropped vs trained responses', sub: 'share of responses per length bin',
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
        sub.textContent = `share of responses per length bin · ${C.fmt(sd)} responses of dropped groups, ${C.fmt(sk)} of trained groups`;
        const groups = [{ label: 'dropped', color: PALETTE[3], values: dv }, { label: 'trained', color: PALETTE[0], values: kv }];
        C.legend(l, groups.map(g => ({ label: g.label, color: g.color, kind: 'box' })));
        return C.groupedBars(c, { categories: cats, groups, percent: true, yTitle: 'share of responses', xTitle: 'response length (tokens, inclusive)' });
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
          s('train/dual_clipfrac', 'dual clip tokens', PALETTE[4], { dash: true }),
          s('train/rejected_frac', 'rejected sequences', PALETTE[3], { dash: true })],
        { yTitle: 'fraction', yFormat: pct, valueFormat: pctValue });
      },
    },
    {
      id: 'ratio', title: 'GSPO sequence ratio', sub: 's_i = exp(mean token log-ratio) over the trained batch',
      draw(c, l) {
        return drawLines(c, l, [s('train/ratio_mean', 'mean', PALETTE[0]), s('train/ratio_max', 'max', PALETTE[1], { dash: true })],
          { yTitle: 'ratio', y: { zero: false }, precision: 6 });
      },
    },
    {
      id: 'is-weight', title: 'Staleness-correction weights',
      sub: 'w_i of the decoupled correction; exactly 1 under behaviour or recompute correction, which use no staleness weight',
      draw(c, l) {
        return drawLines(c, l, [s('train/is_weight_mean', 'mean', PALETTE[2]), s('train/is_weight_max', 'max', PALETTE[1], { dash: true })],
          { yTitle: 'weight', y: { zero: false }, precision: 5 });
      },
    },
    {
      id: 'policy', title: 'Entropy and KL', sub: 'token entropy and the k3 estimate of KL(pi_old || pi_theta)',
      draw(c, l) {
        return drawLines(c, l, [s('train/entropy', 'entropy', PALETTE[0]), s('train/approx_kl', 'KL(old ‖ current)', PALETTE[4]),
          s('train/grad_norm', 'grad norm (right)', PALETTE[8], { axis: 'right', dash: true })],
        { yTitle: 'nats', yTitleRight: 'grad norm' });
      },
    },
    {
      id: 'response-length', title: 'Response length', sub: 'tokens per response of the trained batch',
      draw(c, l) {
        return drawLines(c, l, [s('response/length_mean', 'mean', PALETTE[0]), s('response/length_max', 'max', PALETTE[0], { dash: true })],
          { yTitle: 'tokens' });
      },
    },
  ];

  // ---------- KPIs and status ----------
  const KPIS = [
    ['step', 'Step', () => latest('train/step') ?? (last() ? last().step : null), v => C.fmt(v)],
    ['version', 'Version', () => latest('train/version'), v => C.fmt(v)],
    ['reward', 'Reward', () => latest('reward/mean'), v => C.fmt(v, 3)],
    ['accuracy', 'Eval accuracy', () => latest('eval/accuracy'), v => pctValue(v)],
    ['staleness', 'Staleness', () => latest('staleness/mean'), v => C.fmt(v, 3), 'versions'],
    ['gen', `Accepted (${RATE_WINDOW_S} s)`, () => latest('throughput/gen_tokens_per_s'), v => C.fmt(v, 3), 'tok/s'],
    ['train', `Trained (${RATE_WINDOW_S} s)`, () => latest('throughput/train_tokens_per_s'), v => C.fmt(v, 3), 'tok/s'],
    ['busy', `Learner busy (${RATE_WINDOW_S} s)`, () => latest('learner/busy_frac'), v => pctValue(v)],
    ['busy-total', 'Busy since start', () => latest('learner/busy_frac_since_start'), v => pctValue(v)],
    ['actors', 'Actors alive', () => latest('actors/alive'), v => C.fmt(v)],
    ['elapsed', 'Elapsed', () => (last() ? last().time - state.t0 : null), v => C.fmtSeconds(v)],
  ];

  function buildKpis() {
    const box = document.getElementById('kpis');
    const b = document.createElement('div');
    b.className = 'kpi';
    b.dataset.kpi = 'bottleneck';
    b.innerHTML = '<div class="label">Bottleneck</div><div class="value">–</div><div class="why"></div>';
    box.appendChild(b);
    for (const [id, label] of KPIS) {
      const d = document.createElement('div');
      d.className = 'kpi';
      d.dataset.kpi = id;
      d.innerHTML = '<div class="label"></div><div class="value">–</div>';
      d.querySelector('.label').textContent = label;
      box.appendChild(d);
    }
  }

  // The bottleneck badge: dashboard/summary.py computes it with the rule of telemetry/derive.py `bottleneck`.
  function renderBottleneck() {
    const box = document.querySelector('.kpi[data-kpi="bottleneck"]');
    const b = state.summary && state.summary.bottleneck;
    const value = box.querySelector('.value'), why = box.querySelector('.why');
    value.textContent = '';
    const badge = document.createElement('span');
    badge.className = 'badge ' + (b ? b.label : 'unknown');
    badge.textContent = b ? b.label : '–';
    value.appendChild(badge);
    why.textContent = b ? b.reason : '';
    box.title = 'learner if busy >= 80% of the last 30 s; else admission if the staleness bound grants no lease; else actors';
  }

  function renderKpis() {
    renderBottleneck();
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
    if (state.summary && state.summary.state === 'ended') {
      box.classList.add('idle'); text.textContent = `run ended · last record ${C.fmtSeconds(age)} ago`; return;
    }
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
    state.dirty = false;
    state.renders += 1;
    for (const p of PANELS) {
      const chart = p.el.querySelector('.chart'), legendEl = p.el.querySelector('.legend'), sub = p.el.querySelector('.sub');
      let n = 0;
      try {
        currentPanel = p.id;
        n = p.draw(chart, legendEl, sub) || 0;
      } catch (err) {
        console.error(`panel ${p.id}: ${err && err.stack ? err.stack : err}`);
        C.empty(chart, `cannot draw: ${err}`);
      }
      p.el.dataset.hasData = n > 0 ? 'true' : 'false';
    }
    currentPanel = null;
    renderKpis();
    renderStatus();
    document.body.dataset.records = String(state.records.length);
    document.body.dataset.offset = String(state.offset);
    document.body.dataset.renders = String(state.renders);
    document.body.dataset.runState = state.summary ? state.summary.state : '';
  }

  // Redraw only when something changed: new records, a new summary, a control, the window size.
  let pending = false;
  function markDirty() {
    state.dirty = true;
    if (pending) return;
    pending = true;
    setTimeout(() => { pending = false; if (state.dirty) render(); }, 0);  // not requestAnimationFrame: headless browsers may never paint
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
    if (records.length) state.dirty = true;
    if (state.records.length > MAX_RECORDS) {
      const cut = state.records.length - KEEP_RECENT;
      state.records = state.records.filter((r, i) => i >= cut || i % 2 === 0);
    }
  }

  async function poll() {
    let more = false;
    const hadError = state.error;
    try {
      const res = await fetch(`/api/metrics?since=${state.offset}`, { cache: 'no-store' });
      if (!res.ok) throw new Error(`HTTP ${res.status}`);
      const data = await res.json();
      if (data.reset) { state.records = []; state.actors = new Set(); state.t0 = null; state.dirty = true; }
      ingest(data.records);
      state.offset = data.offset;
      state.now = data.now;
      state.error = null;
      more = data.more;
      // The summary (counts, bottleneck, events, run state) is read once the file is caught up and anything changed.
      if (!more && (state.dirty || state.summary === null)) {
        const sres = await fetch('/api/summary', { cache: 'no-store' });
        if (sres.ok) { state.summary = await sres.json(); state.dirty = true; }
      }
    } catch (err) {
      state.error = `cannot reach the dashboard server (${err.message || err})`;
    }
    if (state.error !== hadError) state.dirty = true;
    if (state.dirty && !more) markDirty();
    else renderStatus();  // the status line's age changes every poll; the charts only with new data
    setTimeout(poll, more ? 0 : POLL_MS);
  }

  async function start() {
    buildKpis();
    buildPanels();
    // ?x=time&weight=tokens&smooth=0.5&log=1&zoom=10,20 picks the view, so a link or bookmark reopens the same one.
    const params = new URLSearchParams(window.location.search);
    const xSel = document.getElementById('x-mode'), wSel = document.getElementById('staleness-weight');
    if (['step', 'time'].includes(params.get('x'))) xSel.value = state.xMode = params.get('x');
    if (['groups', 'tokens'].includes(params.get('weight'))) wSel.value = state.weight = params.get('weight');
    xSel.addEventListener('change', e => { state.xMode = e.target.value; state.zoom = null; document.getElementById('reset-zoom').hidden = true; markDirty(); });
    wSel.addEventListener('change', e => { state.weight = e.target.value; markDirty(); });
    const sm = document.getElementById('smoothing'), smv = document.getElementById('smoothing-value');
    const logBox = document.getElementById('log-y'), resetZoom = document.getElementById('reset-zoom');
    const sParam = Number(params.get('smooth'));
    if (sParam >= 0 && sParam < 1) { sm.value = String(sParam); state.smooth = sParam; smv.textContent = String(sParam); }
    if (params.get('log') === '1') { logBox.checked = true; state.logY = true; }
    const z = (params.get('zoom') || '').split(',').map(Number);
    if (z.length === 2 && z.every(isFinite) && z[1] > z[0]) { state.zoom = z; resetZoom.hidden = false; }
    sm.addEventListener('input', e => { state.smooth = Number(e.target.value); smv.textContent = e.target.value; markDirty(); });
    logBox.addEventListener('change', e => { state.logY = e.target.checked; markDirty(); });
    resetZoom.addEventListener('click', () => { state.zoom = null; resetZoom.hidden = true; markDirty(); });
    window.addEventListener('resize', markDirty);
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
