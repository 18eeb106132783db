#!/usr/bin/env node
// One headless Chromium page publishing its fake 720p camera via WHIP with three simulcast
// encodings (RID q/h/f), for Rust tests that need a real simulcast publisher (tests/cascade.rs).
// Prints `SENDING {widths by RID}` once all three are sent, then publishes until its stdin
// closes (the test dropped it) or it is killed. By hand:
//
//   CONVENE_URL=http://127.0.0.1:8080 ROOM=r PUBLISH_TOKEN=... node tests/browser/publish.mjs

import { launchChromium } from './wait.mjs';

const env = process.env;
const URL_ = (env.CONVENE_URL || 'http://127.0.0.1:8080').replace(/\/+$/, '');
const STEP_MS = 40_000;

async function main() {
  for (const k of ['ROOM', 'PUBLISH_TOKEN']) if (!env[k]) throw new Error(`${k} is not set`);
  const browser = await launchChromium();
  const stop = () => browser.close().catch(() => {}).then(() => process.exit(0));
  process.stdin.on('end', stop);
  process.stdin.on('close', stop);
  process.stdin.resume();
  process.on('SIGTERM', stop);
  const page = await browser.newPage();
  const query = new URLSearchParams({
    room: env.ROOM, token: env.PUBLISH_TOKEN, mode: 'publish', autostart: '1', simulcast: '1', vcodec: 'VP8',
  });
  await page.goto(`${URL_}/whip?${query}`);
  const deadline = Date.now() + STEP_MS;
  for (;;) {
    const e = (await page.evaluate(() => window.convene?.stats()).catch(() => null))?.encodings || {};
    if (['q', 'h', 'f'].every((r) => e[r]?.frameWidth > 0 && e[r].framesSent > 0)) {
      const widths = Object.fromEntries(['q', 'h', 'f'].map((r) => [r, e[r].frameWidth]));
      console.log(`SENDING ${JSON.stringify(widths)}`);
      break;
    }
    if (Date.now() > deadline) throw new Error(`the three encodings never went out: ${JSON.stringify(e)}`);
    await new Promise((r) => setTimeout(r, 300));
  }
}

main().catch((e) => {
  console.log(`FAIL: ${e.message}`);
  process.exit(1);
});
