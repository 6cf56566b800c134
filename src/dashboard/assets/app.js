// The dashboard page: the job list, a job's page and the create form, all live.
//
// No framework and no build step, so that there is nothing to keep up to date but this file.
// Every element is made by `el`/`svg`, which set text through `textContent` only: a job's
// annotations, log lines or the API server's messages are never read as markup. The server
// sends a Content-Security-Policy that allows no inline script on top of that.

const WRITE = { 'x-trainjob-dashboard': 'page' };
const SVG = 'http://www.w3.org/2000/svg';
const main = document.getElementById('main');
const who = document.getElementById('who');
let session = { mode: 'kubeconfig', signedIn: true, namespace: 'default' };
// Closes what the current view keeps open (event streams, timers) when the view changes.
let leave = () => {};

// ---------------------------------------------------------------------------------------------
// Building blocks

function build(node, props, children) {
  for (const [key, value] of Object.entries(props || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'text') node.textContent = String(value);
    else if (key.startsWith('on') && typeof value === 'function') node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? '' : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** An HTML element: `el('td', {class: 'num', text: '3'})`. */
function el(tag, props, ...children) {
  return build(document.createElement(tag), props, children);
}

/** Puts `children` (nested lists; null and false left out) in place of what `node` holds. */
function fill(node, ...children) {
  node.replaceChildren(...children.flat(Infinity).filter((c) => c !== undefined && c !== null && c !== false));
}

/** An SVG element. */
function svg(tag, props, ...children) {
  return build(document.createElementNS(SVG, tag), props, children);
}

const enc = encodeURIComponent;
const jobsPath = (ns) => `/api/namespaces/${enc(ns)}/trainjobs`;

/** One API call; `{ok, status, data}`. A 401 sends the person to the sign-in page. */
async function call(method, path, { body, type, signIn = true } = {}) {
  const headers = method === 'GET' ? {} : { ...WRITE };
  if (body !== undefined) headers['content-type'] = type || 'application/json';
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      credentials: 'same-origin',
      body: body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body),
    });
  } catch (e) {
    return { ok: false, status: 0, data: { message: `The dashboard's server did not answer (${e.message}).` } };
  }
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = { message: text };
  }
  if (response.status === 401 && signIn && session.mode === 'token') {
    session.signedIn = false;
    signInView(data && data.message);
  }
  return { ok: response.ok, status: response.status, data };
}

function age(time) {
  if (!time) return '';
  const s = Math.max(0, (Date.now() - Date.parse(time)) / 1000);
  return duration(s);
}

function duration(s) {
  if (s < 60) return `${Math.round(s)}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${s < 600 ? `${Math.round(s % 60)}s` : ''}`;
  if (s < 86400) return `${Math.floor(s / 3600)}h${Math.floor((s % 3600) / 60)}m`;
  return `${Math.floor(s / 86400)}d${Math.floor((s % 86400) / 3600)}h`;
}

const clock = (time) => (time ? new Date(time).toLocaleString() : '');
const badge = (phase) => el('span', { class: `badge phase-${phase}`, text: phase });

function note(kind, title, message, ...more) {
  return el('div', { class: `note ${kind}`, role: kind === 'failed' ? 'alert' : 'status' },
    el('strong', { text: title }), message ? el('span', { text: message }) : null, ...more);
}

/** A refusal (`{code, reason, message, fields}`) as a note. */
function problemNote(problem, title = 'That did not work') {
  const fields = (problem && problem.fields) || [];
  return note('failed', title, (problem && problem.message) || 'No answer.',
    fields.length ? el('ul', {}, fields.map((f) => el('li', {}, el('code', { text: f.field }), ': ', f.message))) : null);
}

function table(caption, headings, rows, props = {}) {
  return el('table', props,
    el('caption', { text: caption }),
    el('thead', {}, el('tr', {}, headings.map((h) => el('th', { scope: 'col', class: /^(Restarts|Count|CPU|Memory|Index|Attempt)$/.test(h) ? 'num' : null, text: h })))),
    el('tbody', {}, rows));
}

function progressCell(view) {
  const p = view.progress;
  if (!p || p.percent === null || p.percent === undefined) return el('span', { class: 'muted', text: '—' });
  const left = p.remainingSeconds ? el('small', { class: 'muted', text: `~${duration(p.remainingSeconds)} left` }) : null;
  return el('span', { class: 'progress' },
    el('progress', { max: 100, value: p.percent, 'aria-label': `Progress of ${view.name}` }),
    el('span', { class: 'percent', text: `${p.percent}%` }), left);
}

function nodesCell(nodes) {
  const dots = nodes.wanted <= 16
    ? el('span', { class: 'dots', 'aria-hidden': 'true' },
      Array.from({ length: nodes.wanted }, (_, i) => el('span', { class: i < nodes.ready ? 'dot on' : 'dot' })))
    : null;
  return el('span', { title: `${nodes.ready} of ${nodes.wanted} MPI hosts ready` }, dots, `${nodes.ready}/${nodes.wanted}`);
}

