#!/usr/bin/env node
// Two guests meet in Chromium: Ray's page may only use relay candidates (?relay=1, the TURN
// servers its join named), Dee's connects as usual; each must decode the other's camera.
//
//   CONVENE_URL=http://127.0.0.1:8080 CODE=abc-defg-hij node tests/browser/relay_meeting.mjs
//
// Optional: CHROMIUM (default /usr/bin/chromium), ARTIFACT_DIR (default test-artifacts/relay).
// Exit code: 0 = PASS, 1 = FAIL.

import { chromium } from 'playwright-core';
import { info, until } from './wait.mjs';
import { mkdir } from 'node:fs/promises';
import path from 'node:path';

const env = process.env;
const URL_ = (env.CONVENE_URL || 'http://127.0.0.1:8080').replace(/\/+$/, '');
const CHROMIUM = env.CHROMIUM || '/usr/bin/chromium';
const ARTIFACT_DIR = path.resolve(env.ARTIFACT_DIR || 'test-artifacts/relay');
if (!env.CODE) { console.log('FAIL: CODE is not set'); process.exit(1); }

const pages = {};
const consoleLines = [];
let browser;


async function open(name, query) {
  const ctx = await browser.newContext({ viewport: { width: 1280, height: 720 } });
  await ctx.grantPermissions(['camera', 'microphone'], { origin: URL_ });
  const page = await ctx.newPage();
  pages[name] = page;
  page.on('console', (m) => consoleLines.push(`${name} ${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => consoleLines.push(`${name} pageerror: ${e.message}`));
  await page.goto(`${URL_}/m/${env.CODE}?name=${name}&autojoin=1${query}`);
  return page;
}

const seesVideo = (page, label, other) =>
  until(page, `${label} decodes ${other}'s camera`, async (n) => {
    const s = await window.convene?.stats();
    return s && (s.camera[n] || 0) > 0;
  }, other);

async function main() {
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    timeout: 20_000,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--use-fake-device-for-media-stream', '--use-fake-ui-for-media-stream',
      '--autoplay-policy=no-user-gesture-required'],
  });
  const ray = await open('Ray', '&relay=1');
  await until(ray, 'Ray joined', () => window.convene?.state === 'joined');
  const dee = await open('Dee', '');
  await until(dee, 'Dee joined', () => window.convene?.state === 'joined');
  await seesVideo(dee, 'Dee', 'Ray');
  await seesVideo(ray, 'Ray', 'Dee');
  await mkdir(ARTIFACT_DIR, { recursive: true });
  await ray.screenshot({ path: path.join(ARTIFACT_DIR, 'ray.png') });
}

main().then(
  async () => { await browser?.close(); console.log('PASS: a relay-only participant and a direct one see each other'); process.exit(0); },
  async (e) => {
    console.log(`FAIL: ${e.message}`);
    for (const l of consoleLines) console.log(`    ${l}`);
    await browser?.close().catch(() => {});
    process.exit(1);
  });
