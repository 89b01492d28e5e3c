// The pages. Each view renders into <main> and returns a clean-up function (sockets, timers).
import { api, audioUrl, download, uploadFile } from "./api.js";
import { devSignIn, session, signOut, startOidc } from "./auth.js";
import { clear, clock, duration, h, highlighted, toast, when } from "./dom.js";
import { FINISHED, watchJob, watchJobs } from "./live.js";

function heading(text) {
  return h("h1", { id: "page-title" }, text);
}

function failure(err) {
  toast(err.message || String(err), "error");
}

function percent(progress) {
  return `${Math.round((progress || 0) * 100)}%`;
}

/** Where the live feeds say what they are doing (reconnecting, refused). */
function liveNotice() {
  const el = h("p", { class: "note live-status", role: "status", hidden: true });
  el.show = (text, kind = "info", code = 0) => {
    el.textContent = text;
    el.hidden = !text;
    el.classList.toggle("error", kind === "error");
    if (code === 4401) {
      el.append(" ", h("button", { type: "button", class: "link-button", onclick: () => signOutAndReturn() }, "Sign in again"));
    }
  };
  return el;
}

function signOutAndReturn() {
  signOut();
  location.hash = "#/sign-in";
}

function stageLine(job) {
  return h(
    "ul",
    { class: "stages", "aria-label": "Stages" },
    // A stage the job did not ask for (diarize without speakers) is not part of its work.
    job.stages.filter((s) => s.state !== "skipped").map((s) =>
      h(
        "li",
        { class: `stage state-${s.state}`, dataset: { stage: s.stage } },
        h("span", { class: "stage-name" }, s.stage),
        " ",
        h("span", { class: "stage-state" }, s.state),
        s.duration_s !== null && s.duration_s !== undefined ? ` · ${duration(s.duration_s)}` : "",
        s.attempts > 1 ? ` · ${s.attempts} attempts` : "",
      ),
    ),
  );
}

function jobActions(job, onChange) {
  const actions = h("div", { class: "actions" });
  if (!FINISHED.has(job.state)) {
    actions.append(
      h(
        "button",
        {
          type: "button",
          class: "secondary",
          onclick: async () => {
            try {
              onChange(await api(`/jobs/${job.id}/cancel`, { method: "POST" }));
              toast("Cancel requested");
            } catch (err) {
              failure(err);
            }
          },
        },
        "Cancel",
      ),
    );
    return actions;
  }
  const from = h(
    "select",
    { "aria-label": `Reprocess ${job.filename || job.id} from stage` },
    ["transcribe", "chunk", "embed"].map((s) => h("option", { value: s }, `from ${s}`)),
  );
  actions.append(
    from,
    h(
      "button",
      {
        type: "button",
        class: "secondary",
        onclick: async () => {
          const reprocess = (json) => api(`/jobs/${job.id}/reprocess`, { method: "POST", json });
          try {
            let changed;
            try {
              changed = await reprocess({ from: from.value });
            } catch (err) {
              // Transcribing again would replace a corrected transcript: ask first.
              if (err.status !== 409 || err.problem.title !== "Transcript edited") throw err;
              if (!confirm(`${err.message}\n\nTranscribe again and discard the corrections?`)) return;
              changed = await reprocess({ from: from.value, discard_edits: true });
            }
            onChange(changed);
            toast("Reprocessing");
          } catch (err) {
            failure(err);
          }
        },
      },
      "Reprocess",
    ),
    h(
      "button",
      {
        type: "button",
        class: "danger",
        onclick: async () => {
          if (!confirm(`Delete ${job.filename || "this job"} with its transcript and audio?`)) return;
          try {
            await api(`/jobs/${job.id}`, { method: "DELETE" });
            onChange(null);
            toast("Deleted");
          } catch (err) {
            failure(err);
          }
        },
      },
      "Delete",
    ),
  );
  return actions;
}

function jobCard(job, config, live) {
  const progress = h("progress", {
    class: "job-progress",
    max: "1",
    value: String(job.progress),
    "aria-label": `Progress of ${job.filename || job.id}`,
  });
  const state = h("span", { class: `badge state-${job.state}`, dataset: { role: "state" } }, job.state);
  const pct = h("span", { class: "pct" }, percent(job.progress));
  const note = h("p", { class: "note" }, job.error ? `Failed: ${job.error}` : "");
  const card = h(
    "li",
    { class: "job card", dataset: { jobId: job.id, state: job.state } },
    h(
      "div",
      { class: "row" },
      h("a", { class: "job-link", href: `#/jobs/${job.id}` }, job.filename || job.id),
      state,
    ),
    h("div", { class: "row" }, progress, pct),
    stageLine(job),
    note,
    h("p", { class: "meta" }, `Uploaded ${when(job.created_at)}`, job.owner_id !== session()?.sub ? ` · owner ${job.owner_id}` : ""),
    jobActions(job, (changed) => live.changed(job.id, changed)),
  );
  card.applyStatus = (msg) => {
    progress.value = msg.progress;
    pct.textContent = percent(msg.progress);
    const label = FINISHED.has(msg.state) && (msg.state !== "done" || msg.stage === "embed") ? msg.state : `${msg.stage} ${msg.state}`;
    state.textContent = label;
    note.textContent = msg.error ? `Failed: ${msg.error}` : msg.message || "";
    // "done" etc. is set by the card the API renders next, with the stage timings.
    if (!FINISHED.has(msg.state)) card.dataset.state = msg.state;
  };
  return card;
}

/** Keeps job cards in a list live over ONE `/ws/jobs` socket for all of them (live.js).
 * A message updates its job's card; a message of a job not on screen fetches the list's
 * first page again (a job uploaded elsewhere); a job that finishes, or starts again, is
 * fetched once for its stage timings and actions. */
