/**
 * A small typed client of the AutoBio Illustrations HTTP API over `fetch`.
 *
 * Every type comes from `schema.d.ts`, generated from the service's `/openapi.json` (`make client`). Requests that
 * create something carry an `Idempotency-Key` (one is made when none is given), so a retry after a timeout or a
 * 429/503 never creates a second job; 429, 503 and 409 `idempotency_in_flight` are retried after `Retry-After`.
 */
import type { components, paths } from "./schema.js";

type Schemas = components["schemas"];
type JsonBody<P extends keyof paths, M extends keyof paths[P]> = paths[P][M] extends {
  requestBody?: { content: { "application/json": infer B } };
}
  ? B
  : never;

/** `POST /v1/illustrations`: only `user_id` and `prompt` are required. */
export type IllustrationRequest = JsonBody<"/v1/illustrations", "post">;
/** A job, as every illustration route and webhook answers it. */
export type Job = Schemas["JobOut"];
export type JobStatus = Job["status"];
export type JobList = Schemas["JobList"];
export type Subject = Schemas["SubjectOut"];
export type SubjectList = Schemas["SubjectList"];
export type SubjectUrlRequest = Schemas["SubjectUrlRequest"];
export type BatchRequest = JsonBody<"/v1/batches", "post">;
export type BatchCreated = Schemas["BatchCreated"];
export type Batch = Schemas["BatchOut"];
/** AutoBio's existing request (`POST /api/illustrations/generate`, camelCase). */
export type LegacyRequest = JsonBody<"/api/illustrations/generate", "post">;
export type LegacyResult = Schemas["GenerateResult"];
export type LegacyPending = Schemas["GeneratePending"];
/** An error answer (application/problem+json). Branch on `code` and `errors[].code`, never on the text. */
export type Problem = Schemas["Problem"];
export type ProblemCode = Problem["code"];
export type FieldCode = Schemas["ProblemField"]["code"];
export type JobErrorCode = NonNullable<Job["error"]>["code"];

export const TERMINAL: readonly JobStatus[] = ["succeeded", "failed", "canceled"];

/** A non-2xx answer: the problem+json body, its status and (for 409, 429, 503) the seconds to wait. */
export class ProblemError extends Error {
  readonly status: number;
  readonly problem: Problem;
  readonly retryAfterS: number | undefined;

  constructor(problem: Problem, retryAfterS: number | undefined) {
    super(`${problem.status} ${problem.code}: ${problem.detail ?? problem.title}`);
    this.name = "ProblemError";
    this.status = problem.status;
    this.problem = problem;
    this.retryAfterS = retryAfterS;
  }

  /** The field errors' codes by field (a 422): `{"params.width": "multiple_of"}`. */
  fieldCodes(): Record<string, FieldCode> {
    return Object.fromEntries((this.problem.errors ?? []).map((error) => [error.field, error.code]));
  }
}

export interface ClientOptions {
  /** Where the API is, e.g. `http://127.0.0.1:8000`. */
  baseUrl: string;
  /** An API key (`illustrations keys create --name CLIENT`). */
  apiKey: string;
  /** How many times a 429, 503 or 409 (idempotency key in flight) is retried after `Retry-After`. Default 3. */
  retries?: number;
  /** Longest wait honoured from `Retry-After`, in ms. Default 60 000. */
  maxRetryDelayMs?: number;
  /** Another `fetch` (tests, proxies). */
  fetch?: typeof fetch;
}

export interface CreateOptions {
  /** Hold the request up to this many seconds (at most 60): the finished job if it finishes in time. */
  waitS?: number;
  /** Same key + same body = the same job (kept at least 24 h). Made up when absent. */
  idempotencyKey?: string;
}

export interface PollOptions {
  /** Give up after this long (ms). Default 10 minutes. */
  timeoutMs?: number;
  /** First delay between polls (ms), growing by half each time up to `maxDelayMs`. Default 500. */
  initialDelayMs?: number;
  /** Default 5000. */
  maxDelayMs?: number;
  /** Called with every state seen (progress bars). */
  onUpdate?: (job: Job) => void;
  signal?: AbortSignal;
}

