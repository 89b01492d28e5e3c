// The gateway's public API, called with the signed-in user's bearer token.
import { session, signOut } from "./auth.js";

export class ApiError extends Error {
  constructor(status, message, problem = {}) {
    super(message);
    this.status = status;
    this.problem = problem;
  }
}

function authHeaders(extra = {}) {
  const s = session();
  return s ? { ...extra, Authorization: `Bearer ${s.token}` } : extra;
}

async function problemOf(response) {
  const problem = await response.json().catch(() => ({}));
  return [problem.detail || problem.title || `${response.status} ${response.statusText}`, problem];
}

/** `ifMatch`: the ETag the change is based on (the transcript's edits require it; a stale
 * one is answered 412). `withEtag`: resolve to `{ body, etag }` with the answer's ETag. */
export async function api(path, { method = "GET", json, raw = false, ifMatch, withEtag = false } = {}) {
  const headers = authHeaders({ Accept: "application/json" });
  if (ifMatch) headers["If-Match"] = ifMatch;
  let body;
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  }
  const response = await fetch(path, { method, headers, body });
  if (response.status === 401) {
    signOut();
    location.hash = "#/sign-in";
    throw new ApiError(401, "please sign in again");
  }
  if (!response.ok) throw new ApiError(response.status, ...(await problemOf(response)));
  if (raw) return response;
  const answer = response.status === 204 ? null : await response.json();
  return withEtag ? { body: answer, etag: response.headers.get("ETag") } : answer;
}

/** Upload one file as a new job; XHR because fetch reports no upload progress. */
export function uploadFile(file, fields, onProgress) {
  return new Promise((resolve, reject) => {
    const form = new FormData();
    form.append("file", file, file.name);
    for (const [key, value] of Object.entries(fields)) if (value) form.append(key, value);
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/jobs");
    for (const [key, value] of Object.entries(authHeaders({ Accept: "application/json" }))) {
      xhr.setRequestHeader(key, value);
    }
    xhr.upload.onprogress = (e) => e.lengthComputable && onProgress(e.loaded / e.total);
    xhr.onerror = () => reject(new ApiError(0, "network error"));
    xhr.onload = () => {
      let body = {};
      try {
        body = JSON.parse(xhr.responseText);
      } catch {
        /* not JSON */
      }
      if (xhr.status >= 200 && xhr.status < 300) resolve(body);
      else reject(new ApiError(xhr.status, body.detail || body.title || `upload failed (${xhr.status})`));
    };
    xhr.send(form);
  });
}

// <audio> cannot send a bearer token, so audio is fetched with it and played from a blob:
// URL. One copy per job is kept while the page is open.
const audioUrls = new Map();
export async function audioUrl(jobId) {
  if (!audioUrls.has(jobId)) {
    const pending = api(`/jobs/${jobId}/audio`, { raw: true })
      .then((r) => r.blob())
      .then((blob) => URL.createObjectURL(blob));
    audioUrls.set(jobId, pending);
    pending.catch(() => audioUrls.delete(jobId));
  }
  return audioUrls.get(jobId);
}

/** Save a transcript download under its server-given name. */
export async function download(jobId, format) {
  const response = await api(`/jobs/${jobId}/download?format=${format}`, { raw: true });
  const disposition = response.headers.get("Content-Disposition") || "";
  const match = /filename\*?=(?:UTF-8'')?"?([^";]+)"?/i.exec(disposition);
  const name = match ? decodeURIComponent(match[1]) : `transcript.${format}`;
  const url = URL.createObjectURL(await response.blob());
  const a = document.createElement("a");
  a.href = url;
  a.download = name;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}
