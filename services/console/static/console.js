// Mailroom console: small progressive enhancements (everything also works without script).
(function () {
  "use strict";

  function ready(fn) {
    if (document.readyState !== "loading") fn(); else document.addEventListener("DOMContentLoaded", fn);
  }

  // Sign-in link printed by `mailroom up`: /console/signin#token=… fills the field (the token
  // stays out of server logs: a fragment is never sent) and removes itself from the address bar.
  function tokenFromLink() {
    var form = document.getElementById("token-form");
    if (!form || location.hash.indexOf("#token=") !== 0) return;
    var input = document.getElementById("token");
    input.value = decodeURIComponent(location.hash.slice(7));
    history.replaceState(null, "", location.pathname + location.search);
    var note = document.getElementById("token-filled");
    if (note) note.hidden = false;
    var button = form.querySelector("button[type=submit]");
    if (button) button.focus();
  }

  function csrf() {
    var field = document.querySelector("input[name=csrf_token]");
    return field ? field.value : "";
  }

  function alertText(html) {
    var doc = new DOMParser().parseFromString(html, "text/html");
    var alert = doc.querySelector(".alert");
    return alert ? alert.textContent.trim() : "The import failed.";
  }

  // Bulk import with a progress bar: the NDJSON progress lines, relayed by the console.
  function importProgress() {
    var form = document.getElementById("import-form");
    if (!form || !window.fetch || !window.TextDecoder) return;
    form.addEventListener("submit", function (ev) {
      var button = ev.submitter;
      if (!button || button.value !== "run") return;
      ev.preventDefault();
      var data = new FormData(form);
      var box = document.getElementById("import-progress");
      var bar = document.getElementById("import-bar");
      var text = document.getElementById("import-progress-text");
      var result = document.getElementById("import-result");
      box.hidden = false; bar.value = 0; bar.max = 1; text.textContent = "Uploading…";
      result.innerHTML = "";
      button.disabled = true;
      function show(line) {
        var doc; try { doc = JSON.parse(line); } catch (e) { return; }
        if (doc.progress) {
          var p = doc.progress;
          bar.max = Math.max(p.total, 1); bar.value = p.done;
          text.textContent = p.phase + ": " + p.done + " of " + p.total + " rows";
        } else if (doc.html) {
          result.innerHTML = doc.html; bar.value = bar.max; text.textContent = "Done.";
          if (window.htmx) window.htmx.process(result);
          var heading = result.querySelector("h2"); if (heading) { heading.tabIndex = -1; heading.focus(); }
        } else if (doc.error) {
          text.textContent = "Failed: " + doc.error.message;
        }
      }
      fetch("/console/import/run", {
        method: "POST", body: data, credentials: "same-origin",
        headers: { "Accept": "application/x-ndjson", "X-CSRF-Token": csrf() }
      }).then(function (resp) {
        if (!resp.ok || !resp.body) {
          return resp.text().then(function (html) { text.textContent = "Failed: " + alertText(html); });
        }
        var reader = resp.body.getReader(), decoder = new TextDecoder(), buffer = "";
        function pump() {
          return reader.read().then(function (chunk) {
            if (chunk.done) { if (buffer.trim()) show(buffer); return; }
            buffer += decoder.decode(chunk.value, { stream: true });
            var lines = buffer.split("\n"); buffer = lines.pop();
            lines.forEach(show);
            return pump();
          });
        }
        return pump();
      }).catch(function () {
        text.textContent = "Failed: the console did not answer.";
      }).then(function () { button.disabled = false; });
    });
  }

  window.addEventListener("hashchange", tokenFromLink);
  ready(function () {
    tokenFromLink();
    importProgress();
  });
})();