export interface SubjectUpload {
  user_id: string;
  name: string;
  /** PNG, JPEG or WebP bytes (at most 10 MB). */
  image: Uint8Array | Blob;
  filename?: string;
  if_exists?: "replace" | "error";
}

const RETRIED = new Set([429, 503]);
const sleep = (ms: number, signal?: AbortSignal) =>
  new Promise<void>((resolve, reject) => {
    if (signal?.aborted) {
      reject(signal.reason);
      return;
    }
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", abort);
      resolve();
    }, ms);
    const abort = () => {
      clearTimeout(timer);
      reject(signal?.reason);
    };
    signal?.addEventListener("abort", abort, { once: true });
  });

function retryAfterS(response: Response): number | undefined {
  const value = response.headers.get("Retry-After");
  if (value === null) return undefined;
  const seconds = Number(value);
  if (Number.isFinite(seconds)) return Math.max(0, seconds);
  const at = Date.parse(value); // an HTTP date
  return Number.isNaN(at) ? undefined : Math.max(0, (at - Date.now()) / 1000);
}

export class IllustrationsClient {
  readonly baseUrl: string;
  private readonly apiKey: string;
  private readonly retries: number;
  private readonly maxRetryDelayMs: number;
  private readonly fetchImpl: typeof fetch;

  constructor(options: ClientOptions) {
    this.baseUrl = options.baseUrl.replace(/\/+$/, "");
    this.apiKey = options.apiKey;
    this.retries = options.retries ?? 3;
    this.maxRetryDelayMs = options.maxRetryDelayMs ?? 60_000;
    this.fetchImpl = options.fetch ?? globalThis.fetch.bind(globalThis);
  }

  /** An absolute URL for a path or a URL the API gave (image URLs, `links`, `Location`). */
  url(pathOrUrl: string): string {
    return new URL(pathOrUrl, this.baseUrl + "/").toString();
  }

  // --- Subjects -----------------------------------------------------------------------------------------------
  /** `POST /v1/subjects` (multipart): a person's reference photo, stored under `name` for `user_id`. */
  async uploadSubject(upload: SubjectUpload): Promise<Subject> {
    const form = new FormData();
    form.set("user_id", upload.user_id);
    form.set("name", upload.name);
    if (upload.if_exists) form.set("if_exists", upload.if_exists);
    const image = upload.image instanceof Blob ? upload.image : new Blob([upload.image]);
    form.set("image", image, upload.filename ?? "photo");
    return this.json<Subject>("POST", "/v1/subjects", { body: form });
  }

  /** `POST /v1/subjects` (JSON): the photo is fetched from `image_url` by the service. */
  subjectFromUrl(request: SubjectUrlRequest): Promise<Subject> {
    return this.json<Subject>("POST", "/v1/subjects", { json: request });
  }

  listSubjects(query: { user_id?: string; limit?: number; cursor?: string } = {}): Promise<SubjectList> {
    return this.json<SubjectList>("GET", "/v1/subjects", { query });
  }

  getSubject(id: string, userId?: string): Promise<Subject> {
    return this.json<Subject>("GET", `/v1/subjects/${encodeURIComponent(id)}`, { query: { user_id: userId } });
  }

  async deleteSubject(id: string, userId?: string): Promise<void> {
    await this.send("DELETE", `/v1/subjects/${encodeURIComponent(id)}`, { query: { user_id: userId } });
  }

  // --- Illustrations ------------------------------------------------------------------------------------------
  /** `POST /v1/illustrations`: the job (202 queued, or 200 finished when `waitS` was enough). */
  createIllustration(request: IllustrationRequest, options: CreateOptions = {}): Promise<Job> {
    const headers: Record<string, string> = { "Idempotency-Key": options.idempotencyKey ?? crypto.randomUUID() };
    if (options.waitS !== undefined) headers["Prefer"] = `wait=${Math.min(60, Math.max(0, Math.round(options.waitS)))}`;
    return this.json<Job>("POST", "/v1/illustrations", { json: request, headers });
  }

