// clood's pages call /v1, /api and /catfights with the staff session. Those answer a session only when the request
// repeats the CSRF cookie in an X-CSRFToken header, which another site's page cannot read (proxy/keys.py).

export function csrfHeaders() {
  const cookie = document.cookie.split("; ").find((part) => part.startsWith("csrftoken="));
  return cookie ? { "x-csrftoken": decodeURIComponent(cookie.slice("csrftoken=".length)) } : {};
}
