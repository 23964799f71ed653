// Sign in: the key is tried on GET /corpora before the tab keeps it. Also the page every 401 lands on.

import { request } from "../api.js";
import { $, setText } from "../dom.js";
import { leaveView, route, showSection } from "../router.js";
import { onSignedOut, signIn, signOut } from "../session.js";

function showSignIn(message) {
  leaveView();
  $("nav").hidden = true;
  showSection("signin");
  document.title = "Sign in · charrnn";
  setText("signin-error", message || "");
  $("api-key").focus();
}

onSignedOut(showSignIn);

$("signin-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const candidate = $("api-key").value.trim();
  setText("signin-error", "");
  if (!candidate) {
    setText("signin-error", "Enter an API key.");
    $("api-key").setAttribute("aria-invalid", "true");
    return;
  }
  try {
    await request("/corpora?limit=1", { key: candidate });
  } catch (error) {
    $("api-key").setAttribute("aria-invalid", "true");
    setText("signin-error", error.status === 401 ? `That key was refused: ${error.message}.` : `Sign-in failed: ${error.message}`);
    return;
  }
  $("api-key").removeAttribute("aria-invalid");
  $("api-key").value = "";
  signIn(candidate);
  $("nav").hidden = false;
  if (!location.hash || location.hash === "#/" || location.hash === "#/signin") location.hash = "#/corpora";
  else route();
});

$("sign-out").addEventListener("click", () => signOut("Signed out."));
