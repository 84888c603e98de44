//! `GET /api/v1/openapi.json`: the OpenAPI 3.1 document, generated from the handlers'
//! `#[utoipa::path]` attributes and the request and response types.
//!
//! The statuses a handler decides (404, 409, a route's own 422s) are in its attribute;
//! the ones the extractors and layers answer for every route alike are added by
//! [`LayerStatuses`] from what the operation takes (credentials, parameters, a body).

use std::sync::OnceLock;

use axum::Json;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::{Operation, ParameterIn};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder, Schema, Type};
use utoipa::openapi::{ObjectBuilder, Response as DocResponse};
use utoipa::{Modify, OpenApi};

use super::{
    admin, api_keys, error, finance, live, notifications, periods, plans, reads, reservations,
    schema, topups, usage, views, whatif,
};

/// Where the document is served (outside the `usage-billing` prefix, like the original's
/// Swagger document was outside its controller).
pub const OPENAPI_PATH: &str = "/api/v1/openapi.json";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "usage-ledger",
        description = "Event-sourced usage ledger: quotas, top-up credits, threshold alerts and overage cost per brand and billing period. Errors are application/problem+json (RFC 9457)."
    ),
    paths(
        usage::record, usage::record_batch, usage::check_quota, usage::set_gauge,
        reservations::reserve, reservations::commit, reservations::void,
        reads::own_summary, reads::brand_summary, reads::period_summary, reads::current, reads::history, reads::alerts, reads::audit_events,
        admin::set_plan, admin::grant, admin::projector_status, periods::close_period,
        finance::overages,
        api_keys::create, api_keys::list, api_keys::revoke,
        plans::list_plans, plans::get_plan,
        whatif::simulate, whatif::compare_plans, whatif::projections, whatif::estimate, whatif::current_bill,
        topups::checkout, topups::stripe_webhook, topups::history,
        notifications::put_settings, notifications::get_settings, notifications::deliveries, notifications::retry,
        live::ticket, live::live,
    ),
    components(schemas(
        schema::BrandIdSchema, schema::MetricKeySchema, schema::PlanIdSchema, schema::PeriodKeySchema,
        schema::IdempotencyKeySchema, schema::ReservationIdSchema, schema::QuantitySchema,
        schema::HoldTtlSchema, schema::PageLimitSchema, schema::KeyLabelSchema, schema::MetadataSchema,
        schema::DeliveriesLimitSchema, schema::DeliveryStatusSchema, schema::ProjectionDaysSchema, schema::CountrySchema, schema::GrantReasonSchema, schema::SimulatedUnitsSchema,
        schema::BatchEventsSchema, schema::LiveBrandsSchema, schema::PressureSchema, schema::UpgradeHeaderSchema, schema::ConnectionHeaderSchema,
        schema::WebSocketVersionHeaderSchema, schema::WebSocketKeyHeaderSchema,
        schema::SequenceSchema, schema::EffectiveSchema, schema::ChannelSchema, schema::NoticeKindsSchema,
        schema::EndpointIdSchema, schema::RecipientsSchema, schema::WebhookSecretsSchema, schema::EndpointsSchema,
        schema::StripeEventSchema,
        error::Problem, views::MetricView, views::AlertView, views::CostView, views::DecisionView, views::PolicyView,
        usage::RecordBody, usage::Recorded, usage::RecordedEvent, usage::BatchBody,
        usage::BatchItem, usage::BatchAnswer, usage::CheckBody, usage::CheckAnswer, usage::GaugeBody, usage::GaugeAnswer,
        reservations::ReserveBody, reservations::Reservation, reservations::HoldStatus,
        reservations::CommitBody, reservations::Committed, reservations::VoidBody, reservations::Voided,
        reads::SummaryAnswer, reads::Summary, reads::PeriodView, reads::PeriodSummaryAnswer, reads::AsOfView, reads::CurrentAnswer,
        reads::HistoryEntry, reads::HistoryAnswer, reads::AlertEntry, reads::AlertsAnswer, reads::AuditEvent, reads::AuditAnswer,
        admin::PlanBody, admin::PlanAnswer, admin::GrantBody, admin::GrantAnswer,
        crate::tail::TailStatus, crate::tail::LagSummary,
        periods::CloseAnswer, periods::InvoiceView, periods::BaseLineView, periods::InvoiceLineView, periods::CloseFailure,
        finance::OveragesAnswer, finance::FinanceLineView, finance::FinanceTotalsView,
        finance::FinanceBrandView, finance::FinanceBrandTotalsView,
        whatif::SimulateBody, whatif::SimulationAnswer, whatif::PlanComparisonView, whatif::RecommendedPlanView,
        whatif::CompareAnswer, whatif::VelocityView, whatif::ProjectionAnswer, whatif::EstimateBody,
        whatif::EstimateAnswer, whatif::BillLineView, whatif::BillAnswer,
        topups::CheckoutBody, topups::CheckoutAnswer, topups::WebhookAnswer, topups::TopUpEntry, topups::TopUpHistoryAnswer,
        notifications::EndpointBody, notifications::SettingsBody, notifications::EndpointView, notifications::SettingsAnswer,
        notifications::AttemptView, notifications::DeliveryView, notifications::DeliveriesAnswer,
        live::TicketBody, live::TicketAnswer, live::LiveMessage,
    )),
    modifiers(&Security, &LayerStatuses, &CrossFieldRules),
    tags(
        (name = "metering", description = "Record usage and check quotas (admin, brand, service, API key)"),
        (name = "reads", description = "Summaries, history and the audit trail (admin, brand)"),
        (name = "admin", description = "Brands, plans, credit grants, API keys and period close (admin)"),
        (name = "plans", description = "The plan catalog (public)"),
        (name = "finance", description = "Overage lines and totals per period, JSON or CSV (admin)"),
        (name = "alerts", description = "Where a brand's notices go (Slack, Zapier, signed webhooks, e-mail) and every delivery with its attempts (admin, brand)"),
        (name = "payments", description = "Top-ups bought through Stripe Checkout, Stripe's webhook, the top-up history (admin, brand; the webhook: Stripe's signature)"),
        (name = "live", description = "The live feed: a single-use ticket, then a WebSocket of committed summaries (admin, brand)"),
        (name = "what-if", description = "Top-up simulation, plan comparison, projections, estimates and the current bill, on the effective limits (admin, brand)"),
    )
)]
pub struct ApiDoc;

