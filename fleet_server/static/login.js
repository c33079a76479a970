// A sign-in link (`/dashboard/login#token=eo_...`, printed by `edgeops demo`) fills the form and
// submits it. The token travels in the URL fragment, which browsers never send to a server, and is
// removed from the address bar before the form is posted.
const form = document.getElementById('login-form');
const input = document.getElementById('token');
const match = /^#token=(.+)$/.exec(window.location.hash);
if (match) {
  input.value = decodeURIComponent(match[1]);
  window.history.replaceState(null, '', window.location.pathname);
  form.requestSubmit();
} else {
  input.focus();
}