function setTitle(text) {
  document.title = `${text} · TrainJobs`;
}

function heading(text, ...more) {
  return el('h1', { tabindex: -1 }, text, ...more);
}

// ---------------------------------------------------------------------------------------------
// The job list: one row per job, kept live by the namespace's feed.

function listView(ns) {
  setTitle(`Jobs in ${ns}`);
  const live = el('span', { class: 'live off', text: 'Connecting…' });
  const tbody = el('tbody');
  const empty = el('p', { class: 'muted', hidden: true },
    `No TrainJobs in ${ns} yet. `, el('a', { href: `#/${enc(ns)}/new`, text: 'Create one' }),
    ' here, or apply one with kubectl.');
  const trouble = el('div');
  fill(main,
    heading(`TrainJobs in ${ns}`),
    el('div', { class: 'toolbar' }, live, el('a', { href: `#/${enc(ns)}/new`, text: 'New job' })),
    trouble,
    el('table', { id: 'jobs' },
      el('caption', { text: 'Every TrainJob of the namespace, newest first; updates as it happens.' }),
      el('thead', {}, el('tr', {}, ['Name', 'Phase', 'Progress', 'Nodes ready', 'Restarts', 'Age', 'Reason']
        .map((h) => el('th', { scope: 'col', class: h === 'Restarts' ? 'num' : null, text: h }))),
      ), tbody),
    empty);

  const rows = new Map(); // name -> {listed, tr}
  const row = (listed) => {
    const v = listed;
    const d = v.diagnosis;
    return el('tr', { 'data-job': v.name, 'data-phase': v.phase },
      el('td', {}, el('a', { href: `#/${enc(ns)}/jobs/${enc(v.name)}`, text: v.name })),
      el('td', { class: 'phase' }, badge(v.phase)),
      el('td', { class: 'progress-cell' }, progressCell(v)),
      el('td', { class: 'nodes' }, nodesCell(v.nodes)),
      el('td', { class: 'num', text: v.restarts }),
      el('td', { class: 'age', 'data-created': v.created || '', text: age(v.created) }),
      el('td', { class: 'reason' }, d ? [el('span', { text: d.reason }), el('small', { text: d.message })] : ''));
  };
  const newer = (a, b) => Date.parse(b.created || 0) - Date.parse(a.created || 0) || a.name.localeCompare(b.name);
  const put = (listed) => {
    const old = rows.get(listed.name);
    const tr = row(listed);
    rows.set(listed.name, { listed, tr });
    if (old) {
      old.tr.replaceWith(tr);
    } else {
      const before = [...rows.values()].filter((r) => r.tr !== tr && r.tr.isConnected && newer(listed, r.listed) < 0)
        .sort((a, b) => newer(a.listed, b.listed))[0];
      tbody.insertBefore(tr, before ? before.tr : null);
    }
    empty.hidden = rows.size > 0;
  };
  const all = (items) => {
    rows.clear();
    tbody.replaceChildren();
    for (const item of [...items].sort(newer)) {
      const tr = row(item);
      rows.set(item.name, { listed: item, tr });
      tbody.append(tr);
    }
    empty.hidden = rows.size > 0;
  };

  const feed = new EventSource(`/api/namespaces/${enc(ns)}/feed`);
  feed.addEventListener('open', () => { live.className = 'live'; live.textContent = 'Live'; trouble.replaceChildren(); });
  feed.addEventListener('snapshot', (e) => all(JSON.parse(e.data).items));
  feed.addEventListener('job', (e) => put(JSON.parse(e.data)));
  feed.addEventListener('gone', (e) => {
    const name = JSON.parse(e.data).name;
    const r = rows.get(name);
    if (r) r.tr.remove();
    rows.delete(name);
    empty.hidden = rows.size > 0;
  });
  feed.addEventListener('problem', (e) => fill(trouble, note('failed', 'Live updates stopped', JSON.parse(e.data).message)));
  feed.addEventListener('error', async () => {
    live.className = 'live off';
    live.textContent = 'Reconnecting…';
    if (feed.readyState !== EventSource.CLOSED) return;
    // The server refused the feed: the list says why, in the API's words.
    const r = await call('GET', jobsPath(ns));
    if (!r.ok && r.status !== 401) {
      live.textContent = 'Not live';
      fill(trouble, problemNote(r.data, `Cannot show the jobs of ${ns}`));
    }
  });
  const ages = setInterval(() => {
    for (const cell of tbody.querySelectorAll('td.age')) cell.textContent = age(cell.dataset.created);
  }, 10000);
  leave = () => { feed.close(); clearInterval(ages); };
}

// ---------------------------------------------------------------------------------------------
// Charts (SVG, drawn here: no chart library)

const COLOURS = ['#0a58ca', '#bc4c00', '#116329', '#8250df', '#a40e26', '#1b7c83'];

