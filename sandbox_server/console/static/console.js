// The live page: tables pushed by the server as server-sent events (GET /live/stream), swapped in as they come.
// Fragments are rendered (and escaped) by the server; htmx is told about new ones so their buttons work.
(function () {
  "use strict";

  function start() {
    const section = document.querySelector("[data-live-stream]");
    if (!section || !window.EventSource) {
      return;
    }
    const status = document.getElementById("live-status");
    const source = new EventSource(section.getAttribute("data-live-stream"));

    function show(state, text) {
      if (status) {
        status.setAttribute("data-state", state);
        status.textContent = text;
      }
    }

    function activate(element) {
      if (window.htmx && element) {
        window.htmx.process(element);
      }
    }

    function replace(id, html) {
      const target = document.getElementById(id);
      if (target) {
        target.innerHTML = html;
        activate(target);
      }
    }

    source.addEventListener("open", function () { show("live", "live"); });
    source.addEventListener("error", function () {
      if (source.readyState === EventSource.CLOSED) {
        // Refused for good (no longer signed in: the answer was the sign-in page, not a stream).
        window.location.assign("/signin?why=expired");
        return;
      }
      show("reconnecting", "reconnecting");
    });
    source.addEventListener("executions", function (e) { replace("running-executions", e.data); });
    source.addEventListener("sessions", function (e) { replace("live-sessions", e.data); });
    source.addEventListener("problem", function (e) { replace("live-problem", e.data); });
    source.addEventListener("ended", function (e) {
      const ended = document.getElementById("ended-executions");
      if (ended) {
        ended.insertAdjacentHTML("afterbegin", e.data);
        while (ended.rows.length > 50) {
          ended.deleteRow(-1);
        }
      }
    });
    source.addEventListener("signin", function () {
      source.close();
      window.location.assign("/signin?why=expired");
    });
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
