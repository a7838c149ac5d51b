//! The OpenAPI 3.1 description of `/api/v1`, written by hand.

use axum::Json;
use serde_json::{json, Value};

use super::alerts::{KINDS, LEVELS, MAX_LIMIT, STATUSES};

fn q(name: &str, desc: &str, schema: Value) -> Value {
    json!({ "name": name, "in": "query", "required": false, "description": desc, "schema": schema })
}

fn time(name: &str, desc: &str) -> Value {
    q(
        name,
        desc,
        json!({ "type": "string", "format": "date-time" }),
    )
}

fn errors(codes: &[&str]) -> Value {
    let mut m = serde_json::Map::new();
    for c in codes {
        let desc = match *c {
            "400" => "Invalid parameter or body, or range/row cap exceeded",
            "401" => "Missing or invalid bearer token",
            "403" => "The token's cooperative may not see this",
            "404" => "Unknown (or invisible) resource",
            "409" => "Conflicts with what is stored (a name taken, a destination of the configuration file)",
            "429" => "This token already has http.max_heavy_requests_per_token (default 4) track pages or reports in progress: retry after Retry-After seconds",
            _ => "Error",
        };
        m.insert(
            c.to_string(),
            json!({ "description": desc, "content": { "application/json": {
                "schema": { "$ref": "#/components/schemas/Error" } } } }),
        );
    }
    Value::Object(m)
}

fn with(ok: Value, codes: &[&str]) -> Value {
    let mut r = errors(codes);
    r["200"] = ok;
    r
}