/** Bars from the job's creation to each milestone. */
function timelineChart(view) {
  const points = view.timeline.map((m) => ({ ...m, t: Date.parse(m.at) })).filter((m) => !Number.isNaN(m.t));
  if (!points.length) return el('p', { class: 'muted', text: 'Nothing has happened yet.' });
  const t0 = points[0].t;
  const ended = view.phase === 'Complete' || view.phase === 'Failed';
  const tEnd = Math.max(ended ? points[points.length - 1].t : Date.now(), t0 + 1000);
  const width = 720; const left = 130; const right = 80; const rowH = 24; const top = 10;
  const x = (t) => left + ((t - t0) / (tEnd - t0)) * (width - left - right);
  const height = top + points.length * rowH + 24;
  const colour = (what) => ({ Failed: '#a40e26', Complete: '#116329', Restarted: '#bc4c00' }[what] || '#0a58ca');
  const summary = points.map((p) => `${p.what} after ${duration((p.t - t0) / 1000)}`).join(', ');
  return svg('svg', { class: 'chart timeline', viewBox: `0 0 ${width} ${height}`, role: 'img', 'aria-label': `Timeline: ${summary}` },
    svg('title', { text: `Timeline: ${summary}` }),
    points.map((p, i) => {
      const y = top + i * rowH;
      return svg('g', { 'data-milestone': p.what },
        svg('text', { x: left - 8, y: y + 15, 'text-anchor': 'end', text: p.what }),
        svg('rect', { x: left, y: y + 5, width: Math.max(2, x(p.t) - left), height: 12, rx: 3, fill: colour(p.what), opacity: 0.85 }),
        svg('text', { x: x(p.t) + 6, y: y + 15, text: `+${duration((p.t - t0) / 1000)}` }),
        p.detail ? svg('title', { text: p.detail }) : null);
    }),
    svg('line', { class: 'axis', x1: left, x2: left, y1: top, y2: height - 20 }),
    svg('text', { x: left, y: height - 6, text: clock(points[0].at) }),
    ended ? null : svg('text', { x: width - right, y: height - 6, 'text-anchor': 'end', text: 'now' }));
}

/** One small line chart per numeric metric, from the reports seen on this page. */
function metricCharts(history) {
  const names = [...new Set(history.flatMap((s) => Object.keys(s.values)))];
  if (!names.length) return null;
  return el('div', { class: 'grid' }, names.map((name, i) => {
    const pts = history.filter((s) => name in s.values).map((s) => ({ t: s.t, v: s.values[name] }));
    const width = 380; const height = 150; const pad = { l: 48, r: 12, t: 12, b: 24 };
    const [t0, t1] = [pts[0].t, Math.max(pts[pts.length - 1].t, pts[0].t + 1)];
    let [lo, hi] = [Math.min(...pts.map((p) => p.v)), Math.max(...pts.map((p) => p.v))];
    if (hi === lo) { hi += Math.abs(hi) * 0.1 || 1; lo -= Math.abs(lo) * 0.1 || 1; }
    const x = (t) => pad.l + ((t - t0) / (t1 - t0)) * (width - pad.l - pad.r);
    const y = (v) => height - pad.b - ((v - lo) / (hi - lo)) * (height - pad.t - pad.b);
    const colour = COLOURS[i % COLOURS.length];
    const last = pts[pts.length - 1].v;
    const label = `${name}: ${pts.length} report${pts.length === 1 ? '' : 's'}, from ${fmt(pts[0].v)} to ${fmt(last)}`;
    return el('figure', { class: 'metric', 'data-metric': name, 'data-points': pts.length },
      svg('svg', { class: 'chart', viewBox: `0 0 ${width} ${height}`, role: 'img', 'aria-label': label },
        svg('title', { text: label }),
        svg('line', { class: 'grid', x1: pad.l, x2: width - pad.r, y1: y(hi), y2: y(hi) }),
        svg('line', { class: 'axis', x1: pad.l, x2: width - pad.r, y1: y(lo), y2: y(lo) }),
        svg('text', { x: pad.l - 6, y: y(hi) + 4, 'text-anchor': 'end', text: fmt(hi) }),
        svg('text', { x: pad.l - 6, y: y(lo) + 4, 'text-anchor': 'end', text: fmt(lo) }),
        svg('text', { x: pad.l, y: height - 6, text: new Date(t0).toLocaleTimeString() }),
        svg('text', { x: width - pad.r, y: height - 6, 'text-anchor': 'end', text: new Date(t1).toLocaleTimeString() }),
        svg('polyline', { fill: 'none', stroke: colour, 'stroke-width': 2, points: pts.map((p) => `${x(p.t)},${y(p.v)}`).join(' ') }),
        pts.map((p) => svg('circle', { cx: x(p.t), cy: y(p.v), r: 3, fill: colour }))),
      el('figcaption', {}, swatch(colour), `${name}: ${fmt(last)}`));
  }));
}

