//! The HTTP layer: the case API, Twilio's webhooks and unsubscribe links,
//! the admin routes, and the server that runs them.

pub mod admin;
pub mod api;
pub mod consent;
pub mod serve;
pub mod state;
