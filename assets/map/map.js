// fleetwatch dispatcher's console: the live fleet and its alerts pushed by
// /api/v1/stream (server-sent events read with fetch), our own routes and zones from
// /api/v1/geo, violations announced and acknowledged, and the replay of a track.
// Plain JavaScript on the vendored Leaflet 1.9.4; no build step.
'use strict';

(() => {
  // Uncaught errors are kept (and shown): a page that fails quietly looks fine.
  const errors = [];
  const requestErrors = [];
  addEventListener('error', (e) => noteError(e.message || String(e)));
  addEventListener('unhandledrejection', (e) => noteError(String(e.reason)));

  const TOKEN_KEY = 'fleetwatch.token';
  const GEO_POLL_MS = 300000;
  // Labels are drawn for every vehicle when the fleet is small, else only zoomed in.
  const LABEL_ALL_MAX = 300;
  const LABEL_MIN_ZOOM = 15;
  const LABEL_FONT = '600 11px system-ui, sans-serif';
  // The routes' stops are drawn from street zoom on, their names closer in.
  const STOP_MIN_ZOOM = 15;
  const STOP_LABEL_ZOOM = 17;
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
    const { dataset, ...rest } = props || {};
    const e = Object.assign(document.createElement(tag), rest);
    Object.assign(e.dataset, dataset);
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
  /** Whether `layer`'s label is drawn: a stop's from STOP_LABEL_ZOOM, a vehicle's as above. */
  const labelShown = (layer) =>
    (layer.options.stop ? map.getZoom() >= STOP_LABEL_ZOOM : labelsShown());

  // Each vehicle's label is drawn beside its circle in the same canvas pass: a DOM
  // tooltip per vehicle would not scale to 10,000 vehicles. (Leaflet 1.9.4 internals:
  // `_updateCircle`, `_ctx`, `_point`, `_radius`; the version is pinned by the path.)
  const LabelCanvas = L.Canvas.extend({
    _updateCircle(layer) {
      if (!(layer instanceof VehicleMarker)) {
        L.Canvas.prototype._updateCircle.call(this, layer);
        return;
      }
      if (!this._drawing || layer._empty()) return;
      // A copy of the circle drawn once per style: 10,000 arcs filled and stroked one
      // by one are most of a redraw, a copy is one blit. `_point` is whole pixels
      // (Leaflet rounds it), so the copy gives the pixels the arc would.
      const sp = this._sprite(layer);
      const ctx = this._ctx;
      ctx.globalAlpha = 1;
      const x0 = layer._point.x - sp.half;
      const y0 = layer._point.y - sp.half;
      if (sp.scale === 1) ctx.drawImage(sp.image, x0, y0);
      else ctx.drawImage(sp.image, x0, y0, 2 * sp.half, 2 * sp.half);
      const text = layer.options.label;
      if (!text || !labelShown(layer)) return;
      const x = layer._point.x + layer._radius + 3;
      const y = layer._point.y + 4;
      ctx.font = LABEL_FONT;
      ctx.lineWidth = 3;
      ctx.strokeStyle = 'rgba(255,255,255,0.9)';
      ctx.fillStyle = '#1b1b1b';
      ctx.strokeText(text, x, y);
      ctx.fillText(text, x, y);
    },
    /** The circle of `layer`'s style and radius, drawn as Leaflet draws it (kept on the
     *  layer while its style stays: a key built per circle per redraw costs). */
    _sprite(layer) {
      const o = layer.options;
      const r = Math.max(Math.round(layer._radius), 1);
      const had = layer._fwSprite;
      if (had && had.r === r && had.weight === o.weight && had.fillColor === o.fillColor
          && had.color === o.color && had.fillOpacity === o.fillOpacity && had.opacity === o.opacity) {
        return had;
      }
      const key = `${r} ${o.weight} ${o.color} ${o.fillColor} ${o.fillOpacity} ${o.opacity}`;
      this._sprites = this._sprites || new Map();
      let sp = this._sprites.get(key);
      if (!sp) {
        const half = Math.ceil(r + o.weight / 2) + 1;
        // Leaflet doubles the canvas on high-density screens.
        const scale = L.Browser.retina ? 2 : 1;
        const size = 2 * half * scale;
        // An ImageBitmap: drawing from a canvas element copies its pixels at each call.
        const off = typeof OffscreenCanvas === 'function' ? new OffscreenCanvas(size, size) : null;
        const canvas = off || Object.assign(document.createElement('canvas'), { width: size, height: size });
        const ctx = canvas.getContext('2d');
        ctx.scale(scale, scale);
        ctx.beginPath();
        ctx.arc(half, half, r, 0, 2 * Math.PI, false);
        this._fillStroke(ctx, layer);
        sp = {
          image: off ? off.transferToImageBitmap() : canvas, half, scale, r, weight: o.weight,
          color: o.color, fillColor: o.fillColor, fillOpacity: o.fillOpacity, opacity: o.opacity,
        };
        this._sprites.set(key, sp);
      }
      layer._fwSprite = sp;
      return sp;
    },
  });
  // Its redraw bounds take in the label, so a moved vehicle leaves no stale text.
  const VehicleMarker = L.CircleMarker.extend({
    _updateBounds() {
      L.CircleMarker.prototype._updateBounds.call(this);
      if (this.options.label && labelShown(this)) {
        const b = this._pxBounds;
        const w = 7 * this.options.label.length + 8;
        this._pxBounds = L.bounds(b.min.subtract([0, 4]), b.max.add([w, 4]));
      }
    },
  });

  // One canvas for everything drawn from our data: a canvas takes every pointer event
  // over it, so a second one on top would hide the first one's layers from clicks.
  // Drawn in order: routes and zones (kept at the back), vehicles, the replay.
  const renderer = new LabelCanvas({ padding: 0.3 });
  const map = L.map('map', { renderer, zoomSnap: 0.5 })
    .setView([10.95, 106.72], 12);
  const vehicleLayer = L.featureGroup().addTo(map);
  const geoLayer = L.geoJSON(null, {
    style: geoStyle,
    onEachFeature: (f, layer) => layer.bindPopup(() => geoPopup(f.properties)),
  }).addTo(map);
  // Stops: on the map only at street zoom (thousands of them in a city feed).
  // Not interactive, so they never take a click meant for a bus standing at one.
  const stopLayer = L.layerGroup();
  const highlight = L.circleMarker([0, 0], {
    radius: 11, weight: 3, color: '#111', fill: false, interactive: false,
  });

  const legend = L.control({ position: 'bottomleft' });
  legend.onAdd = () => el('div', { className: 'legend' },
    ...Object.values(STATUS).flatMap((s) => [
      el('i', { style: `background:${s.color}` }), s.label, el('br')]),
    el('div', { id: 'geo-legend' }));
  legend.addTo(map);

  /** Routes and zones in the legend, each with its name and colour. */
  function showGeoLegend(fc) {
    const rows = [];
    const feats = fc.features || [];
    for (const f of feats.filter((x) => x.properties.layer === 'route')) {
      const p = f.properties;
      rows.push(el('div', { className: 'geo-row route' }, el('s', { style: 'border-color:#3949ab' }),
        `route ${p.route_id}${p.name ? ` · ${p.name}` : ''}`));
    }
    for (const f of feats.filter((x) => x.properties.layer === 'zone')) {
      const p = f.properties;
      const c = ZONE_COLOR[p.kind] || '#555';
      rows.push(el('div', { className: 'geo-row zone' }, el('b', { style: `background:${c}` }),
        `${p.name || p.zone_id} (${p.kind.replace(/_/g, ' ')})`));
    }
    const box = $('geo-legend');
    if (box) box.replaceChildren(...rows);
  }

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

  /** id → { v: the API's vehicle, at: when the page received it (ms) }. */
  const vehicles = new Map();
  /** Spot key → { key, marker, ids, from }: vehicles at the same spot share one marker. */
  const spots = new Map();
  /** Vehicle id → its spot key. */
  const spotOf = new Map();
  /** Spots whose vehicles changed in this event: their markers are brought up to date
   *  once, at its end (a group's many vehicles in one update: one pass, not one each). */
  const dirtySpots = new Set();
  /** Vehicles by status and open violations by kind, kept up to date vehicle by
   *  vehicle: counting the whole fleet per update cost more than a small update. */
  let byStatus = {};
  let violationsByKind = {};
  let fitted = false;
  let breakS = 900; // replaced by the server's rules.driving.break_min_s

  vehicleLayer.on('click', (e) => {
    const ids = e.layer.options.ids || [e.layer.options.vehicleId];
    if (ids.length === 1) {
      select(ids[0], false);
      return;
    }
    // A group: the vehicles at this spot, each one a link to its panel.
    L.popup().setLatLng(e.layer.getLatLng()).setContent(el('div', { className: 'spot' },
      el('b', {}, `${ids.length} vehicles here`), el('br'),
      ...ids.flatMap((id) => {
        const a = el('a', { href: '#', className: 'spot-vehicle' }, id);
        a.addEventListener('click', (ev) => { ev.preventDefault(); map.closePopup(); select(id, false); });
        return [a, el('br')];
      }))).openOn(map);
  });

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
    showGeoLegend(fc);
  }

  /** The stops of the routes in use, once: a schedule changes with a reload only. */
  async function loadStops() {
    const fc = await api('/api/v1/stops');
    stopLayer.clearLayers();
    for (const f of fc.features || []) {
      const [lon, lat] = f.geometry.coordinates;
      const p = f.properties;
      new VehicleMarker([lat, lon], {
        radius: 3.5, weight: 1.5, color: '#3949ab', fillColor: '#fff', fillOpacity: 1,
        interactive: false, stop: true, label: p.name || p.stop_id, stopId: p.stop_id,
      }).addTo(stopLayer);
    }
    showStops();
  }

  /** Stops on the map from STOP_MIN_ZOOM on, behind the vehicles. */
  function showStops() {
    const want = map.getZoom() >= STOP_MIN_ZOOM;
    if (want && !map.hasLayer(stopLayer)) {
      stopLayer.addTo(map);
      stopLayer.eachLayer((l) => l.bringToBack());
      geoLayer.bringToBack();
    } else if (!want && map.hasLayer(stopLayer)) {
      stopLayer.remove();
    }
  }
  map.on('zoomend', showStops);

  /** Once, at the first positions: every vehicle, route and zone in view. */
  function fitAll() {
    const b = L.latLngBounds([]);
    if (geoLayer.getLayers().length) b.extend(geoLayer.getBounds());
    if (vehicleLayer.getLayers().length) b.extend(vehicleLayer.getBounds());
    if (!b.isValid()) return;
    map.fitBounds(b, { padding: [20, 20], maxZoom: 15, animate: false });
    fitted = true;
  }

  /** How the last stream event was handled: its size, then the page's update, ms. */
  const timings = {
    fetchMs: 0, updateMs: 0, events: 0, bytes: 0,
    // `update` events only, for measuring the page under load: how many, and for each
    // of the last 500 its vehicles, reading its text off the stream (decoding, finding
    // the event's end), JSON parse, apply (markers, lists, panel) and the canvas redraw
    // in the next frame, ms.
    updates: 0, updateLog: [], countRaster: false,
  };

  /** A snapshot (`full`: every vehicle, the rest removed) or an update. */
  function applyVehicles(list, full) {
    const now = Date.now();
    const seen = full ? new Set() : null;
    let added = full;
    let selectedSeen = full;
    if (full) {
      byStatus = {};
      violationsByKind = {};
    }
    for (const v of list) {
      const id = v.vehicle_id;
      if (seen) seen.add(id);
      const old = vehicles.get(id);
      if (!old) added = true;
      else if (!full) count(old.v, -1);
      count(v, 1);
      if (id === selectedId) selectedSeen = true;
      vehicles.set(id, { v, at: now });
      place(id, v);
    }
    if (full) {
      for (const id of [...vehicles.keys()]) {
        if (!seen.has(id)) {
          unplace(id);
          vehicles.delete(id);
        }
      }
    }
    drawSpots();
    if (!fitted) fitAll();
    showCounts();
    // The replay's vehicle list (10,000 ids sorted) changes only with a new vehicle.
    if (added) updateVehicleIds();
    // The panel shows nothing of the other vehicles (its clock runs in tickDriving).
    if (selectedId && selectedSeen) showVehicle();
  }

  /** Adds (`k` = 1) or takes away (-1) a vehicle's share of the fleet summary. */
  function count(v, k) {
    byStatus[v.status] = (byStatus[v.status] || 0) + k;
    for (const a of v.open_alerts || []) {
      if (a.level === 'violation') violationsByKind[a.kind] = (violationsByKind[a.kind] || 0) + k;
    }
  }

  /** Spot of a position: 1e-4° (about 11 m) cells. */
  const spotKey = (p) => `${Math.round(p.lat * 1e4)}:${Math.round(p.lon * 1e4)}`;

  /** Takes a vehicle off the map (its spot's marker is brought up to date in drawSpots). */
  function unplace(id) {
    const key = spotOf.get(id);
    if (key === undefined) return;
    spotOf.delete(id);
    const s = spots.get(key);
    s.ids = s.ids.filter((x) => x !== id);
    dirtySpots.add(s);
  }

  /** Puts a vehicle on its spot (leaving the one it was on); markers follow in drawSpots. */
  function place(id, v) {
    const p = v.position;
    const key = p ? spotKey(p) : undefined;
    const was = spotOf.get(id);
    if (was !== key) {
      const left = was !== undefined ? spots.get(was) : null;
      unplace(id);
      if (key !== undefined) {
        spotOf.set(id, key);
        let s = spots.get(key);
        if (!s) {
          s = { key, marker: null, ids: [], from: null };
          spots.set(key, s);
        }
        s.ids.push(id);
        if (s.ids.length > 1) s.ids.sort();
        // A vehicle moving on takes its marker along if it was alone (see drawSpots).
        if (!s.marker && !s.from) s.from = left;
      }
    }
    if (key !== undefined) dirtySpots.add(spots.get(key));
  }

  /** Brings the markers of the spots changed in this event up to date. A spot left
   *  empty hands its marker to a new one (the marker of the vehicle that moved, if it
   *  can): moving a marker is cheap, Leaflet's remove and add of one are not. */
  function drawSpots() {
    const spare = [];
    for (const s of dirtySpots) {
      const f = s.from;
      s.from = null;
      if (s.ids.length && !s.marker && f && !f.ids.length && f.marker) {
        s.marker = f.marker;
        f.marker = null;
      }
    }
    for (const s of dirtySpots) {
      if (s.ids.length) continue;
      spots.delete(s.key);
      if (s.marker) spare.push(s.marker);
      s.marker = null;
    }
    let moved = null;
    for (const s of dirtySpots) {
      if (!s.ids.length) continue;
      if (!s.marker && spare.length) s.marker = spare.pop();
      if (drawSpot(s)) moved = s.marker;
    }
    dirtySpots.clear();
    // Out of the group too (`remove()` takes a layer off the map only: the group kept
    // every marker ever replaced).
    for (const m of spare) vehicleLayer.removeLayer(m);
    // One redraw for all the moves, in the next animation frame.
    if (moved) moved._renderer._requestRedraw(moved);
  }

  /** One marker per spot: the vehicle's own, or a bigger one with the count. True when
   *  an existing marker was moved (its redraw is still to be asked for). */
  function drawSpot(s) {
    const first = vehicles.get(s.ids[0]).v;
    const p = first.position;
    const many = s.ids.length > 1;
    const worst = many ? groupStatus(s.ids) : first.status;
    const color = (STATUS[worst] || STATUS.unknown).color;
    const label = many ? `${s.ids.length} vehicles`
      : (first.plate && first.plate !== first.vehicle_id ? `${first.plate}` : first.vehicle_id);
    const radius = many ? 9 : 6;
    const weight = many ? 2.5 : 1.5;
    let moved = false;
    if (!s.marker) {
      s.marker = new VehicleMarker([p.lat, p.lon], {
        radius, weight, color: '#fff', fillColor: color, fillOpacity: 1,
        label, vehicleId: s.ids[0], ids: s.ids,
      }).addTo(vehicleLayer);
    } else {
      const m = s.marker;
      const ll = m.getLatLng();
      if (ll.lat !== p.lat || ll.lng !== p.lon) moved = moveMarker(m, p.lat, p.lon);
      m.options.ids = s.ids;
      m.options.vehicleId = s.ids[0];
      if (m.options.fillColor !== color || m.options.label !== label || m.options.radius !== radius
          || m.options.weight !== weight) {
        m.options.label = label;
        m.setRadius(radius);
        m.setStyle({ fillColor: color, weight });
      }
    }
    if (selectedId !== null && spotOf.get(selectedId) === s.key) highlight.setLatLng([p.lat, p.lon]);
    return moved;
  }

  /** `setLatLng` without its redraw request and `move` event per marker (Leaflet 1.9.4
   *  internals, as `_updatePath` does): when it lands on another pixel, its old and new
   *  place join the redraw bounds and drawSpots asks for one redraw for all. True then. */
  function moveMarker(m, lat, lng) {
    const was = m._point;
    const old = { _pxBounds: m._pxBounds, options: m.options };
    m._latlng = L.latLng(lat, lng);
    m._project();
    // Zoomed out, a move of metres is often none on screen.
    if (was && was.x === m._point.x && was.y === m._point.y) return false;
    m._renderer._extendRedrawBounds(old);
    m._renderer._extendRedrawBounds(m);
    return true;
  }

  /** A group's colour: the most urgent status among its vehicles. */
  function groupStatus(ids) {
    const order = ['no_signal', 'off_route', 'moving', 'stopped', 'unknown'];
    let best = 'unknown';
    for (const id of ids) {
      const st = vehicles.get(id).v.status;
      if (order.indexOf(st) < order.indexOf(best)) best = st;
    }
    return best;
  }

  /** The fleet summary: vehicles by status, open violations by kind (written only
   *  when it reads differently). */
  function showCounts() {
    const parts = Object.entries(STATUS)
      .filter(([k]) => byStatus[k])
      .map(([k, s]) => `${byStatus[k]} ${s.label}`);
    const n = vehicles.size;
    setText($('counts'), `${n} vehicle${n === 1 ? '' : 's'}${parts.length ? ` · ${parts.join(' · ')}` : ''}`);
    const kinds = Object.entries(violationsByKind).filter(([, k]) => k > 0).sort((a, b) => b[1] - a[1]);
    setText($('violations'), kinds.length
      ? `open violations: ${kinds.map(([k, n]) => `${n} ${k.replace(/_/g, ' ')}`).join(', ')}`
      : 'no open violations');
    $('violations').classList.toggle('some', kinds.length > 0);
  }

  /** Sets an element's text unless it has it already (a write costs a layout). */
  function setText(e, text) {
    if (e.textContent !== text) e.textContent = text;
  }

  let idsKey = '';
  function updateVehicleIds() {
    const ids = [...vehicles.keys()].sort();
    const key = ids.join('\n');
    if (key === idsKey) return;
    idsKey = key;
    $('vehicle-ids').replaceChildren(...ids.map((id) => el('option', { value: id })));
  }

  // ---- the stream ----------------------------------------------------------------

  /** Reads `GET /api/v1/stream` with the token in the header (fetch streaming: an
   *  EventSource cannot set it) and reconnects after a failure, backing off. */
  async function streamLive() {
    let backoff = 1000;
    for (;;) {
      let r;
      try {
        r = await fetch('/api/v1/stream', {
          headers: { Authorization: `Bearer ${token}`, Accept: 'text/event-stream' },
        });
      } catch (e) {
        noteRequest(`/api/v1/stream: ${e.message}`);
        r = null;
      }
      if (r && r.status === 401) {
        askToken('The token was refused: enter another.');
        return;
      }
      if (r && r.ok) {
        backoff = 1000;
        try {
          await readEvents(r.body.getReader());
        } catch (e) {
          if (!(e instanceof TypeError)) onFail(e);
        }
        live = false;
        $('updated').textContent = 'reconnecting…';
      } else if (r) {
        const body = await r.json().catch(() => ({}));
        noteRequest(`/api/v1/stream: ${r.status} ${body.error || r.statusText}`);
      }
      await new Promise((ok) => setTimeout(ok, backoff));
      backoff = Math.min(backoff * 2, 30000);
    }
  }

  let live = false;
  async function readEvents(reader) {
    const dec = new TextDecoder();
    // The event being received, in pieces joined once its end is in: a 5 MB update
    // comes in about a hundred reads, and searching one growing string for the end
    // copied all of it at each.
    let pieces = [];
    let endsInNewline = false;
    let readMs = 0;
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      let tr = performance.now();
      timings.bytes += value.length;
      const text = dec.decode(value, { stream: true });
      if (!text) continue;
      let from = 0;
      for (;;) {
        // An event ends at a blank line.
        let block;
        if (from === 0 && endsInNewline && text[0] === '\n') {
          // The blank line straddles two reads: the event ended with the last one.
          block = pieces.join('').slice(0, -1);
          from = 1;
        } else {
          const end = text.indexOf('\n\n', from);
          if (end < 0) break;
          block = pieces.join('') + text.slice(from, end);
          from = end + 2;
        }
        pieces = [];
        endsInNewline = false;
        readMs += performance.now() - tr;
        dispatch(block, readMs);
        readMs = 0;
        tr = performance.now();
      }
      if (from < text.length) {
        pieces.push(from ? text.slice(from) : text);
        endsInNewline = text.endsWith('\n');
      }
      readMs += performance.now() - tr;
    }
  }

  /** One event's text: its name and data lines, the data parsed and handled. */
  function dispatch(block, readMs) {
    const ts = performance.now();
    let name = 'message';
    let data = '';
    for (const line of block.split('\n')) {
      if (line.startsWith('event:')) name = line.slice(6).trim();
      else if (line.startsWith('data:')) data += line.slice(line[5] === ' ' ? 6 : 5);
    }
    if (!data) return;
    const tp = performance.now();
    const parsed = JSON.parse(data);
    onEvent(name, parsed, performance.now() - tp, readMs + (tp - ts));
  }

  function onEvent(name, data, parseMs, readMs) {
    const t0 = performance.now();
    if (name === 'snapshot') {
      applyVehicles(data.vehicles, true);
      applyAlerts(data.alerts, true);
      live = true;
    } else if (name === 'update') {
      applyVehicles(data.vehicles, false);
      applyAlerts(data.alerts, false);
    }
    timings.events += 1;
    timings.updateMs = performance.now() - t0;
    if (name === 'update') {
      timings.updates += 1;
      const entry = {
        vehicles: data.vehicles.length, readMs, parseMs, applyMs: timings.updateMs, drawMs: null,
      };
      timings.updateLog.push(entry);
      if (timings.updateLog.length > 500) timings.updateLog.shift();
      // Leaflet redraws the canvas in the next animation frame, in a callback asked
      // for during the apply: this one runs after it, so the time since the frame
      // began is the redraw. A canvas only records what is drawn, its pixels are made
      // when the frame is shown: with `countRaster` on, reading a pixel makes them here,
      // so the redraw counts them (never on by itself: on a GPU canvas a read stalls).
      requestAnimationFrame((frame) => {
        if (timings.countRaster) renderer._ctx.getImageData(0, 0, 1, 1);
        entry.drawMs = performance.now() - frame;
      });
    }
    if (!$('problem').hidden) showProblem('');
    setText($('updated'), `live · ${fmtTime(new Date().toISOString()).slice(11)}`);
  }

  // ---- the vehicle panel --------------------------------------------------------

  function select(id, pan) {
    selectedId = id;
    const e = vehicles.get(id);
    if (!e) return;
    const v = e.v;
    if (v.position) {
      const ll = L.latLng(v.position.lat, v.position.lon);
      highlight.setLatLng(ll).addTo(map);
      if (pan) map.panTo(ll);
    }
    $('replay-vehicle').value = id;
    showVehicle();
    loadVehicleAlerts(id).catch(onFail);
  }

  const hms = (s) => {
    const t = Math.max(0, Math.round(s));
    return `${Math.floor(t / 3600)}:${pad(Math.floor((t % 3600) / 60))}:${pad(t % 60)}`;
  };

  /** Driving figures now: while the vehicle drives, the time since its last fix counts
   *  (up to a break's length: a vehicle silent that long has taken one). */
  function drivingNow(e) {
    const d = e.v.driving;
    if (!d) return null;
    const since = Math.max(0, (Date.now() - Date.parse(d.as_of)) / 1000);
    const run = d.moving && d.continuous_s > 0 && since < breakS ? since : 0;
    return {
      continuous: d.continuous_s + run,
      left: Math.max(0, d.continuous_left_s - run),
      daily: d.daily_s + run,
      dailyLeft: Math.max(0, d.daily_left_s - run),
      counting: run > 0,
    };
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
    const d = v.driving || {};
    $('vehicle-title').textContent = v.vehicle_id;
    const field = (name, text) => el('span', { dataset: { field: name } }, text);
    const rows = [
      ['Status', el('span', { className: `status ${v.status}` }, s.label)],
      ['Driver', d.driver_id || p.driver_id || (v.driving ? 'no card' : null)],
      ['Continuous', v.driving ? field('continuous', '') : null],
      ['Left before 4 h', v.driving ? field('continuous-left', '') : null],
      ['Today', v.driving ? field('daily', '') : null],
      ['Route', v.route_id ? `${v.route_id} · ${v.on_route === false ? 'OFF ROUTE' : v.on_route ? 'on route' : '–'}` : null],
      ...tripRows(v.trip, field),
      ['Plate', v.plate],
      ['Cooperative', v.cooperative_id],
      ['Class', v.class],
      ['Last fix', `${fmtTime(p.ts)} (UTC${offsetLabel})`],
      ['Speed', p.speed_kmh != null ? `${p.speed_kmh.toFixed(0)} km/h` : null],
      ['Heading', p.heading_deg != null ? `${p.heading_deg.toFixed(0)}°` : null],
      ['Position', p.lat != null ? `${p.lat.toFixed(5)}, ${p.lon.toFixed(5)}` : null],
      ['Registered', v.registered ? 'yes' : 'no'],
    ];
    $('vehicle-details').replaceChildren(...rows.filter(([, x]) => x != null && x !== '')
      .flatMap(([k, x]) => [el('dt', {}, k), el('dd', {}, x)]));
    tickDriving();
    $('vehicle-panel').hidden = false;
    // Until the details arrive, the live list's open alerts stand in.
    if ($('vehicle-alerts').dataset.vehicle !== v.vehicle_id) {
      renderAlertList($('vehicle-alerts'), v.open_alerts.map((a) => ({ ...a, vehicle_id: v.vehicle_id, status: 'open' })),
        'No open alerts.');
      $('vehicle-alerts').dataset.vehicle = v.vehicle_id;
    }
  }

  /** A bus's scheduled trip in its panel: trip (and route), headsign, next stop, delay;
   *  nothing for a vehicle without one. */
  function tripRows(t, field) {
    if (!t) return [];
    return [
      ['Trip', field('trip', `${t.trip_id} · route ${t.route_id}`)],
      ['Headsign', t.headsign ? field('headsign', t.headsign) : null],
      ['Next stop', t.next_stop_id ? field('next-stop', t.next_stop_name || t.next_stop_id)
        : field('next-stop', 'last stop passed')],
      ['Delay', t.delay_s != null ? field('delay', delayText(t.delay_s)) : null],
    ];
  }

  /** "3 min late", "on time" (under a minute either way), "1 min early". */
  function delayText(s) {
    if (Math.abs(s) < 60) return 'on time';
    const m = Math.round(Math.abs(s) / 60);
    return `${m} min ${s > 0 ? 'late' : 'early'}`;
  }

  /** Every second: the selected vehicle's driving figures, counting down while it drives. */
  function tickDriving() {
    const e = vehicles.get(selectedId);
    const f = e && drivingNow(e);
    if (!f) return;
    const set = (name, text, cls) => {
      const x = document.querySelector(`#vehicle-details [data-field="${name}"]`);
      if (x) {
        x.textContent = text;
        x.className = cls || '';
      }
    };
    set('continuous', hms(f.continuous));
    set('continuous-left', hms(f.left), f.left <= 0 ? 'over' : f.left < 1800 ? 'low' : f.counting ? 'counting' : '');
    set('daily', `${hms(f.daily)} (${hms(f.dailyLeft)} left of 10 h)`);
  }
  setInterval(tickDriving, 1000);

  async function loadVehicleAlerts(id) {
    const { alerts } = await api(`/api/v1/alerts?vehicle=${encodeURIComponent(id)}&status=open&limit=50`);
    if (id !== selectedId) return;
    renderAlertList($('vehicle-alerts'), alerts, 'No open alerts.');
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

  // ---- alerts: violations first, new ones announced, acknowledged here -----------

  /** id → alert (as the stream sends it, with `acknowledged`). */
  const alerts = new Map();
  /** Alerts announced since the page loaded and not yet acknowledged. */
  const announced = new Set();
  const LEVEL_RANK = { violation: 0, warning: 1, info: 2 };
  let levelFilter = localStorage.getItem('fleetwatch.level') || 'warning';
  $('alert-level').value = levelFilter;
  $('alert-level').addEventListener('change', (ev) => {
    levelFilter = ev.target.value;
    localStorage.setItem('fleetwatch.level', levelFilter);
    renderAlerts();
  });
  $('ack-by').value = localStorage.getItem('fleetwatch.ackBy') || '';
  $('ack-by').addEventListener('change', (ev) => localStorage.setItem('fleetwatch.ackBy', ev.target.value.trim()));
  if ('Notification' in window && Notification.permission === 'default') {
    $('notify').hidden = false;
    $('notify').addEventListener('click', () => {
      Notification.requestPermission().then(() => { $('notify').hidden = true; });
      sound(); // a click also lets the page play sound
    });
  }

  function applyAlerts(list, full) {
    // An update without alerts changes nothing the lists show.
    if (!full && !list.length) return;
    if (full) alerts.clear();
    const fresh = [];
    for (const a of list) {
      const old = alerts.get(a.id);
      if (a.retracted_at) {
        alerts.delete(a.id);
        announced.delete(a.id);
        continue;
      }
      alerts.set(a.id, a);
      // Announced: a violation or warning that opened while the page is live.
      if (!full && live && !old && a.status === 'open' && !a.acknowledged
          && (a.level === 'violation' || a.level === 'warning')) {
        announced.add(a.id);
        fresh.push(a);
      }
      if (a.acknowledged) announced.delete(a.id);
    }
    // Only the newest few hundred are kept on the page.
    if (alerts.size > 500) {
      const keep = [...alerts.values()].sort((x, y) => Date.parse(y.start) - Date.parse(x.start)).slice(0, 500);
      alerts.clear();
      for (const a of keep) alerts.set(a.id, a);
    }
    renderAlerts();
    if (fresh.length) announce(fresh);
    // The selected vehicle's own open alerts follow.
    if (selectedId && !full && list.some((a) => a.vehicle_id === selectedId)) {
      loadVehicleAlerts(selectedId).catch(onFail);
    }
  }

  function announce(list) {
    sound();
    if ('Notification' in window && Notification.permission === 'granted') {
      for (const a of list.slice(0, 3)) {
        try {
          new Notification(`${a.level}: ${a.kind.replace(/_/g, ' ')} · ${a.vehicle_id}`, {
            body: `${fmtTime(a.start)} ${alertFacts(a)}`, tag: a.id,
          });
        } catch (e) { /* not allowed here: the page still shows it */ }
      }
    }
  }

  let audio = null;
  /** A short two-tone beep (WebAudio); silent where the browser does not allow it yet. */
  function sound() {
    try {
      audio = audio || new AudioContext();
      if (audio.state === 'suspended') audio.resume();
      const o = audio.createOscillator();
      const g = audio.createGain();
      o.frequency.setValueAtTime(880, audio.currentTime);
      o.frequency.setValueAtTime(660, audio.currentTime + 0.15);
      g.gain.setValueAtTime(0.15, audio.currentTime);
      g.gain.exponentialRampToValueAtTime(0.001, audio.currentTime + 0.35);
      o.connect(g).connect(audio.destination);
      o.start();
      o.stop(audio.currentTime + 0.4);
    } catch (e) { /* no audio: the highlight remains */ }
  }

  /** Violations first (open before closed, newest first), then warnings; info events
   *  folded under their count. */
  function renderAlerts() {
    const min = LEVEL_RANK[levelFilter] ?? 2;
    const all = [...alerts.values()];
    const rank = (a) => [LEVEL_RANK[a.level] ?? 3, a.status === 'open' ? 0 : 1, -Date.parse(a.start)];
    const cmp = (x, y) => {
      const a = rank(x);
      const b = rank(y);
      return a[0] - b[0] || a[1] - b[1] || a[2] - b[2];
    };
    const shown = all.filter((a) => (LEVEL_RANK[a.level] ?? 3) <= Math.min(min, 1)).sort(cmp);
    const info = all.filter((a) => a.level === 'info').sort(cmp);
    const open = all.filter((a) => a.status === 'open' && a.level !== 'info').length;
    $('alert-count').textContent = `(${open} open)`;
    renderAlertList($('alert-list'), shown, 'No warnings or violations.');
    const fold = $('info-fold');
    fold.hidden = min < 2 || !info.length;
    $('info-count').textContent = `${info.length} info event${info.length === 1 ? '' : 's'}`;
    if (fold.open) renderAlertList($('info-list'), info, '');
  }
  $('info-fold').addEventListener('toggle', () => renderAlerts());

  function alertFacts(a) {
    const d = a.details || {};
    return [
      d.max_speed_kmh != null && `max ${Math.round(d.max_speed_kmh)} km/h`,
      d.limit_kmh != null && `limit ${d.limit_kmh}`,
      d.zone_id && `zone ${d.zone_id}`,
      d.distance_m != null && `${Math.round(d.distance_m)} m off`,
      d.driving_s != null && `driving ${hms(d.driving_s)}`,
    ].filter(Boolean).join(', ');
  }

  /** A list of alerts; a click pans to where it happened; open warnings and violations
   *  get an acknowledge button. */
  function renderAlertList(ul, list, empty) {
    if (!list.length) {
      ul.replaceChildren(...(empty ? [el('li', { className: 'empty' }, empty)] : []));
      return;
    }
    ul.replaceChildren(...list.map((a) => {
      const cls = [a.level, a.status || '', announced.has(a.id) ? 'announced' : '',
        a.acknowledged ? 'acknowledged' : ''].filter(Boolean).join(' ');
      const li = el('li', { className: cls, title: a.id, dataset: { alert: a.id } },
        el('span', { className: 'when' }, fmtTime(a.start).slice(5, 16)), ' ',
        el('b', {}, a.kind.replace(/_/g, ' ')), ` ${a.vehicle_id}`,
        a.status === 'closed' ? ' (closed)' : '',
        alertFacts(a) ? el('div', {}, alertFacts(a)) : '');
      if (a.level !== 'info' && a.status === 'open' && alerts.has(a.id)) {
        if (alerts.get(a.id).acknowledged) {
          li.prepend(el('span', { className: 'ack-done' }, '✓ acknowledged'));
        } else {
          const b = el('button', { type: 'button', className: 'ack' }, 'Acknowledge');
          b.addEventListener('click', (ev) => {
            ev.stopPropagation();
            acknowledge(a.id, b).catch(onFail);
          });
          li.prepend(b);
        }
      }
      li.addEventListener('click', () => showAlert(a));
      return li;
    }));
  }

  async function acknowledge(id, button) {
    button.disabled = true;
    const by = $('ack-by').value.trim() || 'dispatcher (map)';
    let r;
    try {
      r = await fetch(`/api/v1/alerts/${encodeURIComponent(id)}/ack`, {
        method: 'POST',
        headers: { Authorization: `Bearer ${token}`, 'Content-Type': 'application/json' },
        body: JSON.stringify({ by }),
      });
    } catch (e) {
      button.disabled = false;
      throw noteRequest(`acknowledge ${id}: ${e.message}`);
    }
    if (!r.ok) {
      button.disabled = false;
      const body = await r.json().catch(() => ({}));
      throw noteRequest(`acknowledge ${id}: ${r.status} ${body.error || r.statusText}`);
    }
    const a = alerts.get(id);
    if (a) a.acknowledged = true;
    announced.delete(id);
    renderAlerts();
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
    if (c.driving_break_s) breakS = c.driving_break_s;
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
      loadStops().catch(onFail);
      streamLive();
    });
  }

  loadConfig().then(() => (token ? start() : askToken('An API token is needed to see the fleet.')),
    (e) => noteError(String(e)));

  // Read-only hooks for tests and the console.
  window.fleetwatch = Object.freeze({
    errors: () => errors.slice(),
    requestErrors: () => requestErrors.slice(),
    /** Vehicles with a position on the map (several at one spot share a marker). */
    vehicleCount: () => spotOf.size,
    markerCount: () => vehicleLayer.getLayers().length,
    vehicleIds: () => [...vehicles.keys()],
    alertIds: () => [...alerts.keys()],
    announced: () => [...announced],
    live: () => live,
    geoFeatureCount: () => geoLayer.getLayers().length,
    /** Stops loaded, and those drawn now (0 below street zoom). */
    stopsLoaded: () => stopLayer.getLayers().length,
    stopsDrawn: () => (map.hasLayer(stopLayer) ? stopLayer.getLayers().length : 0),
    stopLabelsShown: () => map.getZoom() >= STOP_LABEL_ZOOM,
    zoom: () => map.getZoom(),
    selected: () => selectedId,
    timings: () => ({ ...timings, updateLog: timings.updateLog.map((e) => ({ ...e })) }),
    /** Whether the redraw in `timings().updateLog` includes making the pixels (a
     *  measurement's switch). */
    countRaster(on) { timings.countRaster = !!on; },
    /** Page coordinates (CSS px) of a vehicle's marker, for clicking it. */
    vehiclePoint(id) {
      const s = spots.get(spotOf.get(id));
      if (!s || !s.marker) return null;
      const ll = s.marker.getLatLng();
      return window.fleetwatch.pagePoint(ll.lat, ll.lng);
    },
    /** Page coordinates (CSS px) of a place on the map. */
    pagePoint(lat, lon) {
      const p = map.latLngToContainerPoint([lat, lon]);
      const r = map.getContainer().getBoundingClientRect();
      return { x: Math.round(r.left + p.x), y: Math.round(r.top + p.y) };
    },
    /** The marker a vehicle is on: its Leaflet id, place, vehicles, label and colour. */
    vehicleMarker(id) {
      const s = spots.get(spotOf.get(id));
      const m = s && s.marker;
      if (!m) return null;
      const ll = m.getLatLng();
      return {
        id: L.stamp(m), lat: ll.lat, lon: ll.lng, ids: m.options.ids.slice(),
        label: m.options.label, color: m.options.fillColor, radius: m.options.radius,
      };
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
