import { test } from "node:test";
import assert from "node:assert/strict";
import { exposition, fleetFamilies, RequestCounters, routeOf } from "../../src/core/fleet/metrics.ts";

test("paths become route templates: names never become labels", () => {
  assert.equal(routeOf("/v1/images/EOS.x86_64/root"), "/v1/images/:name/root");
  assert.equal(routeOf(`/v1/images/EOS/deltas/${"a".repeat(64)}`), "/v1/images/:name/deltas/:from");
  assert.equal(routeOf("/v1/admin/rollouts/r1/pause"), "/v1/admin/rollouts/:id/pause");
  assert.equal(routeOf("/v1/admin/devices/dev-1"), "/v1/admin/devices/:id");
  assert.equal(routeOf("/ui/devices/dev-1"), "/ui/devices/:id");
  assert.equal(routeOf("/ui/rollouts/new"), "/ui/rollouts/new");
  assert.equal(routeOf("/ui/rollouts/r1/progress"), "/ui/rollouts/:id/progress");
  assert.equal(routeOf("/health"), "/health");
  assert.equal(routeOf("/wp-login.php"), "other");
});

test("counters and gauges in the text exposition format, label values escaped", () => {
  const c = new RequestCounters();
  c.observe("/v1/images/A/root", 206, 1000);
  c.observe("/v1/images/B/root", 206, 24);
  c.observe("/nope", 404, 10);
  const text = exposition([
    ...c.families(),
    ...fleetFamilies({
      devices: [
        { state: "current", image: "EOS", running_version: 'v"1\\\n', online: true },
        { state: "current", image: "EOS", running_version: "2", online: false },
      ],
      rollouts: [{ id: "r1", image: "EOS", state: "paused", current_wave: 0 }],
      images: 1,
    }),
  ]);
  const lines = text.split("\n");
  assert.ok(lines.includes("# TYPE eos_http_requests_total counter"));
  assert.ok(lines.includes('eos_http_requests_total{route="/v1/images/:name/root",status="206"} 2'));
  assert.ok(lines.includes('eos_http_requests_total{route="other",status="404"} 1'));
  assert.ok(lines.includes('eos_http_response_bytes_total{route="/v1/images/:name/root"} 1024'));
  assert.ok(lines.includes('eos_devices{state="current"} 2'));
  assert.ok(lines.includes('eos_devices_by_version{image="EOS",version="v\\"1\\\\\\n"} 1'));
  assert.ok(lines.includes("eos_devices_online 1"));
  assert.ok(lines.includes('eos_rollout_state{rollout="r1",image="EOS",state="paused"} 1'));
  assert.ok(lines.includes('eos_rollout_wave{rollout="r1",image="EOS"} 1'));
  assert.ok(text.endsWith("\n"));
});