function liveJobs(config, list, { all, notice, pageQuery }) {
  const cards = new Map();
  // When a card last took a live message: an API answer fetched before that is older.
  const touched = new Map();
  // Jobs not on screen whose messages already asked for the list once; with their latest
  // message, applied when the fetch brings the card.
  const sought = new Map();
  let feed = null;
  let stopped = false;

  const fetchJob = async (jobId) => {
    const fetchedAt = performance.now();
    try {
      live.render(await api(`/jobs/${jobId}`), fetchedAt);
    } catch (err) {
      if (err.status === 404) live.changed(jobId, null);
      else failure(err);
    }
  };

  const apply = (msg) => {
    const card = cards.get(msg.job_id);
    if (!card) return false;
    const wasFinished = FINISHED.has(card.dataset.state);
    card.applyStatus(msg);
    touched.set(msg.job_id, performance.now());
    // Finished (or reprocessed after it ended): the API has the stage timings and actions.
    if (FINISHED.has(msg.state) || wasFinished) fetchJob(msg.job_id);
    return true;
  };

  const live = {
    render(job, fetchedAt = Infinity) {
      if (stopped) return;
      const old = cards.get(job.id);
      // A live message that arrived after this answer was asked for is newer: keep it.
      if (old && (touched.get(job.id) || 0) > fetchedAt) return;
      const card = jobCard(job, config, live);
      if (old) old.replaceWith(card);
      else {
        list.querySelector("li.empty")?.remove();
        list.append(card);
      }
      cards.set(job.id, card);
    },
    /** The list's first page again: jobs created since it was read go on top. */
    async refresh() {
      const fetchedAt = performance.now();
      let page;
      try {
        page = await api(`/jobs?${pageQuery(null)}`);
      } catch (err) {
        failure(err);
        return;
      }
      if (stopped) return;
      let anchor = null;
      for (const job of page.items) {
        const known = cards.has(job.id);
        live.render(job, fetchedAt);
        const card = cards.get(job.id);
        if (!known) {
          if (anchor) anchor.after(card);
          else list.prepend(card);
        }
        anchor = card;
        const waiting = sought.get(job.id);
        if (waiting && waiting.at > fetchedAt) apply(waiting.msg);
        sought.delete(job.id);
      }
    },
    changed(jobId, job) {
      if (job === null) {
        cards.get(jobId)?.remove();
        cards.delete(jobId);
        touched.delete(jobId);
        feed?.forget(jobId);
      } else {
        live.render(job);
      }
    },
    /** Open the socket once the first page is on screen: it resumes those jobs from their
     * start, so nothing that happened after the list was read is missed. */
    follow() {
      if (feed || stopped) return;
      feed = watchJobs(config, {
        all,
        unfinished: () => [...cards].filter(([, card]) => !FINISHED.has(card.dataset.state)).map(([id]) => id),
        onStatus: (msg) => {
          if (apply(msg)) return;
          const waiting = sought.get(msg.job_id);
          if (waiting) {
            waiting.msg = msg;
            waiting.at = performance.now();
            return;
          }
          sought.set(msg.job_id, { msg, at: performance.now() });
          live.refresh();
        },
        onGone: (jobId) => live.changed(jobId, null),
        onReopened: () => live.refresh(),
        onNotice: (text, kind, code) => notice.show(text, kind, code),
      });
    },
    stop() {
      stopped = true;
      feed?.stop();
    },
  };
  return live;
}

// ---- sign-in ----

export function signInView(main, config) {
  const parts = [heading("Sign in")];
  if (config.oidc) {
    parts.push(
      h("p", {}, "Sign in with your organisation's account."),
      h(
        "button",
        { type: "button", id: "oidc-sign-in", onclick: () => startOidc(config.oidc).catch(failure) },
        "Sign in with single sign-on",
      ),
    );
  }
  if (config.dev_sign_in) {
    const user = h("input", { id: "dev-user", name: "user", required: true, autocomplete: "username", pattern: "[A-Za-z0-9._@\\-]+", maxlength: "64" });
    const admin = h("input", { id: "dev-admin", type: "checkbox", name: "admin" });
    parts.push(
      h(
        "form",
        {
          class: "card stack",
          "aria-labelledby": "dev-title",
          onsubmit: async (e) => {
            e.preventDefault();
            try {
              await devSignIn(user.value.trim(), admin.checked);
              location.hash = "#/jobs";
            } catch (err) {
              failure(err);
            }
          },
        },
        h("h2", { id: "dev-title" }, "Local sign-in"),
        h("p", { class: "hint" }, "The local stack's dev issuer: pick any user name. This form does not exist when a real identity provider is configured."),
        h("label", { for: "dev-user" }, "User name"),
        user,
        h("label", { class: "check" }, admin, " Administrator"),
        h("button", { type: "submit" }, "Sign in"),
      ),
    );
  }
  if (!config.oidc && !config.dev_sign_in) {
    parts.push(h("p", {}, "No sign-in method is configured for this server (set MXW_WEB_OIDC_ISSUER and MXW_WEB_OIDC_CLIENT_ID)."));
  }
  clear(main, ...parts);
  main.querySelector("input, button")?.focus();
  return () => {};
}

// ---- upload ----

export function uploadView(main, config) {
  const input = h("input", { id: "files", type: "file", multiple: true, accept: "audio/*,video/*,.ogg,.opus,.mp3,.wav,.m4a,.flac,.webm" });
  const model = h("select", { id: "opt-model", name: "model" }, h("option", { value: "" }, "server default"), config.models.map((m) => h("option", { value: m }, m)));
  const language = h("input", { id: "opt-language", name: "language", placeholder: "auto", maxlength: "16", autocomplete: "off", "aria-describedby": "lang-hint" });
  const chunking = h("select", { id: "opt-chunking", name: "chunking" }, config.chunking.map((c) => h("option", { value: c }, c)));
  const decoding = h(
    "select",
    { id: "opt-decoding", name: "decoding" },
    h("option", { value: "" }, "server default"),
    h("option", { value: "batched" }, "batched (faster)"),
    h("option", { value: "sequential" }, "sequential (each window follows the text before)"),
  );
  const speakers = h("input", { id: "opt-speakers", name: "speakers", type: "checkbox" });
  const hotwords = h("input", { id: "opt-hotwords", name: "hotwords", placeholder: "Siobhan, Kubernetes", maxlength: "2000", autocomplete: "off", "aria-describedby": "hotwords-hint" });
  const useVocabulary = h("input", { id: "opt-use-vocabulary", name: "use_vocabulary", type: "checkbox", checked: true });
  const queue = h("ul", { class: "uploads", "aria-label": "Uploads" });
  const drop = h(
    "label",
    { class: "dropzone", for: "files" },
    h("strong", {}, "Drop audio files here"),
    h("span", {}, " or press to choose (several at once is fine)"),
  );
  const sendAll = async (files) => {
    const fields = {
      model: model.value,
      language: language.value.trim(),
      chunking: chunking.value,
      decoding: decoding.value,
      speakers: speakers.checked ? "true" : "",
      hotwords: hotwords.value.trim(),
      use_vocabulary: useVocabulary.checked ? "" : "false",
    };
    for (const file of files) {
      const bar = h("progress", { max: "1", value: "0", "aria-label": `Upload of ${file.name}` });
      const status = h("span", { class: "upload-status" }, "uploading");
      const item = h("li", { class: "card", dataset: { file: file.name } }, h("div", { class: "row" }, h("span", {}, file.name), status), bar);
      queue.append(item);
      try {
        const job = await uploadFile(file, fields, (fraction) => {
          bar.value = fraction;
        });
        bar.value = 1;
        clear(status, h("a", { href: `#/jobs/${job.id}`, class: "job-link" }, job.duplicate ? "already uploaded: open" : "open job"));
        item.dataset.jobId = job.id;
      } catch (err) {
        status.textContent = `failed: ${err.message}`;
        item.classList.add("error");
      }
    }
  };
  input.addEventListener("change", () => {
    if (input.files.length) sendAll([...input.files]);
    input.value = "";
  });
  drop.addEventListener("dragover", (e) => {
    e.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    if (e.dataTransfer.files.length) sendAll([...e.dataTransfer.files]);
  });
  clear(
    main,
    heading("Upload audio"),
    h(
      "form",
      { class: "stack", onsubmit: (e) => e.preventDefault() },
      h(
        "fieldset",
        { class: "options" },
        h("legend", {}, "Options"),
        h("div", { class: "field" }, h("label", { for: "opt-model" }, "Model"), model),
        h("div", { class: "field" }, h("label", { for: "opt-language" }, "Language"), language, h("small", { id: "lang-hint" }, "ISO code such as en or de; empty detects it")),
        h("div", { class: "field" }, h("label", { for: "opt-chunking" }, "Chunking"), chunking),
        h("div", { class: "field" }, h("label", { for: "opt-decoding" }, "Decoding"), decoding),
        h("div", { class: "field" }, h("label", { class: "check", for: "opt-speakers" }, speakers, "Who spoke when (speakers)")),
        h(
          "div",
          { class: "field" },
          h("label", { for: "opt-hotwords" }, "Names and terms"),
          hotwords,
          h("small", { id: "hotwords-hint" }, "Rare names or jargon said in this recording, separated by commas; added before ", h("a", { href: "#/vocabulary" }, "your vocabulary")),
        ),
        h("div", { class: "field" }, h("label", { class: "check", for: "opt-use-vocabulary" }, useVocabulary, "Use my vocabulary")),
      ),
      drop,
      input,
    ),
    queue,
    h("p", {}, h("a", { href: "#/jobs" }, "Follow your jobs live →")),
  );
  return () => {};
}

