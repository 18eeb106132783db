// The meeting client: start page (sign in/up, create, join by code), pre-join check, passcode,
// waiting room, and the meeting itself. `window.convene` exposes state and stats for tests.
import * as api from './api.js';
import { Session, waitForAdmission } from './signaling.js';
import { $, show, status, alert, el, tile, removeTile, setLabel, qualityIcon } from './ui.js';

const RANK = { host: 3, moderator: 2, participant: 1, guest: 0 };

const st = {
  phase: 'start',
  error: null,
  user: null,
  code: null,
  name: '',
  passcode: undefined,
  meeting: null,
  me: null,
  permissions: {},
  participants: new Map(), // participant_id -> participant
  tracks: new Map(), // server track id -> {participant_id, source, kind}
  waiting: new Map(),
  speaking: new Set(),
  quality: new Map(),
  local: { stream: null, mic: null, cam: null, screen: null, micMuted: false, camOff: false, hand: false },
  session: null,
  meter: null,
};

window.convene = {
  get state() { return st.phase; },
  get error() { return st.error; },
  get me() { return st.me; },
  participants: () => [...st.participants.values()].map((p) => ({ id: p.participant_id, name: p.display_name, role: p.role })),
  stats,
  /** The camera's simulcast encodings as sent now (dynacast turns them on and off). */
  encodings: () => {
    const entry = st.local.cam && st.session?.local.get(st.local.cam.id);
    return (entry?.sender?.getParameters().encodings || []).map((e) => ({ rid: e.rid, active: e.active }));
  },
  /** The size of each remote camera tile's video, by display name. */
  received: () => Object.fromEntries([...st.participants.values()]
    .filter((p) => p.participant_id !== st.me?.participant_id)
    .map((p) => [p.display_name, document.querySelector(`.tile[data-key="${CSS.escape(p.identity)}"] video`)?.videoWidth || 0])),
  /** The signaling socket's URL: in a cluster, the node serving the meeting. */
  get node() { return st.session?.socketUrl() || ''; },
  // For tests and debugging: drops the socket as a network loss would (the client resumes).
  dropSocket: () => st.session?.ws?.close(4000, 'simulated drop'),
};

function setPhase(phase) { st.phase = phase; document.body.dataset.state = phase; }

function fail(text) { st.error = text; alert(text); }

// ---------- start page ----------

async function home() {
  setPhase('home');
  show('home');
  $('#created').replaceChildren();
  $('#signed-out').hidden = !!st.user;
  $('#create-form').hidden = !st.user;
}

function renderWho() {
  $('#who').textContent = st.user ? `Signed in as ${st.user.display_name}` : '';
  $('#signout').hidden = !st.user;
}

function bindHome() {
  $('#join-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const raw = new FormData(e.target).get('code').trim();
    const code = raw.replace(/^.*\/m\//, '').replace(/[?#].*$/, '');
    location.href = `/m/${encodeURIComponent(code)}`;
  });
  $('#login-form').addEventListener('submit', async (e) => {
    e.preventDefault();
    const f = new FormData(e.target);
    try {
      st.user = await api.login(f.get('login'), f.get('password'));
      alert(''); renderWho(); home();
    } catch (err) { fail(err.code === 'invalid_credentials' ? 'Wrong email, username or password.' : err.message); }
  });
  $('#register-form').addEventListener('submit', async (e) => {
    e.preventDefault();
    const f = Object.fromEntries(new FormData(e.target));
    try {
      st.user = await api.register(f);
      alert(''); renderWho(); home();
    } catch (err) {
      const fields = err.details?.fields || err.details;
      fail(Array.isArray(fields) ? fields.map((x) => `${x.field}: ${x.message}`).join('; ') : err.message);
    }
  });
  $('#create-form').addEventListener('submit', async (e) => {
    e.preventDefault();
    const f = new FormData(e.target);
    const body = { title: f.get('title'), settings: { waiting_room: f.get('waiting_room') === 'on' } };
    if (f.get('scheduled_at')) body.scheduled_at = new Date(f.get('scheduled_at')).toISOString();
    if (f.get('passcode')) body.passcode = f.get('passcode');
    try {
      const { data } = await api.call('POST', '/meetings', body);
      const url = new URL(data.join_url, location.href).href;
      $('#created').replaceChildren('Meeting link: ', el('a', { href: data.join_url }, url));
      alert('');
    } catch (err) { fail(err.message); }
  });
  $('#signout').addEventListener('click', async () => { await api.logout(); st.user = null; renderWho(); location.href = '/'; });
}

