//! (filled in by the chat repository work)