// ---- custom vocabulary ----

/** The user's names and terms (GET/PUT /vocabulary): listed, added to, removed from, then
 * saved as a whole; the server normalises the list and says why it refuses one. */
export function vocabularyView(main) {
  let terms = [];
  let limits = { max_terms: 50, max_term_chars: 60, max_total_chars: 500 };
  let dirty = false;
  const list = h("ul", { class: "vocabulary", "aria-label": "Your terms" });
  const count = h("p", { class: "note vocab-count", role: "status" });
  const problem = h("p", { class: "note error vocab-error", role: "alert", hidden: true });
  const term = h("input", { id: "vocab-term", maxlength: "240", autocomplete: "off", placeholder: "Siobhan", "aria-describedby": "vocab-hint" });
  const save = h("button", { type: "button", id: "vocab-save", disabled: true }, "Save");
  const showError = (message) => {
    problem.textContent = message || "";
    problem.hidden = !message;
  };
  const render = () => {
    clear(
      list,
      terms.map((t, i) =>
        h(
          "li",
          { class: "vocab-term", dataset: { term: t } },
          h("span", { class: "term" }, t),
          " ",
          h(
            "button",
            {
              type: "button",
              class: "link-button remove-term",
              "aria-label": `Remove ${t}`,
              onclick: () => {
                terms.splice(i, 1);
                dirty = true;
                render();
              },
            },
            "Remove",
          ),
        ),
      ),
    );
    count.textContent = `${terms.length} of ${limits.max_terms} terms${dirty ? " · not saved yet" : ""}`;
    save.disabled = !dirty;
  };
  const add = () => {
    const value = term.value.trim();
    if (!value) return;
    // Several at once: "Siobhan, Kubernetes" (a term holds no comma).
    terms.push(...value.split(/[,\n]/).map((t) => t.trim()).filter(Boolean));
    term.value = "";
    dirty = true;
    showError("");
    render();
  };
  const load = async () => {
    const vocabulary = await api("/vocabulary");
    terms = vocabulary.terms;
    limits = vocabulary.limits;
    dirty = false;
    render();
  };
  save.addEventListener("click", async () => {
    try {
      const vocabulary = await api("/vocabulary", { method: "PUT", json: { terms } });
      terms = vocabulary.terms;
      dirty = false;
      showError("");
      render();
      toast("Vocabulary saved");
    } catch (err) {
      showError(`Not saved: ${err.message}`);
    }
  });
  clear(
    main,
    heading("Custom vocabulary"),
    h("p", {}, "Names and terms your recordings hold (people, places, products, jargon). Every job of yours is told to expect them, so that they are spelled right; a job may add its own or leave these out."),
    h(
      "form",
      { class: "stack vocab-add", onsubmit: (e) => (e.preventDefault(), add()) },
      h(
        "div",
        { class: "field" },
        h("label", { for: "vocab-term" }, "Add a term"),
        term,
        h("small", { id: "vocab-hint" }, `At most ${limits.max_terms} terms of ${limits.max_term_chars} characters, ${limits.max_total_chars} together; no commas inside a term`),
      ),
      h("button", { type: "submit", class: "secondary", id: "vocab-add" }, "Add"),
    ),
    list,
    count,
    problem,
    h("div", { class: "actions" }, save),
  );
  load().catch((err) => showError(err.message));
  return () => {};
}

// ---- my jobs (and admin: all jobs) ----

export function jobsView(main, config, { all = false } = {}) {
  const list = h("ul", { class: "jobs", "aria-live": "polite", "aria-label": all ? "All jobs" : "Your jobs" });
  const notice = liveNotice();
  const pageQuery = (cursor) => {
    const params = new URLSearchParams({ limit: "20" });
    if (cursor) params.set("cursor", cursor);
    if (all) params.set("all", "true");
    return params;
  };
  const live = liveJobs(config, list, { all, notice, pageQuery });
  const more = h("button", { type: "button", class: "secondary", hidden: true }, "Show more");
  let cursor = null;
  const load = async () => {
    try {
      const fetchedAt = performance.now();
      const page = await api(`/jobs?${pageQuery(cursor)}`);
      page.items.forEach((job) => live.render(job, fetchedAt));
      cursor = page.next_cursor;
      more.hidden = !cursor;
      if (!list.children.length) list.append(h("li", { class: "empty" }, "No jobs yet. ", h("a", { href: "#/upload" }, "Upload audio")));
    } catch (err) {
      failure(err);
    }
  };
  more.addEventListener("click", load);
  const section = h(
    "section",
    { "aria-labelledby": all ? "all-jobs" : "page-title" },
    all ? h("h2", { id: "all-jobs" }, "All jobs") : heading("My jobs"),
    notice,
    list,
    more,
  );
  if (all) main.append(section);
  else clear(main, section);
  load().then(() => live.follow());
  return () => live.stop();
}

// ---- one job: player, transcript, chunks, downloads ----

const SPEAKER_COLOURS = 8;

/** A speaker's colour class, the same for a label wherever it shows: SPEAKER_03 is the
 * third colour; another label by a hash of it. */
function speakerColour(label) {
  const numbered = /_(\d+)$/.exec(label);
  let n = numbered ? Number(numbered[1]) - 1 : 0;
  if (!numbered) for (const ch of label) n = (n * 31 + ch.codePointAt(0)) >>> 0;
  return `speaker-c${n % SPEAKER_COLOURS}`;
}

function speakerNames(speakers) {
  return new Map((speakers || []).map((s) => [s.label, s.name]));
}

/** The name before a line; a click edits it in place (Enter or leaving the field saves,
 * Escape cancels) and `renamed(label)` shows the new name everywhere. */
function speakerName(jobId, label, names, renamed) {
  const button = h("button", { type: "button", class: "speaker", dataset: { speaker: label }, title: "Rename this speaker" }, names.get(label) || label);
  button.addEventListener("click", () => {
    const input = h("input", { class: "speaker-name", value: names.get(label) || "", maxlength: "255", "aria-label": `Name of ${names.get(label) || label}` });
    let done = false;
    const finish = async (save) => {
      if (done) return;
      done = true;
      const name = input.value.trim();
      input.replaceWith(button);
      button.focus();
      if (!save || !name || name === names.get(label)) return;
      try {
        const speaker = await api(`/jobs/${jobId}/speakers/${encodeURIComponent(label)}`, { method: "PATCH", json: { name } });
        names.set(label, speaker.name);
        renamed(label);
      } catch (err) {
        failure(err);
      }
    };
    input.addEventListener("keydown", (e) => {
      if (e.key !== "Enter" && e.key !== "Escape") return;
      e.preventDefault(); // or the key goes on to "click" the name button that comes back
      finish(e.key === "Enter");
    });
    input.addEventListener("blur", () => finish(true));
    button.replaceWith(input);
    input.focus();
    input.select();
  });
  return button;
}