function swatch(colour) {
  const s = el('span', { class: 'swatch', 'aria-hidden': 'true' });
  s.style.background = colour; // CSSOM, which the Content-Security-Policy allows (style attributes it does not)
  return s;
}

function fmt(v) {
  return Math.abs(v) >= 1000 || v === Math.round(v) ? String(Math.round(v * 100) / 100) : v.toPrecision(3);
}

/** The metric reports seen for a job, kept for the browser tab's life. */
function history(ns, name) {
  const key = `trainjob-metrics:${ns}/${name}`;
  let samples = [];
  try { samples = JSON.parse(sessionStorage.getItem(key)) || []; } catch { samples = []; }
  return {
    samples: () => samples,
    add(progress) {
      if (!progress || !progress.updated) return false;
      const t = Date.parse(progress.updated);
      if (samples.length && samples[samples.length - 1].t >= t) return false;
      const values = {};
      for (const [k, v] of progress.metrics) {
        const n = Number(v);
        if (v !== '' && Number.isFinite(n)) values[k] = n;
      }
      samples.push({ t, values });
      samples = samples.slice(-500);
      try { sessionStorage.setItem(key, JSON.stringify(samples)); } catch { /* full: keep it in memory */ }
      return true;
    },
  };
}

// ---------------------------------------------------------------------------------------------
// A job's page

