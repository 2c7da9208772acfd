// shipgate dashboard: follows the event stream and redraws the page's <main> in place, so a
// promotion's progress shows without a reload. Without this script every page still works.
(() => {
  "use strict";
  const main = document.querySelector("main[data-live]");
  const badge = document.getElementById("live");
  if (!main || !window.EventSource || !window.fetch) return;
  let timer = null;
  let busy = false;
  // An event that arrives while a refresh is in flight asks for one more after it: the page
  // must end on the last state, not on the one before it.
  let again = false;

  const typing = () => {
    const el = document.activeElement;
    return el && main.contains(el) && (el.tagName === "INPUT" || el.tagName === "TEXTAREA") && el.value !== "";
  };

  const refresh = async () => {
    if (busy) { again = true; return; }
    if (typing()) { timer = setTimeout(refresh, 1000); return; }
    busy = true;
    try {
      const r = await fetch(location.href, { credentials: "same-origin", headers: { "Accept": "text/html" } });
      if (!r.ok || r.redirected) return;
      const doc = new DOMParser().parseFromString(await r.text(), "text/html");
      const fresh = doc.querySelector("main[data-live]");
      if (fresh) {
        const open = [...main.querySelectorAll("details[open] summary")].map((s) => s.textContent);
        // What answered the viewer's last form (a refusal drawn in place) is not in a fresh
        // copy of the page: it stays until they leave it.
        const kept = [...main.querySelectorAll("[data-keep][id]")].map((e) => [e.id, e.innerHTML]);
        main.innerHTML = fresh.innerHTML;
        kept.forEach(([id, html]) => {
          const e = document.getElementById(id);
          if (e && !e.innerHTML.trim()) e.innerHTML = html;
        });
        main.querySelectorAll("details summary").forEach((s) => {
          if (open.includes(s.textContent)) s.parentElement.open = true;
        });
        document.body.dataset.refreshed = String(Date.now());
      }
    } finally {
      busy = false;
      if (again) { again = false; timer = setTimeout(refresh, 150); }
    }
  };

  // A canary's figures move between events: while a panel of them is shown, the page is also
  // redrawn every few seconds, unless the viewer is in one of its fields.
  setInterval(() => {
    const el = document.activeElement;
    const editing = el && main.contains(el) && ["INPUT", "TEXTAREA", "SELECT"].includes(el.tagName);
    if (!document.hidden && !editing && main.querySelector("[data-live-figures]")) refresh();
  }, 5000);

  const events = new EventSource("/ui/events");
  // After a reconnect, what happened while the stream was down is not sent again: refresh once.
  let opened = false;
  events.onopen = () => {
    if (badge) { badge.textContent = "● live"; badge.classList.add("on"); }
    if (opened) { clearTimeout(timer); timer = setTimeout(refresh, 150); }
    opened = true;
  };
  events.onerror = () => { if (badge) { badge.textContent = "○ reconnecting"; badge.classList.remove("on"); } };
  events.onmessage = () => {
    clearTimeout(timer);
    timer = setTimeout(refresh, 150);
  };
})();
