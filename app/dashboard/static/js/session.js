// The API key: in sessionStorage (this tab only), sent only in the Authorization header, never in a URL or a log.
// Whoever shows the sign-in page registers itself with onSignedOut, so the request helper needs no view.

const KEY_STORE = "charrnn.apiKey";
let signedOutHandler = () => {};

export const apiKey = () => sessionStorage.getItem(KEY_STORE) || "";

export function signIn(key) {
  sessionStorage.setItem(KEY_STORE, key);
}

// Forgets the key and shows the sign-in page with `message`.
export function signOut(message) {
  sessionStorage.removeItem(KEY_STORE);
  signedOutHandler(message);
}

export function onSignedOut(handler) {
  signedOutHandler = handler;
}