async function jobView(ns, name) {
  setTitle(name);
  fill(main, heading(name), el('p', { class: 'muted', text: 'Loading…' }));
  const first = await call('GET', `${jobsPath(ns)}/${enc(name)}`);
  if (!first.ok) {
    if (first.status !== 401) fill(main, heading(name), problemNote(first.data, `Cannot show ${name}`), el('a', { href: `#/${enc(ns)}`, text: `Back to the jobs of ${ns}` }));
    return;
  }
  const phase = el('span', { id: 'phase' });
  const del = el('button', { class: 'danger', id: 'delete', type: 'button', text: 'Delete' });
  const live = el('span', { class: 'live off', text: 'Connecting…' });
  const parts = Object.fromEntries(['diagnosis', 'summary', 'metrics', 'timeline', 'pods', 'conditions', 'events', 'labels', 'flash']
    .map((id) => [id, el('div', { id })]));
  const logs = logPane(ns, name);
  fill(main,
    el('p', {}, el('a', { href: `#/${enc(ns)}`, text: `← Jobs in ${ns}` })),
    heading(name, phase, del),
    el('div', { class: 'toolbar' }, live),
    parts.flash, parts.diagnosis,
    el('div', { class: 'grid' },
      el('section', { 'aria-labelledby': 'h-summary' }, el('h2', { id: 'h-summary', text: 'Summary' }), parts.summary),
      el('section', { 'aria-labelledby': 'h-timeline' }, el('h2', { id: 'h-timeline', text: 'Timeline' }), parts.timeline)),
    el('section', { 'aria-labelledby': 'h-metrics' }, el('h2', { id: 'h-metrics', text: 'Reported metrics' }), parts.metrics),
    el('section', { 'aria-labelledby': 'h-pods' }, el('h2', { id: 'h-pods', text: 'Pods' }), parts.pods),
    el('section', { 'aria-labelledby': 'h-logs' }, el('h2', { id: 'h-logs', text: 'Logs' }), logs.node),
    el('section', { 'aria-labelledby': 'h-conditions' }, el('h2', { id: 'h-conditions', text: 'Conditions' }), parts.conditions),
    el('section', { 'aria-labelledby': 'h-events' }, el('h2', { id: 'h-events', text: 'Events' }), parts.events),
    el('section', { 'aria-labelledby': 'h-labels' }, el('h2', { id: 'h-labels', text: 'Labels and annotations' }), parts.labels));

  const seen = history(ns, name);
  let usage = { available: false, pods: [] };
  let view = first.data;
  const render = () => {
    fill(phase, badge(view.phase));
    phase.dataset.phase = view.phase;
    const d = view.diagnosis;
    fill(parts.diagnosis, d
      ? note(d.failed ? 'failed' : 'waiting', d.failed ? `Failed: ${d.reason}` : `Waiting: ${d.reason}`, d.message)
      : '');
    const p = view.progress;
    fill(parts.summary, el('dl', { class: 'facts' },
      el('dt', { text: 'Runtime' }), el('dd', { text: view.runtime }),
      el('dt', { text: 'Nodes ready' }), el('dd', {}, nodesCell(view.nodes)),
      el('dt', { text: 'Progress' }), el('dd', {}, progressCell(view)),
      el('dt', { text: 'Gang restarts' }), el('dd', { text: view.restarts }),
      el('dt', { text: 'Created' }), el('dd', { text: `${clock(view.created)} (${age(view.created)} ago)` }),
      p && p.updated ? [el('dt', { text: 'Last report' }), el('dd', { text: `${age(p.updated)} ago` })] : null));
    fill(parts.timeline, timelineChart(view));
    seen.add(p);
    fill(parts.metrics, p && p.metrics.length
      ? [metricCharts(seen.samples()),
        el('p', { class: 'muted', text: 'The charts show the reports this browser tab has seen.' }),
        table('The latest report', ['Metric', 'Value'], p.metrics.map(([k, v]) => el('tr', {}, el('td', { text: k }), el('td', { class: 'num', text: v }))), { id: 'latest-metrics' })]
      : el('p', { class: 'muted', text: 'No metrics reported yet.' }));
    const used = new Map(usage.pods.map((u) => [u.pod, u]));
    const heads = ['Pod', 'Role', 'Index', 'Attempt', 'Node', 'State', 'Ready', 'Restarts', 'Reason'];
    if (usage.available) heads.push('CPU', 'Memory');
    fill(parts.pods, view.pods.length
      ? table('The current attempt first: launcher, then workers by index.', heads, view.pods.map((pod) => {
        const u = used.get(pod.name);
        return el('tr', { 'data-pod': pod.name },
          el('td', { text: pod.name }), el('td', { text: pod.role }), el('td', { class: 'num', text: pod.index ?? '' }),
          el('td', { class: 'num', text: pod.attempt ?? '' }), el('td', { text: pod.node || '—' }), el('td', { text: pod.state }),
          el('td', { text: pod.ready ? 'yes' : 'no' }), el('td', { class: 'num', text: pod.restarts }), el('td', { text: pod.reason || '' }),
          usage.available ? [el('td', { class: 'num cpu', text: u ? cpu(u.cpuMillicores) : '—' }), el('td', { class: 'num memory', text: u ? bytes(u.memoryBytes) : '—' })] : null);
      }), { id: 'pods-table' })
      : el('p', { class: 'muted', text: 'No pods (yet, or any more).' }));
    fill(parts.conditions, view.conditions.length
      ? table('What the operator concluded, and what to change.', ['Type', 'Status', 'Reason', 'Message', 'Since'],
        view.conditions.map((c) => el('tr', { 'data-condition': c.type },
          el('td', { text: c.type }), el('td', { text: c.status }), el('td', { text: c.reason }),
          el('td', { class: 'reason', text: c.message }), el('td', { text: age(c.since) + ' ago' }))))
      : el('p', { class: 'muted', text: 'No conditions yet.' }));
    fill(parts.events, view.events && view.events.length
      ? table('Oldest first.', ['When', 'Type', 'Reason', 'Message', 'Count'],
        view.events.map((e) => el('tr', {},
          el('td', { text: e.at ? `${age(e.at)} ago` : '' }), el('td', { text: e.type }), el('td', { text: e.reason }),
          el('td', { class: 'reason', text: e.message }), el('td', { class: 'num', text: e.count }))), { id: 'events-table' })
      : el('p', { class: 'muted', text: 'No Events.' }));
    const pairs = (m) => Object.entries(m || {}).map(([k, v]) => [el('dt', { text: k }), el('dd', { text: v })]);
    fill(parts.labels, Object.keys(view.labels || {}).length + Object.keys(view.annotations || {}).length
      ? el('dl', { class: 'facts', id: 'labels-list' }, pairs(view.labels), pairs(view.annotations))
      : el('p', { class: 'muted', text: 'None.' }));
  };
  render();

  // Another look at the job whenever the feed says it changed (at most one at a time).
  let asking = null; let again = false;
  const refresh = async () => {
    if (asking) { again = true; return; }
    asking = call('GET', `${jobsPath(ns)}/${enc(name)}`);
    const r = await asking;
    asking = null;
    if (r.ok) { view = r.data; render(); }
    if (Date.now() - measured > 5000) measure();
    if (again) { again = false; refresh(); }
  };
  const feed = new EventSource(`/api/namespaces/${enc(ns)}/feed?job=${enc(name)}`);
  feed.addEventListener('open', () => { live.className = 'live'; live.textContent = 'Live'; });
  feed.addEventListener('error', () => { live.className = 'live off'; live.textContent = 'Reconnecting…'; });
  feed.addEventListener('job', (e) => { if (JSON.parse(e.data).name === name) refresh(); });
  feed.addEventListener('snapshot', () => refresh());
  feed.addEventListener('gone', (e) => {
    if (JSON.parse(e.data).name !== name) return;
    fill(parts.flash, note('info', 'This job was deleted.', null, ' ', el('a', { href: `#/${enc(ns)}`, text: 'Back to the list' })));
    feed.close();
    live.className = 'live off'; live.textContent = 'Deleted';
  });
  let measured = 0;
  const measure = async () => {
    measured = Date.now();
    const r = await call('GET', `${jobsPath(ns)}/${enc(name)}/usage`);
    if (r.ok && (r.data.available || usage.available)) { usage = r.data; render(); }
    // Whether the cluster answered with usage: the columns are there, or hidden for good reason.
    parts.pods.dataset.usage = usage.available ? 'shown' : 'absent';
  };
  measure();
  const measuring = setInterval(measure, 10000);
  del.addEventListener('click', () => confirmDelete(ns, name, parts.flash));
  leave = () => { feed.close(); logs.close(); clearInterval(measuring); };
}