// ---------- devices and pre-join ----------

async function getMedia(camId, micId) {
  stopLocal();
  st.deviceWarning = null;
  // 720p when the camera has it: the top of the three simulcast encodings.
  const hd = { width: { ideal: 1280 }, height: { ideal: 720 } };
  const video = camId ? { deviceId: { exact: camId }, ...hd } : hd;
  const audio = micId ? { deviceId: { exact: micId } } : true;
  let stream = null;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ video, audio });
  } catch (e) {
    // Try each kind alone, so a blocked camera still lets the microphone through.
    const parts = [];
    for (const c of [{ audio }, { video }]) {
      try { parts.push(...(await navigator.mediaDevices.getUserMedia(c)).getTracks()); } catch { /* keep going */ }
    }
    stream = new MediaStream(parts);
    const what = e.name === 'NotAllowedError' ? 'Camera or microphone access was denied' : `Camera or microphone unavailable (${e.message})`;
    st.deviceWarning = `${what}. You can still join and watch; allow access in the browser to be seen and heard.`;
    fail(st.deviceWarning);
  }
  st.local.stream = stream;
  st.local.mic = stream.getAudioTracks()[0] || null;
  st.local.cam = stream.getVideoTracks()[0] || null;
  return stream;
}

function stopLocal() {
  st.local.stream?.getTracks().forEach((t) => t.stop());
  st.meter?.close?.();
  st.meter = null;
}

async function fillDevices() {
  const devices = await navigator.mediaDevices.enumerateDevices().catch(() => []);
  for (const [sel, kind, cur] of [['#camera-select', 'videoinput', st.local.cam], ['#mic-select', 'audioinput', st.local.mic]]) {
    const current = cur?.getSettings().deviceId;
    $(sel).replaceChildren(...devices.filter((d) => d.kind === kind).map((d, i) =>
      el('option', { value: d.deviceId, selected: d.deviceId === current }, d.label || `${kind} ${i + 1}`)));
  }
}

function startMeter() {
  if (!st.local.mic) return;
  const ctx = new AudioContext();
  const src = ctx.createMediaStreamSource(new MediaStream([st.local.mic]));
  const an = ctx.createAnalyser();
  an.fftSize = 512;
  src.connect(an);
  const buf = new Float32Array(an.fftSize);
  const tick = () => {
    if (ctx.state === 'closed') return;
    an.getFloatTimeDomainData(buf);
    let sum = 0;
    for (const v of buf) sum += v * v;
    $('#level').value = Math.min(1, Math.sqrt(sum / buf.length) * 4);
    requestAnimationFrame(tick);
  };
  tick();
  st.meter = ctx;
}

async function prejoin() {
  setPhase('prejoin');
  show('prejoin');
  $('#prejoin-code').textContent = st.code;
  $('#name-label').hidden = !!st.user;
  $('#prejoin-form').elements.name.value = st.name;
  const preview = async () => {
    const stream = await getMedia($('#camera-select').value, $('#mic-select').value);
    $('#preview').srcObject = stream;
    startMeter();
  };
  await preview();
  await fillDevices();
  $('#camera-select').onchange = preview;
  $('#mic-select').onchange = preview;
  $('#prejoin-form').onsubmit = (e) => {
    e.preventDefault();
    st.name = e.target.elements.name.value.trim();
    st.local.micMuted = $('#join-muted').checked;
    st.local.camOff = $('#join-camoff').checked;
    if (!st.user && !st.name) { fail('Please enter your name.'); return; }
    st.meter?.close?.();
    join();
  };
}

// ---------- joining ----------

