// The console's JSON API (same origin, session cookie). State changes carry the CSRF token
// that /api/session hands out, in the x-csrf-token header.

let csrfToken = '';

/** An API error with the server's message. */
export class ApiError extends Error {
  constructor(status, message, data) {
    super(message);
    this.status = status;
    this.data = data && typeof data === 'object' ? data : null;
  }
}

async function request(method, path, body) {
  const headers = { accept: 'application/json' };
  const init = { method, headers, credentials: 'same-origin', cache: 'no-store' };
  if (body !== undefined) {
    headers['content-type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  if (method !== 'GET') headers['x-csrf-token'] = csrfToken;
  const res = await fetch(path, init);
  if (res.status === 401) {
    // The session ended (expiry, logout elsewhere): back to the login form.
    window.location.assign('/');
    throw new ApiError(401, 'signed out');
  }
  const type = res.headers.get('content-type') || '';
  const data = type.includes('json') ? await res.json().catch(() => null) : await res.text();
  if (!res.ok) {
    const msg = data && typeof data === 'object' && data.error ? data.error : `${res.status} ${res.statusText}`;
    throw new ApiError(res.status, msg, data);
  }
  return data;
}

export const get = (path) => request('GET', path);
export const post = (path, body) => request('POST', path, body);

/** Reads who is signed in and keeps the CSRF token for later changes. */
export async function session() {
  const s = await get('/api/session');
  csrfToken = s.csrf || '';
  return s;
}

/** A query string from an object, leaving out empty values. */
export function qs(params) {
  const p = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null && v !== '') p.set(k, String(v));
  }
  const s = p.toString();
  return s ? `?${s}` : '';
}
