// Millrace telemetry dashboard: one tile per device with its ECG drawn live,
// its rolling heart rate and its alerts, from the gateway's public API.
//
// - Waveforms: one binary WebSocket on the waveform topic. Each frame is a
//   4-byte big-endian header length, a JSON header (key, position, ...) and
//   the record's bytes: an MRWF batch (see src/telemetry/waveform.rs) whose
//   f32 samples are viewed as a Float32Array. A reconnect resumes with
//   `start=<position of the last frame>`: no gap, no repeat.
// - Heart rate and alerts: one EventSource each. The browser reconnects by
//   itself with Last-Event-ID; when it gives up (an HTTP error), a new one
//   starts at the last event id.
// - Drawing runs on requestAnimationFrame: each tile shows the last few
//   seconds, played out a little behind the newest sample so that batches
//   arriving every 200 ms scroll smoothly at the display's rate.
//
// Authentication: with `auth.mode: jwt`, open the page as
// /dashboard?access_token=<JWT>; the page passes the token on to every
// request (or the browser sends the token cookie).
'use strict';

/** Visible waveform, ms. */
const HISTORY_MS = 5000;
/** The right edge of a trace lags the newest sample by this much, ms. */
const PLAYOUT_DELAY_MS = 600;
/** Samples kept per device, ms. */
const KEEP_MS = HISTORY_MS + PLAYOUT_DELAY_MS + 2000;
/** Heart rates replayed when the page opens, ms. */
const HR_LOOKBACK_MS = 15000;
/** ECG paper: a small square is 40 ms by 0.1 mV, a large one 200 ms by 0.5 mV. */
const GRID_MS = 200;
const GRID_MV = 0.5;

const MAGIC = 0x4657524d; // "MRWF" read as a little-endian u32
const HOST_IS_LITTLE_ENDIAN = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;
const utf8 = new TextDecoder();

const devices = new Map();
const streams = { wave: 'connecting', hr: 'connecting', alerts: 'connecting' };
/** Times each stream was lost, shown as data-reconnects on its indicator. */
const reconnects = { wave: 0, hr: 0, alerts: 0 };
let config = null;
let token = null;

// ---------------------------------------------------------------- helpers

/** URL of an API path, relative to the page (works behind a path prefix). */
function api(path, query = {}) {
  const url = new URL(path, document.baseURI);
  for (const [name, value] of Object.entries(query)) url.searchParams.set(name, value);
  if (token) url.searchParams.set(config.token_param, token);
  return url;
}

function topicPath(topic, what) {
  return `v1/topics/${encodeURIComponent(topic)}/${what}`;
}

/** Reconnect delay: 0.5 s doubling to 10 s, with jitter. */
function backoff(attempt) {
  const ms = Math.min(10000, 500 * 2 ** attempt);
  return ms / 2 + Math.random() * ms / 2;
}

function setStream(name, state) {
  if (state === 'reconnecting' && streams[name] !== 'reconnecting') reconnects[name]++;
  streams[name] = state;
  for (const dev of devices.values()) showStream(dev, name);
  updateSummary();
}

function showStream(dev, name) {
  const el = dev.el.querySelector(`[data-stream="${name}"]`);
  el.dataset.state = streams[name];
  el.dataset.reconnects = reconnects[name];
  el.querySelector('i').textContent = streams[name];
}

function updateSummary(error) {
  const summary = document.getElementById('summary');
  if (error) {
    summary.textContent = error;
    return;
  }
  const n = devices.size;
  const alerting = [...devices.values()].filter((d) => d.el.dataset.alert === 'active').length;
  const states = Object.values(streams);
  const overall = states.every((s) => s === 'live') ? 'live'
    : states.includes('reconnecting') ? 'reconnecting' : 'connecting';
  summary.textContent = `${n} device${n === 1 ? '' : 's'} · ${alerting} alerting · ${overall}`;
  document.getElementById('empty').hidden = n > 0;
}

// ---------------------------------------------------------------- tiles

