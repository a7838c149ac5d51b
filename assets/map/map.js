// fleetwatch live map: vehicles polled from /api/v1/vehicles, our own routes and zones
// from /api/v1/geo, the alert list, and the replay of a vehicle's track.
// Plain JavaScript on the vendored Leaflet 1.9.4; no build step.
'use strict';

(() => {
  // Uncaught errors are kept (and shown): a page that fails quietly looks fine.
  const errors = [];
  const requestErrors = [];
  addEventListener('error', (e) => noteError(e.message || String(e)));
  addEventListener('unhandledrejection', (e) => noteError(String(e.reason)));

  const TOKEN_KEY = 'fleetwatch.token';
  const POLL_MS = 5000;
  const ALERT_POLL_MS = 10000;
  const GEO_POLL_MS = 300000;
  // Labels are drawn for every vehicle when the fleet is small, else only zoomed in.
  const LABEL_ALL_MAX = 300;
  const LABEL_MIN_ZOOM = 15;
  const LABEL_FONT = '600 11px system-ui, sans-serif';
  const STATUS = {
    moving: { color: '#1a9641', label: 'moving' },
    stopped: { color: '#2b83ba', label: 'stopped' },
    off_route: { color: '#e66101', label: 'off route' },
    no_signal: { color: '#6e6e6e', label: 'no signal' },
    unknown: { color: '#bdbdbd', label: 'no position' },
  };
  const ZONE_COLOR = {
    restricted: '#c62828', speed_zone: '#f9a825', depot: '#6a1b9a',
    terminal: '#00838f', port: '#4527a0',
  };

  const $ = (id) => document.getElementById(id);
  const el = (tag, props, ...children) => {
    const e = Object.assign(document.createElement(tag), props);
    e.append(...children);
    return e;
  };

  let token = takeToken();
  let offsetMin = 420; // replaced by the server's rules.utc_offset
  let offsetLabel = '+07:00';
  let selectedId = null;
  let started = false;

  // ---- token ------------------------------------------------------------------

  /** The token from `#token=...` (then removed from the address bar) or storage. */
  function takeToken() {
    const m = location.hash.match(/(?:^#|&)token=([0-9a-fA-F]{64})\b/);
    if (m) {
      localStorage.setItem(TOKEN_KEY, m[1]);
      history.replaceState(null, '', location.pathname + location.search);
    }
    return localStorage.getItem(TOKEN_KEY);
  }

  function askToken(why) {
    $('login-why').textContent = why;
    $('login').hidden = false;
    $('login-token').focus();
  }

  $('login-form').addEventListener('submit', (e) => {
    e.preventDefault();
    token = $('login-token').value.trim();
    localStorage.setItem(TOKEN_KEY, token);
    $('login').hidden = true;
    start();
  });
  $('change-token').addEventListener('click', () => askToken('Enter an API token.'));

  class AuthError extends Error {}

  async function api(path) {
    let r;
    try {
      r = await fetch(path, { headers: { Authorization: `Bearer ${token}` } });
    } catch (e) {
      throw noteRequest(`${path}: ${e.message}`);
    }
    if (r.status === 401) {
      askToken('The token was refused: enter another.');
      throw new AuthError('token refused');
    }
    if (!r.ok) {
      const body = await r.json().catch(() => ({}));
      throw noteRequest(`${path}: ${r.status} ${body.error || r.statusText}`);
    }
    return r.json();
  }

  // ---- problems ----------------------------------------------------------------

  function noteError(msg) {
    errors.push(msg);
    showProblem(msg);
  }

  function noteRequest(msg) {
    requestErrors.push(msg);
    showProblem(msg);
    return new Error(msg);
  }

  function showProblem(msg) {
    $('problem').textContent = msg;
    $('problem').hidden = !msg;
  }

  /** Failed requests are already shown; anything else is a defect of this page. */
  function onFail(e) {
    if (!(e instanceof AuthError) && !requestErrors.includes(e.message)) noteError(String(e));
  }

  /** Runs `fn` now and every `ms` after it finishes (never two at once); resolves
   *  after the first run. */
  function every(ms, fn) {
    const run = async () => {
      try {
        await fn();
      } catch (e) {
        onFail(e);
        if (e instanceof AuthError) return; // the token form starts again
      }
      setTimeout(run, ms);
    };
    return run();
  }

  // ---- time in the rules' local offset -------------------------------------------

  const pad = (n) => String(n).padStart(2, '0');
  /** `YYYY-MM-DDTHH:MM:SS` of epoch ms, in the configured offset. */
  function localIso(ms) {
    return new Date(ms + offsetMin * 60000).toISOString().slice(0, 19);
  }
  function fmtTime(iso) {
    return iso ? localIso(Date.parse(iso)).replace('T', ' ') : '–';
  }
  function parseLocal(value) {
    const v = value.length === 16 ? `${value}:00` : value;
    return Date.parse(`${v}Z`) - offsetMin * 60000;
  }
  function parseOffset(s) {
    const m = /^([+-])(\d\d):(\d\d)$/.exec(s || '');
    return m ? (m[1] === '-' ? -1 : 1) * (Number(m[2]) * 60 + Number(m[3])) : 0;
  }

  // ---- the map -----------------------------------------------------------------

  const labelsShown = () =>
    vehicles.size <= LABEL_ALL_MAX || map.getZoom() >= LABEL_MIN_ZOOM;

  // Each vehicle's label is drawn beside its circle in the same canvas pass: a DOM
  // tooltip per vehicle would not scale to 10,000 vehicles. (Leaflet 1.9.4 internals:
  // `_updateCircle`, `_ctx`, `_point`, `_radius`; the version is pinned by the path.)
  const LabelCanvas = L.Canvas.extend({
    _updateCircle(layer) {
      L.Canvas.prototype._updateCircle.call(this, layer);
      const text = layer.options.label;
      if (!this._drawing || layer._empty() || !text || !labelsShown()) return;
      const ctx = this._ctx;
      const x = layer._point.x + layer._radius + 3;
      const y = layer._point.y + 4;
      ctx.font = LABEL_FONT;
      ctx.lineWidth = 3;
      ctx.strokeStyle = 'rgba(255,255,255,0.9)';
      ctx.fillStyle = '#1b1b1b';
      ctx.strokeText(text, x, y);
      ctx.fillText(text, x, y);
    },
  });
  // Its redraw bounds take in the label, so a moved vehicle leaves no stale text.
  const VehicleMarker = L.CircleMarker.extend({
    _updateBounds() {
      L.CircleMarker.prototype._updateBounds.call(this);
      if (this.options.label && labelsShown()) {
        const b = this._pxBounds;
        const w = 7 * this.options.label.length + 8;
        this._pxBounds = L.bounds(b.min.subtract([0, 4]), b.max.add([w, 4]));
      }
    },
  });

  // One canvas for everything drawn from our data: a canvas takes every pointer event
  // over it, so a second one on top would hide the first one's layers from clicks.
  // Drawn in order: routes and zones (kept at the back), vehicles, the replay.
  const map = L.map('map', { renderer: new LabelCanvas({ padding: 0.3 }), zoomSnap: 0.5 })
    .setView([10.95, 106.72], 12);
  const vehicleLayer = L.featureGroup().addTo(map);
  const geoLayer = L.geoJSON(null, {
    style: geoStyle,
    onEachFeature: (f, layer) => layer.bindPopup(() => geoPopup(f.properties)),
  }).addTo(map);
  const highlight = L.circleMarker([0, 0], {
    radius: 11, weight: 3, color: '#111', fill: false, interactive: false,
  });

  const legend = L.control({ position: 'bottomleft' });
  legend.onAdd = () => el('div', { className: 'legend' },
    ...Object.values(STATUS).flatMap((s) => [
      el('i', { style: `background:${s.color}` }), s.label, el('br')]));
  legend.addTo(map);

  function geoStyle(f) {
    const p = f.properties;
    if (p.layer === 'route') return { color: '#3949ab', weight: 3, opacity: 0.55 };
    const c = ZONE_COLOR[p.kind] || '#555';
    return { color: c, weight: 1.5, fillColor: c, fillOpacity: p.kind === 'restricted' ? 0.12 : 0.2 };
  }

  function geoPopup(p) {
    const rows = p.layer === 'route'
      ? [['route', p.route_id], ['name', p.name], ['corridor', p.corridor_m && `${p.corridor_m} m`],
        ['length', `${(p.length_m / 1000).toFixed(1)} km`]]
      : [['zone', p.zone_id], ['name', p.name], ['kind', p.kind],
        ['classes', p.classes.join(', ') || 'all'], ['banned', p.banned_hours.join(', ')],
        ['limit', p.speed_limit_kmh && `${p.speed_limit_kmh} km/h`]];
    return el('div', {}, ...rows.filter(([, v]) => v).flatMap(([k, v]) => [el('b', {}, `${k}: `), String(v), el('br')]));
  }

  // ---- vehicles ----------------------------------------------------------------

  /** id → { v: the API's vehicle, marker: its circle (null without a position) }. */
  const vehicles = new Map();
  let fitted = false;

  vehicleLayer.on('click', (e) => select(e.layer.options.vehicleId, false));

  let geoKey = '';
  async function loadGeo() {
    const fc = await api('/api/v1/geo');
    // Redrawn only when reloaded on the server: an open popup survives the poll.
    const key = JSON.stringify(fc);
    if (key === geoKey) return;
    geoKey = key;
    geoLayer.clearLayers();
    geoLayer.addData(fc);
    geoLayer.bringToBack();
  }

  /** Once, at the first positions: every vehicle, route and zone in view. */
  function fitAll() {
    const b = L.latLngBounds([]);
    if (geoLayer.getLayers().length) b.extend(geoLayer.getBounds());
    if (vehicleLayer.getLayers().length) b.extend(vehicleLayer.getBounds());
    if (!b.isValid()) return;
    map.fitBounds(b, { padding: [20, 20], maxZoom: 15, animate: false });
    fitted = true;
  }

  /** How long the last vehicle poll took: request and JSON, then the page's update, ms. */
  const timings = { fetchMs: 0, updateMs: 0 };

  async function pollVehicles() {
    const t0 = performance.now();
    const { vehicles: list } = await api('/api/v1/vehicles');
    const t1 = performance.now();
    const seen = new Set();
    for (const v of list) {
      seen.add(v.vehicle_id);
      update(v);
    }
    for (const [id, e] of vehicles) {
      if (!seen.has(id)) {
        if (e.marker) e.marker.remove();
        vehicles.delete(id);
      }
    }
    if (!fitted) fitAll();
    showCounts();
    updateVehicleIds();
    if (selectedId) showVehicle();
    $('updated').textContent = `updated ${fmtTime(new Date().toISOString()).slice(11)}`;
    timings.fetchMs = t1 - t0;
    timings.updateMs = performance.now() - t1;
  }

  /** Touches the map only where a vehicle changed (position, status, label). */
  function update(v) {
    const e = vehicles.get(v.vehicle_id) || {};
    e.v = v;
    vehicles.set(v.vehicle_id, e);
    const p = v.position;
    if (!p) {
      if (e.marker) e.marker.remove();
      e.marker = null;
      return;
    }
    const color = (STATUS[v.status] || STATUS.unknown).color;
    const label = v.plate && v.plate !== v.vehicle_id ? `${v.plate}` : v.vehicle_id;
    if (!e.marker) {
      e.marker = new VehicleMarker([p.lat, p.lon], {
        radius: 6, weight: 1.5, color: '#fff',
        fillColor: color, fillOpacity: 1, label, vehicleId: v.vehicle_id,
      }).addTo(vehicleLayer);
    } else {
      const ll = e.marker.getLatLng();
      if (ll.lat !== p.lat || ll.lng !== p.lon) e.marker.setLatLng([p.lat, p.lon]);
      if (e.marker.options.fillColor !== color) e.marker.setStyle({ fillColor: color });
    }
    if (v.vehicle_id === selectedId) highlight.setLatLng([p.lat, p.lon]);
  }

  function showCounts() {
    const by = {};
    for (const { v } of vehicles.values()) by[v.status] = (by[v.status] || 0) + 1;
    const parts = Object.entries(STATUS)
      .filter(([k]) => by[k])
      .map(([k, s]) => `${by[k]} ${s.label}`);
    $('counts').textContent = `${vehicles.size} vehicles${parts.length ? ` · ${parts.join(' · ')}` : ''}`;
  }

  let idsKey = '';
  function updateVehicleIds() {
    const ids = [...vehicles.keys()].sort();
    const key = ids.join('\n');
    if (key === idsKey) return;
    idsKey = key;
    $('vehicle-ids').replaceChildren(...ids.map((id) => el('option', { value: id })));
  }

  // ---- the vehicle panel --------------------------------------------------------

  function select(id, pan) {
    selectedId = id;
    const e = vehicles.get(id);
    if (!e) return;
    if (e.marker) {
      highlight.setLatLng(e.marker.getLatLng()).addTo(map);
      if (pan) map.panTo(e.marker.getLatLng());
    }
    $('replay-vehicle').value = id;
    showVehicle();
    loadVehicleAlerts(id).catch(onFail);
  }

  function showVehicle() {
    const e = vehicles.get(selectedId);
    if (!e) {
      $('vehicle-panel').hidden = true;
      return;
    }
    const { v } = e;
    const p = v.position || {};
    const s = STATUS[v.status] || STATUS.unknown;
    $('vehicle-title').textContent = v.vehicle_id;
    const rows = [
      ['Status', el('span', { className: `status ${v.status}` }, s.label)],
      ['Plate', v.plate],
      ['Cooperative', v.cooperative_id],
      ['Class', v.class],
      ['Route', v.route_id],
      ['Last fix', `${fmtTime(p.ts)} (UTC${offsetLabel})`],
      ['Speed', p.speed_kmh != null ? `${p.speed_kmh.toFixed(0)} km/h` : null],
      ['Heading', p.heading_deg != null ? `${p.heading_deg.toFixed(0)}°` : null],
      ['Driver', p.driver_id],
      ['Position', p.lat != null ? `${p.lat.toFixed(5)}, ${p.lon.toFixed(5)}` : null],
      ['Registered', v.registered ? 'yes' : 'no'],
    ];
    $('vehicle-details').replaceChildren(...rows.filter(([, x]) => x != null && x !== '')
      .flatMap(([k, x]) => [el('dt', {}, k), el('dd', {}, x)]));
    $('vehicle-panel').hidden = false;
    // Until the details arrive, the live list's open alerts stand in.
    if ($('vehicle-alerts').dataset.vehicle !== v.vehicle_id) {
      renderAlerts($('vehicle-alerts'), v.open_alerts.map((a) => ({ ...a, vehicle_id: v.vehicle_id, status: 'open' })),
        'No open alerts.');
      $('vehicle-alerts').dataset.vehicle = v.vehicle_id;
    }
  }

  async function loadVehicleAlerts(id) {
    const { alerts } = await api(`/api/v1/alerts?vehicle=${encodeURIComponent(id)}&status=open&limit=50`);
    if (id !== selectedId) return;
    renderAlerts($('vehicle-alerts'), alerts, 'No open alerts.');
  }

  $('vehicle-close').addEventListener('click', () => {
    selectedId = null;
    highlight.remove();
    $('vehicle-panel').hidden = true;
  });
  $('vehicle-replay').addEventListener('click', () => {
    setRange(Date.now() - 3600e3, Date.now());
    loadReplay().catch(onFail);
  });

  // ---- alerts ------------------------------------------------------------------

  let alertsKey = '';
  async function pollAlerts() {
    const { alerts } = await api('/api/v1/alerts?limit=100');
    const key = alerts.map((a) => `${a.id}/${a.status}`).join(',');
    $('alert-count').textContent = `(${alerts.length}${alerts.length === 100 ? '+' : ''})`;
    if (selectedId) loadVehicleAlerts(selectedId).catch(onFail);
    if (key === alertsKey) return;
    alertsKey = key;
    renderAlerts($('alert-list'), alerts, 'No alerts.');
  }

  function alertFacts(a) {
    const d = a.details || {};
    return [
      d.max_speed_kmh != null && `max ${Math.round(d.max_speed_kmh)} km/h`,
      d.limit_kmh != null && `limit ${d.limit_kmh}`,
      d.zone_id && `zone ${d.zone_id}`,
      d.distance_m != null && `${Math.round(d.distance_m)} m off`,
    ].filter(Boolean).join(', ');
  }

  /** Newest first (as the API sends them); a click pans to where it happened. */
  function renderAlerts(ul, alerts, empty) {
    if (!alerts.length) {
      ul.replaceChildren(el('li', { className: 'empty' }, empty));
      return;
    }
    ul.replaceChildren(...alerts.map((a) => {
      const li = el('li', { className: `${a.level} ${a.status || ''}`, title: a.id },
        el('span', { className: 'when' }, fmtTime(a.start).slice(5, 16)), ' ',
        el('b', {}, a.kind.replace(/_/g, ' ')), ` ${a.vehicle_id}`,
        a.status === 'closed' ? ' (closed)' : '',
        alertFacts(a) ? el('div', {}, alertFacts(a)) : '');
      li.addEventListener('click', () => showAlert(a));
      return li;
    }));
  }

  function showAlert(a) {
    if (a.lat == null) {
      select(a.vehicle_id, true);
      return;
    }
    map.flyTo([a.lat, a.lon], Math.max(map.getZoom(), 15), { duration: 0.6 });
    L.popup().setLatLng([a.lat, a.lon]).setContent(el('div', {},
      el('b', {}, `${a.level} · ${a.kind.replace(/_/g, ' ')}`), el('br'),
      `${a.vehicle_id} · ${fmtTime(a.start)}${a.end ? ` → ${fmtTime(a.end).slice(11)}` : ''}`,
      el('br'), alertFacts(a))).openOn(map);
  }

  // ---- replay ------------------------------------------------------------------

  const replay = {
    playing: false, index: 0, length: 0, t: 0, factor: 60,
    times: [], latlngs: [], speeds: [], line: null, marker: null, timer: null, last: 0,
  };

  function setRange(from, to) {
    $('replay-from').value = localIso(from);
    $('replay-to').value = localIso(to);
  }

  $('replay-form').addEventListener('submit', (e) => {
    e.preventDefault();
    loadReplay().catch(onFail);
  });
  $('replay-play').addEventListener('click', () => (replay.playing ? pause() : play()));
  $('replay-speed').addEventListener('change', (e) => { replay.factor = Number(e.target.value); });
  $('replay-slider').addEventListener('input', (e) => seek(Number(e.target.value)));

  async function loadReplay() {
    const id = $('replay-vehicle').value.trim().toUpperCase();
    const from = parseLocal($('replay-from').value);
    const to = parseLocal($('replay-to').value);
    if (!id || !(from < to)) {
      $('replay-readout').textContent = 'Pick a vehicle and a range (from before to).';
      return;
    }
    pause();
    $('replay-readout').textContent = 'Loading…';
    const q = new URLSearchParams({
      from: new Date(from).toISOString(), to: new Date(to).toISOString(), format: 'geojson',
    });
    const f = await api(`/api/v1/vehicles/${encodeURIComponent(id)}/track?${q}`);
    const g = f.geometry;
    const coords = !g ? [] : g.type === 'Point' ? [g.coordinates] : g.coordinates;
    replay.times = f.properties.times.map(Date.parse);
    replay.speeds = f.properties.speeds_kmh;
    replay.latlngs = coords.map(([lon, lat]) => L.latLng(lat, lon));
    replay.length = coords.length;
    if (replay.line) replay.line.remove();
    if (replay.marker) replay.marker.remove();
    replay.line = replay.marker = null;
    const slider = $('replay-slider');
    if (!replay.length) {
      slider.disabled = $('replay-play').disabled = true;
      $('replay-readout').textContent = `No fixes of ${id} in this range.`;
      return;
    }
    replay.line = L.polyline(replay.latlngs, {
      color: '#8e24aa', weight: 4, opacity: 0.8, interactive: false,
    }).addTo(map);
    replay.marker = L.circleMarker(replay.latlngs[0], {
      interactive: false, radius: 8, weight: 3, color: '#4a148c', fillColor: '#fff', fillOpacity: 1,
    }).addTo(map);
    map.fitBounds(replay.line.getBounds(), { padding: [40, 40], maxZoom: 16 });
    slider.max = Math.round((replay.times[replay.length - 1] - replay.times[0]) / 1000);
    slider.disabled = $('replay-play').disabled = replay.length < 2;
    seek(0);
  }

  function play() {
    if (replay.length < 2) return;
    if (replay.t >= Number($('replay-slider').max)) seek(0);
    replay.playing = true;
    replay.last = performance.now();
    replay.timer = setInterval(tick, 50);
    $('replay-play').textContent = 'Pause';
  }

  function pause() {
    replay.playing = false;
    clearInterval(replay.timer);
    $('replay-play').textContent = 'Play';
  }

  function tick() {
    const now = performance.now();
    const end = Number($('replay-slider').max);
    const t = replay.t + ((now - replay.last) / 1000) * replay.factor;
    replay.last = now;
    seek(Math.min(t, end));
    if (t >= end) pause();
  }

  /** Moves the replay to `t` seconds after the first fix (between fixes: interpolated). */
  function seek(t) {
    const { times, latlngs } = replay;
    replay.t = t;
    const at = times[0] + t * 1000;
    // The last fix at or before `at`.
    let lo = 0;
    let hi = times.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (times[mid] <= at) lo = mid; else hi = mid - 1;
    }
    replay.index = lo;
    let pos = latlngs[lo];
    if (lo + 1 < times.length && times[lo + 1] > times[lo]) {
      const k = (at - times[lo]) / (times[lo + 1] - times[lo]);
      const b = latlngs[lo + 1];
      pos = L.latLng(pos.lat + (b.lat - pos.lat) * k, pos.lng + (b.lng - pos.lng) * k);
    }
    replay.marker.setLatLng(pos);
    $('replay-slider').value = String(Math.round(t));
    const speed = replay.speeds[lo];
    $('replay-readout').textContent =
      `${fmtTime(new Date(at).toISOString())} · ${speed != null ? speed.toFixed(0) : '–'} km/h · fix ${lo + 1}/${replay.length}`;
  }

  // ---- start -------------------------------------------------------------------

  async function loadConfig() {
    const r = await fetch('/map/config.json');
    if (!r.ok) throw noteRequest(`/map/config.json: ${r.status}`);
    const c = await r.json();
    offsetLabel = c.utc_offset;
    offsetMin = parseOffset(c.utc_offset);
    $('replay-tz').textContent = c.utc_offset;
    if (c.tile_url) {
      L.tileLayer(c.tile_url, { attribution: c.tile_attribution, maxZoom: 19 }).addTo(map);
    }
    map.attributionControl.addAttribution('fleetwatch routes and zones');
    setRange(Date.now() - 3600e3, Date.now());
  }

  function start() {
    if (started) {
      // A new token: everything reloads with it.
      location.reload();
      return;
    }
    started = true;
    // Routes and zones first, so the first view frames them with the vehicles.
    every(GEO_POLL_MS, loadGeo).then(() => {
      every(POLL_MS, pollVehicles);
      every(ALERT_POLL_MS, pollAlerts);
    });
  }

  loadConfig().then(() => (token ? start() : askToken('An API token is needed to see the fleet.')),
    (e) => noteError(String(e)));

  // Read-only hooks for tests and the console.
  window.fleetwatch = Object.freeze({
    errors: () => errors.slice(),
    requestErrors: () => requestErrors.slice(),
    vehicleCount: () => vehicleLayer.getLayers().length,
    vehicleIds: () => [...vehicles.keys()],
    geoFeatureCount: () => geoLayer.getLayers().length,
    selected: () => selectedId,
    timings: () => ({ ...timings }),
    /** Page coordinates (CSS px) of a vehicle's marker, for clicking it. */
    vehiclePoint(id) {
      const e = vehicles.get(id);
      if (!e || !e.marker) return null;
      const p = map.latLngToContainerPoint(e.marker.getLatLng());
      const r = map.getContainer().getBoundingClientRect();
      return { x: Math.round(r.left + p.x), y: Math.round(r.top + p.y) };
    },
    replay: Object.freeze({
      get playing() { return replay.playing; },
      get index() { return replay.index; },
      get length() { return replay.length; },
      get t() { return replay.t; },
      get position() {
        const p = replay.marker && replay.marker.getLatLng();
        return p ? [p.lat, p.lng] : null;
      },
    }),
  });
})();
