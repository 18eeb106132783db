#!/usr/bin/env node
// End-to-end browser test: publish fake camera+mic via WHIP from one page,
// watch the same room via WHEP from a second page, and require decoded video.
//
//   CONVENE_URL=http://127.0.0.1:8080 ROOM=r1 PUBLISH_TOKEN=... WATCH_TOKEN=... \
//     node tests/browser/whip_whep.mjs
//
// Optional: CHROMIUM (default /usr/bin/chromium), ARTIFACT_DIR (default test-artifacts),
// CHROMIUM_EXTRA_ARGS (space separated, appended to the launch args),
// VIEWER_MDNS=1 (run the viewer in a second Chromium without the fake media UI/permission, so
// it hides its host IPs behind mDNS .local candidates like a real viewer's browser does).
// RETURNING_PUBLISHER=1: the viewer opens first (nothing to watch yet), then the publisher;
// once the viewer decodes, the publisher stops (DELETE) and publishes again from a reloaded
// page, and the same viewer session must decode the new publisher's video (no new POST).
// PUBLISH_QUERY: extra query of the publisher's page (e.g. `relay=1&turn=tcp`: media only
// through the TURN servers the WHIP answer names, over TCP).
// Exit code: 0 = PASS, 1 = FAIL (including configuration errors and timeouts).