function device(id) {
  let dev = devices.get(id);
  if (dev) return dev;
  const el = document.getElementById('tile').content.firstElementChild.cloneNode(true);
  el.dataset.device = id;
  el.querySelector('.device').textContent = id;
  const canvas = el.querySelector('canvas');
  dev = {
    id,
    el,
    canvas,
    ctx: canvas.getContext('2d'),
    hrEl: el.querySelector('.hr-value'),
    badge: el.querySelector('.badge'),
    batches: [], // {t0, rate, samples}, oldest first
    newest: -Infinity, // ms of the end of the newest batch
    // Continuity of the waveform, as data-* attributes of the tile: a gap
    // or a repeated batch would mean a reconnect did not resume exactly.
    stats: { batches: 0, gaps: 0, repeats: 0 },
    offset: null, // sample time minus performance.now(), ms
    lo: -0.5, // mV at the bottom and top of the canvas
    hi: 1.5,
    threshold: null, // the active threshold alert event, if any
    stale: null, // the active stale event, if any
  };
  devices.set(id, dev);
  // Keep the grid sorted by device id.
  const grid = document.getElementById('grid');
  const after = [...grid.children].find((t) => t.dataset.device > id);
  grid.insertBefore(el, after || null);
  for (const name of Object.keys(streams)) showStream(dev, name);
  updateSummary();
  return dev;
}

function showAlert(dev) {
  const parts = [];
  if (dev.threshold) {
    const sign = dev.threshold.side === 'below' ? '<' : '>';
    parts.push(`HR ${sign} ${dev.threshold.limit}`);
  }
  if (dev.stale) parts.push('NO DATA');
  dev.badge.textContent = parts.join(' · ');
  dev.badge.hidden = parts.length === 0;
  dev.el.dataset.alert = parts.length ? 'active' : 'none';
  updateSummary();
}

// ---------------------------------------------------------------- waveforms

/**
 * Splits a binary frame into its JSON header and the MRWF batch it carries.
 * Returns {header, batch}; batch is null (with a console warning) when the
 * value is not a waveform batch, so the position still advances.
 */
function parseFrame(buffer) {
  const view = new DataView(buffer);
  const headerLen = view.getUint32(0, false);
  const header = JSON.parse(utf8.decode(new Uint8Array(buffer, 4, headerLen)));
  const start = 4 + headerLen;
  const len = buffer.byteLength - start;
  if (len < 24 || view.getUint32(start, true) !== MAGIC || view.getUint8(start + 4) !== 1) {
    console.warn('not a waveform batch', header.key, header.position);
    return { header, batch: null };
  }
  const deviceLen = view.getUint16(start + 6, true);
  const t0 = Number(view.getBigInt64(start + 8, true));
  const rate = view.getFloat32(start + 16, true);
  const count = view.getUint32(start + 20, true);
  const samplesAt = start + 24 + Math.ceil(deviceLen / 4) * 4;
  if (samplesAt + 4 * count !== buffer.byteLength || !(rate > 0)) {
    console.warn('malformed waveform batch', header.key, header.position);
    return { header, batch: null };
  }
  const device = utf8.decode(new Uint8Array(buffer, start + 24, deviceLen));
  let samples;
  if (!HOST_IS_LITTLE_ENDIAN) {
    samples = new Float32Array(count);
    for (let i = 0; i < count; i++) samples[i] = view.getFloat32(samplesAt + 4 * i, true);
  } else if (samplesAt % 4 === 0) {
    samples = new Float32Array(buffer, samplesAt, count);
  } else {
    // The JSON header's length decides the alignment within the frame.
    samples = new Float32Array(buffer.slice(samplesAt, samplesAt + 4 * count));
  }
  return { header, batch: { device, t0, rate, samples } };
}

function addBatch(id, batch) {
  const dev = device(id);
  const end = batch.t0 + (batch.samples.length * 1000) / batch.rate;
  const halfStep = 500 / batch.rate;
  if (dev.stats.batches > 0) {
    if (batch.t0 > dev.newest + halfStep) dev.stats.gaps++;
    else if (batch.t0 < dev.newest - halfStep) dev.stats.repeats++;
  }
  dev.stats.batches++;
  Object.assign(dev.el.dataset, dev.stats);
  dev.batches.push({ t0: batch.t0, rate: batch.rate, samples: batch.samples });
  dev.newest = Math.max(dev.newest, end);
  const keepFrom = dev.newest - KEEP_MS;
  while (dev.batches.length && dev.batches[0].t0 + (dev.batches[0].samples.length * 1000) / dev.batches[0].rate < keepFrom) {
    dev.batches.shift();
  }
}