/** The job's speakers and their voice profiles: a suggested name to confirm or reject
 * ("Alice? 0.91 — yes / no") and "Save as voice" for a speaker not confirmed as one.
 * `named(speakers)` shows the names an answer gives everywhere on the page. */
function voicePanel(jobId, named) {
  const list = h("ul", { class: "voices", "aria-label": "Voices", hidden: true });
  const render = (speakers) => {
    named(speakers);
    clear(list, speakers.map(item));
    list.hidden = speakers.length === 0;
  };
  const reload = async () => render((await api(`/jobs/${jobId}/speakers`)).speakers);
  const decide = async (s, accept) => {
    const url = `/jobs/${jobId}/speakers/${encodeURIComponent(s.label)}/voice`;
    render((await api(url, { method: "POST", json: { profile_id: s.suggestion.profile_id, accept } })).speakers);
  };
  const save = async (s, name) => {
    if (!name) return;
    await api("/voices", { method: "POST", json: { name, job_id: jobId, label: s.label } });
    await reload();
  };
  const item = (s) => {
    const parts = [h("span", { class: "name" }, s.name)];
    if (s.profile_id) {
      parts.push(" ", h("span", { class: "badge voice-saved" }, "saved voice"));
    } else {
      if (s.suggestion) {
        parts.push(
          " ",
          h(
            "span",
            { class: "suggestion" },
            `${s.suggestion.name}? ${s.suggestion.similarity.toFixed(2)} — `,
            h("button", { type: "button", class: "secondary", dataset: { answer: "yes" }, onclick: () => decide(s, true).catch(failure) }, "yes"),
            " / ",
            h("button", { type: "button", class: "secondary", dataset: { answer: "no" }, onclick: () => decide(s, false).catch(failure) }, "no"),
          ),
        );
      }
      const input = h("input", { class: "voice-name", value: s.name, maxlength: "255", "aria-label": `Voice name for ${s.name}` });
      parts.push(" ", input, h("button", { type: "button", class: "secondary save-voice", onclick: () => save(s, input.value.trim()).catch(failure) }, "Save as voice"));
    }
    return h("li", { class: `voice ${speakerColour(s.label)}`, dataset: { speaker: s.label } }, parts);
  };
  return { element: list, load: () => reload().catch(() => {}) };
}

function seekAndPlay(player, seconds) {
  const go = () => {
    player.currentTime = seconds;
    player.play().catch(() => {});
  };
  if (player.readyState >= 1) go();
  else player.addEventListener("loadedmetadata", go, { once: true });
}

// ---- the transcript editor (on a job's page) ----

const RATES = [0.5, 0.75, 1, 1.25, 1.5, 1.75, 2];
const JUMP_BACK_S = 5;
const OPERATIONS = { text: "text corrected", times: "times adjusted", split: "segment split", merge: "segments merged", speaker: "speaker changed", revert: "reverted" };

/** A time to the tenth of a second, as the editor reports times it set. */
function clockTenths(seconds) {
  const tenths = Math.floor(Math.round(seconds * 100) / 10); // 2.3 s is 22.999… tenths
  return `${clock(tenths / 10)}.${tenths % 10}`;
}

/** Whitespace as one space: a segment is one line. */
function oneLine(text) {
  return text.replace(/\s+/g, " ").trim();
}

/** Characters before the caret in `el`, or null when the caret is not in it. */
function caretIn(el) {
  const sel = getSelection();
  if (!sel.rangeCount || !el.contains(sel.focusNode)) return null;
  const range = document.createRange();
  range.selectNodeContents(el);
  range.setEnd(sel.focusNode, sel.focusOffset);
  return range.toString();
}

function placeCaret(el, offset) {
  el.focus();
  const node = el.firstChild;
  const range = document.createRange();
  if (node) range.setStart(node, Math.max(0, Math.min(offset, node.length)));
  else range.setStart(el, 0);
  range.collapse(true);
  const sel = getSelection();
  sel.removeAllRanges();
  sel.addRange(range);
}

/** The transcript, editable in place while the audio plays. Every change is sent with
 * If-Match (the ETag last received); each answer is the new transcript and its ETag. The
 * page edits stored segments: with speakers, one stored segment (`index`) may show as
 * several lines, whose texts are joined with a space. `line(seg, text, mark)` builds a
 * segment's <li> around its editable text and its "not saved" marker. */
