#!/usr/bin/env node
// A Chromium viewer behind an impaired link (run by tests/browser_impaired.rs, which makes the
// network namespace, starts the viewer's Chromium inside it through VIEWER_CHROMIUM, and shapes
// the link with tc/nftables). A Chromium publisher on the host sends 720p simulcast via WHIP;
// the viewer watches via WHEP asking for the best.
//
// Protocol with the test, one line each way per phase: the script prints `PHASE <name>` when
// it wants the link changed, and reads one line from stdin once the test has changed it.
// Phases: `impair` (the test limits or degrades the link), then the script watches for
// WATCH_SECONDS; `lift` (the test lifts the limit, when LIFT=1), then it waits for the top
// layer. Prints one JSON line `FIGURES {...}` and PASS when every check held.
//
// Checks: the viewer keeps decoding under the impairment (framesDecoded advances, no freeze
// over MAX_FREEZE_MS after the first 5 s); with EXPECT_DOWNGRADE=1 it ends on a lower layer
// than the top; with LIFT=1 it is back on the top layer within CLIMB_SECONDS.

import { chromium } from 'playwright-core';
import readline from 'node:readline';

const env = process.env;
const URL_ = env.CONVENE_URL.replace(/\/+$/, '');
const WATCH_SECONDS = Number(env.WATCH_SECONDS || 20);
const CLIMB_SECONDS = Number(env.CLIMB_SECONDS || 15);
const MAX_FREEZE_MS = Number(env.MAX_FREEZE_MS || 1000);
const t0 = Date.now();
const info = (m) => console.log(`[${((Date.now() - t0) / 1000).toFixed(1)}s] ${m}`);
const lines = readline.createInterface({ input: process.stdin })[Symbol.asyncIterator]();
const consoleLines = [];

async function phase(name) {
  console.log(`PHASE ${name}`);
  const { value, done } = await lines.next();
  if (done) throw new Error(`stdin closed before phase ${name}`);
  info(`phase ${name}: ${value}`);
}

const args = ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
  '--use-fake-device-for-media-stream', '--use-fake-ui-for-media-stream',
  '--autoplay-policy=no-user-gesture-required',
  // The server is on the link's address, not localhost: let its page use the camera.
  `--unsafely-treat-insecure-origin-as-secure=${URL_}`];

function pageUrl(mode, token, extra = {}) {
  const q = new URLSearchParams({ room: env.ROOM, token, mode, autostart: '1', ...extra });
  return `${URL_}/whip?${q}`;
}

async function open(browser, name, url) {
  const page = await browser.newPage();
  page.on('console', (m) => consoleLines.push(`${name} ${m.type()}: ${m.text()}`));
  await page.goto(url);
  return page;
}

async function until(what, ms, check) {
  info(`waiting: ${what}`);
  const deadline = Date.now() + ms;
  let last;
  while (Date.now() < deadline) {
    last = await check().catch((e) => ({ error: e.message }));
    if (last && !last.error) return last;
    await new Promise((r) => setTimeout(r, 250));
  }
  throw new Error(`timed out: ${what} (last: ${JSON.stringify(last)})`);
}

