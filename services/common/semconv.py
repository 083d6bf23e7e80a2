"""Every span, attribute and metric name Atalaya emits, named once.

GenAI and RPC semantic conventions are used where they exist; `atalaya.*` names
cover what they do not. Tests and dashboards import these constants too."""

from __future__ import annotations

# --- attributes -------------------------------------------------------------
RPC_METHOD = "rpc.method"
RPC_SERVICE = "rpc.service"
RPC_GRPC_STATUS_CODE = "rpc.grpc.status_code"
GEN_AI_REQUEST_MODEL = "gen_ai.request.model"
GEN_AI_OPERATION_NAME = "gen_ai.operation.name"
GEN_AI_USAGE_INPUT_TOKENS = "gen_ai.usage.input_tokens"
GEN_AI_USAGE_OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
ATALAYA_REQUEST_ID = "atalaya.request_id"
ATALAYA_BATCH_SIZE = "atalaya.batch.size"
ATALAYA_TEXT_COUNT = "atalaya.text.count"
ATALAYA_QUEUE_MS = "atalaya.queue_ms"  # time a request waited for its batch
ATALAYA_CONTENT = "atalaya.content"  # only when a service's log_content setting is on
ATALAYA_MEMORY_K = "atalaya.memory.k"
ATALAYA_MEMORY_RESULTS = "atalaya.memory.results"
ATALAYA_MEMORY_QUERY_KIND = "atalaya.memory.query_kind"

# --- spans (domain work inside an RPC; RPC spans come from the gRPC instrumentation)
SPAN_MEMORY_RECALL = "memory.Recall"
SPAN_MEMORY_REMEMBER = "memory.Remember"
SPAN_MEMORY_EMBED = "memory.embed"
SPAN_MEMORY_SEARCH = "memory.search"

# --- metrics ----------------------------------------------------------------
METRIC_RPC_SERVER_DURATION = "rpc.server.duration"  # ms, by method and status code
METRIC_RPC_SERVER_ACTIVE = "atalaya.rpc.server.active_requests"  # in-flight RPCs
METRIC_EMBED_BATCH_SIZE = "atalaya.embedding.batch.size"  # texts per model call
METRIC_EMBED_QUEUE_DEPTH = "atalaya.embedding.queue.depth"  # texts waiting for a batch
METRIC_EMBED_TEXTS = "atalaya.embedding.texts"  # texts embedded
METRIC_MEMORY_DB_DURATION = "atalaya.memory.db.duration"  # ms per store operation

# --- generation (GenAI semantic conventions where they exist) ----------------
GEN_AI_RESPONSE_FINISH_REASONS = "gen_ai.response.finish_reasons"
GEN_AI_SYSTEM = "gen_ai.system"
ATALAYA_BACKEND = "atalaya.backend"  # vllm | llamacpp | openai | sim (a simulator)
METRIC_GEN_TTFT = "gen_ai.server.time_to_first_token"  # s
METRIC_GEN_TPOT = "gen_ai.server.time_per_output_token"  # s, inter-token latency
METRIC_GEN_REQUEST_DURATION = "gen_ai.server.request.duration"  # s
METRIC_GEN_TOKENS = "atalaya.generation.tokens"  # by gen_ai.token.type: input | output
METRIC_GEN_QUEUE_DEPTH = "atalaya.generation.queue.depth"  # requests waiting for a slot
METRIC_GEN_IN_FLIGHT = "atalaya.generation.in_flight"  # requests holding a slot
GEN_AI_TOKEN_TYPE = "gen_ai.token.type"  # noqa: S105 - an attribute name