function followWaveforms() {
  let position = null;
  let attempt = 0;
  const connect = () => {
    // First connection: enough history to fill the canvas right away.
    const start = position ?? String(Date.now() - HISTORY_MS - PLAYOUT_DELAY_MS);
    const url = api(topicPath(config.waveform_topic, 'ws'), { format: 'binary', start });
    url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
    const ws = new WebSocket(url);
    ws.binaryType = 'arraybuffer';
    ws.onmessage = (event) => {
      if (typeof event.data !== 'string') {
        const { header, batch } = parseFrame(event.data);
        position = header.position;
        const id = header.key ?? batch?.device;
        if (batch && id != null) addBatch(id, batch);
        return;
      }
      const message = JSON.parse(event.data);
      if (message.type === 'ready') {
        attempt = 0;
        position = message.position;
        setStream('wave', 'live');
      } else if (message.type === 'lagged') {
        position = message.position;
      } else if (message.type === 'disconnect') {
        setStream('wave', 'reconnecting');
      }
    };
    ws.onclose = () => {
      setStream('wave', 'reconnecting');
      setTimeout(connect, backoff(attempt++));
    };
  };
  connect();
}

// ---------------------------------------------------------------- SSE streams

/** Follows a JSON topic over SSE from `start`, resuming exactly. */
function follow(name, topic, start, onRecord) {
  let lastId = null;
  let attempt = 0;
  const connect = () => {
    const source = new EventSource(api(topicPath(topic, 'sse'), { start: lastId ?? start }));
    source.addEventListener('ready', (event) => {
      attempt = 0;
      lastId = event.lastEventId || lastId;
      setStream(name, 'live');
    });
    source.onmessage = (event) => {
      lastId = event.lastEventId;
      onRecord(JSON.parse(event.data));
    };
    source.addEventListener('lagged', (event) => { lastId = event.lastEventId; });
    source.addEventListener('disconnect', () => setStream(name, 'reconnecting'));
    source.onerror = () => {
      setStream(name, 'reconnecting');
      // CONNECTING: the browser retries with Last-Event-ID by itself.
      // CLOSED: it gave up (an HTTP error such as 429 or 503); start anew
      // at the last position.
      if (source.readyState === EventSource.CLOSED) setTimeout(connect, backoff(attempt++));
    };
  };
  connect();
}

function onHeartRate(record) {
  const value = record.value;
  const id = record.key ?? value?.device;
  if (id == null || value == null) return;
  const dev = device(id);
  const hr = value.hr_rolling;
  dev.hrEl.textContent = typeof hr === 'number' ? String(Math.round(hr)) : '--';
}

function onAlert(record) {
  const value = record.value;
  const id = record.key ?? value?.key;
  if (id == null || value == null) return;
  const dev = device(id);
  if (value.event === 'alert') dev.threshold = value;
  else if (value.event === 'clear') dev.threshold = null;
  else if (value.state === 'stale') dev.stale = value;
  else if (value.state === 'resumed') dev.stale = null;
  else return;
  showAlert(dev);
}

// ---------------------------------------------------------------- drawing

