// Charts of the server's own counters: `/metrics` (Prometheus text) sampled by the
// browser, rates and latencies computed from the differences between samples, drawn as
// hand-written SVG line charts.
'use strict';

const METRIC = 'orchestrator_provision_duration_seconds';

// One sample of the provision histogram: {t, count, sum, buckets: [[le, n]...]}, summed
// over every outcome, plus counts per outcome.
function parseProvision(text, t) {
  const s = { t, count: 0, sum: 0, byOutcome: {}, buckets: new Map() };
  for (const line of text.split('\n')) {
    if (!line.startsWith(METRIC)) { continue; }
    const m = line.match(/^(\w+)(?:\{([^}]*)\})?\s+(\S+)/);
    if (!m) { continue; }
    const [, name, labels, value] = m;
    const v = Number(value);
    const lab = {};
    (labels || '').replace(/(\w+)="((?:[^"\\]|\\.)*)"/g, (_, k, val) => { lab[k] = val; return ''; });
    if (name === METRIC + '_count') { s.count += v; s.byOutcome[lab.outcome || ''] = (s.byOutcome[lab.outcome || ''] || 0) + v; }
    else if (name === METRIC + '_sum') { s.sum += v; }
    else if (name === METRIC + '_bucket') {
      const le = lab.le === '+Inf' ? Infinity : Number(lab.le);
      s.buckets.set(le, (s.buckets.get(le) || 0) + v);
    }
  }
  return s;
}

// The q-quantile of the observations between two samples, from their bucket deltas
// (linear inside a bucket, as Prometheus' histogram_quantile); null when there were none.
function quantile(q, a, b) {
  const les = [...b.buckets.keys()].sort((x, y) => x - y);
  const d = les.map((le) => [le, (b.buckets.get(le) || 0) - (a.buckets.get(le) || 0)]);
  const total = d.length ? d[d.length - 1][1] : 0;
  if (total <= 0) { return null; }
  const rank = q * total;
  let prevLe = 0; let prevN = 0;
  for (const [le, n] of d) {
    if (n >= rank) {
      if (le === Infinity) { return prevLe; }
      return prevLe + (le - prevLe) * ((rank - prevN) / Math.max(1e-9, n - prevN));
    }
    prevLe = le; prevN = n;
  }
  return prevLe;
}

// Per-interval figures between consecutive samples.
function provisionSeries(samples) {
  const rate = []; const mean = []; const p50 = []; const p95 = [];
  for (let i = 1; i < samples.length; i++) {
    const a = samples[i - 1]; const b = samples[i];
    const dt = (b.t - a.t) / 1000;
    const dc = b.count - a.count;
    if (dt <= 0 || dc < 0) { continue; } // a restart reset the counters
    rate.push([b.t, dc / dt]);
    if (dc > 0) {
      mean.push([b.t, (b.sum - a.sum) / dc]);
      p50.push([b.t, quantile(0.5, a, b)]);
      p95.push([b.t, quantile(0.95, a, b)]);
    }
  }
  return { rate, mean, p50, p95 };
}

const SVGNS = 'http://www.w3.org/2000/svg';
function svgEl(tag, attrs, text) {
  const e = document.createElementNS(SVGNS, tag);
  for (const k in attrs) { e.setAttribute(k, attrs[k]); }
  if (text !== undefined) { e.textContent = text; }
  return e;
}

// Draws series ([{name, points: [[t, v]]}]) into `svg`; `unit` labels the y axis.
function lineChart(svg, series, unit) {
  const W = 600; const H = 200; const L = 46; const R = 10; const T = 10; const B = 22;
  svg.setAttribute('viewBox', `0 0 ${W} ${H}`);
  svg.setAttribute('preserveAspectRatio', 'none');
  svg.replaceChildren();
  const pts = series.flatMap((s) => s.points).filter((p) => p[1] !== null);
  const now = Date.now();
  const t0 = pts.length ? Math.min(...pts.map((p) => p[0])) : now - 60000;
  const t1 = Math.max(now, t0 + 1000);
  const vmax = Math.max(1e-9, ...pts.map((p) => p[1])) * 1.1;
  const x = (t) => L + ((t - t0) / (t1 - t0)) * (W - L - R);
  const y = (v) => T + (1 - v / vmax) * (H - T - B);
  for (let k = 0; k <= 4; k++) {
    const v = (vmax * k) / 4;
    svg.append(svgEl('line', { class: 'grid', x1: L, x2: W - R, y1: y(v), y2: y(v) }));
    svg.append(svgEl('text', { x: 2, y: y(v) + 3 }, v < 10 ? v.toFixed(2) : v.toFixed(0)));
  }
  svg.append(svgEl('text', { x: L, y: H - 6 }, `${Math.round((t1 - t0) / 1000)} s window, ${unit}`));
  series.forEach((s, i) => {
    const p = s.points.filter((q) => q[1] !== null);
    if (!p.length) { return; }
    const d = p.map((q, j) => `${j ? 'L' : 'M'}${x(q[0]).toFixed(1)},${y(q[1]).toFixed(1)}`).join(' ');
    svg.append(svgEl('path', { class: 's' + i, d }));
  });
}

window.FuseCharts = { parseProvision, provisionSeries, quantile, lineChart };
