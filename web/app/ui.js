// DOM helpers: screens, messages, the video grid and the participant list.
export const $ = (sel) => document.querySelector(sel);

const SCREENS = ['home', 'prejoin', 'passcode', 'waiting', 'meeting', 'ended'];

export function show(screen) {
  for (const id of SCREENS) $('#' + id).hidden = id !== screen;
  const h = $('#' + screen + ' h1');
  if (h && !h.classList.contains('sr-only')) { h.tabIndex = -1; h.focus({ preventScroll: true }); }
}

export function status(text) { $('#status').textContent = text || ''; }

export function alert(text) {
  const el = $('#alert');
  el.textContent = text || '';
  el.hidden = !text;
}

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null && v !== false) node.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children) if (c !== null && c !== undefined) node.append(c);
  return node;
}

/** The tile of one participant (key = identity, or identity + ':screen'). */
export function tile(key, label, { mirror = false, muted = false } = {}) {
  let t = document.querySelector(`.tile[data-key="${CSS.escape(key)}"]`);
  if (!t) {
    const video = el('video', { autoplay: true, playsinline: true });
    video.muted = muted;
    if (mirror) video.style.transform = 'scaleX(-1)';
    t = el('div', { class: 'tile', 'data-key': key, role: 'group' }, video, el('span', { class: 'label' }));
    $('#grid').append(t);
  }
  t.setAttribute('aria-label', label);
  return t;
}

export function removeTile(key) {
  document.querySelector(`.tile[data-key="${CSS.escape(key)}"]`)?.remove();
}

export function setLabel(t, name, { micMuted, camOff, hand, quality, paused, layer } = {}) {
  const label = t.querySelector('.label');
  label.textContent = name;
  if (micMuted) label.append(el('span', { class: 'badge', title: 'Microphone muted', 'aria-label': 'microphone muted' }, 'mic off'));
  if (camOff) label.append(el('span', { class: 'badge', title: 'Camera off', 'aria-label': 'camera off' }, 'cam off'));
  if (hand) label.append(el('span', { class: 'badge', title: 'Hand raised', 'aria-label': 'hand raised' }, 'hand up'));
  if (quality) label.append(el('span', { class: 'badge', title: `Connection ${quality}`, 'aria-label': `connection ${quality}` }, qualityIcon(quality)));
  if (paused) {
    label.append(el('span', { class: 'badge', title: 'Video paused: your connection cannot carry it now', 'aria-label': `video paused (${paused})` }, `paused: ${paused}`));
  } else if (layer) {
    label.append(el('span', { class: 'badge', title: `Receiving ${layer}`, 'aria-label': `receiving ${layer}` }, layer));
  }
}

export function qualityIcon(q) {
  return { excellent: '▂▄▆█', good: '▂▄▆', fair: '▂▄', poor: '▂' }[q] || '';
}
