// What an integrator writes against the types generated from /openapi.json with openapi-typescript's DEFAULT
// options. tests/clients/test_typescript_client.py generates `schema.d.ts` next to this file from the live document
// and runs `tsc --strict --noEmit` on it: every line must compile, and every `@ts-expect-error` must be an error
// (so the types are not `any`).
import type { components, paths, webhooks } from "./schema.js";

type Body<P extends keyof paths> = paths[P] extends { post: { requestBody?: { content: { "application/json": infer B } } } }
  ? B : never;
type IllustrationRequest = Body<"/v1/illustrations">;
type LegacyRequest = Body<"/api/illustrations/generate">;
type BatchRequest = Body<"/v1/batches">;
type Problem = components["schemas"]["Problem"];
type Job = components["schemas"]["JobOut"];
type Event<T extends keyof webhooks> = webhooks[T]["post"]["requestBody"]["content"]["application/json"];

// The documented minimal request, and one with params: {seed}.
export const minimal: IllustrationRequest = { user_id: "u-123", prompt: "grandma teaching me to ride a bike" };
export const seeded: IllustrationRequest = { user_id: "u-123", prompt: "at the beach", params: { seed: 42 } };
export const fuller: IllustrationRequest = {
  user_id: "u-123", prompt: "grandma and dad", negative_prompt: "blurry",
  subjects: [{ subject_id: "s-1", region: [0, 0, 0.5, 1] }, { name: "dad", image_url: "https://example.com/d.png" }],
  style: { artistic_style: "watercolor", reference: { subject_id: "s-2" } },
  memory_context: { title: "Summer of '65", date: "1965-07-14" },
  params: { width: 1024, height: 768, steps: 30, output_format: "png" },
  webhook_url: "https://autobio.example/hooks", priority: "batch", metadata: { memory_id: "m-9" },
  on_subject_error: "text_only",
};
export const batch: BatchRequest = { requests: [minimal, seeded] };
// @ts-expect-error prompt is required
export const noPrompt: IllustrationRequest = { user_id: "u-123" };
// @ts-expect-error width is a number
export const badWidth: IllustrationRequest = { user_id: "u", prompt: "p", params: { width: "1024" } };
// @ts-expect-error unknown priority
export const badPriority: IllustrationRequest = { user_id: "u", prompt: "p", priority: "urgent" };

// AutoBio's existing request (camelCase).
export const legacy: LegacyRequest = {
  prompt: "grandma teaching me to ride a bike", userId: "u-123",
  subjectReferences: [{ name: "grandma", imageUrl: "https://example.com/g.png" }],
  stylePreferences: { artisticStyle: "watercolor", colorPalette: "warm sepia", mood: "nostalgic" },
  memoryContext: { title: "Summer of '65", content: "...", date: "1965" },
};
export const legacyMinimal: LegacyRequest = { prompt: "p", userId: 42 };

// A problem body, as a 422 answers it; clients branch on codes.
export const problem: Problem = {
  type: "about:blank", title: "Unprocessable Content", status: 422, code: "validation_failed",
  detail: "the request is not valid", instance: "0f3c9a",
  errors: [{ field: "params.width", code: "multiple_of", message: "Input should be a multiple of 8" },
           { field: "subjects.0", code: "not_found", message: "no such subject for this user" }],
};
// @ts-expect-error not a problem code
export const badCode: Problem = { type: "about:blank", title: "x", status: 400, code: "oops", errors: [] };
export function retryable(p: Problem): boolean {
  switch (p.code) {
    case "rate_limited": case "quota_exceeded": case "service_unavailable": case "idempotency_in_flight":
      return true;
    default:
      return false;
  }
}

// Every webhook event type, and an exhaustive switch over them.
declare const job: Job;
declare const version: components["schemas"]["StyleVersionEventData"];
export const succeeded: Event<"illustration.succeeded"> = { type: "illustration.succeeded", timestamp: "t", data: job };
export const failed: Event<"illustration.failed"> = { type: "illustration.failed", timestamp: "t", data: job };
export const canceled: Event<"illustration.canceled"> = { type: "illustration.canceled", timestamp: "t", data: job };
export const ready: Event<"style.ready"> = { type: "style.ready", timestamp: "t", data: version };
export const styleFailed: Event<"style.failed"> = { type: "style.failed", timestamp: "t", data: version };
// @ts-expect-error a style event carries a style version, not a job
export const mixed: Event<"style.ready"> = { type: "style.ready", timestamp: "t", data: job };

type AnyEvent = { [T in keyof webhooks]: Event<T> }[keyof webhooks];
export function handle(event: AnyEvent): string {
  switch (event.type) {
    case "illustration.succeeded":
      return event.data.images.map((image) => image.url).join(",");
    case "illustration.failed":
    case "illustration.canceled":
      return event.data.error?.code ?? "none";
    case "style.ready":
    case "style.failed":
      return `${event.data.name}@${event.data.version}`;
    default: {
      const unhandled: never = event;
      return unhandled;
    }
  }
}
