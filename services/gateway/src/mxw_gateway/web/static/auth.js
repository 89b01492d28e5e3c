// Sign-in: OIDC authorization code + PKCE against the configured provider, or the local
// dev issuer's simple sign-in. The access token lives in sessionStorage (this tab only).

const SESSION_KEY = "mxw.session";
const PKCE_KEY = "mxw.pkce";

function decodeClaims(token) {
  try {
    const payload = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(payload.padEnd(payload.length + ((4 - (payload.length % 4)) % 4), "=")));
  } catch {
    return {};
  }
}

export function session() {
  const raw = sessionStorage.getItem(SESSION_KEY);
  if (!raw) return null;
  const value = JSON.parse(raw);
  if (value.expires_at && Date.now() > value.expires_at - 30_000) {
    sessionStorage.removeItem(SESSION_KEY);
    return null;
  }
  return value;
}

export function saveSession(token, expiresIn) {
  const claims = decodeClaims(token);
  const expiresAt = claims.exp ? claims.exp * 1000 : Date.now() + (expiresIn || 3600) * 1000;
  const value = {
    token,
    sub: claims.sub,
    name: claims.name || claims.preferred_username || claims.email || claims.sub,
    expires_at: expiresAt,
    admin: null, // learnt from the API (a role can come from the users table too)
  };
  sessionStorage.setItem(SESSION_KEY, JSON.stringify(value));
  return value;
}

export function updateSession(changes) {
  const value = session();
  if (value) sessionStorage.setItem(SESSION_KEY, JSON.stringify({ ...value, ...changes }));
}

export function signOut() {
  sessionStorage.removeItem(SESSION_KEY);
}

export async function devSignIn(user, admin) {
  const response = await fetch("/app/dev-sign-in", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ user, admin }),
  });
  if (!response.ok) {
    const problem = await response.json().catch(() => ({}));
    const detail = Array.isArray(problem.errors) ? problem.errors.map((e) => e.msg).join("; ") : "";
    throw new Error(detail || problem.detail || problem.title || `sign-in failed (${response.status})`);
  }
  const body = await response.json();
  return saveSession(body.access_token, body.expires_in);
}

function base64url(bytes) {
  let text = "";
  for (const b of new Uint8Array(bytes)) text += String.fromCharCode(b);
  return btoa(text).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

function randomString(size) {
  return base64url(crypto.getRandomValues(new Uint8Array(size)));
}

async function discover(issuer) {
  const response = await fetch(`${issuer}/.well-known/openid-configuration`);
  if (!response.ok) throw new Error(`OIDC discovery failed (${response.status})`);
  return response.json();
}

export function redirectUri() {
  return `${location.origin}/app/`;
}

/** Step 1: send the browser to the provider with a PKCE challenge (S256). */
export async function startOidc(oidc) {
  const meta = await discover(oidc.issuer);
  const verifier = randomString(32);
  const challenge = base64url(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(verifier)));
  const state = randomString(16);
  const nonce = randomString(16);
  sessionStorage.setItem(PKCE_KEY, JSON.stringify({ verifier, state, nonce, back: location.hash }));
  const params = new URLSearchParams({
    response_type: "code",
    client_id: oidc.client_id,
    redirect_uri: redirectUri(),
    scope: oidc.scopes,
    code_challenge: challenge,
    code_challenge_method: "S256",
    state,
    nonce,
  });
  location.assign(`${meta.authorization_endpoint}?${params}`);
}

/** Step 2, on return: exchange the code (with the verifier) for tokens. Returns true when
 * this page load was a return from the provider. */
export async function finishOidc(oidc) {
  const params = new URLSearchParams(location.search);
  if (!params.has("code") && !params.has("error")) return false;
  const pending = JSON.parse(sessionStorage.getItem(PKCE_KEY) || "null");
  sessionStorage.removeItem(PKCE_KEY);
  history.replaceState(null, "", `${location.pathname}${(pending && pending.back) || "#/jobs"}`);
  if (params.has("error")) throw new Error(params.get("error_description") || params.get("error"));
  if (!oidc || !pending || params.get("state") !== pending.state) {
    throw new Error("sign-in answer does not match this browser's request; try again");
  }
  const meta = await discover(oidc.issuer);
  const response = await fetch(meta.token_endpoint, {
    method: "POST",
    headers: { "Content-Type": "application/x-www-form-urlencoded" },
    body: new URLSearchParams({
      grant_type: "authorization_code",
      code: params.get("code"),
      redirect_uri: redirectUri(),
      client_id: oidc.client_id,
      code_verifier: pending.verifier,
    }),
  });
  const body = await response.json().catch(() => ({}));
  if (!response.ok || !body.access_token) {
    throw new Error(body.error_description || body.error || `token exchange failed (${response.status})`);
  }
  saveSession(body.access_token, body.expires_in);
  return true;
}