function transcriptEditor(jobId, player, list, line) {
  let etag = null;
  let transcript = null;
  let groups = new Map(); // stored index -> { index, parts: [{ seg, li, text, mark }], saved }
  let busy = false;
  let current = null; // the stored index of the segment last focused: the one the buttons act on
  const dirty = new Set();

  const status = h("span", { class: "editor-status", role: "status" });
  const problem = h("p", { class: "note error editor-error", role: "alert", hidden: true });
  const conflict = h("div", { class: "card conflict", role: "alert", hidden: true });
  const save = h("button", { type: "button", id: "save-edits", disabled: true, "aria-keyshortcuts": "Control+S" }, "Save");
  const rate = h(
    "select",
    { id: "playback-rate" },
    RATES.map((r) => h("option", { value: String(r), selected: r === 1 }, `${r}×`)),
  );
  const keysHint = h(
    "small",
    { id: "editor-keys", class: "keys-hint" },
    "Edit a line in place. Keys: Esc play/pause · Ctrl+← back 5 s · Ctrl+Enter split at the cursor · " +
      "Backspace at a line's start joins it to the one before (Delete at its end, to the next) · " +
      "Ctrl+[ / Ctrl+] the line starts / ends at the player's time · Ctrl+S save",
  );
  const tool = (id, label, keys, hint) =>
    h("button", { type: "button", id, class: "secondary", disabled: true, "aria-keyshortcuts": keys, title: hint }, label);
  const startHere = tool("start-here", "Start here", "Control+[", "The line starts at the player's time (Ctrl+[)");
  const endHere = tool("end-here", "End here", "Control+]", "The line ends at the player's time (Ctrl+])");
  const mergeNext = tool("merge-next", "Join with next", "Delete", "Join the line and the next one (Delete at the end of a line)");
  const toolbar = h(
    "div",
    { class: "editor-bar" },
    h("label", { for: "playback-rate" }, "Speed"),
    rate,
    startHere,
    endHere,
    mergeNext,
    save,
    status,
  );
  const historyList = h("ol", { class: "revisions", "aria-label": "Revisions" });
  const historyTitle = h("summary", {}, "History");
  const history = h("details", { class: "card history", id: "history" }, historyTitle, historyList);

  const setRate = () => {
    player.defaultPlaybackRate = Number(rate.value);
    player.playbackRate = Number(rate.value);
  };
  rate.addEventListener("change", setRate);
  player.addEventListener("loadedmetadata", setRate);

  const showProblem = (message) => {
    problem.textContent = message || "";
    problem.hidden = !message;
  };
  const textOf = (group) => oneLine(group.parts.map((p) => p.text.textContent).join(" "));
  const updateStatus = () => {
    save.disabled = busy || dirty.size === 0;
    startHere.disabled = endHere.disabled = busy || !groups.has(current);
    mergeNext.disabled = busy || !groups.has(current) || !groups.has(current + 1);
    const rev = transcript?.revision ? `revision ${transcript.revision}` : "as transcribed";
    status.textContent = dirty.size
      ? `${dirty.size} ${dirty.size === 1 ? "segment" : "segments"} not saved`
      : `Saved (${rev})`;
    historyTitle.textContent = transcript?.revision ? `History (revision ${transcript.revision})` : "History";
  };
  const markGroup = (group) => {
    const changed = textOf(group) !== group.saved;
    if (changed) dirty.add(group.index);
    else dirty.delete(group.index);
    for (const p of group.parts) {
      p.li.classList.toggle("changed", changed);
      p.mark.hidden = !changed;
    }
    updateStatus();
  };

  /** Where the caret is: the stored index and the offset in its joined text. */
  const caret = () => {
    const el = document.activeElement;
    if (!el?.matches?.("span.text[data-index]") || !list.contains(el)) return null;
    const group = groups.get(Number(el.dataset.index));
    const before = caretIn(el);
    if (!group || before === null) return null;
    let offset = 0;
    for (const p of group.parts) {
      if (p.text === el) return { index: group.index, offset: offset + before.replace(/\s+/g, " ").trimStart().length };
      offset += oneLine(p.text.textContent).length + 1;
    }
    return null;
  };
  const focusAt = (index, offset) => {
    const group = groups.get(index);
    if (!group) return;
    let rest = offset;
    for (const [i, p] of group.parts.entries()) {
      const len = p.text.textContent.length;
      if (rest <= len || i === group.parts.length - 1) return placeCaret(p.text, rest);
      rest -= len + 1;
    }
  };

  const render = (view, tag) => {
    transcript = view;
    if (tag) etag = tag;
    groups = new Map();
    dirty.clear();
    const items = view.segments.map((seg) => {
      const text = h(
        "span",
        {
          class: "text",
          contenteditable: "plaintext-only",
          role: "textbox",
          spellcheck: "true",
          "aria-label": `Text from ${clock(seg.start)}`,
          "aria-describedby": "editor-keys",
          dataset: { index: seg.index },
        },
        seg.text.trim(),
      );
      const mark = h("span", { class: "badge unsaved", hidden: true }, "not saved");
      const li = line(seg, text, mark);
      if (!groups.has(seg.index)) groups.set(seg.index, { index: seg.index, parts: [] });
      groups.get(seg.index).parts.push({ seg, li, text, mark });
      return li;
    });
    for (const group of groups.values()) group.saved = textOf(group);
    clear(list, items);
    updateStatus();
    if (history.open) loadHistory();
  };

  /** One change: its answer is the transcript after it; null when it was refused. */
  const send = async (method, path, json) => {
    try {
      const answer = await api(path, { method, json, ifMatch: etag, withEtag: true });
      etag = answer.etag || etag;
      showProblem("");
      return answer;
    } catch (err) {
      if (err.status === 412) showConflict();
      else showProblem(`Not saved: ${err.message}`);
      return null;
    }
  };

  /** Save every changed segment (one PATCH each, in order); true when all went through. */
  const saveAll = async () => {
    if (busy) return false;
    if (!dirty.size) return true;
    busy = true;
    updateStatus();
    const at = caret();
    let last = null;
    try {
      for (const index of [...dirty].sort((a, b) => a - b)) {
        const group = groups.get(index);
        const text = textOf(group);
        const answer = await send("PATCH", `/jobs/${jobId}/segments/${index}`, { text });
        if (!answer) return false;
        last = answer;
        group.saved = text;
        markGroup(group);
      }
    } finally {
      busy = false;
      updateStatus();
    }
    if (last) {
      render(last.body, last.etag);
      if (at) focusAt(at.index, at.offset);
      toast("Transcript saved");
    }
    return true;
  };

  /** A change sent after the unsaved text is saved (`body()` is read then, from the stored
   * transcript); the caret, when it was in the transcript, goes where `caretAfter` says. */
  const change = async (method, path, body, done, caretAfter = (at) => at) => {
    const at = caret();
    if (!(await saveAll()) || busy) return;
    busy = true;
    updateStatus();
    const answer = await send(method, path, body());
    busy = false;
    if (!answer) return updateStatus();
    render(answer.body, answer.etag);
    const next = at && caretAfter(at);
    if (next) focusAt(next.index, next.offset);
    toast(done);
  };

  /** The line's start or end at the player's time (to the hundredth of a second). */
  const setTime = (which) => {
    if (!groups.has(current) || busy) return;
    const t = Math.round(player.currentTime * 100) / 100;
    const what = which === "start" ? "Start" : "End";
    change("PATCH", `/jobs/${jobId}/segments/${current}`, () => ({ [which]: t }), `${what} set to ${clockTenths(t)}`);
  };

  /** Join stored segment `index` and the next one; the caret goes where they meet. */
  const merge = (index) => {
    if (!groups.has(index) || !groups.has(index + 1) || busy) return;
    const joint = textOf(groups.get(index)).length + 1;
    current = index;
    change("POST", `/jobs/${jobId}/segments/${index}/merge`, () => ({}), "Lines joined", () => ({ index, offset: joint }));
  };

  /** Split the segment at the caret: the second part starts there. Unsaved text is saved
   * first (the cut is made in the stored text). */
  const split = () => {
    const at = caret();
    if (!at) return;
    const length = textOf(groups.get(at.index)).length;
    if (at.offset <= 0 || at.offset >= length) {
      showProblem("Put the cursor inside the text to split it: the new segment starts at the cursor.");
      return;
    }
    const offset = () => {
      const stored = groups.get(at.index).parts[0].seg.text;
      return { offset: stored.length - stored.trimStart().length + at.offset };
    };
    change("POST", `/jobs/${jobId}/segments/${at.index}/split`, offset, "Segment split", () => ({ index: at.index + 1, offset: 0 }));
  };

  const reload = async () => {
    const kept = [...dirty].sort((a, b) => a - b).map((index) => {
      const group = groups.get(index);
      return { index, start: group.parts[0].seg.start, text: textOf(group) };
    });
    let answer;
    try {
      answer = await api(`/jobs/${jobId}/transcript?format=json`, { withEtag: true });
    } catch (err) {
      showProblem(err.message);
      return;
    }
    render(answer.body, answer.etag);
    if (!kept.length) {
      conflict.hidden = true;
      return;
    }
    const putBack = (k, button) => {
      const group = groups.get(k.index);
      if (!group) return;
      group.parts.forEach((p, i) => {
        p.text.textContent = i === 0 ? k.text : "";
      });
      markGroup(group);
      button.disabled = true;
      placeCaret(group.parts[0].text, k.text.length);
    };
    clear(
      conflict,
      h("p", {}, h("strong", {}, "Reloaded."), " This is the transcript as it is now. Your text that was not saved:"),
      h(
        "ul",
        { class: "kept" },
        kept.map((k) => {
          const button = h("button", { type: "button", class: "secondary", "aria-label": `Put back your text at ${clock(k.start)}` }, "Put back");
          button.addEventListener("click", () => putBack(k, button));
          return h("li", { dataset: { index: k.index } }, h("span", { class: "meta" }, clock(k.start)), " ", h("q", { class: "kept-text" }, k.text), " ", button);
        }),
      ),
      h("button", { type: "button", class: "link-button", onclick: () => (conflict.hidden = true) }, "Dismiss"),
    );
    conflict.hidden = false;
    conflict.querySelector("button")?.focus();
  };

  const showConflict = () => {
    clear(
      conflict,
      h(
        "p",
        {},
        h("strong", {}, "The transcript changed elsewhere"),
        " (another tab or person saved a change first), so yours was not saved. Your text stays on the page: reload the transcript to see the other change, then apply yours again.",
      ),
      h("button", { type: "button", id: "reload-transcript", onclick: () => reload() }, "Reload the transcript"),
    );
    conflict.hidden = false;
  };

  const revert = async (revision) => {
    if (dirty.size && !confirm("Reverting drops your unsaved edits. Revert anyway?")) return;
    const answer = await send("POST", `/jobs/${jobId}/transcript/revert`, { revision });
    if (!answer) return;
    render(answer.body, answer.etag);
    toast(revision ? `Reverted to revision ${revision}` : "Reverted to the transcript as transcribed");
  };

  const loadHistory = async () => {
    let page;
    try {
      page = await api(`/jobs/${jobId}/transcript/revisions`);
    } catch (err) {
      clear(historyList, h("li", { class: "empty" }, `The history could not be read: ${err.message}`));
      return;
    }
    const entries = [...page.revisions];
    if (!entries.some((r) => r.revision === 0)) entries.push({ revision: 0 });
    clear(
      historyList,
      entries.map((r) =>
        h(
          "li",
          { class: "revision", dataset: { revision: r.revision } },
          h("div", { class: "row" },
            h("span", {},
              h("strong", {}, `Revision ${r.revision}`),
              " · ",
              r.revision ? `${OPERATIONS[r.operation] || r.operation} by ${r.author}, ${when(r.created_at)}` : "as transcribed",
            ),
            r.revision === page.revision
              ? h("span", { class: "badge" }, "current")
              : h("button", { type: "button", class: "secondary revert", "aria-label": `Revert to revision ${r.revision}`, onclick: () => revert(r.revision) }, "Revert to this"),
          ),
          r.summary ? h("p", { class: "meta summary" }, r.summary, r.start !== undefined ? ` (${clock(r.start)}–${clock(r.end)})` : "") : "",
        ),
      ),
    );
  };
  history.addEventListener("toggle", () => history.open && loadHistory());

  list.addEventListener("focusin", (e) => {
    if (!e.target.matches?.("span.text[data-index]")) return;
    current = Number(e.target.dataset.index);
    updateStatus();
  });
  startHere.addEventListener("click", () => setTime("start"));
  endHere.addEventListener("click", () => setTime("end"));
  mergeNext.addEventListener("click", () => merge(current));
  list.addEventListener("input", (e) => {
    const group = groups.get(Number(e.target.dataset?.index));
    if (group) markGroup(group);
  });
  // Pasted text goes in as one line.
  list.addEventListener("paste", (e) => {
    if (!e.target.matches?.("span.text[data-index]")) return;
    e.preventDefault();
    document.execCommand("insertText", false, oneLine(e.clipboardData.getData("text/plain")));
  });
  save.addEventListener("click", () => saveAll());

  const onKey = (e) => {
    if (e.defaultPrevented || e.isComposing) return;
    const ctrl = e.ctrlKey || e.metaKey;
    const inText = Boolean(e.target.matches?.("span.text[data-index]"));
    if (e.key === "Escape" && !ctrl && !e.altKey && !e.shiftKey) {
      e.preventDefault();
      if (player.paused) player.play().catch(() => {});
      else player.pause();
    } else if (e.key === "ArrowLeft" && (ctrl || e.altKey) && !e.shiftKey) {
      e.preventDefault(); // Alt+← is the browser's Back; Ctrl+← a word left
      player.currentTime = Math.max(0, player.currentTime - JUMP_BACK_S);
    } else if (ctrl && !e.altKey && (e.key === "s" || e.key === "S")) {
      e.preventDefault(); // not the browser's "save page"
      saveAll();
    } else if (ctrl && !e.altKey && (e.key === "[" || e.key === "]")) {
      e.preventDefault(); // Cmd+[ is the browser's Back on a Mac
      setTime(e.key === "[" ? "start" : "end");
    } else if (e.key === "Enter" && inText) {
      e.preventDefault(); // one line per segment; Ctrl+Enter splits it
      if (ctrl) split();
    } else if ((e.key === "Backspace" || e.key === "Delete") && inText && !ctrl && !e.altKey && getSelection().isCollapsed) {
      // At a line's start Backspace joins it to the one before; at its end Delete joins
      // the next one to it (as in a text editor).
      const at = caret();
      if (!at) return;
      const atEnd = at.offset >= textOf(groups.get(at.index)).length;
      if (e.key === "Backspace" && at.offset === 0 && at.index > 0) {
        e.preventDefault();
        merge(at.index - 1);
      } else if (e.key === "Delete" && atEnd && groups.has(at.index + 1)) {
        e.preventDefault();
        merge(at.index);
      }
    }
  };
  document.addEventListener("keydown", onKey);
  const onUnload = (e) => {
    if (!dirty.size) return;
    e.preventDefault();
    e.returnValue = "";
  };
  window.addEventListener("beforeunload", onUnload);

  return {
    toolbar,
    history,
    notices: [keysHint, problem, conflict],
    unsaved: () => dirty.size > 0,
    etag: () => etag,
    render,
    stop() {
      document.removeEventListener("keydown", onKey);
      window.removeEventListener("beforeunload", onUnload);
    },
  };
}

