// The client against a running service (tests/system/test_typescript_client.py starts the real processes and sets
// AUTOBIO_API_URL, AUTOBIO_API_KEY, AUTOBIO_WEBHOOK_SECRET and AUTOBIO_TEST_PHOTO). Without them the suite is skipped.
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { readFile } from "node:fs/promises";
import { createServer, type IncomingHttpHeaders } from "node:http";
import type { AddressInfo } from "node:net";
import { after, before, describe, test } from "node:test";

import {
  IllustrationsClient,
  type IllustrationRequest,
  type JobStatus,
  isLegacyResult,
  ProblemError,
  TERMINAL,
  type WebhookEvent,
  WebhookVerificationError,
  WebhookVerifier,
} from "../src/index.js"; // the package's entry point

const { AUTOBIO_API_URL: baseUrl, AUTOBIO_API_KEY: apiKey, AUTOBIO_WEBHOOK_SECRET: secret } = process.env;
const photoPath = process.env.AUTOBIO_TEST_PHOTO;
const skip = !baseUrl || !apiKey || !secret || !photoPath
  ? "set AUTOBIO_API_URL, AUTOBIO_API_KEY, AUTOBIO_WEBHOOK_SECRET and AUTOBIO_TEST_PHOTO (make test does)" : false;
const user = `ts-${Date.now().toString(36)}`;
const tiny = { width: 64, height: 64, steps: 2 } as const;
const PNG = [0x89, 0x50, 0x4e, 0x47];

interface Received { body: string; headers: IncomingHttpHeaders }

/** A webhook receiver on loopback: every request's raw body and headers, answered 200. */
function receiver(): Promise<{ url: string; next: () => Promise<Received>; close: () => void }> {
  const queue: Received[] = [];
  const waiting: ((r: Received) => void)[] = [];
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (chunk: Buffer) => chunks.push(chunk));
    req.on("end", () => {
      const received = { body: Buffer.concat(chunks).toString("utf8"), headers: req.headers };
      const wake = waiting.shift();
      if (wake) wake(received); else queue.push(received);
      res.writeHead(200).end();
    });
  });
  return new Promise((resolve) => server.listen(0, "127.0.0.1", () => {
    const { port } = server.address() as AddressInfo;
    resolve({
      url: `http://127.0.0.1:${port}/hooks/illustrations`,
      next: () => {
        const ready = queue.shift();
        return ready ? Promise.resolve(ready) : new Promise((wake) => waiting.push(wake));
      },
      close: () => server.close(),
    });
  }));
}

function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: nothing within ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