  getIllustration(id: string, userId?: string): Promise<Job> {
    return this.json<Job>("GET", `/v1/illustrations/${encodeURIComponent(id)}`, { query: { user_id: userId } });
  }

  listIllustrations(
    query: { user_id?: string; status?: JobStatus; limit?: number; cursor?: string } = {},
  ): Promise<JobList> {
    return this.json<JobList>("GET", "/v1/illustrations", { query });
  }

  /** `POST /v1/illustrations/{id}/cancel`: the job (canceled at once when queued; a running one stops soon). */
  cancelIllustration(id: string, userId?: string): Promise<Job> {
    return this.json<Job>("POST", `/v1/illustrations/${encodeURIComponent(id)}/cancel`, {
      json: userId === undefined ? {} : { user_id: userId },
    });
  }

  /** Poll a job until it is terminal: growing delays (or the server's `Retry-After`). */
  async waitForIllustration(job: Job | string, options: PollOptions = {}): Promise<Job> {
    let current = typeof job === "string" ? await this.getIllustration(job) : job;
    const deadline = Date.now() + (options.timeoutMs ?? 600_000);
    let delay = options.initialDelayMs ?? 500;
    const maxDelay = options.maxDelayMs ?? 5_000;
    options.onUpdate?.(current);
    while (!TERMINAL.includes(current.status)) {
      if (Date.now() + delay > deadline) {
        throw new Error(`illustration ${current.id} is still ${current.status} after the timeout`);
      }
      await sleep(delay, options.signal);
      delay = Math.min(maxDelay, Math.round(delay * 1.5));
      current = await this.getIllustration(current.id);
      options.onUpdate?.(current);
    }
    return current;
  }

  /** Submit, hold the request up to `waitS` (default 30), then poll until the job is terminal. */
  async generate(request: IllustrationRequest, options: CreateOptions & PollOptions = {}): Promise<Job> {
    const job = await this.createIllustration(request, { waitS: options.waitS ?? 30, ...options });
    return this.waitForIllustration(job, options);
  }

  /** Image `index` of a job (from 0): its bytes and content type. Follows the API's redirect to storage itself,
   * without the API key (a presigned URL carries its own authorisation). */
  async downloadImage(job: Job | string, index = 0): Promise<{ bytes: Uint8Array; contentType: string }> {
    const id = typeof job === "string" ? job : job.id;
    const path = typeof job !== "string" && job.images[index] ? job.images[index].url
      : `/v1/illustrations/${encodeURIComponent(id)}/images/${index}`;
    let response = await this.send("GET", path, { redirect: "manual" });
    const location = response.headers.get("Location");
    if (response.status >= 300 && response.status < 400 && location) {
      response = await this.fetchImpl(new URL(location, this.url(path)).toString());
      if (!response.ok) throw new Error(`image download: ${response.status} from storage`);
    }
    return {
      bytes: new Uint8Array(await response.arrayBuffer()),
      contentType: response.headers.get("Content-Type") ?? "application/octet-stream",
    };
  }

  // --- Batches ------------------------------------------------------------------------------------------------
  /** `POST /v1/batches`: every request is validated first; all jobs are created together, or none. */
  createBatch(request: BatchRequest, options: { idempotencyKey?: string } = {}): Promise<BatchCreated> {
    const headers = { "Idempotency-Key": options.idempotencyKey ?? crypto.randomUUID() };
    return this.json<BatchCreated>("POST", "/v1/batches", { json: request, headers });
  }

  getBatch(id: string): Promise<Batch> {
    return this.json<Batch>("GET", `/v1/batches/${encodeURIComponent(id)}`);
  }