async function join(extra = {}) {
  alert(st.deviceWarning || ''); // a refused camera stays explained until the user acts on it
  status('Joining…');
  const body = { ...extra };
  if (!st.user) body.display_name = st.name;
  if (st.passcode) body.passcode = st.passcode;
  if (st.invite) body.invite_token = st.invite;
  try {
    const { status: code, data } = await api.call('POST', `/meetings/${encodeURIComponent(st.code)}/join`, body);
    if (code === 202) return waitingRoom(data);
    return enterMeeting(data);
  } catch (err) {
    status('');
    switch (err.code) {
      case 'wrong_passcode':
        return askPasscode(st.passcode !== undefined);
      case 'meeting_ended': return finish('This meeting has ended.', 'meeting_ended');
      case 'meeting_not_found': return finish(`There is no meeting with the code “${st.code}”.`, 'not_found');
      case 'login_required': return finish('This meeting is for signed-in users only. Sign in and try again.', 'login_required');
      case 'not_invited': return finish('This meeting is by invitation only.', 'not_invited');
      case 'banned': return finish('You were removed from this meeting and cannot join again.', 'banned');
      case 'denied': return finish('The host did not let you in.', 'denied');
      case 'meeting_full': return finish('The meeting is full.', 'meeting_full');
      default: return finish(`Could not join: ${err.message}`, 'error');
    }
  }
}

function askPasscode(wrong) {
  setPhase('passcode');
  show('passcode');
  if (wrong) fail('Wrong passcode. Try again.');
  const form = $('#passcode-form');
  form.elements.passcode.value = '';
  form.elements.passcode.focus();
  form.onsubmit = (e) => {
    e.preventDefault();
    st.passcode = form.elements.passcode.value;
    join();
  };
}

async function waitingRoom(data) {
  setPhase('waiting');
  show('waiting');
  status('You are in the waiting room.');
  $('#waiting-leave').onclick = () => { location.href = '/'; };
  try {
    await waitForAdmission(data.wait_token);
    status('Admitted. Joining…');
    await join({ wait_token: data.wait_token });
  } catch (err) {
    if (err.code === 'denied') finish('The host did not let you in.', 'denied');
    else if (err.code === 'meeting_ended') finish('The meeting has ended.', 'meeting_ended');
    else if (err.code === 'kicked') finish('You were removed from the meeting.', 'kicked');
    // The socket dropped: ask over REST instead (it answers 200 once we are admitted).
    else setTimeout(() => join({ wait_token: data.wait_token }), 2000);
  }
}

async function enterMeeting(data) {
  if (!st.local.stream) await getMedia();
  const s = new Session({
    token: data.join_token,
    wsUrl: data.ws_url,
    iceServers: data.ice_servers,
    // ?relay=1: media only through TURN, as behind a firewall that lets nothing else out.
    relay: new URLSearchParams(location.search).get('relay') === '1',
    onEvent,
    onTrack,
    onStatus: (kind, text) => {
      status(text);
      if (kind === 'reconnecting') setPhase('reconnecting');
      if (kind === 'error') st.error = text;
    },
  });
  st.session = s;
  const stream = st.local.stream;
  if (st.local.mic) await s.addTrack(st.local.mic, 'microphone', stream);
  if (st.local.cam) await s.addTrack(st.local.cam, 'camera', stream);
  s.connect(false);
}

// ---------- the meeting ----------

function identityName(identity) {
  for (const p of st.participants.values()) if (p.identity === identity) return p;
  return null;
}