export function jobView(main, config, jobId) {
  let stop = () => {};
  let closed = false;
  const player = h("audio", { id: "player", controls: true, preload: "metadata", "aria-label": "Audio of this job" });
  const header = h("div");
  const notice = liveNotice();
  const segments = h("ol", { class: "segments", "aria-label": "Transcript" });
  const chunks = h("ol", { class: "chunks", "aria-label": "Topics" });
  // Show one speaker's lines only; hidden until the transcript has speakers.
  const speakerSelect = h("select", { id: "speaker-filter", onchange: () => applyFilter() });
  const filter = h("div", { class: "field speaker-filter", hidden: true }, h("label", { for: "speaker-filter" }, "Speaker"), speakerSelect);
  const applyFilter = () => {
    const only = speakerSelect.value;
    for (const li of segments.querySelectorAll("li.segment")) li.hidden = Boolean(only) && li.dataset.speaker !== only;
  };
  const renderFilter = (names) => {
    const chosen = speakerSelect.value;
    clear(
      speakerSelect,
      h("option", { value: "" }, "All speakers"),
      [...names].map(([label, name]) => h("option", { value: label, selected: label === chosen }, name)),
    );
    filter.hidden = names.size === 0;
    applyFilter();
  };
  const renamedSpeaker = (names, label) => {
    for (const b of segments.querySelectorAll("button.speaker")) if (b.dataset.speaker === label) b.textContent = names.get(label);
    renderFilter(names);
  };
  let names = new Map();
  const voices = voicePanel(jobId, (speakers) => {
    for (const sp of speakers) {
      names.set(sp.label, sp.name);
      renamedSpeaker(names, sp.label);
    }
  });
  const line = (seg, text, mark) =>
    h(
      "li",
      {
        class: seg.speaker ? `segment ${speakerColour(seg.speaker)}` : "segment",
        dataset: seg.speaker ? { start: seg.start, end: seg.end, speaker: seg.speaker } : { start: seg.start, end: seg.end },
        hidden: Boolean(speakerSelect.value) && seg.speaker !== speakerSelect.value,
      },
      h(
        "button",
        { type: "button", class: "ts", dataset: { start: seg.start }, title: `${clockTenths(seg.start)}–${clockTenths(seg.end)}`, "aria-label": `Play from ${clock(seg.start)}`, onclick: () => seekAndPlay(player, seg.start) },
        clock(seg.start),
      ),
      " ",
      seg.speaker
        ? speakerName(jobId, seg.speaker, names, (label) => {
            renamedSpeaker(names, label);
            voices.load();
          })
        : "",
      text,
      mark,
    );
  const editor = transcriptEditor(jobId, player, segments, line);
  const downloads = h(
    "div",
    { class: "actions" },
    config.formats.map((f) =>
      h("button", { type: "button", class: "secondary", onclick: () => download(jobId, f).catch(failure) }, `Download ${f.toUpperCase()}`),
    ),
  );
  clear(
    main,
    notice,
    header,
    h("div", { class: "player-bar" }, player, editor.toolbar),
    h("section", { "aria-labelledby": "t-title" }, h("h2", { id: "t-title" }, "Transcript"), voices.element, filter, editor.notices, segments, editor.history),
    h("section", { "aria-labelledby": "c-title" }, h("h2", { id: "c-title" }, "Topics"), chunks),
    h("section", { "aria-labelledby": "d-title" }, h("h2", { id: "d-title" }, "Downloads"), downloads),
  );

  const renderHeader = (job) => {
    const s = job.summary || {};
    const facts = [
      ["State", h("span", { class: `badge state-${job.state}`, dataset: { role: "state" } }, job.state)],
      ["Progress", percent(job.progress)],
      ["Language", s.language ? `${s.language}${s.language_probability ? ` (${Math.round(s.language_probability * 100)}%)` : ""}` : "–"],
      ["Model", s.model || job.options.model || "default"],
      ["Audio", s.audio_duration_s ? clock(s.audio_duration_s) : "–"],
      ["Real-time factor", s.real_time_factor ? s.real_time_factor.toFixed(3) : "–"],
    ];
    // The effective list the transcriber was told (the job's own, then the vocabulary).
    const hotwords = job.options.hotwords || [];
    if (hotwords.length) facts.push(["Names and terms", h("span", { class: "hotwords" }, hotwords.join(", "))]);
    clear(
      header,
      h("h1", { id: "page-title" }, job.filename || job.id),
      h("dl", { class: "facts" }, facts.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])),
      job.error ? h("p", { class: "note error" }, `Failed: ${job.error}`) : "",
      stageLine(job),
      jobActions(job, (changed) => {
        if (changed === null) location.hash = "#/jobs";
        else show(changed).then(follow).catch(failure);
      }),
    );
  };

  const loadResults = async (job) => {
    if (job.stages.find((s) => s.stage === "transcribe")?.state === "done" || job.state === "done") {
      // Unsaved edits stay as they are (a save then finds out whether the transcript moved on).
      const answer = editor.unsaved() ? null : await api(`/jobs/${jobId}/transcript?format=json`, { withEtag: true }).catch(() => null);
      const transcript = answer?.body;
      if (transcript) {
        names = speakerNames(transcript.speakers);
        // The same revision as on screen (a job's run after an edit ended): keep the fields
        // as they are, the caret with them.
        if (!answer.etag || answer.etag !== editor.etag()) editor.render(transcript, answer.etag);
        renderFilter(names);
        if (transcript.speakers) await voices.load();
      }
    } else {
      clear(segments, h("li", { class: "empty" }, "The transcript appears here when it is ready."));
    }
    if (job.state === "done" || job.stages.find((s) => s.stage === "chunk")?.state === "done") {
      const list = await api(`/jobs/${jobId}/chunks`).catch(() => null);
      if (list) {
        clear(
          chunks,
          list.chunks.map((c) =>
            h(
              "li",
              { class: "card chunk" },
              h(
                "div",
                { class: "row" },
                h("h3", {}, c.title || c.topic || `Part ${c.index + 1}`),
                h("button", { type: "button", class: "ts", dataset: { start: c.start }, "aria-label": `Play topic from ${clock(c.start)}`, onclick: () => seekAndPlay(player, c.start) }, `${clock(c.start)}–${clock(c.end)}`),
              ),
              c.summary ? h("p", {}, c.summary) : "",
              c.keywords.length ? h("ul", { class: "tags", "aria-label": "Keywords" }, c.keywords.map((k) => h("li", {}, k))) : "",
            ),
          ),
        );
      }
    }
  };

  const show = async (job) => {
    job = job || (await api(`/jobs/${jobId}`));
    if (!closed) {
      renderHeader(job);
      await loadResults(job);
    }
    return job;
  };

  // One feed of this job while it runs (`/ws/jobs/{id}`: its history, then live, closed when
  // it ends); watchJob reconnects on its own, so its end only re-renders.
  let watching = false;
  const follow = (job) => {
    if (closed || watching || FINISHED.has(job.state)) return;
    watching = true;
    stop = watchJob(
      config,
      jobId,
      {
        onStatus: (msg) => {
          const badge = header.querySelector("[data-role=state]");
          if (badge) badge.textContent = `${msg.stage} ${msg.state}`;
        },
        onEnd: async () => {
          const fresh = await show();
          if (FINISHED.has(fresh.state)) watching = false;
          return fresh;
        },
        onRefused: (text, code) => notice.show(text, "error", code),
      },
    );
  };

  show()
    .then((job) => {
      follow(job);
      return audioUrl(jobId);
    })
    .then((url) => {
      if (!closed) player.src = url;
    })
    .catch((err) => {
      if (err.status === 404 && !closed) {
        // Someone else's job reads exactly like one that does not exist.
        clear(main, heading("Job not found"), h("p", {}, "There is no such job, or it is not yours. ", h("a", { href: "#/jobs" }, "Back to your jobs")));
      } else failure(err);
    });

  // Highlight the segment being played.
  let current = null;
  player.addEventListener("timeupdate", () => {
    const t = player.currentTime;
    const items = segments.querySelectorAll("li.segment");
    let found = null;
    for (const li of items) {
      if (t >= Number(li.dataset.start) && t < Number(li.dataset.end)) found = li;
    }
    if (found !== current) {
      current?.classList.remove("current");
      current?.removeAttribute("aria-current");
      found?.classList.add("current");
      found?.setAttribute("aria-current", "true");
      current = found;
    }
  });
  const cleanup = () => {
    closed = true;
    stop();
    editor.stop();
    player.pause();
  };
  cleanup.unsaved = editor.unsaved;
  return cleanup;
}

