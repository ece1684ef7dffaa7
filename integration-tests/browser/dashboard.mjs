// Drives the gateway's /dashboard in headless Chromium for
// integration-tests/tests/dashboard.rs, in phases that the test paces:
//
// 1. Opens the page and waits until every device has a tile with a heart
//    rate and a drawn waveform; checks that each canvas changes over time
//    (the trace scrolls); waits for the anomaly device's alert badge; saves
//    screenshots. Prints {"phase":"live", ...} as one JSON line.
// 2. Waits for a line on stdin (the test has restarted the gateway), waits
//    until every stream is live again, and prints {"phase":"resumed", ...}
//    with each tile's waveform continuity (batches, gaps, repeats).
// 3. Waits for a line on stdin (the test has stopped the producer and the
//    pipelines have caught up), then prints {"phase":"settled","hr":{...}}:
//    the heart rate text each tile shows.
// 4. Waits until every tile shows the stale badge; prints
//    {"phase":"stale", ...} and exits.
//
// node dashboard.mjs <dashboard URL> <comma-separated devices> <anomaly device> <screenshot>...
import readline from 'node:readline';
import { chromium } from 'playwright-core';

const [url, devicesText, anomaly, ...screenshots] = process.argv.slice(2);
if (!url || !devicesText || !anomaly || screenshots.length === 0) {
  console.error('usage: node dashboard.mjs <url> <devices> <anomaly device> <screenshot>...');
  process.exit(2);
}
const devices = devicesText.split(',');
const lines = readline.createInterface({ input: process.stdin })[Symbol.asyncIterator]();
const say = (object) => process.stdout.write(JSON.stringify(object) + '\n');

/** A cheap fingerprint of a canvas's pixels, per device. */
const fingerprints = (tab) => tab.evaluate((ids) => {
  const out = {};
  for (const id of ids) {
    const canvas = document.querySelector(`.tile[data-device="${id}"] canvas`);
    if (!canvas || canvas.width === 0) { out[id] = null; continue; }
    const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
    let hash = 0;
    let lit = 0;
    for (let i = 0; i < data.length; i += 4) {
      // The trace's green channel dominates; count those pixels.
      if (data[i + 1] > 150 && data[i + 1] > data[i] + 60) lit++;
      hash = (hash * 31 + data[i] + 7 * data[i + 1] + 13 * data[i + 2]) | 0;
    }
    out[id] = { hash, lit };
  }
  return out;
}, devices);

const texts = (tab, selector) => tab.evaluate(({ ids, selector }) => Object.fromEntries(ids.map((id) => {
  const el = document.querySelector(`.tile[data-device="${id}"] ${selector}`);
  return [id, el ? el.textContent : null];
})), { ids: devices, selector });

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  // Running as root in CI containers needs --no-sandbox.
  args: ['--no-sandbox'],
});
let code = 0;
try {
  const tab = await browser.newPage({ viewport: { width: 1100, height: 570 } });
  const errors = [];
  tab.on('console', (m) => {
    // The test's own canvas reads make Chromium suggest willReadFrequently.
    if (!m.text().includes('willReadFrequently')) console.error('[page]', m.type(), m.text());
    // Refused connections while the test restarts the gateway are expected.
    if (m.type() === 'error' && !m.text().includes('net::ERR_')) errors.push(m.text());
  });
  tab.on('pageerror', (e) => errors.push(e.message));
  await tab.goto(url);

  // Every device: a tile, a heart rate, and a trace on its canvas.
  await tab.waitForFunction((ids) => ids.every((id) => {
    const tile = document.querySelector(`.tile[data-device="${id}"]`);
    return tile && /^\d+$/.test(tile.querySelector('.hr-value').textContent);
  }), devices, { timeout: 60000, polling: 200 });
  const before = await fingerprints(tab);
  await tab.waitForTimeout(1000);
  const after = await fingerprints(tab);
  const streams = await tab.evaluate(() => [...document.querySelectorAll('.tile:first-child .stream')]
    .map((s) => `${s.dataset.stream}=${s.dataset.state}`));

  // The injected anomaly: the badge must become visible.
  const badge = tab.locator(`.tile[data-device="${anomaly}"] .badge`);
  await badge.waitFor({ state: 'visible', timeout: 60000 });
  const alertTile = await tab.locator(`.tile[data-device="${anomaly}"]`).getAttribute('data-alert');
  const badgeColor = await badge.evaluate((el) => getComputedStyle(el).backgroundColor);
  const badges = await texts(tab, '.badge:not([hidden])');
  // Let the trace scroll a little past the alert for the picture.
  await tab.waitForTimeout(500);
  for (const path of screenshots) await tab.screenshot({ path });
  say({
    phase: 'live', before, after, streams, badges, alertTile, badgeColor,
    hr: await texts(tab, '.hr-value'), summary: await tab.textContent('#summary'), errors,
  });

  // The test restarts the gateway: every stream must come back and the
  // waveforms must continue without a gap or a repeated batch.
  await lines.next();
  await tab.waitForFunction(() => [...document.querySelectorAll('.tile .stream')]
    .every((s) => s.dataset.state === 'live' && Number(s.dataset.reconnects) >= 1),
  null, { timeout: 60000, polling: 200 });
  await tab.waitForTimeout(1500);
  const continuity = await tab.evaluate((ids) => Object.fromEntries(ids.map((id) => {
    const { batches, gaps, repeats } = document.querySelector(`.tile[data-device="${id}"]`).dataset;
    return [id, { batches: Number(batches), gaps: Number(gaps), repeats: Number(repeats) }];
  })), devices);
  const reconnects = await tab.evaluate(() => [...document.querySelectorAll('.tile:first-child .stream')]
    .map((s) => `${s.dataset.stream}=${s.dataset.reconnects}`));
  say({ phase: 'resumed', continuity, reconnects });

  // The test stops the producer and waits for the pipelines; then read.
  await lines.next();
  say({ phase: 'settled', hr: await texts(tab, '.hr-value') });

  // Silence: every device goes stale.
  await tab.waitForFunction((ids) => ids.every((id) => {
    const badge = document.querySelector(`.tile[data-device="${id}"] .badge`);
    return badge && !badge.hidden && badge.textContent.includes('NO DATA');
  }), devices, { timeout: 60000, polling: 200 });
  say({ phase: 'stale', badges: await texts(tab, '.badge'), errors });
} catch (e) {
  console.error('dashboard test failed:', e.message);
  code = 1;
} finally {
  await browser.close();
}
process.exit(code);
