#!/usr/bin/env node
// Simulcast end to end in headless Chromium: one page publishes its fake 720p camera via WHIP
// with three encodings (RID q/h/f: a quarter, half and full size); three WHEP viewer pages each
// ask for one encoding through WHEP's layer resource and must decode exactly that encoding's
// size (getStats frameWidth equal to what the publisher's encoding sends, and the three
// different). Then the `q` viewer asks for `f` and must switch to it while decoding on.
// Run by tests/browser_simulcast.rs; by hand:
//
//   CONVENE_URL=http://127.0.0.1:8080 ROOM=r PUBLISH_TOKEN=... WATCH_TOKENS=a,b,c \
//     node tests/browser/simulcast.mjs
//
// Exit code 0 and a last line PASS on success.

import { launchChromium } from './wait.mjs';
import { mkdir } from 'node:fs/promises';
import path from 'node:path';

const env = process.env;
const URL_ = (env.CONVENE_URL || 'http://127.0.0.1:8080').replace(/\/+$/, '');
const ARTIFACT_DIR = path.resolve(env.ARTIFACT_DIR || 'test-artifacts/simulcast');
const STEP_MS = 40_000;
const t0 = Date.now();
const info = (m) => console.log(`[${((Date.now() - t0) / 1000).toFixed(1)}s] ${m}`);
const consoleLines = [];
const pages = {};

function pageUrl(mode, token, extra = {}) {
  const q = new URLSearchParams({ room: env.ROOM, token, mode, autostart: '1', ...extra });
  return `${URL_}/whip?${q}`;
}

async function open(browser, name, url) {
  const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  pages[name] = page;
  page.on('console', (m) => consoleLines.push(`${name} ${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => consoleLines.push(`${name} pageerror: ${e.message}`));
  await page.goto(url);
  return page;
}

const stats = (name) => pages[name].evaluate(() => window.convene.stats());

/** Polls `check` (async, returns a truthy value when satisfied) until it holds. */
async function until(what, check) {
  info(`waiting: ${what}`);
  const deadline = Date.now() + STEP_MS;
  let last;
  while (Date.now() < deadline) {
    last = await check().catch((e) => ({ error: e.message }));
    if (last && !last.error && last !== false) return last;
    await new Promise((r) => setTimeout(r, 500));
  }
  throw new Error(`timed out: ${what} (last: ${JSON.stringify(last)})`);
}

async function main() {
  for (const k of ['ROOM', 'PUBLISH_TOKEN', 'WATCH_TOKENS']) if (!env[k]) throw new Error(`${k} is not set`);
  const watchTokens = env.WATCH_TOKENS.split(',');
  const browser = await launchChromium();
  try {
    await open(browser, 'publisher', pageUrl('publish', env.PUBLISH_TOKEN, { simulcast: '1', vcodec: 'VP8' }));
    const sending = await until('the publisher sends all three encodings', async () => {
      const s = await stats('publisher');
      const e = s.encodings || {};
      return ['q', 'h', 'f'].every((r) => e[r]?.frameWidth > 0 && e[r].framesSent > 0) && e;
    });
    info(`publisher encodings: ${JSON.stringify(sending)}`);

    const rids = ['q', 'h', 'f'];
    for (const [i, rid] of rids.entries()) {
      await open(browser, `viewer-${rid}`, pageUrl('watch', watchTokens[i], { layer: rid }));
    }
    const widths = {};
    for (const rid of rids) {
      widths[rid] = await until(`viewer-${rid} decodes the ${rid} encoding's size`, async () => {
        const [viewer, publisher] = [await stats(`viewer-${rid}`), await stats('publisher')];
        const want = publisher.encodings?.[rid]?.frameWidth;
        return viewer.framesDecoded > 0 && viewer.frameWidth > 0 && viewer.frameWidth === want && viewer.frameWidth;
      }).catch(async (e) => {
        // What each side saw, while the pages are still open.
        const [viewer, publisher] = [await stats(`viewer-${rid}`), await stats('publisher')];
        const layers = await pages[`viewer-${rid}`].evaluate(() => window.convene.layers()).catch((err) => err.message);
        throw new Error(`${e.message}; viewer ${JSON.stringify(viewer)}; publisher ${JSON.stringify(publisher.encodings)}; layers ${JSON.stringify(layers)}`);
      });
      info(`viewer-${rid}: ${widths[rid]} px wide`);
    }
    if (!(widths.q < widths.h && widths.h < widths.f)) {
      throw new Error(`the three viewers do not receive three sizes: ${JSON.stringify(widths)}`);
    }
    const layers = await pages['viewer-q'].evaluate(() => window.convene.layers());
    info(`viewer-q layer resource: ${JSON.stringify(layers)}`);
    const video = layers?.layers?.[0];
    if (!video || video.current !== 'q' || video.encodings.map((e) => e.encodingId).join() !== 'q,h,f') {
      throw new Error(`the layer resource does not show q flowing among q,h,f: ${JSON.stringify(layers)}`);
    }

    // A viewer that changes its mind switches on the next keyframe and goes on decoding.
    const before = (await stats('viewer-q')).framesDecoded;
    await pages['viewer-q'].evaluate(() => window.convene.selectLayer('f'));
    await until('viewer-q switches to the f encoding and decodes on', async () => {
      const [viewer, publisher] = [await stats('viewer-q'), await stats('publisher')];
      return viewer.frameWidth === publisher.encodings?.f?.frameWidth && viewer.framesDecoded > before + 10;
    });
    const after = await pages['viewer-q'].evaluate(() => window.convene.layers());
    if (after?.layers?.[0]?.current !== 'f') throw new Error(`after the switch: ${JSON.stringify(after)}`);

    // A frame-rate cap: viewer-h keeps h but only its base temporal layer (VP8's L1T3 from
    // Chromium: about a quarter of the frames), and goes on decoding what it gets.
    const full = await until('viewer-h decodes at full frame rate', async () => {
      const s = await stats('viewer-h');
      return s.framesPerSecond >= 20 && s.framesPerSecond;
    });
    await pages['viewer-h'].evaluate(() => window.convene.selectLayer('h', 0));
    const decodedBefore = (await stats('viewer-h')).framesDecoded;
    const capped = await until('viewer-h decodes the base temporal layer only', async () => {
      const s = await stats('viewer-h');
      return s.framesPerSecond > 0 && s.framesPerSecond <= full / 2 && s.framesDecoded > decodedBefore + 5 && s.framesPerSecond;
    });
    info(`viewer-h: ${full} fps, ${capped} fps with temporalLayerId 0`);
    await pages['viewer-h'].evaluate(() => window.convene.selectLayer('h'));
    await until('viewer-h is back at the full frame rate', async () => {
      const s = await stats('viewer-h');
      return s.framesPerSecond >= full * 0.75 && s.framesPerSecond;
    });

    await mkdir(ARTIFACT_DIR, { recursive: true });
    for (const [name, page] of Object.entries(pages)) {
      await page.screenshot({ path: path.join(ARTIFACT_DIR, `${name}.png`) }).catch(() => {});
    }
    console.log('PASS');
  } finally {
    await browser.close().catch(() => {});
  }
}

main().catch(async (e) => {
  console.log(`FAIL: ${e.message}`);
  for (const [name, page] of Object.entries(pages)) {
    const s = await page.evaluate(() => window.convene?.stats()).catch((err) => ({ error: err.message }));
    console.log(`--- ${name}: ${JSON.stringify(s)}`);
  }
  console.log('--- browser console:');
  for (const l of consoleLines.slice(-80)) console.log(`    ${l}`);
  process.exit(1);
});
