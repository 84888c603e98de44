//! OpenAPI schemas of the domain's newtypes and of the named limits, so the document
//! states exactly what their parsers accept. Each is built from the constant that
//! names the limit; `tests/api/docs.rs` checks every pattern against the parser.
//!
//! The newtypes live in `ledger_aggregates`, which knows nothing of utoipa, so each
//! has a schema-only stand-in here (`value_type = BrandIdSchema`).

use std::borrow::Cow;

use ledger_aggregates::hold::HOLD_TTL_SECONDS_MAX;
use ledger_aggregates::ids::{
    BRAND_ID_LEN_MAX, IDEMPOTENCY_KEY_LEN_MAX, METRIC_KEY_LEN_MAX, QUANTITY_MAX,
};
use ledger_aggregates::notifications::{
    NoticeKind, EMAIL_RECIPIENTS_MAX, ENDPOINTS_PER_BRAND_MAX, ENDPOINT_ID_CHARS_MAX,
    WEBHOOK_SECRETS_MAX,
};
use serde_json::json;
use utoipa::openapi::{
    ArrayBuilder, KnownFormat, ObjectBuilder, Ref, RefOr, Schema, SchemaFormat, Type,
};
use utoipa::{PartialSchema, ToSchema};

use ledger_projections::whatif::{PROJECTION_DAYS_MAX, SIMULATED_TOP_UP_UNITS_MAX};

use super::admin::GRANT_REASON_CHARS_MAX;
use super::notifications::DELIVERIES_LISTED_MAX;
use super::reads::PAGE_ITEMS_MAX;
use super::usage::{ACTOR_METADATA_KEY, RECORD_BATCH_ITEMS_MAX};
use crate::auth::api_keys::API_KEY_LABEL_CHARS_MAX;
use crate::engine::{METADATA_ENTRIES_MAX, METADATA_KEY_CHARS_MAX, METADATA_VALUE_CHARS_MAX};
use crate::live::{LIVE_PRESSURE_PERCENT_MAX, LIVE_TICKET_BRANDS_MAX};
use crate::store::{DELIVERY_DEAD, DELIVERY_DELIVERED, DELIVERY_PENDING};

/// `YYYY-MM` with a year of 2000 to 9999 and a month of 01 to 12, as `PeriodKey::parse`.
pub const PERIOD_PATTERN: &str = "^(2[0-9]{3}|[3-9][0-9]{3})-(0[1-9]|1[0-2])$";

/// `[A-Za-z0-9][A-Za-z0-9_.-]{0,63}`, as `BrandId::parse`.
pub fn brand_id_pattern() -> String {
    format!("^[A-Za-z0-9][A-Za-z0-9_.-]{{0,{}}}$", BRAND_ID_LEN_MAX - 1)
}

/// `[a-z0-9_]{1,64}`, as `MetricKey::parse` and `PlanId::parse`.
pub fn metric_key_pattern() -> String {
    format!("^[a-z0-9_]{{1,{METRIC_KEY_LEN_MAX}}}$")
}

/// 1 to 255 visible ASCII characters, as `IdempotencyKey::parse`.
pub fn idempotency_key_pattern() -> String {
    format!("^[!-~]{{1,{IDEMPOTENCY_KEY_LEN_MAX}}}$")
}

/// `<brand>:<YYYY-MM>:<n>` with `n` from 1 and no leading zero, as `ReservationId::parse`
/// (19 digits at most, so every number the pattern allows fits the id's `u64`).
pub fn reservation_id_pattern() -> String {
    let brand = brand_id_pattern();
    let period = PERIOD_PATTERN;
    format!(
        "^{}:{}:[1-9][0-9]{{0,18}}$",
        &brand[1..brand.len() - 1],
        &period[1..period.len() - 1]
    )
}

/// A key label: at least one character that is not white space, and no control
/// character (C0, DEL, C1), as `KeyLabel::parse`.
pub const LABEL_PATTERN: &str =
    "^[^\\u0000-\\u001F\\u007F-\\u009F]*[^\\s\\u0000-\\u001F\\u007F-\\u009F][^\\u0000-\\u001F\\u007F-\\u009F]*$";

fn string(pattern: String, length_max: usize, example: &str, description: &str) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(pattern))
        .min_length(Some(1))
        .max_length(Some(length_max))
        .description(Some(description))
        .examples([json!(example)])
        .into()
}