/// The two ways to authenticate: a bearer JWT, or a brand's API key.
struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
        components.add_security_scheme(
            "apiKey",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-Api-Key"))),
        );
    }
}

/// The statuses every route may answer from outside its handler, added to each operation
/// that does not document them itself:
///
/// - 503 on every route: the request timeout (`http.request_timeout_ms`), the engine's
///   full queue, the store unreachable;
/// - 401 and 429 where credentials are taken (the `Caller` extractor authenticates, then
///   spends the credential's request rate);
/// - 400 where a path or query parameter is parsed (`ApiPath`, `ApiQuery`);
/// - 400 (not JSON), 413 (over `http.body_bytes_max`), 415 (not `application/json`) and
///   422 (JSON of the wrong shape) where a typed JSON body is read (`ApiJson`), which is
///   every operation with a JSON body but those of [`RAW_BODY_OPERATIONS`].
struct LayerStatuses;

/// Operations that read their body as bytes (Stripe's webhook: its signature is over
/// them), so neither `Content-Type` nor the body's shape is checked by an extractor.
const RAW_BODY_OPERATIONS: [&str; 1] = ["stripe_webhook"];

impl Modify for LayerStatuses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ];
            for operation in operations.into_iter().flatten() {
                for (status, description) in layer_statuses(operation) {
                    let responses = &mut operation.responses.responses;
                    if !responses.contains_key(status) {
                        responses.insert(status.to_owned(), problem_response(status, description));
                    }
                }
            }
        }
    }
}

fn layer_statuses(op: &Operation) -> Vec<(&'static str, &'static str)> {
    let mut statuses = vec![(
        "503",
        "unavailable: the request timed out, the writer's queue is full or the store is unreachable; retry after Retry-After",
    )];
    if op.security.as_ref().is_some_and(|s| !s.is_empty()) {
        statuses.push(("401", "no credentials, or credentials that do not verify"));
        statuses.push((
            "429",
            "this credential's request rate is spent; retry after Retry-After",
        ));
    }
    let parses_parameters = op
        .parameters
        .iter()
        .flatten()
        .any(|p| matches!(p.parameter_in, ParameterIn::Path | ParameterIn::Query));
    let raw_body = op
        .operation_id
        .as_deref()
        .is_some_and(|id| RAW_BODY_OPERATIONS.contains(&id));
    let json_body = !raw_body
        && op
            .request_body
            .as_ref()
            .is_some_and(|b| b.content.contains_key("application/json"));
    if parses_parameters || json_body {
        statuses.push((
            "400",
            "a malformed path or query parameter, or a body that is not JSON",
        ));
    }
    if json_body {
        statuses.push(("413", "the body exceeds http.body_bytes_max"));
        statuses.push(("415", "the body is not sent as application/json"));
        statuses.push(("422", "the body is JSON of the wrong shape or out of range"));
    }
    statuses
}

fn problem_response(status: &str, description: &str) -> RefOr<DocResponse> {
    let content = ContentBuilder::new()
        .schema(Some(Ref::from_schema_name("Problem")))
        .build();
    let mut response = ResponseBuilder::new()
        .description(description)
        .content("application/problem+json", content);
    if status == "429" || status == "503" {
        let seconds = ObjectBuilder::new()
            .schema_type(Type::Integer)
            .minimum(Some(0));
        response = response.header(
            "Retry-After",
            HeaderBuilder::new()
                .schema(seconds)
                .description(Some("seconds to wait before retrying"))
                .build(),
        );
    }
    response.build().into()
}

/// Rules between two fields of one body, which utoipa's builders cannot write: JSON
/// Schema's `dependentSchemas`, put beside the schema's other keywords.
struct CrossFieldRules;

impl Modify for CrossFieldRules {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let Some(components) = openapi.components.as_mut() else {
            return;
        };
        // `check_quota` refuses `occurredAt` on a check that consumes nothing.
        if let Some(RefOr::T(Schema::Object(check))) = components.schemas.get_mut("CheckBody") {
            let rule = serde_json::json!({
                "occurredAt": {"properties": {"consume": {"const": true}}, "required": ["consume"]}
            });
            check
                .extensions
                .get_or_insert_with(Default::default)
                .insert("dependentSchemas".to_owned(), rule);
        }
    }
}

/// Built once: the document never changes while the process runs.
pub(crate) async fn openapi_json() -> Json<&'static utoipa::openapi::OpenApi> {
    static DOC: OnceLock<utoipa::openapi::OpenApi> = OnceLock::new();
    Json(DOC.get_or_init(ApiDoc::openapi))
}
