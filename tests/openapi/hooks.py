"""schemathesis hooks of tests/openapi/schemathesis.sh (loaded through SCHEMATHESIS_HOOKS).

The built-in positive_data_acceptance check runs with 422 among its expected statuses
(schemathesis.toml beside this file), because the ledger answers 422 to some well-formed
requests for reasons no static schema can state: its state, its configuration or the
caller's role. This check takes that allowance back for every other 422: a schema-valid
request answered 422 fails unless the problem's type is one of STATE_RULES.
"""

import schemathesis

PROBLEM_TYPE_PREFIX = "urn:usage-ledger:problem:"

# Each kind, and what it depends on that the document cannot say.
STATE_RULES = {
    "before-registration": "the brand's registration instant",
    "too-late": "now, the period's end and the late-usage grace",
    "in-future": "now",
    "unknown-metric": "the plan catalog, a file of the deployment",
    "unknown-plan": "the plan catalog, a file of the deployment",
    "metric-not-in-plan": "the brand's plan",
    "not-for-sale": "the brand's plan (only charge metrics are sold)",
    "not-a-gauge": "the catalog's kind of the metric",
    "gauge-is-set": "the catalog's kind of the metric",
    "unlimited-metric": "the brand's plan",
    "wrong-period": "the period the usage falls in",
    "out-of-range": "the metric's recorded totals",
    "above-reservation": "the amount the hold holds",
    "amount-out-of-range": "the metric's rate against Stripe's amount bounds",
    "redirect-not-allowed": "the configured redirect origins",
    "idempotency-key-reused": "earlier requests made with the same key",
    "idempotency-key-mismatch": "the same key sent in the header and the body: a rule across two parameters",
    "invalid-notifications": "the receivers' hosts, resolved and checked against private ranges",
    "invalid-live-scope": "the caller's role (an admin names brands or a pressure)",
    "invalid-resume": "the ticket's scope (resume needs a single-brand feed)",
    "invalid-as-of": "the period's stream (an instant or a sequence within it)",
}


@schemathesis.check
def schema_valid_requests_parse(ctx, response, case):
    """A schema-valid request refused with 422 is refused for a state rule, never for its shape."""
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive or response.status_code != 422:
        return None
    try:
        kind = str(response.json().get("type", ""))
    except Exception:
        kind = ""
    kind = kind.removeprefix(PROBLEM_TYPE_PREFIX)
    if kind not in STATE_RULES:
        raise AssertionError(
            f"a schema-valid request was refused 422 {kind or '(no problem type)'}: "
            "the document does not state the constraint the service enforces"
        )
    return None


WEBHOOK_PATH = "/api/v1/usage-billing/webhooks/stripe"
LIVE_PATH = "/api/v1/usage-billing/live"


def close_upgraded(response, *args, **kwargs):
    """Close the connection a 101 answer switched to the WebSocket protocol.

    Left in the pool, it would carry the next HTTP request, and the feed's first message
    would be read as that request's status line: a network error of the client's making.
    """
    if response.status_code == 101:
        response.raw.close()
    return response


@schemathesis.hook
def before_call(ctx, case, kwargs):
    """Keep upgraded connections out of the pool, and sign Stripe's webhook deliveries."""
    if case.operation.path == LIVE_PATH:
        kwargs.setdefault("hooks", {}).setdefault("response", []).append(close_upgraded)
        return
    sign_webhook(case)


def sign_webhook(case):
    """Sign a schema-valid delivery to Stripe's webhook as Stripe would.

    The signature is the webhook's credential, as the admin token is the other routes':
    the script passes the secret it configured (LEDGER_STRIPE_WEBHOOK_SECRET), and a
    delivery is signed over the bytes the transport sends (`json.dumps` with its
    defaults, as requests encodes a JSON body). Schema-violating cases keep the header
    they were generated with, so a bad or missing signature is still answered 400.
    """
    if case.operation.path != WEBHOOK_PATH or case.meta is None:
        return
    negative = any(c.mode.is_negative for c in case.meta.components.values())
    if negative or not case.meta.generation.mode.is_positive or not isinstance(case.body, dict):
        return
    headers = case.headers if case.headers is not None else {}
    if "Stripe-Signature" not in headers:
        return
    import hashlib
    import hmac
    import json
    import os
    import time

    body = json.dumps(case.body, allow_nan=False).encode()
    t = int(time.time())
    secret = os.environ["LEDGER_STRIPE_WEBHOOK_SECRET"].encode()
    mac = hmac.new(secret, f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    headers["Stripe-Signature"] = f"t={t},v1={mac}"
    case.headers = headers
