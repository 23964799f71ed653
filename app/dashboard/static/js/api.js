// Every call the dashboard makes goes through request(): it adds the key, turns a refusal into an ApiError
// carrying the server's message, and on a 401 signs the tab out (the key was revoked or is wrong).

import { apiKey, signOut } from "./session.js";

export class ApiError extends Error {
  constructor(status, body) {
    super(messageOf(body, status));
    this.status = status;
    this.body = body;
  }
}

export function messageOf(body, status) {
  if (body && typeof body.detail === "string") return body.detail;
  if (body && typeof body.message === "string") return body.message;
  if (body && Array.isArray(body.detail)) return body.detail.map((e) => e.msg).join("; ");
  if (typeof body === "string" && body) return body;
  return `the server answered ${status}`;
}

// An error answer's body (JSON when it parses, else the text) as an ApiError.
export function errorFrom(status, text) {
  try {
    return new ApiError(status, JSON.parse(text));
  } catch {
    return new ApiError(status, text);
  }
}

export function keyRefused(error) {
  signOut(`The API key was refused: ${error.message}. Sign in again with a valid key.`);
}

// fetch(path) with the key; resolves to the ok Response, throws an ApiError otherwise.
// options: method, json (a body sent as JSON), headers, signal, and `key` to try a key other than the
// tab's (sign-in), in which case a 401 is left to the caller rather than signing out.
export async function request(path, options = {}) {
  const { method = "GET", json, headers, signal, key } = options;
  const init = { method, signal, headers: { Authorization: `Bearer ${key ?? apiKey()}`, ...(headers || {}) } };
  if (json !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(json);
  }
  const response = await fetch(path, init);
  if (response.ok) return response;
  const error = errorFrom(response.status, await response.text());
  if (response.status === 401 && key === undefined) keyRefused(error);
  throw error;
}

// A JSON call: the parsed answer (null for 204).
export async function api(method, path, json, options) {
  const response = await request(path, { ...(options || {}), method, json });
  return response.status === 204 ? null : response.json();
}

// Every page of a list (up to `max` items).
export async function listAll(path, max = 500, options) {
  const items = [];
  let after = null;
  for (;;) {
    const sep = path.includes("?") ? "&" : "?";
    const cursor = after ? `&after=${encodeURIComponent(after)}` : "";
    const page = await api("GET", `${path}${sep}limit=100${cursor}`, undefined, options);
    items.push(...page.data);
    if (!page.has_more || !page.data.length || items.length >= max) return items;
    after = page.data[page.data.length - 1].id;
  }
}

// A 401 has already sent the tab to sign-in: nothing more to show for it.
export const isSignedOut = (error) => error instanceof ApiError && error.status === 401;
