// Live job status from the notifier's WebSocket feeds. The token travels as the
// `bearer.<token>` sub-protocol: browsers cannot set headers on a WebSocket, and a query
// string would end up in access logs.
import { session } from "./auth.js";

export const FINISHED = new Set(["done", "failed", "cancelled"]);

// The notifier accepts at most this many jobs in one `resume=` (MXW_MAX_RESUME_JOBS).
const MAX_RESUME_JOBS = 500;
// A socket that stayed open this long counts as healthy: the next drop retries quickly again.
const HEALTHY_MS = 30_000;

/** Close codes after which reopening cannot help, in words for the page. */
export function refusal(code) {
  if (code === 4401) return "Live updates stopped: your sign-in has expired or was not accepted. Sign in again to resume them.";
  if (code === 4403) return "Live updates of all jobs were refused: the notifier takes that only from a token that carries the administrator role. The list shows the jobs as they were loaded.";
  return null;
}

function backoff(attempt, floor = 0) {
  // Exponential with jitter, so many tabs of a restarted notifier do not return in step.
  const base = Math.max(floor, Math.min(500 * 2 ** attempt, 15_000));
  return Math.round(base * (0.8 + Math.random() * 0.4));
}

function open(config, path, params) {
  const s = session();
  if (!s) return null;
  const query = params.toString();
  return new WebSocket(`${config.notifier_ws}${path}${query ? `?${query}` : ""}`, [`bearer.${s.token}`]);
}

/** Follow one job over `/ws/jobs/{id}` until its feed ends (the job finished). A feed that
 * drops while the job runs is reopened with `after=<last seq>`, so nothing is sent twice.
 * `onEnd(closeEvent)` returns the job as the API has it now (or null); `onRefused(text)` is
 * told (with the close code) when the notifier will not serve the feed. */
export function watchJob(config, jobId, { onStatus, onEnd, onRefused }) {
  let socket = null;
  let stopped = false;
  let attempt = 0;
  let timer = 0;
  let lastSeq = 0;
  const connect = () => {
    if (stopped) return;
    const params = new URLSearchParams();
    if (lastSeq) params.set("after", String(lastSeq));
    socket = open(config, `/ws/jobs/${encodeURIComponent(jobId)}`, params);
    if (!socket) {
      onRefused?.(refusal(4401), 4401); // the page's token ran out: no feed without one
      return;
    }
    socket.onmessage = (e) => {
      const msg = JSON.parse(e.data);
      if (msg.seq !== null && msg.seq !== undefined) {
        if (msg.seq <= lastSeq) return;
        lastSeq = msg.seq;
      }
      attempt = 0;
      onStatus(msg);
    };
    socket.onclose = async (e) => {
      socket = null;
      if (stopped) return;
      const refused = refusal(e.code);
      if (refused) onRefused?.(refused, e.code);
      const job = await onEnd(e).catch(() => null);
      // 4404: gone or not ours; 4400: our request is wrong. Reopening changes neither.
      if (stopped || refused || e.code === 4404 || e.code === 4400) return;
      if (job && !FINISHED.has(job.state)) {
        timer = setTimeout(connect, backoff(attempt, e.code === 4429 ? 10_000 : 0));
        attempt += 1;
      }
    };
  };
  connect();
  return () => {
    stopped = true;
    clearTimeout(timer);
    if (socket) socket.close(1000, "view left");
  };
}

/** ONE socket for every job of the caller (`/ws/jobs`; admins' all-jobs list: `all=true`).
 *
 * - `unfinished()` names the jobs on screen that may still change: the socket resumes them
 *   with `resume=<job>:<last seq seen>` (0: the job's whole history), so events between the
 *   list's fetch and the socket, and those missed while disconnected, arrive — each once.
 * - `onStatus(msg)` gets every message in seq order per job, duplicates dropped.
 * - `onGone(jobId)`: the notifier says a resumed job no longer exists (deleted elsewhere).
 * - `onReopened()`: a dropped socket is open again; jobs created meanwhile are not in the
 *   resume list, so the caller fetches the list once more.
 * - `onNotice(text, kind, code)`: what to tell the user ("" clears it). After 4401 / 4403
 *   the socket is not reopened. */
export function watchJobs(config, { all = false, unfinished, onStatus, onGone, onReopened, onNotice }) {
  const lastSeq = new Map();
  let socket = null;
  let stopped = false;
  let attempt = 0;
  let timer = 0;
  let opens = 0;
  let openedAt = 0;
  let withResume = true;

  const connect = () => {
    if (stopped) return;
    const params = new URLSearchParams();
    if (all) params.set("all", "true");
    if (withResume) {
      const resume = unfinished()
        .slice(0, MAX_RESUME_JOBS)
        .map((id) => `${id}:${lastSeq.get(id) || 0}`);
      if (resume.length) params.set("resume", resume.join(","));
    }
    withResume = true;
    const ws = open(config, "/ws/jobs", params);
    socket = ws;
    if (!ws) {
      onNotice(refusal(4401), "error", 4401); // the page's token ran out: no feed without one
      return;
    }
    ws.onopen = () => {
      openedAt = Date.now();
      opens += 1;
      onNotice("", "info");
      if (opens > 1) onReopened();
    };
    ws.onmessage = (e) => {
      const msg = JSON.parse(e.data);
      if (msg.seq !== null && msg.seq !== undefined) {
        // A message at or below what this job already showed is a duplicate: drop it.
        if (msg.seq <= (lastSeq.get(msg.job_id) || 0)) return;
        lastSeq.set(msg.job_id, msg.seq);
      }
      onStatus(msg);
    };
    ws.onclose = (e) => {
      if (socket === ws) socket = null;
      if (stopped) return;
      const refused = refusal(e.code);
      if (refused) {
        onNotice(refused, "error", e.code);
        return;
      }
      if (openedAt && Date.now() - openedAt > HEALTHY_MS) attempt = 0;
      openedAt = 0;
      if (e.code === 4404) {
        // A job named in `resume` is gone; the reason names it ("job not found: <id>").
        const gone = /job not found: ([0-9a-fA-F-]{36})/.exec(e.reason || "")?.[1];
        if (gone) {
          lastSeq.delete(gone);
          onGone(gone);
        } else withResume = false;
      } else if (e.code === 4400) {
        withResume = false; // the resume list was refused as malformed: start afresh
      }
      const wait = backoff(attempt, e.code === 4429 ? 10_000 : 0);
      attempt += 1;
      onNotice(
        e.code === 4429 ? "Too many live connections are open for your user; live updates resume when one closes." : "Live updates were interrupted; reconnecting…",
        "info",
      );
      timer = setTimeout(connect, e.code === 4404 && attempt === 1 ? 0 : wait);
    };
  };

  connect();
  return {
    /** A job shown as it stands now (from the API): later messages continue from its seq. */
    forget(jobId) {
      lastSeq.delete(jobId);
    },
    stop() {
      stopped = true;
      clearTimeout(timer);
      if (socket) socket.close(1000, "view left");
      socket = null;
    },
  };
}
