//! Auditor tooling: rebuild, verify and export (filled by the replay work).
