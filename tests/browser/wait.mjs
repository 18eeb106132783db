// Shared by the browser scripts: a timestamped log line, waiting for a check in a page, and
// headless Chromium with fake camera and microphone.

import { chromium } from 'playwright-core';

const t0 = Date.now();

export const info = (m) => console.log(`[${((Date.now() - t0) / 1000).toFixed(1)}s] ${m}`);

/**
 * Resolves with `fn(arg)`'s value, run in `page`, once it is truthy; throws after `stepMs`.
 * Polled with page.evaluate, which awaits an async check: Playwright's waitForFunction does not
 * await its predicate, so a promise (always truthy) would pass at once.
 */
export async function until(page, what, fn, arg, { stepMs = 30_000, pollMs = 500 } = {}) {
  info(`waiting: ${what}`);
  const deadline = Date.now() + stepMs;
  let last;
  while (Date.now() < deadline) {
    last = await page.evaluate(fn, arg).catch((e) => ({ error: e.message }));
    if (last && !last.error) return last;
    await new Promise((r) => setTimeout(r, pollMs));
  }
  throw new Error(`timed out: ${what}${last?.error ? ` (${last.error})` : ''}`);
}

/** Headless Chromium (`$CHROMIUM`, else Debian's) with a fake camera and microphone. */
export function launchChromium() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    timeout: 20_000,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      '--use-fake-device-for-media-stream', '--use-fake-ui-for-media-stream',
      '--autoplay-policy=no-user-gesture-required'],
  });
}
