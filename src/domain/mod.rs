//! Rules that are not HTTP: join tokens and their grants. Accounts and meetings join later.

pub mod token;