/// The document.
pub fn document() -> Value {
    let vehicle_path =
        json!({ "name": "id", "in": "path", "required": true, "schema": { "type": "string" } });
    // Apart: the document is too deep for one `json!` within the default recursion limit.
    let ingest_incidents = json!({ "type": "array", "description": "Ingest incidents in the range, for the whole service \
                        (kind mqtt_session_lost: the broker came back without fleetwatch's session, so messages it had acknowledged \
                        to devices may be missing beyond what data gaps show). CSV: a second table after a blank line, \
                        ingest_incident_at,kind,broker,connection,detail, only when there are incidents.",
                        "items": { "type": "object", "properties": {
                            "at": { "type": "string", "format": "date-time" }, "kind": { "type": "string", "enum": ["mqtt_session_lost"] },
                            "broker": { "type": "string", "description": "Broker URL without password" },
                            "connection": { "type": "string", "description": "MQTT client id" },
                            "detail": { "type": "string" } } } });
    let computed_from = json!({ "type": "object", "properties": {
                        "roll_up_days": { "type": ["object", "null"], "properties": { "from": { "type": "string", "format": "date" }, "to": { "type": "string", "format": "date" } } },
                        "roll_up_utc_offset": { "type": ["string", "null"] },
                        "raw": { "type": "array", "items": { "type": "object", "properties": {
                            "from": { "type": "string", "format": "date-time" }, "to": { "type": "string", "format": "date-time" } } } } } });
    let counts = json!({ "type": "object", "properties": {
                    "distance_km": { "type": "number" }, "trips": { "type": "integer" },
                    "overspeed_counted": { "type": "integer" },
                    "overspeed_by_band": { "type": "object", "properties": { "1": { "type": "integer" }, "2": { "type": "integer" }, "3": { "type": "integer" }, "4": { "type": "integer" } } },
                    "overspeed_not_counted": { "type": "integer" }, "overspeed_per_1000km": { "type": ["number", "null"] },
                    "at_or_over_threshold": { "type": "boolean" }, "near_threshold": { "type": "boolean" },
                    "continuous_driving_violations": { "type": "integer" }, "daily_driving_violations": { "type": "integer" },
                    "weekly_driving_violations": { "type": "integer" }, "off_route_violations": { "type": "integer" },
                    "restricted_zone_violations": { "type": "integer" }, "no_signal": { "type": "integer" },
                    "data_gaps": { "type": "integer" }, "data_gap_s": { "type": "number" },
                    "fixes": { "type": "integer" }, "active_s": { "type": "number" },
                    "data_completeness": { "type": ["number", "null"], "minimum": 0, "maximum": 1 },
                    "late_fixes": { "type": "integer" },
                    "late_p50_s": { "type": ["number", "null"] }, "late_p99_s": { "type": ["number", "null"] } } });
    let mut doc = json!({
        "openapi": "3.1.0",
        "info": {
            "title": "fleetwatch API",
            "version": "1",
            "description": "Live positions, tracks, alerts and compliance reports of a fleet. \
                Every time is RFC 3339. A `cooperative` token sees only its own cooperative \
                (403 when asking for another one explicitly; lists are filtered); \
                `regulator` and `admin` tokens see every cooperative."
        },
        "security": [{ "bearer": [] }],
        "paths": {
            "/api/v1/vehicles": { "get": {
                "summary": "Visible vehicles with latest position, status and open alerts",
                "description": "status: no_signal (open no_signal alert), off_route (open off_route alert), moving (> 3 km/h), stopped, or unknown (no fix).",
                "responses": with(json!({ "description": "Vehicles", "content": { "application/json": {
                    "schema": { "$ref": "#/components/schemas/VehicleList" } } } }), &["401"])
            }},
            "/api/v1/vehicles/{id}": {
                "put": {
                    "summary": "Register or change a vehicle (admin); the running pipeline uses it from the next fix",
                    "parameters": [vehicle_path],
                    "requestBody": { "required": true, "content": { "application/json": { "schema": {
                        "type": "object", "required": ["cooperative_id", "class"], "additionalProperties": false,
                        "properties": {
                            "cooperative_id": { "type": "string" },
                            "class": { "type": "string", "enum": ["bus", "coach", "container", "tractor", "light_truck", "car"] },
                            "plate": { "type": "string" },
                            "route_id": { "type": "string", "description": "A route id of the loaded routes" },
                            "device_id": { "type": "string", "description": "The GPS device fitted (IMEI, JT/T 808 terminal phone number, OsmAnd app id; 1-32 letters, digits, - or _); taken off any other vehicle that had it" } } } } } },
                    "responses": with(json!({ "description": "The vehicle as registered" }), &["400", "401", "403"])
                },
                "delete": {
                    "summary": "Take a vehicle off the registry (admin); its data stays, its new fixes are flagged unregistered",
                    "parameters": [vehicle_path],
                    "responses": { "204": { "description": "Deregistered" }, "401": { "description": "No valid token" },
                                   "403": { "description": "Not an admin" }, "404": { "description": "Not registered" } }
                }
            },
            "/api/v1/vehicles/{id}/track": { "get": {
                "summary": "Fixes of a vehicle in a range (at most http.max_track_days, default 31), in pages of at most 500,000 fixes",
                "description": "When the range holds more fixes than `limit`, the answer is the first page: the `X-Next-From` header (and `next_from` in GeoJSON properties) gives the `from` of the next page.",
                "parameters": [
                    vehicle_path,
                    time("from", "Start, inclusive (default: 24 h before `to`)"),
                    time("to", "End, exclusive (default: now)"),
                    q("format", "geojson: one Feature (LineString) with times, speeds and trips in properties; geojson_points: a FeatureCollection of points; gpx: GPX 1.1 trk; csv: a header and one row per fix",
                      json!({ "type": "string", "enum": ["geojson", "geojson_points", "gpx", "csv"], "default": "geojson" })),
                    q("simplify_m", "Douglas-Peucker tolerance in metres (0: every fix)", json!({ "type": "number", "minimum": 0 })),
                    q("limit", "Most fixes in this page", json!({ "type": "integer", "minimum": 1, "maximum": 500000, "default": 500000 })),
                ],
                "responses": with(json!({ "description": "The track", "content": {
                    "application/geo+json": { "schema": { "type": "object" } },
                    "application/gpx+xml": { "schema": { "type": "string" } },
                    "text/csv": { "schema": { "type": "string" } } } }), &["400", "401", "403", "404", "429"])
            }},
            "/api/v1/vehicles/{id}/trips": { "get": {
                "summary": "Trips of a vehicle starting in a range (at most http.max_track_days), and the stops between consecutive trips (start, end, duration_s, lat, lon where the trip before ended)",
                "parameters": [vehicle_path, time("from", "Start, inclusive"), time("to", "End, exclusive")],
                "responses": with(json!({ "description": "Trips", "content": { "application/json": {
                    "schema": { "type": "object", "properties": { "trips": { "type": "array", "items": { "$ref": "#/components/schemas/Trip" } } } } } } }),
                    &["400", "401", "403", "404"])
            }},
            "/api/v1/devices": { "get": {
                "summary": "Devices the gateway has heard since this instance started: protocol, vehicle, status (registered, unregistered, refused), connected, remote address, last connection and frame, counts, model and firmware where the protocol says them",
                "description": "A cooperative token sees its own devices; regulator and admin tokens every device, refused unknown devices included.",
                "responses": with(json!({ "description": "Devices", "content": { "application/json": {
                    "schema": { "type": "object", "properties": { "devices": { "type": "array", "items": { "$ref": "#/components/schemas/Device" } } } } } } }), &["401"])
            }},
            "/api/v1/alerts": { "get": {
                "summary": "Alerts, newest first",
                "parameters": [
                    q("cooperative", "Cooperative id", json!({ "type": "string" })),
                    q("vehicle", "Vehicle id", json!({ "type": "string" })),
                    q("driver", "Driver licence number", json!({ "type": "string" })),
                    q("kind", "Alert kind", json!({ "type": "string", "enum": KINDS })),
                    q("level", "Level", json!({ "type": "string", "enum": LEVELS })),
                    q("status", "Status", json!({ "type": "string", "enum": STATUSES })),
                    q("min_severity", "Overspeed severity band (Decree 168/2024 art. 6) or higher", json!({ "type": "integer", "minimum": 1, "maximum": 4 })),
                    time("from", "Alerts starting at or after"),
                    time("to", "Alerts starting before"),
                    q("limit", "At most this many", json!({ "type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": 100 })),
                    q("include_retracted", "Also alerts a recomputation retracted (a late fix showed the episode did not happen); they carry retracted_at and retraction_reason", json!({ "type": "boolean", "default": false })),
                ],
                "responses": with(json!({ "description": "Alerts", "content": { "application/json": {
                    "schema": { "type": "object", "properties": {
                        "count": { "type": "integer" },
                        "alerts": { "type": "array", "items": { "$ref": "#/components/schemas/Alert" } } } } } } }),
                    &["400", "401", "403"])
            }},
            "/api/v1/alerts/{id}/ack": { "post": {
                "summary": "Acknowledge an alert: adds an entry to the cooperative's reminder log (channel api, status acknowledged). Cooperative tokens (own alerts) and admin tokens; regulator tokens are read-only (403).",
                "parameters": [{ "name": "id", "in": "path", "required": true, "schema": { "type": "string" } }],
                "requestBody": { "required": true, "content": { "application/json": { "schema": {
                    "type": "object", "required": ["by"], "additionalProperties": false,
                    "properties": { "by": { "type": "string", "maxLength": 200 }, "note": { "type": "string", "maxLength": 2000 } } } } } },
                "responses": {
                    "201": { "description": "The reminder log entry", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Reminder" } } } },
                    "400": errors(&["400"])["400"], "401": errors(&["401"])["401"],
                    "403": errors(&["403"])["403"], "404": errors(&["404"])["404"]
                }
            }},
            "/api/v1/reports/compliance": { "get": {
                "summary": "Compliance statistics per vehicle, per driver and in total",
                "description": "Counts are of alerts, trips and data gaps whose start is in the range. \
                    Overspeed: only violations with excess over 5 km/h are counted (by severity band 1-4, Decree 168/2024); \
                    overspeed_per_1000km = counted / distance_km * 1000; at_or_over_threshold when >= threshold_per_1000km (default 5, Decree 10/2020 art. 22); \
                    near_threshold when >= near_per_1000km (default 4) and under the threshold. \
                    fixes: fixes stored with their time in the range. \
                    distance_km: path length of the vehicle's accepted fixes in event-time order (straight segments between consecutive fixes, \
                    jump-flagged fixes left out), closed trip or not and whatever order the fixes arrived in; a segment crossing the range's edge counts \
                    in proportion to time; for a driver, a segment counts for the driver of its earlier fix. \
                    late_fixes: fixes with their time in the range flagged late (older than what the rules had applied by more than the reorder window); \
                    late_p50_s / late_p99_s: nearest-rank percentiles of their lateness (received_at - ts, seconds) from fixed buckets \
                    (under 1 s, then [2^((k-1)/8), 2^(k/8)) s), reported as the bucket's upper edge (true value at most 8.3 % below); null without late fixes. \
                    data_completeness = 1 - data_gap_s / active_s, where a data gap is the time between two consecutive fixes \
                    further apart than the sending cadence (30 s when both are moving, 900 s otherwise; Circular 09/2015), \
                    data_gap_s sums the gaps starting in the range, and active_s runs from the vehicle's first fix in the range \
                    to its last fix or the end of the last gap starting in the range, whichever is later; null when active_s is 0. \
                    Totals: 1 - sum(data_gap_s) / sum(active_s). \
                    ingest_incidents lists events (such as a broker that lost fleetwatch's session) in the range that may have lost data beside the data gaps. \
                    Whole local days come from daily roll-ups and partial days from the raw data (computed_from says which); both give the same figures.",
                "parameters": [
                    q("cooperative", "Cooperative id (a cooperative token: its own; others: every cooperative if absent)", json!({ "type": "string" })),
                    q("month", "Local calendar month YYYY-MM (instead of from/to)", json!({ "type": "string", "pattern": "^[0-9]{4}-[0-9]{2}$" })),
                    time("from", "Start, inclusive (with to)"),
                    time("to", "End, exclusive (with from; at most 366 days)"),
                    q("utc_offset", "Offset of local time for month (default +07:00, Asia/Ho_Chi_Minh)", json!({ "type": "string", "default": "+07:00" })),
                    q("format", "json or csv", json!({ "type": "string", "enum": ["json", "csv"], "default": "json" })),
                    q("threshold_per_1000km", "Revocation threshold", json!({ "type": "number", "default": 5 })),
                    q("near_per_1000km", "Near-threshold mark", json!({ "type": "number", "default": 4 })),
                ],
                "responses": with(json!({ "description": "The report", "content": {
                    "application/json": { "schema": { "$ref": "#/components/schemas/Report" } },
                    "text/csv": { "schema": { "type": "string" } } } }), &["400", "401", "403", "429"])
            }},
            "/api/v1/geo": { "get": {
                "summary": "Routes and zones in use, as GeoJSON (lon/lat degrees)",
                "description": "One FeatureCollection: routes (LineString or MultiLineString; properties layer = route, route_id, name, corridor_m, length_m) \
                    sorted by id, then zones (Polygon or MultiPolygon; properties layer = zone, zone_id, name, kind, classes, banned_hours as local \"HH:MM-HH:MM\", speed_limit_kmh). \
                    Every token sees every zone; a cooperative token sees only the routes registered to its own vehicles. Reflects reloads (SIGHUP, /admin/reload-geo).",
                "responses": with(json!({ "description": "Routes and zones", "content": {
                    "application/geo+json": { "schema": { "type": "object" } } } }), &["401"])
            }},
            "/api/v1/stops": { "get": {
                "summary": "Stops of the scheduled (GTFS) trips of the routes in use, as GeoJSON Points (lon/lat degrees)",
                "description": "One FeatureCollection sorted by stop_id, each stop once (properties layer = stop, stop_id, name, route_ids: the routes whose trips stop there). \
                    A cooperative token sees only the stops of the routes registered to its own vehicles. Reflects reloads (SIGHUP, /admin/reload-geo).",
                "responses": with(json!({ "description": "Stops", "content": {
                    "application/geo+json": { "schema": { "type": "object" } } } }), &["401"])
            }},
            "/api/v1/openapi.json": { "get": {
                "summary": "This document", "security": [],
                "responses": { "200": { "description": "OpenAPI 3.1", "content": { "application/json": {} } } }
            }}
        },
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer",
                "description": "Created with `fleetwatch token create --role cooperative|regulator|admin [--cooperative ID]`" } },
            "schemas": {
                "Error": { "type": "object", "required": ["error"], "properties": { "error": { "type": "string" } } },
                "Position": { "type": "object", "properties": {
                    "ts": { "type": "string", "format": "date-time" }, "lat": { "type": "number" }, "lon": { "type": "number" },
                    "speed_kmh": { "type": "number" }, "heading_deg": { "type": ["number", "null"] }, "driver_id": { "type": ["string", "null"] } } },
                "VehicleList": { "type": "object", "properties": { "vehicles": { "type": "array", "items": { "type": "object", "properties": {
                    "vehicle_id": { "type": "string" }, "cooperative_id": { "type": "string" }, "plate": { "type": ["string", "null"] },
                    "class": { "type": ["string", "null"] }, "route_id": { "type": ["string", "null"] }, "registered": { "type": "boolean" },
                    "device_id": { "type": "string", "description": "The GPS device fitted, when registered with one" },
                    "last_seen": { "type": ["string", "null"], "format": "date-time" },
                    "position": { "oneOf": [{ "$ref": "#/components/schemas/Position" }, { "type": "null" }] },
                    "status": { "type": "string", "enum": ["no_signal", "off_route", "moving", "stopped", "unknown"] },
                    "open_alerts": { "type": "array", "items": { "type": "object", "properties": {
                        "id": { "type": "string" }, "kind": { "type": "string" }, "level": { "type": "string" },
                        "start": { "type": "string", "format": "date-time" } } } } } } } } },
                "Device": { "type": "object", "properties": {
                    "protocol": { "type": "string", "enum": ["gt06", "jt808", "teltonika", "osmand"] }, "device_id": { "type": "string" },
                    "vehicle": { "type": ["string", "null"] }, "cooperative": { "type": ["string", "null"] },
                    "status": { "type": "string", "enum": ["registered", "unregistered", "refused"] }, "connected": { "type": "boolean" },
                    "remote": { "type": "string" }, "last_connection": { "type": "string", "format": "date-time" },
                    "last_frame": { "type": ["string", "null"], "format": "date-time" }, "connections": { "type": "integer" },
                    "frames": { "type": "integer" }, "positions": { "type": "integer" },
                    "model": { "type": ["string", "null"] }, "firmware": { "type": ["string", "null"] } } },
                "Trip": { "type": "object", "properties": {
                    "start": { "type": "string", "format": "date-time" }, "end": { "type": "string", "format": "date-time" },
                    "driver_id": { "type": ["string", "null"] }, "distance_m": { "type": "number" }, "max_speed_kmh": { "type": "number" } } },
                "Alert": { "type": "object", "properties": {
                    "id": { "type": "string" }, "vehicle_id": { "type": "string" }, "cooperative_id": { "type": ["string", "null"] },
                    "driver_id": { "type": ["string", "null"] }, "kind": { "type": "string", "enum": KINDS },
                    "level": { "type": "string", "enum": LEVELS }, "status": { "type": "string", "enum": STATUSES },
                    "severity": { "type": ["integer", "null"], "minimum": 1, "maximum": 4 },
                    "start": { "type": "string", "format": "date-time" }, "end": { "type": ["string", "null"], "format": "date-time" },
                    "lat": { "type": "number" }, "lon": { "type": "number" }, "details": { "type": "object" },
                    "retracted_at": { "type": ["string", "null"], "format": "date-time", "description": "Set when a recomputation for late fixes showed the episode did not happen (listed only with include_retracted=true)" },
                    "retraction_reason": { "type": ["string", "null"] } } },
                "Reminder": { "type": "object", "properties": {
                    "id": { "type": "integer" }, "alert_id": { "type": "string" }, "at": { "type": "string", "format": "date-time" },
                    "channel": { "type": "string" }, "status": { "type": "string" }, "actor": { "type": "string" }, "note": { "type": ["string", "null"] } } },
                "Counts": counts,
                "Report": { "type": "object", "properties": {
                    "cooperative": { "type": ["string", "null"] }, "from": { "type": "string", "format": "date-time" },
                    "to": { "type": "string", "format": "date-time" }, "month": { "type": ["string", "null"] },
                    "threshold_per_1000km": { "type": "number" }, "near_per_1000km": { "type": "number" },
                    "vehicles": { "type": "array", "items": { "allOf": [{ "$ref": "#/components/schemas/Counts" }, { "type": "object", "properties": {
                        "vehicle_id": { "type": "string" }, "cooperative_id": { "type": "string" }, "plate": { "type": ["string", "null"] }, "class": { "type": ["string", "null"] } } }] } },
                    "drivers": { "type": "array", "items": { "type": "object", "properties": {
                        "driver_id": { "type": "string" }, "distance_km": { "type": "number" },
                        "continuous_driving_violations": { "type": "integer" },
                        "daily_driving_violations": { "type": "integer" }, "weekly_driving_violations": { "type": "integer" } } } },
                    "totals": { "type": "object", "properties": {
                        "vehicles": { "type": "integer" }, "vehicles_at_or_over_threshold": { "type": "integer" },
                        "vehicles_near_threshold": { "type": "integer" }, "counts": { "$ref": "#/components/schemas/Counts" } } },
                    "computed_from": computed_from,
                    "definitions": { "type": "object", "properties": { "data_completeness": { "type": "string" },
                        "distance": { "type": "string" }, "lateness": { "type": "string" } } },
                    "ingest_incidents": ingest_incidents } }
            }
        }
    });
    add_deliveries(&mut doc);
    add_live(&mut doc);
    add_transit(&mut doc);
    doc
}

