//! Read-model rows as stored: one brand-period's `PeriodModels` as JSON, keyed by its
//! brand and period. Written by the projector and the rebuild, read by the HTTP reads
//! and the verification.

use ledger_aggregates::{BrandId, PeriodKey};
use ledger_projections::{PeriodModels, ReadModels};

use crate::store::ModelRow;

/// A stored row that does not parse: edited by hand, or written by a newer version.
#[derive(Debug, thiserror::Error)]
#[error("read model row {brand_id}/{period}: {detail}")]
pub struct RowError {
    pub brand_id: String,
    pub period: String,
    pub detail: String,
}

/// The row that stores `models` of `brand` in `period`.
pub fn row_of(brand: &BrandId, period: PeriodKey, models: &PeriodModels) -> ModelRow {
    ModelRow {
        brand_id: brand.to_string(),
        period: period.to_string(),
        sequence: i64::try_from(models.sequence).expect("stream sequences fit in i64"),
        models: serde_json::to_string(models).expect("read models always serialize"),
    }
}

/// The brand, period and models a row stores.
pub fn models_from_row(row: &ModelRow) -> Result<(BrandId, PeriodKey, PeriodModels), RowError> {
    let fail = |detail: String| RowError {
        brand_id: row.brand_id.clone(),
        period: row.period.clone(),
        detail,
    };
    let brand = BrandId::parse(&row.brand_id).map_err(|e| fail(e.to_string()))?;
    let period = PeriodKey::parse(&row.period).map_err(|e| fail(e.to_string()))?;
    let models: PeriodModels =
        serde_json::from_str(&row.models).map_err(|e| fail(e.to_string()))?;
    if i64::try_from(models.sequence).ok() != Some(row.sequence) {
        return Err(fail(format!(
            "sequence column {} but the models hold {}",
            row.sequence, models.sequence
        )));
    }
    Ok((brand, period, models))
}

/// Every stored row back into one `ReadModels`.
pub fn restore_all(rows: &[ModelRow]) -> Result<ReadModels, RowError> {
    let mut models = ReadModels::new();
    for row in rows {
        let (brand, period, stored) = models_from_row(row)?;
        models.restore(&brand, period, stored);
    }
    Ok(models)
}

/// Every brand-period of `models` as rows.
pub fn rows_of_all(models: &ReadModels) -> Vec<ModelRow> {
    models
        .periods()
        .map(|(brand, period)| {
            let stored = models
                .period_models(brand, period)
                .expect("periods() lists streams the models saw");
            row_of(brand, period, &stored)
        })
        .collect()
}
