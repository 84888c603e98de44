//! Read-model folds of the usage ledger (filled by the projections work).