/// What buses ran (issue 11): runs of scheduled trips, their stop events, and the
/// live trip of a vehicle in the live list.
fn add_transit(doc: &mut Value) {
    let s = |t: &str| json!({ "type": t });
    let n = |t: &str| json!({ "type": [t, "null"] });
    let date = json!({ "type": "string", "format": "date" });
    let ts = json!({ "type": "string", "format": "date-time" });
    let ts_n = json!({ "type": ["string", "null"], "format": "date-time" });
    let limit = q(
        "limit",
        "At most this many",
        json!({ "type": "integer", "minimum": 1, "maximum": super::transit::MAX_LIMIT, "default": super::transit::DEFAULT_LIMIT }),
    );
    doc["paths"]["/api/v1/trip-runs"] = json!({ "get": {
        "summary": "Runs of scheduled (GTFS) trips that ended (completed or abandoned), newest first",
        "description": "The trip a bus runs now is stored once it ends; until then it is the `trip` of the vehicle in GET /api/v1/vehicles. Pages: pass `next_cursor` as `cursor` for the next page (null on the last one).",
        "parameters": [
            q("cooperative", "Cooperative id", s("string")),
            q("vehicle", "Vehicle id", s("string")),
            q("route", "GTFS route_id", s("string")),
            q("trip", "GTFS trip_id", s("string")),
            q("from_date", "First local service date, inclusive", date.clone()),
            q("to_date", "Last local service date, inclusive", date.clone()),
            limit.clone(),
            q("cursor", "next_cursor of the previous page", s("string")),
        ],
        "responses": with(json!({ "description": "Trip runs", "content": { "application/json": { "schema": {
            "type": "object", "properties": { "count": s("integer"), "next_cursor": n("string"),
            "trip_runs": { "type": "array", "items": { "$ref": "#/components/schemas/TripRun" } } } } } } }), &["400", "401", "403"])
    }});
    doc["paths"]["/api/v1/reports/routes"] = json!({ "get": {
        "summary": "Per GTFS route, for a local service date or month (then per day too): trips scheduled, run, completed, short-turned and not run; stops scheduled, served and skipped; punctuality and median deviation; kilometres in service and scheduled",
        "description": super::route_reports::DEFINITIONS,
        "parameters": [
            q("month", "Local month YYYY-MM (per route, a days list); or date", s("string")),
            q("date", "One local service date; or month", date.clone()),
            q("route", "Only this GTFS route_id", s("string")),
            q("cooperative", "Cooperative id (a cooperative token: its own only)", s("string")),
            q("format", "json (default) or csv (per route: a row per day, then the period; last TOTAL)", json!({ "type": "string", "enum": ["json", "csv"] })),
        ],
        "responses": with(json!({ "description": "Route report", "content": {
            "application/json": { "schema": { "$ref": "#/components/schemas/RouteReport" } },
            "text/csv": { "schema": s("string") } } }), &["400", "401", "403", "429"])
    }});
    doc["paths"]["/api/v1/stop-events"] = json!({ "get": {
        "summary": "Arrivals, departures and skipped stops of scheduled trips, in observed order (a vehicle or a trip is required; range at most http.max_track_days)",
        "parameters": [
            q("vehicle", "Vehicle id", s("string")),
            q("trip", "GTFS trip_id", s("string")),
            time("from", "Observed at or after (default: 24 h before to)"),
            time("to", "Observed before (default: now)"),
            limit,
        ],
        "responses": with(json!({ "description": "Stop events", "content": { "application/json": { "schema": {
            "type": "object", "properties": { "count": s("integer"), "from": ts.clone(), "to": ts.clone(),
            "stop_events": { "type": "array", "items": { "$ref": "#/components/schemas/StopEvent" } } } } } } }), &["400", "401"])
    }});
    let feed_params = json!([
        q(
            "format",
            "protobuf (default, application/x-protobuf) or json",
            json!({ "type": "string", "enum": ["protobuf", "json"] })
        ),
        q(
            "max_age_s",
            "Vehicles whose newest fix is at most this old, s",
            json!({ "type": "integer", "minimum": 1, "maximum": super::gtfs_rt::MAX_MAX_AGE_S, "default": super::gtfs_rt::DEFAULT_MAX_AGE_S })
        ),
    ]);
    let feed = |what: &str| {
        with(
            json!({ "description": what, "content": {
        "application/x-protobuf": { "schema": { "type": "string", "format": "binary", "description": "transit_realtime.FeedMessage (gtfs-realtime.proto 2.0)" } },
        "application/json": { "schema": { "type": "object", "description": "The same FeedMessage, field names of the proto, enums by name" } } } }),
            &["400", "401"],
        )
    };
    doc["paths"]["/api/v1/gtfs-rt/vehicle-positions"] = json!({ "get": {
        "summary": "GTFS-realtime vehicle positions (FULL_DATASET): every visible vehicle with a recent fix, its position, bearing, speed (m/s), time, and for a bus on a scheduled trip the TripDescriptor (trip_id, route_id, direction_id, start_date, start_time, SCHEDULED) and next stop (IN_TRANSIT_TO, or STOPPED_AT while standing)",
        "parameters": feed_params.clone(), "responses": feed("Vehicle positions") }});
    doc["paths"]["/api/v1/gtfs-rt/trip-updates"] = json!({ "get": {
        "summary": "GTFS-realtime trip updates (FULL_DATASET): per running trip, the stops behind as observed (stop events, uncertainty 0; SKIPPED when passed) and the stops ahead at the scheduled time plus the current delay (uncertainty 60)",
        "parameters": feed_params, "responses": feed("Trip updates") }});
    let schemas = &mut doc["components"]["schemas"];
    schemas["TripRun"] = json!({ "type": "object", "properties": {
        "vehicle_id": s("string"), "cooperative_id": n("string"),
        "trip_id": s("string"), "route_id": s("string"), "service_date": date.clone(),
        "scheduled_start": ts.clone(), "start": ts.clone(), "end": ts.clone(),
        "confidence": { "type": "integer", "minimum": 0, "maximum": 100 },
        "completed": s("boolean"), "stops_served": s("integer"), "stops_skipped": s("integer"),
        "stops_total": s("integer"),
        "last_delay_s": { "type": ["integer", "null"], "description": "Deviation at the last observed stop, s (late > 0)" },
        "distance_m": { "type": ["number", "null"], "description": "Kilometres in service, as metres along the trip's shape from where the run started to the furthest point reached (null for runs stored by older versions)" } } });
    let counts = json!({
        "trips_scheduled": s("integer"), "trips_run": s("integer"), "trips_completed": s("integer"),
        "trips_short_turned": s("integer"), "trips_not_run": s("integer"), "runs": s("integer"),
        "stops_scheduled": s("integer"), "stops_served": s("integer"), "stops_skipped": s("integer"),
        "stop_events_timed": s("integer"), "stop_events_within_bounds": s("integer"),
        "punctuality": { "type": ["number", "null"], "minimum": 0, "maximum": 1 },
        "median_deviation_s": { "type": ["number", "null"], "description": "Late > 0, s" },
        "km_in_service": s("number"), "km_scheduled": s("number") });
    let mut route = counts.clone();
    route["route_id"] = s("string");
    route["days"] = json!({ "type": "array", "description": "Month reports only", "items": { "$ref": "#/components/schemas/RouteDay" } });
    let mut day = counts.clone();
    day["date"] = date.clone();
    schemas["RouteCounts"] = json!({ "type": "object", "properties": counts });
    schemas["RouteDay"] = json!({ "type": "object", "properties": day });
    schemas["RouteRow"] = json!({ "type": "object", "properties": route });
    schemas["RouteReport"] = json!({ "type": "object", "properties": {
        "month": n("string"), "date": { "type": ["string", "null"], "format": "date" },
        "from_date": date.clone(), "to_date": date.clone(), "cooperative": n("string"),
        "bounds": { "type": "object", "properties": { "early_s": s("integer"), "late_s": s("integer") } },
        "definitions": s("string"),
        "routes": { "type": "array", "items": { "$ref": "#/components/schemas/RouteRow" } },
        "totals": { "$ref": "#/components/schemas/RouteCounts" } } });
    schemas["StopEvent"] = json!({ "type": "object", "properties": {
        "vehicle_id": s("string"), "cooperative_id": n("string"), "trip_id": s("string"),
        "service_date": date.clone(), "stop_sequence": s("integer"), "stop_id": s("string"),
        "observed": ts.clone(), "scheduled_arrival": ts.clone(), "scheduled_departure": ts.clone(),
        "arrival": ts_n.clone(), "departure": ts_n,
        "dwell_s": n("number"),
        "deviation_s": { "type": ["integer", "null"], "description": "Early < 0, late > 0, s" },
        "skipped": s("boolean") } });
    schemas["LiveTrip"] = json!({ "type": "object", "properties": {
        "trip_id": s("string"), "route_id": s("string"), "service_date": date,
        "scheduled_start": ts, "direction": n("integer"), "headsign": n("string"),
        "next_stop_id": { "type": ["string", "null"], "description": "null: the last stop is behind" },
        "next_stop_sequence": n("integer"), "next_stop_name": n("string"),
        "delay_s": { "type": ["integer", "null"], "description": "Deviation at the last observed stop, s (late > 0)" },
        "confidence": { "type": "integer", "minimum": 0, "maximum": 100 } } });
    schemas["VehicleList"]["properties"]["vehicles"]["items"]["properties"]["trip"] = json!({
        "oneOf": [{ "$ref": "#/components/schemas/LiveTrip" }, { "type": "null" }],
        "description": "The scheduled trip it runs now (buses on GTFS routes)" });
}