import { chromium } from 'playwright-core';
import { mkdir, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import path from 'node:path';

const PW_VERSION = createRequire(import.meta.url)('playwright-core/package.json').version;

const OVERALL_TIMEOUT_MS = 60_000;
const PUBLISH_CONNECT_TIMEOUT_MS = 20_000;
const FRAMES_TIMEOUT_MS = 30_000;
const POLL_MS = 500;

const env = process.env;
const CONVENE_URL = (env.CONVENE_URL || 'http://127.0.0.1:8080').replace(/\/+$/, '');
const ROOM = env.ROOM;
const PUBLISH_TOKEN = env.PUBLISH_TOKEN;
const WATCH_TOKEN = env.WATCH_TOKEN;
const CHROMIUM = env.CHROMIUM || '/usr/bin/chromium';
const ARTIFACT_DIR = path.resolve(env.ARTIFACT_DIR || 'test-artifacts');
const EXTRA_ARGS = (env.CHROMIUM_EXTRA_ARGS || '').split(/\s+/).filter(Boolean);
const VIEWER_MDNS = env.VIEWER_MDNS === '1';
const RETURNING_PUBLISHER = env.RETURNING_PUBLISHER === '1';
// EXPECT_AUDIO=1: the viewer must also play a second of the publisher's audio with under 10% of
// it concealed. (Chromium's stats name Opus as the codec even when RED carries it: which form
// went out is the SFU's audio_red_total metric.)
const EXPECT_AUDIO = env.EXPECT_AUDIO === '1';

const t0 = Date.now();
const elapsed = () => `${((Date.now() - t0) / 1000).toFixed(1)}s`;
// Never print bearer tokens: scrub them (and any token= query value) from everything we output.
const SECRETS = [env.PUBLISH_TOKEN, env.WATCH_TOKEN].filter((t) => t && t.length >= 3);
function redact(text) {
  let out = String(text).replace(/\u001b\[[0-9;]*m/g, '').replace(/([?&]token=)[^&\s"']+/g, '$1***');
  for (const t of SECRETS) out = out.split(t).join('***');
  return out;
}
const info = (msg) => console.log(redact(`[${elapsed()}] ${msg}`));
const consoleLines = [];
let browser = null;
let viewerBrowser = null;
const pages = {}; // name -> Page
let finished = false;

function pageUrl(mode, token) {
  const q = new URLSearchParams({ room: ROOM, token, mode, autostart: '1' });
  // PUBLISH_QUERY=relay=1&turn=tcp: the publisher page's extra query (TURN relay only, say).
  if (mode === 'publish') for (const [k, v] of new URLSearchParams(env.PUBLISH_QUERY || '')) q.set(k, v);
  return `${CONVENE_URL}/whip?${q}`;
}

const withTimeout = (promise, ms, fallback) =>
  Promise.race([promise, new Promise((r) => setTimeout(() => r(fallback), ms).unref())]);

async function snapshot(name) {
  const page = pages[name];
  if (!page || page.isClosed()) return { status: '(page not open)', stats: null };
  const status = await withTimeout(
    page.evaluate(() => document.getElementById('status')?.innerText ?? '(page has no #status element)')
      .catch((e) => `(unreadable: ${e.message})`), 3000, '(timeout)');
  const stats = await withTimeout(
    page.evaluate(() => window.convene?.stats()).catch((e) => ({ error: e.message })), 3000, { error: 'timeout' });
  const state = await withTimeout(
    page.evaluate(() => window.convene?.state).catch(() => undefined), 2000, undefined);
  const error = await withTimeout(
    page.evaluate(() => window.convene?.error).catch(() => undefined), 2000, undefined);
  return { state, status: status.replace(/\s*\n\s*/g, ' | '), stats, error };
}

async function screenshots() {
  await mkdir(ARTIFACT_DIR, { recursive: true }).catch(() => {});
  for (const [name, page] of Object.entries(pages)) {
    if (page.isClosed()) continue;
    const file = path.join(ARTIFACT_DIR, `${name}.png`);
    const ok = await withTimeout(
      page.screenshot({ path: file, fullPage: true, timeout: 5000 }).then(() => true, () => false), 6000, false);
    info(ok ? `screenshot: ${file}` : `screenshot of ${name} failed`);
  }
}

async function finish(pass, reason) {
  if (finished) return;
  finished = true;
  const snaps = {};
  for (const name of Object.keys(pages)) snaps[name] = await snapshot(name);
  await screenshots();
  reason = redact(reason);
  await writeFile(path.join(ARTIFACT_DIR, 'browser-console.log'), redact(consoleLines.join('\n')) + '\n').catch(() => {});
  await writeFile(path.join(ARTIFACT_DIR, 'result.json'), redact(
    JSON.stringify({ pass, reason, elapsed: elapsed(), url: CONVENE_URL, room: ROOM, pages: snaps }, null, 2)) + '\n')
    .catch(() => {});

  if (!pass) {
    for (const [name, s] of Object.entries(snaps)) {
      console.log(redact(`--- ${name}: state=${s.state} status: ${s.status}`));
      console.log(`    stats: ${JSON.stringify(s.stats)}`);
      if (s.error) console.log(redact(`    error: ${JSON.stringify(s.error)}`));
    }
    console.log('--- browser console:');
    for (const l of consoleLines) console.log(redact(`    ${l}`));
  } else {
    for (const [name, s] of Object.entries(snaps)) console.log(`    ${name} stats: ${JSON.stringify(s.stats)}`);
    // Tear down through the UI path (DELETE on the WHIP/WHEP resource); informational only.
    for (const [name, page] of Object.entries(pages)) {
      const st = await withTimeout(page.evaluate(() => window.convene.stop()).catch((e) => `error: ${e.message}`), 5000, 'timeout');
      info(`${name}: stop() -> DELETE status ${st}`);
    }
  }
  for (const b of [viewerBrowser, browser]) if (b) await withTimeout(b.close().catch(() => {}), 5000);
  console.log(`${pass ? 'PASS' : 'FAIL'}: ${reason} (${elapsed()})`);
  process.exit(pass ? 0 : 1);
}

// Watchdogs: soft at 55 s (collect diagnostics), hard at 60 s (exit no matter what).
setTimeout(() => void finish(false, `overall timeout of ${OVERALL_TIMEOUT_MS / 1000} s exceeded`),
  OVERALL_TIMEOUT_MS - 5000);
setTimeout(() => {
  console.log(`FAIL: hard timeout of ${OVERALL_TIMEOUT_MS / 1000} s (diagnostics did not finish)`);
  process.exit(1);
}, OVERALL_TIMEOUT_MS).unref();
process.on('unhandledRejection', (e) => void finish(false, `unhandled error: ${e?.stack || e}`));
process.on('SIGINT', () => void finish(false, 'interrupted'));
process.on('SIGTERM', () => void finish(false, 'terminated'));

function attachLogging(name, page) {
  page.on('console', (m) => consoleLines.push(`[${elapsed()}] ${name} console.${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => consoleLines.push(`[${elapsed()}] ${name} PAGE ERROR: ${e.message}`));
  page.on('requestfailed', (r) =>
    consoleLines.push(`[${elapsed()}] ${name} request failed: ${r.method()} ${r.url()} ${r.failure()?.errorText}`));
  page.on('response', (r) => {
    if (/\/(whip|whep)\//.test(r.url()) || r.status() >= 400) {
      consoleLines.push(`[${elapsed()}] ${name} HTTP ${r.request().method()} ${r.url()} -> ${r.status()}`);
    }
  });
  page.on('crash', () => consoleLines.push(`[${elapsed()}] ${name} PAGE CRASHED`));
}

async function openPage(context, name, url) {
  const page = await context.newPage();
  pages[name] = page;
  attachLogging(name, page);
  info(`${name}: open ${url}`);
  const resp = await page.goto(url, { waitUntil: 'load', timeout: 10_000 });
  if (!resp || !resp.ok()) throw new Error(`${name}: GET ${CONVENE_URL}/whip returned ${resp ? resp.status() : 'no response'}`);
  await page.waitForFunction(() => typeof window.convene === 'object', null, { timeout: 5000 });
  return page;
}

async function main() {
  const missing = ['ROOM', 'PUBLISH_TOKEN', 'WATCH_TOKEN'].filter((k) => !env[k]);
  if (missing.length) return finish(false, `missing environment variable(s): ${missing.join(', ')}`);
  await mkdir(ARTIFACT_DIR, { recursive: true });

  const args = [
    '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
    '--use-fake-device-for-media-stream', '--use-fake-ui-for-media-stream',
    '--autoplay-policy=no-user-gesture-required',
    ...EXTRA_ARGS,
  ];
  info(`launching ${CHROMIUM}`);
  browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args, timeout: 20_000 });
  info(`browser ${browser.version()}, playwright-core ${PW_VERSION}`);
  const contextOptions = { viewport: { width: 1000, height: 820 } };
  const context = await browser.newContext(contextOptions);
  await context.grantPermissions(['camera', 'microphone'], { origin: new URL(CONVENE_URL).origin });

  // With RETURNING_PUBLISHER the viewer is first: it is accepted and waits for a publisher.
  let early = null;
  if (RETURNING_PUBLISHER) {
    early = await openPage(context, 'viewer', pageUrl('watch', WATCH_TOKEN));
    info('viewer: opened before any publisher');
  }

  // 1. Publisher.
  const pub = await openPage(context, 'publisher', pageUrl('publish', PUBLISH_TOKEN));
  const connected = async () => {
    const state = await pub.waitForFunction(
      () => ['connected', 'failed', 'stopped'].includes(window.convene.state) && window.convene.state,
      null, { timeout: PUBLISH_CONNECT_TIMEOUT_MS, polling: 200 },
    ).then((h) => h.jsonValue(), () => 'timeout');
    if (state === 'connected') return null;
    return state === 'timeout'
      ? `still "${await pub.evaluate(() => window.convene.state).catch(() => '?')}" after ${PUBLISH_CONNECT_TIMEOUT_MS / 1000} s`
      : `"${state}"`;
  };
  const notConnected = await connected();
  if (notConnected) return finish(false, `publisher did not connect (state ${notConnected})`);
  info('publisher: connected');

  if (RETURNING_PUBLISHER) {
    const decoded = async (above, label) => {
      const until = Date.now() + FRAMES_TIMEOUT_MS;
      while (Date.now() < until) {
        const [state, stats] = await early.evaluate(async () => [window.convene.state, await window.convene.stats()]);
        if (stats.framesDecoded > above) return stats.framesDecoded;
        if (state === 'failed' || state === 'stopped') throw new Error(`viewer entered state "${state}" ${label}`);
        await new Promise((r) => setTimeout(r, POLL_MS));
      }
      throw new Error(`viewer decoded no more than ${above} frames ${label}`);
    };
    try {
      const first = await decoded(0, 'from the first publisher');
      info(`viewer: decoded ${first} frames of the first publisher`);
      const status = await pub.evaluate(() => window.convene.stop());
      info(`publisher: stop() -> DELETE ${status}`);
      await new Promise((r) => setTimeout(r, 1500));
      const quiet = await early.evaluate(async () => [window.convene.state, (await window.convene.stats()).framesDecoded]);
      if (quiet[0] !== 'connected') return finish(false, `viewer state "${quiet[0]}" after its publisher left`);
      info(`viewer: still connected with the publisher gone (${quiet[1]} frames)`);
      await pub.goto(pageUrl('publish', PUBLISH_TOKEN), { waitUntil: 'load', timeout: 10_000 });
      await pub.waitForFunction(() => typeof window.convene === 'object', null, { timeout: 5000 });
      const again = await connected();
      if (again) return finish(false, `returning publisher did not connect (state ${again})`);
      const second = await decoded(quiet[1] + 10, 'from the returning publisher');
      return finish(true, `one viewer session decoded ${first} frames, then ${second - quiet[1]} more from the returning publisher`);
    } catch (e) {
      return finish(false, String(e?.message || e));
    }
  }

  // 2. Viewer.
  let viewContext = context;
  if (VIEWER_MDNS) {
    // --use-fake-ui-for-media-stream counts as a media permission grant, which makes Chromium
    // expose raw host IPs; a second browser without it behaves like an ordinary viewer.
    const viewerArgs = args.filter((a) => !a.startsWith('--use-fake-'));
    viewerBrowser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: viewerArgs, timeout: 20_000 });
    viewContext = await viewerBrowser.newContext(contextOptions);
    info('viewer: separate browser without media permissions (expect mDNS .local host candidates)');
  }
  const view = await openPage(viewContext, 'viewer', pageUrl('watch', WATCH_TOKEN));
  const deadline = Date.now() + FRAMES_TIMEOUT_MS;
  let last = null;
  let lastPrint = 0;
  while (Date.now() < deadline) {
    const [state, stats] = await view.evaluate(async () => [window.convene.state, await window.convene.stats()]);
    last = stats;
    const audioPlays = !EXPECT_AUDIO || (stats.audioSamplesReceived > 48_000
      && stats.audioConcealedSamples < stats.audioSamplesReceived / 10);
    if (stats.framesDecoded > 0 && audioPlays) {
      info(`viewer: state=${state}, framesDecoded=${stats.framesDecoded}`);
      const audio = EXPECT_AUDIO
        ? ` and played ${stats.audioSamplesReceived} audio samples (${stats.audioConcealedSamples} concealed)` : '';
      return finish(true, `viewer decoded ${stats.framesDecoded} video frames${audio} from room "${ROOM}"`);
    }
    if (state === 'failed' || state === 'stopped') return finish(false, `viewer entered state "${state}"`);
    if (Date.now() - lastPrint > 5000) {
      lastPrint = Date.now();
      info(`viewer: state=${state}, packetsReceived=${stats.packetsReceived}, framesDecoded=0 (waiting)`);
    }
    await new Promise((r) => setTimeout(r, POLL_MS));
  }
  return finish(false, `viewer decoded no video frames within ${FRAMES_TIMEOUT_MS / 1000} s (last stats ${JSON.stringify(last)})`);
}

main().catch((e) => finish(false, `error: ${String(e?.message || e).split('\n')[0]}`));
