// The web console in a real browser: headless Debian chromium driven by playwright-core, against
// the real daemon binary (embedded journal) and a real HTTP server standing in for a sink.
//
// Signs in with the admin token, sees a just-sent event appear in the list without reloading,
// opens it (type and payload shown), finds a dead-lettered event, presses "Replay", and checks
// the sink receives it. Takes a screenshot of each page into $SCREENSHOTS (a temporary folder
// when unset; `SCREENSHOTS=docs/console` renews the ones the README shows).
//
// Needs the debug binary (`cargo build`) and chromium; ATTIO_WEBHOOKS_BIN and CHROMIUM override
// their paths.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createHmac, randomUUID } from "node:crypto";
import { mkdtempSync, readFileSync, writeFileSync, mkdirSync, rmSync } from "node:fs";
import { createServer } from "node:http";
import { tmpdir } from "node:os";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
const binary = process.env.ATTIO_WEBHOOKS_BIN ?? join(root, "target", "debug", "attio-webhooks");
const browserPath = process.env.CHROMIUM ?? "/usr/bin/chromium";
const shots = process.env.SCREENSHOTS ? join(root, process.env.SCREENSHOTS) : mkdtempSync(join(tmpdir(), "attio-console-shots-"));
const secret = "browser-test-secret";
const token = "browser-test-admin-token-" + randomUUID();

function freePort() {
  return new Promise((resolve) => {
    const server = createServer();
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

async function until(what, check, ms = 20000) {
  const end = Date.now() + ms;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function post(port, body, key) {
  const signature = createHmac("sha256", secret).update(body).digest("hex");
  const response = await fetch(`http://127.0.0.1:${port}/webhooks/attio`, {
    method: "POST",
    headers: { "content-type": "application/json", "attio-signature": signature, "idempotency-key": key },
    body,
  });
  assert.equal(response.status, 200, await response.text());
}

test("the console signs in, shows live events and their payload, and replays a dead letter", async (t) => {
  const dir = mkdtempSync(join(tmpdir(), "attio-console-"));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  mkdirSync(shots, { recursive: true });

  // The sink: refuses (400, a permanent failure) until told to accept.
  let accepting = false;
  const received = [];
  const sink = createServer((request, response) => {
    let body = "";
    request.on("data", (chunk) => (body += chunk));
    request.on("end", () => {
      if (accepting) {
        received.push(JSON.parse(body));
        response.writeHead(200).end("ok");
      } else {
        response.writeHead(400).end("not yet");
      }
    });
  });
  await new Promise((r) => sink.listen(0, "127.0.0.1", r));
  t.after(() => sink.close());

  const port = await freePort();
  const config = join(dir, "config.toml");
  writeFileSync(
    config,
    `[storage]
path = "${join(dir, "data")}"

[sinks.file]
kind = "jsonl"
path = "${join(dir, "events.jsonl")}"

[sinks.crm]
kind = "http"
url = "http://127.0.0.1:${sink.address().port}/hook"

[[routes]]
name = "updates to the file"
events = ["record.updated"]
sinks = ["file"]

[[routes]]
name = "notes to the crm"
events = ["note.created"]
sinks = ["crm"]
`,
  );
  const daemon = spawn(binary, ["serve", "--config", config, "--listen", `127.0.0.1:${port}`], {
    env: { ...process.env, APP_ENV: "development", ATTIO_WEBHOOK_SECRET: secret, ATTIO_WEBHOOKS_ADMIN_TOKEN: token },
    stdio: ["ignore", "ignore", "pipe"],
  });
  let log = "";
  daemon.stderr.on("data", (chunk) => (log += chunk));
  t.after(() => daemon.kill("SIGTERM"));
  await until("the daemon to answer /healthz", async () => {
    try {
      return (await fetch(`http://127.0.0.1:${port}/healthz`)).ok;
    } catch {
      return false;
    }
  }).catch((error) => {
    throw new Error(`${error.message}\n${log}`);
  });

  const updated = readFileSync(join(root, "tests", "fixtures", "attio_docs__record.updated_delivery.json"));
  const noteEvent = JSON.parse(readFileSync(join(root, "tests", "fixtures", "pipedream__note.created_event.json")));
  const note = Buffer.from(JSON.stringify({ webhook_id: randomUUID(), events: [noteEvent] }));

  // A dead letter before the browser opens: the sink refuses the note for good.
  const noteKey = "browser-note-" + randomUUID();
  await post(port, note, noteKey);
  await until("the note to be dead-lettered", async () => {
    const response = await fetch(`http://127.0.0.1:${port}/api/v1/events?status=dead`, {
      headers: { authorization: `Bearer ${token}` },
    });
    const page = await response.json();
    return page.data.some((event) => event.id === `${noteKey}:0`);
  });

  const browser = await chromium.launch({
    executablePath: browserPath,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
      "--disable-component-update", "--disable-sync"],
  });
  t.after(() => browser.close());
  const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  const base = `http://127.0.0.1:${port}`;

  // Sign in.
  await page.goto(`${base}/console/events`);
  await page.waitForURL(/\/console\/login/);
  await page.screenshot({ path: join(shots, "login.png") });
  await page.getByLabel("token").or(page.locator("input[name=token]")).first().fill(token);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.waitForURL(/\/console\/events/);

  // A delivery sent now appears in the open list without a reload.
  await page.waitForTimeout(500);
  const updateKey = "browser-update-" + randomUUID();
  await post(port, updated, updateKey);
  const row = page.locator(`tr[data-id="${updateKey}:0"]`);
  await row.waitFor({ timeout: 20000 });
  await page.screenshot({ path: join(shots, "events.png") });

  // Its detail: the type and the payload as Attio sent it.
  await row.getByRole("link").first().click();
  await page.waitForURL(new RegExp(`/console/events/`));
  const detail = await page.textContent("body");
  assert.match(detail, /record\.updated/);
  const payload = JSON.parse(updated.toString()).events[0];
  assert.ok(detail.includes(payload.id.record_id), "the payload's record id is shown");
  await page.screenshot({ path: join(shots, "event.png"), fullPage: true });

  // The dead letter: open it from the dead letters page and replay it.
  await page.getByRole("link", { name: "Dead letters" }).click();
  await page.waitForURL(/\/console\/dead-letters/);
  await page.screenshot({ path: join(shots, "dead-letters.png") });
  await page.getByRole("link", { name: `${noteKey}:0` }).click();
  await page.waitForURL(/\/console\/events\//);
  accepting = true;
  await page.getByRole("button", { name: "Replay", exact: true }).click();
  await until("the sink to receive the replayed note", async () =>
    received.some((line) => line.id === `${noteKey}:0`),
  );

  for (const [name, path] of [["unparsed", "/console/unparsed"], ["status", "/console/status"]]) {
    await page.goto(`${base}${path}`);
    await page.screenshot({ path: join(shots, `${name}.png`) });
  }
});
