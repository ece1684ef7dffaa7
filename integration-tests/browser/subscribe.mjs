// Opens a page in headless Chromium that subscribes to a gateway topic with
// EventSource and with WebSocket, the way a dashboard would, and prints
// what the page received as JSON on stdout.
//
// node subscribe.mjs <gateway base URL> <topic> <token> <records expected>
//
// The page is served from its own origin (a port of this script), so the
// gateway's CORS settings are exercised as in production.
import http from 'node:http';
import { chromium } from 'playwright-core';

const [gateway, topic, token, expectedText] = process.argv.slice(2);
const expected = Number(expectedText);
if (!gateway || !topic || !token || !(expected > 0)) {
  console.error('usage: node subscribe.mjs <gateway> <topic> <token> <expected>');
  process.exit(2);
}

const page = `<!doctype html>
<meta charset="utf-8">
<title>millrace gateway browser test</title>
<script>
window.results = { sse: [], ws: [], sseReady: null, wsReady: null, errors: [] };
const base = ${JSON.stringify(gateway)};
const topic = ${JSON.stringify(topic)};
const token = ${JSON.stringify(token)};
const q = 'start=earliest&access_token=' + encodeURIComponent(token);

const es = new EventSource(base + '/v1/topics/' + topic + '/sse?' + q);
es.addEventListener('ready', (e) => { window.results.sseReady = e.lastEventId; });
es.onmessage = (e) => {
  window.results.sse.push({ id: e.lastEventId, record: JSON.parse(e.data) });
  if (window.results.sse.length >= ${expected}) es.close();
};
es.onerror = () => { if (es.readyState === EventSource.CLOSED) window.results.errors.push('sse closed'); };

const ws = new WebSocket(base.replace(/^http/, 'ws') + '/v1/topics/' + topic + '/ws?' + q);
ws.onmessage = (e) => {
  const m = JSON.parse(e.data);
  if (m.type === 'ready') window.results.wsReady = m.position;
  else if (m.type === 'record') window.results.ws.push(m);
  if (window.results.ws.length >= ${expected}) ws.close();
};
ws.onerror = () => window.results.errors.push('ws error');
</script>
<p>subscribing to ${topic}</p>`;

const server = http.createServer((req, res) => {
  res.writeHead(200, { 'content-type': 'text/html' });
  res.end(page);
});
await new Promise((resolve) => server.listen(Number(process.env.PAGE_PORT || 0), '127.0.0.1', resolve));
const origin = `http://127.0.0.1:${server.address().port}`;

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  // Running as root in CI containers needs --no-sandbox.
  args: ['--no-sandbox'],
});
let code = 0;
try {
  const tab = await browser.newPage();
  tab.on('console', (m) => console.error('[page]', m.text()));
  await tab.goto(origin + '/');
  await tab.waitForFunction(
    (n) => window.results.sse.length >= n && window.results.ws.length >= n,
    expected,
    { timeout: 60000, polling: 100 },
  );
  const results = await tab.evaluate(() => window.results);
  process.stdout.write(JSON.stringify({ origin, ...results }) + '\n');
} catch (e) {
  console.error('browser test failed:', e.message);
  code = 1;
} finally {
  await browser.close();
  server.close();
}
process.exit(code);
