//! The usage ledger service.