function onEvent(msg) {
  switch (msg.type) {
    case 'joined': {
      const first = st.phase !== 'reconnecting' || !st.me;
      st.me = msg.you;
      st.permissions = msg.permissions;
      st.meeting = msg.meeting;
      st.participants = new Map([[msg.you.participant_id, msg.you], ...msg.participants.map((p) => [p.participant_id, p])]);
      st.tracks.clear();
      for (const p of st.participants.values()) for (const t of p.tracks || []) st.tracks.set(t.track_id, { participant_id: p.participant_id, ...t });
      st.waiting = new Map((msg.waiting || []).map((w) => [w.participant_id, w]));
      setPhase('joined');
      status(msg.resumed ? 'Reconnected.' : '');
      if (first) setupMeeting();
      for (const m of msg.chat || []) addChat(m); // history (also for guests); duplicates are skipped
      renderSchedule();
      applyInitialMutes(msg.you.muted || []);
      render();
      return;
    }
    case 'participant_joined':
    case 'participant_updated':
      st.participants.set(msg.participant.participant_id, msg.participant);
      if (msg.participant.participant_id === st.me?.participant_id) { st.me = msg.participant; }
      if (msg.type === 'participant_updated' && msg.participant.participant_id === st.me?.participant_id) {
        st.permissions.moderate = RANK[msg.participant.role] >= RANK.moderator;
      }
      render();
      return;
    case 'participant_left': {
      const p = st.participants.get(msg.participant_id);
      st.participants.delete(msg.participant_id);
      if (p) { removeTile(p.identity); removeTile(p.identity + ':screen'); }
      render();
      return;
    }
    case 'track_published':
      st.tracks.set(msg.track_id, msg);
      render();
      return;
    case 'track_unpublished': {
      const t = st.tracks.get(msg.track_id);
      st.tracks.delete(msg.track_id);
      const p = t && st.participants.get(t.participant_id);
      if (p && t.source === 'screen') removeTile(p.identity + ':screen');
      render();
      return;
    }
    case 'media_state': {
      const p = st.participants.get(msg.participant_id);
      if (p) {
        const muted = new Set(p.muted || []);
        if (msg.muted) muted.add(msg.source); else muted.delete(msg.source);
        p.muted = [...muted];
      }
      if (msg.participant_id === st.me?.participant_id && msg.by && msg.muted) {
        // A moderator's mute covers a whole kind (screen audio too): tell about the main source only.
        if (msg.source === 'microphone') { setMic(true, false); status('A moderator muted your microphone.'); }
        if (msg.source === 'camera') { setCam(true, false); status('A moderator turned off your camera.'); }
      }
      render();
      return;
    }
    case 'active_speakers':
      st.speaking = new Set(msg.speakers.map((s) => s.participant_id));
      render();
      return;
    case 'track_paused': {
      // The server stopped (or resumed) a track for us, e.g. our link cannot carry it now.
      const t = document.querySelector(`.tile[data-video-track="${CSS.escape(msg.track_id)}"]`);
      if (t) {
        t.classList.toggle('paused', msg.paused);
        t.dataset.paused = msg.paused ? msg.reason : '';
        t.title = msg.paused ? `Video paused: ${msg.reason === 'bandwidth' ? 'your connection is too slow for it now' : msg.reason}` : '';
      }
      return render();
    }
    case 'encodings':
      return;
    case 'connection_quality':
      st.quality.set(msg.participant_id, msg.quality);
      if (msg.participant_id === st.me?.participant_id) $('#quality').textContent = `${qualityIcon(msg.quality)} ${msg.quality}`;
      render();
      return;
    case 'chat_message':
      addChat(msg);
      return;
    case 'typing': {
      const p = st.participants.get(msg.participant_id);
      $('#typing').textContent = msg.active && p ? `${p.display_name} is typing…` : '';
      return;
    }
    case 'waiting':
      st.waiting.set(msg.participant.participant_id, msg.participant);
      status(`${msg.participant.display_name} is waiting to join.`);
      render();
      return;
    case 'admitted':
    case 'denied':
      st.waiting.delete(msg.participant_id);
      render();
      return;
    case 'kicked':
      return finish(msg.banned ? 'You were removed from the meeting and may not rejoin.' : 'You were removed from the meeting by a moderator.', 'kicked');
    case 'meeting_ended':
      return finish('The host ended the meeting for everyone.', 'meeting_ended');
    case 'recording_started':
      st.recording = msg.recording_id;
      status(msg.audio_only ? 'This meeting is being recorded (audio only).' : 'This meeting is being recorded.');
      render();
      return;
    case 'recording_stopped':
      st.recording = null;
      status(msg.status === 'failed' ? `The recording stopped: ${msg.reason || 'failed'}.` : 'The recording stopped.');
      render();
      return;
    case 'meeting_updated':
      st.meeting = msg.meeting;
      st.permissions.chat = msg.meeting.settings?.chat !== false;
      status('The meeting details changed.');
      renderSchedule();
      render();
      return;
    case 'error':
      if (['forbidden', 'forbidden_source', 'chat_disabled', 'rate_limited', 'invalid', 'participant_not_found', 'not_waiting', 'recording_running', 'not_recording', 'disk_full'].includes(msg.code)) fail(msg.message);
      else if (['kicked', 'meeting_ended', 'banned', 'session_gone', 'meeting_not_found'].includes(msg.code)) st.error = msg.code;
      return;
    case 'closed': {
      if (st.phase === 'ended') return;
      const why = {
        4001: 'You joined this meeting from another tab or device.',
        4003: 'You were removed from the meeting.',
        4004: 'The meeting has ended.',
        4010: 'Your session expired. Join again.',
        4401: 'Your session expired. Join again.',
      }[msg.code] || (msg.lost ? 'The connection to the server was lost.' : 'You left the meeting.');
      return finish(why, msg.code === 4003 ? 'kicked' : msg.code === 4004 ? 'meeting_ended' : 'closed');
    }
    case 'pc_state':
      if (msg.state === 'failed') status(`Media connection (${msg.which}) failed. Reconnecting…`);
      return;
    default:
  }
}

