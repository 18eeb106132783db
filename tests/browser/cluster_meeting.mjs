#!/usr/bin/env node
// Two guests meet in Chromium through one cluster node's page while the meeting is served by
// another node (DEAD_WS); that node is then killed (kill -9 of KILL_PID) and both pages must
// reconnect to a node still alive and decode each other's camera again.
//
//   CONVENE_URL=http://127.0.0.1:8080 CODE=abc-defg-hij DEAD_WS=ws://127.0.0.1:8081/ws \
//   KILL_PID=1234 node tests/browser/cluster_meeting.mjs
//
// Optional: CHROMIUM (default /usr/bin/chromium). Exit code: 0 = PASS, 1 = FAIL.

import { chromium } from 'playwright-core';
import { info, until as untilIn } from './wait.mjs';

// Polled faster than the default: the move after the kill is what is timed.
const until = (page, what, fn, arg) => untilIn(page, what, fn, arg, { pollMs: 250 });

const env = process.env;
const URL_ = (env.CONVENE_URL || 'http://127.0.0.1:8080').replace(/\/+$/, '');
const CHROMIUM = env.CHROMIUM || '/usr/bin/chromium';
for (const v of ['CODE', 'DEAD_WS', 'KILL_PID']) {
  if (!env[v]) { console.log(`FAIL: ${v} is not set`); process.exit(1); }
}

const consoleLines = [];
let browser;


async function open(name) {
  const ctx = await browser.newContext({ viewport: { width: 960, height: 540 } });
  await ctx.grantPermissions(['camera', 'microphone'], { origin: URL_ });
  const page = await ctx.newPage();
  page.on('console', (m) => consoleLines.push(`${name} ${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => consoleLines.push(`${name} pageerror: ${e.message}`));
  await page.goto(`${URL_}/m/${env.CODE}?name=${name}&autojoin=1`);
  return page;
}

// Joined on the node `on` (or, with `not`, on any node but it) and decoding `other`'s camera.
const meets = (page, label, other, node) =>
  until(page, `${label} decodes ${other}'s camera ${node.not ? 'off' : 'on'} ${node.url}`, async ([n, url, not]) => {
    const c = window.convene;
    if (c?.state !== 'joined' || (c.node === url) === not) return false;
    const s = await c.stats();
    return (s.camera[n] || 0) > 0;
  }, [other, node.url, !!node.not]);

async function main() {
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    timeout: 20_000,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--use-fake-device-for-media-stream', '--use-fake-ui-for-media-stream',
      '--autoplay-policy=no-user-gesture-required'],
  });
  const ann = await open('Ann');
  const ben = await open('Ben');
  const there = { url: env.DEAD_WS };
  await meets(ann, 'Ann', 'Ben', there);
  await meets(ben, 'Ben', 'Ann', there);
  info(`killing the meeting's node (pid ${env.KILL_PID})`);
  process.kill(Number(env.KILL_PID), 'SIGKILL');
  const elsewhere = { url: env.DEAD_WS, not: true };
  await meets(ann, 'Ann', 'Ben', elsewhere);
  await meets(ben, 'Ben', 'Ann', elsewhere);
  const nodes = await Promise.all([ann, ben].map((p) => p.evaluate(() => window.convene.node)));
  if (nodes[0] !== nodes[1]) throw new Error(`the pages are on different nodes: ${nodes}`);
  info(`both on ${nodes[0]}`);
}

main().then(
  async () => { await browser?.close(); console.log('PASS: the pages moved to a live node and see each other'); process.exit(0); },
  async (e) => {
    console.log(`FAIL: ${e.message}`);
    for (const l of consoleLines) console.log(`    ${l}`);
    await browser?.close().catch(() => {});
    process.exit(1);
  });