// ---- search ----

export function searchView(main, config, params) {
  const q = h("input", { id: "q", type: "search", name: "q", required: true, value: params.get("q") || "", autocomplete: "off", maxlength: "1000" });
  const mode = h(
    "select",
    { id: "mode", name: "mode" },
    [
      ["hybrid", "Meaning and words"],
      ["vector", "Meaning only"],
      ["text", "Words only"],
    ].map(([v, label]) => h("option", { value: v, selected: params.get("mode") === v }, label)),
  );
  const player = h("audio", { id: "player", controls: true, preload: "none", "aria-label": "Audio of the chosen result" });
  const nowPlaying = h("p", { class: "meta", "aria-live": "polite" });
  const results = h("ol", { class: "results", "aria-label": "Results" });
  const more = h("button", { type: "button", class: "secondary", hidden: true }, "More results");
  let nextOffset = null;

  const play = async (hit) => {
    try {
      const url = await audioUrl(hit.job_id);
      if (player.dataset.jobId !== hit.job_id) {
        player.src = url;
        player.dataset.jobId = hit.job_id;
      }
      nowPlaying.textContent = `Playing ${hit.filename || hit.job_id} from ${clock(hit.start_s)}`;
      seekAndPlay(player, hit.start_s);
    } catch (err) {
      failure(err);
    }
  };

  const show = (page, append) => {
    if (!append) results.replaceChildren();
    if (!page.results.length && !append) results.append(h("li", { class: "empty" }, "Nothing found."));
    for (const hit of page.results) {
      results.append(
        h(
          "li",
          { class: "card hit", dataset: { jobId: hit.job_id, start: hit.start_s } },
          h(
            "div",
            { class: "row" },
            h("button", { type: "button", class: "play", dataset: { start: hit.start_s }, "aria-label": `Play ${hit.filename || ""} from ${clock(hit.start_s)}`, onclick: () => play(hit) }, `▶ ${clock(hit.start_s)}`),
            h("a", { href: `#/jobs/${hit.job_id}` }, hit.filename || hit.job_id),
            h("span", { class: "meta" }, `${clock(hit.start_s)}–${clock(hit.end_s)}`),
          ),
          hit.title ? h("h3", {}, hit.title) : "",
          h("p", { class: "text" }, highlighted(hit.highlight || hit.text)),
          hit.keywords.length ? h("ul", { class: "tags", "aria-label": "Keywords" }, hit.keywords.map((k) => h("li", {}, k))) : "",
        ),
      );
    }
    nextOffset = page.next_offset;
    more.hidden = nextOffset === null || nextOffset === undefined;
  };

  const run = async (offset = 0) => {
    const query = new URLSearchParams({ q: q.value.trim(), mode: mode.value, limit: "10", offset: String(offset) });
    try {
      show(await api(`/search?${query}`), offset > 0);
    } catch (err) {
      failure(err);
    }
  };
  more.addEventListener("click", () => run(nextOffset));

  clear(
    main,
    heading("Search what was said"),
    h(
      "form",
      {
        role: "search",
        class: "search-form",
        onsubmit: (e) => {
          e.preventDefault();
          history.replaceState(null, "", `#/search?${new URLSearchParams({ q: q.value.trim(), mode: mode.value })}`);
          run();
        },
      },
      h("div", { class: "field grow" }, h("label", { for: "q" }, "Search"), q),
      h("div", { class: "field" }, h("label", { for: "mode" }, "Mode"), mode),
      h("button", { type: "submit" }, "Search"),
    ),
    h("div", { class: "player-bar" }, player, nowPlaying),
    results,
    more,
  );
  if (q.value) run();
  q.focus();
  return () => player.pause();
}