/// The delivery endpoints and their schemas (apart: the document is too deep for one
/// `json!`).
/// The live driving-time state: drivers and the vehicles' figures.
fn add_live(doc: &mut Value) {
    let secs = |d: &str| json!({ "type": "number", "description": d });
    doc["paths"]["/api/v1/drivers/{id}"] = json!({ "get": {
        "summary": "A driver's live driving time: continuous, today (local day), this local ISO week, time left before the 4 h and 10 h limits, the vehicle and since when, as of the driver's newest fix",
        "description": "Figures are the rules' state after the driver's newest fix (event time; a recomputation for late fixes rewrites them), read at the time of the request: a break of `rules.driving.break_min_s` since the last driving ends continuous driving, a new local day or week starts from zero. A cooperative token sees the drivers who drove its vehicles (any other: 404, as an unknown driver) and the vehicle only when it is its own.",
        "parameters": [{ "name": "id", "in": "path", "required": true, "schema": { "type": "string" }, "description": "Driver licence number (as on the card)" }],
        "responses": with(json!({ "description": "The driver's state", "content": { "application/json": {
            "schema": { "$ref": "#/components/schemas/Driver" } } } }), &["400", "401", "404"])
    }});
    doc["paths"]["/api/v1/stream"] = json!({ "get": {
        "summary": "Server-sent events of the live fleet: a `snapshot` on connect, then `update` events with only what changed, at most one a second",
        "description": "Authenticated with the Authorization header like every endpoint (no token in the query: browsers read it with fetch streaming). `snapshot`: `{\"vehicles\": [...], \"alerts\": [...]}`, the live list (as GET /api/v1/vehicles) and the 200 newest alerts of the caller's scope, each alert with `acknowledged`. `update`: the same shape with the vehicles whose entry changed (position, status, driving, open alerts) and the alerts new or changed since. A client more than 16 updates behind is disconnected; reconnect for a new snapshot. A comment every 15 s keeps the connection open.",
        "responses": with(json!({ "description": "An event stream", "content": { "text/event-stream": {
            "schema": { "type": "string" } } } }), &["401"])
    }});
    let schemas = &mut doc["components"]["schemas"];
    let item = &mut schemas["VehicleList"]["properties"]["vehicles"]["items"]["properties"];
    item["on_route"] = json!({ "type": ["boolean", "null"], "description": "Inside its route's corridor (no open off_route alert); null without a route" });
    item["driving"] =
        json!({ "oneOf": [{ "$ref": "#/components/schemas/VehicleDriving" }, { "type": "null" }] });
    schemas["Driver"] = json!({ "type": "object", "properties": {
        "driver_id": { "type": "string" },
        "vehicle_id": { "type": ["string", "null"], "description": "The vehicle of the newest fix (null: another cooperative's)" },
        "on_vehicle_since": { "type": ["string", "null"], "format": "date-time", "description": "First fix of this driver on that vehicle" },
        "as_of": { "type": "string", "format": "date-time", "description": "Time of the fix the figures are from" },
        "moving": { "type": "boolean" },
        "on_route": { "type": ["boolean", "null"] },
        "continuous_driving_s": secs("Continuous driving so far, s"),
        "continuous_left_s": secs("Left before the continuous limit (4 h), s"),
        "daily_driving_s": secs("Driving today (local day), s"),
        "daily_left_s": secs("Left before the daily limit (10 h), s"),
        "weekly_driving_s": secs("Driving this local ISO week, s"),
        "weekly_left_s": { "type": ["number", "null"], "description": "Left before the weekly limit (48 h), s; null when not checked" },
        "limits": { "type": "object", "properties": { "continuous_s": { "type": "number" }, "daily_s": { "type": "number" },
            "weekly_s": { "type": ["number", "null"] }, "break_s": { "type": "number" } } } } });
    schemas["VehicleDriving"] = json!({ "type": "object", "description": "Driving time of whoever drives the vehicle (the vehicle's own without a driver card), read at the request's time", "properties": {
        "as_of": { "type": "string", "format": "date-time" },
        "driver_id": { "type": ["string", "null"] },
        "driver_since": { "type": ["string", "null"], "format": "date-time" },
        "moving": { "type": "boolean", "description": "Moving at that fix: time left counts down while it is" },
        "continuous_s": secs("Continuous driving so far, s"),
        "continuous_left_s": secs("Left before the continuous limit, s"),
        "daily_s": secs("Driving today, s"),
        "daily_left_s": secs("Left before the daily limit, s") } });
}

