// REST client for /api/v1: keeps the signed-in user's token pair in localStorage and refreshes
// the access token once on a 401.
const KEY = 'convene.auth';

export class ApiError extends Error {
  constructor(status, code, message, details) {
    super(message || code);
    this.status = status;
    this.code = code;
    this.details = details;
  }
}

export const auth = {
  get() { try { return JSON.parse(localStorage.getItem(KEY)); } catch { return null; } },
  set(pair) { if (pair) localStorage.setItem(KEY, JSON.stringify(pair)); else localStorage.removeItem(KEY); },
};

async function raw(method, path, body, token) {
  const headers = { accept: 'application/json' };
  if (body !== undefined) headers['content-type'] = 'application/json';
  if (token) headers.authorization = `Bearer ${token}`;
  let resp;
  try {
    resp = await fetch(`/api/v1${path}`, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (e) {
    throw new ApiError(0, 'network', 'Cannot reach the server. Check your connection.');
  }
  const text = await resp.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = null; }
  if (!resp.ok) {
    const err = data?.error || {};
    throw new ApiError(resp.status, err.code || 'http_' + resp.status, err.message || resp.statusText, err.details);
  }
  return { status: resp.status, data };
}

/** Calls the API as the signed-in user (if any). Returns {status, data}. */
export async function call(method, path, body) {
  const pair = auth.get();
  try {
    return await raw(method, path, body, pair?.access_token);
  } catch (e) {
    if (e.status !== 401 || !pair?.refresh_token) throw e;
    try {
      const fresh = await raw('POST', '/auth/refresh', { refresh_token: pair.refresh_token });
      auth.set(fresh.data);
    } catch {
      auth.set(null);
      throw e;
    }
    return raw(method, path, body, auth.get().access_token);
  }
}

export async function login(login, password) {
  const { data } = await raw('POST', '/auth/login', { login, password });
  auth.set(data);
  return data.user;
}

export async function register(fields) {
  const { data } = await raw('POST', '/auth/register', fields);
  auth.set(data);
  return data.user;
}

export async function logout() {
  const pair = auth.get();
  auth.set(null);
  if (pair?.refresh_token) await raw('POST', '/auth/logout', { refresh_token: pair.refresh_token }).catch(() => {});
}

export async function me() {
  if (!auth.get()) return null;
  try { return (await call('GET', '/users/me')).data; } catch { return null; }
}