// ---- admin ----

export function adminView(main, config) {
  const system = h("div");
  const users = h("tbody");
  const letters = h("ul", { class: "letters", "aria-label": "Dead letters" });
  const loadSystem = async () => {
    const s = await api("/admin/system");
    clear(
      system,
      h("dl", { class: "facts" }, Object.entries(s.jobs_by_state).map(([k, v]) => [h("dt", {}, `Jobs ${k}`), h("dd", {}, v)]), Object.entries(s.dead_letters).map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])),
    );
  };
  const loadUsers = async () => {
    const list = await api("/admin/users");
    clear(
      users,
      list.map((u) => {
        const role = h("select", { "aria-label": `Role of ${u.id}` }, ["user", "admin"].map((r) => h("option", { value: r, selected: u.role === r }, r)));
        const disabled = h("input", { type: "checkbox", checked: u.disabled, "aria-label": `${u.id} disabled` });
        const save = async (change) => {
          try {
            await api(`/admin/users/${encodeURIComponent(u.id)}`, { method: "PATCH", json: change });
            toast(`Saved ${u.id}`);
          } catch (err) {
            failure(err);
            loadUsers();
          }
        };
        role.addEventListener("change", () => save({ role: role.value }));
        disabled.addEventListener("change", () => save({ disabled: disabled.checked }));
        return h("tr", { dataset: { user: u.id } }, h("th", { scope: "row" }, u.name && u.name !== u.id ? `${u.name} (${u.id})` : u.id), h("td", {}, role), h("td", {}, disabled), h("td", {}, u.job_count), h("td", {}, when(u.last_seen_at)));
      }),
    );
  };
  const loadLetters = async () => {
    const list = await api("/admin/dead-letters?limit=50");
    clear(
      letters,
      list.length
        ? list.map((d) =>
            h(
              "li",
              { class: "card" },
              h("div", { class: "row" }, h("strong", {}, d.original_topic || d.topic), h("span", { class: "meta" }, when(d.time))),
              h("p", {}, d.error || "no reason recorded"),
              h("p", { class: "meta" }, `job ${d.job_id || "–"} · consumer ${d.consumer || "–"} · attempts ${d.attempts ?? "–"}`),
              h(
                "button",
                {
                  type: "button",
                  class: "secondary",
                  onclick: async () => {
                    try {
                      const r = await api(`/admin/dead-letters/${encodeURIComponent(d.id)}/replay`, { method: "POST" });
                      toast(`Replayed: ${r.action}`);
                    } catch (err) {
                      failure(err);
                    }
                  },
                },
                "Replay",
              ),
            ),
          )
        : h("li", { class: "empty" }, "No dead letters."),
    );
  };
  clear(
    main,
    heading("Administration"),
    h("section", { "aria-labelledby": "sys-title" }, h("h2", { id: "sys-title" }, "System"), system),
    h(
      "section",
      { "aria-labelledby": "users-title" },
      h("h2", { id: "users-title" }, "Users and roles"),
      h("div", { class: "table-wrap" }, h("table", {}, h("thead", {}, h("tr", {}, ["User", "Role", "Disabled", "Jobs", "Last seen"].map((c) => h("th", { scope: "col" }, c)))), users)),
    ),
    h("section", { "aria-labelledby": "dl-title" }, h("h2", { id: "dl-title" }, "Dead letters"), letters),
  );
  Promise.all([loadSystem(), loadUsers(), loadLetters()]).catch(failure);
  return jobsView(main, config, { all: true });
}
