//! `GET /api/v1/openapi.json`: the OpenAPI 3.1 document, generated from the handlers'
//! `#[utoipa::path]` attributes and the request and response types.

use std::sync::OnceLock;

use axum::Json;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{
    admin, api_keys, error, finance, live, notifications, periods, plans, reads, reservations,
    topups, usage, views, whatif,
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
    modifiers(&Security),
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

/// Built once: the document never changes while the process runs.
pub(crate) async fn openapi_json() -> Json<&'static utoipa::openapi::OpenApi> {
    static DOC: OnceLock<utoipa::openapi::OpenApi> = OnceLock::new();
    Json(DOC.get_or_init(ApiDoc::openapi))
}
