//! `/mqtt.html`: an MQTT client in a web page, over this site's own `wss://…/mqtt` WebSocket
//! (subprotocol `mqtt`, [`super::ws`]), on the same broker as MQTT over TCP, TLS and QUIC.
//!
//! The page connects, subscribes, and lists every message as it arrives; a form publishes.
//! Query parameters make it scriptable (the interop test drives it this way):
//! `topic` (the filter to subscribe, default `quiclab/#`), `publish` (a payload to publish once
//! subscribed), `pubtopic` (where to publish it, default `quiclab/browser`), `username`,
//! `password`.
//!
//! The client is written here, in about 150 lines of the page's script, rather than served from a
//! JavaScript MQTT library: nothing from outside the Rust registries goes into this repository,
//! and the page needs only MQTT 3.1.1's CONNECT, SUBSCRIBE, PUBLISH (QoS 0 out; QoS 0, 1 and 2
//! in), PINGREQ and DISCONNECT. It reassembles packets across WebSocket messages, as MQTT over
//! WebSocket allows (MQTT 3.1.1 §6.0). The page keeps at most 500 messages on screen.

use http::header::{self, HeaderValue};
use http::Response;

use super::body::full;
use super::Body;

/// The page (no-cache: stored, revalidated on every use).
pub(super) fn page() -> Response<Body> {
    let mut resp = Response::new(full(PAGE));
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

const PAGE: &str = r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>MQTT over WebSocket</title>
<style>body{font-family:sans-serif;max-width:56em;margin:2em auto;line-height:1.4}code{background:#eee;padding:0 .2em}#messages{font-family:monospace;white-space:pre-wrap}input{font-family:monospace}</style>
</head>
<body>
<h1>MQTT over WebSocket</h1>
<p>This page speaks MQTT 3.1.1 over <code id="url"></code> (subprotocol <code>mqtt</code>) to the
same broker as MQTT over TCP, TLS and QUIC. Status: <strong id="status">starting</strong></p>
<form id="sub"><label>subscribe <input id="topic" size="30"></label> <button>subscribe</button></form>
<form id="pub"><label>publish to <input id="pubtopic" size="24"></label>
<label>payload <input id="payload" size="24"></label> <label><input type="checkbox" id="retain"> retain</label>
<button>publish</button></form>
<h2>Messages (<span id="count">0</span>)</h2>
<ol id="messages"></ol>
<p><a href="/">index</a></p>
<script>
(function () {
  'use strict';
  var params = new URLSearchParams(location.search);
  var enc = new TextEncoder();
  var dec = new TextDecoder('utf-8');
  var ws = null, buf = new Uint8Array(0), nextId = 1, pinger = null, count = 0;
  var MAX_SHOWN = 500;
  function $(id) { return document.getElementById(id); }
  function status(s) { $('status').textContent = s; }

  // ---- encoding (MQTT 3.1.1 §1.5, §2.2) ----
  function str(s) { var b = enc.encode(s); return concat([[b.length >> 8, b.length & 255], b]); }
  function u16(n) { return new Uint8Array([n >> 8, n & 255]); }
  function concat(parts) {
    var len = 0, i, off = 0;
    for (i = 0; i < parts.length; i++) len += parts[i].length;
    var out = new Uint8Array(len);
    for (i = 0; i < parts.length; i++) { out.set(parts[i], off); off += parts[i].length; }
    return out;
  }
  function packet(first, body) {
    var len = [], n = body.length;
    do { var d = n % 128; n = Math.floor(n / 128); len.push(n > 0 ? d | 128 : d); } while (n > 0);
    return concat([[first], len, body]);
  }
  function send(p) { if (ws && ws.readyState === 1) ws.send(p); }

  function connect() {
    var url = (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/mqtt';
    $('url').textContent = url;
    status('connecting');
    ws = new WebSocket(url, ['mqtt']);
    ws.binaryType = 'arraybuffer';
    ws.onopen = function () {
      if (ws.protocol !== 'mqtt') { status('server did not accept subprotocol mqtt'); ws.close(); return; }
      var user = params.get('username'), pass = params.get('password');
      var flags = 2; // clean session
      var payload = [str('web-' + Math.random().toString(36).slice(2, 12))];
      if (user) { flags |= 128; payload.push(str(user)); if (pass) { flags |= 64; payload.push(str(pass)); } }
      send(packet(0x10, concat([str('MQTT'), [4, flags], u16(60)].concat(payload))));
      status('CONNECT sent');
    };
    ws.onmessage = function (ev) { buf = concat([buf, new Uint8Array(ev.data)]); parse(); };
    ws.onclose = function (ev) {
      status('closed (' + ev.code + (ev.reason ? ' ' + ev.reason : '') + ')');
      if (pinger) clearInterval(pinger);
    };
    ws.onerror = function () { status('WebSocket error'); };
  }

  // ---- decoding: whole packets out of the byte stream, across messages (§6.0) ----
  function parse() {
    for (;;) {
      if (buf.length < 2) return;
      var mult = 1, len = 0, i = 1, d;
      do {
        if (i >= buf.length) return;
        if (i > 4) { status('malformed remaining length'); ws.close(); return; }
        d = buf[i++]; len += (d & 127) * mult; mult *= 128;
      } while (d & 128);
      if (buf.length < i + len) return;
      var first = buf[0], body = buf.slice(i, i + len);
      buf = buf.slice(i + len);
      handle(first, body);
    }
  }
  function handle(first, body) {
    var type = first >> 4;
    if (type === 2) { // CONNACK
      if (body[1] !== 0) { status('CONNACK refused, return code ' + body[1]); return; }
      status('connected');
      pinger = setInterval(function () { send(new Uint8Array([0xC0, 0])); }, 30000);
      subscribe($('topic').value);
    } else if (type === 9) { // SUBACK
      var granted = body[2];
      status(granted === 0x80 ? 'subscription refused' : 'subscribed');
      if (params.get('publish') !== null && !handle.published) {
        handle.published = true;
        publish($('pubtopic').value, params.get('publish'), false);
      }
    } else if (type === 3) { // PUBLISH
      var qos = (first >> 1) & 3, tl = (body[0] << 8) | body[1];
      var topic = dec.decode(body.slice(2, 2 + tl)), off = 2 + tl, id = 0;
      if (qos > 0) { id = (body[off] << 8) | body[off + 1]; off += 2; }
      show(topic, dec.decode(body.slice(off)), (first & 1) === 1);
      if (qos === 1) send(concat([[0x40, 2], u16(id)]));      // PUBACK
      if (qos === 2) send(concat([[0x50, 2], u16(id)]));      // PUBREC
    } else if (type === 6) { // PUBREL
      send(concat([[0x70, 2], body.slice(0, 2)]));             // PUBCOMP
    }
  }
  function subscribe(filter) {
    var id = nextId++;
    send(packet(0x82, concat([u16(id), str(filter), [0]])));
    status('SUBSCRIBE ' + filter + ' sent');
  }
  function publish(topic, payload, retain) {
    send(packet(retain ? 0x31 : 0x30, concat([str(topic), enc.encode(payload)])));
    $('pub').dataset.sent = String(Number($('pub').dataset.sent || 0) + 1);
  }
  function show(topic, payload, retained) {
    var li = document.createElement('li');
    li.textContent = topic + ' ' + payload + (retained ? ' (retained)' : '');
    li.dataset.topic = topic;
    li.dataset.payload = payload;
    $('messages').appendChild(li);
    while ($('messages').children.length > MAX_SHOWN) $('messages').removeChild($('messages').firstChild);
    $('count').textContent = String(++count);
  }

  $('topic').value = params.get('topic') || 'quiclab/#';
  $('pubtopic').value = params.get('pubtopic') || 'quiclab/browser';
  $('sub').onsubmit = function (e) { e.preventDefault(); subscribe($('topic').value); };
  $('pub').onsubmit = function (e) { e.preventDefault(); publish($('pubtopic').value, $('payload').value, $('retain').checked); };
  window.addEventListener('pagehide', function () { send(new Uint8Array([0xE0, 0])); });
  connect();
})();
</script>
</body>
</html>
"#;
