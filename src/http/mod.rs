//! The HTTP layer: the case API, Twilio's webhooks and unsubscribe links,
//! ticket systems' webhooks, email bounces,
//! the admin routes, and the server that runs them.

pub mod admin;
pub mod api;
pub mod bounce;
pub mod consent;
pub mod inbound;
pub mod serve;
pub mod state;
