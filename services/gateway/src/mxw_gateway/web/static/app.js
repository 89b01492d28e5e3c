// Entry: load the page's configuration, finish an OIDC return, then route on the URL hash.
import { api } from "./api.js";
import { finishOidc, session, signOut, updateSession } from "./auth.js";
import { h, toast } from "./dom.js";
import { adminView, jobView, jobsView, searchView, signInView, uploadView, vocabularyView } from "./views.js";

const main = document.getElementById("main");
let config = null;
let cleanup = () => {};
// The hash the current view was rendered for: where to stay when leaving it is cancelled.
let shownHash = location.hash;

async function isAdmin() {
  const s = session();
  if (!s) return false;
  if (s.admin === null || s.admin === undefined) {
    // The role may come from the token or from the users table: ask the API once.
    const admin = await api("/admin/system", { raw: true }).then(
      () => true,
      () => false,
    );
    updateSession({ admin });
    return admin;
  }
  return s.admin;
}

async function renderNav(route) {
  const nav = document.getElementById("nav");
  const s = session();
  nav.hidden = !s;
  if (!s) return;
  document.getElementById("who").textContent = s.name || s.sub;
  document.getElementById("nav-admin").hidden = !(await isAdmin());
  for (const a of nav.querySelectorAll("a[data-route]")) {
    if (a.dataset.route === route) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
}

/** A view with unsaved work (its clean-up function's `unsaved()` says so) asks first. */
function mayLeave() {
  if (location.hash === shownHash || !cleanup.unsaved?.()) return true;
  if (confirm("This transcript has unsaved edits. Leave the page and lose them?")) return true;
  // Stay: put the address back without another hashchange.
  history.replaceState(null, "", shownHash || location.pathname);
  return false;
}

async function route() {
  shownHash = location.hash;
  cleanup();
  cleanup = () => {};
  const hash = location.hash.replace(/^#\/?/, "");
  const [path, query = ""] = hash.split("?");
  const parts = path.split("/").filter(Boolean);
  const params = new URLSearchParams(query);
  if (!session()) {
    await renderNav("sign-in");
    cleanup = signInView(main, config);
    document.title = "Sign in · MxWhisper";
    return;
  }
  const name = parts[0] || "jobs";
  await renderNav(name);
  if (name === "upload") cleanup = uploadView(main, config);
  else if (name === "jobs" && parts[1]) cleanup = jobView(main, config, parts[1]);
  else if (name === "vocabulary") cleanup = vocabularyView(main, config);
  else if (name === "search") cleanup = searchView(main, config, params);
  else if (name === "admin") cleanup = adminView(main, config);
  else if (name === "sign-in") {
    location.hash = "#/jobs";
    return;
  } else cleanup = jobsView(main, config);
  const title = main.querySelector("h1")?.textContent || "MxWhisper";
  document.title = `${title} · MxWhisper`;
  // Move focus to the new content so keyboard and screen-reader users land on it.
  if (document.activeElement === document.body || document.activeElement?.closest("nav")) main.focus();
}

async function start() {
  config = await fetch("/app/config.json").then((r) => r.json());
  try {
    await finishOidc(config.oidc);
  } catch (err) {
    toast(err.message, "error");
  }
  document.getElementById("sign-out").addEventListener("click", () => {
    if (cleanup.unsaved?.() && !confirm("This transcript has unsaved edits. Sign out and lose them?")) return;
    signOut();
    location.hash = "#/sign-in";
    route();
  });
  window.addEventListener("hashchange", () => {
    if (mayLeave()) route();
  });
  await route();
  document.body.dataset.ready = "true";
}

start().catch((err) => {
  main.replaceChildren(h("p", { class: "note error" }, `The page could not start: ${err.message}`));
});
