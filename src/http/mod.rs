//! The HTTP layer: the case API, Twilio's webhooks and unsubscribe links,
//! the customer's own case page,
//! ticket systems' webhooks, email bounces,
//! the admin routes, and the server that runs them.

pub mod admin;
pub mod api;
pub mod bounce;
pub mod consent;
pub mod inbound;
pub mod page;
pub mod serve;
pub mod state;
