//! (filled in by the recordings repository work)
