//! (being written: moderation queries)
