// The six-tabs experiment: `tabs` loops of `perTab` sequential POSTs each,
// all loops at once, from this browser with its cookies; first at the
// locked counter (/count), then at the unlocked one (/lossy/count).
'use strict';
(() => {
  const $ = (id) => document.getElementById(id);
  const box = $('experiment');
  const form = $('experiment-form');
  const button = $('run');
  const status = $('status');
  const SVG = 'http://www.w3.org/2000/svg';
  const W = 300, H = 90, PAD = 4;

  const sides = [
    { id: 'serialized', url: '/count', label: 'with the lock' },
    { id: 'lossy', url: '/lossy/count', label: 'without a lock' },
  ];

  function clamp(input) {
    const n = Math.round(Number(input.value));
    const lo = Number(input.min), hi = Number(input.max);
    const v = Number.isFinite(n) ? Math.min(hi, Math.max(lo, n)) : lo;
    input.value = v;
    return v;
  }

  async function call(url, method) {
    const response = await fetch(url, { method, credentials: 'same-origin', cache: 'no-store' });
    if (!response.ok) throw new Error(`${method} ${url}: HTTP ${response.status}`);
    return (await response.json()).hits;
  }

  function seconds(ms) {
    return ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(2)} s`;
  }

  // The count each response returned, in arrival order, against the
  // diagonal a run without lost updates follows.
  function sparkline(svg, counts, total) {
    const x = (i) => PAD + (total <= 1 ? 0 : (i / (total - 1)) * (W - 2 * PAD));
    const y = (v) => H - PAD - (total === 0 ? 0 : (v / total) * (H - 2 * PAD));
    const ideal = document.createElementNS(SVG, 'line');
    ideal.setAttribute('class', 'ideal');
    ideal.setAttribute('x1', x(0)); ideal.setAttribute('y1', y(1));
    ideal.setAttribute('x2', x(total - 1)); ideal.setAttribute('y2', y(total));
    const line = document.createElementNS(SVG, 'polyline');
    line.setAttribute('class', 'line');
    line.setAttribute('points', counts.map((v, i) => `${x(i).toFixed(1)},${y(v).toFixed(1)}`).join(' '));
    svg.replaceChildren(ideal, line);
  }

  function show(side, r) {
    $(`${side.id}-sent`).textContent = r.failed
      ? `${r.sent} (${r.failed} failed)`
      : `${r.sent}`;
    $(`${side.id}-final`).textContent = r.final === undefined ? '…' : `${r.final}`;
    const lost = $(`${side.id}-lost`);
    if (r.final === undefined) {
      lost.textContent = '…';
      lost.className = 'lost';
    } else {
      const n = r.answered - r.final;
      const pct = r.answered ? Math.round((100 * n) / r.answered) : 0;
      lost.textContent = n === 0 ? '0' : `${n} (${pct} %)`;
      lost.className = n === 0 ? 'lost none' : 'lost some';
      lost.dataset.lost = n;
    }
    $(`${side.id}-time`).textContent = r.ms === undefined ? '…' : seconds(r.ms);
    sparkline($(`${side.id}-spark`), r.counts, r.total);
  }

  async function run(side, tabs, perTab) {
    const r = { total: tabs * perTab, sent: 0, answered: 0, failed: 0, counts: [] };
    await call(`${side.url}/reset`, 'POST');
    let frame = 0;
    const redraw = () => { frame = 0; show(side, r); };
    show(side, r);
    const started = performance.now();
    const tab = async () => {
      for (let i = 0; i < perTab; i++) {
        r.sent++;
        try {
          r.counts.push(await call(side.url, 'POST'));
          r.answered++;
        } catch (e) {
          r.failed++;
        }
        if (!frame) frame = requestAnimationFrame(redraw);
      }
    };
    await Promise.all(Array.from({ length: tabs }, tab));
    r.ms = performance.now() - started;
    if (frame) cancelAnimationFrame(frame);
    r.final = await call(side.url, 'GET');
    show(side, r);
    return r;
  }

  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const tabs = clamp($('tabs'));
    const perTab = clamp($('per-tab'));
    button.disabled = true;
    box.dataset.state = 'running';
    try {
      const results = [];
      for (const side of sides) {
        status.textContent = `Running ${tabs} × ${perTab} requests ${side.label}…`;
        results.push(await run(side, tabs, perTab));
      }
      const [locked, lossy] = results;
      const lost = (r) => r.answered - r.final;
      const failed = locked.failed + lossy.failed;
      status.textContent =
        `Done. With the lock ${lost(locked)} of ${locked.answered} updates lost; ` +
        `without it ${lost(lossy)} of ${lossy.answered} lost` +
        (failed === 0
          ? ', though every request answered 200 OK.'
          : `. ${failed} requests failed and are not counted.`);
      box.dataset.state = 'done';
    } catch (e) {
      status.textContent = `The experiment stopped: ${e.message}`;
      box.dataset.state = 'error';
    } finally {
      button.disabled = false;
    }
  });
})();
