#!/usr/bin/env node
// End-to-end test of the meeting client served at /m/{code}, in headless Chromium (Debian's,
// fake camera and microphone). Run by tests/browser_meeting.rs; by hand:
//
//   CONVENE_URL=http://127.0.0.1:8080 CODE=abc-defg-hij WAITING_CODE=... PASSCODE_CODE=... \
//     PASSCODE=4321 HOST_LOGIN=alice HOST_PASSWORD=... node tests/browser/meeting.mjs
//
// Scenarios: the host signs in through the page and creates a meeting there; sign-up; the
// pre-join check (preview, devices, level meter, join muted); two participants see each other,
// the host's camera goes out as simulcast and Bob's tile size picks its layer (dynacast turns
// the unneeded top layer off and on again); then three participants see each other's
// video decoding (framesDecoded > 0 via getStats); chat reaches the others; screen share reaches
// the others; hand raise, moderator mute and promotion show; the host records 10 s and everyone
// sees REC; a dropped socket resumes; a schedule
// change shows live; the host removes a participant, whose page says so;
// the passcode prompt (wrong, then right); a refused camera; an unknown code; a guest waits in the waiting room
// until the host admits them; the host ends the meeting for everyone. Saves screenshots in ARTIFACT_DIR (three.png: the
// three-person meeting). Exit code 0 = PASS.

import { chromium } from 'playwright-core';
import { info, until } from './wait.mjs';
import { mkdir } from 'node:fs/promises';
import path from 'node:path';

const env = process.env;
const URL_ = (env.CONVENE_URL || 'http://127.0.0.1:8080').replace(/\/+$/, '');
const CHROMIUM = env.CHROMIUM || '/usr/bin/chromium';
const ARTIFACT_DIR = path.resolve(env.ARTIFACT_DIR || 'test-artifacts/meeting');

for (const k of ['CODE', 'WAITING_CODE', 'PASSCODE_CODE', 'PASSCODE', 'HOST_LOGIN', 'HOST_PASSWORD']) {
  if (!env[k]) { console.log(`FAIL: ${k} is not set`); process.exit(1); }
}

const pages = {};
const consoleLines = [];
let browser;
let deniedBrowser;