async function main() {
  const publisherBrowser = await chromium.launch({ executablePath: env.CHROMIUM, headless: true, args });
  const viewerBrowser = await chromium.launch({ executablePath: env.VIEWER_CHROMIUM, headless: true, args });
  try {
    const publisher = await open(publisherBrowser, 'publisher',
      pageUrl('publish', env.PUBLISH_TOKEN, { simulcast: '1', vcodec: 'VP8' }));
    const widths = await until('the publisher sends q, h and f', 30_000, async () => {
      const e = (await publisher.evaluate(() => window.convene.stats())).encodings || {};
      return ['q', 'h', 'f'].every((r) => e[r]?.frameWidth > 0) &&
        { q: e.q.frameWidth, h: e.h.frameWidth, f: e.f.frameWidth };
    });
    info(`publisher sends ${JSON.stringify(widths)}`);
    const viewer = await open(viewerBrowser, 'viewer', pageUrl('watch', env.WATCH_TOKEN));
    const stats = () => viewer.evaluate(() => window.convene.stats());
    await until('the viewer decodes the top layer on the clear link', 30_000, async () => {
      const s = await stats();
      return s.framesDecoded > 0 && s.frameWidth === widths.f && s;
    });

    await phase('impair');
    const impairedAt = Date.now();
    let last = await stats();
    const audioAtStart = last;
    let lastAdvance = Date.now();
    let worstFreeze = 0;
    let downgradedAfter = null;
    const seen = new Set();
    const freezes = [];
    const switches = [];
    while (Date.now() - impairedAt < WATCH_SECONDS * 1000) {
      await new Promise((r) => setTimeout(r, 100));
      const s = await stats();
      if (s.framesDecoded > last.framesDecoded) {
        const gap = Date.now() - lastAdvance;
        if (Date.now() - impairedAt > 5000) worstFreeze = Math.max(worstFreeze, gap);
        // A freeze: no new frame for over 500 ms (as getStats' freezeCount counts them, roughly).
        if (gap > 500) freezes.push({ at_s: (Date.now() - impairedAt) / 1000, ms: gap, width: s.frameWidth });
        lastAdvance = Date.now();
      }
      if (s.frameWidth && s.frameWidth !== last.frameWidth) {
        switches.push({ at_s: (Date.now() - impairedAt) / 1000, width: s.frameWidth });
      }
      if (s.frameWidth) seen.add(s.frameWidth);
      if (downgradedAfter === null && s.frameWidth && s.frameWidth < widths.f) {
        downgradedAfter = (Date.now() - impairedAt) / 1000;
      }
      last = s;
    }
    const tail = Date.now() - lastAdvance;
    if (Date.now() - impairedAt > 5000) worstFreeze = Math.max(worstFreeze, tail);
    const layers = await viewer.evaluate(() => window.convene.layers());
    const figures = {
      widths, downgraded_after_s: downgradedAfter, worst_freeze_ms: worstFreeze,
      sizes_seen: [...seen].sort((a, b) => a - b), width_at_end: last.frameWidth,
      frames_decoded: last.framesDecoded, freezes_per_minute: (freezes.length * 60) / WATCH_SECONDS,
      freezes, switches, estimate_at_end: layers?.estimate, layers: layers?.layers?.[0],
      viewer_video_at_end: last.video,
    };
    // Audio the viewer's jitter buffer had to conceal during the impairment, in %.
    const samples = (last.audioSamplesReceived || 0) - (audioAtStart.audioSamplesReceived || 0);
    const hidden = (last.audioConcealedSamples || 0) - (audioAtStart.audioConcealedSamples || 0);
    if (samples > 0) figures.audio_concealed_percent = (100 * hidden) / samples;
    info(`under impairment: ${JSON.stringify(figures)}`);
    if (env.EXPECT_DOWNGRADE === '1' && !(last.frameWidth < widths.f)) {
      throw new Error(`still on the top layer behind the limit: ${JSON.stringify(figures)}`);
    }

    if (env.EXPECT_STARVED === '1') {
      // Not even the lowest layer fits: the video is paused for bandwidth, audio flows on.
      const a = (await stats()).audioPacketsReceived;
      await new Promise((r) => setTimeout(r, 2000));
      const b = (await stats()).audioPacketsReceived;
      figures.audio_packets_in_2s = b - a;
      if (!(b - a > 50)) throw new Error(`audio stopped behind the limit: ${JSON.stringify(figures)}`);
      if (figures.layers?.paused !== 'bandwidth') {
        throw new Error(`the layer resource does not say the video is paused for bandwidth: ${JSON.stringify(figures)}`);
      }
    } else if (worstFreeze > MAX_FREEZE_MS) {
      throw new Error(`froze ${worstFreeze} ms under impairment: ${JSON.stringify(figures)}`);
    }

    if (env.LIFT === '1') {
      await phase('lift');
      const liftedAt = Date.now();
      await until(`the viewer is back on the top layer within ${CLIMB_SECONDS} s`, CLIMB_SECONDS * 1000, async () => {
        const s = await stats();
        return s.frameWidth === widths.f && s;
      });
      figures.climbed_after_s = (Date.now() - liftedAt) / 1000;
    }
    console.log(`FIGURES ${JSON.stringify(figures)}`);
    console.log('PASS');
  } finally {
    await viewerBrowser.close().catch(() => {});
    await publisherBrowser.close().catch(() => {});
  }
}

main().catch((e) => {
  console.log(`FAIL: ${e.message}`);
  console.log('--- browser console:');
  for (const l of consoleLines.slice(-60)) console.log(`    ${l}`);
  process.exit(1);
}).then(() => process.exit(0));