function draw(dev, now) {
  const { canvas, ctx } = dev;
  const ratio = window.devicePixelRatio || 1;
  const w = Math.round(canvas.clientWidth * ratio);
  const h = Math.round(canvas.clientHeight * ratio);
  if (w === 0 || h === 0) return;
  if (canvas.width !== w || canvas.height !== h) {
    canvas.width = w;
    canvas.height = h;
  }
  ctx.clearRect(0, 0, w, h);
  if (dev.batches.length === 0) return;

  // The playout clock: follows the newest sample minus the delay, eased so
  // that the scrolling speed stays even; jumps only after a long silence.
  const target = dev.newest - PLAYOUT_DELAY_MS;
  if (dev.offset === null || Math.abs(now + dev.offset - target) > 1500) {
    dev.offset = target - now;
  } else {
    dev.offset += (target - (now + dev.offset)) * 0.002;
  }
  const right = now + dev.offset;
  const left = right - HISTORY_MS;
  const x = (t) => ((t - left) / HISTORY_MS) * w;

  // Vertical range in mV: at least -0.5..1.5, widened to fit, eased.
  let min = Infinity;
  let max = -Infinity;
  for (const b of dev.batches) {
    for (const v of b.samples) {
      if (v < min) min = v;
      if (v > max) max = v;
    }
  }
  dev.lo += (Math.min(-0.5, min - 0.2) - dev.lo) * 0.05;
  dev.hi += (Math.max(1.5, max + 0.2) - dev.hi) * 0.05;
  const y = (mv) => h - ((mv - dev.lo) / (dev.hi - dev.lo)) * h;

  // Grid: large squares of 200 ms by 0.5 mV, scrolling with the trace.
  ctx.lineWidth = 1;
  ctx.strokeStyle = '#26313b';
  ctx.beginPath();
  for (let t = Math.ceil(left / GRID_MS) * GRID_MS; t <= right; t += GRID_MS) {
    const gx = Math.round(x(t)) + 0.5;
    ctx.moveTo(gx, 0);
    ctx.lineTo(gx, h);
  }
  for (let mv = Math.ceil(dev.lo / GRID_MV) * GRID_MV; mv <= dev.hi; mv += GRID_MV) {
    const gy = Math.round(y(mv)) + 0.5;
    ctx.moveTo(0, gy);
    ctx.lineTo(w, gy);
  }
  ctx.stroke();

  // Calibration: a 1 mV bar at the left.
  ctx.fillStyle = '#7d8a96';
  ctx.fillRect(4 * ratio, y(1), 2 * ratio, y(0) - y(1));
  ctx.font = `${11 * ratio}px system-ui, sans-serif`;
  ctx.fillText('1 mV', 9 * ratio, y(1) + 10 * ratio);

  // The trace, broken where samples are missing.
  ctx.strokeStyle = '#3ddc97';
  ctx.lineWidth = 1.5 * ratio;
  ctx.lineJoin = 'round';
  ctx.beginPath();
  let lastT = -Infinity;
  for (const b of dev.batches) {
    const step = 1000 / b.rate;
    const first = Math.max(0, Math.floor((left - b.t0) / step));
    const last = Math.min(b.samples.length - 1, Math.ceil((right - b.t0) / step));
    for (let i = first; i <= last; i++) {
      const t = b.t0 + i * step;
      if (t - lastT > 1.5 * step) ctx.moveTo(x(t), y(b.samples[i]));
      else ctx.lineTo(x(t), y(b.samples[i]));
      lastT = t;
    }
  }
  ctx.stroke();
}

function animate(now) {
  for (const dev of devices.values()) draw(dev, now);
  requestAnimationFrame(animate);
}

// ---------------------------------------------------------------- start

async function main() {
  const response = await fetch('dashboard/config.json');
  if (!response.ok) throw new Error(`dashboard/config.json: HTTP ${response.status}`);
  config = await response.json();
  token = new URLSearchParams(location.search).get(config.token_param);
  document.title = config.title;
  document.getElementById('title').textContent = config.title;

  // Devices known to the gateway already; the streams add any others.
  const latest = await fetch(api(topicPath(config.waveform_topic, 'latest')));
  if (!latest.ok) {
    const hint = latest.status === 401 && !token ? ` (open this page with ?${config.token_param}=<token>)` : '';
    throw new Error(`${config.waveform_topic}: HTTP ${latest.status}${hint}`);
  }
  for (const record of (await latest.json()).records) {
    if (record.key != null) device(record.key);
  }
  updateSummary();

  followWaveforms();
  follow('hr', config.heart_rate_topic, String(Date.now() - HR_LOOKBACK_MS), onHeartRate);
  follow('alerts', config.alerts_topic, String(Date.now() - config.alerts_lookback_ms), onAlert);
  requestAnimationFrame(animate);
}

main().catch((error) => {
  console.error(error);
  updateSummary(`cannot start: ${error.message}`);
});
