//! The SMS gateway: templates, the vendor client, the sender and the receipts webhook.

pub mod doubts;
pub mod receipts;
pub mod replies;
pub mod sending;
pub mod signing;
pub mod stops;
pub mod templates;
pub mod throttle;
pub mod vendor;