async function open(context, name, url) {
  const page = await context.newPage();
  pages[name] = page;
  page.on('console', (m) => consoleLines.push(`${name} ${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => consoleLines.push(`${name} pageerror: ${e.message}`));
  await page.goto(url);
  return page;
}


/** Resolves once `page` decodes camera video from every name in `names`. */
function seesVideo(page, label, names, source = 'camera') {
  return until(page, `${label} decodes ${source} video of ${names.join(', ')}`, async ({ names, source }) => {
    const s = await window.convene?.stats();
    return s && names.every((n) => (s[source][n] || 0) > 0);
  }, { names, source });
}

async function context() {
  const ctx = await browser.newContext({ viewport: { width: 1280, height: 720 } });
  await ctx.grantPermissions(['camera', 'microphone'], { origin: URL_ });
  return ctx;
}

async function shot(name) {
  await mkdir(ARTIFACT_DIR, { recursive: true });
  await pages[name].screenshot({ path: path.join(ARTIFACT_DIR, `${name}.png`) });
}

async function main() {
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    timeout: 20_000,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      '--use-fake-device-for-media-stream', '--use-fake-ui-for-media-stream',
      '--auto-select-desktop-capture-source=Entire screen',
      '--autoplay-policy=no-user-gesture-required'],
  });

  // No fake media UI and no permission grant: getUserMedia is refused, as when a user says no.
  deniedBrowser = await chromium.launch({
    executablePath: CHROMIUM, headless: true, timeout: 20_000,
    args: ['--no-sandbox', '--disable-gpu', '--no-first-run', '--use-fake-device-for-media-stream'],
  });

  // The host signs in through the start page, then opens the meeting link.
  const hostCtx = await context();
  const host = await open(hostCtx, 'host', `${URL_}/`);
  await host.getByLabel('Email or username').fill(env.HOST_LOGIN);
  await host.getByLabel('Password', { exact: true }).first().fill(env.HOST_PASSWORD);
  await host.getByRole('button', { name: 'Sign in' }).click();
  await until(host, 'host signed in', () => document.querySelector('#who').textContent.includes('Signed in'));
  // A meeting made from the start page gets a link.
  await host.getByLabel('Title').fill('Made in the page');
  await host.getByRole('button', { name: 'Create' }).click();
  await until(host, 'the new meeting link is shown', () => /\/m\/[a-z]{3}-[a-z]{4}-[a-z]{3}$/.test(document.querySelector('#created a')?.getAttribute('href') || ''));
  info('PASS create a meeting from the page');

  // Sign up through the page.
  const newbie = await open(await context(), 'newbie', `${URL_}/`);
  const signup = newbie.getByRole('form', { name: 'Sign up' });
  await signup.getByLabel('Email').fill(`nia-${Date.now()}@example.test`);
  await signup.getByLabel('Username').fill(`nia${Date.now()}`);
  await signup.getByLabel('Display name').fill('Nia');
  await signup.getByLabel('Password').fill('correct horse battery');
  await signup.getByRole('button', { name: 'Create account' }).click();
  await until(newbie, 'Nia is signed in after signing up', () => document.querySelector('#who').textContent === 'Signed in as Nia');
  await newbie.close();
  info('PASS sign up');
  await host.goto(`${URL_}/m/${env.CODE}?autojoin=1`);
  await until(host, 'host joined', () => window.convene?.state === 'joined');
  const hostName = await host.evaluate(() => window.convene.me.display_name);

  // Two participants.
  const bob = await open(await context(), 'bob', `${URL_}/m/${env.CODE}?name=Bob&autojoin=1`);
  await until(bob, 'Bob joined', () => window.convene?.state === 'joined');
  await seesVideo(host, 'host', ['Bob']);
  await seesVideo(bob, 'Bob', [hostName]);
  info('PASS two participants see each other');

  // Simulcast and dynacast: the host's 720p camera goes out as q/h/f. In a small window Bob's
  // tile of it asks for less than f, so nobody needs f and the host stops encoding it; a large
  // window makes the tile ask for f, and the host sends it again.
  await until(host, 'the host publishes its camera as q/h/f', () =>
    window.convene.encodings().map((e) => e.rid).join() === 'q,h,f');
  await bob.setViewportSize({ width: 640, height: 400 });
  await until(bob, "Bob's small tile receives a layer below f", (n) => {
    const w = window.convene.received()[n];
    return w > 0 && w < 1280;
  }, hostName);
  await until(host, 'the host stops encoding f (nobody needs it)', () =>
    window.convene.encodings().find((e) => e.rid === 'f')?.active === false);
  await bob.setViewportSize({ width: 1920, height: 1080 });
  await until(host, 'the host encodes f again for a large tile', () =>
    window.convene.encodings().find((e) => e.rid === 'f')?.active === true);
  await until(bob, "Bob's large tile receives f", (n) => window.convene.received()[n] === 1280, hostName);
  await bob.setViewportSize({ width: 1280, height: 720 });
  info('PASS simulcast layers follow tile sizes, dynacast stops and resumes f');

  // Three.
  // Cara goes through the pre-join check: preview, devices, level meter, join muted.
  const cara = await open(await context(), 'cara', `${URL_}/m/${env.CODE}?name=Cara`);
  await until(cara, "Cara's pre-join check shows preview, devices and sound", () =>
    window.convene?.state === 'prejoin' && document.querySelector('#preview').videoWidth > 0
    && document.querySelector('#camera-select').options.length > 0 && document.querySelector('#mic-select').options.length > 0
    && document.querySelector('#level').value > 0);
  await cara.getByLabel('Join with microphone muted').check();
  await cara.getByRole('button', { name: 'Join now' }).click();
  await until(cara, 'Cara joined', () => window.convene?.state === 'joined');
  await until(host, 'host sees Cara muted', () =>
    [...document.querySelectorAll('#grid .tile')].some((t) => t.textContent.includes('Cara') && t.querySelector('[aria-label="microphone muted"]')));
  await seesVideo(host, 'host', ['Bob', 'Cara']);
  await seesVideo(bob, 'Bob', [hostName, 'Cara']);
  await seesVideo(cara, 'Cara', [hostName, 'Bob']);
  await until(host, 'host grid shows three tiles with video', () =>
    [...document.querySelectorAll('#grid .tile video')].filter((v) => v.videoWidth > 0).length >= 3);
  await host.waitForTimeout(1000);
  await shot('host');
  await mkdir(ARTIFACT_DIR, { recursive: true });
  await host.screenshot({ path: path.join(ARTIFACT_DIR, 'three.png') });
  info('PASS three participants see each other; three.png saved');

  // Phone width: the layout stacks without sideways scrolling.
  await bob.setViewportSize({ width: 390, height: 844 });
  await bob.waitForTimeout(300);
  const overflow = await bob.evaluate(() => document.documentElement.scrollWidth);
  await bob.screenshot({ path: path.join(ARTIFACT_DIR, 'phone.png'), fullPage: true });
  if (overflow > 390) throw new Error(`at phone width the page is ${overflow}px wide`);
  await bob.setViewportSize({ width: 1280, height: 720 });
  info('PASS phone width fits');

  // Chat.
  await bob.getByLabel('Message').fill('hello from Bob');
  await bob.getByRole('button', { name: 'Send' }).click();
  for (const [n, p] of [['host', host], ['Cara', cara], ['Bob', bob]]) {
    await until(p, `${n} shows Bob's chat message`, () =>
      [...document.querySelectorAll('#chat li')].some((li) => li.textContent.includes('Bob') && li.textContent.includes('hello from Bob')));
  }
  info('PASS chat reaches everyone');

  // Bob raises his hand; the host sees it.
  await bob.getByRole('button', { name: 'Raise hand' }).click();
  await until(host, "host sees Bob's raised hand", () =>
    [...document.querySelectorAll('#people li')].some((li) => li.textContent.includes('Bob') && li.querySelector('[aria-label="hand raised"]')));
  info('PASS hand raised shows');

  // The host mutes Bob's microphone; Bob's page follows and the others see the badge.
  await host.getByRole('button', { name: 'Mute Bob' }).click();
  await until(bob, "Bob's page shows he was muted", () =>
    document.querySelector('#mic-btn').getAttribute('aria-pressed') === 'true' && /moderator muted your microphone/.test(document.querySelector('#status').textContent));
  await until(cara, "Cara sees Bob's muted badge", () =>
    [...document.querySelectorAll('#grid .tile')].some((t) => t.textContent.includes('Bob') && t.querySelector('[aria-label="microphone muted"]')));
  info('PASS moderator mute');

  // The host promotes Bob to moderator; everyone's list shows it.
  await host.getByRole('button', { name: 'Make Bob moderator' }).click();
  await until(cara, 'Cara sees Bob as moderator', () => window.convene.participants().some((p) => p.name === 'Bob' && p.role === 'moderator'));
  await until(bob, 'Bob now has moderator controls', () => !!document.querySelector('button[aria-label="Remove Cara"]'));
  info('PASS promote');

  // Bob's socket drops; his page says it is reconnecting, resumes, and keeps decoding.
  await bob.evaluate(() => window.convene.dropSocket());
  await until(bob, 'Bob resumed after the drop', () => window.convene.state === 'joined' && /Reconnected/.test(document.querySelector('#status').textContent));
  const before = await bob.evaluate(async (n) => (await window.convene.stats()).camera[n], hostName);
  await until(bob, 'Bob still decodes new frames after resuming', async ({ n, before }) => ((await window.convene.stats()).camera[n] || 0) > before, { n: hostName, before });
  if (!(await host.evaluate(() => window.convene.participants().some((p) => p.name === 'Bob')))) throw new Error('Bob left the host\'s list during the resume');
  info('PASS reconnect with resume');

  // The host moves the meeting's start time; the guests' pages show the new time at once.
  const when = new Date(Date.now() + 3 * 86400_000);
  when.setUTCSeconds(0, 0);
  const patched = await host.evaluate(async ({ code, at }) => {
    const token = JSON.parse(localStorage.getItem('convene.auth')).access_token;
    const r = await fetch(`/api/v1/meetings/${code}`, { method: 'PATCH', headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` }, body: JSON.stringify({ scheduled_at: at }) });
    return r.status;
  }, { code: env.CODE, at: when.toISOString() });
  if (patched !== 200) throw new Error(`PATCH meeting answered ${patched}`);
  await until(bob, "Bob's page shows the new start time", (ms) => {
    const at = document.querySelector('#schedule').dataset.scheduledAt;
    return at && Date.parse(at) === ms && /scheduled for/.test(document.querySelector('#schedule').textContent);
  }, when.getTime());
  info('PASS a schedule change shows live');

  // Screen share from the host (guests may not share).
  await host.getByRole('button', { name: 'Share screen' }).click();
  await seesVideo(bob, 'Bob', [hostName], 'screen');
  await seesVideo(cara, 'Cara', [hostName], 'screen');
  await until(bob, "Bob's grid shows the host's screen tile", (n) =>
    !!document.querySelector(`#grid .tile[aria-label="${n}"] video`) && [...document.querySelectorAll('#grid .tile')].some((t) => t.dataset.key.endsWith(':screen')), hostName);
  info('PASS screen share reaches the others');

  // The host records for 10 s: everyone sees REC while it runs (tests/browser_meeting.rs then
  // checks the files with ffprobe).
  await host.getByRole('button', { name: 'Record' }).click();
  for (const [n, p] of [['host', host], ['Bob', bob], ['Cara', cara]]) {
    await until(p, `${n} sees the REC indicator`, () => !document.querySelector('#rec').hidden);
  }
  await host.waitForTimeout(10_000);
  await host.getByRole('button', { name: 'Stop recording' }).click();
  await until(bob, 'Bob sees the recording stop', () => document.querySelector('#rec').hidden);
  info('PASS recording shows REC to everyone');

  // The host removes Cara.
  await host.getByRole('button', { name: 'Remove Cara' }).click();
  await until(cara, "Cara's page says she was removed", () =>
    window.convene.state === 'ended' && document.body.dataset.reason === 'kicked' && /removed/.test(document.querySelector('#ended-why').textContent));
  await until(host, 'host no longer lists Cara', () => !window.convene.participants().some((p) => p.name === 'Cara'));
  await until(bob, 'Bob no longer lists Cara', () => !window.convene.participants().some((p) => p.name === 'Cara'));
  await shot('cara');
  info('PASS kicked participant is told');

  // A meeting with a passcode: the prompt, a wrong passcode, then the right one.
  const pat = await open(await context(), 'pat', `${URL_}/m/${env.PASSCODE_CODE}?name=Pat&autojoin=1`);
  await until(pat, 'Pat is asked for the passcode', () => window.convene?.state === 'passcode');
  await pat.getByRole('textbox', { name: 'Passcode', exact: true }).fill('0000');
  await pat.getByRole('button', { name: 'Continue' }).click();
  await until(pat, 'Pat is told the passcode is wrong', () =>
    window.convene.state === 'passcode' && /Wrong passcode/.test(document.querySelector('#alert').textContent));
  await pat.getByRole('textbox', { name: 'Passcode', exact: true }).fill(env.PASSCODE);
  await pat.getByRole('button', { name: 'Continue' }).click();
  await until(pat, 'Pat joined with the right passcode', () => window.convene?.state === 'joined');
  await pat.close();
  info('PASS passcode prompt');

  // A browser that refuses the camera and microphone: the page says so and still joins.
  const shy = await deniedBrowser.newContext();
  const dina = await open(shy, 'dina', `${URL_}/m/${env.PASSCODE_CODE}?name=Dina&autojoin=1`);
  await until(dina, 'Dina is asked for the passcode', () => window.convene?.state === 'passcode');
  await until(dina, "Dina's page says camera access was denied", () => /denied/.test(document.querySelector('#alert').textContent));
  await dina.getByRole('textbox', { name: 'Passcode', exact: true }).fill(env.PASSCODE);
  await dina.getByRole('button', { name: 'Continue' }).click();
  await until(dina, 'Dina joined without devices, still told why', () =>
    window.convene?.state === 'joined' && /denied/.test(document.querySelector('#alert').textContent));
  await dina.close();
  info('PASS camera denied');

  // An unknown code says so.
  const lost = await open(await context(), 'lost', `${URL_}/m/zzz-zzzz-zzz?name=Lou&autojoin=1`);
  await until(lost, 'unknown meeting is reported', () =>
    window.convene?.state === 'ended' && /no meeting/.test(document.querySelector('#ended-why').textContent));
  await lost.close();
  info('PASS unknown meeting code');

  // Waiting room: the host opens the second meeting; a guest waits until admitted.
  const host2 = await open(hostCtx, 'host2', `${URL_}/m/${env.WAITING_CODE}?autojoin=1`);
  await until(host2, 'host joined the waiting-room meeting', () => window.convene?.state === 'joined');
  const gus = await open(await context(), 'gus', `${URL_}/m/${env.WAITING_CODE}?name=Gus&autojoin=1`);
  await until(gus, 'Gus is in the waiting room', () => window.convene?.state === 'waiting');
  await gus.waitForTimeout(1500);
  if (await gus.evaluate(() => window.convene.state) !== 'waiting') throw new Error('Gus left the waiting room before being admitted');
  await shot('gus');
  await host2.getByRole('button', { name: 'Admit Gus' }).click();
  await until(gus, 'Gus joined after admission', () => window.convene?.state === 'joined');
  await seesVideo(gus, 'Gus', [hostName]);
  await seesVideo(host2, 'host', ['Gus']);
  info('PASS waiting room admits a guest');

  // The host ends the meeting for everyone.
  await host2.getByRole('button', { name: 'End for everyone' }).click();
  await until(gus, "Gus's page says the meeting ended", () =>
    window.convene.state === 'ended' && document.body.dataset.reason === 'meeting_ended' && /ended/.test(document.querySelector('#ended-why').textContent));
  info('PASS end for everyone');

  console.log('PASS');
}

const timer = setTimeout(() => { console.log('FAIL: overall timeout'); finish(1); }, 150_000);

async function finish(code) {
  clearTimeout(timer);
  if (code !== 0) {
    for (const [name, page] of Object.entries(pages)) {
      if (page.isClosed()) continue;
      const s = await page.evaluate(() => ({ state: window.convene?.state, error: window.convene?.error, status: document.querySelector('#status')?.textContent, alert: document.querySelector('#alert')?.textContent })).catch((e) => e.message);
      console.log(`--- ${name}: ${JSON.stringify(s)}`);
      await shot(name).catch(() => {});
    }
    console.log('--- browser console:');
    for (const l of consoleLines.slice(-60)) console.log(l);
  }
  await browser?.close().catch(() => {});
  await deniedBrowser?.close().catch(() => {});
  process.exit(code);
}

main().then(() => finish(0), (e) => { console.log(`FAIL: ${e.message}`); finish(1); });