const cpu = (m) => (m >= 1000 ? `${(m / 1000).toFixed(2)} cores` : `${Math.round(m)}m`);
const bytes = (b) => (b >= 1 << 30 ? `${(b / (1 << 30)).toFixed(2)} GiB` : `${(b / (1 << 20)).toFixed(1)} MiB`);

/** The job's merged logs, followed live until the job ends. */
function logPane(ns, name) {
  const pane = el('div', { class: 'logs', id: 'logs', role: 'log', tabindex: 0, 'aria-label': `Logs of ${name}` });
  const state = el('span', { class: 'live off', text: 'Connecting…' });
  const resume = el('button', { type: 'button', hidden: true, text: 'Follow again' });
  let stream = null;
  let lines = 0;
  const start = () => {
    pane.replaceChildren();
    lines = 0;
    resume.hidden = true;
    stream = new EventSource(`${jobsPath(ns)}/${enc(name)}/logs?follow=true`);
    stream.addEventListener('open', () => { state.className = 'live'; state.textContent = 'Following'; });
    stream.addEventListener('line', (e) => {
      const line = JSON.parse(e.data);
      const bottom = pane.scrollTop + pane.clientHeight >= pane.scrollHeight - 8;
      pane.append(el('div', { class: 'line' },
        el('span', { class: line.prefix.startsWith('[launcher') ? 'p launcher' : 'p', text: line.prefix }), ' ', line.text));
      if (++lines > 5000) pane.firstChild.remove();
      if (bottom) pane.scrollTop = pane.scrollHeight;
    });
    stream.addEventListener('end', () => {
      stream.close();
      state.className = 'live off';
      state.textContent = 'The job ended: these are all its lines';
    });
    stream.addEventListener('problem', (e) => {
      pane.append(el('div', { class: 'line' }, `(following stopped: ${JSON.parse(e.data).message})`));
    });
    // A dropped stream is not reopened by itself: it would start again from the first line.
    stream.addEventListener('error', () => {
      if (stream.readyState === EventSource.CLOSED && !state.textContent.startsWith('The job ended')) {
        state.className = 'live off'; state.textContent = 'Not following';
      } else if (stream.readyState !== EventSource.CLOSED) {
        stream.close(); state.className = 'live off'; state.textContent = 'Interrupted';
      }
      resume.hidden = false;
    });
  };
  resume.addEventListener('click', start);
  start();
  return {
    node: el('div', {}, el('div', { class: 'toolbar' }, state, resume), pane),
    close: () => stream && stream.close(),
  };
}

function confirmDelete(ns, name, flash) {
  const dialog = document.getElementById('confirm');
  document.getElementById('confirm-title').textContent = `Delete ${name}?`;
  document.getElementById('confirm-text').textContent =
    `TrainJob ${name} in ${ns} and its pods are deleted at once: running training stops and its logs go with its pods.`;
  dialog.returnValue = '';
  dialog.addEventListener('close', async () => {
    if (dialog.returnValue !== 'delete') return;
    const r = await call('DELETE', `${jobsPath(ns)}/${enc(name)}`);
    if (r.ok) location.hash = `#/${enc(ns)}`;
    else if (r.status !== 401) fill(flash, problemNote(r.data, `Could not delete ${name}`));
  }, { once: true });
  dialog.showModal();
}

// ---------------------------------------------------------------------------------------------
// The create form, and the same job as YAML

/** A value as YAML (a TrainJob's shapes: maps, lists, strings, numbers). */
function yaml(value, pad = '') {
  const nested = (v) => v !== null && typeof v === 'object';
  if (Array.isArray(value)) {
    if (!value.length) return ' []';
    return value.map((v) => (nested(v) ? `\n${pad}- ${yaml(v, `${pad}  `).trimStart()}` : `\n${pad}- ${scalar(v)}`)).join('');
  }
  if (nested(value)) {
    const keys = Object.keys(value);
    if (!keys.length) return ' {}';
    return keys.map((k) => (nested(value[k]) ? `\n${pad}${k}:${yaml(value[k], `${pad}  `)}` : `\n${pad}${k}: ${scalar(value[k])}`)).join('');
  }
  return ` ${scalar(value)}`;
}
// JSON's strings are YAML's double-quoted strings.
const scalar = (v) => (typeof v === 'string' ? JSON.stringify(v) : String(v));

const FIELDS = [
  ['name', 'Name', 'metadata.name', 'Lower-case letters, digits and -, at most 63.'],
  ['runtime', 'Runtime', 'spec.runtimeRef', 'What the job runs on: its MPI, image and command unless you change them.'],
  ['nodes', 'Nodes', 'spec.trainer.numNodes', 'MPI hosts (pods) to run on.'],
  ['image', 'Image', 'spec.trainer.image', "Empty: the runtime's image."],
  ['command', 'Command', 'spec.trainer.command', "One argument per line, e.g. mpirun, -n, 4, python3, train.py. Empty: the runtime's command."],
  ['env', 'Environment', 'spec.trainer.env', 'NAME=value, one per line.'],
  ['cpu', 'CPU per node', 'spec.trainer.resourcesPerNode', 'e.g. 2 or 500m. Empty: no limit.'],
  ['memory', 'Memory per node', 'spec.trainer.resourcesPerNode', 'e.g. 4Gi. Empty: no limit.'],
];

