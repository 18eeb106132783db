//! Rules that are not HTTP: join tokens and their grants, REST access tokens, passwords, roles
//! and permissions, meeting codes.

pub mod access;
pub mod admission;
pub mod live;
pub mod meetings;
pub mod moderation;
pub mod password;
pub mod roles;
pub mod text;
pub mod token;