fn integer(minimum: u64, maximum: u64, description: &str) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
        .minimum(Some(minimum))
        .maximum(Some(maximum))
        .description(Some(description))
        .into()
}

/// Declares a schema-only type named `$name` in the document's components.
macro_rules! schema_type {
    ($(#[$doc:meta])* $ty:ident, $name:literal, $schema:expr) => {
        $(#[$doc])*
        pub struct $ty;

        impl PartialSchema for $ty {
            fn schema() -> RefOr<Schema> {
                $schema
            }
        }

        impl ToSchema for $ty {
            fn name() -> Cow<'static, str> {
                Cow::Borrowed($name)
            }
        }
    };
}

schema_type!(
    /// A tenant's id (`BrandId`).
    BrandIdSchema,
    "BrandId",
    string(
        brand_id_pattern(),
        BRAND_ID_LEN_MAX,
        "acme",
        "A brand (tenant): a letter or digit, then letters, digits, '_', '-' or '.'"
    )
);

schema_type!(
    /// A metered feature (`MetricKey`).
    MetricKeySchema,
    "MetricKey",
    string(
        metric_key_pattern(),
        METRIC_KEY_LEN_MAX,
        "renders_3d",
        "A metric of the catalog, such as renders_3d or team_members"
    )
);

schema_type!(
    /// A plan tier (`PlanId`).
    PlanIdSchema,
    "PlanId",
    string(
        metric_key_pattern(),
        METRIC_KEY_LEN_MAX,
        "starter",
        "A plan of the catalog, such as starter"
    )
);

schema_type!(
    /// A billing period (`PeriodKey`).
    PeriodKeySchema,
    "PeriodKey",
    string(
        PERIOD_PATTERN.to_owned(),
        7,
        "2026-11",
        "A billing period: one calendar month in UTC, YYYY-MM, years 2000 to 9999"
    )
);

schema_type!(
    /// A caller's retry key (`IdempotencyKey`).
    IdempotencyKeySchema,
    "IdempotencyKey",
    string(
        idempotency_key_pattern(),
        IDEMPOTENCY_KEY_LEN_MAX,
        "order-4711",
        "Makes a write safe to retry: visible ASCII characters, no spaces"
    )
);

schema_type!(
    /// A hold's id (`ReservationId`).
    ReservationIdSchema,
    "ReservationId",
    string(
        reservation_id_pattern(),
        BRAND_ID_LEN_MAX + ":YYYY-MM:".len() + 19,
        "acme:2026-12:7",
        "A hold: <brandId>:<YYYY-MM>:<number>, as the reservation's answer gives it"
    )
);

schema_type!(
    /// Units of one command (`Quantity`).
    QuantitySchema,
    "Quantity",
    integer(1, QUANTITY_MAX, "Units, a whole number from 1")
);

schema_type!(
    /// A hold's time to live (`HoldTtl`).
    HoldTtlSchema,
    "HoldTtl",
    integer(
        1,
        u64::from(HOLD_TTL_SECONDS_MAX),
        "Seconds the hold lives unless committed or voided"
    )
);

schema_type!(
    /// Items of one page of history, alerts or the audit trail.
    PageLimitSchema,
    "PageLimit",
    integer(1, u64::from(PAGE_ITEMS_MAX), "Entries of one page (100 when absent)")
);

schema_type!(
    /// An API key's label (`KeyLabel`).
    KeyLabelSchema,
    "KeyLabel",
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(LABEL_PATTERN))
        .min_length(Some(1))
        .max_length(Some(API_KEY_LABEL_CHARS_MAX))
        .description(Some("What the key is for; no control characters"))
        .examples([json!("render farm")])
        .into()
);

/// A metadata key: 1 to 64 of `[A-Za-z0-9_.-]`, and not `actor`, which the ledger sets.
pub fn metadata_key_pattern() -> String {
    format!("^(?!{ACTOR_METADATA_KEY}$)[A-Za-z0-9_.-]{{1,{METADATA_KEY_CHARS_MAX}}}$")
}

schema_type!(
    /// The flat string map stored with an event (`Metadata`).
    MetadataSchema,
    "Metadata",
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .max_properties(Some(METADATA_ENTRIES_MAX))
        .property_names(Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(metadata_key_pattern())),
        ))
        .additional_properties(Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .max_length(Some(METADATA_VALUE_CHARS_MAX)),
        ))
        .description(Some(
            "Strings stored with the event (request ids, sources, tags); `actor` is set by the ledger"
        ))
        .examples([json!({"requestId": "req-42"})])
        .into()
);

