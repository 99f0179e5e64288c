// Small SVG charts for the gspo-async dashboard: line/area/bar series on one or two y axes, stacked bars over
// x intervals, grouped bars over categories, sparklines. No dependencies; every chart redraws from scratch.
// Line charts take a log y axis, a zoomed x range (drag to zoom, double-click to reset), event markers, and
// draw series with more points than pixels as a mean line inside a min/max band (the same texture at any length).
'use strict';

(function () {
  const NS = 'http://www.w3.org/2000/svg';
  const HEIGHT = 210;
  const MARGIN = { top: 10, bottom: 34, left: 54, right: 16, rightAxis: 54 };

  // ---------- formatting ----------
  function fmt(v, digits) {
    if (v === null || v === undefined || !isFinite(v)) return '–';
    digits = digits || 4;
    const a = Math.abs(v);
    if (a >= 1e9) return (v / 1e9).toFixed(a >= 1e10 ? 0 : 1) + 'G';
    if (a >= 1e6) return (v / 1e6).toFixed(a >= 1e7 ? 0 : 1) + 'M';
    if (a >= 1e4) return (v / 1e3).toFixed(a >= 1e5 ? 0 : 1) + 'k';
    if (a === 0) return '0';
    if (a < 1e-3) return v.toExponential(1);
    return String(Number(v.toPrecision(digits)));
  }

  function fmtTick(v, step) {
    if (Math.abs(v) < step * 1e-6) v = 0;
    if (Math.abs(v) >= 1e4 || (step >= 1e3)) return fmt(v, 3);
    const decimals = Math.max(0, Math.min(7, -Math.floor(Math.log10(step) + 1e-9)));
    return v.toFixed(decimals);
  }

  function fmtBytes(b) {
    if (b === null || b === undefined || !isFinite(b)) return '–';
    const units = ['B', 'KB', 'MB', 'GB', 'TB'];
    let i = 0;
    while (Math.abs(b) >= 1024 && i < units.length - 1) { b /= 1024; i += 1; }
    return (i === 0 ? b.toFixed(0) : b.toFixed(b >= 100 ? 0 : 1)) + ' ' + units[i];
  }

  function fmtSeconds(s) {
    if (s === null || s === undefined || !isFinite(s)) return '–';
    if (s < 1) return (s * 1000).toFixed(s < 0.01 ? 1 : 0) + ' ms';
    if (s < 120) return s.toFixed(s < 10 ? 2 : 1) + ' s';
    if (s < 7200) return (s / 60).toFixed(1) + ' min';
    return (s / 3600).toFixed(1) + ' h';
  }

  // ---------- scales ----------
  function niceStep(range, count) {
    const raw = range / Math.max(1, count);
    const mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const n = raw / mag;
    return (n < 1.5 ? 1 : n < 3 ? 2 : n < 7 ? 5 : 10) * mag;
  }

  function domain(values, opts) {
    let lo = Infinity, hi = -Infinity;
    for (const v of values) { if (isFinite(v)) { if (v < lo) lo = v; if (v > hi) hi = v; } }
    if (!isFinite(lo)) { lo = 0; hi = 1; }
    if (opts.min !== undefined) lo = opts.min;
    if (opts.max !== undefined) hi = Math.max(opts.max, opts.maxIsFloor ? hi : opts.max);
    if (opts.zero !== false && opts.min === undefined && lo > 0 && lo < 0.5 * hi) lo = 0;
    if (hi === lo) { const pad = Math.abs(hi) * 0.05 || 0.5; lo -= pad; hi += pad; if (opts.zero !== false && lo < 0 && hi > 0 && lo + pad >= 0) lo = 0; }
    if (opts.exact) return [lo, hi];
    // Round free ends out to whole tick steps so the axis starts and ends on a labelled value.
    const step = niceStep(hi - lo, 5);
    if (opts.min === undefined) lo = Math.floor(lo / step + 1e-9) * step;
    if (opts.max === undefined) hi = Math.ceil(hi / step - 1e-9) * step;
    return [lo, hi];
  }

  function ticks(lo, hi, count) {
    const step = niceStep(hi - lo, count);
    const out = [];
    for (let t = Math.ceil(lo / step - 1e-9) * step; t <= hi + step * 1e-9; t += step) out.push(t);
    return { step, ticks: out };
  }

  // ---------- DOM ----------
  function svgEl(tag, attrs, parent) {
    const e = document.createElementNS(NS, tag);
    for (const k in attrs) e.setAttribute(k, attrs[k]);
    if (parent) parent.appendChild(e);
    return e;
  }

  function clear(container) { while (container.firstChild) container.removeChild(container.firstChild); }

  function empty(container, text) {
    clear(container);
    const d = document.createElement('div');
    d.className = 'empty';
    d.textContent = text || 'waiting for data';
    container.appendChild(d);
    return 0;
  }

  function frame(container, hasRight) {
    clear(container);
    const width = Math.max(240, container.clientWidth || 420);
    const height = container.clientHeight || HEIGHT;
    const m = { top: MARGIN.top, bottom: MARGIN.bottom, left: MARGIN.left, right: hasRight ? MARGIN.rightAxis : MARGIN.right };
    const svg = svgEl('svg', { width, height, viewBox: `0 0 ${width} ${height}` }, container);
    return { svg, width, height, m, pw: width - m.left - m.right, ph: height - m.top - m.bottom };
  }

  function yAxis(f, lo, hi, side, title, format) {
    const { ticks: ts, step } = ticks(lo, hi, 5);
    const g = svgEl('g', {}, f.svg);
    const y = v => f.m.top + f.ph - (v - lo) / (hi - lo) * f.ph;
    for (const t of ts) {
      if (side === 'left') svgEl('line', { class: 'grid-line', x1: f.m.left, x2: f.m.left + f.pw, y1: y(t), y2: y(t) }, g);
      const x = side === 'left' ? f.m.left - 6 : f.m.left + f.pw + 6;
      const label = svgEl('text', { x, y: y(t) + 3.5, 'text-anchor': side === 'left' ? 'end' : 'start' }, g);
      label.textContent = format ? format(t, step) : fmtTick(t, step);
    }
    if (title) {
      const x = side === 'left' ? 12 : f.width - 8;
      const cy = f.m.top + f.ph / 2;
      const t = svgEl('text', { class: 'axis-title', x, y: cy, 'text-anchor': 'middle',
        transform: `rotate(${side === 'left' ? -90 : 90} ${x} ${cy})` }, g);
      t.textContent = title;
    }
    return y;
  }

  function xAxis(f, lo, hi, title, format) {
    const { ticks: ts, step } = ticks(lo, hi, Math.max(2, Math.floor(f.pw / 80)));
    const g = svgEl('g', {}, f.svg);
    const x = v => f.m.left + (v - lo) / (hi - lo) * f.pw;
    svgEl('line', { class: 'axis-line', x1: f.m.left, x2: f.m.left + f.pw, y1: f.m.top + f.ph, y2: f.m.top + f.ph }, g);
    for (const t of ts) {
      svgEl('line', { class: 'axis-line', x1: x(t), x2: x(t), y1: f.m.top + f.ph, y2: f.m.top + f.ph + 4 }, g);
      const label = svgEl('text', { x: x(t), y: f.m.top + f.ph + 15, 'text-anchor': 'middle' }, g);
      label.textContent = format ? format(t, step) : fmtTick(t, step);
    }
    if (title) {
      const t = svgEl('text', { class: 'axis-title', x: f.m.left + f.pw / 2, y: f.height - 3, 'text-anchor': 'middle' }, g);
      t.textContent = title;
    }
    return x;
  }

  // ---------- tooltip ----------
  const tooltip = () => document.getElementById('tooltip');

  function showTooltip(evt, head, rows) {
    const tip = tooltip();
    if (!tip) return;
    clear(tip);
    const h = document.createElement('div');
    h.className = 't-head';
    h.textContent = head;
    tip.appendChild(h);
    for (const r of rows) {
      const row = document.createElement('div');
      row.className = 't-row';
      const sw = document.createElement('span');
      sw.className = 'swatch';
      sw.style.cssText = `width:8px;height:8px;border-radius:2px;display:inline-block;background:${r.color}`;
      const name = document.createElement('span');
      name.textContent = r.label;
      const val = document.createElement('b');
      val.textContent = r.value;
      row.append(sw, name, val);
      tip.appendChild(row);
    }
    tip.hidden = false;
    const w = tip.offsetWidth, hgt = tip.offsetHeight;
    let left = evt.clientX + 14, top = evt.clientY + 12;
    if (left + w > window.innerWidth - 8) left = evt.clientX - w - 14;
    if (top + hgt > window.innerHeight - 8) top = evt.clientY - hgt - 12;
    tip.style.left = left + 'px';
    tip.style.top = top + 'px';
  }

  function hideTooltip() { const tip = tooltip(); if (tip) tip.hidden = true; }

  function nearest(points, xv) {  // index of the point whose x is closest to xv (points sorted by x)
    let lo = 0, hi = points.length - 1;
    if (hi < 0) return -1;
    while (hi - lo > 1) { const mid = (lo + hi) >> 1; if (points[mid][0] < xv) lo = mid; else hi = mid; }
    return Math.abs(points[lo][0] - xv) <= Math.abs(points[hi][0] - xv) ? lo : hi;
  }

  // ---------- line / area / bar series over a numeric x ----------
  // spec: {series: [{label, color, points: [[x, y]], kind: 'line'|'area'|'bars', axis: 'left'|'right', dash,
  //         band: [[x, lo, hi]]}], xTitle, yTitle, yTitleRight, y: {min, max, zero}, yRight: {...},
  //         xFormat, yFormat, yFormatRight, valueFormat, valueFormatRight, xLabel(x) for the tooltip}
  // Returns the number of points drawn.
  // Points -> at most `buckets` buckets of equal x width: the mean point of each and a [x, min, max] band.
  function downsample(points, buckets) {
    if (points.length <= buckets * 2) return { points, band: null };
    const x0 = points[0][0], x1 = points[points.length - 1][0];
    const width = (x1 - x0) / buckets || 1;
    const out = [], band = [];
    let i = 0;
    while (i < points.length) {
      const k = Math.min(buckets - 1, Math.floor((points[i][0] - x0) / width));
      let n = 0, sx = 0, sy = 0, lo = Infinity, hi = -Infinity;
      while (i < points.length && Math.min(buckets - 1, Math.floor((points[i][0] - x0) / width)) === k) {
        const [x, y] = points[i];
        n += 1; sx += x; sy += y; if (y < lo) lo = y; if (y > hi) hi = y; i += 1;
      }
      out.push([sx / n, sy / n]);
      band.push([sx / n, lo, hi]);
    }
    return { points: out, band };
  }

  function line(container, spec) {
    const hidden = spec.hidden || new Set();
    const logY = !!spec.logY;
    const xr = spec.xRange;
    let series = spec.series.filter(s => s.points.length > 0 && !hidden.has(s.label)).map(s => {
      let pts = xr ? s.points.filter(p => p[0] >= xr[0] && p[0] <= xr[1]) : s.points;
      let band = s.band && xr ? s.band.filter(b => b[0] >= xr[0] && b[0] <= xr[1]) : s.band;
      if (logY && s.axis !== 'right') {
        pts = pts.filter(p => p[1] > 0).map(p => [p[0], Math.log10(p[1])]);
        band = band ? band.filter(b => b[1] > 0 && b[2] > 0).map(b => [b[0], Math.log10(b[1]), Math.log10(b[2])]) : band;
      }
      return Object.assign({}, s, { points: pts, band });
    }).filter(s => s.points.length > 0);
    // Series with more points than the plot has pixels: mean line inside a min/max band.
    const maxPoints = Math.max(60, Math.floor((container.clientWidth || 420) / 2));
    series = series.map(s => {
      if (s.kind === 'bars' || s.band || s.points.length <= maxPoints * 2) return s;
      const d = downsample(s.points, maxPoints);
      return Object.assign({}, s, { points: d.points, band: d.band, downsampled: true });
    });
    const total = series.reduce((n, s) => n + s.points.length, 0);
    if (total === 0 && logY && spec.series.some(s => s.points.length > 0 && !hidden.has(s.label))) {
      return empty(container, 'no value > 0 to draw on a log y axis');
    }
    if (total === 0) return empty(container, spec.emptyText);
    const hasRight = series.some(s => s.axis === 'right');
    const f = frame(container, hasRight || spec.yTitleRight);
    const xs = [], yl = [], yr = [];
    for (const s of series) {
      for (const p of s.points) { xs.push(p[0]); (s.axis === 'right' ? yr : yl).push(p[1]); }
      if (s.band) for (const b of s.band) { (s.axis === 'right' ? yr : yl).push(b[1], b[2]); }
      if (s.kind === 'bars' || s.kind === 'area') (s.axis === 'right' ? yr : yl).push(0);
    }
    let [x0, x1] = domain(xs, { zero: false, exact: true });
    if (spec.xMin !== undefined) x0 = Math.min(x0, spec.xMin);
    const barPad = series.some(s => s.kind === 'bars') ? (x1 - x0) * 0.02 || 0.5 : 0;
    x0 -= barPad; x1 += barPad;
    if (xr) { x0 = xr[0]; x1 = xr[1]; }
    const yOpts = logY ? { zero: false } : (spec.y || {});
    const [l0, l1] = domain(yl.length ? yl : [0, 1], yOpts);
    const logFormat = t => fmt(Math.pow(10, t), 3);
    const yLeft = yAxis(f, l0, l1, 'left', spec.yTitle + (logY ? ' (log)' : ''), logY ? logFormat : spec.yFormat);
    let yRight = yLeft;
    if (hasRight) {
      const [r0, r1] = domain(yr, spec.yRight || {});
      yRight = yAxis(f, r0, r1, 'right', spec.yTitleRight, spec.yFormatRight);
    }
    const x = xAxis(f, x0, x1, spec.xTitle, spec.xFormat);
    const plot = svgEl('g', {}, f.svg);
    const clipId = 'clip' + Math.random().toString(36).slice(2);
    const clip = svgEl('clipPath', { id: clipId }, plot);
    svgEl('rect', { x: f.m.left, y: f.m.top - 2, width: f.pw, height: f.ph + 4 }, clip);
    plot.setAttribute('clip-path', `url(#${clipId})`);

    for (const s of series) {
      const y = s.axis === 'right' ? yRight : yLeft;
      if (s.band && s.band.length) {
        const up = s.band.map(b => `${x(b[0]).toFixed(1)},${y(b[2]).toFixed(1)}`);
        const down = s.band.slice().reverse().map(b => `${x(b[0]).toFixed(1)},${y(b[1]).toFixed(1)}`);
        svgEl('polygon', { points: up.concat(down).join(' '), fill: s.color, 'fill-opacity': 0.14 }, plot);
      }
      if (s.kind === 'bars') {
        const bw = Math.max(1.5, Math.min(14, f.pw / Math.max(1, (x1 - x0) / Math.max(minGap(s.points), 1e-12)) * 0.7));
        const base = y(Math.max(0, (s.axis === 'right' ? (spec.yRight || {}) : (spec.y || {})).min || 0));
        for (const p of s.points) {
          const top = y(p[1]);
          svgEl('rect', { x: x(p[0]) - bw / 2, y: Math.min(top, base), width: bw, height: Math.max(0.5, Math.abs(base - top)),
            fill: s.color, 'fill-opacity': s.opacity || 0.85 }, plot);
        }
        continue;
      }
      const d = s.points.map((p, i) => `${i ? 'L' : 'M'}${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join('');
      if (s.kind === 'area') {
        const last = s.points[s.points.length - 1], first = s.points[0];
        const y0 = y(0);
        svgEl('path', { d: `${d}L${x(last[0]).toFixed(1)},${y0}L${x(first[0]).toFixed(1)},${y0}Z`, fill: s.color, 'fill-opacity': 0.18 }, plot);
      }
      svgEl('path', { d, fill: 'none', stroke: s.color, 'stroke-width': s.width || 1.8, 'stroke-linejoin': 'round',
        'stroke-dasharray': s.dash ? '5 4' : 'none' }, plot);
      if (s.points.length === 1 || (s.markers && s.points.length <= 200)) {
        for (const p of s.points) svgEl('circle', { cx: x(p[0]), cy: y(p[1]), r: 2.6, fill: s.color }, plot);
      }
    }

    // Event markers: a vertical line per event inside the x range, its label in a <title>.
    for (const ev of spec.events || []) {
      if (!(ev.x >= x0 && ev.x <= x1)) continue;
      const line = svgEl('line', { class: 'event-marker', x1: x(ev.x), x2: x(ev.x), y1: f.m.top, y2: f.m.top + f.ph,
        stroke: ev.color || '#8a96a6', 'data-kind': ev.kind || '' }, plot);
      svgEl('title', {}, line).textContent = ev.label;
    }

    // Hover: a crosshair at the nearest x and the value of every series there. Drag: zoom to the x range dragged.
    const cross = svgEl('line', { class: 'crosshair', y1: f.m.top, y2: f.m.top + f.ph, visibility: 'hidden' }, f.svg);
    const sel = svgEl('rect', { class: 'zoom-selection', y: f.m.top, height: f.ph, width: 0, visibility: 'hidden' }, f.svg);
    const overlay = svgEl('rect', { x: f.m.left, y: f.m.top, width: f.pw, height: f.ph, fill: 'transparent' }, f.svg);
    const xAt = evt => { const box = f.svg.getBoundingClientRect(); return Math.max(f.m.left, Math.min(f.m.left + f.pw, evt.clientX - box.left)); };
    let dragFrom = null;
    overlay.addEventListener('mousedown', evt => { dragFrom = xAt(evt); evt.preventDefault(); });
    overlay.addEventListener('mouseup', evt => {
      if (dragFrom === null) return;
      const a = Math.min(dragFrom, xAt(evt)), b = Math.max(dragFrom, xAt(evt));
      dragFrom = null; sel.setAttribute('visibility', 'hidden');
      if (b - a > 4 && spec.onZoom) spec.onZoom([x0 + (a - f.m.left) / f.pw * (x1 - x0), x0 + (b - f.m.left) / f.pw * (x1 - x0)]);
    });
    overlay.addEventListener('dblclick', () => { if (spec.onZoom) spec.onZoom(null); });
    overlay.addEventListener('mousemove', evt => {
      if (dragFrom !== null) {
        const a = Math.min(dragFrom, xAt(evt)), b = Math.max(dragFrom, xAt(evt));
        sel.setAttribute('x', a); sel.setAttribute('width', b - a); sel.setAttribute('visibility', 'visible');
      }
      const box = f.svg.getBoundingClientRect();
      const xv = x0 + (evt.clientX - box.left - f.m.left) / f.pw * (x1 - x0);
      let best = null;
      for (const s of series) {
        const i = nearest(s.points, xv);
        if (i >= 0 && (best === null || Math.abs(s.points[i][0] - xv) < Math.abs(best - xv))) best = s.points[i][0];
      }
      if (best === null) return;
      cross.setAttribute('x1', x(best)); cross.setAttribute('x2', x(best)); cross.setAttribute('visibility', 'visible');
      const rows = [];
      for (const s of series) {
        const i = nearest(s.points, best);
        if (i < 0 || s.points[i][0] !== best) continue;
        const vf = (s.axis === 'right' ? spec.valueFormatRight : spec.valueFormat) || (v => fmt(v, spec.precision));
        const y = logY && s.axis !== 'right' ? Math.pow(10, s.points[i][1]) : s.points[i][1];
        rows.push({ label: s.label + (s.downsampled ? ' (mean)' : ''), color: s.color, value: vf(y) });
      }
      showTooltip(evt, spec.xLabel ? spec.xLabel(best) : String(best), rows);
    });
    overlay.addEventListener('mouseleave', () => {
      cross.setAttribute('visibility', 'hidden'); hideTooltip(); dragFrom = null; sel.setAttribute('visibility', 'hidden');
    });
    return total;
  }

  function minGap(points) {
    let g = Infinity;
    for (let i = 1; i < points.length; i++) { const d = points[i][0] - points[i - 1][0]; if (d > 0 && d < g) g = d; }
    return isFinite(g) ? g : 1;
  }

  // ---------- stacked bars over x intervals (e.g. staleness shares per lag over time) ----------
  // spec: {bars: [{x0, x1, values: [per layer]}], layers: [{label, color}], percent, xTitle, yTitle, xFormat,
  //        xLabel(bar) for the tooltip, valueFormat}
  function stackedBars(container, spec) {
    const bars = spec.bars.filter(b => b.values.some(v => v > 0));
    if (bars.length === 0) return empty(container, spec.emptyText);
    const f = frame(container, false);
    const totals = bars.map(b => b.values.reduce((a, v) => a + Math.max(0, v), 0));
    const hi = spec.percent ? 100 : Math.max(...totals) * 1.06;
    const y = yAxis(f, 0, hi, 'left', spec.yTitle, spec.percent ? (t => t.toFixed(0) + '%') : undefined);
    let x0 = Math.min(...bars.map(b => b.x0)), x1 = Math.max(...bars.map(b => b.x1));
    if (x1 === x0) { x0 -= 0.5; x1 += 0.5; }
    const x = xAxis(f, x0, x1, spec.xTitle, spec.xFormat);
    const g = svgEl('g', {}, f.svg);
    bars.forEach((b, i) => {
      const scale = spec.percent ? 100 / totals[i] : 1;
      let acc = 0;
      const left = x(b.x0), right = x(b.x1);
      const gap = Math.min(1, (right - left) * 0.15);
      const col = svgEl('g', {}, g);
      b.values.forEach((v, layer) => {
        if (!(v > 0)) return;
        const h0 = y(acc), h1 = y(acc + v * scale);
        acc += v * scale;
        svgEl('rect', { x: left + gap / 2, y: h1, width: Math.max(0.8, right - left - gap), height: Math.max(0.3, h0 - h1),
          fill: spec.layers[layer].color }, col);
      });
      const hit = svgEl('rect', { x: left, y: f.m.top, width: Math.max(1, right - left), height: f.ph, fill: 'transparent' }, col);
      hit.addEventListener('mousemove', evt => {
        const rows = b.values.map((v, layer) => ({ label: spec.layers[layer].label, color: spec.layers[layer].color,
          value: `${(100 * v / totals[i]).toFixed(1)}%  (${fmt(v)})` })).filter((r, layer) => b.values[layer] > 0);
        showTooltip(evt, spec.xLabel ? spec.xLabel(b) : `${b.x0} – ${b.x1}`, rows);
      });
      hit.addEventListener('mouseleave', hideTooltip);
    });
    return bars.length;
  }

  // ---------- grouped bars over categories (e.g. length distribution of dropped vs kept groups) ----------
  // spec: {categories: [label], groups: [{label, color, values}], yTitle, xTitle, percent}
  function groupedBars(container, spec) {
    const n = spec.categories.length;
    if (n === 0 || !spec.groups.some(gr => gr.values.some(v => v > 0))) return empty(container, spec.emptyText);
    const f = frame(container, false);
    const all = spec.groups.flatMap(gr => gr.values);
    const [lo, hi] = domain(all, { min: 0 });
    const y = yAxis(f, lo, hi, 'left', spec.yTitle, spec.percent ? ((t, s) => fmtTick(t, s) + '%') : undefined);
    const band = f.pw / n;
    const inner = band * 0.78 / spec.groups.length;
    const g = svgEl('g', {}, f.svg);
    svgEl('line', { class: 'axis-line', x1: f.m.left, x2: f.m.left + f.pw, y1: f.m.top + f.ph, y2: f.m.top + f.ph }, g);
    const every = Math.ceil(n / Math.max(1, Math.floor(f.pw / 48)));
    spec.categories.forEach((cat, i) => {
      const cx = f.m.left + band * i;
      spec.groups.forEach((gr, j) => {
        const v = gr.values[i] || 0;
        svgEl('rect', { x: cx + band * 0.11 + inner * j, y: y(v), width: Math.max(1, inner - 1),
          height: Math.max(0, y(0) - y(v)), fill: gr.color }, g);
      });
      if (i % every === 0) {
        const t = svgEl('text', { x: cx + band / 2, y: f.m.top + f.ph + 15, 'text-anchor': 'middle' }, g);
        t.textContent = cat;
      }
      const hit = svgEl('rect', { x: cx, y: f.m.top, width: band, height: f.ph, fill: 'transparent' }, g);
      hit.addEventListener('mousemove', evt => showTooltip(evt, `${spec.xTitle || ''} ${cat}`,
        spec.groups.map(gr => ({ label: gr.label, color: gr.color,
          value: spec.percent ? (gr.values[i] || 0).toFixed(1) + '%' : fmt(gr.values[i] || 0) }))));
      hit.addEventListener('mouseleave', hideTooltip);
    });
    if (spec.xTitle) {
      const t = svgEl('text', { class: 'axis-title', x: f.m.left + f.pw / 2, y: f.height - 3, 'text-anchor': 'middle' }, g);
      t.textContent = spec.xTitle;
    }
    return all.filter(v => v > 0).length;
  }

  // ---------- sparkline (tables) ----------
  function sparkline(values, color, width, height) {
    width = width || 90; height = height || 20;
    const svg = svgEl('svg', { width, height, viewBox: `0 0 ${width} ${height}` });
    const vs = values.filter(v => isFinite(v));
    if (vs.length < 2) return svg;
    const lo = Math.min(...vs, 0), hi = Math.max(...vs) || 1;
    const d = vs.map((v, i) => `${i ? 'L' : 'M'}${(i / (vs.length - 1) * (width - 2) + 1).toFixed(1)},` +
      `${(height - 2 - (v - lo) / (hi - lo) * (height - 4)).toFixed(1)}`).join('');
    svgEl('path', { d, fill: 'none', stroke: color, 'stroke-width': 1.4 }, svg);
    return svg;
  }

  // items: [{label, color, kind, dash}]; with onToggle(label), clicking an item hides or shows its series
  // (hidden: the Set of hidden labels, drawn struck through).
  function legend(el, items, onToggle, hidden) {
    clear(el);
    for (const it of items) {
      const span = document.createElement('span');
      span.className = 'item' + (onToggle ? ' toggle' : '') + (hidden && hidden.has(it.label) ? ' off' : '');
      if (onToggle) { span.title = 'click to hide or show'; span.addEventListener('click', () => onToggle(it.label)); }
      const sw = document.createElement('span');
      sw.className = 'swatch' + (it.kind === 'line' || it.kind === undefined ? ' line' : '') + (it.dash ? ' dash' : '');
      sw.style.background = it.color;
      sw.style.borderColor = it.color;
      span.append(sw, document.createTextNode(it.label));
      el.appendChild(span);
    }
  }

  window.Charts = { line, downsample, stackedBars, groupedBars, sparkline, legend, empty, fmt, fmtTick, fmtBytes, fmtSeconds };
})();