  // --- AutoBio's existing route -------------------------------------------------------------------------------
  /** `POST /api/illustrations/generate`: the result (200) when ready within the wait, else pending (202). */
  legacyGenerate(
    request: LegacyRequest,
    options: CreateOptions = {},
  ): Promise<LegacyResult | LegacyPending> {
    const headers: Record<string, string> = { "Idempotency-Key": options.idempotencyKey ?? crypto.randomUUID() };
    if (options.waitS !== undefined) headers["Prefer"] = `wait=${Math.min(60, Math.max(0, Math.round(options.waitS)))}`;
    return this.json<LegacyResult | LegacyPending>("POST", "/api/illustrations/generate", { json: request, headers });
  }

  /** `GET /api/illustrations/{generationId}` (the `statusUrl`). */
  legacyStatus(generationId: string): Promise<LegacyResult | LegacyPending> {
    return this.json<LegacyResult | LegacyPending>("GET", `/api/illustrations/${encodeURIComponent(generationId)}`);
  }

  // --- Plumbing -----------------------------------------------------------------------------------------------
  private async json<T>(method: string, path: string, options: RequestOptions = {}): Promise<T> {
    const response = await this.send(method, path, options);
    return (await response.json()) as T;
  }

  /** One request, retried on 429/503 (and 409 for a key in flight) after `Retry-After`; a problem is thrown. */
  async send(method: string, path: string, options: RequestOptions = {}): Promise<Response> {
    const url = new URL(this.url(path));
    for (const [name, value] of Object.entries(options.query ?? {})) {
      if (value !== undefined && value !== null) url.searchParams.set(name, String(value));
    }
    const headers: Record<string, string> = { Authorization: `Bearer ${this.apiKey}`, ...options.headers };
    let body: RequestInit["body"] = options.body;
    if (options.json !== undefined) {
      headers["Content-Type"] = "application/json";
      body = JSON.stringify(options.json);
    }
    for (let attempt = 0; ; attempt++) {
      const response = await this.fetchImpl(url, {
        method, headers, body, redirect: options.redirect ?? "follow", signal: options.signal,
      });
      if (response.ok || (response.status >= 300 && response.status < 400)) return response;
      const problem = await readProblem(response);
      const wait = retryAfterS(response);
      const retriable = RETRIED.has(response.status)
        || (response.status === 409 && problem.code === "idempotency_in_flight");
      // A 429 or 503 was refused before anything was done, so sending it again is safe (creates carry an
      // Idempotency-Key as well, for a retry after a timeout, which the caller decides).
      if (!retriable || attempt >= this.retries) throw new ProblemError(problem, wait);
      await sleep(Math.min(this.maxRetryDelayMs, 1000 * (wait ?? 2 ** attempt)), options.signal);
    }
  }
}

export interface RequestOptions {
  query?: Record<string, string | number | undefined | null>;
  json?: unknown;
  body?: RequestInit["body"];
  headers?: Record<string, string>;
  redirect?: RequestInit["redirect"];
  signal?: AbortSignal;
}

/** The code of an answer that is not problem+json (a proxy's page), by its status, as the service would say it. */
const BY_STATUS: Partial<Record<number, ProblemCode>> = {
  400: "malformed_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
  409: "conflict", 413: "body_too_large", 415: "unsupported_media_type", 422: "validation_failed",
  429: "rate_limited", 503: "service_unavailable",
};

async function readProblem(response: Response): Promise<Problem> {
  const text = await response.text();
  try {
    const body = JSON.parse(text) as Problem;
    if (typeof body === "object" && body !== null && typeof body.status === "number") return body;
  } catch {
    // not JSON: a proxy's page
  }
  return {
    type: "about:blank", title: response.statusText || "Error", status: response.status,
    code: BY_STATUS[response.status] ?? (response.status >= 500 ? "service_unavailable" : "malformed_request"),
    detail: text.slice(0, 500),
    errors: [],
  };
}

/** Whether a legacy answer is the finished result. */
export function isLegacyResult(answer: LegacyResult | LegacyPending): answer is LegacyResult {
  return "imageUrl" in answer;
}
