/* live.js - the live part of the page `detr-prof serve` sends (docs/prof-serve.md): polls
 * /api/data with the page's own query (?run=..&max_points=..) every 1.5 s and redraws with
 * window.detrReport.render(data) when the document changed. The server tags each document
 * (ETag, without its generation time), so an unchanged one costs a 304 and no redraw.
 * A badge in the corner says "live · updated Xs ago", or "disconnected" while the server is
 * unreachable; failed polls back off to 10 s and are not logged (no console spam). */
(function () {
  'use strict';
  var POLL_MS = 1500, MAX_BACKOFF_MS = 10000, FETCH_TIMEOUT_MS = 10000;
  var etag = window.detrLiveEtag || null;   /* the tag of the data inlined in the page */
  var lastChange = Date.now();               /* when the shown data last changed */
  var failures = 0, state = 'live', detail = '', timer = null, inFlight = false;
  var url = '/api/data' + window.location.search;

  var badge = document.createElement('div');
  badge.id = 'detr-live-badge';
  badge.setAttribute('role', 'status');
  badge.style.cssText = 'position:fixed;right:12px;bottom:12px;z-index:10000;padding:4px 10px;' +
    'border-radius:12px;font:12px/1.4 system-ui,sans-serif;color:#fff;background:#2e7d32;' +
    'box-shadow:0 1px 4px rgba(0,0,0,.3);pointer-events:none;opacity:.9';
  function mount() { if (!badge.parentNode && document.body) document.body.appendChild(badge); }

  function ago(ms) {
    var s = Math.max(0, Math.round(ms / 1000));
    if (s < 60) return s + 's';
    if (s < 3600) return Math.floor(s / 60) + 'm ' + (s % 60) + 's';
    return Math.floor(s / 3600) + 'h ' + Math.floor((s % 3600) / 60) + 'm';
  }

  function paint() {
    mount();
    var colors = { live: '#2e7d32', error: '#b26a00', disconnected: '#c62828', paused: '#616161' };
    badge.style.background = colors[state] || colors.live;
    var text;
    if (state === 'live') text = '\u25CF live \u00B7 updated ' + ago(Date.now() - lastChange) + ' ago';
    else if (state === 'paused') text = '\u25CF paused (tab hidden)';
    else if (state === 'error') text = '\u25CF server error \u00B7 retrying';
    else text = '\u25CF disconnected \u00B7 retrying';
    badge.textContent = text;
    badge.title = detail;
  }

  function schedule() {
    clearTimeout(timer);
    var delay = failures === 0 ? POLL_MS : Math.min(MAX_BACKOFF_MS, POLL_MS * Math.pow(2, failures - 1));
    timer = setTimeout(poll, delay);
  }

  function fail(newState, why) {
    failures++;
    state = newState;
    detail = why;
    paint();
  }

  function poll() {
    if (document.hidden) { state = 'paused'; paint(); return; } /* resumed by visibilitychange */
    if (inFlight) return;
    inFlight = true;
    var headers = etag ? { 'If-None-Match': etag } : {};
    var ctrl = typeof AbortController === 'function' ? new AbortController() : null;
    var guard = ctrl ? setTimeout(function () { ctrl.abort(); }, FETCH_TIMEOUT_MS) : null;
    fetch(url, { cache: 'no-store', headers: headers, signal: ctrl ? ctrl.signal : undefined })
      .then(function (res) {
        if (res.status === 304) return null;
        if (!res.ok) {
          return res.text().then(function (t) {
            var msg = t;
            try { msg = JSON.parse(t).error || t; } catch (e) { /* plain text */ }
            throw { server: true, message: 'HTTP ' + res.status + ': ' + msg };
          });
        }
        var tag = res.headers.get('ETag');
        return res.json().then(function (data) { return { data: data, tag: tag }; });
      })
      .then(function (got) {
        failures = 0;
        state = 'live';
        detail = 'polling ' + url + ' every ' + POLL_MS / 1000 + ' s';
        if (got && (!got.tag || got.tag !== etag)) {
          etag = got.tag;
          lastChange = Date.now();
          try {
            window.detrReport.render(got.data);
          } catch (e) {
            state = 'error';
            detail = 'render failed: ' + (e && e.message ? e.message : e);
          }
        }
        paint();
      })
      .catch(function (e) {
        if (e && e.server) fail('error', e.message);
        else fail('disconnected', 'cannot reach the server (' + (e && e.name ? e.name : 'network error') + ')');
      })
      .then(function () {
        inFlight = false;
        clearTimeout(guard);
        schedule();
      });
  }

  document.addEventListener('visibilitychange', function () {
    if (!document.hidden && state === 'paused') { state = 'live'; poll(); }
  });
  setInterval(paint, 1000); /* the "updated Xs ago" clock */
  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', paint);
  else paint();
  schedule();
  window.detrLive = { poll: poll, state: function () { return state; } };
})();
