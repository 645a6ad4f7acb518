/**
 * Verifying the service's webhooks (Standard Webhooks, with its reference library `standardwebhooks`).
 *
 * The body is signed as sent: verify the raw bytes before parsing them. During a secret rotation the service
 * signs with both secrets, so the old and the new one each verify.
 */
import { Webhook, WebhookVerificationError } from "standardwebhooks";

import type { webhooks } from "./schema.js";

/** Every event type the service sends (`illustration.succeeded`, `style.ready`, ...). */
export type WebhookEventType = keyof webhooks;
/** The body of an event of type `T`. */
export type WebhookEventOf<T extends WebhookEventType> =
  webhooks[T]["post"]["requestBody"]["content"]["application/json"];
/** Any event body: narrow it with `switch (event.type)`. */
export type WebhookEvent = { [T in WebhookEventType]: WebhookEventOf<T> }[WebhookEventType];

export { WebhookVerificationError };

type HeaderSource = Headers | Record<string, string | string[] | undefined>;

function header(headers: HeaderSource, name: string): string {
  const value = headers instanceof Headers ? headers.get(name) : headers[name] ?? headers[name.toLowerCase()];
  const text = Array.isArray(value) ? value.join(" ") : value;
  if (!text) throw new WebhookVerificationError(`missing ${name} header`);
  return text;
}

export class WebhookVerifier {
  private readonly webhook: Webhook;

  /** `secret`: the client's `whsec_...` secret (`illustrations webhooks secret --name CLIENT`). */
  constructor(secret: string) {
    this.webhook = new Webhook(secret);
  }

  /** The event, once its signature and timestamp (within 5 minutes) are checked; throws
   * `WebhookVerificationError` otherwise. `body`: the raw request body, as received. */
  verify(body: string | Uint8Array, headers: HeaderSource): WebhookEvent {
    const needed = {
      "webhook-id": header(headers, "webhook-id"),
      "webhook-timestamp": header(headers, "webhook-timestamp"),
      "webhook-signature": header(headers, "webhook-signature"),
    };
    return this.webhook.verify(body, needed) as WebhookEvent;
  }
}