async function createView(ns) {
  setTitle(`New job in ${ns}`);
  const runtimes = await call('GET', `/api/namespaces/${enc(ns)}/runtimes`);
  if (runtimes.status === 401) return;
  const items = (runtimes.ok && runtimes.data.items) || [];
  const control = {
    name: el('input', { id: 'f-name', autocomplete: 'off', spellcheck: 'false', required: true }),
    runtime: items.length
      ? el('select', { id: 'f-runtime' }, items.map((r) => el('option', { value: `${r.kind}/${r.name}`, text: `${r.name} (${r.kind}${r.numNodes ? `, ${r.numNodes} nodes` : ''})` })))
      : el('input', { id: 'f-runtime', value: 'ClusterTrainingRuntime/mpi-openmpi', spellcheck: 'false' }),
    nodes: el('input', { id: 'f-nodes', type: 'number', min: 1, value: 2 }),
    image: el('input', { id: 'f-image', spellcheck: 'false' }),
    command: el('textarea', { id: 'f-command', spellcheck: 'false' }),
    env: el('textarea', { id: 'f-env', spellcheck: 'false' }),
    cpu: el('input', { id: 'f-cpu', spellcheck: 'false' }),
    memory: el('input', { id: 'f-memory', spellcheck: 'false' }),
  };
  const errors = {};
  const rows = FIELDS.map(([key, label, , hint]) => {
    errors[key] = el('div', { class: 'error', id: `e-${key}`, hidden: true });
    control[key].setAttribute('aria-describedby', `h-${key} e-${key}`);
    return [el('label', { for: control[key].id, text: label }), control[key],
      el('div', { class: 'hint', id: `h-${key}`, text: hint }), errors[key]];
  });
  const outcome = el('div', { id: 'outcome' });
  const manifest = () => {
    const [kind, ...rest] = control.runtime.value.split('/');
    const lines = (text) => text.split('\n').map((l) => l.trim()).filter(Boolean);
    const trainer = {};
    if (control.nodes.value !== '') trainer.numNodes = Number(control.nodes.value);
    if (control.image.value.trim()) trainer.image = control.image.value.trim();
    if (lines(control.command.value).length) trainer.command = lines(control.command.value);
    const env = lines(control.env.value).map((l) => { const i = l.indexOf('='); return i < 0 ? { name: l, value: '' } : { name: l.slice(0, i), value: l.slice(i + 1) }; });
    if (env.length) trainer.env = env;
    const limits = {};
    if (control.cpu.value.trim()) limits.cpu = control.cpu.value.trim();
    if (control.memory.value.trim()) limits.memory = control.memory.value.trim();
    if (Object.keys(limits).length) trainer.resourcesPerNode = { limits };
    return {
      apiVersion: 'trainer.kubeflow.org/v1alpha1',
      kind: 'TrainJob',
      metadata: { name: control.name.value.trim() },
      spec: { runtimeRef: { apiGroup: 'trainer.kubeflow.org', kind: rest.length ? kind : 'ClusterTrainingRuntime', name: rest.length ? rest.join('/') : kind }, trainer },
    };
  };
  const editor = el('textarea', { class: 'yaml', id: 'f-yaml', spellcheck: 'false', 'aria-label': 'The TrainJob as YAML' });
  const submit = async (body, type) => {
    for (const key of Object.keys(control)) { control[key].removeAttribute('aria-invalid'); errors[key].hidden = true; }
    fill(outcome, note('info', 'Creating…'));
    const r = await call('POST', jobsPath(ns), { body, type });
    if (r.ok) { location.hash = `#/${enc(ns)}/jobs/${enc(r.data.name)}`; return; }
    if (r.status === 401) return;
    fill(outcome, problemNote(r.data, 'The cluster refused this job'));
    for (const f of (r.data && r.data.fields) || []) {
      const hit = FIELDS.find(([key, , path]) => f.field.startsWith(path) && (key !== 'cpu' || !/memory/.test(f.field)) && (key !== 'memory' || /memory/.test(f.field)));
      if (!hit) continue;
      control[hit[0]].setAttribute('aria-invalid', 'true');
      errors[hit[0]].textContent = f.message;
      errors[hit[0]].hidden = false;
    }
  };
  const formTab = el('button', { type: 'button', role: 'tab', 'aria-selected': 'true', id: 'tab-form', text: 'Form' });
  const yamlTab = el('button', { type: 'button', role: 'tab', 'aria-selected': 'false', id: 'tab-yaml', text: 'YAML' });
  const form = el('form', { class: 'create', id: 'create-form', novalidate: true, 'aria-labelledby': 'tab-form' }, rows,
    el('span'), el('div', { class: 'actions' }, el('button', { type: 'submit', class: 'primary', id: 'create', text: 'Create' })));
  const yamlForm = el('form', { id: 'yaml-form', hidden: true, 'aria-labelledby': 'tab-yaml' }, editor,
    el('div', { class: 'actions' }, el('button', { type: 'submit', class: 'primary', id: 'create-yaml', text: 'Create from YAML' })));
  form.addEventListener('submit', (e) => { e.preventDefault(); submit(manifest()); });
  yamlForm.addEventListener('submit', (e) => { e.preventDefault(); submit(editor.value, 'application/yaml'); });
  const show = (yamlShown) => {
    if (yamlShown) editor.value = `${yaml(manifest()).slice(1)}\n`;
    form.hidden = yamlShown; yamlForm.hidden = !yamlShown;
    formTab.setAttribute('aria-selected', String(!yamlShown)); yamlTab.setAttribute('aria-selected', String(yamlShown));
  };
  formTab.addEventListener('click', () => show(false));
  yamlTab.addEventListener('click', () => show(true));
  fill(main, heading(`New TrainJob in ${ns}`), el('div', { class: 'tabs', role: 'tablist' }, formTab, yamlTab), outcome, form, yamlForm);
}

