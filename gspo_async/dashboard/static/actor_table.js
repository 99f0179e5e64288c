// gspo-async dashboard: the actors table (one row per actor: state, applied and delivered versions, lag, rate
// with a sparkline, totals, busy fraction, leases, unacknowledged groups, heartbeat age). dashboard.js calls
// ActorTable.draw(chartEl, legendEl, ctx) with the records' accessors; charts.js gives the formatting.
'use strict';

(function () {
  const C = window.Charts;
  const num = v => typeof v === 'number' && isFinite(v);

  function draw(c, l, ctx) {
    const { now, latest, points, summary, palette, pctValue } = ctx;
    l.textContent = '';
    const ids = ctx.ids;
    if (ids.length === 0) return C.empty(c, 'no actor has reported yet');
    while (c.firstChild) c.removeChild(c.firstChild);
    c.style.height = 'auto';
    const table = document.createElement('table');
    table.className = 'actors';
    const cols = [['actor'], ['state', 'state'], ['applied'], ['delivered'], ['lag'], ['tokens/s'], ['trend'], ['tokens'], ['groups'],
      ['busy'], ['leases'], ['unacked'], ['heartbeat']];
    const head = table.createTHead().insertRow();
    for (const [name, cls] of cols) { const th = document.createElement('th'); th.textContent = name; if (cls) th.className = cls; head.appendChild(th); }
    const body = table.createTBody();
    const ended = !!(summary && summary.state === 'ended');
    const silent = !!(summary && summary.state === 'stopped');  // no final record, no recent one
    ids.forEach((id, i) => {
      const k = suffix => `actor/${id}/${suffix}`;
      const present = now && Object.keys(now).some(key => key.startsWith(`actor/${id}/`));
      // A departed actor keeps its last reported values, dimmed; its rate is no longer current.
      const v = suffix => { const x = present ? now[k(suffix)] : latest(k(suffix)); return num(x) ? x : null; };
      // A finished run's actors are not alive any more, whatever their last heartbeat said.
      const alive = !ended && !silent && present && v('alive') !== 0;
      const row = body.insertRow();
      if (!alive) row.className = 'gone';
      const cell = (text, cls) => { const td = row.insertCell(); td.textContent = text; if (cls) td.className = cls; return td; };
      cell(id);
      const st = row.insertCell(); st.className = 'state';
      const pill = document.createElement('span'); pill.className = 'pill ' + (ended ? 'ended' : alive ? 'alive' : 'gone');
      pill.textContent = ended ? 'run ended' : silent && present ? 'learner silent' : alive ? 'alive' : 'gone';
      st.appendChild(pill);
      cell(v('version') === null ? '–' : String(v('version')));
      cell(v('delivered_version') === null || v('delivered_version') < 0 ? '–' : String(v('delivered_version')));
      const lag = v('version_lag');
      cell(lag === null ? '–' : String(lag), lag === null ? '' : `lag-${Math.min(3, Math.max(0, Math.round(lag)))}`);
      cell(alive ? C.fmt(v('tokens_per_s')) : '–');
      const trend = row.insertCell();
      trend.appendChild(C.sparkline(points(k('tokens_per_s')).slice(-80).map(p => p[1]), palette[i % palette.length]));
      cell(C.fmt(v('tokens'))); cell(C.fmt(v('groups')));
      cell(v('busy_frac') === null ? '–' : pctValue(v('busy_frac')));
      cell(C.fmt(v('leases'))); cell(C.fmt(v('pending_groups')));
      cell(alive ? C.fmtSeconds(v('heartbeat_age_s')) : ended ? '–' : 'left');
    });
    c.appendChild(table);
    return ids.length;
  }

  window.ActorTable = { draw };
})();