describe("the TypeScript client against the running service", { skip }, () => {
  let client: IllustrationsClient;
  let hooks: Awaited<ReturnType<typeof receiver>>;

  before(async () => {
    client = new IllustrationsClient({ baseUrl: baseUrl!, apiKey: apiKey! });
    hooks = await receiver();
  });
  after(() => hooks?.close());

  test("upload a subject, submit, wait, download; the webhook is received and verified", async () => {
    const photo = await readFile(photoPath!);
    const subject = await client.uploadSubject({ user_id: user, name: "grandma", image: photo, filename: "g.png" });
    assert.equal(subject.name, "grandma");
    assert.equal(subject.user_id, user);

    const request: IllustrationRequest = {
      user_id: user, prompt: "grandma teaching me to ride a bike", subjects: [{ name: "grandma" }],
      params: { ...tiny, seed: 7 }, webhook_url: hooks.url,
    };
    const seen: JobStatus[] = [];
    const job = await client.generate(request, { waitS: 30, initialDelayMs: 200, onUpdate: (j) => seen.push(j.status) });
    assert.equal(job.status, "succeeded", JSON.stringify(job.error));
    assert.ok(seen.length >= 1 && TERMINAL.includes(seen.at(-1)!));
    assert.equal(job.seed, 7);
    assert.equal(job.images.length, 1);

    const image = await client.downloadImage(job, 0);
    assert.deepEqual([...image.bytes.subarray(0, 4)], PNG);
    assert.equal(image.contentType, "image/png");
    assert.equal(createHash("sha256").update(image.bytes).digest("hex"), job.images[0]!.sha256);

    const delivery = await within(hooks.next(), 60_000, "the webhook");
    const verifier = new WebhookVerifier(secret!);
    const event: WebhookEvent = verifier.verify(delivery.body, delivery.headers);
    assert.equal(event.type, "illustration.succeeded");
    if (event.type !== "illustration.succeeded") return;
    assert.equal(event.data.id, job.id);
    assert.equal(event.data.images[0]!.sha256, job.images[0]!.sha256);
    assert.equal(event.data.images[0]!.url, `${baseUrl}/v1/illustrations/${job.id}/images/0`); // absolute
    assert.equal(delivery.headers["webhook-id"], `msg_${job.id.replaceAll("-", "")}`);
    // A body changed on the way, or another secret, does not verify.
    assert.throws(() => verifier.verify(delivery.body.replace(job.id, "x"), delivery.headers), WebhookVerificationError);
    const other = new WebhookVerifier("whsec_" + Buffer.from("another secret of 32 bytes......").toString("base64"));
    assert.throws(() => other.verify(delivery.body, delivery.headers), WebhookVerificationError);
  });

  test("AutoBio's existing route: generate, the status URL, a canceled generation's problem", async () => {
    // The legacy request takes no params: the job is a full-size one (slow on a CPU), so it is canceled here;
    // a finished one's 200 shape is what tests/api/test_compat.py checks.
    const answer = await client.legacyGenerate(
      { prompt: "dad fixing the car", userId: user, memoryContext: { title: "Summer", date: "1965" } },
      { waitS: 0 },
    );
    assert.ok(!isLegacyResult(answer));
    assert.ok(answer.status === "queued" || answer.status === "running");
    assert.equal(answer.statusUrl, `/api/illustrations/${answer.generationId}`);
    const pending = await client.legacyStatus(answer.generationId);
    assert.equal(pending.generationId, answer.generationId);
    const job = await client.getIllustration(answer.generationId, user); // the same job on v1
    assert.equal(job.id, answer.generationId);
    await client.cancelIllustration(job.id, user);
    const ended = await client.waitForIllustration(job.id, { initialDelayMs: 200, timeoutMs: 120_000 });
    assert.equal(ended.status, "canceled");
    const problem = await client.legacyStatus(answer.generationId).then(() => assert.fail("answered"),
      (exc: unknown) => exc);
    assert.ok(problem instanceof ProblemError);
    assert.equal(problem.status, 409);
    assert.equal(problem.problem.code, "generation_canceled");
  });

  test("a batch, its counts, and a cancel", async () => {
    const created = await client.createBatch({
      requests: [{ user_id: user, prompt: "the old house", params: tiny, priority: "batch" }],
    });
    assert.equal(created.job_ids.length, 1);
    const batch = await client.getBatch(created.id);
    assert.equal(batch.jobs.length, 1);
    assert.equal(Object.values(batch.counts).reduce((a, b) => a + b, 0), 1);
    const canceled = await client.cancelIllustration(created.job_ids[0]!, user);
    assert.equal(canceled.id, created.job_ids[0]);
    const done = await client.waitForIllustration(canceled, { initialDelayMs: 200, timeoutMs: 120_000 });
    assert.ok(TERMINAL.includes(done.status));
    if (done.status === "canceled") assert.equal(done.error?.code, "canceled_by_client");
  });

  test("a 422 names each field with a stable code", async () => {
    const refused = (body: unknown) => client.createIllustration(body as IllustrationRequest).then(
      () => assert.fail("accepted"), (exc: unknown) => exc);
    const error = await refused({ user_id: user, prompt: "x", params: { width: 1020, steps: 0 } });
    assert.ok(error instanceof ProblemError);
    assert.equal(error.status, 422);
    assert.equal(error.problem.code, "validation_failed");
    assert.deepEqual(error.fieldCodes(), { "params.width": "multiple_of", "params.steps": "out_of_range" });
    assert.ok(error.problem.instance, "the problem names the request");
    const unknown = await refused({ user_id: user, prompt: "x", colour: "red" });
    assert.ok(unknown instanceof ProblemError);
    assert.deepEqual(unknown.fieldCodes(), { colour: "extra_forbidden" });

    const missing = await client.getIllustration("no-such-job").then(() => assert.fail("found"), (exc: unknown) => exc);
    assert.ok(missing instanceof ProblemError);
    assert.equal(missing.problem.code, "not_found");
  });
});