// ---------------------------------------------------------------------------------------------
// Signing in (a dashboard in the cluster), and where the page is

function signInView(message) {
  leave();
  leave = () => {};
  setTitle('Sign in');
  showWho();
  const token = el('textarea', { id: 'token', autocomplete: 'off', spellcheck: 'false', required: true, 'aria-describedby': 'token-hint' });
  const outcome = el('div');
  const form = el('form', { class: 'signin', id: 'signin' },
    el('p', { text: 'This dashboard acts as you: it shows and changes exactly what your Kubernetes permissions allow. Sign in with your token. The cluster checks it; the page keeps it in a cookie its script cannot read.' }),
    message ? note('info', message) : null,
    el('label', { for: 'token', text: 'Your Kubernetes token' }), token,
    el('p', { class: 'muted', id: 'token-hint' }, 'A service account\'s: ', el('code', { text: 'kubectl create token NAME -n NAMESPACE' }),
      '; or your identity provider\'s ID token.'),
    outcome,
    el('div', { class: 'actions' }, el('button', { type: 'submit', class: 'primary', text: 'Sign in' })));
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const r = await call('POST', '/api/session', { body: { token: token.value }, signIn: false });
    token.value = '';
    if (!r.ok) { fill(outcome, problemNote(r.data, 'Not signed in')); return; }
    session = r.data;
    location.hash = `#/${enc(session.namespace)}`;
    route();
  });
  fill(main, heading('Sign in'), form);
  token.focus();
}

function showWho() {
  if (session.mode === 'token' && session.signedIn) {
    const out = el('button', { type: 'button', id: 'sign-out', text: 'Sign out' });
    out.addEventListener('click', async () => {
      await call('DELETE', '/api/session', { signIn: false });
      session = { ...session, signedIn: false, user: null };
      signInView('Signed out.');
    });
    fill(who, el('span', { id: 'user', text: `Signed in as ${session.user || 'unknown'}` }), out);
  } else if (session.mode === 'kubeconfig') {
    fill(who, el('span', { id: 'user', text: `As ${session.user || 'your kubeconfig user'}` }));
  } else {
    who.replaceChildren();
  }
}

function route() {
  leave();
  leave = () => {};
  if (session.mode === 'token' && !session.signedIn) return signInView();
  showWho();
  const parts = location.hash.replace(/^#\/?/, '').split('/').filter(Boolean).map(decodeURIComponent);
  const ns = parts[0] || session.namespace;
  document.getElementById('ns-input').value = ns;
  const jobs = document.getElementById('nav-jobs');
  const create = document.getElementById('nav-new');
  jobs.href = `#/${enc(ns)}`;
  create.href = `#/${enc(ns)}/new`;
  const current = (link, on) => (on ? link.setAttribute('aria-current', 'page') : link.removeAttribute('aria-current'));
  current(jobs, parts[1] === undefined);
  current(create, parts[1] === 'new');
  if (parts[1] === 'jobs' && parts[2]) jobView(ns, parts[2]);
  else if (parts[1] === 'new') createView(ns);
  else listView(ns);
  if (document.activeElement && document.activeElement !== document.body) main.querySelector('h1')?.focus();
}

document.getElementById('ns-form').addEventListener('submit', (e) => {
  e.preventDefault();
  const ns = document.getElementById('ns-input').value.trim();
  if (ns) location.hash = `#/${enc(ns)}`;
});
window.addEventListener('hashchange', route);

(async () => {
  const r = await call('GET', '/api/session', { signIn: false });
  if (r.ok) session = r.data;
  route();
})();
