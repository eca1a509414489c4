// Kefu console: the only script the pages load (no inline scripts: the Content-Security-Policy allows none).
// 1. The Mini App page: Telegram puts initData in the URL fragment (tgWebAppData); it is posted to the server, which
//    verifies Telegram's signature and starts a session.
// 2. The Models page: a running training job's progress, from server-sent events.
"use strict";

function miniappLogin(el) {
  var params = new URLSearchParams(window.location.hash.slice(1));
  var initData = params.get("tgWebAppData");
  var fail = function () { document.getElementById("miniapp-error").hidden = false; };
  if (!initData) { fail(); return; }
  var body = new URLSearchParams({ init_data: initData });
  fetch(el.dataset.login, { method: "POST", body: body, credentials: "same-origin" })
    .then(function (r) { return r.json(); })
    .then(function (answer) { if (answer.ok) { window.location.replace(answer.next); } else { fail(); } })
    .catch(fail);
}

function watchJob(el) {
  var bar = document.getElementById("job-bar");
  var source = new EventSource(el.dataset.events);
  source.onmessage = function (event) {
    var job = JSON.parse(event.data);
    el.textContent = job.text;
    bar.value = job.progress;
    if (job.status !== "running") {
      source.close();
      window.location.reload();  // the finished job: its version, the comparison, promote / discard
    }
  };
}

document.addEventListener("DOMContentLoaded", function () {
  var miniapp = document.getElementById("miniapp");
  if (miniapp) { miniappLogin(miniapp); }
  var job = document.querySelector("[data-events]");
  if (job) { watchJob(job); }
});