# --- guardrail --------------------------------------------------------------
ATALAYA_GUARD_POLICY = "atalaya.guardrail.policy"
ATALAYA_GUARD_DETECTOR = "atalaya.guardrail.detector"  # llama_guard | semantic | pii
ATALAYA_GUARD_VERDICT = "atalaya.guardrail.verdict"  # safe | unsafe | unparseable | error
ATALAYA_GUARD_CATEGORY = "atalaya.guardrail.category"  # S1..S14, "" for none
ATALAYA_GUARD_CATEGORIES = "atalaya.guardrail.categories"
ATALAYA_GUARD_DECIDED_BY = "atalaya.guardrail.decided_by"
ATALAYA_GUARD_SCORE = "atalaya.guardrail.score"
ATALAYA_GUARD_ERROR = "atalaya.guardrail.error"  # a reason, never message text
ATALAYA_GUARD_FAIL_MODE_APPLIED = "atalaya.guardrail.fail_mode_applied"
SPAN_GUARD_DETECTOR_PREFIX = "guardrail."  # + detector name: one span per detector run
METRIC_GUARD_VERDICTS = "atalaya.guardrail.verdicts"
METRIC_GUARD_DETECTOR_RESULTS = "atalaya.guardrail.detector.results"
METRIC_GUARD_DETECTOR_DURATION = "atalaya.guardrail.detector.duration"  # ms
METRIC_GUARD_FAIL_MODE = "atalaya.guardrail.fail_mode"  # fail-mode activations
METRIC_GUARD_QUEUE_DEPTH = "atalaya.guardrail.queue.depth"  # waiting for a detector's model
METRIC_GUARD_IN_FLIGHT = "atalaya.guardrail.in_flight"  # classifications being decided

# --- gateway ----------------------------------------------------------------
ATALAYA_TEMPLATE_NAME = "atalaya.prompt_template.name"
ATALAYA_TEMPLATE_VERSION = "atalaya.prompt_template.version"
ATALAYA_TEMPLATE_SHA256 = "atalaya.prompt_template.sha256"
SPAN_GATEWAY_GUARD_INPUT = "gateway.guard_input"
SPAN_GATEWAY_MEMORY = "gateway.memory"
SPAN_GATEWAY_PROMPT = "gateway.prompt"
SPAN_GATEWAY_GENERATE = "gateway.generate"
SPAN_GATEWAY_GUARD_OUTPUT = "gateway.guard_output"
SPAN_GATEWAY_STORE = "gateway.store"
METRIC_GATEWAY_TURNS = "atalaya.gateway.turns"  # by atalaya.gateway.outcome
METRIC_GATEWAY_TTFT = "atalaya.gateway.time_to_first_token"  # s, as the client sees it
METRIC_GATEWAY_TURN_DURATION = "atalaya.gateway.turn.duration"  # s
METRIC_GATEWAY_MEMORY_DEGRADED = "atalaya.gateway.memory.degraded"
METRIC_GATEWAY_FEEDBACK_SCORE = "atalaya.gateway.feedback.score"

# --- identity, quotas -------------------------------------------------------
# Tenants are a bounded, operator-made set and may label metrics; user ids never do.
ATALAYA_TENANT = "atalaya.tenant"
ATALAYA_AUTH_KIND = "atalaya.auth.credential_kind"  # jwt | api_key | none
ATALAYA_AUTH_RESULT = "atalaya.auth.result"  # ok, or a reason code (expired, unknown_key...)
ATALAYA_QUOTA_LIMIT = "atalaya.quota.limit"  # requests | tokens
ATALAYA_QUOTA_SCOPE = "atalaya.quota.scope"  # tenant | user
METRIC_EDGE_AUTH = "atalaya.edge.auth"  # authentication results at the edge
METRIC_GATEWAY_TENANT_REQUESTS = "atalaya.gateway.tenant.requests"  # admitted, by tenant
METRIC_GATEWAY_TENANT_TOKENS = "atalaya.gateway.tenant.tokens"  # by tenant, gen_ai.token.type
METRIC_GATEWAY_RATE_LIMITED = "atalaya.gateway.rate_limited"  # by tenant, limit and scope
