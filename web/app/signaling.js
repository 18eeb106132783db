// One meeting session over /ws (docs/signaling.md): the socket plus the two peer connections.
// The publisher connection is ours to offer on; the server offers on the subscriber connection.
// Remote tracks arrive with stream id = publisher identity and track id = server track id "tN".

// Close codes after which reconnecting cannot help.
const FINAL = new Set([1000, 4001, 4002, 4003, 4004, 4005, 4010, 4401, 4403]);

export class Session {
  /** opts: {token, iceServers, relay, onEvent(msg), onTrack(track, identity), onStatus(kind, text)} */
  constructor(opts) {
    this.opts = opts;
    this.token = opts.token;
    this.pub = null;
    this.sub = null;
    this.local = new Map(); // MediaStreamTrack.id -> {track, source, sender}
    this.joined = false;
    this.closed = false;
    this.retries = 0;
    this.offerChain = Promise.resolve();
    this.ref = 0;
    this.answers = new Map();
    // In a cluster the join names the node serving the meeting (docs/cluster.md).
    this.wsUrl = opts.wsUrl || '';
  }

  socketUrl() {
    if (/^wss?:\/\//.test(this.wsUrl)) return this.wsUrl;
    return originSocket();
  }

  connect(resume = false) {
    const ws = new WebSocket(`${this.socketUrl()}?token=${encodeURIComponent(this.token)}`);
    this.ws = ws;
    ws.onopen = () => ws.send(JSON.stringify({ type: 'join', version: 1, resume }));
    ws.onmessage = (ev) => {
      let msg;
      try { msg = JSON.parse(ev.data); } catch { return; }
      this.handle(msg).catch((e) => this.opts.onStatus('error', `Signaling failed: ${e.message}`));
    };
    ws.onclose = (ev) => {
      if (this.ws !== ws || this.closed) return;
      // wrong_node: the meeting is on another node; its error named the socket to join.
      if (ev.code === 4307 && this.retries++ < 8) { setTimeout(() => this.connect(this.joined), 100); return; }
      if (FINAL.has(ev.code)) {
        this.closed = true;
        this.opts.onEvent({ type: 'closed', code: ev.code });
        return;
      }
      // A drop: the server holds our seat for ws_resume_grace (15 s), so resume within it.
      if (this.retries++ >= 8) {
        this.closed = true;
        this.opts.onEvent({ type: 'closed', code: ev.code, lost: true });
        return;
      }
      this.opts.onStatus('reconnecting', 'Connection lost. Reconnecting…');
      // The node itself may be gone: after a failed try, ask this page's own server, which
      // sends us on to wherever the meeting is placed now.
      if (this.retries > 1) this.wsUrl = '';
      setTimeout(() => this.connect(this.joined), 1500);
    };
  }

  send(msg) {
    if (this.ws?.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(msg));
  }

  async handle(msg) {
    switch (msg.type) {
      case 'joined':
        this.retries = 0;
        if (msg.resumed && this.pub) { this.opts.onStatus('ok', 'Reconnected.'); }
        if (!msg.resumed && this.pub) {
          // A new session (its node changed, or the old one was given up): new connections,
          // and offers the old session never answered are dropped.
          for (const done of this.answers.values()) done(null, { message: 'session replaced' });
          this.answers.clear();
          this.offerChain = Promise.resolve();
          this.pub.close(); this.pub = null;
          this.sub?.close(); this.sub = null;
          this.opts.onStatus('ok', 'Reconnected.');
        }
        this.joined = true;
        this.opts.onEvent(msg);
        if (!msg.resumed || !this.pub) await this.startPublishing();
        return;
      case 'offer':
        await this.answerOffer(msg);
        return;
      case 'encodings':
        await this.setActiveEncodings(msg.track_id, msg.active || {});
        this.opts.onEvent(msg);
        return;
      case 'token_refreshed':
        // Join tokens are short-lived; the next resume needs a current one.
        this.token = msg.join_token;
        return;
      case 'answer': {
        const done = this.answers.get(String(msg.ref));
        if (done) { this.answers.delete(String(msg.ref)); done(msg.sdp); }
        return;
      }
      case 'error':
        if (msg.ref && this.answers.has(String(msg.ref))) {
          this.answers.get(String(msg.ref))(null, msg);
          this.answers.delete(String(msg.ref));
        }
        if (msg.code === 'wrong_node' && msg.ws_url) this.wsUrl = msg.ws_url;
        if (msg.code === 'publisher_closed') { this.pub?.close(); this.pub = null; await this.startPublishing(); }
        this.opts.onEvent(msg);
        return;
      default:
        this.opts.onEvent(msg);
    }
  }

  newPc() {
    // relay: media only through TURN (the servers the join named); otherwise ICE still falls
    // back to their relay candidates when a direct path fails (UDP blocked, say).
    return new RTCPeerConnection({
      iceServers: this.opts.iceServers || [],
      iceTransportPolicy: this.opts.relay ? 'relay' : 'all',
    });
  }

  async answerOffer(msg) {
    if (msg.reset || !this.sub) {
      this.sub?.close();
      const pc = this.newPc();
      this.sub = pc;
      pc.ontrack = (e) => {
        const identity = e.streams[0]?.id || '';
        this.opts.onTrack(e.track, identity);
      };
      pc.onicecandidate = (e) => {
        if (e.candidate?.candidate) this.send({ type: 'candidate', target: 'subscriber', candidate: e.candidate.candidate, sdp_mid: e.candidate.sdpMid, sdp_mline_index: e.candidate.sdpMLineIndex });
      };
      pc.onconnectionstatechange = () => this.opts.onEvent({ type: 'pc_state', which: 'subscriber', state: pc.connectionState });
    }
    await this.sub.setRemoteDescription({ type: 'offer', sdp: msg.sdp });
    const answer = await this.sub.createAnswer();
    await this.sub.setLocalDescription(answer);
    this.send({ type: 'answer', sdp: this.sub.localDescription.sdp });
  }

  /** Sends `entry`'s track on the publisher connection: a camera as three simulcast encodings
   *  (RID q/h/f: a quarter, half and full size), everything else as one. */
  attach(pc, entry) {
    const simulcast = entry.source === 'camera' && entry.track.kind === 'video' &&
      (entry.track.getSettings?.().height || 0) >= 360;
    if (!simulcast) return pc.addTrack(entry.track, entry.stream);
    const transceiver = pc.addTransceiver(entry.track, {
      direction: 'sendonly',
      streams: [entry.stream],
      sendEncodings: [
        { rid: 'q', scaleResolutionDownBy: 4, maxBitrate: 150_000 },
        { rid: 'h', scaleResolutionDownBy: 2, maxBitrate: 500_000 },
        { rid: 'f', maxBitrate: 1_500_000 },
      ],
    });
    return transceiver.sender;
  }

  /** Dynacast: the server says which encodings of one of our tracks someone receives; the
   *  others stop encoding (saves uplink and CPU) until someone needs them again. */
  async setActiveEncodings(trackId, active) {
    const sender = this.local.get(trackId)?.sender;
    if (!sender) return;
    const params = sender.getParameters();
    let changed = false;
    for (const encoding of params.encodings || []) {
      const want = active[encoding.rid];
      if (typeof want === 'boolean' && encoding.active !== want) { encoding.active = want; changed = true; }
    }
    if (changed) await sender.setParameters(params);
  }

  /** Adds a local track (declared first) and renegotiates. */
  async addTrack(track, source, stream) {
    const entry = { track, source, stream, sender: null };
    this.local.set(track.id, entry);
    if (this.pub) {
      this.send({ type: 'publish', source, track_id: track.id });
      entry.sender = this.attach(this.pub, entry);
      await this.renegotiate();
    }
  }

  async removeTrack(track) {
    const entry = this.local.get(track.id);
    if (!entry) return;
    this.local.delete(track.id);
    this.send({ type: 'unpublish', track_id: track.id });
    if (this.pub && entry.sender) {
      this.pub.removeTrack(entry.sender);
      await this.renegotiate();
    }
  }

  async startPublishing() {
    this.pub = this.newPc();
    const pc = this.pub;
    pc.onconnectionstatechange = () => this.opts.onEvent({ type: 'pc_state', which: 'publisher', state: pc.connectionState });
    for (const entry of this.local.values()) {
      this.send({ type: 'publish', source: entry.source, track_id: entry.track.id });
      entry.sender = this.attach(pc, entry);
    }
    if (this.local.size) await this.renegotiate();
  }

  renegotiate() {
    // Offers on the publisher connection go one at a time.
    this.offerChain = this.offerChain.then(() => this.offerOnce()).catch((e) => {
      if (e.message !== 'session replaced') this.opts.onStatus('error', `Publishing failed: ${e.message}`);
    });
    return this.offerChain;
  }

  async offerOnce() {
    const pc = this.pub;
    if (!pc) return;
    await pc.setLocalDescription(await pc.createOffer());
    await waitGathering(pc, 2000);
    const ref = `offer-${++this.ref}`;
    const sdp = await new Promise((resolve, reject) => {
      this.answers.set(ref, (answer, err) => (answer ? resolve(answer) : reject(new Error(err?.message || 'offer refused'))));
      this.send({ type: 'offer', sdp: pc.localDescription.sdp, ref });
    });
    if (pc === this.pub) await pc.setRemoteDescription({ type: 'answer', sdp });
  }

  async stats() {
    const out = [];
    if (this.sub) (await this.sub.getStats()).forEach((s) => out.push(s));
    return out;
  }

  leave() {
    this.closed = true;
    this.send({ type: 'leave' });
    this.pub?.close();
    this.sub?.close();
    setTimeout(() => this.ws?.close(), 200);
  }
}

function waitGathering(pc, ms) {
  if (pc.iceGatheringState === 'complete') return Promise.resolve();
  return new Promise((resolve) => {
    const t = setTimeout(resolve, ms);
    pc.addEventListener('icegatheringstatechange', () => {
      if (pc.iceGatheringState === 'complete') { clearTimeout(t); resolve(); }
    });
  });
}

/** Opens the waiting-room socket; resolves with the join token once admitted. */
function originSocket() {
  const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
  return `${proto}//${location.host}/ws`;
}

export function waitForAdmission(waitToken, onEvent, url = originSocket(), hops = 0) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`${url}?wait_token=${encodeURIComponent(waitToken)}`);
    let settled = false;
    ws.onmessage = (ev) => {
      let msg;
      try { msg = JSON.parse(ev.data); } catch { return; }
      if (msg.type === 'error' && msg.code === 'wrong_node' && msg.ws_url && hops < 3) {
        // The meeting's moderators are on another node: wait there.
        settled = true;
        waitForAdmission(waitToken, onEvent, msg.ws_url, hops + 1).then(resolve, reject);
        return;
      }
      onEvent?.(msg);
      if (msg.type === 'admitted' && msg.join_token) { settled = true; ws.close(); resolve(msg.join_token); }
      if (['denied', 'kicked', 'meeting_ended'].includes(msg.type)) { settled = true; reject(Object.assign(new Error(msg.type), { code: msg.type })); }
    };
    ws.onclose = (ev) => { if (!settled) reject(Object.assign(new Error('closed'), { code: 'closed', wsCode: ev.code })); };
  });
}