function setupMeeting() {
  show('meeting');
  $('#meeting-title').textContent = st.meeting.title;
  document.title = `${st.meeting.title} – Convene`;
  const self = tile('self', 'You', { mirror: true, muted: true });
  self.querySelector('video').srcObject = st.local.stream;
}

function applyInitialMutes(serverMuted) {
  const wantMic = st.local.micMuted || serverMuted.includes('microphone');
  const wantCam = st.local.camOff || serverMuted.includes('camera');
  setMic(wantMic, !serverMuted.includes('microphone') && wantMic);
  setCam(wantCam, !serverMuted.includes('camera') && wantCam);
}

function setMic(muted, tell = true) {
  st.local.micMuted = muted;
  if (st.local.mic) st.local.mic.enabled = !muted;
  if (tell) st.session?.send({ type: 'mute', source: 'microphone', muted });
  const b = $('#mic-btn');
  b.textContent = muted ? 'Unmute' : 'Mute';
  b.setAttribute('aria-pressed', String(muted));
  render();
}

function setCam(off, tell = true) {
  st.local.camOff = off;
  if (st.local.cam) st.local.cam.enabled = !off;
  if (tell) st.session?.send({ type: 'mute', source: 'camera', muted: off });
  const b = $('#cam-btn');
  b.textContent = off ? 'Start camera' : 'Stop camera';
  b.setAttribute('aria-pressed', String(off));
  render();
}

async function toggleScreen() {
  const s = st.session;
  if (st.local.screen) {
    const t = st.local.screen;
    st.local.screen = null;
    t.stop();
    await s.removeTrack(t);
  } else {
    if (!st.permissions.publish_sources?.includes('screen')) { fail('You may not share your screen in this meeting.'); return; }
    try {
      const stream = await navigator.mediaDevices.getDisplayMedia({ video: true, audio: false });
      const t = stream.getVideoTracks()[0];
      st.local.screen = t;
      t.addEventListener('ended', () => { if (st.local.screen === t) toggleScreen(); });
      await s.addTrack(t, 'screen', stream);
    } catch (e) {
      fail(`Screen sharing did not start: ${e.message}`);
    }
  }
  const b = $('#screen-btn');
  b.textContent = st.local.screen ? 'Stop sharing' : 'Share screen';
  b.setAttribute('aria-pressed', String(!!st.local.screen));
}

/** Each remote video asks the server for the layer its tile shows (set_track with the tile's
 *  size in device pixels; paused while the tile is hidden), and again when the tile changes. */
const asked = new Map(); // server track id -> last ask (JSON)
const sizes = new ResizeObserver((entries) => {
  for (const e of entries) askForTile(e.target);
});
function askForTile(t) {
  const trackId = t.dataset.videoTrack;
  if (!trackId || !st.session) return;
  const box = t.getBoundingClientRect();
  const dpr = window.devicePixelRatio || 1;
  const hidden = box.width < 2 || box.height < 2 || t.hidden || document.hidden;
  const ask = hidden
    ? { paused: true }
    : { paused: false, width: Math.max(1, Math.round(box.width * dpr)), height: Math.max(1, Math.round(box.height * dpr)) };
  const key = JSON.stringify(ask);
  if (asked.get(trackId) === key) return;
  asked.set(trackId, key);
  st.session.send({ type: 'set_track', track_id: trackId, ...ask });
}
document.addEventListener('visibilitychange', () => document.querySelectorAll('.tile[data-video-track]').forEach(askForTile));

function onTrack(track, identity) {
  const info = st.tracks.get(track.id);
  const source = info?.source || (track.kind === 'audio' ? 'microphone' : 'camera');
  const key = source.startsWith('screen') ? `${identity}:screen` : identity;
  const p = identityName(identity);
  const t = tile(key, p ? p.display_name : identity);
  if (track.kind === 'video') {
    t.dataset.videoTrack = track.id;
    sizes.observe(t);
    askForTile(t);
  }
  const video = t.querySelector('video');
  const stream = video.srcObject || new MediaStream();
  for (const old of stream.getTracks()) if (old.kind === track.kind) stream.removeTrack(old);
  stream.addTrack(track);
  if (video.srcObject !== stream) video.srcObject = stream;
  video.play().catch(() => {});
  render();
}