schema_type!(
    /// Deliveries listed in one answer.
    DeliveriesLimitSchema,
    "DeliveriesLimit",
    integer(
        1,
        u64::from(DELIVERIES_LISTED_MAX),
        "Deliveries listed (100 when absent)"
    )
);

schema_type!(
    /// Where a delivery of a notice stands.
    DeliveryStatusSchema,
    "DeliveryStatus",
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some([DELIVERY_PENDING, DELIVERY_DELIVERED, DELIVERY_DEAD]))
        .into()
);

schema_type!(
    /// The month length of a projection (`?days=`).
    ProjectionDaysSchema,
    "ProjectionDays",
    integer(
        1,
        u64::from(PROJECTION_DAYS_MAX),
        "Days of the month the projected figures assume (30 when absent)"
    )
);

/// The countries of the tax table (`ledger_projections::whatif::tax_rate`), as `?country=`
/// takes them; `tests/api/docs.rs` checks the list against the table.
pub const TAX_COUNTRY_CODES: [&str; 8] = ["FR", "BE", "DE", "ES", "IT", "UK", "GB", "US"];

/// A country of the tax table in either case, as the bill upper-cases it.
pub fn country_pattern() -> String {
    let either_case = |code: &str| -> String {
        code.chars()
            .map(|c| format!("[{c}{}]", c.to_ascii_lowercase()))
            .collect()
    };
    let codes: Vec<String> = TAX_COUNTRY_CODES.iter().map(|c| either_case(c)).collect();
    format!("^({})$", codes.join("|"))
}

schema_type!(
    /// The country whose VAT a bill applies.
    CountrySchema,
    "Country",
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(country_pattern()))
        .description(Some("ISO 3166 alpha-2 (UK or GB for the United Kingdom), either case"))
        .examples([json!("FR")])
        .into()
);

schema_type!(
    /// A credit grant's reason.
    GrantReasonSchema,
    "GrantReason",
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some("\\S"))
        .min_length(Some(1))
        .max_length(Some(GRANT_REASON_CHARS_MAX))
        .description(Some("Why the credit is granted, for the audit trail; not blank"))
        .examples([json!("goodwill after the outage of 3 November")])
        .into()
);

schema_type!(
    /// Top-up units a simulation adds.
    SimulatedUnitsSchema,
    "SimulatedUnits",
    integer(
        0,
        SIMULATED_TOP_UP_UNITS_MAX,
        "Top-up units to simulate (0 when absent)"
    )
);

/// An array of 1 to `items_max` items of `item`.
fn array_of(item: RefOr<Schema>, items_max: usize) -> RefOr<Schema> {
    ArrayBuilder::new()
        .items(item)
        .min_items(Some(1))
        .max_items(Some(items_max))
        .into()
}

schema_type!(
    /// The items of one `POST /record/batch`: objects, each parsed on its own as a
    /// `RecordBody`, so an item that is not one is answered 422 in its own result while
    /// the batch is answered 200. The document cannot ask more of an item than the route.
    BatchEventsSchema,
    "BatchEvents",
    array_of(
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .description(Some(
                "A RecordBody, checked on its own: one that is not gets its own 422 result",
            ))
            .into(),
        RECORD_BATCH_ITEMS_MAX
    )
);

schema_type!(
    /// A live feed's pressure threshold, in percent.
    PressureSchema,
    "Pressure",
    integer(
        0,
        u64::from(LIVE_PRESSURE_PERCENT_MAX),
        "Percent of a limit: every brand whose highest metric is at least this"
    )
);

schema_type!(
    /// The brands one live ticket follows.
    LiveBrandsSchema,
    "LiveBrands",
    array_of(Ref::from_schema_name("BrandId").into(), LIVE_TICKET_BRANDS_MAX)
);

fn one_value(value: &str, description: &str) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some([value]))
        .description(Some(description))
        .into()
}

schema_type!(
    /// `Upgrade: websocket` (RFC 6455 §4.1).
    UpgradeHeaderSchema,
    "UpgradeHeader",
    one_value("websocket", "The protocol the connection switches to")
);

schema_type!(
    /// `Connection: Upgrade` (RFC 6455 §4.1).
    ConnectionHeaderSchema,
    "ConnectionHeader",
    one_value("Upgrade", "Asks for the protocol switch")
);