fn add_deliveries(doc: &mut Value) {
    use super::deliveries::{MAX_LIMIT, STATUSES};
    let id =
        json!({ "name": "id", "in": "path", "required": true, "schema": { "type": "integer" } });
    let one = |desc: &str| {
        json!({ "description": desc, "content": { "application/json": {
        "schema": { "$ref": "#/components/schemas/Destination" } } } })
    };
    let body = json!({ "required": true, "content": { "application/json": {
        "schema": { "$ref": "#/components/schemas/DestinationInput" } } } });
    let writers = "Admin tokens for any cooperative, cooperative tokens for their own; regulator tokens are read-only (403).";
    let mut created = errors(&["400", "401", "403", "409"]);
    created["201"] = one("The destination");
    let paths = json!({
        "/api/v1/destinations": {
            "get": {
                "summary": "Delivery destinations (webhooks, mailboxes) with their state: active or parked (and why), failures in a row, pending deliveries",
                "description": "A cooperative token sees its own. Secrets are never shown.",
                "responses": with(json!({ "description": "Destinations", "content": { "application/json": { "schema": {
                    "type": "object", "properties": { "count": { "type": "integer" },
                    "destinations": { "type": "array", "items": { "$ref": "#/components/schemas/Destination" } } } } } } }), &["401"])
            },
            "post": {
                "summary": "Create a destination: it gets the alerts that change from now on",
                "description": writers, "requestBody": body.clone(), "responses": created
            }
        },
        "/api/v1/destinations/{id}": {
            "get": { "summary": "One destination", "parameters": [id.clone()],
                      "responses": with(one("The destination"), &["401", "404"]) },
            "put": { "summary": "Replace a destination's target, filter and presentation (not one of the configuration file: 409); its pending deliveries go to the new target",
                     "description": writers, "parameters": [id.clone()], "requestBody": body,
                     "responses": with(one("The destination"), &["400", "401", "403", "404", "409"]) },
            "delete": { "summary": "Delete a destination (not one of the configuration file: 409): its pending deliveries are cancelled, the reminder log stays",
                        "description": writers, "parameters": [id.clone()],
                        "responses": { "204": { "description": "Deleted" }, "401": errors(&["401"])["401"],
                                       "403": errors(&["403"])["403"], "404": errors(&["404"])["404"], "409": errors(&["409"])["409"] } }
        },
        "/api/v1/destinations/{id}/unpark": { "post": {
            "summary": "Unpark a destination: attempts resume at once from its oldest pending delivery",
            "description": writers, "parameters": [id],
            "responses": with(one("The destination"), &["401", "403", "404"])
        }},
        "/api/v1/deliveries": { "get": {
            "summary": "Deliveries (one per destination and alert revision), newest first",
            "description": "Every attempt is also in the reminder log (channel, destination, target, revision, attempt, outcome and its detail).",
            "parameters": [
                q("destination", "Destination id", json!({ "type": "integer" })),
                q("alert", "Alert id", json!({ "type": "string" })),
                q("status", "Status", json!({ "type": "string", "enum": STATUSES })),
                time("from", "Enqueued at or after"),
                time("to", "Enqueued before"),
                q("limit", "At most this many", json!({ "type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": 100 })),
            ],
            "responses": with(json!({ "description": "Deliveries", "content": { "application/json": { "schema": {
                "type": "object", "properties": { "count": { "type": "integer" },
                "deliveries": { "type": "array", "items": { "$ref": "#/components/schemas/Delivery" } } } } } } }), &["400", "401"])
        }}
    });
    let filter = json!({
        "kinds": { "type": ["array", "null"], "items": { "type": "string", "enum": KINDS }, "description": "Default: every kind" },
        "min_level": { "type": "string", "enum": LEVELS, "default": "info" },
        "min_severity": { "type": ["integer", "null"], "minimum": 1, "maximum": 4, "description": "Overspeed alerts of this band or higher; other kinds pass" },
        "vehicles": { "type": ["array", "null"], "items": { "type": "string" }, "description": "Default: every vehicle" },
        "quiet_hours": { "type": ["string", "null"], "pattern": "^\\d{2}:\\d{2}-\\d{2}:\\d{2}$", "description": "Local time (rules.utc_offset) when info events wait, e.g. 22:00-06:00" },
        "digest": { "type": "boolean", "default": false, "description": "Info events in one message per local hour; warnings and violations at once" },
        "language": { "type": "string", "enum": ["vi", "en"], "default": "vi" }
    });
    let mut input = json!({ "type": "object", "required": ["name", "channel"], "additionalProperties": false, "properties": {
        "cooperative": { "type": "string", "description": "Required with an admin token; a cooperative token's own by default" },
        "name": { "type": "string", "maxLength": 100, "description": "Unique within the cooperative" },
        "channel": { "type": "string", "enum": ["webhook", "email"] },
        "url": { "type": "string", "format": "uri", "description": "Webhook: http(s) URL; private addresses need deliveries.allow_private_targets" },
        "secret": { "type": "string", "minLength": 16, "description": "Webhook: HMAC-SHA256 key of X-Fleetwatch-Signature" },
        "email": { "type": "string", "format": "email", "description": "Email: the recipient" } } });
    let mut dest = json!({ "type": "object", "properties": {
        "id": { "type": "integer" }, "cooperative": { "type": "string" }, "name": { "type": "string" },
        "channel": { "type": "string", "enum": ["webhook", "email"] },
        "url": { "type": ["string", "null"] }, "email": { "type": ["string", "null"] },
        "secret_set": { "type": "boolean" },
        "source": { "type": "string", "enum": ["config", "api"] },
        "status": { "type": "string", "enum": ["active", "parked"] },
        "consecutive_failures": { "type": "integer" }, "last_error": { "type": ["string", "null"] },
        "parked_at": { "type": ["string", "null"], "format": "date-time" }, "parked_reason": { "type": ["string", "null"] },
        "pending": { "type": "integer" },
        "created_at": { "type": "string", "format": "date-time" }, "updated_at": { "type": "string", "format": "date-time" } } });
    for (k, v) in filter.as_object().expect("an object") {
        input["properties"][k] = v.clone();
        dest["properties"][k] = v.clone();
    }
    let delivery = json!({ "type": "object", "properties": {
        "id": { "type": "integer" }, "destination_id": { "type": "integer" }, "destination": { "type": "string" },
        "channel": { "type": "string" }, "cooperative": { "type": "string" },
        "alert_id": { "type": "string" }, "revision": { "type": "integer", "description": "The alert's revision: +1 at every change" },
        "idempotency_key": { "type": "string", "description": "alert_id:revision" },
        "status": { "type": "string", "enum": STATUSES }, "digest": { "type": "boolean" },
        "due_at": { "type": "string", "format": "date-time", "description": "Not sent before (quiet hours, digest hour)" },
        "attempts": { "type": "integer" }, "last_attempt_at": { "type": ["string", "null"], "format": "date-time" },
        "last_error": { "type": ["string", "null"] }, "batch_id": { "type": ["integer", "null"], "description": "The digest it went in" },
        "created_at": { "type": "string", "format": "date-time" }, "delivered_at": { "type": ["string", "null"], "format": "date-time" } } });
    for (k, v) in paths.as_object().expect("an object") {
        doc["paths"][k] = v.clone();
    }
    let schemas = &mut doc["components"]["schemas"];
    schemas["DestinationInput"] = input;
    schemas["Destination"] = dest;
    schemas["Delivery"] = delivery;
}

/// `GET /api/v1/openapi.json` (no token needed: it describes, it does not disclose).
pub async fn serve() -> Json<Value> {
    Json(document())
}
