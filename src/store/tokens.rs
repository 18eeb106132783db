//! (filled in by the tokens repository work)