schema_type!(
    /// `Sec-WebSocket-Version: 13` (RFC 6455 §4.1).
    WebSocketVersionHeaderSchema,
    "WebSocketVersionHeader",
    one_value("13", "The WebSocket version, the only one there is")
);

schema_type!(
    /// `Sec-WebSocket-Key` (RFC 6455 §4.1). The upgrade takes any value, so no pattern.
    WebSocketKeyHeaderSchema,
    "WebSocketKeyHeader",
    ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some(
            "16 random bytes in base64, as RFC 6455 asks; the upgrade does not check it"
        ))
        .examples([json!("dGhlIHNhbXBsZSBub25jZQ==")])
        .into()
);

schema_type!(
    /// A position in a stream: a sequence, or the previous page's cursor.
    SequenceSchema,
    "Sequence",
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .minimum(Some(0u64))
        .maximum(Some(u64::MAX))
        .description(Some("A sequence number of the period's stream"))
        .into()
);

fn one_of_strings<S: AsRef<str>>(values: &[S], description: &str) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(values.iter().map(|v| v.as_ref().to_owned())))
        .description(Some(description))
        .into()
}

schema_type!(
    /// When a plan change takes effect (`Effective`).
    EffectiveSchema,
    "Effective",
    one_of_strings(&["now", "next_period"], "When the new plan takes effect")
);

schema_type!(
    /// Where a notice goes (`ChannelKind`).
    ChannelSchema,
    "Channel",
    one_of_strings(&["slack", "zapier", "webhook", "email"], "The receiver's kind")
);

/// The notice kinds as a body names them: their serde names (`top_up_applied`).
fn notice_kinds() -> Vec<String> {
    NoticeKind::ALL
        .iter()
        .filter_map(|k| serde_json::to_value(k).ok())
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect()
}

schema_type!(
    /// The notices an endpoint wants (`NoticeKind`s).
    NoticeKindsSchema,
    "NoticeKinds",
    ArrayBuilder::new()
        .items(one_of_strings(&notice_kinds(), "A kind of notice"))
        .min_items(Some(1))
        .unique_items(true)
        .into()
);

/// An endpoint's id: 1 to 32 of `[a-z0-9_-]`, as `NotificationSettings::check`.
pub fn endpoint_id_pattern() -> String {
    format!("^[a-z0-9_-]{{1,{ENDPOINT_ID_CHARS_MAX}}}$")
}

schema_type!(
    /// The brand's name for one endpoint.
    EndpointIdSchema,
    "EndpointId",
    string(
        endpoint_id_pattern(),
        ENDPOINT_ID_CHARS_MAX,
        "ops-slack",
        "The brand's name for the endpoint"
    )
);

fn strings_max(items_max: usize, description: &str) -> RefOr<Schema> {
    ArrayBuilder::new()
        .items(ObjectBuilder::new().schema_type(Type::String))
        .max_items(Some(items_max))
        .description(Some(description))
        .into()
}

schema_type!(
    /// An e-mail endpoint's recipients.
    RecipientsSchema,
    "Recipients",
    strings_max(EMAIL_RECIPIENTS_MAX, "E-mail addresses")
);

schema_type!(
    /// A webhook's signing secrets.
    WebhookSecretsSchema,
    "WebhookSecrets",
    strings_max(WEBHOOK_SECRETS_MAX, "whsec_<base64> secrets")
);

schema_type!(
    /// A brand's endpoints.
    EndpointsSchema,
    "Endpoints",
    ArrayBuilder::new()
        .items(Ref::from_schema_name("EndpointBody"))
        .max_items(Some(ENDPOINTS_PER_BRAND_MAX))
        .into()
);

schema_type!(
    /// A Stripe event as Stripe sends it (`stripe::event::Event`).
    StripeEventSchema,
    "StripeEvent",
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .property("id", ObjectBuilder::new().schema_type(Type::String))
        .property("type", ObjectBuilder::new().schema_type(Type::String))
        .property(
            "created",
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(i64::MIN))
                .maximum(Some(i64::MAX)),
        )
        .property(
            "data",
            ObjectBuilder::new()
                .schema_type(Type::Object)
                .property("object", ObjectBuilder::new().schema_type(Type::Object))
                .required("object"),
        )
        .required("id")
        .required("type")
        .required("created")
        .required("data")
        .examples([json!({"id": "evt_1", "type": "checkout.session.completed", "created": 1_764_547_200, "data": {"object": {}}})])
        .into()
);
