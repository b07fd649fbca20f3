// dloop governance dashboard: live updates over Server-Sent Events, the trigger button and the API token.
// Without JavaScript the page is static and refreshes itself every 10 s (a <noscript> meta refresh).
(function () {
  "use strict";
  var TOKEN_KEY = "dloop-api-token";
  var MIN_GAP_MS = 300;
  var PERIODIC_MS = 5000;
  var tokenRequired = document.body.getAttribute("data-token-required") === "true";
  var live = document.getElementById("live");
  var notice = document.getElementById("notice");
  var tokenBox = document.getElementById("token-box");
  var tokenInput = document.getElementById("token-input");
  var triggerButton = document.getElementById("trigger");
  var busy = false;
  var again = false;
  var lastRefresh = 0;

  function say(text, kind) {
    notice.textContent = text;
    notice.className = "notice " + (kind || "");
  }

  function setLive(state) {
    live.textContent = state === "live" ? "live" : state === "down" ? "reconnecting…" : state;
    live.className = "pill " + (state === "live" ? "pill-live" : state === "down" ? "pill-down" : "pill-static");
  }

  function sleep(ms) {
    return new Promise(function (resolve) { setTimeout(resolve, ms); });
  }

  // Fetch the server-rendered sections and swap the ones that changed, keeping open <details> open.
  async function refresh() {
    if (busy) { again = true; return; }
    busy = true;
    try {
      do {
        again = false;
        var wait = lastRefresh + MIN_GAP_MS - Date.now();
        if (wait > 0) { await sleep(wait); }
        lastRefresh = Date.now();
        var response = await fetch("/dashboard/sections", { cache: "no-store", headers: { Accept: "text/html" } });
        if (!response.ok) { throw new Error("HTTP " + response.status); }
        swap(await response.text());
      } while (again);
    } catch (error) {
      setLive("down");
    } finally {
      busy = false;
    }
  }

  function swap(html) {
    var fresh = new DOMParser().parseFromString(html, "text/html");
    var open = {};
    document.querySelectorAll("details[open][id]").forEach(function (d) { open[d.id] = true; });
    fresh.querySelectorAll("section[data-section]").forEach(function (section) {
      var current = document.querySelector('section[data-section="' + section.getAttribute("data-section") + '"]');
      if (!current) { return; }
      section.querySelectorAll("details[id]").forEach(function (d) { if (open[d.id]) { d.open = true; } });
      if (current.outerHTML !== section.outerHTML) {
        current.replaceWith(document.importNode(section, true));
      }
    });
    document.title = fresh.title || document.title;
  }

  function askToken(message) {
    tokenBox.hidden = false;
    if (message) { say(message, "error"); }
    tokenInput.focus();
  }

  // What to do once a token is entered: the action that asked for it (the trigger by default).
  var pending = function () { trigger(); };

  // POST to one of the service's operator endpoints with the token when it needs one. Resolves to
  // {status, body}, or null when a token must be asked for first (the action runs again once it is given).
  async function post(path, button, again) {
    var headers = { Accept: "application/json" };
    if (tokenRequired) {
      var token = sessionStorage.getItem(TOKEN_KEY);
      if (!token) {
        pending = again;
        askToken("This service needs its API token for that.");
        return null;
      }
      headers.Authorization = "Bearer " + token;
    }
    if (button) { button.disabled = true; }
    try {
      var response = await fetch(path, { method: "POST", headers: headers });
      var body = {};
      try { body = await response.json(); } catch (ignored) { body = {}; }
      if (response.status === 401) {
        sessionStorage.removeItem(TOKEN_KEY);
        pending = again;
        askToken("The token was refused: " + (body.reason || "401"));
        return null;
      }
      return { status: response.status, body: body };
    } catch (error) {
      say("The service did not answer: " + error, "error");
      return null;
    } finally {
      if (button) { button.disabled = false; }
    }
  }

  async function trigger() {
    var answer = await post("/trigger-voting", triggerButton, function () { trigger(); });
    if (!answer) { return; }
    if (answer.status === 202) {
      say("Voting round #" + answer.body.roundId + (answer.body.joined ? " is running (joined it)" : " started"), "ok");
      refresh();
    } else {
      say("The trigger was refused (" + answer.status + "): " + (answer.body.reason || ""), "error");
    }
  }

  // Pause / Resume buttons (service and nodes): data-control holds the endpoint's path.
  async function control(path) {
    var button = document.querySelector('button[data-control="' + path + '"]');
    var answer = await post(path, button, function () { control(path); });
    if (!answer) { return; }
    if (answer.status >= 200 && answer.status < 300) {  // the pause endpoints answer 201
      say(answer.body.message || "done", "ok");
      refresh();
    } else {
      say("Refused (" + answer.status + "): " + (answer.body.reason || ""), "error");
    }
  }

  document.getElementById("trigger-form").addEventListener("submit", function (event) {
    event.preventDefault();
    trigger();
  });

  document.getElementById("token-form").addEventListener("submit", function (event) {
    event.preventDefault();
    var token = tokenInput.value.trim();
    if (!token) { return; }
    sessionStorage.setItem(TOKEN_KEY, token);
    tokenInput.value = "";
    tokenBox.hidden = true;
    var action = pending;
    pending = function () { trigger(); };
    action();
  });

  document.addEventListener("click", function (event) {
    var button = event.target.closest ? event.target.closest("button[data-control]") : null;
    if (!button) { return; }
    control(button.getAttribute("data-control"));
  });

  document.addEventListener("click", function (event) {
    var button = event.target.closest ? event.target.closest("button.copy") : null;
    if (!button) { return; }
    var text = button.getAttribute("data-copy");
    if (navigator.clipboard && navigator.clipboard.writeText) {
      navigator.clipboard.writeText(text).then(
        function () { say("Copied " + text, "ok"); },
        function () { say(text, "ok"); }
      );
    } else {
      say(text, "ok");
    }
  });

  if (window.EventSource) {
    var source = new EventSource("/events");
    source.addEventListener("hello", function () { setLive("live"); });
    source.onopen = function () { setLive("live"); };
    source.onerror = function () { setLive("down"); };
    ["proposal", "votes", "round", "listener", "alert", "controls"].forEach(function (kind) {
      source.addEventListener(kind, function () { setLive("live"); refresh(); });
    });
    window.addEventListener("pagehide", function () { source.close(); });
  }
  setLive("connecting…");
  setInterval(refresh, PERIODIC_MS);  // ages, head block and time left move without events
})();
