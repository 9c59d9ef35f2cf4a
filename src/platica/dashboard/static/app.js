/* Plática dashboard: local times, unread markers, charts and live-update niceties. No build step. */
(function () {
  "use strict";

  var SEEN_KEY = "platica.seen";
  var SINCE_KEY = "platica.since";
  var counts = {};

  // The page's words for what this script writes (web.py's js_words, in the page's language).
  var WORDS = (function () {
    try { return JSON.parse(document.body.getAttribute("data-words") || "{}") || {}; } catch (error) { return {}; }
  })();

  function word(key, fallback, number) {
    var text = WORDS[key] || fallback;
    return number === undefined ? text : text.replace("%(num)s", String(number));
  }

  function storage() {
    try { return window.localStorage; } catch (error) { return null; }
  }

  function seenMap() {
    var store = storage();
    if (!store) return {};
    try { return JSON.parse(store.getItem(SEEN_KEY) || "{}") || {}; } catch (error) { return {}; }
  }

  // Conversations with activity after this browser first opened the dashboard, and not opened
  // since, are marked "New". What was there before counts as read.
  function since() {
    var store = storage();
    if (!store) return null;
    var value = store.getItem(SINCE_KEY);
    if (!value) {
      value = new Date().toISOString();
      store.setItem(SINCE_KEY, value);
    }
    return value;
  }

  function localTimes(root) {
    root.querySelectorAll("time[datetime]:not([data-countdown])").forEach(function (element) {
      var moment = new Date(element.getAttribute("datetime"));
      if (isNaN(moment.getTime())) return;
      if (!element.title) element.title = element.textContent.trim();
      element.textContent = moment.toLocaleString(document.documentElement.lang || undefined, { dateStyle: "medium", timeStyle: "short" });
    });
  }

  function markUnread(root) {
    var seen = seenMap();
    var start = since();
    root.querySelectorAll("[data-conversation][data-last]").forEach(function (row) {
      var before = seen[row.getAttribute("data-conversation")] || start;
      var unread = before !== null && Date.parse(row.getAttribute("data-last")) > Date.parse(before);
      row.classList.toggle("unread", unread);
      var marker = row.querySelector(".marker.unread");
      if (marker) marker.hidden = !unread;
    });
  }

  function rememberSeen(root) {
    var thread = root.querySelector("[data-seen-key]");
    var store = storage();
    if (!thread || !store) return;
    var seen = seenMap();
    seen[thread.getAttribute("data-seen-key")] = thread.getAttribute("data-last");
    var keys = Object.keys(seen);
    if (keys.length > 500) {
      keys.sort(function (a, b) { return Date.parse(seen[a]) - Date.parse(seen[b]); });
      keys.slice(0, keys.length - 500).forEach(function (key) { delete seen[key]; });
    }
    store.setItem(SEEN_KEY, JSON.stringify(seen));
  }

  function announce(text) {
    var region = document.getElementById("announcer");
    if (region) region.textContent = text;
  }

  function followThreads(root) {
    root.querySelectorAll(".thread, .phone-thread").forEach(function (log) {
      log.scrollTop = log.scrollHeight;
      var holder = log.closest("[id]");
      var id = holder ? holder.id : "thread";
      var count = parseInt(log.getAttribute("data-count") || "0", 10);
      if (counts[id] !== undefined && count > counts[id]) {
        var added = count - counts[id];
        announce(added === 1 ? word("new_one", "%(num)s new message", 1) : word("new_many", "%(num)s new messages", added));
      }
      counts[id] = count;
    });
  }

  function shortDay(label) {
    return label.slice(5); // 2026-11-22 -> 11-22
  }

  var CHARTS = {
    messages: function (data) {
      return {
        type: "bar",
        data: {
          labels: data.labels.map(shortDay),
          datasets: [
            { label: word("incoming", "Incoming"), data: data.incoming, backgroundColor: "#2563eb", stack: "messages" },
            { label: word("outgoing", "Outgoing"), data: data.outgoing, backgroundColor: "#0a6e5c", stack: "messages" }
          ]
        },
        stacked: true
      };
    },
    replies: function (data) {
      return {
        type: "bar",
        data: {
          labels: data.labels.map(shortDay),
          datasets: [
            { label: word("ai_replies", "AI replies"), data: data.replies, backgroundColor: "#0a6e5c" },
            { label: word("conversations", "Conversations"), data: data.conversations, type: "line", borderColor: "#7c3aed", backgroundColor: "#7c3aed", pointRadius: 2 }
          ]
        }
      };
    },
    response: function (data) {
      return {
        type: "line",
        data: {
          labels: data.labels.map(shortDay),
          datasets: [
            { label: word("seconds", "Seconds"), data: data.response_seconds, borderColor: "#b45309", backgroundColor: "#b45309", spanGaps: true, pointRadius: 3 }
          ]
        },
        decimals: true
      };
    }
  };

  function drawCharts(root) {
    if (!window.Chart) return;
    root.querySelectorAll("canvas[data-chart]").forEach(function (canvas) {
      if (canvas.getAttribute("data-drawn")) return;
      var source = document.getElementById(canvas.getAttribute("data-source"));
      var build = CHARTS[canvas.getAttribute("data-chart")];
      if (!source || !build) return;
      var spec = build(JSON.parse(source.textContent));
      new window.Chart(canvas, {
        type: spec.type,
        data: spec.data,
        options: {
          animation: false,
          responsive: true,
          maintainAspectRatio: false,
          plugins: { legend: { position: "bottom", labels: { color: "#1a202c" } } },
          scales: {
            x: { stacked: !!spec.stacked, ticks: { color: "#4a5568", maxTicksLimit: 8, maxRotation: 0 } },
            y: { stacked: !!spec.stacked, beginAtZero: true, ticks: { color: "#4a5568", precision: spec.decimals ? undefined : 0 } }
          }
        }
      });
      canvas.setAttribute("data-drawn", "true");
    });
  }

  function confirmForms(root) {
    root.querySelectorAll("form[data-confirm]").forEach(function (form) {
      if (form.getAttribute("data-confirm-bound")) return;
      form.setAttribute("data-confirm-bound", "true");
      form.addEventListener("submit", function (event) {
        if (!window.confirm(form.getAttribute("data-confirm"))) event.preventDefault();
      });
    });
  }

  // WhatsApp's 24-hour window, in the words of display.time_left and display.time_ago.
  function timeLeft(ms) {
    var minutes = Math.max(Math.floor(ms / 60000), 0);
    var hours = Math.floor(minutes / 60);
    minutes = minutes % 60;
    if (!hours) return minutes ? minutes + " min" : word("under_1_min", "under 1 min");
    return minutes ? hours + " h " + minutes + " min" : hours + " h";
  }

  function timeAgo(ms) {
    var minutes = Math.max(Math.floor(ms / 60000), 0);
    if (minutes < 60) return minutes + " min";
    if (minutes < 48 * 60) return Math.floor(minutes / 60) + " h";
    var days = Math.floor(minutes / (24 * 60));
    return days === 1 ? word("day_one", "%(num)s day", days) : word("day_many", "%(num)s days", days);
  }

  function countDown() {
    document.querySelectorAll("[data-window-closes]").forEach(function (line) {
      var closes = Date.parse(line.getAttribute("data-window-closes"));
      var time = line.querySelector("time[data-countdown]");
      if (isNaN(closes) || !time) return;
      var left = closes - Date.now();
      if (left > 0) {
        time.textContent = timeLeft(left);
        return;
      }
      // Closed while the page was open: a reply by hand would be refused (409) now.
      if (line.classList.contains("window-open")) {
        line.classList.remove("window-open");
        line.classList.add("window-closed");
        line.textContent = "";
        var sentence = (line.getAttribute("data-closed-text") || "Reply window closed %(ago)s ago: only an approved template can be sent (reload the page to pick one)").split("%(ago)s");
        line.append(sentence[0], time, sentence[1] || "");
      }
      time.textContent = timeAgo(-left);
    });
  }

  // The template picker: the chosen template's fields only (the others are disabled, so not
  // posted), and its text filled with the values as they are typed.
  function showTemplate(select) {
    var form = select.form;
    if (!form) return;
    form.querySelectorAll("fieldset[data-template]").forEach(function (fieldset) {
      var chosen = fieldset.getAttribute("data-template") === select.value;
      fieldset.hidden = !chosen;
      fieldset.disabled = !chosen;
    });
  }

  function fillPreview(fieldset) {
    var preview = fieldset.querySelector("[data-template-body]");
    if (!preview) return;
    preview.textContent = preview.getAttribute("data-template-body").replace(
      /\{\{\s*([A-Za-z0-9_]+)\s*\}\}/g,
      function (match, name) {
        var input = fieldset.querySelector('input[data-variable="' + name + '"]');
        return input && input.value.trim() ? input.value : match;
      }
    );
  }

  function templatePickers(root) {
    root.querySelectorAll("select[data-template-select]").forEach(function (select) {
      if (select.getAttribute("data-bound")) return;
      select.setAttribute("data-bound", "true");
      select.addEventListener("change", function () { showTemplate(select); });
      showTemplate(select);
    });
    root.querySelectorAll("fieldset[data-template]").forEach(function (fieldset) {
      if (fieldset.getAttribute("data-bound")) return;
      fieldset.setAttribute("data-bound", "true");
      fieldset.addEventListener("input", function () { fillPreview(fieldset); });
      fillPreview(fieldset);
    });
  }

  function enhance(root) {
    localTimes(root);
    markUnread(root);
    rememberSeen(root);
    followThreads(root);
    drawCharts(root);
    confirmForms(root);
    templatePickers(root);
    countDown();
  }

  window.setInterval(countDown, 60000);

  if (window.htmx) {
    window.htmx.onLoad(enhance);
  } else {
    document.addEventListener("DOMContentLoaded", function () { enhance(document.body); });
  }
})();