/** The size of the video a tile receives now (the simulcast layer the server chose for it). */
function receivedSize(t) {
  const v = t.querySelector('video');
  return v && v.videoWidth ? `${v.videoWidth}×${v.videoHeight}` : null;
}
// Layers change without any message: refresh the labels now and then.
setInterval(() => { if (st.me) render(); }, 2000);

function render() {
  if (!st.me) return;
  const meRank = RANK[st.me.role] ?? 0;
  // Tiles.
  for (const p of st.participants.values()) {
    const self = p.participant_id === st.me.participant_id;
    const muted = new Set(p.muted || []);
    const key = self ? 'self' : p.identity;
    const t = document.querySelector(`.tile[data-key="${CSS.escape(key)}"]`) || tile(key, p.display_name);
    t.classList.toggle('speaking', st.speaking.has(p.participant_id));
    setLabel(t, self ? `${p.display_name} (you)` : p.display_name, {
      micMuted: self ? st.local.micMuted : muted.has('microphone'),
      camOff: self ? st.local.camOff : muted.has('camera'),
      hand: p.hand_raised,
      quality: st.quality.get(p.participant_id),
      paused: t.dataset.paused || null,
      layer: self ? null : receivedSize(t),
    });
    const screen = document.querySelector(`.tile[data-key="${CSS.escape(p.identity + ':screen')}"]`);
    if (screen) setLabel(screen, `${p.display_name}'s screen`);
  }
  // People.
  const people = [...st.participants.values()].sort((a, b) => (RANK[b.role] - RANK[a.role]) || a.display_name.localeCompare(b.display_name));
  $('#people').replaceChildren(...people.map((p) => {
    const self = p.participant_id === st.me.participant_id;
    const li = el('li', { 'data-participant': p.participant_id }, el('span', {}, `${p.display_name}${self ? ' (you)' : ''}`), el('small', {}, ` ${p.role}`));
    if (p.hand_raised) li.append(el('span', { class: 'badge', 'aria-label': 'hand raised' }, 'hand up'));
    const q = st.quality.get(p.participant_id);
    if (q) li.append(el('span', { title: `connection ${q}`, 'aria-label': `connection ${q}` }, ` ${qualityIcon(q)}`));
    if (!self && st.permissions.moderate && RANK[p.role] < meRank) {
      const mod = (action, extra = {}) => () => st.session.send({ type: 'moderate', action, participant_id: p.participant_id, ...extra });
      li.append(
        el('button', { type: 'button', 'aria-label': `Mute ${p.display_name}`, onclick: mod('mute', { source: 'microphone' }) }, 'Mute'),
        el('button', { type: 'button', 'aria-label': `Remove ${p.display_name}`, onclick: mod('kick') }, 'Remove'),
      );
      if (st.me.role === 'host') {
        const next = p.role === 'moderator' ? 'participant' : 'moderator';
        li.append(el('button', { type: 'button', 'aria-label': `Make ${p.display_name} ${next}`, onclick: mod('set_role', { role: next }) }, next === 'moderator' ? 'Promote' : 'Demote'));
      }
    }
    return li;
  }));
  // Waiting room.
  const waiting = [...st.waiting.values()];
  $('#waiting-list').replaceChildren(...(waiting.length && st.permissions.moderate ? [el('h3', {}, 'Waiting')] : []),
    ...(st.permissions.moderate ? waiting.map((w) => el('div', { class: 'row', 'data-waiting': w.participant_id }, el('span', {}, w.display_name),
      el('button', { type: 'button', 'aria-label': `Admit ${w.display_name}`, onclick: () => st.session.send({ type: 'moderate', action: 'admit', participant_id: w.participant_id }) }, 'Admit'),
      el('button', { type: 'button', 'aria-label': `Deny ${w.display_name}`, onclick: () => st.session.send({ type: 'moderate', action: 'deny', participant_id: w.participant_id }) }, 'Deny'))) : []));
  $('#end-btn').hidden = st.me.role !== 'host';
  $('#screen-btn').hidden = !st.permissions.publish_sources?.includes('screen');
  // Consent: everyone sees while the meeting is recorded; moderators (or the record grant) start and stop it.
  $('#rec').hidden = !st.recording;
  const recBtn = $('#rec-btn');
  recBtn.hidden = !st.permissions.moderate;
  recBtn.textContent = st.recording ? 'Stop recording' : 'Record';
  recBtn.setAttribute('aria-pressed', String(!!st.recording));
  $('#chat-form').hidden = !st.permissions.chat;
}

function renderSchedule() {
  const m = st.meeting;
  const at = m?.scheduled_at;
  const line = $('#schedule');
  line.dataset.scheduledAt = at || '';
  line.textContent = at ? `${m.title} · scheduled for ${new Date(at).toLocaleString()}` : (m?.title || '');
}

function addChat(m) {
  if (document.querySelector(`#chat li[data-id="${CSS.escape(m.id)}"]`)) return;
  const time = new Date(m.created_at).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
  $('#chat').append(el('li', { 'data-id': m.id }, el('b', {}, m.sender_name || 'someone'), ` ${time}: `, el('span', { class: 'text' }, m.text)));
  $('#chat').lastChild.scrollIntoView({ block: 'nearest' });
}

function bindMeeting() {
  $('#mic-btn').onclick = () => setMic(!st.local.micMuted);
  $('#cam-btn').onclick = () => setCam(!st.local.camOff);
  $('#screen-btn').onclick = toggleScreen;
  $('#hand-btn').onclick = () => {
    st.local.hand = !st.local.hand;
    st.session.send({ type: st.local.hand ? 'raise_hand' : 'lower_hand' });
    $('#hand-btn').textContent = st.local.hand ? 'Lower hand' : 'Raise hand';
    $('#hand-btn').setAttribute('aria-pressed', String(st.local.hand));
  };
  $('#panel-btn').onclick = () => $('#side').classList.toggle('collapsed');
  $('#leave-btn').onclick = () => { st.session?.leave(); finish('You left the meeting.', 'left'); };
  $('#end-btn').onclick = () => st.session?.send({ type: 'moderate', action: 'end_meeting' });
  $('#rec-btn').onclick = () => st.session?.send({ type: 'moderate', action: st.recording ? 'stop_recording' : 'start_recording' });
  let typingTimer = null;
  $('#chat-input').addEventListener('input', () => {
    if (!typingTimer) st.session?.send({ type: 'typing', active: true });
    clearTimeout(typingTimer);
    typingTimer = setTimeout(() => { typingTimer = null; st.session?.send({ type: 'typing', active: false }); }, 2000);
  });
  $('#chat-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const text = $('#chat-input').value.trim();
    if (!text) return;
    st.session?.send({ type: 'chat', text });
    $('#chat-input').value = '';
  });
  window.addEventListener('offline', () => status('You are offline. Reconnecting when the network is back…'));
}

function finish(text, why) {
  setPhase('ended');
  st.endReason = why;
  document.body.dataset.reason = why || '';
  if (st.session && !st.session.closed) { st.session.closed = true; st.session.ws?.close(); }
  st.session?.pub?.close();
  st.session?.sub?.close();
  stopLocal();
  $('#ended-h').textContent = why === 'left' ? 'You left the meeting' : 'You are not in the meeting';
  $('#ended-why').textContent = text;
  status('');
  show('ended');
}

/** Summed inbound video framesDecoded per remote participant (by display name), split by source. */
async function stats() {
  const out = { camera: {}, screen: {} };
  if (!st.session) return out;
  for (const s of await st.session.stats()) {
    if (s.type !== 'inbound-rtp' || s.kind !== 'video') continue;
    const t = st.tracks.get(s.trackIdentifier);
    const p = t && st.participants.get(t.participant_id);
    const name = p ? p.display_name : s.trackIdentifier;
    const bucket = t?.source === 'screen' ? out.screen : out.camera;
    bucket[name] = (bucket[name] || 0) + (s.framesDecoded || 0);
  }
  return out;
}

// ---------- start ----------

async function start() {
  bindHome();
  bindMeeting();
  st.user = await api.me();
  renderWho();
  const m = location.pathname.match(/^\/m\/([^/]+)/);
  if (!m) return home();
  const params = new URLSearchParams(location.search);
  st.code = decodeURIComponent(m[1]);
  st.name = params.get('name') || st.user?.display_name || '';
  st.invite = params.get('invite') || undefined;
  if (params.get('autojoin') === '1' && (st.user || st.name)) {
    await getMedia();
    return join();
  }
  return prejoin();
}

start().catch((e) => fail(`Something went wrong: ${e.message}`));
